"""The key atlas: a layer's queries and every chart's keys projected together to 2-D (PCA or UMAP), one colour per
chart (`key_atlas(rec, layer, head=None, image=0)`).
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch

from ..explain.maps import patch_grid, query_position
from ..explain.metrics import project_2d
from .figure_base import plotly_go

__all__ = ["key_atlas", "ATLAS_QUERY_TRACE", "ATLAS_CURRENT_TRACE"]


# --------------------------------------------------------------------------- the key atlas
ATLAS_QUERY_TRACE, ATLAS_CURRENT_TRACE = "queries", "current query"

_ATLAS_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf")

def _token_names(rec: Any, num_tokens: int) -> List[str]:
    """'cls' / 'prefix k' for the prefix tokens, 'patch (r, c)' for the patches of a recorded ViT."""
    grid = patch_grid(rec.model, rec.image_size)
    p = grid.num_prefix_tokens
    names = ["cls" if i == 0 and p else f"prefix {i}" for i in range(p)]
    return names + ["patch (%d, %d)" % query_position(i, grid.grid_size, p) for i in range(p, num_tokens)]

def key_atlas(rec: Any, layer: str, head: Optional[int] = None, image: int = 0, method: str = "pca",
              query: Optional[int] = None, height: int = 520) -> "go.Figure":
    """Queries and every chart's keys of one image of a recording, in ONE 2-D projection (AttentionViz-style).

    rec: an `AttentionRecording` (lazy or full, charts=True) of a manifold-key ViT / DeiT; layer: a recorded
    layer; head: one head's d channels, or None for all heads' channels side by side; image: batch index;
    method: "pca" (default) or "umap" (`mkviz.explain.metrics.project_2d`); query: token index to mark.

    The points: the N queries q_i (after q_norm, times the logit scale) and, for each chart c, the N chart keys
    K_c,j (the channels of the head), projected together so that a query near a chart's key is one that
    chart makes it attend to (q·k is what the softmax sees; the projection keeps the largest directions of
    both). Traces, in order: "queries", "chart 1 keys" … "chart H keys", "current query" (the marked
    query); each point's `customdata` is its token index and its hover names the patch ("cls", "patch (r, c)").
    """
    if not isinstance(layer, str) or layer not in rec.queries:
        raise ValueError(f"layer: expected the name of a recorded layer, one of {list(rec.queries) or rec.layers}; "
                         f"got {layer!r}")
    go = plotly_go()
    q = rec.queries[layer][image].float()  # (heads, N, d)
    keys = rec.chart_keys_for(layer)[image].float()  # (H, N, C)
    heads, N, d = q.shape
    module = rec.model.get_submodule(layer)
    if head is None:
        qs = q.transpose(0, 1).reshape(N, heads * d)  # (N, heads·d), heads side by side like the keys
    else:
        if not 0 <= head < heads:
            raise ValueError(f"head: expected None or an int in [0, {heads}); got {head!r}")
        qs, keys = q[head], keys[..., head * d:(head + 1) * d]  # (N, d), (H, N, d)
    H = keys.shape[0]
    qs = qs * float(module.scale)
    coords = project_2d(torch.cat([qs, keys.reshape(H * N, -1)]), method)  # ((1 + H)·N, 2)
    names = _token_names(rec, N)
    fig = go.Figure()
    hover = "%{text}<extra>%{fullData.name}</extra>"
    fig.add_trace(go.Scatter(x=coords[:N, 0].tolist(), y=coords[:N, 1].tolist(), mode="markers",
                             name=ATLAS_QUERY_TRACE, text=names, customdata=list(range(N)), hovertemplate=hover,
                             marker=dict(symbol="circle", size=9, color="#222222", line=dict(width=1, color="white"))))
    for c in range(H):
        xy = coords[N * (c + 1):N * (c + 2)]
        fig.add_trace(go.Scatter(x=xy[:, 0].tolist(), y=xy[:, 1].tolist(), mode="markers", name=f"chart {c + 1} keys",
                                 text=names, customdata=list(range(N)), hovertemplate=hover,
                                 marker=dict(symbol="diamond", size=7, opacity=0.75,
                                             color=_ATLAS_COLORS[c % len(_ATLAS_COLORS)])))
    mark = [] if query is None else [int(query)]
    fig.add_trace(go.Scatter(x=[float(coords[i, 0]) for i in mark], y=[float(coords[i, 1]) for i in mark], mode="markers",
                             name=ATLAS_CURRENT_TRACE, hoverinfo="skip", customdata=mark,
                             marker=dict(symbol="circle-open", size=20, color="#d62728", line=dict(width=3))))
    fig.update_layout(title=f"key atlas: queries and chart keys, {layer}, head {'mean' if head is None else head} "
                            f"({method.upper()})", height=height, xaxis_title="axis 1", yaxis_title="axis 2",
                      margin=dict(l=50, r=10, t=50, b=40), legend=dict(itemsizing="constant"),
                      meta={"layer": layer, "head": head, "tokens": N, "charts": H})
    return fig
