"""Chart statistics (mkviz.specialisation), logged by training; KUA's one-hot membership at inference."""
import math

import timm
import torch

import mkviz
from mkviz.core.key import membership_mode
from mkviz.explain.specialisation import chart_statistics, chart_usage, off_diagonal_mean, usage_entropy
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


def test_kua_chart_usage_sums_to_one_and_its_entropy_tells_uniform_from_collapse():
    """A converted KUA key (membership logits 0) uses every chart alike: entropy log2 H exactly; a collapse onto
    one chart has entropy 0; per-class usage is the mean over that class's images."""
    H = 4
    model = mkviz.convert(_vit(), "kua", num_charts=H)
    labels = torch.tensor([0, 1, 1, 2, 0, 1])
    stats = chart_statistics(model, torch.randn(6, 3, 32, 32), batch_size=4, labels=labels)
    usage = torch.tensor(stats["chart_usage_layers"])  # (layers, H)
    assert usage.shape == (2, H) and torch.allclose(usage, torch.full((2, H), 1 / H), atol=1e-6)
    assert math.isclose(stats["chart_usage_entropy"], math.log2(H), abs_tol=1e-5)
    assert sorted(stats["chart_usage_by_class_layers"]) == ["0", "1", "2"]
    collapsed = torch.zeros(3, 5, H)
    collapsed[..., 2] = 1.0  # every token of every image on chart 2
    spread = torch.softmax(torch.randn(3, 5, H, generator=torch.Generator().manual_seed(0)), dim=-1)
    out = chart_usage([collapsed, spread], labels=torch.tensor([0, 1, 1]))
    assert out["chart_usage_entropy_layers"][0] == 0.0 and out["chart_usage_layers"][0] == [0.0, 0.0, 1.0, 0.0]
    mean_spread = spread.mean(dim=(0, 1))
    assert math.isclose(out["chart_usage_entropy_layers"][1], usage_entropy(mean_spread), rel_tol=1e-6)
    expected = torch.stack([collapsed[1:].mean(dim=(0, 1)), spread[1:].mean(dim=(0, 1))])  # class 1: images 1, 2
    assert torch.allclose(torch.tensor(out["chart_usage_by_class_layers"]["1"]), expected, atol=1e-6)
    assert out["chart_usage_by_class_layers"]["0"][0] == [0.0, 0.0, 1.0, 0.0]  # per layer: never mixed over layers


def test_training_logs_kua_chart_usage_every_epoch(tmp_path):
    res = train(TrainConfig(preset="micro", variant="kua", num_charts=4, dataset="shapes", num_train=64,
                            num_val=32, num_test=0, epochs=1, batch_size=32, out=str(tmp_path / "run"), quiet=True))
    for row in (res["chart_init"], res["history"][-1]):
        assert [math.isclose(sum(u), 1.0, abs_tol=1e-5) for u in row["chart_usage_layers"]] == [True] * 2
        assert 0.0 <= row["chart_usage_entropy"] <= math.log2(4) + 1e-6 and row["chart_usage_by_class_layers"]
