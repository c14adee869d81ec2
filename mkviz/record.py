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
Bound it with `layers=`, `charts=False`, `dtype=torch.float16` and `to_cpu=True`.
"""
from __future__ import annotations

import contextlib
import fnmatch
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention
from timm.models.swin_transformer_v2 import WindowAttention as WindowAttentionV2

from . import hf
from .attention import ManifoldQKV
from .modes import temporarily
from .maps import (patch_grid, query_index, swin_block_geometry, swin_window_attention_to_image,
                   vit_attention_to_image)
from . import metrics as _metrics

__all__ = ["AttentionRecording", "record_attention", "attention_layers", "select_layers", "eager_attention",
           "eval_mode"]

LayerSpec = Union[None, str, int, Sequence[Union[str, int]]]


# --------------------------------------------------------------------------- discovery
def _is_plain(module: nn.Module) -> bool:
    return isinstance(module, (Attention, WindowAttention)) and not isinstance(module, ManifoldQKV)


def attention_layers(model: nn.Module) -> List[str]:
    """Module paths of every recordable attention layer in `model`, in model order.

    Recordable: mkviz manifold-key attention (`ManifoldAttention`, `ManifoldWindowAttention`) and plain
    timm `Attention` (ViT, DeiT, folded models) and Swin `WindowAttention`; Hugging Face ViT, DeiT, Swin and
    DINOv2 attention, plain or converted (`mkviz/hf.py`).
    """
    return [name for name, m in model.named_modules()
            if isinstance(m, ManifoldQKV) or _is_plain(m) or hf.is_hf_attention(m)]


def select_layers(model: nn.Module, layers: LayerSpec = None) -> List[str]:
    """Resolve a layer selection to module paths (model order, no duplicates).

    layers: None (all), or one or a list of: an exact path ("blocks.3.attn"), an fnmatch pattern
    ("blocks.1?.attn", "layers.0.*"), or an int indexing the attention layers in model order (the block
    index for ViT, the global block index across stages for Swin; negative ints count from the end).
    Raises ValueError listing the available layers for a name, pattern or index that matches nothing.
    """
    available = attention_layers(model)
    if not available:
        raise ValueError(f"{type(model).__name__} has no recordable attention layer (mkviz manifold attention, "
                         "timm Attention or Swin WindowAttention)")
    if layers is None:
        return available
    specs = [layers] if isinstance(layers, (str, int)) else list(layers)
    chosen = set()
    for spec in specs:
        if isinstance(spec, bool) or not isinstance(spec, (str, int)):
            raise ValueError(f"layers: expected names, patterns or ints; got {spec!r}")
        if isinstance(spec, int):
            if not -len(available) <= spec < len(available):
                raise ValueError(f"layers: index {spec} out of range for {len(available)} attention layers; "
                                 f"available: {available}")
            chosen.add(available[spec])
            continue
        hits = [n for n in available if n == spec or fnmatch.fnmatchcase(n, spec)]
        if not hits:
            raise ValueError(f"layers: {spec!r} matches no attention layer; available: {available}")
        chosen.update(hits)
    return [n for n in available if n in chosen]


# --------------------------------------------------------------------------- per-chart attention
def chart_keys_of(module: ManifoldQKV, x: torch.Tensor) -> torch.Tensor:
    """Chart keys K_c of a manifold module for its input x (B, N, C_in): (B, H, N, C) (`key.chart_keys`)."""
    return module.key.chart_keys(x)


def chart_attention_of(module: ManifoldQKV, q: torch.Tensor, chart_keys: torch.Tensor,
                       attn_bias: Optional[torch.Tensor], keys_buffer: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-chart attention A_c = softmax(q · k_norm(K_c)ᵀ · scale + attn_bias).

    q: (B, heads, N, d) after q_norm; chart_keys: (B, H, N, heads·d); attn_bias broadcastable to
    (B, heads, N, N) or None; keys_buffer: optional (B·heads, H·N, d) tensor to lay the keys out in (a
    recording reuses one for every layer) instead of a new copy. Returns (B, H, heads, N, N), a permuted
    view of a (B, heads, N, H, N) buffer: all charts come from ONE batched matmul per (image, head)
    without copying q per chart.
    """
    B, H, N, _ = chart_keys.shape
    heads, d = module.num_heads, module.head_dim
    k = module.logit_keys(chart_keys)  # (B, H, N, heads, d): k_norm (rotary embedding, cosine) as the forward
    k = k.permute(0, 3, 1, 2, 4)  # (B, heads, H, N, d)
    if keys_buffer is None:
        k = k.reshape(B * heads, H * N, d)  # (B·heads, H·N, d): every chart's keys, rows (chart, token), a copy
    else:
        keys_buffer.view(B, heads, H, N, d).copy_(k)
        k = keys_buffer  # (B·heads, H·N, d)
    return _chart_softmax(module, q, k, attn_bias, H)


def _chart_softmax(module: ManifoldQKV, q: torch.Tensor, k: torch.Tensor, attn_bias: Optional[torch.Tensor],
                   H: int) -> torch.Tensor:
    """q (B, heads, N, d), k (B·heads, H·N, d) (rows: chart, token) -> per-chart attention (B, H, heads, N, N),
    a permuted view. Without autograd the softmax runs in place: the maps are the recording's largest tensors."""
    B, heads, N, d = q.shape
    # q · kᵀ with k's rows contiguous: on CPU about twice as fast as the same product with k as (d, H·N)
    logits = torch.bmm((q * module.scale).reshape(B * heads, N, d), k.transpose(1, 2))  # (B·heads, N, H·N)
    logits = logits.view(B, heads, N, H, N)
    if attn_bias is not None:  # the same bias for every chart
        logits = logits + attn_bias.unsqueeze(-2) if torch.is_grad_enabled() else logits.add_(attn_bias.unsqueeze(-2))
    if torch.is_grad_enabled():
        probs = logits.softmax(dim=-1)
    elif logits.device.type == "cpu":  # in place, the fused CPU kernel (row by row): no second buffer
        probs = torch.ops.aten._softmax.out(logits, -1, False, out=logits)
    else:  # in place, step by step
        logits -= logits.amax(dim=-1, keepdim=True)
        probs = logits.exp_()
        probs /= probs.sum(dim=-1, keepdim=True)
    return probs.permute(0, 3, 1, 2, 4)  # (B, H, heads, N, N)


# --------------------------------------------------------------------------- eager attention
@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put every module of `model` in eval mode; restores each module's own `training` flag."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, t in saved:
            m.training = t


@contextlib.contextmanager
def eager_attention(model: nn.Module, layers: LayerSpec = None, in_eval: bool = True) -> Iterator[List[str]]:
    """Temporarily run attention layers on timm's eager path (`fused_attn=False`), so that hooks on
    `attn_drop` see the attention matrix and FLOP counters see its matmuls; with `in_eval`, also the
    whole model in eval mode (`eval_mode`). Restores both. Yields the layer paths switched.

    layers: None, every module with a `fused_attn` switch (any timm attention); else a selection as in
    `select_layers`.
    """
    names = ([n for n, m in model.named_modules() if hasattr(m, "fused_attn")] if layers is None
             else select_layers(model, layers))
    with contextlib.ExitStack() as stack:
        if in_eval:
            stack.enter_context(eval_mode(model))
        stack.enter_context(temporarily([model.get_submodule(n) for n in names], "fused_attn", False))
        yield names


# --------------------------------------------------------------------------- the recording
class AttentionRecording:
    """Result of (and context manager for) `record_attention`; see the module docstring.

    Dicts keyed by layer path: `attention`, `chart_attention`, `chart_keys`, `membership`, `queries`,
    `attn_bias` (only with keep_bias=True, manifold layers), `layout` (Swin). Also `layers` (the selected
    paths), `image_size` (the last input's (H, W)), `num_forwards`.
    """

    def __init__(self, model: nn.Module, layers: LayerSpec = None, charts: bool = True, *,
                 to_cpu: bool = False, dtype: Optional[torch.dtype] = None, detach: bool = True,
                 keep_bias: bool = False) -> None:
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype: expected a floating torch.dtype or None; got {dtype!r}")
        self.model = model
        self.layers: List[str] = select_layers(model, layers)
        self.charts = bool(charts)
        self.to_cpu, self.dtype, self.detach, self.keep_bias = bool(to_cpu), dtype, bool(detach), bool(keep_bias)
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
                  self.attn_bias):
            d.clear()
        self._keys_buffer = None
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
            if isinstance(module, ManifoldQKV):
                previous = module.recorder
                module.recorder = self._manifold_recorder(name, previous)
                self._undo.append(lambda m=module, p=previous: setattr(m, "recorder", p))
                continue
            if hf.is_hf_attention(module):  # Hugging Face: any attn_implementation (mkviz/hf.py)
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

    def image_map(self, name: str, query: Union[int, Tuple[int, int]], image_size=None, chart: Optional[int] = None,
                  head: Optional[int] = None, batch_index: int = 0, mode: Optional[str] = None) -> torch.Tensor:
        """One query's attention as a picture, via `mkviz.maps`.

        name: recorded layer; query: (row, col) on the patch grid (ViT) or the stage token grid (Swin), or for
        ViT a token index (0 = cls); chart: None for the fused attention, else that chart's A_c; head: None
        averages the heads. Returns (gh, gw) / the stage (H, W) grid, or (H_img, W_img) with image_size.
        mode: upsampling, default "bilinear" for ViT and "nearest" for Swin.
        """
        attn = self._get(self.attention, name, "attention") if chart is None else \
            self._get(self.chart_attention, name, "chart attention")[:, chart]
        attn = attn.float()
        if name in self.layout:
            geo = self.layout[name]
            if not isinstance(query, tuple):
                raise ValueError("query: Swin layers need a (row, col) position on the stage grid")
            return swin_window_attention_to_image(
                attn, query, geo["resolution"], geo["window_size"], geo["shift_size"], batch_index=batch_index,
                head=head, image_size=image_size, mode=mode or "nearest")
        grid = patch_grid(self.model, self.image_size)
        a = attn[batch_index]  # (heads, N, N)
        a = a.mean(0) if head is None else a[head]
        idx = query if isinstance(query, int) else query_index(query[0], query[1], grid.grid_size,
                                                                   grid.num_prefix_tokens)
        return vit_attention_to_image(a[idx], grid.grid_size, grid.num_prefix_tokens, image_size,
                                      mode=mode or "bilinear")

    def chart_similarity(self, name: str, kind: str = "cosine", **kwargs) -> torch.Tensor:
        """`mkviz.metrics.chart_similarity` of a layer's recorded charts: (H, H)."""
        if kind == "js":
            return _metrics.chart_similarity(chart_attn=self._get(self.chart_attention, name, "chart attention"),
                                             kind=kind, **kwargs)
        return _metrics.chart_similarity(chart_keys=self._get(self.chart_keys, name, "chart keys"), kind=kind,
                                         **kwargs)

    def entropy(self, name: str, chart: Optional[int] = None, reduce: str = "mean") -> torch.Tensor:
        """`mkviz.metrics.attention_entropy` of the fused (or one chart's) attention."""
        attn = self._get(self.attention, name, "attention") if chart is None else \
            self._get(self.chart_attention, name, "chart attention")[:, chart]
        return _metrics.attention_entropy(attn, reduce=reduce)

    def rollout(self, **kwargs) -> torch.Tensor:
        """`mkviz.metrics.attention_rollout` over the recorded layers in model order (ViT layers only)."""
        names = [n for n in self.layers if n in self.attention and n not in self.layout]
        if not names:
            raise ValueError("rollout needs recorded ViT attention (Swin windows cannot be rolled out)")
        return _metrics.attention_rollout([self.attention[n] for n in names], **kwargs)

    def __repr__(self) -> str:
        return (f"AttentionRecording(layers={len(self.layers)}, charts={self.charts}, recorded={len(self.attention)}, "
                f"num_forwards={self.num_forwards})")


def record_attention(model: nn.Module, layers: LayerSpec = None, charts: bool = True, *, to_cpu: bool = False,
                     dtype: Optional[torch.dtype] = None, detach: bool = True,
                     keep_bias: bool = False) -> AttentionRecording:
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

    Returns an `AttentionRecording`; use it with `with ... as rec:`.
    """
    return AttentionRecording(model, layers, charts, to_cpu=to_cpu, dtype=dtype, detach=detach, keep_bias=keep_bias)
