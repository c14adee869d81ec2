"""The attention layers of a model, and switches on them for a while: eval mode and timm's eager path.

`eager_attention` lets hooks see the attention matrix and FLOP counters see its matmuls; recording
(`mkviz.explain.record`), attributions and FLOP counting (`mkviz.core.cost`) use it.
"""
from __future__ import annotations

import contextlib
import fnmatch
from typing import Iterator, List, Sequence, Union

from torch import nn
from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention

from . import hf
from .attention import ManifoldQKV
from .modes import temporarily

__all__ = ["LayerSpec", "attention_layers", "select_layers", "is_plain_attention", "eval_mode", "eager_attention"]

LayerSpec = Union[None, str, int, Sequence[Union[str, int]]]


# --------------------------------------------------------------------------- attention layers of a model
def is_plain_attention(module: nn.Module) -> bool:
    """A timm attention layer (ViT `Attention`, Swin `WindowAttention`) that mkviz has not converted."""
    return isinstance(module, (Attention, WindowAttention)) and not isinstance(module, ManifoldQKV)


def attention_layers(model: nn.Module) -> List[str]:
    """Module paths of every recordable attention layer in `model`, in model order.

    Recordable: mkviz manifold-key attention (`ManifoldAttention`, `ManifoldWindowAttention`) and plain
    timm `Attention` (ViT, DeiT, folded models) and Swin `WindowAttention`; Hugging Face ViT, DeiT, Swin and
    DINOv2 attention, plain or converted (`mkviz/core/hf.py`).
    """
    return [name for name, m in model.named_modules()
            if isinstance(m, ManifoldQKV) or is_plain_attention(m) or hf.is_hf_attention(m)]


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


# --------------------------------------------------------------------------- eval mode and timm's eager path
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
