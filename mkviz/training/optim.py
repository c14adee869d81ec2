"""The optimiser of `mkviz train`: AdamW whose weight decay respects the manifold key's parameters.

Plain AdamW decays every matrix towards 0. For the manifold key that is the wrong pull (see
`docs/design.md` §7):

* chart scales `key.scale` (H, C) start at 1 and get **no** decay, like timm's LayerScale gammas;
* chart maps φ_c = I + δ_c (`key.chart_maps.weight` when a base key exists) are decayed **towards
  the identity**: the decoupled decay acts on δ_c = φ_c − I, not on φ_c;
* SimpleK's `key.fusion.weight` is decayed towards the mean fusion (H stacked identities / H);
* everything else as timm does it: biases, norms, 1-D parameters and `no_weight_decay()` names
  get none, other matrices (the base key, SpatialK's wide layer, memberships) decay towards 0.

Decay towards an anchor a is AdamW's decoupled step with p replaced by p − a:
``p ← p − lr·λ·(p − a)``, applied just before ``optimizer.step()`` (where AdamW applies its own).
It is stateless, so an exactly resumed run stays exact.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..core.models import manifold_modules

__all__ = ["AnchoredDecay", "decay_anchors", "build_optimizer"]


@torch.no_grad()
def decay_anchors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter name -> the value weight decay pulls it towards, for the manifold keys in `model`.

    chart maps with a base key: the identity at the kernel's centre tap, shape (H·C, C, k);
    SimpleK fusion: the mean of the charts, shape (C, H·C, 1). Parameters not listed decay to 0.
    """
    anchors: dict[str, torch.Tensor] = {}
    for path, module in manifold_modules(model):
        key = module.key
        prefix = f"{path}.key." if path else "key."
        H, C = key.num_charts, key.key_dim
        if key.base is not None:  # φ_c = I + δ_c
            w = key.chart_maps.weight  # (H·C, C, k)
            anchor = torch.zeros_like(w)
            anchor[:, :, w.shape[-1] // 2] = torch.eye(C, dtype=w.dtype, device=w.device).repeat(H, 1)
            anchors[prefix + "chart_maps.weight"] = anchor
        if key.fusion is not None:
            fw = key.fusion.weight  # (C, H·C, 1)
            anchors[prefix + "fusion.weight"] = (torch.eye(C, dtype=fw.dtype, device=fw.device)
                                                 .repeat(1, H).unsqueeze(-1) / H)
    return anchors


def _no_decay_names(model: nn.Module) -> set[str]:
    """Chart scales and timm's `no_weight_decay()` names."""
    names = set(getattr(model, "no_weight_decay", lambda: set())())
    for path, _ in manifold_modules(model):
        names.add(f"{path}.key.scale" if path else "key.scale")
    return names


class AnchoredDecay:
    """Decoupled weight decay towards fixed anchors: ``p ← p − lr·λ·(p − anchor)``.

    Args:
        pairs: (parameter, anchor) with equal shapes.
        weight_decay: λ >= 0.
    Call ``apply(lr)`` right before ``optimizer.step()`` with the step's learning rate.
    """

    def __init__(self, pairs: Iterable[tuple[nn.Parameter, torch.Tensor]], weight_decay: float) -> None:
        self.pairs = [(p, a.detach().to(p)) for p, a in pairs]
        self.weight_decay = float(weight_decay)

    @torch.no_grad()
    def apply(self, lr: float) -> None:
        rate = lr * self.weight_decay
        if rate == 0.0:
            return
        for p, anchor in self.pairs:
            p.mul_(1.0 - rate).add_(anchor, alpha=rate)

    def __len__(self) -> int:
        return len(self.pairs)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                    **adamw_kwargs) -> tuple[torch.optim.AdamW, AnchoredDecay]:
    """AdamW over `model`'s trainable parameters and the decay towards anchors that goes with it.

    Groups: 0 = decayed towards 0 (AdamW's own decay), 1 = no decay (biases, norms, 1-D, chart
    scales, timm's `no_weight_decay()`), 2 = decayed towards an anchor (`decay_anchors`) by
    `AnchoredDecay` (AdamW's decay 0 there). Groups keep this order even when empty, so optimiser
    state saved by one model loads into another of the same architecture.
    """
    anchors, skip = decay_anchors(model), _no_decay_names(model)
    decay, no_decay, anchored = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in anchors:
            anchored.append((p, anchors[name]))
        elif p.ndim <= 1 or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0},
                                   {"params": [p for p, _ in anchored], "weight_decay": 0.0}],
                                  lr=lr, betas=betas, **adamw_kwargs)
    return optimizer, AnchoredDecay(anchored, weight_decay)
