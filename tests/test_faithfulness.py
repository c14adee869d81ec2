"""mkviz.faithfulness: deletion / insertion curves on a constructed case whose curves are known in closed form."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mkviz.explain.faithfulness import baseline_images, deletion_insertion, patch_order
from conftest import small_vit

pytestmark = pytest.mark.usefixtures("one_thread")
GAIN = 3.0


class OnePatchModel(nn.Module):
    """logits = [GAIN · mean of patch (r, c) (8 × 8 px), 0]: p(class 0) = sigmoid(GAIN · that mean)."""

    def __init__(self, row: int, col: int) -> None:
        super().__init__()
        self.row, self.col = row, col

    def forward(self, x):
        patch = x[:, :, 8 * self.row:8 * self.row + 8, 8 * self.col:8 * self.col + 8].mean((1, 2, 3))
        return torch.stack([GAIN * patch, torch.zeros_like(patch)], dim=1)


def _evidence_images():
    """Two 32-px images, 4 × 4 patches: ones on patch (1, 2), zeros elsewhere (the 'mean' baseline)."""
    x = torch.zeros(2, 3, 32, 32)
    x[:, :, 8:16, 16:24] = 1.0
    return x


def test_curves_and_areas_match_the_closed_form():
    model, x = OnePatchModel(1, 2), _evidence_images()
    s = 1 / (1 + math.exp(-GAIN))  # p(class 0) with the evidence; 0.5 without
    good = torch.zeros(2, 4, 4)
    good[:, 1, 2] = 1.0  # the evidence first
    bad = -good  # the evidence last
    out = deletion_insertion(model, x, torch.cat([good[:1], bad[:1]]))
    P = 16
    assert out["fractions"].tolist() == [k / P for k in range(P + 1)]
    assert out["target"].tolist() == [0, 0]
    torch.testing.assert_close(out["deletion"][0], torch.tensor([s] + [0.5] * P))
    torch.testing.assert_close(out["insertion"][0], torch.tensor([0.5] + [s] * P))
    torch.testing.assert_close(out["deletion"][1], torch.tensor([s] * P + [0.5]))
    torch.testing.assert_close(out["insertion"][1], torch.tensor([0.5] * P + [s]))
    expect_del = torch.tensor([((s + 0.5) / 2 + (P - 1) * 0.5) / P, ((P - 1) * s + (s + 0.5) / 2) / P])
    expect_ins = torch.tensor([((0.5 + s) / 2 + (P - 1) * s) / P, ((P - 1) * 0.5 + (0.5 + s) / 2) / P])
    torch.testing.assert_close(out["deletion_auc"], expect_del)
    torch.testing.assert_close(out["insertion_auc"], expect_ins)
    assert out["order"][0, 0] == 1 * 4 + 2 and out["order"][1, -1] == 6
    # fewer steps: 4 patches per step, the same first and last points
    coarse = deletion_insertion(model, x, good, steps=4)
    assert coarse["fractions"].tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    torch.testing.assert_close(coarse["deletion_auc"], torch.full((2,), ((s + 0.5) / 2 + 3 * 0.5) / 4))
    # a given target: class 1 has probability 1 - p(class 0) everywhere
    other = deletion_insertion(model, x, good, target=1)
    torch.testing.assert_close(other["deletion"], 1 - out["deletion"][:1].expand(2, -1))


def test_ties_keep_patch_order_and_baselines():
    flat = torch.zeros(1, 2, 3)
    assert patch_order(flat).tolist() == [[0, 1, 2, 3, 4, 5]]
    assert patch_order(torch.tensor([[[0.1, 0.3], [0.3, 0.2]]])).tolist() == [[1, 2, 3, 0]]
    x = torch.randn(2, 3, 32, 32)
    assert baseline_images(x, "mean", (8, 8)).abs().max() == 0
    assert baseline_images(x, 0.5, (8, 8)).eq(0.5).all()
    blurred = baseline_images(x, "blur", (8, 8))
    assert blurred.shape == x.shape and blurred.std() < 0.5 * x.std()  # detail removed
    torch.testing.assert_close(blurred.mean((2, 3)), x.mean((2, 3)), atol=0.15, rtol=0)  # colour kept
    with pytest.raises(ValueError, match="baseline: expected one of"):
        baseline_images(x, "noise", (8, 8))


def test_patch_vectors_use_the_models_grid_and_bad_inputs_are_named():
    torch.manual_seed(0)
    model = small_vit().eval()  # 32 px, 4 × 4 patches
    x = torch.randn(2, 3, 32, 32)
    flat = torch.randn(2, 16)
    a = deletion_insertion(model, x, flat, steps=8)
    b = deletion_insertion(model, x, flat.view(2, 4, 4), steps=8)
    torch.testing.assert_close(a["deletion"], b["deletion"])
    with torch.no_grad():
        p = model(x).softmax(-1).amax(1)
    torch.testing.assert_close(a["deletion"][:, 0], p)  # nothing deleted yet: the model's own confidence
    torch.testing.assert_close(a["insertion"][:, -1], p)  # everything inserted: the image again
    with pytest.raises(ValueError, match=r"saliency: expected \(2, 4, 4\) or \(2, 16\) .* 4x4 patch grid; got \(2, 15\)"):
        deletion_insertion(model, x, flat[:, :15])
    with pytest.raises(ValueError, match=r"saliency: expected \(2, 4, 4\) or \(2, 16\) .* got \(2, 5, 5\)"):
        deletion_insertion(model, x, torch.rand(2, 5, 5))  # a 5x5 map for the 4x4 patch grid
    with pytest.raises(ValueError, match=r"steps: expected an int in \[1, 16\]"):
        deletion_insertion(model, x, flat, steps=17)


def test_saliency_maps_rank_every_method_for_one_target():
    import mkviz
    from mkviz.explain.faithfulness import compare_saliency, faithfulness_table, saliency_maps
    torch.manual_seed(0)
    plain = small_vit().eval()
    mk = mkviz.convert(plain, "vanillak", num_charts=2, seed=1).eval()
    x = torch.randn(2, 3, 32, 32)
    maps = saliency_maps(mk, x, target=1)
    assert list(maps) == ["attention", "chart 1", "chart 2", "rollout", "relevance", "ig", "random"]
    assert all(m.shape == (2, 4, 4) for m in maps.values())
    with torch.no_grad(), mkviz.record_attention(mk) as rec:
        mk(x)
    last = rec.layers[-1]
    torch.testing.assert_close(maps["attention"].flatten(1), rec.attention[last].mean(1)[:, 0, 1:])
    torch.testing.assert_close(maps["chart 2"].flatten(1), rec.chart_attention[last][:, 1].mean(1)[:, 0, 1:])
    torch.testing.assert_close(maps["rollout"].flatten(1), rec.rollout()[:, 0, 1:])
    torch.testing.assert_close(maps["relevance"].flatten(1), mkviz.class_relevance(mk, x, target=1))
    assert list(saliency_maps(plain, x)) == ["attention", "rollout", "relevance", "ig", "random"]
    results = compare_saliency(plain, x, target=1, steps=4)
    rows = faithfulness_table(results)
    assert [r["method"] for r in rows] == list(results)
    for r in rows:
        assert r["gap"] == pytest.approx(r["insertion_auc"] - r["deletion_auc"])
        assert results[r["method"]]["target"].tolist() == [1, 1]
