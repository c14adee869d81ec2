"""Chart statistics (mkviz.specialisation), logged by training; KUA's one-hot membership at inference."""
import math

import timm
import torch

import mkviz
from mkviz.core.key import membership_mode
from mkviz.explain.specialisation import chart_statistics, off_diagonal_mean
from mkviz.training.loop import train
from mkviz.training.config import TrainConfig


def _vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                             num_classes=4).eval()


def test_identical_charts_have_cosine_one_and_zero_divergence():
    model = mkviz.convert(_vit(), "vanillak", num_charts=4, perturbation=0.0)
    stats = chart_statistics(model, torch.randn(6, 3, 32, 32), batch_size=4)
    assert math.isclose(stats["chart_cosine"], 1.0, abs_tol=1e-5)
    assert abs(stats["chart_js"]) < 1e-6
    assert len(stats["chart_cosine_layers"]) == 2
    assert chart_statistics(_vit(), torch.randn(2, 3, 32, 32)) == {}


def test_perturbed_charts_differ_and_the_mean_is_over_pairs_only():
    model = mkviz.convert(_vit(), "vanillak", num_charts=4, perturbation=0.5)
    stats = chart_statistics(model, torch.randn(4, 3, 32, 32))
    assert 0.5 < stats["chart_cosine"] < 0.999 and stats["chart_js"] > 1e-6  # near-uniform maps at random init: small but > 0
    assert off_diagonal_mean(torch.tensor([[1.0, 0.2], [0.4, 1.0]])) == torch.tensor(0.3).item()
    assert math.isnan(off_diagonal_mean(torch.ones(1, 1)))


def test_one_hot_membership_takes_the_most_probable_chart():
    model = mkviz.convert(_vit(), "kua", num_charts=4, init="scratch")
    key = model.blocks[0].attn.key
    with torch.no_grad():
        key.membership.weight.normal_(0, 1.0)
        x = torch.randn(2, 5, 32)
        charts = key.chart_keys(x)  # (B, H, N, C)
        probs = key.membership_probs(x)  # (B, N, H)
        with membership_mode(model, "one_hot"):
            hard = key(x)
            stats = chart_statistics(model, torch.randn(3, 3, 32, 32))
        soft = key(x)
    pick = probs.argmax(-1)  # (B, N)
    expected = torch.stack([charts[b, pick[b, n], n] for b in range(2) for n in range(5)]).view(2, 5, -1)
    torch.testing.assert_close(hard, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(soft, torch.einsum("bnh,bhnc->bnc", probs, charts), atol=1e-5, rtol=1e-5)
    assert stats["membership_max"] == 1.0
    assert key.membership_mode == "soft"  # restored


def test_training_logs_chart_statistics_every_epoch(tmp_path):
    res = train(TrainConfig(preset="micro", variant="vanillak", num_charts=4, dataset="shapes", num_train=64,
                            num_val=32, num_test=0, epochs=2, batch_size=32, out=str(tmp_path / "run"), quiet=True))
    assert set(res["chart_init"]) >= {"chart_cosine", "chart_js"}
    assert [set(r) >= {"chart_cosine", "chart_js", "chart_cosine_layers"} for r in res["history"]] == [True, True]
    assert -1.0 <= res["history"][-1]["chart_cosine"] <= 1.0
