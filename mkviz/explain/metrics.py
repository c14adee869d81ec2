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
from typing import Literal, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..core.checks import check_choice
from .maps import to_2tuple

__all__ = [
    "SIMILARITY_KINDS", "chart_cosine_similarity", "chart_js_divergence", "chart_cka", "chart_similarity",
    "attention_entropy", "mean_attention_distance", "attention_rollout", "attention_on_evidence", "patch_coverage",
    "PROJECTIONS", "project_2d",
]

GridSize = Union[int, Tuple[int, int], Sequence[int]]
_EPS = 1e-12


# --------------------------------------------------------------------------- helpers
def _check_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    return x


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """Promote to at least float32 (float64 stays float64)."""
    if x.dtype == torch.float64:
        return x
    return x.float()


def _to_2tuple_float(v, name: str) -> Tuple[float, float]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        out = (float(v), float(v))
    elif isinstance(v, (tuple, list)) and len(v) == 2:
        out = (float(v[0]), float(v[1]))
    else:
        raise ValueError(f"`{name}` must be a number or a pair (h, w), got {v!r}")
    if out[0] <= 0 or out[1] <= 0:
        raise ValueError(f"`{name}` must be positive, got {out}")
    return out


def _check_chart_keys(chart_keys) -> torch.Tensor:
    _check_tensor(chart_keys, "chart_keys")
    if chart_keys.dim() != 4:
        raise ValueError(
            f"`chart_keys` must have shape (B, H, N, C) (batch, charts, tokens, channels), "
            f"got {tuple(chart_keys.shape)}"
        )
    return chart_keys


def _check_square_attn(attn, name: str, min_dim: int = 2) -> torch.Tensor:
    _check_tensor(attn, name)
    if attn.dim() < min_dim or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(
            f"`{name}` must have shape (..., N, N) with at least {min_dim} dims, "
            f"got {tuple(attn.shape)}"
        )
    return attn


def _patch_slice(n_tokens: int, grid_size: Tuple[int, int], num_prefix_tokens: int, name: str):
    gh, gw = grid_size
    if num_prefix_tokens < 0:
        raise ValueError(f"`num_prefix_tokens` must be >= 0, got {num_prefix_tokens}")
    if n_tokens != num_prefix_tokens + gh * gw:
        raise ValueError(
            f"`{name}` last dim must be N = num_prefix_tokens + gh*gw = "
            f"{num_prefix_tokens} + {gh}*{gw} = {num_prefix_tokens + gh * gw}, got {n_tokens}"
        )
    return slice(num_prefix_tokens, n_tokens)


# --------------------------------------------------------------------------- chart similarity
def chart_cosine_similarity(
    chart_keys: torch.Tensor,
    reduce: Literal["mean", "none"] = "mean",
    eps: float = 1e-8,
) -> torch.Tensor:
    r"""Cosine similarity between the keys of every pair of charts.

    Per-token cosine, averaged over tokens:

    .. math::
        S_{b,ij} = \frac{1}{N} \sum_{n=1}^{N}
            \frac{\langle K_i[b,n], K_j[b,n] \rangle}{\max(\|K_i[b,n]\|\,\|K_j[b,n]\|, \epsilon)}

    Chosen over "flatten N*C and take one cosine" because attention logits are
    per-token dot products: every token counts equally, and a few high-norm
    tokens cannot dominate the score.  Diagonal is 1 (unless a token key is 0).

    Args:
        chart_keys: ``(B, H, N, C)`` keys of the H charts.
        reduce: ``"mean"`` -> average over the batch, ``(H, H)``;
            ``"none"`` -> ``(B, H, H)``.
        eps: floor on the norm product (zero vectors give similarity 0).

    Returns:
        ``(H, H)`` or ``(B, H, H)`` similarities in ``[-1, 1]``, symmetric.
    """
    _check_chart_keys(chart_keys)
    check_choice("`reduce`", reduce, ("mean", "none"))
    k = _as_float(chart_keys)
    norm = k.norm(dim=-1)  # (B, H, N)
    dots = torch.einsum("bink,bjnk->bijn", k, k)  # (B, H, H, N)
    denom = (norm[:, :, None, :] * norm[:, None, :, :]).clamp_min(eps)
    sim = (dots / denom).mean(dim=-1)  # (B, H, H)
    sim = sim.clamp(-1.0, 1.0)
    return sim.mean(dim=0) if reduce == "mean" else sim


def _entropy_terms_js(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """JS divergence (nats) along the last dim, 0*log0 = 0.

    In float64: a float32 softmax can hold denormal weights (~1e-45) whose half underflows to 0 in
    float32, which would turn p·log(p/m) into inf."""
    dtype = p.dtype
    p, q = p.double(), q.double()
    m = 0.5 * (p + q)
    # xlogy(x, y) = x * log(y) with xlogy(0, y) = 0 (also for y = 0).
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(dim=-1)
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(dim=-1)
    return (0.5 * (kl_pm + kl_qm)).clamp_min(0.0).to(dtype)


def chart_js_divergence(
    chart_attn: torch.Tensor,
    base: float = 2.0,
    reduce: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    r"""Jensen–Shannon divergence between the attention rows of every pair of charts.

    For charts i, j and each (batch b, head h, query q) with rows
    :math:`P = A_i[b,h,q,:]`, :math:`Q = A_j[b,h,q,:]`, :math:`M = (P+Q)/2`:

    .. math::
        \mathrm{JS}(P, Q) = \tfrac12 \mathrm{KL}(P\|M) + \tfrac12 \mathrm{KL}(Q\|M),
        \quad \mathrm{KL}(P\|M) = \sum_k P_k \log_{base} \frac{P_k}{M_k}

    with :math:`0 \log 0 = 0` (computed with ``torch.xlogy``, so exact zeros in
    the attention are safe).  With ``base=2`` (default) the value lies in
    ``[0, 1]``: 0 for identical rows, 1 for rows with disjoint support.
    ``base=math.e`` gives nats (max ``log 2``).  Rows are assumed to be
    probability vectors (non-negative, summing to 1); they are not renormalised.

    Pairs are processed one at a time, so memory is ``O(B*heads*N*N)``.

    Args:
        chart_attn: ``(B, H, heads, N, N)`` per-chart attention.
        base: logarithm base (> 0, != 1).
        reduce: ``"mean"`` -> average over batch, heads and queries, ``(H, H)``;
            ``"none"`` -> ``(B, heads, N, H, H)`` (one matrix per query row).

    Returns:
        Symmetric ``(H, H)`` (or ``(B, heads, N, H, H)``) with zero diagonal.
    """
    _check_tensor(chart_attn, "chart_attn")
    if chart_attn.dim() != 5 or chart_attn.shape[-1] != chart_attn.shape[-2]:
        raise ValueError(
            f"`chart_attn` must have shape (B, H, heads, N, N), got {tuple(chart_attn.shape)}"
        )
    check_choice("`reduce`", reduce, ("mean", "none"))
    if base <= 0 or base == 1:
        raise ValueError(f"`base` must be > 0 and != 1, got {base}")
    a = _as_float(chart_attn)
    B, H, heads, N, _ = a.shape
    log_base = math.log(base)
    out = a.new_zeros((B, heads, N, H, H))
    for i in range(H):
        for j in range(i + 1, H):
            js = _entropy_terms_js(a[:, i], a[:, j]) / log_base  # (B, heads, N)
            out[..., i, j] = js
            out[..., j, i] = js
    return out.mean(dim=(0, 1, 2)) if reduce == "mean" else out


def chart_cka(
    chart_keys: torch.Tensor,
    reduce: Literal["mean", "none"] = "mean",
    eps: float = 1e-12,
) -> torch.Tensor:
    r"""Linear CKA (Kornblith et al., 2019) between the charts' token representations.

    For each image b and chart i let :math:`X_i = K_i[b] \in \mathbb{R}^{N\times C}`
    (tokens are the examples), centred over tokens:
    :math:`\tilde X_i = X_i - \tfrac1N \mathbf{1}\mathbf{1}^\top X_i`.  Then

    .. math::
        \mathrm{CKA}(X_i, X_j) =
            \frac{\|\tilde X_j^\top \tilde X_i\|_F^2}
                 {\|\tilde X_i^\top \tilde X_i\|_F\,\|\tilde X_j^\top \tilde X_j\|_F}
        = \frac{\langle G_i, G_j \rangle_F}{\|G_i\|_F\,\|G_j\|_F},
        \quad G_i = \tilde X_i \tilde X_i^\top \ (N\times N)

    computed through the (centred) Gram matrices, i.e. ``O(H*N^2*C + H^2*N^2)``
    per image.  CKA is in ``[0, 1]``, invariant to orthogonal transforms and
    isotropic scaling of either representation (not to arbitrary linear maps).
    Note that with few tokens (N small relative to C) linear CKA is biased
    upward.  If a chart is constant over tokens (zero Gram) the value is 0.

    Args:
        chart_keys: ``(B, H, N, C)``.
        reduce: ``"mean"`` -> per-image CKA averaged over the batch, ``(H, H)``;
            ``"none"`` -> ``(B, H, H)``.
        eps: floor on the norm product.

    Returns:
        Symmetric ``(H, H)`` or ``(B, H, H)``.
    """
    _check_chart_keys(chart_keys)
    check_choice("`reduce`", reduce, ("mean", "none"))
    x = _as_float(chart_keys)
    x = x - x.mean(dim=2, keepdim=True)  # centre over tokens
    gram = x @ x.transpose(-1, -2)  # (B, H, N, N), already centred (HKH = X~X~^T)
    g = gram.flatten(2)  # (B, H, N*N)
    inner = g @ g.transpose(-1, -2)  # (B, H, H)
    norms = g.norm(dim=-1)  # (B, H)
    cka = inner / (norms[:, :, None] * norms[:, None, :]).clamp_min(eps)
    cka = cka.clamp(0.0, 1.0)
    return cka.mean(dim=0) if reduce == "mean" else cka


SIMILARITY_KINDS = ("cosine", "js", "cka")


def chart_similarity(
    chart_keys: Optional[torch.Tensor] = None,
    chart_attn: Optional[torch.Tensor] = None,
    kind: str = "cosine",
    **kwargs,
) -> torch.Tensor:
    """Dispatch to a chart-similarity metric.

    * ``kind="cosine"`` -> :func:`chart_cosine_similarity` (needs ``chart_keys`` ``(B, H, N, C)``)
    * ``kind="cka"``    -> :func:`chart_cka` (needs ``chart_keys``)
    * ``kind="js"``     -> :func:`chart_js_divergence` (needs ``chart_attn`` ``(B, H, heads, N, N)``);
      note this is a *divergence* (0 = identical), the others are similarities (1 = identical).

    Extra keyword arguments are forwarded (e.g. ``reduce``, ``base``).

    Returns:
        ``(H, H)`` by default.
    """
    if kind not in SIMILARITY_KINDS:
        raise ValueError(f"`kind` must be one of {SIMILARITY_KINDS}, got {kind!r}")
    if kind in ("cosine", "cka"):
        if chart_keys is None:
            raise ValueError(f"kind={kind!r} requires `chart_keys` of shape (B, H, N, C)")
        fn = chart_cosine_similarity if kind == "cosine" else chart_cka
        return fn(chart_keys, **kwargs)
    if chart_attn is None:
        raise ValueError("kind='js' requires `chart_attn` of shape (B, H, heads, N, N)")
    return chart_js_divergence(chart_attn, **kwargs)


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
    _check_tensor(attn, "attn")
    if attn.dim() < 1:
        raise ValueError(f"`attn` must have at least 1 dim (..., N), got {tuple(attn.shape)}")
    if not -attn.dim() <= dim < attn.dim():
        raise ValueError(f"`dim`={dim} out of range for `attn` with shape {tuple(attn.shape)}")
    check_choice("`reduce`", reduce, ("none", "mean", "query"))
    a = _as_float(attn)
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
    _check_square_attn(attn, "attn")
    check_choice("`reduce`", reduce, ("mean", "none"))
    gs = to_2tuple(grid_size, "grid_size")
    ps = _to_2tuple_float(patch_size, "patch_size")
    sl = _patch_slice(attn.shape[-1], gs, num_prefix_tokens, "attn")
    a = _as_float(attn)[..., sl, sl]  # (..., P, P)
    if renormalize:
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(_EPS)
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
        _check_tensor(a, name)
        if a.dim() not in (3, 4) or a.shape[-1] != a.shape[-2]:
            raise ValueError(
                f"`{name}` must have shape (B, heads, N, N) or (B, N, N), got {tuple(a.shape)}"
            )
        a = _as_float(a)
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
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(_EPS)
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
    _check_tensor(mask, "mask")
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
    _check_tensor(attn_rows, "attn_rows")
    if attn_rows.dim() < 1:
        raise ValueError(f"`attn_rows` must have shape (..., N), got {tuple(attn_rows.shape)}")
    gs = to_2tuple(grid_size, "grid_size")
    sl = _patch_slice(attn_rows.shape[-1], gs, num_prefix_tokens, "attn_rows")
    cov = patch_coverage(mask, gs, weighting)  # (P,) or (B, P)
    a = _as_float(attn_rows)
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
    return (num / den.clamp_min(_EPS)).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- 2-D projection (the key atlas)
PROJECTIONS = ("pca", "umap")


def project_2d(points: torch.Tensor, method: str = "pca", seed: int = 0) -> torch.Tensor:
    """Project ``points`` (M, D) to (M, 2).

    ``"pca"``: the first two principal axes (SVD of the centred points, float64), each axis's sign fixed so
    that its largest loading is positive: deterministic, and a rotation of the data does not move the
    picture more than it moves the data. ``"umap"``: ``umap.UMAP(random_state=seed)`` when the package
    ``umap-learn`` is importable (it is not a dependency of mkviz).
    """
    _check_tensor(points, "points")
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
