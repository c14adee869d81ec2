"""Manifold-key attention for more timm families: BEiT, EVA / RoPE ViTs, Swin V2, ViT with relative position.

Each class is a drop-in for one timm attention module (same constructor and forward arguments, the family's
math kept as timm computes it) whose key rows of `qkv` are replaced by a `ManifoldKey`, like
`mkviz.attention.ManifoldAttention` does for `timm.layers.Attention`:

    ManifoldBeitAttention        timm.models.beit.Attention                  relative position bias (own table
                                                                             and/or the model's shared one),
                                                                             separate q/v biases, no key bias
    ManifoldRopeAttention        timm.layers.AttentionRope                   rotary embedding on q and k
    ManifoldEvaAttention         timm.models.eva.EvaAttention                rotary embedding, q/v biases only
    ManifoldWindowAttentionV2    timm.models.swin_transformer_v2.WindowAttention   cosine attention, learned
                                                                             logit scale, continuous position bias
    ManifoldRelPosAttention      timm.models.vision_transformer_relpos.RelPosAttention   relative position bias

Where the manifold key enters (`docs/design.md` §11): the fused key K = F(K_1..K_H) takes the place of timm's
k, then the family's key path runs on it unchanged (k_norm, rotary embedding, L2 normalisation). Per-chart
maps run the SAME key path on each chart's key (`logit_keys`), so a recording of a converted model shows
A_c = softmax(scale · q · g(K_c) + bias) with g what the layer does to its key.

`FAMILIES` maps each timm class to its manifold class; `mkviz.convert` and `mkviz.fold` use it
(`from_timm`, `to_timm`). Each class checks, on conversion, nothing beyond what `convert` checks for ViT.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from timm.layers import AttentionRope, apply_rot_embed_cat, use_fused_attn
from timm.layers.attention import resolve_self_attn_mask
from timm.models.beit import Attention as BeitAttention
from timm.models.eva import EvaAttention
from timm.models.swin_transformer_v2 import WindowAttention as WindowAttentionV2
from timm.models.vision_transformer_relpos import RelPosAttention

from .attention import ContextBroadcast, ManifoldQKV, window_bias

torch.fx.wrap("resolve_self_attn_mask")  # timm's FX leaf, here too (torch.fx.wrap patches this module's name)

__all__ = ["ManifoldBeitAttention", "ManifoldRopeAttention", "ManifoldEvaAttention", "ManifoldWindowAttentionV2",
           "ManifoldRelPosAttention", "FAMILIES", "load_projections"]

# (weight (A, C_in), bias (A,) or None) of one of q, k, v
Projection = Tuple[torch.Tensor, Optional[torch.Tensor]]


def _manifold_options(kwargs: dict) -> dict:
    """Split the manifold-key options off a constructor's keyword arguments (the rest is timm's)."""
    names = ("variant", "num_charts", "kernel_size", "expand_from", "ua_weight")
    defaults = dict(variant="vanillak", num_charts=8, kernel_size=1, expand_from="key", ua_weight=0.0)
    return {n: kwargs.pop(n, defaults[n]) for n in names}


def _split_qkv(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Tuple[Projection, Projection, Projection]:
    """timm's fused qkv, weight (3A, C_in) with rows [q; k; v], bias (3A,) or None -> three projections."""
    A = weight.shape[0] // 3
    parts = weight.split(A)
    biases = bias.split(A) if bias is not None else (None, None, None)
    return tuple(zip(parts, biases))  # type: ignore[return-value]


def load_projections(new: ManifoldQKV, q: Projection, k: Projection, v: Projection, proj: nn.Linear,
                     preserve: bool, perturbation: float, generator: Optional[torch.Generator]) -> None:
    """Load a timm layer's q, k, v projections (each (weight (A, C_in), bias (A,) or None)) and output `proj` into
    a manifold module: q and v into `qv`, k into the key (function-preserving with `preserve`, else the key's
    from-scratch initialisation; docs/design.md §5), CB gate 0 with `preserve`."""
    with torch.no_grad():
        new.qv.weight.copy_(torch.cat([q[0], v[0]]))
        if new.qv.bias is not None:
            zeros = new.qv.bias.new_zeros(new.attn_dim)
            new.qv.bias.copy_(torch.cat([q[1] if q[1] is not None else zeros, v[1] if v[1] is not None else zeros]))
        if preserve:
            new.key.load_base_key(k[0], k[1], perturbation=perturbation, generator=generator)
        else:
            new.key.reset_parameters("scratch", generator=generator)
        new.proj.load_state_dict(proj.state_dict())
        if new.context_broadcast is not None and preserve:
            new.context_broadcast.scale.zero_()


def _fused_qkv_parts(module: ManifoldQKV) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The folded layer's qkv: weight (3A, C_in), bias (3A,) or None (`ManifoldQKV.qkv_linear`, without autograd)."""
    with torch.no_grad():
        weight, bias = module.qkv_linear()
    return weight.clone(), (bias.clone() if bias is not None else None)


def _refuse_context_broadcast(module: ManifoldQKV, family: str) -> None:
    if module.context_broadcast is not None:
        raise ValueError(f"fold(): a {family} layer with context_broadcast=True has no plain timm counterpart "
                         "(timm's module has no place for the CB gate); keep the unfolded model")


def _finish(new: nn.Module, old: ManifoldQKV) -> nn.Module:
    new.fused_attn = old.fused_attn
    new.train(old.training)
    return new


# --------------------------------------------------------------------------- BEiT
class ManifoldBeitAttention(ManifoldQKV, BeitAttention):
    """BEiT attention with a manifold key; drop-in for `timm.models.beit.Attention`.

    Keeps the relative position bias table (`window_size`), `set_window_size` and the model's shared bias
    (`shared_rel_pos_bias`), both added to the logits of the fused key and of every chart alike. BEiT's key
    has no bias (timm keeps a zero `k_bias` buffer; a key bias only adds q·b_k, the same for every key, which
    the softmax removes), so the manifold key has none either; q and v keep theirs in `qv.bias`.

    forward(x (B, N, dim), shared_rel_pos_bias (1, heads, N, N) or None) -> (B, N, dim).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qkv_bias_separate: bool = False,
                 attn_drop: float = 0., proj_drop: float = 0., window_size: Optional[Tuple[int, int]] = None,
                 attn_head_dim: Optional[int] = None, device=None, dtype=None, *,
                 context_broadcast: bool = False, **manifold) -> None:
        dd = {"device": device, "dtype": dtype}
        options = _manifold_options(manifold)
        if manifold:
            raise ValueError(f"ManifoldBeitAttention: unknown arguments {sorted(manifold)}")
        BeitAttention.__init__(self, dim, num_heads, qkv_bias=False, attn_drop=attn_drop, proj_drop=proj_drop,
                               window_size=window_size, attn_head_dim=attn_head_dim, **dd)
        del self.qkv
        self.head_dim = attn_head_dim or dim // num_heads
        self.attn_dim = self.head_dim * num_heads
        self.build_manifold(dim, qkv_bias, dd=dd, key_bias=False, **options)
        self.context_broadcast = ContextBroadcast(dim, **dd) if context_broadcast else None

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_width(x)
        q, k, v = self.project_qkv(x)  # each (B, heads, N, d)
        bias = self._get_rel_pos_bias() if self.relative_position_bias_table is not None else None  # (1, heads, N, N)
        if shared_rel_pos_bias is not None:
            bias = shared_rel_pos_bias if bias is None else bias + shared_rel_pos_bias
        out = self.attend(x, q, k, v, bias)  # (B, N, A)
        out = self.proj_drop(self.proj(out))
        if self.context_broadcast is not None:
            out = self.context_broadcast(out)
        return out

    @classmethod
    def from_timm(cls, old: BeitAttention, preserve: bool, perturbation: float,
                  generator: Optional[torch.Generator], **options) -> "ManifoldBeitAttention":
        ref = old.qkv.weight
        heads = old.num_heads
        new = cls(old.qkv.in_features, heads, qkv_bias=old.q_bias is not None, attn_drop=old.attn_drop.p,
                  proj_drop=old.proj_drop.p, window_size=old.window_size,
                  attn_head_dim=old.qkv.out_features // 3 // heads, device=ref.device, dtype=ref.dtype, **options)
        if old.relative_position_bias_table is not None:
            with torch.no_grad():
                new.relative_position_bias_table.copy_(old.relative_position_bias_table)
        q, k, v = cls.timm_projections(old)
        load_projections(new, q, k, v, old.proj, preserve, perturbation, generator)
        new.fused_attn = old.fused_attn
        return new

    @staticmethod
    def timm_projections(old: BeitAttention) -> Tuple[Projection, Projection, Projection]:
        (qw, _), (kw, _), (vw, _) = _split_qkv(old.qkv.weight, None)
        return (qw, old.q_bias), (kw, None), (vw, old.v_bias)

    def to_timm(self) -> BeitAttention:
        """The folded plain timm layer (same outputs): qkv = [W_q; M; W_v], q_bias and v_bias from `qv`."""
        _refuse_context_broadcast(self, "BEiT")
        ref = self.qv.weight
        new = BeitAttention(self.key.in_dim, self.num_heads, qkv_bias=self.qv.bias is not None,
                            attn_drop=self.attn_drop.p, proj_drop=self.proj_drop.p, window_size=self.window_size,
                            attn_head_dim=self.head_dim, device=ref.device, dtype=ref.dtype)
        weight, bias = _fused_qkv_parts(self)
        A = self.attn_dim
        with torch.no_grad():
            new.qkv.weight.copy_(weight)
            if new.q_bias is not None:
                new.q_bias.copy_(bias[:A])
                new.v_bias.copy_(bias[2 * A:])
            if new.relative_position_bias_table is not None:
                new.relative_position_bias_table.copy_(self.relative_position_bias_table)
            new.proj.load_state_dict(self.proj.state_dict())
        return _finish(new, self)


# --------------------------------------------------------------------------- RoPE (AttentionRope, EVA)
class ManifoldRopeAttention(ManifoldQKV):
    """Attention with rotary position embedding and a manifold key; drop-in for `timm.layers.AttentionRope`.

    The key path after the fusion is timm's: k_norm, then the rotary embedding R_n on the non-prefix tokens.
    R_n is linear per token, so for the linear fusions (VanillaK, SpatialK, SimpleK) without qk_norm
    R_n(F(K_1..K_H)) = F(R_n K_1, .., R_n K_H): rotating the fused key is rotating each chart's key and fusing
    (KUA too: its memberships are scalars per token). Per-chart maps rotate each chart's key with the
    layer's rope (`logit_keys`), so VanillaK's geometric mean holds (docs/design.md §11.2).
    Grouped-query attention (num_kv_heads < num_heads) is refused.

    forward(x (B, N, dim), rope (N - prefix, 2·d) or as timm gives it, attn_mask=None, is_causal=False)
        -> (B, N, dim_out).
    """

    def __init__(self, dim: int, num_heads: int = 8, dim_out: Optional[int] = None, qkv_bias: bool = True,
                 qkv_fused: bool = True, num_prefix_tokens: int = 1, attn_drop: float = 0., proj_drop: float = 0.,
                 attn_head_dim: Optional[int] = None, norm_layer=None, qk_norm: bool = False,
                 scale_norm: bool = False, proj_bias: bool = True, rotate_half: bool = False, gated: bool = False,
                 num_kv_heads: Optional[int] = None, device=None, dtype=None, *, context_broadcast: bool = False,
                 key_bias: Optional[bool] = None, **manifold) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        options = _manifold_options(manifold)
        if manifold:
            raise ValueError(f"{type(self).__name__}: unknown arguments {sorted(manifold)}")
        if num_kv_heads not in (None, num_heads):
            raise ValueError(f"num_kv_heads: grouped-query attention ({num_kv_heads} key heads for {num_heads} "
                             "query heads) is not supported by the manifold key; use num_kv_heads=None")
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError("norm_layer must be given when qk_norm or scale_norm is True")
        self.num_heads = num_heads
        self.head_dim = attn_head_dim or dim // num_heads
        self.attn_dim = self.head_dim * num_heads
        self.scale = self.head_dim ** -0.5
        self.num_prefix_tokens = num_prefix_tokens
        self.rotate_half = rotate_half
        self.fused_attn = use_fused_attn()
        self.qkv_fused = qkv_fused  # kept for `to_timm`; the manifold module has qv + key either way
        self.build_manifold(dim, qkv_bias, dd=dd, key_bias=key_bias, **options)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(self.attn_dim, **dd) if scale_norm else nn.Identity()
        self.gate = nn.Linear(dim, self.attn_dim, bias=qkv_bias, **dd) if gated else None
        self.proj = nn.Linear(self.attn_dim, dim_out or dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.context_broadcast = ContextBroadcast(dim_out or dim, **dd) if context_broadcast else None
        self._rope: Optional[torch.Tensor] = None  # the current forward's rope, while a recorder is attached

    def rotate(self, t: torch.Tensor, rope: Optional[torch.Tensor]) -> torch.Tensor:
        """timm's rotary embedding on the non-prefix tokens: t (B, heads, N, d) -> (B, heads, N, d)."""
        if rope is None:
            return t
        npt = self.num_prefix_tokens
        return torch.cat([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], rope, half=self.rotate_half)], dim=2)

    def logit_keys(self, chart_keys: torch.Tensor) -> torch.Tensor:
        """Chart keys (B, H, N, heads·d) -> (B, H, N, heads, d) after k_norm and the current forward's rotary
        embedding: each chart's key through the same function as the fused key (one chart at a time, so the
        rope broadcasts exactly as on the fused key)."""
        B, H, N, _ = chart_keys.shape
        k = chart_keys.view(B, H, N, self.num_heads, self.head_dim)
        rotated = [self.rotate(self.k_norm(k[:, c].transpose(1, 2)), self._rope).type_as(k) for c in range(H)]
        return torch.stack(rotated, dim=1).transpose(2, 3)  # (B, H, N, heads, d)

    def forward(self, x: torch.Tensor, rope: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        self.check_width(x)
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.project_qkv(x)  # each (B, heads, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotate(q, rope).type_as(v), self.rotate(k, rope).type_as(v)
        bias = resolve_self_attn_mask(N, q, attn_mask, is_causal)  # timm's FX leaf: no branch on the mask
        self._rope = rope if self.recorder is not None else None
        try:
            out = self.attend(x, q, k, v, bias)  # (B, N, A)
        finally:
            self._rope = None
        out = self.norm(out)
        if gate is not None:
            out = out * gate
        out = self.proj_drop(self.proj(out))
        if self.context_broadcast is not None:
            out = self.context_broadcast(out)
        return out

    @staticmethod
    def timm_projections(old: nn.Module) -> Tuple[Projection, Projection, Projection]:
        """q, k, v of a timm AttentionRope / EvaAttention, fused (`qkv`, EVA's q_bias/v_bias) or separate."""
        if old.qkv is None:
            return tuple((p.weight, p.bias) for p in (old.q_proj, old.k_proj, old.v_proj))  # type: ignore
        q, k, v = _split_qkv(old.qkv.weight, old.qkv.bias)
        if getattr(old, "q_bias", None) is not None:  # EVA: separate q/v biases, a zero k_bias buffer
            return (q[0], old.q_bias), (k[0], None), (v[0], old.v_bias)
        return q, k, v

    @classmethod
    def _timm_arguments(cls, old: nn.Module) -> dict:
        q, k, _ = cls.timm_projections(old)
        ref = q[0]
        qk_norm = not isinstance(old.q_norm, nn.Identity)
        scale_norm = not isinstance(old.norm, nn.Identity)
        return dict(num_heads=old.num_heads, qkv_bias=q[1] is not None, qkv_fused=old.qkv is not None,
                    num_prefix_tokens=old.num_prefix_tokens, attn_drop=old.attn_drop.p, proj_drop=old.proj_drop.p,
                    attn_head_dim=old.head_dim, qk_norm=qk_norm, scale_norm=scale_norm,
                    norm_layer=(lambda *a, **kw: nn.Identity()) if (qk_norm or scale_norm) else None,
                    rotate_half=getattr(old, "rotate_half", False), gated=old.gate is not None,
                    key_bias=k[1] is not None, device=ref.device, dtype=ref.dtype)

    @classmethod
    def from_timm(cls, old: nn.Module, preserve: bool, perturbation: float, generator: Optional[torch.Generator],
                  **options) -> "ManifoldRopeAttention":
        if getattr(old, "num_kv_groups", 1) != 1:
            raise ValueError(f"cannot convert {type(old).__name__} with grouped-query attention (num_kv_heads="
                             f"{old.num_kv_heads} < num_heads={old.num_heads}): the manifold key needs one key head "
                             "per query head")
        args = cls._timm_arguments(old)
        if cls is ManifoldRopeAttention:
            args.update(dim_out=old.proj.out_features, proj_bias=old.proj.bias is not None)
        q, k, v = cls.timm_projections(old)
        new = cls(q[0].shape[1], **args, **options)
        # reuse the pretrained norm modules themselves (whatever their class)
        new.q_norm, new.k_norm, new.norm = (copy.deepcopy(old.q_norm), copy.deepcopy(old.k_norm),
                                            copy.deepcopy(old.norm))
        if old.gate is not None:
            new.gate.load_state_dict(old.gate.state_dict())
        load_projections(new, q, k, v, old.proj, preserve, perturbation, generator)
        new.fused_attn = old.fused_attn
        return new

    def _timm_layer(self, dd: dict) -> nn.Module:
        qk_norm = not isinstance(self.q_norm, nn.Identity)
        scale_norm = not isinstance(self.norm, nn.Identity)
        return AttentionRope(
            self.key.in_dim, self.num_heads, dim_out=self.proj.out_features,
            qkv_bias=self.qv.bias is not None, qkv_fused=True,
            num_prefix_tokens=self.num_prefix_tokens, attn_drop=self.attn_drop.p, proj_drop=self.proj_drop.p,
            attn_head_dim=self.head_dim, qk_norm=qk_norm, scale_norm=scale_norm,
            norm_layer=(lambda *a, **kw: nn.Identity()) if (qk_norm or scale_norm) else None,
            proj_bias=self.proj.bias is not None, rotate_half=self.rotate_half, gated=self.gate is not None, **dd)

    def to_timm(self) -> nn.Module:
        """The folded plain timm layer (same outputs), with a fused `qkv` = [W_q; M; W_v] whatever the layout
        the original had (`qkv_fused`)."""
        _refuse_context_broadcast(self, type(self).__name__)
        ref = self.qv.weight
        new = self._timm_layer(dict(device=ref.device, dtype=ref.dtype))
        weight, bias = _fused_qkv_parts(self)
        A = self.attn_dim
        with torch.no_grad():
            new.qkv.weight.copy_(weight)
            if getattr(new, "q_bias", None) is not None:  # EVA
                new.q_bias.copy_(bias[:A])
                new.v_bias.copy_(bias[2 * A:])
            elif new.qkv.bias is not None:
                new.qkv.bias.copy_(bias if bias is not None else torch.zeros_like(new.qkv.bias))
            new.proj.load_state_dict(self.proj.state_dict())
        new.q_norm, new.k_norm, new.norm = copy.deepcopy(self.q_norm), copy.deepcopy(self.k_norm), copy.deepcopy(self.norm)
        if self.gate is not None:
            new.gate.load_state_dict(self.gate.state_dict())
        return _finish(new, self)


class ManifoldEvaAttention(ManifoldRopeAttention):
    """EVA attention with a manifold key; drop-in for `timm.models.eva.EvaAttention` (EVA-02, RoPE ViTs).

    As `ManifoldRopeAttention`; EVA's key has no bias (a zero `k_bias` buffer, or `k_proj` without bias), so
    the manifold key has none. Folds back into an `EvaAttention` with a fused `qkv`.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, qkv_fused: bool = True,
                 qkv_bias_separate: bool = False, num_prefix_tokens: int = 1, attn_drop: float = 0.,
                 proj_drop: float = 0., attn_head_dim: Optional[int] = None, norm_layer=None, qk_norm: bool = False,
                 scale_norm: bool = True, rotate_half: bool = False, gated: bool = False, device=None, dtype=None,
                 **manifold) -> None:
        manifold.setdefault("key_bias", False)
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, qkv_fused=qkv_fused, num_prefix_tokens=num_prefix_tokens,
                         attn_drop=attn_drop, proj_drop=proj_drop, attn_head_dim=attn_head_dim,
                         norm_layer=norm_layer, qk_norm=qk_norm, scale_norm=scale_norm, rotate_half=rotate_half,
                         gated=gated, device=device, dtype=dtype, **manifold)

    def _timm_layer(self, dd: dict) -> nn.Module:
        qk_norm = not isinstance(self.q_norm, nn.Identity)
        scale_norm = not isinstance(self.norm, nn.Identity)
        return EvaAttention(
            self.key.in_dim, self.num_heads, qkv_bias=self.qv.bias is not None, qkv_fused=True,
            num_prefix_tokens=self.num_prefix_tokens, attn_drop=self.attn_drop.p, proj_drop=self.proj_drop.p,
            attn_head_dim=self.head_dim, qk_norm=qk_norm, scale_norm=scale_norm,
            norm_layer=(lambda *a, **kw: nn.Identity()) if (qk_norm or scale_norm) else None,
            rotate_half=self.rotate_half, gated=self.gate is not None, **dd)


# --------------------------------------------------------------------------- Swin V2
class ManifoldWindowAttentionV2(ManifoldQKV, WindowAttentionV2):
    """Swin V2 window attention with a manifold key; drop-in for `timm.models.swin_transformer_v2.WindowAttention`.

    Cosine attention: A = softmax(τ_h · q̂ · k̂ᵀ + 16σ(cpb) + mask), q̂, k̂ the per-head L2-normalised q and k,
    τ_h = exp(min(logit_scale_h, log 100)). The manifold key is fused first and normalised after the fusion,
    K̂ = normalize(F(K_1..K_H)), as timm normalises its k; chart c's map normalises its own key,
    A_c = softmax(τ_h · q̂ · normalize(K_c)ᵀ + 16σ(cpb) + mask) (`logit_keys`; docs/design.md §11.3). The
    normalisation makes the key path nonlinear after the (linear) fusion: the fused map is no longer the
    geometric mean of the chart maps, but the key up to the normalisation still folds.

    `scale` is τ (heads, 1, 1), a tensor: `attend` multiplies it into the queries.

    forward(x (B·num_windows, N, C), mask (num_windows, N, N) of 0/-100 or None) -> same shape as x.
    """

    def __init__(self, dim: int, window_size: Tuple[int, int], num_heads: int, qkv_bias: bool = True,
                 qkv_bias_separate: bool = False, attn_drop: float = 0., proj_drop: float = 0.,
                 pretrained_window_size: Tuple[int, int] = (0, 0), device=None, dtype=None, *,
                 context_broadcast: bool = False, **manifold) -> None:
        dd = {"device": device, "dtype": dtype}
        options = _manifold_options(manifold)
        if manifold:
            raise ValueError(f"ManifoldWindowAttentionV2: unknown arguments {sorted(manifold)}")
        WindowAttentionV2.__init__(self, dim, window_size, num_heads, qkv_bias=False, attn_drop=attn_drop,
                                   proj_drop=proj_drop, pretrained_window_size=pretrained_window_size, **dd)
        del self.qkv
        self.head_dim = dim // num_heads
        self.attn_dim = dim
        self.fused_attn = use_fused_attn()
        self.build_manifold(dim, qkv_bias, dd=dd, key_bias=False, **options)
        self.context_broadcast = ContextBroadcast(dim, **dd) if context_broadcast else None

    @property
    def scale(self) -> torch.Tensor:
        """τ = exp(min(logit_scale, log 100)): (heads, 1, 1), multiplies the cosine logits."""
        return torch.clamp(self.logit_scale, max=math.log(1. / 0.01)).exp()

    def logit_keys(self, chart_keys: torch.Tensor) -> torch.Tensor:
        """Chart keys (B, H, N, heads·d) -> (B, H, N, heads, d), each head's key L2-normalised."""
        return F.normalize(chart_keys.unflatten(-1, (self.num_heads, self.head_dim)), dim=-1)

    def position_bias(self) -> torch.Tensor:
        """Swin V2's continuous position bias 16·σ(cpb_mlp(coords)): (1, heads, N, N)."""
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        N = self.window_size[0] * self.window_size[1]
        bias = table[self.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1)  # (heads, N, N)
        return 16 * torch.sigmoid(bias).unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_width(x)
        B_, N, _ = x.shape
        q, k, v = self.project_qkv(x)  # each (B·nW, heads, N, d)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        bias = window_bias(self.position_bias(), mask, B_)  # (B·nW or 1, heads, N, N)
        out = self.attend(x, q, k, v, bias)  # (B·nW, N, C)
        out = self.proj_drop(self.proj(out))
        if self.context_broadcast is not None:
            out = self.context_broadcast(out)
        return out

    @staticmethod
    def timm_projections(old: WindowAttentionV2) -> Tuple[Projection, Projection, Projection]:
        (qw, _), (kw, _), (vw, _) = _split_qkv(old.qkv.weight, None)
        return (qw, old.q_bias), (kw, None), (vw, old.v_bias)

    @classmethod
    def from_timm(cls, old: WindowAttentionV2, preserve: bool, perturbation: float,
                  generator: Optional[torch.Generator], **options) -> "ManifoldWindowAttentionV2":
        ref = old.qkv.weight
        new = cls(old.dim, old.window_size, old.num_heads, qkv_bias=old.q_bias is not None, attn_drop=old.attn_drop.p,
                  proj_drop=old.proj_drop.p, pretrained_window_size=old.pretrained_window_size, device=ref.device,
                  dtype=ref.dtype, **options)
        with torch.no_grad():
            new.logit_scale.copy_(old.logit_scale)
            new.cpb_mlp.load_state_dict(old.cpb_mlp.state_dict())
        q, k, v = cls.timm_projections(old)
        load_projections(new, q, k, v, old.proj, preserve, perturbation, generator)
        return new

    def to_timm(self) -> WindowAttentionV2:
        """The folded plain timm layer (same outputs): qkv = [W_q; M; W_v], q_bias/v_bias from `qv`."""
        _refuse_context_broadcast(self, "Swin V2")
        ref = self.qv.weight
        new = WindowAttentionV2(self.dim, self.window_size, self.num_heads, qkv_bias=self.qv.bias is not None,
                                attn_drop=self.attn_drop.p, proj_drop=self.proj_drop.p,
                                pretrained_window_size=self.pretrained_window_size, device=ref.device, dtype=ref.dtype)
        weight, bias = _fused_qkv_parts(self)
        with torch.no_grad():
            new.qkv.weight.copy_(weight)
            if new.q_bias is not None:
                new.q_bias.copy_(bias[:self.dim])
                new.v_bias.copy_(bias[2 * self.dim:])
            new.logit_scale.copy_(self.logit_scale)
            new.cpb_mlp.load_state_dict(self.cpb_mlp.state_dict())
            new.proj.load_state_dict(self.proj.state_dict())
        new.train(self.training)
        return new


# --------------------------------------------------------------------------- ViT with relative position
class ManifoldRelPosAttention(ManifoldQKV):
    """Attention with relative position bias and a manifold key; drop-in for timm's `RelPosAttention`
    (`vit_relpos_*`, `vit_srelpos_*`).

    The bias comes from the layer's own `rel_pos` module (RelPosBias, RelPosMlp, ...: `get_bias()`, added to
    the logits) or, without one, from the model's shared `shared_rel_pos`; fused key and charts see the same.

    forward(x (B, N, dim), shared_rel_pos (1, heads, N, N) or None) -> (B, N, dim).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 rel_pos_cls=None, attn_drop: float = 0., proj_drop: float = 0., norm_layer=nn.LayerNorm,
                 device=None, dtype=None, *, context_broadcast: bool = False, **manifold) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        options = _manifold_options(manifold)
        if manifold:
            raise ValueError(f"ManifoldRelPosAttention: unknown arguments {sorted(manifold)}")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dim = dim
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.build_manifold(dim, qkv_bias, dd=dd, **options)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.rel_pos = rel_pos_cls(num_heads=num_heads, **dd) if rel_pos_cls else None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.context_broadcast = ContextBroadcast(dim, **dd) if context_broadcast else None

    def forward(self, x: torch.Tensor, shared_rel_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_width(x)
        q, k, v = self.project_qkv(x)  # each (B, heads, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = self.rel_pos.get_bias() if self.rel_pos is not None else shared_rel_pos  # (1, heads, N, N) or None
        out = self.attend(x, q, k, v, bias)  # (B, N, A)
        out = self.proj_drop(self.proj(out))
        if self.context_broadcast is not None:
            out = self.context_broadcast(out)
        return out

    @staticmethod
    def timm_projections(old: RelPosAttention) -> Tuple[Projection, Projection, Projection]:
        return _split_qkv(old.qkv.weight, old.qkv.bias)

    @classmethod
    def from_timm(cls, old: RelPosAttention, preserve: bool, perturbation: float,
                  generator: Optional[torch.Generator], **options) -> "ManifoldRelPosAttention":
        ref = old.qkv.weight
        qk_norm = not isinstance(old.q_norm, nn.Identity)
        new = cls(old.qkv.in_features, old.num_heads, qkv_bias=old.qkv.bias is not None, qk_norm=qk_norm,
                  attn_drop=old.attn_drop.p, proj_drop=old.proj_drop.p, device=ref.device, dtype=ref.dtype,
                  **options)
        new.q_norm, new.k_norm = copy.deepcopy(old.q_norm), copy.deepcopy(old.k_norm)
        new.rel_pos = copy.deepcopy(old.rel_pos)
        q, k, v = cls.timm_projections(old)
        load_projections(new, q, k, v, old.proj, preserve, perturbation, generator)
        new.fused_attn = old.fused_attn
        return new

    def to_timm(self) -> RelPosAttention:
        """The folded plain timm layer (same outputs): qkv = [W_q; M; W_v], the same `rel_pos` module."""
        _refuse_context_broadcast(self, "RelPos ViT")
        ref = self.qv.weight
        new = RelPosAttention(self.key.in_dim, self.num_heads, qkv_bias=self.qv.bias is not None,
                              attn_drop=self.attn_drop.p, proj_drop=self.proj_drop.p, device=ref.device,
                              dtype=ref.dtype)
        weight, bias = _fused_qkv_parts(self)
        with torch.no_grad():
            new.qkv.weight.copy_(weight)
            if new.qkv.bias is not None:
                new.qkv.bias.copy_(bias)
            new.proj.load_state_dict(self.proj.state_dict())
        new.q_norm, new.k_norm = copy.deepcopy(self.q_norm), copy.deepcopy(self.k_norm)
        new.rel_pos = copy.deepcopy(self.rel_pos)
        return _finish(new, self)


# timm class -> manifold class (exact types: a subclass of a timm class is not assumed to compute the same)
FAMILIES = {
    BeitAttention: ManifoldBeitAttention,
    AttentionRope: ManifoldRopeAttention,
    EvaAttention: ManifoldEvaAttention,
    WindowAttentionV2: ManifoldWindowAttentionV2,
    RelPosAttention: ManifoldRelPosAttention,
}
