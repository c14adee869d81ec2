"""mkviz.optim: chart scales are not decayed, chart maps decay towards the identity, the rest as timm does it."""
from __future__ import annotations

import math

import pytest
import torch

import mkviz
from mkviz.training.optim import build_optimizer, decay_anchors
from mkviz.training.build import load_checkpoint
from mkviz.training.loop import train
from mkviz.training.config import TrainConfig

from conftest import small_vit


def _keys(model):
    return [m.key for _, m in mkviz.manifold_modules(model)]


@pytest.mark.parametrize("variant", ["vanillak", "simplek", "spatialk", "kua"])
def test_groups_and_anchors(variant):
    model = mkviz.create_model("vit_tiny_patch16_224", variant=variant, num_charts=3, img_size=32, patch_size=8,
                               embed_dim=32, depth=2, num_heads=2, num_classes=4)
    optimizer, anchored = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    decay, no_decay, towards = (set(map(id, g["params"])) for g in optimizer.param_groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0, 0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in towards} == set(decay_anchors(model))
    for key in _keys(model):
        assert id(key.scale) in no_decay
        # chart maps decay towards I where they act on a base key; SpatialK's are the key projection itself
        assert id(key.chart_maps.weight) in (decay if variant == "spatialk" else towards)
        if key.fusion is not None:
            assert id(key.fusion.weight) in towards
        if key.membership is not None:
            assert id(key.membership.weight) in decay
    assert len(anchored) == len(towards)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


@pytest.mark.parametrize("variant", ["vanillak", "simplek"])
def test_pure_decay_step_lands_on_the_anchors(variant):
    """With zero gradients AdamW's update is 0, so one step with lr·λ = 1 applies the decay alone: plain matrices
    land on 0, chart maps on the identity, SimpleK's fusion on the mean, and scales stay where they were."""
    torch.manual_seed(0)
    model = mkviz.create_model("vit_tiny_patch16_224", variant=variant, num_charts=4, img_size=32, patch_size=8,
                               embed_dim=32, depth=1, num_heads=2, num_classes=4)
    with torch.no_grad():
        for key in _keys(model):
            key.scale.mul_(1.7)
    scales = [k.scale.clone() for k in _keys(model)]
    optimizer, anchored = build_optimizer(model, lr=0.5, weight_decay=2.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    anchored.apply(0.5)
    optimizer.step()
    anchors = decay_anchors(model)
    for name, p in model.named_parameters():
        if name in anchors:
            torch.testing.assert_close(p, anchors[name], rtol=0, atol=1e-7)
    for key, before in zip(_keys(model), scales):
        assert torch.equal(key.scale, before)
        assert key.base.weight.abs().max().item() < 1e-7
        eye = torch.eye(key.key_dim).repeat(key.num_charts, 1)
        torch.testing.assert_close(key.chart_maps.weight[:, :, 0], eye, rtol=0, atol=1e-7)


@pytest.mark.slow
def test_training_with_large_weight_decay_keeps_scales_and_maps_near_the_identity(tmp_path):
    """With λ·lr = 0.03 per step over 48 steps the old optimiser (which decayed `key.scale`, 2-D, and the chart maps
    towards 0) shrank them to about half; now scales stay at 1 and the maps' identity part stays 1, while the
    base key and the maps' deviations δ_c shrink."""
    cfg = TrainConfig(preset="micro", variant="vanillak", num_charts=4, dataset="shapes", num_train=512, num_val=64,
                      num_test=0, epochs=3, batch_size=32, lr=3e-3, weight_decay=10.0, out=str(tmp_path / "run"),
                      quiet=True)
    train(cfg)
    model, _ = load_checkpoint(tmp_path / "run" / "final")
    init = 0.02 * math.sqrt(2 / math.pi)  # mean |w| of the trunc-normal(0.02) initialisation
    for key in _keys(model):
        H, C = key.num_charts, key.key_dim
        maps = key.chart_maps.weight[:, :, 0].reshape(H, C, C)
        assert key.scale.mean().item() == pytest.approx(1.0, abs=0.05)
        assert torch.diagonal(maps, dim1=1, dim2=2).mean().item() == pytest.approx(1.0, abs=0.05)
        off_diagonal = maps - torch.diag_embed(torch.diagonal(maps, dim1=1, dim2=2))
        assert off_diagonal.abs().mean().item() < 0.8 * init
        assert key.base.weight.abs().mean().item() < 0.8 * init


def test_spatialk_and_input_charts_start_with_a_plain_key_scale():
    """Where the charts are H independent projections averaged by the fusion, each is drawn with std 0.02·√H so
    that the fused key matrix has the std 0.02 of a plain timm ViT's key."""
    torch.manual_seed(0)
    for variant, expand_from in (("spatialk", "key"), ("vanillak", "input")):
        key = mkviz.ManifoldKey(256, 256, variant, num_charts=16, expand_from=expand_from)
        x = torch.eye(256).unsqueeze(0)  # the key of each basis vector: the fused matrix's rows
        fused = key(x) - (key(torch.zeros_like(x)))
        assert fused.std().item() == pytest.approx(0.02, rel=0.05)
