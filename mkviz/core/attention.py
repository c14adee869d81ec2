"""Manifold-key attention modules: drop-in replacements for timm's ViT and Swin attention.

`ManifoldAttention` takes timm's `timm.layers.Attention` constructor and forward arguments;
`ManifoldWindowAttention` subclasses timm's Swin `WindowAttention` (relative position bias,
`set_window_size` and the shifted-window `mask` are inherited). Both replace the key rows of
timm's shared `qkv` projection with a `ManifoldKey`; queries and values keep their projection
`qv` (rows [q; v]).

Two attention paths, side by side as in timm:
    fused: `F.scaled_dot_product_attention` (no N×N matrix is materialised);
    eager: softmax(q kᵀ·scale + bias), then `attn_drop`, then @ v — timm's `AttentionExtract`
           (module names "*attn_drop") and captum layer hooks find the attention there.
The eager path runs when `fused_attn` is False or a recorder is attached (`mkviz.record_attention`);
`ManifoldAttention.forward` shows both paths and the recording hooks in place, `attend` is that branch for the
other classes.
"""
from __future__ import annotations

from typing import Callable, Optional, Type
import warnings

import torch
from torch import nn
from torch.nn import functional as F
from timm.layers import use_fused_attn
from timm.layers.attention import maybe_add_mask, resolve_self_attn_mask
from timm.models.swin_transformer import WindowAttention

from .key import ManifoldKey
from .tracing import SCRIPT_REFUSAL, check_tokens, is_symbolic

# leaves of torch.fx tracing in this module too (torch.fx.wrap patches a name in the globals of its caller)
torch.fx.wrap("check_tokens")
torch.fx.wrap("maybe_add_mask")
torch.fx.wrap("resolve_self_attn_mask")

__all__ = ["ContextBroadcast", "ManifoldQKV", "ManifoldAttention", "ManifoldWindowAttention", "attn_layer",
           "window_bias"]

# recorder(module, x, q, attn, attn_bias): called on the eager path with the block input x (B, N, C_in),
# the queries q (B, heads, N, d) after q_norm, attn (B, heads, N, N) after softmax, and the additive
# logit bias (mask, causal mask, Swin's relative position bias + shift mask) broadcastable to attn, or None.
# qk_recorder(module, x, q, k, attn_bias): called on either path with q and k (B, heads, N, d) after the q/k
# norms, before the softmax (`record_attention(lazy=True)`); unlike `recorder` it keeps the fused path.
Recorder = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], None]


def _is_compiling() -> bool:
    """True while torch.compile or torch.export traces (torch >= 2.3 can tell; older torch: False)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


class ContextBroadcast(nn.Module):
    """Context broadcasting (Hyeon-Woo et al., ICCV 2023): y + γ ⊙ mean_n(y).

    Applied to the attention output after `proj` (our placement; see `docs/design.md` §2.7). γ (C,) is
    trainable: 1 from scratch (the paper's plain CB), 0 when converting a pretrained model, so
    that the conversion is exact and CB is learned in.
    """

    def __init__(self, dim: int, init_scale: float = 1.0, device=None, dtype=None) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_scale), device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        return x + self.scale * x.mean(dim=1, keepdim=True)


class ManifoldQKV(nn.Module):
    """Shared parts of both modules: the q/v projection, the manifold key, the attention core."""

    num_heads: int
    head_dim: int
    attn_dim: int
    scale: float
    fused_attn: bool

    def build_manifold(
            self, dim: int, qkv_bias: bool, variant: str, num_charts: int, kernel_size: int,
            expand_from: str, ua_weight: float, dd: dict, key_bias: Optional[bool] = None,
    ) -> None:
        """Create `qv` (rows [q; v], bias `qkv_bias`) and the manifold `key` (bias `key_bias`, default
        `qkv_bias`; False where timm's key has none: BEiT, EVA, Swin V2 keep a zero k_bias buffer)."""
        self.qv = nn.Linear(dim, self.attn_dim * 2, bias=qkv_bias, **dd)  # rows [q; v]
        self.key = ManifoldKey(
            dim, self.attn_dim, variant=variant, num_charts=num_charts, kernel_size=kernel_size,
            expand_from=expand_from, bias=qkv_bias if key_bias is None else key_bias, ua_weight=ua_weight, **dd,
        )
        self.recorder: Optional[Recorder] = None
        self.qk_recorder: Optional[Recorder] = None

    def logit_keys(self, chart_keys: torch.Tensor) -> torch.Tensor:
        """Chart keys (B, H, N, heads·d) as they enter the logits, (B, H, N, heads, d): split into heads and
        passed through `k_norm` (if any), exactly what the forward does to the fused key. Families with more
        on the key path (rotary embedding, cosine attention: `mkviz/core/families.py`) override it."""
        k = chart_keys.unflatten(-1, (self.num_heads, self.head_dim))  # (B, H, N, heads, d)
        k_norm = getattr(self, "k_norm", None)
        return k_norm(k) if k_norm is not None else k

    def check_width(self, x: torch.Tensor) -> None:
        check_tokens(x, self.key.in_dim, "an attention")

    def __prepare_scriptable__(self) -> nn.Module:
        """torch.jit.script calls this first: refuse in one line (README's support table)."""
        raise RuntimeError(SCRIPT_REFUSAL)

    def qkv_linear(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """timm's fused `qkv` for a foldable key: weight (3A, C_in) with rows [q; k; v], bias (3A,) or None.

        Formed in parameter space every forward while autograd records (training); without autograd
        (eval under no_grad / inference_mode) the result is cached until a parameter changes, so inference
        costs what timm's does (docs/design.md §6, plan "weight").

        The cache. `_qkv_cache = (stamp, weight, bias)` is written and read only while
        `torch.is_grad_enabled()` is False and no torch.compile / torch.export trace runs, so a cached tensor
        never carries autograd history and a forward that records gradients always rebuilds (its gradients reach every parameter). The stamp
        is `(p.data_ptr(), p._version, p.dtype, p.device)` for every parameter the result is built from (`qv.weight`,
        `qv.bias`, then `self.key.parameters()` in order); `_version` is the (private, long-stable) torch
        version counter that autograd uses to detect in-place changes to saved tensors. Equal stamps mean:
        the same number of parameters, each still backed by the same memory and not modified in place
        through itself or a view sharing its counter since the cache was built. So the cache is
        invalidated (the next call rebuilds it) by
          * any in-place update of a parameter: `optimizer.step()`, `p.add_()`/`p.copy_()`/`p.mul_()` also
            under `torch.no_grad()` or `torch.inference_mode()`, `load_state_dict` (copies in place),
            `reset_parameters`, `load_base_key`;
          * new storage for a parameter: `module.to(device/dtype)`, `.half()`, `p.data = t` (a new dtype or
            device never hits the cache, even where the allocator reuses the old address),
            `load_state_dict(assign=True)`, a parameter replaced by another;
        (tests/test_key.py::test_inference_cache_follows_parameter_changes: an optimiser step and a
        `load_state_dict`). The key's configuration (variant, charts, kernel size) is fixed at construction,
        and `effective_linear` runs outside autocast, so nothing else enters the result. It does NOT see
        writes that bypass the parameter's version counter: in-place ops on `p.data` (a tensor with its
        own counter), on its `untyped_storage()` or on a numpy view; nor, in principle, a storage
        replaced by one the allocator places at the very address the cache saw, with an equal version.
        After such a change, `del module._qkv_cache` (or any in-place op on the parameter itself).
        """
        # no cache while autograd records, nor under torch.compile / torch.export (fake tensors have no storage),
        # torch.fx tracing (proxies) or on the meta device (no storage: every data_ptr is 0)
        ref = self.qv.weight
        use_cache = not torch.is_grad_enabled() and not _is_compiling() and not is_symbolic(ref) and not ref.is_meta
        if use_cache:
            params = [p for p in (self.qv.weight, self.qv.bias) if p is not None] + list(self.key.parameters())
            stamp = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
            cached = getattr(self, "_qkv_cache", None)
            if cached is not None and cached[0] == stamp:
                return cached[1], cached[2]
        A = self.attn_dim
        k_weight, k_bias = self.key.effective_linear()
        weight = torch.cat([self.qv.weight[:A], k_weight, self.qv.weight[A:]])  # (3A, C_in)
        bias = None
        if self.qv.bias is not None:
            if k_bias is None:  # a key without bias next to biased q and v (BEiT, EVA, Swin V2)
                k_bias = self.qv.bias.new_zeros(A)
            bias = torch.cat([self.qv.bias[:A], k_bias, self.qv.bias[A:]])  # (3A,)
        elif k_bias is not None:
            bias = torch.cat([k_bias.new_zeros(A), k_bias, k_bias.new_zeros(A)])  # (3A,)
        if use_cache:
            self._qkv_cache = (stamp, weight, bias)
        return weight, bias

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, N, C_in) -> q, k, v each (B, heads, N, head_dim), before q/k norms."""
        B, N, _ = x.shape
        A = self.attn_dim
        if self.key.impl == "fast" and self.key.plan(B * N) == "weight":
            # the whole key path is one (A, C_in) matrix: run q, k, v as ONE matmul like timm
            weight, bias = self.qkv_linear()  # (3A, C_in), (3A,) or None
            qkv = F.linear(x, weight, bias)  # (B, N, 3A)
            qkv = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            return qkv.unbind(0)  # each (B, heads, N, d)
        qv = self.qv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, v = qv.unbind(0)  # each (B, heads, N, d)
        k = self.key(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, d)
        return q, k, v

    def project_out(self, out: torch.Tensor) -> torch.Tensor:
        """The tail of every forward: output projection `proj` (then `proj_drop`) and context broadcasting (if
        any). out: (B, N, A) -> (B, N, C)."""
        out = self.proj_drop(self.proj(out))
        return self.context_broadcast(out) if self.context_broadcast is not None else out

    def fused_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: Optional[torch.Tensor],
                        is_causal: bool = False) -> torch.Tensor:
        """The fused path: `F.scaled_dot_product_attention`, no N×N matrix formed. q, k, v (B, heads, N, d), attn_bias
        additive, broadcastable to (B, heads, N, N), or None -> (B, heads, N, d). `self.scale` is a float, or a
        tensor broadcastable to q (Swin V2's learned per-head logit scale (heads, 1, 1))."""
        extra = {}
        if not isinstance(self.scale, (int, float)):  # a per-head scale (tensor, or a proxy under FX) goes into q
            q, extra = q * self.scale, {"scale": 1.0}
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias,
                                              dropout_p=self.attn_drop.p if self.training else 0.,
                                              is_causal=is_causal and attn_bias is None, **extra)

    def attention_matrix(self, q: torch.Tensor, k: torch.Tensor, attn_bias: Optional[torch.Tensor],
                         is_causal: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The eager path's matrix softmax(q·kᵀ·scale + bias): (B, heads, N, N), and the additive bias it used
        (the causal mask when is_causal)."""
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
        if is_causal:
            attn_bias = resolve_self_attn_mask(q.shape[2], logits, None, True)
        return maybe_add_mask(logits, attn_bias).softmax(dim=-1), attn_bias

    def attend(
            self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            attn_bias: Optional[torch.Tensor], is_causal: bool = False,
    ) -> torch.Tensor:
        """The two paths of `ManifoldAttention.forward`, for the other attention classes (Swin and the families):
        q, k, v (B, heads, N, d), attn_bias additive, broadcastable to (B, heads, N, N) -> (B, N, heads·d)."""
        B, _, N, _ = q.shape
        if self.qk_recorder is not None:  # record_attention(lazy=True): q and k; the fused path stays on
            self.qk_recorder(self, x, q, k, attn_bias)
        if self.fused_attn and self.recorder is None:
            out = self.fused_attention(q, k, v, attn_bias, is_causal)
        else:
            attn, attn_bias = self.attention_matrix(q, k, attn_bias, is_causal)
            if self.recorder is not None:  # record_attention: the input, the queries, the matrix and its bias
                self.recorder(self, x, q, attn, attn_bias)
            out = self.attn_drop(attn) @ v  # hooks on attn_drop (timm's AttentionExtract, captum) see the matrix
        return out.transpose(1, 2).reshape(B, N, self.attn_dim)


class ManifoldAttention(ManifoldQKV):
    """Multi-head self-attention with a manifold key; drop-in for `timm.layers.Attention`.

    Takes timm's constructor arguments (dim, num_heads, attn_head_dim, dim_out, qkv_bias,
    qk_norm, scale_norm, proj_bias, gated, attn_drop, proj_drop, norm_layer, device, dtype;
    unknown extras are accepted with a warning) plus the manifold-key options:

    Args:
        variant: "vanillak", "simplek", "spatialk" or "kua" (case-insensitive).
        num_charts: number of charts H.
        kernel_size: chart-map kernel size (odd).
        expand_from: "key" (expand the projected key) or "input" (expand the tokens).
        context_broadcast: add γ ⊙ token mean to the output (`ContextBroadcast`).
        ua_weight: KUA's unbalanced-atlas regulariser weight λ.

    forward(x (B, N, dim), attn_mask=None, is_causal=False) -> (B, N, dim_out).
    """

    def __init__(
            self,
            dim: int,
            num_heads: int = 8,
            attn_head_dim: Optional[int] = None,
            dim_out: Optional[int] = None,
            qkv_bias: bool = False,
            qk_norm: bool = False,
            scale_norm: bool = False,
            proj_bias: bool = True,
            gated: bool = False,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            norm_layer: Optional[Type[nn.Module]] = None,
            device=None,
            dtype=None,
            *,
            variant: str = "vanillak",
            num_charts: int = 8,
            kernel_size: int = 1,
            expand_from: str = "key",
            context_broadcast: bool = False,
            ua_weight: float = 0.0,
            **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            warnings.warn(f"ManifoldAttention ignores unknown arguments: {sorted(kwargs)}", stacklevel=2)
        dd = {"device": device, "dtype": dtype}
        dim_out = dim_out or dim
        head_dim = attn_head_dim
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
            head_dim = dim // num_heads
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError("norm_layer must be given when qk_norm or scale_norm is True")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attn_dim = num_heads * head_dim
        self.scale = head_dim ** -0.5
        self.fused_attn = use_fused_attn()

        self.build_manifold(dim, qkv_bias, variant, num_charts, kernel_size, expand_from, ua_weight, dd)
        self.q_norm = norm_layer(head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(self.attn_dim, **dd) if scale_norm else nn.Identity()
        self.gate = nn.Linear(dim, self.attn_dim, bias=qkv_bias, **dd) if gated else None
        self.proj = nn.Linear(self.attn_dim, dim_out, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.context_broadcast = ContextBroadcast(dim_out, **dd) if context_broadcast else None

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        self.check_width(x)
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.project_qkv(x)  # each (B, heads, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        # the causal mask or attn_mask as an additive bias: timm's FX leaf, so tracing never branches on them
        bias = resolve_self_attn_mask(N, q, attn_mask, is_causal)
        # the two paths side by side, as in timm's Attention.forward (`attend` is this branch for the other classes)
        if self.qk_recorder is not None:  # record_attention(lazy=True): q and k; the fused path stays on
            self.qk_recorder(self, x, q, k, bias)
        if self.fused_attn and self.recorder is None:
            out = self.fused_attention(q, k, v, bias)  # F.scaled_dot_product_attention: (B, heads, N, d)
        else:
            attn, bias = self.attention_matrix(q, k, bias)  # softmax(q·kᵀ·scale + bias): (B, heads, N, N)
            if self.recorder is not None:  # record_attention: the input, the queries, the matrix and its bias
                self.recorder(self, x, q, attn, bias)
            out = self.attn_drop(attn) @ v  # hooks on attn_drop (timm's AttentionExtract, captum) see the matrix
        out = self.norm(out.transpose(1, 2).reshape(B, N, self.attn_dim))  # (B, N, A)
        if gate is not None:
            out = out * gate
        return self.project_out(out)


class ManifoldWindowAttention(ManifoldQKV, WindowAttention):
    """Swin window attention with a manifold key; drop-in for timm's Swin `WindowAttention`.

    Keeps the relative position bias table and the shifted-window `mask`. Manifold-key options
    as in `ManifoldAttention`. Note: with kernel_size > 1 the chart maps slide along each
    window's row-major token order.

    forward(x (B·num_windows, N, C), mask (num_windows, N, N) of 0/-inf or None) -> same shape as x.
    """

    def __init__(
            self,
            dim: int,
            num_heads: int,
            head_dim: Optional[int] = None,
            window_size=7,
            qkv_bias: bool = True,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
            *,
            variant: str = "vanillak",
            num_charts: int = 8,
            kernel_size: int = 1,
            expand_from: str = "key",
            context_broadcast: bool = False,
            ua_weight: float = 0.0,
            **kwargs,
    ) -> None:
        dd = {"device": device, "dtype": dtype}
        timm_dd = {k: v for k, v in dd.items() if v is not None}  # older timm lacks these
        WindowAttention.__init__(self, dim, num_heads, head_dim=head_dim, window_size=window_size,
                                 qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **timm_dd)
        if kwargs:
            warnings.warn(f"ManifoldWindowAttention ignores unknown arguments: {sorted(kwargs)}", stacklevel=2)
        del self.qkv
        self.head_dim = head_dim or dim // num_heads
        self.attn_dim = self.head_dim * num_heads
        self.build_manifold(dim, qkv_bias, variant, num_charts, kernel_size, expand_from, ua_weight, dd)
        self.context_broadcast = ContextBroadcast(dim, **dd) if context_broadcast else None

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_width(x)
        B_, N, _ = x.shape
        q, k, v = self.project_qkv(x)  # each (B·nW, heads, N, d)
        bias = window_bias(self._get_rel_pos_bias(), mask, B_)  # (B·nW or 1, heads, N, N)
        out = self.attend(x, q, k, v, bias)  # (B·nW, N, A)
        return self.project_out(out)


def window_bias(bias: torch.Tensor, mask: Optional[torch.Tensor], batch_windows: int) -> torch.Tensor:
    """A window attention's additive logit bias: the position bias (1, heads, N, N), plus the shifted-window
    mask (nW, N, N) of each window when given, as (B·nW, heads, N, N); the position bias alone otherwise."""
    if mask is None:
        return bias
    heads, N = bias.shape[1], bias.shape[-1]
    num_win = mask.shape[0]
    bias = bias.view(1, 1, heads, N, N) + mask.view(1, num_win, 1, N, N)  # (1, nW, heads, N, N)
    return bias.expand(batch_windows // num_win, -1, -1, -1, -1).reshape(batch_windows, heads, N, N)


def attn_layer(**manifold_kwargs) -> type:
    """A `ManifoldAttention` subclass with the given defaults, usable as timm's `attn_layer`.

    Example: `timm.create_model("vit_small_patch16_224", attn_layer=attn_layer(variant="kua", num_charts=4))`
    builds a from-scratch model whose blocks use the manifold key (timm needs a class, not a partial).
    """
    probe = ManifoldKey(8, 8, **{k: v for k, v in manifold_kwargs.items()
                                 if k in ("variant", "kernel_size", "expand_from")})
    del probe  # validates the names early, with the usual errors

    class _ConfiguredManifoldAttention(ManifoldAttention):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**manifold_kwargs, **kwargs})

    _ConfiguredManifoldAttention.__name__ = "ManifoldAttention"
    _ConfiguredManifoldAttention.__qualname__ = "ManifoldAttention"
    return _ConfiguredManifoldAttention
