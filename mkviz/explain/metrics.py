"""Metrics on recorded attention tensors and chart keys.

All functions are plain functions on ``torch.Tensor`` inputs (no module state).

Shape conventions (``H`` = number of charts, ``heads`` = attention heads):

* fused attention ``attn``: ``(B, heads, N, N)``; each row (last dim) sums to 1.
* per-chart attention ``chart_attn``: ``(B, H, heads, N, N)``.
* chart keys ``chart_keys``: ``(B, H, N, C)``.
* Swin window attention: ``(B * num_windows, heads, Nw, Nw)``.

Token layout for ViT-style inputs: ``N = num_prefix_tokens + gh * gw``, prefix
tokens (cls / distillation / register tokens) first, then the patch tokens in
row-major order over the ``(gh, gw)`` patch grid.

Half / bfloat16 inputs are promoted to float32 before any computation;
float64 inputs stay float64.  Every function validates shapes and raises
``ValueError`` naming the offending argument and the expected shape.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..core.checks import check_choice
from .chart_similarity import (SIMILARITY_KINDS, chart_cka, chart_cosine_similarity, chart_js_divergence,
                               chart_similarity)
from .maps import to_2tuple
from .metric_inputs import EPS, GridSize, as_float, check_square_attn, check_tensor, patch_slice, to_2tuple_float

__all__ = [
    "SIMILARITY_KINDS", "chart_cosine_similarity", "chart_js_divergence", "chart_cka", "chart_similarity",
    "attention_entropy", "mean_attention_distance", "attention_rollout", "attention_on_evidence", "patch_coverage",
    "PROJECTIONS", "project_2d",
]


# --------------------------------------------------------------------------- attention statistics
def attention_entropy(
    attn: torch.Tensor,
    dim: int = -1,
    reduce: Literal["none", "mean", "query"] = "none",
) -> torch.Tensor:
    r"""Shannon entropy (nats) of each attention row.

    .. math:: H(a) = -\sum_k a_k \log a_k, \quad 0 \log 0 = 0

    One-hot row -> 0; uniform over n keys -> :math:`\log n`.

    Args:
        attn: any shape ``(..., N, ...)``; the distribution runs along ``dim``.
            Typically ``(B, heads, N, N)`` or ``(B, H, heads, N, N)``.
        dim: the key dimension (default -1).
        reduce: ``"none"`` -> entropy per row, shape ``attn.shape`` without ``dim``
            (e.g. ``(B, heads, N)``); ``"query"`` -> additionally averaged over the
            last remaining dim (the query dim for ``dim=-1``), e.g. ``(B, heads)``;
            ``"mean"`` -> scalar average over everything.

    Returns:
        Tensor of entropies in nats.
    """
    check_tensor(attn, "attn")
    if attn.dim() < 1:
        raise ValueError(f"`attn` must have at least 1 dim (..., N), got {tuple(attn.shape)}")
    if not -attn.dim() <= dim < attn.dim():
        raise ValueError(f"`dim`={dim} out of range for `attn` with shape {tuple(attn.shape)}")
    check_choice("`reduce`", reduce, ("none", "mean", "query"))
    a = as_float(attn)
    ent = -torch.xlogy(a, a).sum(dim=dim)
    if reduce == "mean":
        return ent.mean()
    if reduce == "query":
        if ent.dim() == 0:
            raise ValueError(f"reduce='query' needs `attn` with >= 2 dims, got {tuple(attn.shape)}")
        return ent.mean(dim=-1)
    return ent

def _grid_coords(grid_size: Tuple[int, int], patch_size: Tuple[float, float], device, dtype):
    gh, gw = grid_size
    rows = torch.arange(gh, device=device, dtype=dtype) * patch_size[0]
    cols = torch.arange(gw, device=device, dtype=dtype) * patch_size[1]
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=-1)  # (gh*gw, 2)

def mean_attention_distance(
    attn: torch.Tensor,
    grid_size: GridSize,
    num_prefix_tokens: int = 0,
    patch_size: Union[float, Tuple[float, float]] = 1,
    renormalize: bool = True,
    reduce: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    r"""Mean attention distance (Dosovitskiy et al. 2021, ViT paper, Fig. 7).

    For every query patch q (prefix tokens excluded as queries and as keys):

    .. math::
        d_q = \sum_{k \in \text{patches}} \hat a_{qk}\, \|p_q - p_k\|_2,
        \qquad \hat a_{qk} = \frac{a_{qk}}{\sum_{k' \in \text{patches}} a_{qk'}}
        \ \ (\text{if renormalize, else } \hat a = a)

    where :math:`p = (\text{row}\cdot ph, \text{col}\cdot pw)` is the patch position
    (``patch_size=1`` -> distance in patches, ``patch_size=16`` -> pixels).
    The result is averaged over the query patches.

    ``renormalize=True`` (default) makes the value "how far away is the attention
    that goes to patches", independent of how much mass a query puts on the cls
    token; it is the reading used by the ViT paper's plot (attention weights over
    patches).  With ``renormalize=False`` the raw weights are used, so mass on
    prefix tokens counts as distance 0.  Rows with no mass on patches give 0.

    Args:
        attn: ``(..., N, N)`` with ``N = num_prefix_tokens + gh*gw``; any leading
            dims, e.g. ``(B, heads, N, N)`` or chart attention ``(B, H, heads, N, N)``.
        grid_size: ``(gh, gw)`` patch grid (int for square).
        num_prefix_tokens: number of leading non-patch tokens (cls, dist, registers).
        patch_size: size of a patch (int or ``(ph, pw)``) to express distances in pixels.
        renormalize: renormalise each query's patch-to-patch weights to sum to 1.
        reduce: ``"mean"`` -> average over queries, shape ``(...)`` (e.g. ``(B, heads)``);
            ``"none"`` -> per query patch, ``(..., gh*gw)``.

    Returns:
        Mean attention distance per leading index.
    """
    check_square_attn(attn, "attn")
    check_choice("`reduce`", reduce, ("mean", "none"))
    gs = to_2tuple(grid_size, "grid_size")
    ps = to_2tuple_float(patch_size, "patch_size")
    sl = patch_slice(attn.shape[-1], gs, num_prefix_tokens, "attn")
    a = as_float(attn)[..., sl, sl]  # (..., P, P)
    if renormalize:
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(EPS)
    pos = _grid_coords(gs, ps, a.device, a.dtype)
    dist = torch.cdist(pos, pos)  # (P, P)
    d = (a * dist).sum(dim=-1)  # (..., P)
    return d.mean(dim=-1) if reduce == "mean" else d

_HEAD_FUSIONS = ("mean", "max", "min")

def attention_rollout(
    attns: Union[Sequence[torch.Tensor], torch.Tensor],
    head_fusion: Literal["mean", "max", "min"] = "mean",
    add_residual: bool = True,
    discard_ratio: float = 0.0,
) -> torch.Tensor:
    r"""Attention rollout (Abnar & Zuidema, 2020).

    Per layer l (first to last):

    1. fuse heads: :math:`A_l = \mathrm{fuse}_h(\text{attn}_l)` (mean / max / min over heads);
    2. optionally discard: in every row, the ``floor(discard_ratio * N)`` smallest
       entries are set to 0 (per-row, so each query keeps its strongest links;
       the diagonal is never discarded);
    3. residual: :math:`A'_l = 0.5\,A_l + 0.5\,I` if ``add_residual`` else :math:`A_l`;
    4. renormalise rows: :math:`A'_l \leftarrow A'_l / A'_l \mathbf{1}`.

    Rollout: :math:`R = A'_L \cdots A'_2 A'_1` (i.e. :math:`R_l = A'_l R_{l-1}`),
    so ``R[b, i, j]`` is how much output token i of the last layer draws from
    input token j.  Rows of R sum to 1.  Rollout of identity maps is the identity;
    a single uniform layer with residual gives :math:`0.5I + 0.5U`.

    Args:
        attns: list of per-layer attention, each ``(B, heads, N, N)`` (or already
            head-fused ``(B, N, N)``), or a stacked tensor ``(L, B, heads, N, N)``.
        head_fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.
        add_residual: model the skip connection with ``0.5 A + 0.5 I``.
        discard_ratio: fraction in ``[0, 1)`` of lowest weights dropped per row.

    Returns:
        ``(B, N, N)`` rollout matrix.
    """
    if isinstance(attns, torch.Tensor):
        if attns.dim() not in (4, 5):
            raise ValueError(
                f"`attns` as a tensor must have shape (L, B, heads, N, N) or (L, B, N, N), "
                f"got {tuple(attns.shape)}"
            )
        attns = list(attns.unbind(0))
    attns = list(attns)
    if len(attns) == 0:
        raise ValueError("`attns` must contain at least one layer")
    if head_fusion not in _HEAD_FUSIONS:
        raise ValueError(f"`head_fusion` must be one of {_HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"`discard_ratio` must be in [0, 1), got {discard_ratio}")
    ref_shape = None
    result = None
    for idx, a in enumerate(attns):
        name = f"attns[{idx}]"
        check_tensor(a, name)
        if a.dim() not in (3, 4) or a.shape[-1] != a.shape[-2]:
            raise ValueError(
                f"`{name}` must have shape (B, heads, N, N) or (B, N, N), got {tuple(a.shape)}"
            )
        a = as_float(a)
        if a.dim() == 4:
            if head_fusion == "mean":
                a = a.mean(dim=1)
            elif head_fusion == "max":
                a = a.amax(dim=1)
            else:
                a = a.amin(dim=1)
        if ref_shape is None:
            ref_shape = a.shape
        elif a.shape != ref_shape:
            raise ValueError(
                f"`{name}` has (B, N, N) = {tuple(a.shape)} after head fusion, "
                f"expected {tuple(ref_shape)} like attns[0]"
            )
        B, N, _ = a.shape
        eye = torch.eye(N, device=a.device, dtype=a.dtype)
        n_drop = int(math.floor(discard_ratio * N))
        if n_drop > 0:
            # never discard the diagonal: rank it above everything
            ranked = a.masked_fill(eye.bool(), float("inf"))
            idx_low = ranked.topk(n_drop, dim=-1, largest=False).indices
            a = a.scatter(-1, idx_low, 0.0)
        if add_residual:
            a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(EPS)
        result = a if result is None else a @ result
    return result

# --------------------------------------------------------------------------- evidence
_COVERAGE_MODES = ("fraction", "any", "majority")

def patch_coverage(
    mask: torch.Tensor,
    grid_size: GridSize,
    weighting: Literal["fraction", "any", "majority"] = "fraction",
) -> torch.Tensor:
    """Convert a pixel mask to per-patch coverage over a ``(gh, gw)`` patch grid.

    The coverage of a patch is the fraction of its pixels inside the mask
    (area average pooling to ``(gh, gw)``; exact block mean when the image size
    is a multiple of the grid, ``adaptive_avg_pool2d`` bins otherwise).

    * ``"fraction"`` (default): coverage in ``[0, 1]`` used as a soft weight.
    * ``"any"``: 1 if any pixel of the patch is in the mask, else 0.
    * ``"majority"``: 1 if more than half of the patch's pixels are in the mask.

    Args:
        mask: ``(H_img, W_img)`` or ``(B, H_img, W_img)``, bool or {0,1}/[0,1] float.
        grid_size: ``(gh, gw)``.
        weighting: see above.

    Returns:
        ``(gh*gw,)`` or ``(B, gh*gw)`` float coverage (row-major patch order).
    """
    check_tensor(mask, "mask")
    if mask.dim() not in (2, 3):
        raise ValueError(
            f"`mask` must have shape (H_img, W_img) or (B, H_img, W_img), got {tuple(mask.shape)}"
        )
    if weighting not in _COVERAGE_MODES:
        raise ValueError(f"`weighting` must be one of {_COVERAGE_MODES}, got {weighting!r}")
    gh, gw = to_2tuple(grid_size, "grid_size")
    squeeze = mask.dim() == 2
    m = mask[None] if squeeze else mask
    if m.shape[-2] < gh or m.shape[-1] < gw:
        raise ValueError(
            f"`mask` spatial size {tuple(m.shape[-2:])} is smaller than grid_size {(gh, gw)}"
        )
    m = m.to(torch.float64 if mask.dtype == torch.float64 else torch.float32)
    cov = F.adaptive_avg_pool2d(m[:, None], (gh, gw))[:, 0]  # (B, gh, gw)
    if weighting == "any":
        cov = (cov > 0).to(cov.dtype)
    elif weighting == "majority":
        cov = (cov > 0.5).to(cov.dtype)
    cov = cov.flatten(1)
    return cov[0] if squeeze else cov

def attention_on_evidence(
    attn_rows: torch.Tensor,
    mask: torch.Tensor,
    grid_size: GridSize,
    num_prefix_tokens: int = 0,
    weighting: Literal["fraction", "any", "majority"] = "fraction",
    renormalize: bool = True,
) -> torch.Tensor:
    r"""Share of each query's attention mass that lands on the evidence mask.

    .. math::
        s = \frac{\sum_{k \in \text{patches}} a_k\, w_k}{\sum_{k \in \text{patches}} a_k}
        \quad (\text{renormalize}) \qquad\text{or}\qquad
        s = \frac{\sum_{k \in \text{patches}} a_k\, w_k}{\sum_{k} a_k}

    where :math:`w_k \in [0,1]` is the coverage of patch k by the pixel mask
    (see :func:`patch_coverage`; default ``"fraction"`` = fraction of the
    patch's pixels inside the mask, so partially covered patches count
    proportionally).  Prefix tokens are excluded: with ``renormalize=True``
    (default) the share is taken over the attention that goes to patches; with
    ``renormalize=False`` the denominator is the full row mass, so mass on the
    cls token counts as "not on evidence".  Rows with no patch mass give 0.

    Args:
        attn_rows: ``(..., N)`` attention rows over keys, ``N = num_prefix_tokens + gh*gw``;
            e.g. a cls row ``(B, heads, N)``, or full ``(B, heads, N, N)`` (one value per query).
        mask: pixel mask ``(H_img, W_img)`` (shared) or ``(B, H_img, W_img)``
            (aligned with ``attn_rows.shape[0]``), bool or float in [0, 1].
        grid_size: ``(gh, gw)`` patch grid.
        num_prefix_tokens: leading non-patch tokens.
        weighting: ``"fraction"`` | ``"any"`` | ``"majority"`` (see :func:`patch_coverage`).
        renormalize: divide by the patch mass rather than the whole row mass.

    Returns:
        ``attn_rows.shape[:-1]`` values in ``[0, 1]``.
    """
    check_tensor(attn_rows, "attn_rows")
    if attn_rows.dim() < 1:
        raise ValueError(f"`attn_rows` must have shape (..., N), got {tuple(attn_rows.shape)}")
    gs = to_2tuple(grid_size, "grid_size")
    sl = patch_slice(attn_rows.shape[-1], gs, num_prefix_tokens, "attn_rows")
    cov = patch_coverage(mask, gs, weighting)  # (P,) or (B, P)
    a = as_float(attn_rows)
    cov = cov.to(device=a.device, dtype=a.dtype)
    if cov.dim() == 2:
        if a.dim() < 2 or a.shape[0] != cov.shape[0]:
            raise ValueError(
                f"a batched `mask` (B={cov.shape[0]}, H_img, W_img) needs `attn_rows` of shape "
                f"(B, ..., N) with the same B, got {tuple(attn_rows.shape)}"
            )
        cov = cov.reshape(cov.shape[0], *([1] * (a.dim() - 2)), cov.shape[-1])
    patch = a[..., sl]
    num = (patch * cov).sum(dim=-1)
    den = patch.sum(dim=-1) if renormalize else a.sum(dim=-1)
    return (num / den.clamp_min(EPS)).clamp(0.0, 1.0)

# --------------------------------------------------------------------------- 2-D projection (the key atlas)
PROJECTIONS = ("pca", "umap")

def project_2d(points: torch.Tensor, method: str = "pca", seed: int = 0) -> torch.Tensor:
    """Project ``points`` (M, D) to (M, 2).

    ``"pca"``: the first two principal axes (SVD of the centred points, float64), each axis's sign fixed so
    that its largest loading is positive: deterministic, and a rotation of the data does not move the
    picture more than it moves the data. ``"umap"``: ``umap.UMAP(random_state=seed)`` when the package
    ``umap-learn`` is importable (it is not a dependency of mkviz).
    """
    check_tensor(points, "points")
    if points.dim() != 2 or points.shape[0] < 2:
        raise ValueError(f"`points` must have shape (M, D) with M >= 2, got {tuple(points.shape)}")
    if method not in PROJECTIONS:
        raise ValueError(f"`method` must be one of {PROJECTIONS}, got {method!r}")
    x = points.detach().double().cpu()
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ValueError("method='umap' needs the package umap-learn (pip install umap-learn); "
                             "method='pca' needs nothing") from None
        return torch.as_tensor(umap.UMAP(n_components=2, random_state=seed).fit_transform(x.numpy()), dtype=torch.float32)
    x = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    axes = vh[:2]  # (<=2, D)
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
    coords = x @ (axes * signs).T  # (M, <=2)
    if coords.shape[1] < 2:
        coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 2 - coords.shape[1])], dim=1)
    return coords.float()
