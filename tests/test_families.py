"""BEiT, EVA / RoPE, Swin V2 and RelPos ViT: conversion keeps the function, folding is exact, recordings show
the plain model's attention and per-chart maps defined as in docs/design.md §11."""
from __future__ import annotations

import pytest
import timm
import torch

import mkviz
from mkviz.core.families import FAMILIES

from small_models import randomized, small_family

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILY_NAMES = ["beit", "eva", "rope", "swinv2", "relpos"]


def _plain_attention(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """The softmax output of every attention layer of a plain timm model (its eager path, hooked at attn_drop)."""
    maps, handles = {}, []
    for name, m in model.named_modules():
        if type(m) in FAMILIES:
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
            handles.append(m.attn_drop.register_forward_pre_hook(
                lambda _m, args, name=name: maps.__setitem__(name, args[0].detach())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return maps


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request):
    torch.manual_seed(0)
    model = randomized(small_family(request.param))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = model(x)
    assert y.std() > 0.1, "the probe must be sensitive: outputs of order 1"
    return request.param, model, x, y


@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_family_conversion_preserves_outputs_and_folds(family, variant):
    name, model, x, y = family
    for num_charts, options in ((1, {}), (3, {}), (3, dict(context_broadcast=True, expand_from="input"))):
        converted = mkviz.convert(model, variant, num_charts, **options).eval()
        assert {type(m) for _, m in mkviz.manifold_modules(converted)} <= set(FAMILIES.values())
        assert not any(type(m) in FAMILIES for m in converted.modules())
        with torch.no_grad():
            diff = (converted(x) - y).abs().max().item()
        assert diff <= 1e-5, f"{name} {variant} H={num_charts} {options}: max |diff| {diff:.2e}"
    if variant == "kua":
        return
    # fold after the key has moved away from the identity: the exact function, the baseline's size
    converted = mkviz.convert(model, variant, 3).eval()
    with torch.no_grad():
        for _, m in mkviz.manifold_modules(converted):
            m.key.chart_maps.weight.add_(0.05 * torch.randn_like(m.key.chart_maps.weight))
            m.key.scale.mul_(1 + 0.1 * torch.randn_like(m.key.scale))
        y_trained = converted(x)
        folded = mkviz.fold(converted)
        diff = (folded(x) - y_trained).abs().max().item()
    assert (y_trained - y).abs().max() > 1e-3, "the perturbed key must change the outputs"
    assert diff <= 1e-5, f"{name} {variant}: fold changed outputs by {diff:.2e}"
    assert {type(m) for m in folded.modules()} & set(FAMILIES) and not list(mkviz.manifold_modules(folded))
    assert mkviz.count_params(folded) == mkviz.count_params(model)


def test_recorded_maps_are_the_plain_models_and_charts_follow_the_key_path(family):
    """Fused maps equal the plain timm model's softmax output; with δ = 0 every chart's map is the fused one
    (each chart's key runs the same k_norm / rotary / cosine path as the fused key)."""
    name, model, x, _ = family
    plain = _plain_attention(model, x)
    converted = mkviz.convert(model, "vanillak", 3, perturbation=0.0).eval()
    with torch.no_grad(), mkviz.record_attention(converted) as rec:
        converted(x)
    assert set(rec.attention) == set(plain)
    for layer, attn in plain.items():
        torch.testing.assert_close(rec.attention[layer], attn, atol=1e-5, rtol=1e-4)
        charts = rec.chart_attention[layer]  # (B, H, heads, N, N)
        assert charts.shape == (attn.shape[0], 3, *attn.shape[1:])
        torch.testing.assert_close(charts, attn.unsqueeze(1).expand_as(charts), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["beit", "eva", "rope", "relpos"])
def test_vanillak_geometric_mean_with_position_bias_and_rotary_embedding(name, seeded):
    """docs/design.md §11: the bias is shared by all charts and RoPE is linear per token, so VanillaK's fused
    map is the normalised geometric mean of the chart maps after training has separated the charts."""
    model = mkviz.convert(randomized(small_family(name)), "vanillak", 4, perturbation=0.5).eval()
    with torch.no_grad(), mkviz.record_attention(model) as rec:
        model(torch.randn(2, 3, 32, 32))
    for layer, attn in rec.attention.items():
        charts = rec.chart_attention[layer].double()  # (B, H, heads, N, N)
        assert (charts[:, 0] - charts[:, 1]).abs().max() > 1e-3, "charts must differ for the check to mean much"
        geo = charts.log().mean(dim=1).exp()
        geo = geo / geo.sum(-1, keepdim=True)
        torch.testing.assert_close(attn.double(), geo, atol=2e-6, rtol=1e-4)


def test_swinv2_chart_maps_normalise_each_chart_key(seeded):
    """Swin V2: A_c = softmax(τ · q̂ · normalize(K_c)ᵀ + 16σ(cpb) + mask), recomputed from the recording."""
    model = mkviz.convert(randomized(small_family("swinv2")), "simplek", 3, perturbation=0.5).eval()
    with torch.no_grad(), mkviz.record_attention(model, keep_bias=True) as rec:
        model(torch.randn(2, 3, 32, 32))
    assert rec.layout, "Swin V2 layers record their window layout"
    for layer in rec.attention:
        module = model.get_submodule(layer)
        q, keys, bias = rec.queries[layer], rec.chart_keys[layer], rec.attn_bias[layer]  # q̂ (B', heads, N, d)
        k = torch.nn.functional.normalize(keys.unflatten(-1, (module.num_heads, module.head_dim)), dim=-1)
        logits = torch.einsum("bhnd,bcmhd->bchnm", q * module.scale, k) + bias.unsqueeze(1)
        torch.testing.assert_close(rec.chart_attention[layer], logits.softmax(-1), atol=1e-5, rtol=1e-4)
    image = rec.image_map(next(iter(rec.layout)), query=(3, 5), chart=1)
    assert image.shape == (16, 16) and torch.isfinite(image).all()


def test_rope_refuses_grouped_query_attention_and_cait_is_refused_with_its_reason(seeded):
    gqa = small_family("rope", qkv_fused=False, num_kv_heads=2)
    with pytest.raises(ValueError, match=r"grouped-query attention \(num_kv_heads=2 < num_heads=4\)"):
        mkviz.convert(gqa)
    cait = timm.create_model("cait_xxs24_224", img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn: cannot convert attention of class "
                                         r"timm\.models\.cait\.TalkingHeadAttn \(CaiT: not implemented\. .*talking"):
        mkviz.convert(cait)


def test_fold_refuses_context_broadcast_on_families(seeded):
    model = mkviz.convert(small_family("beit"), "vanillak", 2, context_broadcast=True)
    with pytest.raises(ValueError, match=r"fold\(\): a BEiT layer with context_broadcast=True .* \(blocks\.0\.attn\)"):
        mkviz.fold(model)
    assert len(list(mkviz.manifold_modules(model))) == 2


@pytest.mark.parametrize("name", ["beit", "eva", "rope", "relpos"])
def test_chart_explorer_on_vit_like_families(name, seeded):
    """The explorer shows a converted BEiT / EVA / RoPE / RelPos ViT: its fused panel is the recorded map."""
    from mkviz.viz.explorers import ChartExplorer

    model = mkviz.convert(small_family(name), "vanillak", 2).eval()
    images = torch.rand(2, 3, 32, 32)
    explorer = ChartExplorer(model, images, query=(1, 2))
    with torch.no_grad(), mkviz.record_attention(model) as rec:
        model(images[:1])
    fused = next(t for t in explorer.maps_figure.data if t.name == "fused")
    expected = rec.image_map(explorer.layer, query=(1, 2))  # (4, 4) patch grid, heads averaged
    assert torch.allclose(torch.tensor(fused.z, dtype=torch.float32), expected, atol=1e-5)
