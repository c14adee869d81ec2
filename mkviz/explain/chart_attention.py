"""Per-chart attention of a manifold layer: chart c's keys K_c and A_c = softmax(q · k_norm(K_c)ᵀ · scale + bias),
all charts from one batched matmul per (image, head) (docs/design.md §2.8); `record_attention` computes them
from what it recorded.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..core.attention import ManifoldQKV

__all__ = ["chart_linear_map"]


# --------------------------------------------------------------------------- per-chart attention
def chart_keys_of(module: ManifoldQKV, x: torch.Tensor) -> torch.Tensor:
    """Chart keys K_c of a manifold module for its input x (B, N, C_in): (B, H, N, C) (`key.chart_keys`)."""
    return module.key.chart_keys(x)

def chart_linear_map(key: nn.Module, chart: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Chart c's key as one affine map of the attention input (kernel_size 1): K_c = x Wᵀ + β, W (C, C_in),
    β (C,) or None; the chart operator (`ManifoldKey.chart_operators`) composed with the base key."""
    if key.kernel_size != 1:
        raise ValueError(f"chart_linear_map needs kernel_size 1; this key has {key.kernel_size}")
    ops, bias = key.chart_operators()  # (H, C, cin, 1), (H, C) or None
    weight, beta = ops[chart, :, :, 0], None if bias is None else bias[chart]  # (C, cin), (C,)
    if key.base is None:
        return weight, beta
    if key.base.bias is not None:
        base_bias = weight @ key.base.bias
        beta = base_bias if beta is None else beta + base_bias
    return weight @ key.base.weight, beta

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
