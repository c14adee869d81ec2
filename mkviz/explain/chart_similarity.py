"""How alike the charts are: cosine similarity of their keys, Jensen-Shannon divergence of their attention,
CKA of their keys; `chart_similarity(kind=...)` picks one of `SIMILARITY_KINDS`. Each returns an (H, H) matrix.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch

from ..core.checks import check_choice
from .metric_inputs import as_float, check_chart_keys, check_tensor

__all__ = ["SIMILARITY_KINDS", "chart_cosine_similarity", "chart_js_divergence", "chart_cka", "chart_similarity"]


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
    check_chart_keys(chart_keys)
    check_choice("`reduce`", reduce, ("mean", "none"))
    k = as_float(chart_keys)
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
    check_tensor(chart_attn, "chart_attn")
    if chart_attn.dim() != 5 or chart_attn.shape[-1] != chart_attn.shape[-2]:
        raise ValueError(
            f"`chart_attn` must have shape (B, H, heads, N, N), got {tuple(chart_attn.shape)}"
        )
    check_choice("`reduce`", reduce, ("mean", "none"))
    if base <= 0 or base == 1:
        raise ValueError(f"`base` must be > 0 and != 1, got {base}")
    a = as_float(chart_attn)
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
    check_chart_keys(chart_keys)
    check_choice("`reduce`", reduce, ("mean", "none"))
    x = as_float(chart_keys)
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
