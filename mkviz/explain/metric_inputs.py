"""The argument checks the metrics share: tensors of the expected rank, square attention maps, chart keys, the
patch tokens of a sequence (after its prefix tokens).
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch

__all__ = ["EPS", "check_tensor", "as_float", "to_2tuple_float", "check_chart_keys", "check_square_attn", "patch_slice"]


GridSize = Union[int, Tuple[int, int], Sequence[int]]

EPS = 1e-12

# --------------------------------------------------------------------------- helpers
def check_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    return x

def as_float(x: torch.Tensor) -> torch.Tensor:
    """Promote to at least float32 (float64 stays float64)."""
    if x.dtype == torch.float64:
        return x
    return x.float()

def to_2tuple_float(v, name: str) -> Tuple[float, float]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        out = (float(v), float(v))
    elif isinstance(v, (tuple, list)) and len(v) == 2:
        out = (float(v[0]), float(v[1]))
    else:
        raise ValueError(f"`{name}` must be a number or a pair (h, w), got {v!r}")
    if out[0] <= 0 or out[1] <= 0:
        raise ValueError(f"`{name}` must be positive, got {out}")
    return out

def check_chart_keys(chart_keys) -> torch.Tensor:
    check_tensor(chart_keys, "chart_keys")
    if chart_keys.dim() != 4:
        raise ValueError(
            f"`chart_keys` must have shape (B, H, N, C) (batch, charts, tokens, channels), "
            f"got {tuple(chart_keys.shape)}"
        )
    return chart_keys

def check_square_attn(attn, name: str, min_dim: int = 2) -> torch.Tensor:
    check_tensor(attn, name)
    if attn.dim() < min_dim or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(
            f"`{name}` must have shape (..., N, N) with at least {min_dim} dims, "
            f"got {tuple(attn.shape)}"
        )
    return attn

def patch_slice(n_tokens: int, grid_size: Tuple[int, int], num_prefix_tokens: int, name: str):
    gh, gw = grid_size
    if num_prefix_tokens < 0:
        raise ValueError(f"`num_prefix_tokens` must be >= 0, got {num_prefix_tokens}")
    if n_tokens != num_prefix_tokens + gh * gw:
        raise ValueError(
            f"`{name}` last dim must be N = num_prefix_tokens + gh*gw = "
            f"{num_prefix_tokens} + {gh}*{gw} = {num_prefix_tokens + gh * gw}, got {n_tokens}"
        )
    return slice(num_prefix_tokens, n_tokens)
