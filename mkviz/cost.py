"""What a model costs: parameters and FLOPs (counted by `torch.utils.flop_counter`)."""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .key import ManifoldKey

__all__ = ["count_params", "count_flops", "key_impl"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextlib.contextmanager
def key_impl(model: nn.Module, impl: str) -> Iterator[nn.Module]:
    """Temporarily run every `ManifoldKey` in `model` with impl "fast" or "reference"."""
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl must be 'fast' or 'reference'; got {impl!r}")
    keys = [m for m in model.modules() if isinstance(m, ManifoldKey)]
    saved = [k.impl for k in keys]
    try:
        for k in keys:
            k.impl = impl
        yield model
    finally:
        for k, s in zip(keys, saved):
            k.impl = s


@contextlib.contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    # FlopCounterMode does not count CPU scaled_dot_product_attention: count the eager matmuls instead
    mods = [m for m in model.modules() if hasattr(m, "fused_attn")]
    saved = [m.fused_attn for m in mods]
    try:
        for m in mods:
            m.fused_attn = False
        yield
    finally:
        for m, s in zip(mods, saved):
            m.fused_attn = s


def count_flops(model: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224), reference: bool = True) -> int:
    """FLOPs of one forward pass on a zero input of `input_size` (B, C, H, W); a multiply-add counts 2.

    reference=True (default) counts the manifold key as written, every chart materialised: the
    nominal cost of the architecture. reference=False counts what the fast path executes
    (parameter-space key matrix, `docs/design.md` §6). Attention matmuls are counted on the eager path.
    """
    if len(input_size) != 4 or any(int(s) < 1 for s in input_size):
        raise ValueError(f"input_size must be (batch, channels, height, width) of positive ints; got {input_size!r}")
    ref = next(model.parameters())
    x = torch.zeros(*input_size, device=ref.device, dtype=ref.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), key_impl(model, "reference" if reference else "fast"), _eager_attention(model), \
                FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
