"""The over-parameterised key: the manifold key's extra parameters without its charts (a control).

At kernel size 1 the linear variants (VanillaK, SimpleK, SpatialK) compute a key that is one linear map
of the tokens, written as a product of several matrices: they re-parameterise a plain ViT's key. Training
such a product can differ from training the single matrix (ExpandNets, Guo et al., NeurIPS 2020), so a
manifold key that beats the baseline might do so through over-parameterisation alone. This control
factorises the key projection into two linear layers with no chart structure (no shared base key, no
scales, no fusion) and a hidden width E chosen to match a manifold key's parameter count:

    K = W_2 (W_1 x + b_1) + b_2,   W_1: (E, C_in),  W_2: (C, E)           x: (B, N, C_in) -> K: (B, N, C)

The product is formed in parameter space every forward, W = W_2 W_1 (C, C_in) and b = W_2 b_1 + b_2, so a
step costs what a plain ViT's does, as for the manifold key's fast path (`docs/design.md` §6, §12).

`factorise_key(model, hidden_dim)` swaps the `qkv` projection of every timm `Attention` / Swin
`WindowAttention` for a `FactorisedKeyQKV` (queries and values keep one linear layer); `fold_key` undoes it
exactly (the product becomes the plain `qkv` again).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F
from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention

__all__ = ["FactorisedKeyQKV", "factorise_key", "fold_key", "key_hidden_for_params", "INITS"]

INITS: tuple[str, ...] = ("scratch", "preserve")


class FactorisedKeyQKV(nn.Module):
    """A drop-in for timm's fused `qkv` Linear(C_in, 3A) whose key rows are the product of two linear layers.

    Args:
        in_dim: width C_in of the tokens.
        attn_dim: width A of each of q, k, v (num_heads · head_dim).
        hidden_dim: the key's hidden width E >= 1.
        bias: biases on every layer (timm's `qkv_bias`).

    forward: x (..., C_in) -> (..., 3A) with the layout of timm's qkv output, [q; k; v].
    """

    def __init__(self, in_dim: int, attn_dim: int, hidden_dim: int, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 1:
            raise ValueError(f"hidden_dim must be an integer >= 1; got {hidden_dim!r}")
        dd = {"device": device, "dtype": dtype}
        self.in_dim, self.attn_dim, self.hidden_dim = in_dim, attn_dim, hidden_dim
        self.qv = nn.Linear(in_dim, 2 * attn_dim, bias=bias, **dd)       # rows [q; v]
        self.key_in = nn.Linear(in_dim, hidden_dim, bias=bias, **dd)     # W_1, b_1
        self.key_out = nn.Linear(hidden_dim, attn_dim, bias=bias, **dd)  # W_2, b_2
        self.reset_parameters()

    @property
    def in_features(self) -> int:  # what code reading a timm qkv Linear asks for
        return self.in_dim

    @property
    def out_features(self) -> int:
        return 3 * self.attn_dim

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, attn_dim={self.attn_dim}, hidden_dim={self.hidden_dim}"

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """From scratch: q/v and W_1 trunc-normal(0.02) as timm's ViT; W_2 normal(0, 1/E), so that the product
        W_2 W_1 has a plain key's entry std 0.02; biases 0."""
        for layer, std in ((self.qv, 0.02), (self.key_in, 0.02), (self.key_out, 1 / math.sqrt(self.hidden_dim))):
            w = torch.randn(layer.weight.shape, generator=generator, dtype=torch.float32).clamp_(-2, 2) * std
            layer.weight.copy_(w)
            if layer.bias is not None:
                layer.bias.zero_()

    @torch.no_grad()
    def load_linear(self, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    generator: Optional[torch.Generator] = None) -> None:
        """Start from a plain qkv (weight (3A, C_in), bias (3A,) or None) exactly: W_1 holds the key rows
        in its first A rows (the rest trunc-normal(0.02)), W_2 = [I_A | 0]. Needs hidden_dim >= attn_dim."""
        A = self.attn_dim
        if self.hidden_dim < A:
            raise ValueError(f"init='preserve' needs hidden_dim >= the key width {A}; got {self.hidden_dim}")
        self.reset_parameters(generator)
        self.qv.weight.copy_(torch.cat([weight[:A], weight[2 * A:]]))
        self.key_in.weight[:A].copy_(weight[A:2 * A])
        self.key_out.weight.zero_()
        self.key_out.weight[:, :A].copy_(torch.eye(A))
        if bias is not None and self.qv.bias is not None:
            self.qv.bias.copy_(torch.cat([bias[:A], bias[2 * A:]]))
            self.key_in.bias[:A].copy_(bias[A:2 * A])

    def key_linear(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The key's single linear map: weight W_2 W_1 (A, C_in), bias W_2 b_1 + b_2 (A,) or None."""
        weight = self.key_out.weight @ self.key_in.weight  # (A, E) @ (E, C_in) -> (A, C_in)
        if self.key_in.bias is None:
            return weight, None
        return weight, self.key_out.weight @ self.key_in.bias + self.key_out.bias

    def qkv_linear(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """timm's fused qkv: weight (3A, C_in) with rows [q; k; v], bias (3A,) or None."""
        A = self.attn_dim
        k_weight, k_bias = self.key_linear()
        weight = torch.cat([self.qv.weight[:A], k_weight, self.qv.weight[A:]])
        bias = None if self.qv.bias is None else torch.cat([self.qv.bias[:A], k_bias, self.qv.bias[A:]])
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., C_in) -> (..., 3A)."""
        weight, bias = self.qkv_linear()
        return F.linear(x, weight, bias)


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every timm `Attention` / Swin `WindowAttention` (whose forward only calls `qkv(x)`)."""
    return [(name, m) for name, m in model.named_modules() if type(m) in (Attention, WindowAttention)]


def factorise_key(model: nn.Module, hidden_dim: int, init: str = "scratch", seed: Optional[int] = 0) -> nn.Module:
    """Replace (in place) the `qkv` of every timm attention in `model` by a `FactorisedKeyQKV` of key width
    `hidden_dim`; returns `model`. init "scratch": fresh weights (seeded by `seed`); "preserve": the model's
    function is unchanged (needs hidden_dim >= the key width)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITS))}; got {init!r}")
    found = [(n, m) for n, m in _attention_modules(model) if isinstance(m.qkv, nn.Linear)]
    if not found:
        raise ValueError("model: no timm Attention or Swin WindowAttention (timm ViT/DeiT/Swin V1) to factorise")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for _, module in found:
        old = module.qkv
        A = old.out_features // 3
        new = FactorisedKeyQKV(old.in_features, A, hidden_dim, bias=old.bias is not None,
                               device=old.weight.device, dtype=old.weight.dtype)
        if init == "preserve":
            new.load_linear(old.weight.detach(), None if old.bias is None else old.bias.detach(), generator)
        else:
            new.reset_parameters(generator)
        module.qkv = new
    return model


@torch.no_grad()
def fold_key(model: nn.Module) -> nn.Module:
    """Replace (in place) every `FactorisedKeyQKV` by the plain nn.Linear it computes; returns `model`."""
    for _, module in _attention_modules(model):
        if isinstance(module.qkv, FactorisedKeyQKV):
            old = module.qkv
            weight, bias = old.qkv_linear()
            new = nn.Linear(old.in_dim, 3 * old.attn_dim, bias=bias is not None,
                            device=weight.device, dtype=weight.dtype)
            new.weight.copy_(weight)
            if bias is not None:
                new.bias.copy_(bias)
            module.qkv = new
    return model


def key_hidden_for_params(in_dim: int, attn_dim: int, extra_params: int, bias: bool = True) -> int:
    """The hidden width E whose factorised key adds `extra_params` parameters to a plain key, per layer
    (nearest integer, at least 1): a plain key has A·C_in (+A) parameters, the factorised one
    E·C_in + A·E (+E +A), so the extra is E·(C_in + A + bias) − A·C_in."""
    per_hidden = in_dim + attn_dim + int(bias)
    return max(1, round((extra_params + attn_dim * in_dim) / per_hidden))
