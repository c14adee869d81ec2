"""What the charts attend to in a scene, for one query: the explorers' panel (mkviz.explain.scene_attention).

    instance_masks_list(instance_masks, masks, n, size)   B tensors (K_b, H, W), checked (None: no scene panel)
    scene_shares_by_head(rows, coverage)                   (M, 1 + heads, Q, 3): the head mean first, then each head
    scene_region_bars(shares, chance)                      regions on x, one bar per map, chance dashed per region

A query lies on the instance covering its patch for at least half the pixels; its attention row over the
patches (prefix tokens left out, renormalised) is split into "same object", "other objects" and
"background" (`query_regions`, `query_region_shares`). A query on no instance has no "same" share (NaN, drawn
as no bar, and the title says "query on the background"). The head mean is the mean of the heads' shares,
as in `scene_attention_shares`. Chance (uniform attention) is the instance's mean coverage of each region.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from ..explain.scene_attention import query_region_shares
from .figure_base import plotly_go, to_numpy

__all__ = ["REGION_LABELS", "BACKGROUND_NOTE", "SCENE_TITLE", "instance_masks_list", "scene_shares_by_head",
           "scene_region_bars", "chance_path"]

REGION_LABELS = ("same object", "other objects", "background")
BACKGROUND_NOTE = "query on the background: no same object"
SCENE_TITLE = "where the query's attention lands in the scene"
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_HALF = 0.4  # half the width of a chance segment, in category units


def instance_masks_list(instance_masks: Any, masks: Any, n: int, size: Tuple[int, int],
                        resize: bool = False) -> Optional[List[torch.Tensor]]:
    """instance_masks: None or B tensors (K_b, H, W) of one image's silhouettes -> B bool tensors at `size`
    (nearest-resized only with resize=True), or None. masks (evidence) must then be None."""
    if instance_masks is None:
        return None
    if masks is not None:
        raise ValueError("instance_masks: pass either masks (one evidence mask per image) or instance_masks "
                         "(the instances of each scene), not both")
    if isinstance(instance_masks, torch.Tensor) and instance_masks.dim() == 3:
        raise ValueError("instance_masks: expected a list of B tensors (K_b, H, W), one per image; got one tensor "
                         f"of shape {tuple(instance_masks.shape)}")
    out = [torch.as_tensor(m) for m in instance_masks]
    if len(out) != n or any(m.dim() != 3 for m in out):
        raise ValueError(f"instance_masks: expected {n} tensors (K_b, H, W), one per image; got shapes "
                         f"{[tuple(m.shape) for m in out]}")
    if resize:
        out = [m if tuple(m.shape[-2:]) == size or not len(m) else
               F.interpolate(m[:, None].float(), size=size, mode="nearest")[:, 0] for m in out]
    bad = [tuple(m.shape) for m in out if tuple(m.shape[-2:]) != size]
    if bad:
        raise ValueError(f"instance_masks: expected (K_b, {size[0]}, {size[1]}) like the images; got {bad}")
    return [m.bool() for m in out]


def scene_shares_by_head(rows: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """rows: (M, heads, Q, P) maps' attention rows over the patches; coverage (Q, 3, P) (`query_regions`)
    -> (M, 1 + heads, Q, 3): the mean of the heads' shares first, then each head's."""
    per_head = query_region_shares(rows, coverage)  # (M, heads, Q, 3)
    return torch.cat([per_head.mean(1, keepdim=True), per_head], 1)


def chance_path(chance: Sequence[float]) -> Tuple[List[Optional[float]], List[Optional[float]]]:
    """(x, y) of the dashed chance segments, one across each region's bars (x in category units)."""
    xs: List[Optional[float]] = []
    ys: List[Optional[float]] = []
    for r, c in enumerate(chance):
        value = None if c is None or math.isnan(float(c)) else float(c)
        xs += [r - _HALF, r + _HALF, None]
        ys += [value, value, None]
    return xs[:-1], ys[:-1]


def scene_region_bars(shares: Any, chance: Any, names: Optional[Sequence[str]] = None, title: str = SCENE_TITLE,
                      height: int = 340) -> "go.Figure":
    """Grouped bars: the regions (same object, other objects, background) on x, one bar per map.

    shares: (M, 3) per map (fused first), NaN "same" for a query on no object; chance: (3,) uniform attention's
    shares. names: the M bar names (default "fused", "chart 1", ...). Traces: one bar per map (named), then
    "chance" (dashed segments on the hidden overlaid axis x2). layout.meta: {"title", "note"} (the page adds
    the note to the title for a query on the background).
    """
    go = plotly_go()
    values = to_numpy(shares).astype(np.float64).reshape(-1, 3)  # (M, 3)
    names = list(names) if names is not None else ["fused"] + [f"chart {c + 1}" for c in range(len(values) - 1)]
    fig = go.Figure()
    for m, (name, row) in enumerate(zip(names, values)):
        color = "#444444" if m == 0 and name == "fused" else _COLORS[(m - 1) % len(_COLORS)]
        fig.add_trace(go.Bar(x=list(REGION_LABELS), y=[None if math.isnan(v) else float(v) for v in row], name=name,
                             marker_color=color, hovertemplate=name + ", %{x}: %{y:.3f}<extra></extra>"))
    chance = to_numpy(chance).astype(np.float64).reshape(3)
    xs, ys = chance_path(chance.tolist())
    fig.add_trace(go.Scatter(x=xs, y=ys, xaxis="x2", mode="lines", name="chance",
                             line=dict(dash="dash", color="#d62728", width=2), hoverinfo="skip"))
    background = bool(np.isnan(chance[0]))
    text = title + (f"<br><sup>{BACKGROUND_NOTE}</sup>" if background else "")
    fig.update_layout(title=dict(text=text), height=height, barmode="group", margin=dict(l=10, r=10, t=60, b=10),
                      xaxis=dict(type="category", range=[-0.5, 2.5], title=dict(text="region")),
                      xaxis2=dict(overlaying="x", range=[-0.5, 2.5], visible=False),
                      yaxis=dict(title=dict(text="share of attention"), range=[0, 1]),
                      meta=dict(title=title, note=BACKGROUND_NOTE), legend=dict(orientation="h", y=-0.2))
    return fig
