"""mkviz.stats against scipy and hand-computed answers."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from mkviz import stats


def test_welch_and_paired_agree_with_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.85, 0.01, 10), rng.normal(0.84, 0.02, 10)
    w = stats.welch(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert math.isclose(w["p"], ref.pvalue, rel_tol=1e-9)
    pr = stats.paired(dict(enumerate(a)), dict(enumerate(b)))
    assert math.isclose(pr["p"], sps.ttest_rel(a, b).pvalue, rel_tol=1e-9)
    assert pr["lo"] < pr["diff"] < pr["hi"] and pr["n"] == 10


def test_exact_permutation_tests_and_their_floors():
    u = stats.permutation_unpaired([1, 2], [3, 4])  # 6 splits, 2 as extreme as observed
    assert u == {"p": pytest.approx(1 / 3), "floor": pytest.approx(1 / 3), "splits": 6}
    p = stats.permutation_paired({0: 2, 1: 4, 2: 6}, {0: 1, 1: 2, 2: 3})  # d = 1, 2, 3: only ±(1,2,3) as extreme
    assert p == {"p": pytest.approx(0.25), "floor": pytest.approx(0.25), "n": 3}
    assert stats.permutation_paired(dict.fromkeys(range(5), 1.0), dict.fromkeys(range(5), 0.0))["floor"] == 0.0625
    assert math.isclose(stats.permutation_unpaired(range(10), range(10, 20))["floor"], 2 / math.comb(20, 10))


def test_power_effect_size_and_holm():
    assert math.isclose(stats.min_detectable_effect(1.0, 1e6), 1.959964 + 0.841621, rel_tol=1e-5)
    assert math.isclose(stats.min_detectable_effect(0.01, 9), (sps.t.ppf(0.975, 9) + sps.t.ppf(0.8, 9)) * 0.01)
    a, b = [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]  # pooled sd 1, d = -1, correction 1 - 3/(4*6 - 9) = 0.8
    assert math.isclose(stats.hedges_g(a, b), -0.8)
    adj = stats.holm([0.01, 0.04, float("nan"), 0.03])
    assert adj[:2] == pytest.approx([0.03, 0.06]) and math.isnan(adj[2]) and adj[3] == pytest.approx(0.06)


def test_compare_gives_every_reading():
    out = stats.compare({s: 0.8 + 0.01 * s for s in range(5)}, {s: 0.79 + 0.012 * s for s in range(5)})
    assert set(out) == {"welch", "paired", "perm", "perm_paired", "mde_welch", "mde_paired", "g"}
    assert out["perm_paired"]["floor"] == 0.0625 and out["mde_welch"] > 0
