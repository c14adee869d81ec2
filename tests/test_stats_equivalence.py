"""mkviz.stats: the exact permutation floor for equal and unequal groups, the two one-sided tests of equivalence
(against scipy's one-sided t-tests) and the Holm level an MDE is quoted at."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from mkviz import stats


@pytest.mark.parametrize("a, b, floor", [
    ([10.0, 11.0, 12.0], [0.0, 1.0, 2.0], 2 / 20),              # equal sizes: the complement split is as extreme
    ([10.0, 11.0, 12.0], [0.0, 1.0, 2.0, 3.0, 4.0], 1 / 56),    # 3 vs 5: the most extreme split is unique
    # 3 vs 10, as kernel size 3 against VanillaK-8 (irregular spacing: evenly spaced data would make the
    # bottom split exactly as extreme as the top one, the non-generic case)
    ([10.0, 11.0, 12.0], [0.0, 0.1, 0.3, 0.6, 1.0, 1.5, 2.1, 2.8, 3.6, 4.5], 1 / 286),
])
def test_permutation_floor_is_reached_by_the_most_extreme_split(a, b, floor):
    """The observed split is the most extreme one, so p is the smallest p any data can give: the floor."""
    u = stats.permutation_unpaired(a, b)
    assert u["splits"] == math.comb(len(a) + len(b), len(a))
    assert u["floor"] == pytest.approx(floor, rel=1e-12) and u["p"] == pytest.approx(floor, rel=1e-12)
    assert stats.permutation_unpaired(b, a)["p"] == pytest.approx(floor, rel=1e-12)  # symmetric in the groups


def test_permutation_floor_is_never_beaten():
    """Over random data of unequal sizes no p falls below the stated floor (p < floor was printed before)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        na, nb = rng.integers(2, 6), rng.integers(2, 8)
        u = stats.permutation_unpaired(rng.normal(size=na), rng.normal(size=nb))
        assert u["p"] >= u["floor"] - 1e-15


def _ref_paired(d, margin):
    lower = sps.ttest_1samp(d, -margin, alternative="greater").pvalue
    upper = sps.ttest_1samp(d, margin, alternative="less").pvalue
    return lower, upper


def test_tost_paired_agrees_with_scipy_one_sided_tests():
    a = {s: 0.85 + 0.001 * s for s in range(10)}
    b = {s: 0.849 + 0.0012 * s + 0.002 * (-1) ** s for s in range(10)}
    d = np.array([a[s] - b[s] for s in range(10)])
    out = stats.tost_paired(a, b, margin=0.005)
    lower, upper = _ref_paired(d, 0.005)
    assert out["p_lower"] == pytest.approx(lower, rel=1e-9) and out["p_upper"] == pytest.approx(upper, rel=1e-9)
    assert out["p"] == pytest.approx(max(lower, upper), rel=1e-9)
    half = sps.t.ppf(0.95, 9) * d.std(ddof=1) / math.sqrt(10)  # the 90 % interval
    assert out["lo"] == pytest.approx(d.mean() - half) and out["hi"] == pytest.approx(d.mean() + half)
    assert out["equivalent"] is True and out["margin"] == 0.005
    assert -0.005 < out["lo"] and out["hi"] < 0.005  # equivalence at alpha <=> the (1 − 2 alpha) interval inside
    # a known number: d = 0.001 ± 0.002 over 10 seeds (sd 0.002·√(10/9), se 0.002/3), margin 0.005:
    # t = (0.001 − 0.005) / (0.002/3) = −6 on 9 df
    d2 = {s: 0.001 + 0.002 * v for s, v in enumerate([1, -1] * 5)}
    out2 = stats.tost_paired(d2, dict.fromkeys(range(10), 0.0), margin=0.005)
    se = 0.002 * math.sqrt(10 / 9) / math.sqrt(10)
    assert out2["p"] == pytest.approx(sps.t.cdf((0.001 - 0.005) / se, 9), rel=1e-9)
    assert out2["p"] == pytest.approx(1.01e-4, rel=0.01)  # the upper test; the lower one has t = +9
    assert out2["p_lower"] == pytest.approx(sps.t.sf(9.0, 9), rel=1e-9)


def test_tost_fails_to_show_equivalence_of_a_wide_interval():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.85, 0.01, 5), rng.normal(0.85, 0.01, 5)
    out = stats.tost_paired(dict(enumerate(a)), dict(enumerate(b)), margin=0.005)
    assert out["equivalent"] is False and out["p"] > 0.05 and (out["lo"] < -0.005 or out["hi"] > 0.005)
    with pytest.raises(ValueError, match="margin"):
        stats.tost_paired(dict(enumerate(a)), dict(enumerate(b)), margin=0.0)


def test_tost_welch_agrees_with_scipy_one_sided_tests():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.850, 0.002, 10), rng.normal(0.851, 0.004, 7)
    out = stats.tost_welch(a, b, margin=0.005)
    lower = sps.ttest_ind(a + 0.005, b, equal_var=False, alternative="greater").pvalue
    upper = sps.ttest_ind(a - 0.005, b, equal_var=False, alternative="less").pvalue
    assert out["p_lower"] == pytest.approx(lower, rel=1e-9) and out["p_upper"] == pytest.approx(upper, rel=1e-9)
    assert out["p"] == pytest.approx(max(lower, upper), rel=1e-9) and out["equivalent"] is True
    w = stats.welch(a, b)
    half = sps.t.ppf(0.95, w["df"]) * w["se"]
    assert out["lo"] == pytest.approx(w["diff"] - half) and out["hi"] == pytest.approx(w["diff"] + half)


def test_holm_level_and_the_mde_at_it():
    assert stats.holm_level(21) == pytest.approx(0.05 / 21) and stats.holm_level(21, 20) == 0.05
    with pytest.raises(ValueError):
        stats.holm_level(3, 3)
    # the MDE at the first Holm step of a 21-comparison family, 10 paired seeds, se 0.002 (0.2 points)
    mde = stats.min_detectable_effect(0.002, 9, alpha=stats.holm_level(21))
    assert mde == pytest.approx((sps.t.ppf(1 - 0.05 / 42, 9) + sps.t.ppf(0.8, 9)) * 0.002, rel=1e-12)
    assert mde == pytest.approx(0.0101, abs=1e-4)  # 1.01 points, against 0.63 at alpha 0.05
    assert stats.min_detectable_effect(0.002, 9) == pytest.approx(0.0063, abs=1e-4)


# ----------------------------------------------------------------------------- the page's comparison table
def _table_rows(text: str) -> dict[str, list[str]]:
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| `")}


def test_stated_family_and_equivalence_columns_follow_the_stats():
    """`report.family: stated` adjusts over the primary and control comparisons only, the other rows are marked
    description; `report.equivalence_margin` adds the TOST p, its Holm values and the MDE at Holm's level."""
    from mkviz.studies import sweep_analysis as analysis
    rng = np.random.default_rng(0)
    base = 0.82 + 0.004 * rng.standard_normal(10)
    accs = {"b": base, "a": base + 0.001 + 0.003 * rng.standard_normal(10),
            "c": base + 0.010 + 0.003 * rng.standard_normal(10)}
    rows = {k: {"accs": dict(enumerate(v.tolist())), "n": 10} for k, v in accs.items()}
    sweep = {"baseline": "b", "configs": {"a": {}, "b": {}, "c": {}},
             "report": {"primary": [["a", "c"]], "controls": [["a", "b"]], "family": "stated",
                        "equivalence_margin": 0.005}}
    table = _table_rows(analysis.comparisons_block(sweep, rows))
    assert list(table) == ["`a` − `c`", "`a` − `b`", "`c` − `b`"]
    assert table["`c` − `b`"][0] == "vs baseline (description)" and table["`c` − `b`"][11] == "–"
    p = [stats.paired(rows[x]["accs"], rows[y]["accs"])["p"] for x, y in (("a", "c"), ("a", "b"))]
    assert table["`a` − `b`"][11] == f"{stats.holm(p)[1]:.3f}"
    tost = stats.tost_paired(rows["a"]["accs"], rows["b"]["accs"], 0.005)
    assert tost["equivalent"] and table["`a` − `b`"][12] == ("<0.001" if tost["p"] < 0.001 else f"{tost['p']:.3f}")
    # its paired p is the larger of the two: Holm compares it at alpha / 1 within the family of two
    se = stats.paired(rows["a"]["accs"], rows["b"]["accs"])["se"]
    assert p[1] > p[0] and table["`a` − `b`"][15] == f"{100 * stats.min_detectable_effect(se, 9, alpha=0.05):.1f} (0.05)"
    with pytest.raises(ValueError, match="report.family must be one of all, stated"):
        analysis.comparisons_block({**sweep, "report": {**sweep["report"], "family": "some"}}, rows)
