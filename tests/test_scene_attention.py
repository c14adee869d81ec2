"""Attention on the same object, other objects and background (mkviz.explain.scene_attention), on hand-made scenes."""
from __future__ import annotations

import pytest
import torch

from conftest import small_vit

import mkviz
from mkviz.explain.scene_attention import (REGIONS, query_region_shares, query_regions, region_coverage,
                                           scene_attention_shares)

LAYER = "blocks.1.attn"


def _scenes() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Two 32-px images (4x4 patches of 8 px): 2 and 3 rectangles, the last one on top."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    boxes = [[(0, 0, 16, 16), (16, 8, 32, 32)], [(0, 0, 12, 20), (8, 16, 24, 32), (20, 0, 32, 12)]]
    masks = []
    for rects in boxes:
        m = torch.zeros(len(rects), 32, 32, dtype=torch.uint8)
        for k, (y0, x0, y1, x1) in enumerate(rects):
            m[:k, y0:y1, x0:x1] = 0  # later articles occlude earlier ones
            m[k, y0:y1, x0:x1] = 1
        masks.append(m)
    return images, masks


def test_region_coverage_partitions_every_patch():
    _, masks = _scenes()
    cov = region_coverage(masks[0], 0, (4, 4))  # (3, 16)
    torch.testing.assert_close(cov.sum(0), torch.ones(16))
    assert cov[0].view(4, 4)[:2, :2].eq(1).all() and cov[0].sum() == 4  # the 16x16 square: 4 whole patches
    assert cov[1].sum() == pytest.approx(16 * 24 / 64)  # the other rectangle's pixels in patch units
    with pytest.raises(ValueError, match="instance"):
        region_coverage(masks[0], 2, (4, 4))


def test_shares_sum_to_one_and_uniform_attention_gives_chance():
    images, masks = _scenes()
    model = small_vit().eval()
    out = scene_attention_shares(model, images, masks, LAYER)
    assert out["charts"] == [] and out["num_instances"] == 5
    assert sum(out["fused"].values()) == pytest.approx(1, abs=1e-6)
    assert sum(out["chance"].values()) == pytest.approx(1, abs=1e-6)
    with torch.no_grad():  # queries of zero: every logit 0, attention uniform over the tokens
        model.blocks[1].attn.qkv.weight[:64].zero_()
        model.blocks[1].attn.qkv.bias[:64].zero_()
    uniform = scene_attention_shares(model, images, masks, LAYER)
    for region in REGIONS:
        assert uniform["fused"][region] == pytest.approx(uniform["chance"][region], abs=1e-6)


def test_charts_equal_fused_at_delta_zero_and_differ_after():
    images, masks = _scenes()
    model = mkviz.convert(small_vit(), "vanillak", 4, perturbation=0.0).eval()
    out = scene_attention_shares(model, images, masks, LAYER)
    assert len(out["charts"]) == 4
    for chart in out["charts"]:
        for region in REGIONS:
            assert chart[region] == pytest.approx(out["fused"][region], abs=1e-6)
    perturbed = mkviz.convert(small_vit(), "vanillak", 4, perturbation=0.5).eval()
    shares = scene_attention_shares(perturbed, images, masks, LAYER)
    # random weights attend almost uniformly, so the charts differ little, but far above float noise (1e-7)
    spread = max(c["same"] for c in shares["charts"]) - min(c["same"] for c in shares["charts"])
    assert spread > 5e-5 and sum(shares["charts"][0].values()) == pytest.approx(1, abs=1e-6)


def test_bad_inputs_are_one_line():
    images, masks = _scenes()
    with pytest.raises(ValueError, match="masks: one"):
        scene_attention_shares(small_vit().eval(), images, masks[:1], LAYER)


def test_per_query_form_averages_to_scene_attention_shares():
    """query_regions / query_region_shares: each query's shares; averaged over an instance's queries, then over
    instances, they are scene_attention_shares (fused and every chart); a query on no instance has NaN "same"."""
    images, masks = _scenes()
    model = mkviz.convert(small_vit(), "vanillak", 4, perturbation=0.5).eval()
    out = scene_attention_shares(model, images, masks, LAYER)
    with torch.no_grad(), mkviz.record_attention(model, layers=[LAYER]) as rec:
        model(images)
    per_instance = []
    for b in range(2):
        instance, coverage = query_regions(masks[b], (4, 4))  # (16,), (16, 3, 16)
        maps = torch.cat([rec.attention[LAYER][b][None], rec.chart_attention[LAYER][b]])[:, :, 1:, 1:]  # (5, heads, 16, 16)
        shares = query_region_shares(maps, coverage).mean(1)  # (5, 16, 3): heads averaged
        background = instance < 0
        assert shares[:, background, 0].isnan().all() and not shares[:, ~background].isnan().any()
        torch.testing.assert_close(shares[..., 1:].sum(-1)[:, background], torch.ones(5, int(background.sum())))
        torch.testing.assert_close(shares[:, ~background].sum(-1), torch.ones(5, int((~background).sum())))
        per_instance += [shares[:, instance == k].mean(1) for k in range(len(masks[b])) if (instance == k).any()]
    mean = torch.stack(per_instance).mean(0)  # (5, 3)
    assert mean[0].tolist() == pytest.approx([out["fused"][r] for r in REGIONS], abs=1e-6)
    for c in range(4):
        assert mean[1 + c].tolist() == pytest.approx([out["charts"][c][r] for r in REGIONS], abs=1e-6)
    # image 1: patch (0, 2) is half on the first rectangle (x 16..20 of 16..24): on it; (2, 1) a quarter on the
    # third: on none; (3, 3) below the second (it ends at y 24): on none
    instance, coverage = query_regions(masks[1], (4, 4))
    assert instance.view(4, 4).tolist() == [[0, 0, 0, -1], [0, 0, 1, 1], [2, -1, 1, 1], [2, 2, -1, -1]]
    assert coverage[9, 0].isnan().all() and coverage[9, 1:].sum(0).tolist() == pytest.approx([1.0] * 16)
    torch.testing.assert_close(coverage[2], region_coverage(masks[1], 0, (4, 4)))
    empty, cov = query_regions(torch.zeros(0, 32, 32), (4, 4))
    assert (empty == -1).all() and cov[:, 2].eq(1).all()
