"""Conversion keeps a timm model's function; training breaks chart symmetry; folding is exact."""
from __future__ import annotations

import itertools

import pytest
import timm
import torch
from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention

import mkviz
from mkviz.core.attention import ManifoldAttention, ManifoldWindowAttention

from conftest import small_swin, small_vit

FULL_MODELS = ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "swin_tiny_patch4_window7_224"]


@pytest.fixture(scope="module", params=FULL_MODELS)
def full_model(request):
    torch.manual_seed(0)
    model = timm.create_model(request.param, pretrained=False).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        y = model(x)
    return request.param, model, x, y


@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_conversion_preserves_outputs(full_model, variant):
    name, model, x, y = full_model
    for num_charts in (1, 3, 8):
        converted = mkviz.convert(model, variant=variant, num_charts=num_charts).eval()
        with torch.no_grad():
            y_conv = converted(x)
        diff = (y_conv - y).abs().max().item()
        assert diff <= 1e-5, f"{name} {variant} H={num_charts}: max |diff| = {diff:.2e}"
        n_attn = sum(isinstance(m, (ManifoldAttention, ManifoldWindowAttention)) for m in converted.modules())
        n_plain = sum(type(m) in (Attention, WindowAttention) for m in converted.modules())
        assert n_attn > 0 and n_plain == 0
    # the original model was not touched (inplace=False)
    assert not any(isinstance(m, (ManifoldAttention, ManifoldWindowAttention)) for m in model.modules())


@pytest.mark.parametrize("options", [
    dict(context_broadcast=True),
    dict(kernel_size=3),
    dict(expand_from="input"),
    dict(kernel_size=3, expand_from="input", context_broadcast=True),
])
@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_conversion_preserves_outputs_with_options(variant, options, seeded):
    model = small_vit(qkv_bias=True).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        y_conv = mkviz.convert(model, variant, 4, **options).eval()(x)
    assert (y_conv - y).abs().max().item() <= 1e-5


def test_conversion_preserves_qk_norm_and_no_bias(seeded):
    model = small_vit(qkv_bias=False, qk_norm=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
        for variant in mkviz.VARIANTS:
            assert (mkviz.convert(model, variant, 3).eval()(x) - y).abs().max().item() <= 1e-5


def test_inplace_and_config(seeded):
    model = small_vit()
    same = mkviz.convert(model, "VanillaK", 2, inplace=True)
    assert same is model
    assert model.mkviz_config["variant"] == "vanillak" and model.mkviz_config["num_charts"] == 2
    with pytest.raises(ValueError, match="already a manifold-key attention"):
        mkviz.convert(model)


def _chart_params(module) -> torch.Tensor:
    """Everything that belongs to one chart, as a (H, ...) stack."""
    key = module.key
    H = key.num_charts
    parts = [key.chart_maps.weight.detach().reshape(H, -1), key.scale.detach().reshape(H, -1)]
    if key.fusion is not None:  # (C, H·C, 1): chart c's columns
        parts.append(key.fusion.weight.detach().reshape(key.key_dim, H, -1).transpose(0, 1).reshape(H, -1))
    if key.membership is not None:
        parts.append(key.membership.weight.detach().reshape(H, -1))
    return torch.cat(parts, dim=1)


def _train_steps(model, steps=3, lr=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 3, 32, 32, generator=g)
        y = torch.randint(0, 5, (8,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y) + mkviz.unbalanced_atlas_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_training_breaks_chart_symmetry(variant, seeded):
    """Zero-sum δ_c: charts receive different updates; without it (δ = 0) they stay identical."""
    H = 4
    base = small_vit(qkv_bias=True)
    spreads = {}
    for perturbation in (0.1, 0.0):
        model = mkviz.convert(base, variant, H, perturbation=perturbation)
        before = [_chart_params(m) for _, m in mkviz.manifold_modules(model)]
        _train_steps(model)
        after = [_chart_params(m) for _, m in mkviz.manifold_modules(model)]
        spread = 0.0
        for b, a in zip(before, after):
            update = a - b  # (H, P): each chart's update
            mean_norm = update.mean(0).norm()
            assert mean_norm > 0, "the chart parameters did not train"
            pair = max((update[i] - update[j]).norm() for i, j in itertools.combinations(range(H), 2))
            spread = max(spread, (pair / mean_norm).item())
        spreads[perturbation] = spread
    assert spreads[0.1] > 1e-3, f"{variant}: charts updated alike (relative spread {spreads[0.1]:.2e})"
    assert spreads[0.0] < 1e-5, f"{variant}: identical charts should stay identical ({spreads[0.0]:.2e})"


@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_trained_charts_give_different_keys(variant, seeded):
    model = _train_steps(mkviz.convert(small_vit(), variant, 4))
    x = torch.randn(2, 17, 64)
    for _, module in mkviz.manifold_modules(model):
        keys = module.key.chart_keys(x)  # (B, H, N, C)
        for i, j in itertools.combinations(range(4), 2):
            rel = (keys[:, i] - keys[:, j]).norm() / keys[:, i].norm()
            assert rel > 1e-3


@pytest.mark.parametrize("make", [small_vit, small_swin], ids=["vit", "swin"])
@pytest.mark.parametrize("variant", ["vanillak", "simplek", "spatialk"])
@pytest.mark.parametrize("context_broadcast", [False, True])
def test_fold_matches_after_training(make, variant, context_broadcast, seeded):
    baseline = make(qkv_bias=True) if make is small_vit else make()
    model = _train_steps(mkviz.convert(baseline, variant, 4, context_broadcast=context_broadcast))
    folded = mkviz.fold(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        diff = (folded(x) - model(x)).abs().max().item()
    assert diff <= 1e-5, f"fold changed outputs by {diff:.2e}"
    assert not list(mkviz.manifold_modules(folded))
    extra = 0
    if context_broadcast:  # CB keeps its γ (dim) per layer
        extra = sum(m.context_broadcast.scale.numel() for m in folded.modules() if hasattr(m, "context_broadcast"))
    assert mkviz.count_params(folded) == mkviz.count_params(baseline) + extra
    assert list(mkviz.manifold_modules(model)), "fold(inplace=False) must leave the model alone"


def test_fold_refuses_kua_and_wide_kernels(seeded):
    for variant, kw in (("kua", {}), ("vanillak", {"kernel_size": 3})):
        model = mkviz.convert(small_vit(), variant, 2, **kw)
        with pytest.raises(ValueError, match=r"fold\(\): blocks\.0\.attn .*cannot be folded"):
            mkviz.fold(model)
        assert len(list(mkviz.manifold_modules(model))) == 2, "a refused fold must change nothing"
    with pytest.raises(ValueError, match="no manifold-key attention"):
        mkviz.fold(small_vit())


def test_unsupported_attention_is_named(seeded):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no timm Attention"):
        mkviz.convert(model)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = small_vit()
            self.pool = torch.nn.MultiheadAttention(64, 4)

    with pytest.raises(ValueError, match=r"pool: cannot convert attention of class torch\.nn\..*MultiheadAttention"):
        mkviz.convert(Wrapper())


def test_create_model(seeded):
    plain = mkviz.create_model("vit_tiny_patch16_224", variant=None, img_size=32, patch_size=8, depth=2)
    assert not list(mkviz.manifold_modules(plain))
    model = mkviz.create_model("vit_tiny_patch16_224", variant="SimpleK", num_charts=2, img_size=32,
                               patch_size=8, depth=2)
    assert len(list(mkviz.manifold_modules(model))) == 2
    # from scratch: chart maps are identity + independent noise, not a zero-sum perturbation
    w = next(mkviz.manifold_modules(model))[1].key.chart_maps.weight.detach().reshape(2, 192, 192)
    eye = torch.eye(192)
    assert (w - eye).sum(0).abs().max() > 1e-3
    assert 0.005 < (w - eye).std() < 0.05
    with pytest.raises(ValueError, match="unknown timm model 'no_such_model'"):
        mkviz.create_model("no_such_model")


def test_attn_layer_for_timm(seeded):
    layer = mkviz.attn_layer(variant="kua", num_charts=3)
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, attn_layer=layer)
    mods = list(mkviz.manifold_modules(model))
    assert len(mods) == 2 and all(m.key.variant == "kua" and m.key.num_charts == 3 for _, m in mods)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
