"""Where a query on one object of a scene attends: the same object, the other objects, or the background.

For every instance of every image, the queries are the patches the instance covers for at least half
their pixels; each query's attention row over the patches (prefix tokens left out, the row renormalised,
heads averaged) is split by the patches' pixel coverage (`patch_coverage`, "fraction") into

    same        the instance the query lies on
    other       every other instance of the image
    background  pixels of no instance

The three shares sum to 1 per query. Chance is what uniform attention over the patches gives: the mean
coverage of each region. Shares are averaged over the queries of an instance, then over instances, so
a large article does not outweigh a small one. The same for the fused map and for each chart's map.

The per-query form (what the explorers draw for one query): `query_regions(masks, grid)` gives every patch's
instance and the region partition seen from it, `query_region_shares(rows, coverage)` the three shares of each
query's row. A query on no instance (no instance covers half of it) has no "same" region: NaN there.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .maps import patch_grid
from .metrics import patch_coverage
from .record import record_attention

__all__ = ["REGIONS", "region_coverage", "query_regions", "query_region_shares", "scene_attention_shares"]

REGIONS = ("same", "other", "background")


def region_coverage(masks: torch.Tensor, instance: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """(3, P) coverage of every patch by the instance, the other instances and the background (sums to 1 per patch).

    masks: (K, H_img, W_img) bool/uint8 silhouettes of one image, later instances on top (disjoint pixels).
    """
    if masks.dim() != 3 or not 0 <= instance < len(masks):
        raise ValueError(f"masks must be (K, H, W) with instance in [0, K), got {tuple(masks.shape)} and {instance}")
    masks = masks.bool()
    same = masks[instance]
    others = masks[torch.arange(len(masks)) != instance].any(0) & ~same  # (H, W)
    background = ~masks.any(0)
    return torch.stack([patch_coverage(m, grid_size) for m in (same, others, background)])  # (3, P)


def query_regions(masks: torch.Tensor, grid_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(instance (P,) long, coverage (P, 3, P)): each patch's instance (-1: none covers half of it) and, seen
    from a query on that patch, `region_coverage` of its instance (the "same" row NaN for a query on none).

    masks: (K, H_img, W_img) silhouettes of one image (K may be 0). A patch half covered by two instances
    belongs to the first.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be (K, H, W), got {tuple(masks.shape)}")
    p = grid_size[0] * grid_size[1]
    if len(masks) == 0:  # nothing but background
        empty = torch.tensor([float("nan"), 0.0, 1.0])[:, None].expand(3, p)  # (3, P)
        return torch.full((p,), -1), empty[None].expand(p, 3, p).clone()
    per_instance = torch.stack([region_coverage(masks, k, grid_size) for k in range(len(masks))])  # (K, 3, P)
    on = per_instance[:, 0] >= 0.5  # (K, P): the patch lies on instance k
    instance = torch.where(on.any(0), on.float().argmax(0), torch.full((p,), -1))  # (P,)
    objects = per_instance[0, 0] + per_instance[0, 1]  # (P,) coverage by any instance
    none = torch.stack([torch.full((p,), float("nan")), objects, per_instance[0, 2]])  # (3, P)
    coverage = torch.where((instance >= 0)[:, None, None], per_instance[instance.clamp_min(0)], none)  # (P, 3, P)
    return instance, coverage


def query_region_shares(rows: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """(..., Q, 3) shares of each query's row on its same / other / background regions (NaN: no same region).

    rows: (..., Q, P) attention of Q queries over the P patches (prefix tokens left out; renormalised here);
    coverage: (Q, 3, P) the queries' region partitions (`query_regions`, indexed by the queries' patches).
    """
    rows = rows / rows.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.einsum("...qp,qrp->...qr", rows, coverage)


def _shares(rows: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
    """rows: (heads, Q, P) attention over patches; coverage (3, P) -> (3,) mean shares."""
    per_query = query_region_shares(rows, coverage[None].expand(rows.shape[1], -1, -1))  # (heads, Q, 3)
    return per_query.mean((0, 1))


def _image_shares(fused: torch.Tensor, charts: torch.Tensor | None, masks: torch.Tensor,
                  grid_size: tuple[int, int], prefix: int) -> list[torch.Tensor]:
    """Per instance of one image: (1 + H, 3) shares (fused first) and (3,) chance; instances without a query skipped.

    fused: (heads, N, N); charts: (H, heads, N, N) or None.
    """
    out = []
    for k in range(len(masks)):
        coverage = region_coverage(masks, k, grid_size)  # (3, P)
        queries = torch.nonzero(coverage[0] >= 0.5).flatten() + prefix  # (Q,) token indices
        if len(queries) == 0:
            continue
        maps = [fused] + (list(charts.unbind(0)) if charts is not None else [])
        shares = torch.stack([_shares(m[:, queries, prefix:], coverage) for m in maps])  # (1 + H, 3)
        out.append(torch.cat([shares, coverage.mean(1)[None]]))  # (2 + H, 3): chance last
    return out


def scene_attention_shares(model: nn.Module, images: torch.Tensor, masks: Sequence[torch.Tensor],
                           layer: str) -> dict[str, Any]:
    """Shares of attention on the same object, the other objects and the background, fused and per chart.

    images: (B, 3, H, W); masks: B tensors (K_b, H, W) of instance silhouettes; layer: an attention module path.
    Returns {"fused": {region: share}, "charts": [{region: share}] (empty for a plain model),
    "chance": {region: share}, "num_instances": int}.
    """
    if len(masks) != len(images):
        raise ValueError(f"masks: one (K, H, W) tensor per image, got {len(masks)} for {len(images)} images")
    with torch.no_grad(), record_attention(model, layers=[layer]) as rec:
        model(images)
    grid = patch_grid(model, tuple(images.shape[-2:]))
    charts = rec.chart_attention.get(layer)  # (B, H, heads, N, N) or None
    per_instance = []
    for b in range(len(images)):
        per_instance += _image_shares(rec.attention[layer][b], None if charts is None else charts[b], masks[b],
                                      grid.grid_size, grid.num_prefix_tokens)
    if not per_instance:
        raise ValueError("masks: no instance covers half a patch; nothing to measure")
    mean = torch.stack(per_instance).mean(0)  # (2 + H, 3)
    as_dict = [dict(zip(REGIONS, row.tolist())) for row in mean]
    return {"fused": as_dict[0], "charts": as_dict[1:-1], "chance": as_dict[-1], "num_instances": len(per_instance)}
