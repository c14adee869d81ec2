"""Statistics for comparing two configurations over seeds: intervals, tests, power, effect sizes, multiplicity.

Every function takes accuracies (fractions) by seed and returns plain floats, NaN where a quantity is not
defined at that n. Two readings of each comparison are given, because the seeds pair the runs (a seed fixes
the data and its order for every configuration):

    Welch        unpaired: diff of means, 95 % interval and p with unequal variances (Welch–Satterthwaite df)
    paired       the per-seed differences d_s: mean, 95 % t interval, p of a one-sample t-test
    permutation  exact tests without a normality assumption: unpaired, every relabelling of the pooled runs
                 (C(n_a + n_b, n_a) of them); paired, every sign flip of the d_s (2^n). Their smallest
                 possible two-sided p (the "floor"): paired 2 / 2^n (a sign pattern and its negation give the
                 same |mean|; with 5 paired seeds 0.0625, so no result can reach p < 0.05 that way); unpaired
                 2 / C(n_a + n_b, n_a) when n_a = n_b (a split and its complement give the same |difference|),
                 but 1 / C(n_a + n_b, n_a) when n_a ≠ n_b, where the most extreme split is generically unique
                 (3 against 10 runs: 1/286 ≈ 0.0035, not 2/286).
    equivalence  two one-sided tests (TOST) of |true difference| < margin, paired or Welch: p is the larger
                 one-sided p, and equivalence at alpha means the (1 − 2 alpha) interval lies inside ±margin.
    power        the minimum detectable effect: the true difference a two-sided test at level alpha would
                 find with 80 % probability, given the observed spread and n (normal approximation with t
                 quantiles): MDE = (t_{1-alpha/2, df} + t_{0.8, df}) · se.
    effect size  Hedges' g: the difference over the pooled standard deviation, bias-corrected.
    family       Holm's step-down adjustment of all p-values of a page (controls the family-wise error);
                 `holm_level` gives the level Holm's procedure tests a step at (alpha / m for the smallest p of
                 m), the alpha to quote an MDE at.
"""
from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["welch", "paired", "permutation_unpaired", "permutation_paired", "min_detectable_effect",
           "hedges_g", "holm", "holm_level", "tost_paired", "tost_welch", "compare"]

NAN = float("nan")


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """mean(a) − mean(b) with Welch's 95 % interval and p: {diff, lo, hi, p, df, se}."""
    from scipy import stats
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean()) if len(a) and len(b) else NAN
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "lo": NAN, "hi": NAN, "p": NAN, "df": NAN, "se": NAN}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "lo": diff, "hi": diff, "p": NAN if diff == 0 else 0.0, "df": NAN, "se": 0.0}
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return {"diff": diff, "lo": diff - half, "hi": diff + half, "p": p, "df": float(df), "se": se}


def _shared(a: Mapping[int, float], b: Mapping[int, float]) -> np.ndarray:
    return np.array([a[s] - b[s] for s in sorted(set(a) & set(b))], float)


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, float]:
    """Per-seed differences a[s] − b[s] over the shared seeds: {n, diff, lo, hi, p, se, sd}."""
    from scipy import stats
    d = _shared(a, b)
    n = len(d)
    if n < 2:
        return {"n": n, "diff": float(d.mean()) if n else NAN, "lo": NAN, "hi": NAN, "p": NAN, "se": NAN,
                "sd": NAN}
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    p = float(2 * stats.t.sf(abs(d.mean()) / se, n - 1)) if se > 0 else (NAN if d.mean() == 0 else 0.0)
    return {"n": n, "diff": float(d.mean()), "lo": float(d.mean()) - half, "hi": float(d.mean()) + half, "p": p,
            "se": se, "sd": sd}


def permutation_unpaired(a: Sequence[float], b: Sequence[float], max_splits: int = 2_000_000) -> dict[str, float]:
    """Exact two-sided permutation test of mean(a) − mean(b): {p, floor, splits}. Enumerates every split of
    the pooled runs (refuses more than `max_splits`). floor, the smallest p any data can give: 2 / splits for
    equal group sizes (the complement of the most extreme split is as extreme), 1 / splits otherwise."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    pooled, na = np.concatenate([a, b]), len(a)
    splits = math.comb(len(pooled), na)
    if na == 0 or len(b) == 0:
        return {"p": NAN, "floor": NAN, "splits": 0}
    if splits > max_splits:
        raise ValueError(f"a, b: {splits} splits exceed max_splits={max_splits}; pass fewer runs or raise it")
    observed = abs(a.mean() - b.mean())
    total = pooled.sum()
    sums = np.array([pooled[list(idx)].sum() for idx in itertools.combinations(range(len(pooled)), na)])
    diffs = np.abs(sums / na - (total - sums) / len(b))
    p = float(np.mean(diffs >= observed - 1e-12))
    return {"p": p, "floor": (2 if na == len(b) else 1) / splits, "splits": splits}


def permutation_paired(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, float]:
    """Exact two-sided sign-flip test of the mean per-seed difference: {p, floor, n}."""
    d = _shared(a, b)
    n = len(d)
    if n == 0:
        return {"p": NAN, "floor": NAN, "n": 0}
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # (2^n, n)
    means = np.abs(signs @ d) / n
    p = float(np.mean(means >= abs(d.mean()) - 1e-12))
    return {"p": p, "floor": 2 / 2 ** n, "n": n}


def min_detectable_effect(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The true difference a two-sided t-test at `alpha` detects with probability `power`, for a standard
    error `se` with `df` degrees of freedom: (t_{1-alpha/2} + t_{power}) · se."""
    from scipy import stats
    if not (se > 0 and df > 0):
        return NAN
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean(a) − mean(b)) / pooled sd, times the small-sample correction 1 − 3 / (4(n_a + n_b) − 9)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return NAN
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if pooled == 0:
        return NAN
    return float((a.mean() - b.mean()) / pooled * (1 - 3 / (4 * (na + nb) - 9)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and does not count towards the family)."""
    p = np.asarray(pvalues, float)
    valid = np.flatnonzero(~np.isnan(p))
    out = np.full(len(p), NAN)
    order = valid[np.argsort(p[valid], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def holm_level(m: int, step: int = 0, alpha: float = 0.05) -> float:
    """The level Holm's procedure compares the `step`-th smallest of m p-values with (0-based): alpha / (m − step).
    The first step, alpha / m, is the level at which anything in the family can be declared at all."""
    if not 0 <= step < m:
        raise ValueError(f"step must be in [0, {m}); got {step}")
    return alpha / (m - step)


def _tost(diff: float, se: float, df: float, margin: float, alpha: float) -> dict[str, float]:
    from scipy import stats
    if not margin > 0:
        raise ValueError(f"margin must be > 0 (in the data's units, e.g. 0.005 = 0.5 points); got {margin!r}")
    if not (se > 0 and df > 0):
        return {"diff": diff, "p": NAN, "p_lower": NAN, "p_upper": NAN, "lo": NAN, "hi": NAN,
                "equivalent": False, "margin": margin, "alpha": alpha}
    p_lower = float(stats.t.sf((diff + margin) / se, df))   # H0: diff <= -margin
    p_upper = float(stats.t.cdf((diff - margin) / se, df))  # H0: diff >= +margin
    half = float(stats.t.ppf(1 - alpha, df)) * se
    p = max(p_lower, p_upper)
    return {"diff": diff, "p": p, "p_lower": p_lower, "p_upper": p_upper, "lo": diff - half, "hi": diff + half,
            "equivalent": bool(p < alpha), "margin": margin, "alpha": alpha}


def tost_paired(a: Mapping[int, float], b: Mapping[int, float], margin: float,
                alpha: float = 0.05) -> dict[str, float]:
    """Two one-sided t-tests of equivalence of a and b within ±margin, on the per-seed differences a[s] − b[s]:
    {diff, p (the larger one-sided p), p_lower, p_upper, lo, hi (the (1 − 2 alpha) interval), equivalent
    (p < alpha, i.e. the interval inside ±margin), margin, alpha}. margin in the data's units."""
    pr = paired(a, b)
    return _tost(pr["diff"], pr["se"], pr["n"] - 1, margin, alpha)


def tost_welch(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05) -> dict[str, float]:
    """`tost_paired` for unpaired groups, with Welch's standard error and degrees of freedom."""
    w = welch(a, b)
    return _tost(w["diff"], w["se"], w["df"], margin, alpha)


def compare(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, object]:
    """Every reading of a − b (accuracies by seed): Welch, paired, both permutation tests, the paired and
    unpaired minimum detectable effects at 80 % power (alpha 0.05), Hedges' g."""
    va, vb = list(a.values()), list(b.values())
    w, pr = welch(va, vb), paired(a, b)
    return {"welch": w, "paired": pr, "perm": permutation_unpaired(va, vb), "perm_paired": permutation_paired(a, b),
            "mde_welch": min_detectable_effect(w["se"], w["df"]),
            "mde_paired": min_detectable_effect(pr["se"], pr["n"] - 1), "g": hedges_g(va, vb)}
