"""Record what attention looks at: fused attention, per-chart attention, chart keys, memberships.

    with mkviz.record_attention(model) as rec:
        logits = model(images)
    rec.attention["blocks.3.attn"]        # (B, heads, N, N)        fused attention (what the model used)
    rec.chart_attention["blocks.3.attn"]  # (B, H, heads, N, N)     A_c = softmax(q·k_norm(K_c)ᵀ·scale + bias)
    rec.chart_keys["blocks.3.attn"]       # (B, H, N, C)            chart keys K_c (before k_norm)
    rec.membership["blocks.3.attn"]       # (B, N, H)               KUA only: p(c|n)
    rec.queries["blocks.3.attn"]          # (B, heads, N, d)        queries after q_norm, before the scale
    rec.layout["layers.0.blocks.1.attn"]  # Swin only: swin_block_geometry of the parent block
    rec.image_map("blocks.3.attn", query=(2, 3), image_size=224, chart=0)   # (224, 224) picture

Works on models converted by `mkviz.convert` (ViT, DeiT, Swin; every variant) and on plain timm
models (`timm.layers.Attention`, Swin `WindowAttention`, and `mkviz.fold` output) for side-by-side
pictures; plain layers give fused attention and queries only (no charts).

How: on enter, each selected manifold layer gets a `recorder` (the module then takes its eager
path and hands over x, q, the softmax output and the additive bias); each selected plain timm layer
gets `fused_attn=False` plus a forward-pre hook on `attn_drop` (whose input is the softmax output in
timm's eager path, ViT and Swin alike) and a hook for the queries. On exit — also after an exception —
recorders, `fused_attn` and hooks are restored, so the modules are back on the fused
`scaled_dot_product_attention` path. Outputs are unchanged up to float rounding (eager vs fused).

Per-chart attention uses the recorded q and the additive bias of the layer (mask, Swin's relative
position bias and shift mask), so for Swin every chart sees the same bias term. For VanillaK without
qk_norm the fused logits are the mean of the chart logits, hence the fused attention is the normalised
geometric mean of the chart maps (`docs/design.md` §2.8; tested for ViT and Swin).

Several forwards inside one context: each layer keeps the LAST forward's tensors (`rec.num_forwards`
counts them); call `rec.clear()` to drop everything recorded so far.

Memory: per layer, fused attention is B·heads·N² floats and chart attention H times that
(ViT-S/16 at 224, batch 8, 8 charts: 7.5 MB and 60 MB per layer in fp32), chart keys 19 MB.
Bound it with `layers=`, `charts=False`, `dtype=torch.float16` and `to_cpu=True`, or record lazily:

    with mkviz.record_attention(model, lazy=True) as rec:   # keeps x, q, k (and the bias): O(N) per layer
        model(images)
    rec.attention_rows("blocks.3.attn", [0, 5])             # (B, heads, 2, N)    = rec.attention[...][:, :, [0, 5]]
    rec.attention_rows("blocks.3.attn", 5, chart=2)         # (B, heads, 1, N)    chart 2's row of query 5
    rec.chart_keys_for("blocks.3.attn")                     # (B, H, N, C)        computed from the kept input

A lazy recording leaves manifold layers on the fused path (`ManifoldQKV.qk_recorder`) and keeps, per
layer, the attention input x (B, N, C_in), the queries and keys (B, heads, N, d) after the q/k norms,
and the additive bias; any row, fused or per chart, is recomputed from them on request: the fused row
softmax(q_i·kᵀ·scale + bias_i), the chart row softmax(q_i·k_norm(K_c)ᵀ·scale + bias_i) (docs/design.md
§2.8). For a few queries and a chart map that is linear per token (kernel_size 1, no k_norm) the chart
keys are never formed: q_i·(W_c x_j + β_c) = (W_cᵀ q_i)·x_j + q_i·β_c. Plain timm `Attention` layers are
recorded lazily too (hooks on q_norm and k_norm); plain Swin `WindowAttention` layers keep full maps.
`rec.attention` / `rec.chart_attention` stay empty; `image_map`, `entropy`, `chart_similarity` and `rollout`
compute what they need from rows.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F
from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention
from timm.models.swin_transformer_v2 import WindowAttention as WindowAttentionV2

from ..core import hf
from ..core.attention import ManifoldQKV
from ..core.switches import LayerSpec, attention_layers, eager_attention, eval_mode, select_layers
from . import metrics
from .chart_attention import chart_attention_of, chart_keys_of, chart_linear_map
from .maps import (patch_grid, query_index, swin_block_geometry, swin_token_window, swin_window_attention_to_image,
                   vit_attention_to_image)

# attention_layers ... chart_keys_of: defined in core.switches and explain.chart_attention, named here as before
__all__ = ["AttentionRecording", "record_attention", "attention_layers", "select_layers", "eager_attention",
           "eval_mode", "chart_linear_map", "chart_attention_of", "chart_keys_of"]


# --------------------------------------------------------------------------- the recording
class AttentionRecording:
    """Result of (and context manager for) `record_attention`; see the module docstring.

    Dicts keyed by layer path: `attention`, `chart_attention`, `chart_keys`, `membership`, `queries`,
    `attn_bias` (only with keep_bias=True, manifold layers), `layout` (Swin). Also `layers` (the selected
    paths), `image_size` (the last input's (H, W)), `num_forwards`.
    """

    def __init__(self, model: nn.Module, layers: LayerSpec = None, charts: bool = True, *,
                 to_cpu: bool = False, dtype: Optional[torch.dtype] = None, detach: bool = True,
                 keep_bias: bool = False, lazy: bool = False) -> None:
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype: expected a floating torch.dtype or None; got {dtype!r}")
        self.model = model
        self.layers: List[str] = select_layers(model, layers)
        self.charts = bool(charts)
        self.to_cpu, self.dtype, self.detach, self.keep_bias = bool(to_cpu), dtype, bool(detach), bool(keep_bias)
        self.lazy = bool(lazy)
        self.inputs: Dict[str, torch.Tensor] = {}  # lazy: attention input x (B, N, C_in)
        self.keys: Dict[str, torch.Tensor] = {}  # lazy: keys (B, heads, N, d) after k_norm
        self.attention: Dict[str, torch.Tensor] = {}
        self.chart_attention: Dict[str, torch.Tensor] = {}
        self.chart_keys: Dict[str, torch.Tensor] = {}
        self.membership: Dict[str, torch.Tensor] = {}
        self.queries: Dict[str, torch.Tensor] = {}
        self.attn_bias: Dict[str, torch.Tensor] = {}
        self.layout: Dict[str, dict] = {}
        self.image_size: Optional[Tuple[int, int]] = None
        self.num_forwards = 0
        self._undo: List[Callable[[], None]] = []
        self._keys_buffer: Optional[torch.Tensor] = None  # (B·heads, H·N, d), reused by every layer
        self._operators: Dict[str, tuple] = {}  # lazy rows: each layer's chart operators, formed once
        self._active = False
        for name in self.layers:
            if isinstance(model.get_submodule(name), (WindowAttention, WindowAttentionV2)):
                parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else None
                try:
                    self.layout[name] = swin_block_geometry(parent)
                except ValueError:
                    pass  # not inside a timm SwinTransformerBlock: no layout to map back

    # ------------------------------------------------------------------ storage
    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        if self.detach:
            t = t.detach()
        cast = self.dtype is not None and t.dtype != self.dtype
        move = self.to_cpu and t.device.type != "cpu"
        if not (cast or move) and t.untyped_storage().nbytes() > t.numel() * t.element_size():
            t = t.clone()  # a view into a larger buffer of the model (q inside qkv): keep only the view
        if cast:
            t = t.to(self.dtype)
        if move:
            t = t.to("cpu")
        return t

    def _store(self, kind: str, name: str, t: torch.Tensor) -> None:
        """Keep tensor t as layer `name`'s entry of the dict `kind` ("attention", "chart_keys", ...)."""
        getattr(self, kind)[name] = self._keep(t)

    def clear(self) -> None:
        """Drop every recorded tensor (the hooks stay attached while inside the context)."""
        for d in (self.attention, self.chart_attention, self.chart_keys, self.membership, self.queries,
                  self.attn_bias, self.inputs, self.keys):
            d.clear()
        self._keys_buffer = None
        self._operators.clear()
        self.num_forwards = 0

    # ------------------------------------------------------------------ hooks
    def _manifold_recorder(self, name: str, previous: Optional[Callable]) -> Callable:
        def recorder(module, x, q, attn, attn_bias):
            if previous is not None:
                previous(module, x, q, attn, attn_bias)
            self.attention[name] = self._keep(attn)
            self.queries[name] = self._keep(q)
            if self.keep_bias and attn_bias is not None:
                self.attn_bias[name] = self._keep(attn_bias)
            if not self.charts:
                return
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach):
                self._record_charts(name, module, x, q, attn_bias)
                if module.key.membership is not None:
                    self.membership[name] = self._keep(module.key.membership_probs(x))
        return recorder

    def _lazy_recorder(self, name: str, previous: Optional[Callable]) -> Callable:
        def qk_recorder(module, x, q, k, attn_bias):
            if previous is not None:
                previous(module, x, q, k, attn_bias)
            self.inputs[name], self.queries[name], self.keys[name] = self._keep(x), self._keep(q), self._keep(k)
            if attn_bias is not None:
                self.attn_bias[name] = self._keep(attn_bias)
            if self.charts and module.key.membership is not None:
                self.membership[name] = self._keep(module.key.membership_probs(x))
        return qk_recorder

    def _attach_lazy_plain(self, name: str, module: nn.Module) -> None:
        """Plain timm `Attention`, lazily: x from a pre-hook, q and k from the outputs of q_norm and k_norm."""
        def on_input(_m, args, name=name):
            self.inputs[name] = self._keep(args[0])

        def on_q(_m, _args, out, name=name):
            self.queries[name] = self._keep(out)

        def on_k(_m, _args, out, name=name):
            self.keys[name] = self._keep(out)

        self._undo.append(module.register_forward_pre_hook(on_input).remove)
        self._undo.append(module.q_norm.register_forward_hook(on_q).remove)
        self._undo.append(module.k_norm.register_forward_hook(on_k).remove)

    def _record_charts(self, name: str, module: ManifoldQKV, x: torch.Tensor, q: torch.Tensor,
                       attn_bias: Optional[torch.Tensor]) -> None:
        """Chart keys (B, H, N, C) and per-chart attention (B, H, heads, N, N) of one layer; x (B, N, C_in).

        Without autograd the keys are laid out for the logits in a buffer this recording reuses for every
        layer (`chart_attention_of`), and the softmax runs in place.
        """
        keys = chart_keys_of(module, x)  # (B, H, N, C)
        buffer = None
        if not torch.is_grad_enabled():
            B, H, N, _ = keys.shape
            shape = (B * module.num_heads, H * N, module.head_dim)
            buffer = self._keys_buffer
            if buffer is None or buffer.shape != shape or buffer.dtype != keys.dtype or buffer.device != keys.device:
                buffer = self._keys_buffer = keys.new_empty(shape)  # (B·heads, H·N, d)
        self.chart_keys[name] = self._keep(keys)
        self.chart_attention[name] = self._keep(chart_attention_of(module, q, keys, attn_bias, buffer))

    def _attach(self) -> None:
        model = self.model

        def on_model_input(_module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()), None)
            if isinstance(x, torch.Tensor) and x.dim() == 4:
                self.image_size = (int(x.shape[-2]), int(x.shape[-1]))
            self.num_forwards += 1

        handle = model.register_forward_pre_hook(on_model_input, with_kwargs=True)
        self._undo.append(handle.remove)
        for name in self.layers:
            module = model.get_submodule(name)
            if self.lazy and isinstance(module, ManifoldQKV):
                previous = module.qk_recorder
                module.qk_recorder = self._lazy_recorder(name, previous)
                self._undo.append(lambda m=module, p=previous: setattr(m, "qk_recorder", p))
                continue
            if self.lazy and isinstance(module, Attention) and isinstance(getattr(module, "k_norm", None), nn.Module):
                self._attach_lazy_plain(name, module)
                continue
            if isinstance(module, ManifoldQKV):
                previous = module.recorder
                module.recorder = self._manifold_recorder(name, previous)
                self._undo.append(lambda m=module, p=previous: setattr(m, "recorder", p))
                continue
            if hf.is_hf_attention(module):  # Hugging Face: any attn_implementation (mkviz/core/hf.py)
                self._undo.append(hf.attach_recorder(module, lambda kind, t, name=name: self._store(kind, name, t),
                                                     self.charts, self.keep_bias, grad=not self.detach))
                continue
            # plain timm: eager path, attention = input of attn_drop (right after the softmax)
            eager = contextlib.ExitStack()
            eager.enter_context(eager_attention(model, [name], in_eval=False))
            self._undo.append(eager.close)

            def on_attn(_m, args, name=name):
                self.attention[name] = self._keep(args[0])

            self._undo.append(module.attn_drop.register_forward_pre_hook(on_attn).remove)
            if isinstance(module, WindowAttention):
                def on_qkv(_m, _args, out, name=name, heads=module.num_heads):
                    B_, N, _ = out.shape
                    q = out.reshape(B_, N, 3, heads, -1)[:, :, 0].transpose(1, 2)  # (B·nW, heads, N, d)
                    self.queries[name] = self._keep(q)

                self._undo.append(module.qkv.register_forward_hook(on_qkv).remove)
            elif isinstance(getattr(module, "q_norm", None), nn.Module):
                def on_q(_m, _args, out, name=name):
                    self.queries[name] = self._keep(out)

                self._undo.append(module.q_norm.register_forward_hook(on_q).remove)

    def _detach_hooks(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> "AttentionRecording":
        if self._active:
            raise RuntimeError("this recording is already active")
        self._active = True
        try:
            self._attach()
        except BaseException:
            self._detach_hooks()
            self._active = False
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self._detach_hooks()
        self._keys_buffer = None
        self._active = False

    # ------------------------------------------------------------------ conveniences
    def _get(self, store: Dict[str, torch.Tensor], name: str, what: str) -> torch.Tensor:
        if name not in store:
            if name not in self.layers:
                raise ValueError(f"{name!r} was not recorded; recorded layers: {self.layers}")
            hint = " (plain timm layers and charts=False recordings have no charts)" if store is not self.attention \
                else ""
            raise ValueError(f"no {what} recorded for {name!r}{hint}; run a forward inside the context")
        return store[name]

    # ------------------------------------------------------------------ rows (lazy or full)
    def _recorded(self, name: str) -> bool:
        """True when the layer holds full maps (a full recording, or a plain Swin layer of a lazy one)."""
        return name in self.attention or not self.lazy

    def attention_rows(self, name: str, queries: Union[int, Sequence[int], torch.Tensor],
                       chart: Optional[int] = None) -> torch.Tensor:
        """Rows of a layer's attention for some queries: (B, heads, Q, N) (Swin: (B·nW, heads, Q, Nw), window-local
        query indices), equal to `rec.attention[name][:, :, queries]` (chart c: `rec.chart_attention[name][:, c]`).

        Lazy recordings compute them from the kept x, q, k and bias (module docstring); full ones slice."""
        idx = torch.as_tensor(queries).long().reshape(-1)
        if self._recorded(name):
            maps = self._get(self.attention, name, "attention") if chart is None else \
                self._get(self.chart_attention, name, "chart attention")[:, chart]
            return maps[:, :, self._check_queries(idx, maps.shape[-2]).to(maps.device)]
        q, k = self._get(self.queries, name, "queries"), self._get(self.keys, name, "keys")
        idx = self._check_queries(idx, q.shape[-2]).to(q.device)
        module = self.model.get_submodule(name)
        dtype = torch.promote_types(q.dtype, torch.float32)
        qs = q[:, :, idx].to(dtype) * module.scale  # (B, heads, Q, d)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach):
            logits = qs @ k.to(dtype).transpose(-2, -1) if chart is None else self._chart_logits(name, module, qs, chart)
            bias = self.attn_bias.get(name)
            if bias is not None:
                logits = logits + (bias if bias.shape[-2] == 1 else bias[..., idx.to(bias.device), :]).to(logits)
            return logits.softmax(dim=-1)

    @staticmethod
    def _check_queries(idx: torch.Tensor, n: int) -> torch.Tensor:
        if idx.numel() == 0 or int(idx.min()) < -n or int(idx.max()) >= n:
            raise ValueError(f"queries: expected token indices in [0, {n}); got {idx.tolist()}")
        return idx % n

    def _chart_logits(self, name: str, module: nn.Module, qs: torch.Tensor, chart: int) -> torch.Tensor:
        """q_i·k_norm(K_c)ᵀ for the scaled queries qs (B, heads, Q, d) of chart `chart`: (B, heads, Q, N)."""
        if not isinstance(module, ManifoldQKV) or not self.charts:
            raise ValueError(f"no chart attention for {name!r} (plain timm layers and charts=False recordings have "
                             "no charts)")
        H = module.key.num_charts
        if isinstance(chart, bool) or not isinstance(chart, int) or not 0 <= chart < H:
            raise ValueError(f"chart: expected an int in [0, {H}); got {chart!r}")
        x = self._get(self.inputs, name, "inputs").to(qs)  # (B, N, C_in)
        B, heads, Q, d = qs.shape
        per_token = module.key.kernel_size == 1 and isinstance(getattr(module, "k_norm", nn.Identity()), nn.Identity)
        if per_token and Q * heads <= x.shape[1]:  # few queries: W_cᵀ q_i, then one product with x (no chart keys)
            return self._few_query_chart_logits(name, module.key, qs, x, chart)
        if per_token:
            weight, bias = chart_linear_map(module.key, chart)  # (C, C_in), (C,) or None
            keys = F.linear(x, weight.to(qs), None if bias is None else bias.to(qs))  # (B, N, C)
        else:
            keys = chart_keys_of(module, x)[:, chart]  # (B, N, C)
        k = keys.unflatten(-1, (heads, d))  # (B, N, heads, d)
        if hasattr(module, "k_norm"):
            k = module.k_norm(k)
        return qs @ k.permute(0, 2, 3, 1)  # (B, heads, Q, N)

    def _few_query_chart_logits(self, name: str, key: nn.Module, qs: torch.Tensor, x: torch.Tensor,
                                chart: int) -> torch.Tensor:
        """q_i·K_c,j = (L_cᵀ q_i)·(W_k x_j + b_k) + q_i·a_c for K_c = L_c (W_k x + b_k) + a_c (kernel_size 1):
        matrix-vector products only, O(Q·C·C_in) per head instead of forming the chart keys. -> (B, heads, Q, N).
        The chart operators are formed once per layer and recording (`ManifoldKey.chart_operators`)."""
        B, heads, Q, d = qs.shape
        if name not in self._operators:
            with torch.no_grad():
                self._operators[name] = key.chart_operators()  # (H, C, cin, 1), (H, C) or None
        ops, bias = self._operators[name]
        u = torch.einsum("bhqd,hde->bhqe", qs, ops[chart, :, :, 0].to(qs).view(heads, d, -1))  # (B, heads, Q, cin)
        const = 0.0
        if bias is not None:
            const = (qs * bias[chart].to(qs).view(heads, 1, d)).sum(-1, keepdim=True)  # (B, heads, Q, 1)
        if key.base is not None:  # through the base key: u ← W_kᵀ u, and u·b_k joins the constant
            if key.base.bias is not None:
                const = const + (u @ key.base.bias.to(qs)).unsqueeze(-1)
            u = u @ key.base.weight.to(qs)  # (B, heads, Q, C_in)
        logits = torch.bmm(u.reshape(B, heads * Q, -1), x.transpose(1, 2))  # (B, heads·Q, N): one bmm
        return logits.view(B, heads, Q, -1) + const

    def chart_keys_for(self, name: str) -> torch.Tensor:
        """Chart keys K_c (B, H, N, C) of a layer: recorded, or computed from the kept input (lazy)."""
        if not self.lazy:
            return self._get(self.chart_keys, name, "chart keys")
        module = self.model.get_submodule(name)
        if not isinstance(module, ManifoldQKV) or not self.charts:
            raise ValueError(f"no chart keys for {name!r} (plain timm layers and charts=False recordings have none)")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach):
            return chart_keys_of(module, self._get(self.inputs, name, "inputs"))

    def full_attention(self, name: str, chart: Optional[int] = None) -> torch.Tensor:
        """A layer's whole map (B, heads, N, N) (chart c: that chart's), recorded or computed from every row."""
        if self._recorded(name):
            return self._get(self.attention, name, "attention") if chart is None else \
                self._get(self.chart_attention, name, "chart attention")[:, chart]
        return self.attention_rows(name, torch.arange(self._get(self.queries, name, "queries").shape[-2]), chart)

    # ------------------------------------------------------------------ conveniences
    def image_map(self, name: str, query: Union[int, Tuple[int, int]], image_size=None, chart: Optional[int] = None,
                  head: Optional[int] = None, batch_index: int = 0, mode: Optional[str] = None) -> torch.Tensor:
        """One query's attention as a picture, via `mkviz.explain.maps`.

        name: recorded layer; query: (row, col) on the patch grid (ViT) or the stage token grid (Swin), or for
        ViT a token index (0 = cls); chart: None for the fused attention, else that chart's A_c; head: None
        averages the heads. Returns (gh, gw) / the stage (H, W) grid, or (H_img, W_img) with image_size.
        mode: upsampling, default "bilinear" for ViT and "nearest" for Swin.
        """
        if name in self.layout:
            geo = self.layout[name]
            if not isinstance(query, tuple):
                raise ValueError("query: Swin layers need a (row, col) position on the stage grid")
            _, local = swin_token_window(query, geo["resolution"], geo["window_size"], geo["shift_size"])
            rows = self.attention_rows(name, [local], chart).float()  # (B·nW, heads, 1, Nw)
            attn = rows.new_zeros(*rows.shape[:2], rows.shape[-1], rows.shape[-1])  # only the query's row is read
            attn[:, :, local] = rows[:, :, 0]
            return swin_window_attention_to_image(
                attn, query, geo["resolution"], geo["window_size"], geo["shift_size"], batch_index=batch_index,
                head=head, image_size=image_size, mode=mode or "nearest")
        grid = patch_grid(self.model, self.image_size)
        idx = query if isinstance(query, int) else query_index(query[0], query[1], grid.grid_size,
                                                                   grid.num_prefix_tokens)
        a = self.attention_rows(name, [idx], chart)[batch_index, :, 0].float()  # (heads, N)
        a = a.mean(0) if head is None else a[head]
        return vit_attention_to_image(a, grid.grid_size, grid.num_prefix_tokens, image_size,
                                      mode=mode or "bilinear")

    def chart_maps(self, name: str, query: Union[int, Tuple[int, int]], image_size=None, head: Optional[int] = None,
                   batch_index: int = 0, mode: Optional[str] = None) -> torch.Tensor:
        """Every chart's `image_map` of one query, stacked: (H, gh, gw) / (H, H_img, W_img) with image_size."""
        H = self.model.get_submodule(name).key.num_charts
        return torch.stack([self.image_map(name, query, image_size, chart=c, head=head, batch_index=batch_index,
                                           mode=mode) for c in range(H)])

    def chart_similarity(self, name: str, kind: str = "cosine", **kwargs) -> torch.Tensor:
        """`mkviz.explain.chart_similarity.chart_similarity` of a layer's recorded charts: (H, H)."""
        if kind == "js":
            if self._recorded(name):
                chart_attn = self._get(self.chart_attention, name, "chart attention")
            else:
                H = self.model.get_submodule(name).key.num_charts
                chart_attn = torch.stack([self.full_attention(name, c) for c in range(H)], dim=1)
            return metrics.chart_similarity(chart_attn=chart_attn, kind=kind, **kwargs)
        return metrics.chart_similarity(chart_keys=self.chart_keys_for(name), kind=kind, **kwargs)

    def entropy(self, name: str, chart: Optional[int] = None, reduce: str = "mean") -> torch.Tensor:
        """`mkviz.explain.metrics.attention_entropy` of the fused (or one chart's) attention."""
        return metrics.attention_entropy(self.full_attention(name, chart), reduce=reduce)

    def rollout(self, **kwargs) -> torch.Tensor:
        """`mkviz.explain.metrics.attention_rollout` over the recorded layers in model order (ViT layers only)."""
        names = [n for n in self.layers if (n in self.attention or n in self.queries) and n not in self.layout]
        if not names:
            raise ValueError("rollout needs recorded ViT attention (Swin windows cannot be rolled out)")
        return metrics.attention_rollout([self.full_attention(n) for n in names], **kwargs)

    def __repr__(self) -> str:
        return (f"AttentionRecording(layers={len(self.layers)}, charts={self.charts}, recorded={len(self.attention)}, "
                f"num_forwards={self.num_forwards})")

def record_attention(model: nn.Module, layers: LayerSpec = None, charts: bool = True, *, to_cpu: bool = False,
                     dtype: Optional[torch.dtype] = None, detach: bool = True,
                     keep_bias: bool = False, lazy: bool = False) -> AttentionRecording:
    """Context manager recording attention of `model`'s attention layers during forwards inside it.

    Args:
        model: a converted (mkviz) or plain timm ViT / DeiT / Swin, or Hugging Face ViT / DeiT / Swin / DINOv2.
        layers: selection, see `select_layers` (None = all; names, fnmatch patterns, ints).
        charts: also record chart keys, per-chart attention and (KUA) memberships of manifold layers.
        to_cpu: move recorded tensors to the CPU as they are recorded.
        dtype: cast recorded tensors (e.g. torch.float16) to save memory.
        detach: store detached tensors (default); False keeps the autograd graph (for attributions).
        keep_bias: also store the additive logit bias (`rec.attn_bias`, manifold layers), e.g. Swin's
            relative position bias + shift mask, so per-chart maps can be recomputed exactly.
        lazy: keep what any row needs (x, q, k, bias) instead of the N × N maps; read rows with
            `rec.attention_rows` (module docstring). Memory O(N) per layer, the forward stays fused.

    Returns an `AttentionRecording`; use it with `with ... as rec:`.
    """
    return AttentionRecording(model, layers, charts, to_cpu=to_cpu, dtype=dtype, detach=detach, keep_bias=keep_bias,
                              lazy=lazy)
