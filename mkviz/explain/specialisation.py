"""How different are the charts? One number per question, measured on a fixed batch of images.

`chart_statistics(model, images)` records a manifold-key model's chart keys and per-chart attention
(`mkviz.record_attention`) and summarises, averaged over layers (and over the off-diagonal pairs of charts):

    chart_cosine      mean cosine similarity between the keys of two charts (1: the charts' keys are parallel)
    chart_js          mean Jensen–Shannon divergence (bits) between two charts' attention rows (0: same maps)
    membership_max    KUA only: mean over tokens of max_c p(c|n) (1/H: uniform, 1: one chart per token)
    chart_usage       KUA only: each chart's mean membership over tokens and images, per layer (`chart_usage_layers`,
                      (layers, H)); `chart_usage_entropy` its entropy in bits (log2 H: every chart used alike, 0: one
                      chart takes every token, a collapse); with labels, `chart_usage_by_class_layers` (class ->
                      (layers, H): chart c of one layer is not chart c of another, so nothing is averaged over layers)

Training logs them after every epoch (`metrics.jsonl`: `chart_cosine`, `chart_js`, ...; `chart_init` before
the first step), which is how `docs/chart_specialisation.md` follows the charts over training. Why charts can
or cannot drift apart is argued in `docs/design.md` §3.1.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..core.models import manifold_modules
from ..core.switches import eval_mode
from .metrics import chart_cosine_similarity, chart_js_divergence
from .record import record_attention

__all__ = ["chart_statistics", "chart_usage", "off_diagonal_mean", "probe_images", "probe_labels", "usage_entropy"]


def off_diagonal_mean(pairwise: torch.Tensor) -> float:
    """Mean of the off-diagonal entries of an (H, H) matrix (NaN for H = 1: no pair of charts)."""
    H = pairwise.shape[-1]
    if H < 2:
        return float("nan")
    mask = ~torch.eye(H, dtype=torch.bool, device=pairwise.device)
    return float(pairwise[mask].mean())


def probe_images(dataset: Any, n: int = 256) -> torch.Tensor:
    """The first `n` images of a dataset whose items are (image (C, H, W), label), stacked: (n, C, H, W)."""
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])


def probe_labels(dataset: Any, n: int = 256) -> torch.Tensor:
    """The labels of `probe_images(dataset, n)`: (n,) long."""
    return torch.tensor([int(dataset[i][1]) for i in range(min(n, len(dataset)))], dtype=torch.long)


def usage_entropy(usage: torch.Tensor) -> float:
    """Entropy in bits of a chart-usage vector (H,) that sums to 1 (0 · log 0 = 0)."""
    u = usage[usage > 0]
    return float(-(u * torch.log2(u)).sum())


def chart_usage(memberships: list[torch.Tensor], labels: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """KUA's chart usage from each layer's memberships p(c|n), (B, N, H) per layer, on the same images: each chart's
    mean membership per layer and its entropy, and (with `labels` (B,)) the same per class and layer. Chart c of one
    layer has nothing to do with chart c of another, so usage is never averaged over layers by chart index; only
    entropies (and rank-ordered shares) are."""
    per_image = torch.stack([m.float().mean(dim=1) for m in memberships])  # (layers, B, H)
    usage = per_image.mean(dim=1)  # (layers, H)
    entropies = [usage_entropy(u) for u in usage]
    out: dict[str, Any] = {"chart_usage_layers": usage.tolist(), "chart_usage_entropy": sum(entropies) / len(entropies),
                           "chart_usage_entropy_layers": entropies}
    if labels is not None:
        out["chart_usage_by_class_layers"] = {str(int(c)): per_image[:, labels == c].mean(dim=1).tolist()
                                              for c in labels.unique()}  # {class: (layers, H)}
    return out


@torch.no_grad()
def chart_statistics(model: nn.Module, images: torch.Tensor, batch_size: int = 128,
                     labels: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """Chart similarity of `model` on `images` (B, 3, H, W): the means above and their per-layer values
    (`chart_cosine_layers`, `chart_js_layers`, `membership_max_layers`, in block order), and KUA's chart usage
    (`chart_usage`; per class with `labels` (B,)). {} for a model without manifold layers."""
    layers = [name for name, _ in manifold_modules(model)]
    if not layers:
        return {}
    sums: dict[str, list[float]] = {}
    memberships: dict[str, list[torch.Tensor]] = {}
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            with record_attention(model, layers) as rec:
                model(batch)
            for i, name in enumerate(layers):
                row = {"chart_cosine": off_diagonal_mean(chart_cosine_similarity(rec.chart_keys[name])),
                       "chart_js": off_diagonal_mean(chart_js_divergence(rec.chart_attention[name]))}
                if name in rec.membership:  # (B, N, H)
                    row["membership_max"] = float(rec.membership[name].max(dim=-1).values.mean())
                    memberships.setdefault(name, []).append(rec.membership[name].cpu())
                for key, value in row.items():
                    sums.setdefault(key, [0.0] * len(layers))[i] += value * len(batch)
    out: dict[str, Any] = {}
    for key, per_layer in sums.items():
        values = [v / len(images) for v in per_layer]
        out[key] = sum(values) / len(values)
        out[f"{key}_layers"] = values
    if memberships:
        out.update(chart_usage([torch.cat(memberships[name]) for name in memberships], labels))
    return out
