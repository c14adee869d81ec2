"""What the manifold attention classes of `mkviz.core.families` and `mkviz.core.rope_attention` share when they
are built from a timm module: its q, k, v and output projections loaded into the new module, its options.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .attention import ManifoldQKV

__all__ = ["load_projections", "manifold_options", "split_qkv", "fused_qkv_parts", "refuse_context_broadcast", "finish_conversion"]


# (weight (A, C_in), bias (A,) or None) of one of q, k, v
Projection = Tuple[torch.Tensor, Optional[torch.Tensor]]

def manifold_options(kwargs: dict) -> dict:
    """Split the manifold-key options off a constructor's keyword arguments (the rest is timm's)."""
    names = ("variant", "num_charts", "kernel_size", "expand_from", "ua_weight")
    defaults = dict(variant="vanillak", num_charts=8, kernel_size=1, expand_from="key", ua_weight=0.0)
    return {n: kwargs.pop(n, defaults[n]) for n in names}

def split_qkv(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> Tuple[Projection, Projection, Projection]:
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

def fused_qkv_parts(module: ManifoldQKV) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The folded layer's qkv: weight (3A, C_in), bias (3A,) or None (`ManifoldQKV.qkv_linear`, without autograd)."""
    with torch.no_grad():
        weight, bias = module.qkv_linear()
    return weight.clone(), (bias.clone() if bias is not None else None)

def refuse_context_broadcast(module: ManifoldQKV, family: str) -> None:
    if module.context_broadcast is not None:
        raise ValueError(f"fold(): a {family} layer with context_broadcast=True has no plain timm counterpart "
                         "(timm's module has no place for the CB gate); keep the unfolded model")

def finish_conversion(new: nn.Module, old: ManifoldQKV) -> nn.Module:
    new.fused_attn = old.fused_attn
    new.train(old.training)
    return new
