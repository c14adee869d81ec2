"""The check that a function-preserving conversion kept the key: the manifold key against the original
linear key on a probe input, in full float32 precision."""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn

__all__ = ["full_float32", "check_preserves_key"]


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off for CUDA matmuls and cuDNN convolutions while inside (cuDNN allows TF32 by default on Ampere
    and later GPUs, where it rounds float32 products to a 10-bit mantissa); restored on exit."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@torch.no_grad()
def check_preserves_key(path: str, key: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        perturbation: float) -> None:
    """ValueError when `key` (a ManifoldKey) does not compute the linear key (weight (A, C_in), bias (A,) or
    None) on a probe input: a perturbation so large that rounding swamps the zero-sum cancellation."""
    if weight.is_meta:
        return
    x = torch.randn(1, 4, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight)
    training, key.training = key.training, False  # no KUA atlas term from the probe
    try:
        with full_float32():
            got = key(x)
            ref = nn.functional.linear(x, weight, bias)
    finally:
        key.training = training
    err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
    tol = max(1e-4, 8 * torch.finfo(weight.dtype).eps) if weight.is_floating_point() else 1e-4
    if err > tol:
        raise ValueError(f"{path}: perturbation={perturbation:g} is too large to keep the model's function: the "
                         f"converted key differs from the original by {err:.1e} (relative, allowed {tol:.0e}); "
                         "use a smaller perturbation (default 0.1), or init='scratch'")
