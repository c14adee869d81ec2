"""mkviz.attribution: captum IG on pixels, patch embedding and the attention matrix (completeness checked)."""
from __future__ import annotations

import pytest
import torch

import mkviz
from mkviz.explain.attribution import (attention_attribution, attention_replaced, integrated_gradients,
                               layer_integrated_gradients)
from mkviz.explain.record import record_attention
from conftest import small_swin, small_vit

TARGET = torch.tensor([1, 3])


def _images(seed=0):
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _score(model, x, target=TARGET):
    with torch.no_grad():
        return model(x).gather(1, target.view(-1, 1)).squeeze(1)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    vit = small_vit()
    swin = small_swin()
    return {
        "vit": vit,
        "vit_kua": mkviz.convert(vit, "kua", num_charts=3),
        "swin_vanillak": mkviz.convert(swin, "vanillak", num_charts=2),
    }


def _fused_flags(model):
    return [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]


@pytest.mark.parametrize("key", ["vit", "swin_vanillak"])
def test_input_integrated_gradients_completeness(models, key):
    m = models[key]
    x = _images(1)
    attr, delta = integrated_gradients(m, x, TARGET, n_steps=16, internal_batch_size=8,
                                       return_convergence_delta=True)
    assert attr.shape == x.shape and torch.isfinite(attr).all() and attr.abs().sum() > 0
    gap = _score(m.eval(), x) - _score(m, torch.zeros_like(x))
    assert gap.abs().min() > 1e-3  # a meaningful difference to explain
    torch.testing.assert_close(attr.sum((1, 2, 3)), gap, atol=2e-3 + 0.02 * gap.abs().max().item(), rtol=0)
    assert delta.abs().max() < 2e-3 + 0.02 * gap.abs().max()


@pytest.mark.parametrize("key, grid", [("vit_kua", (4, 4)), ("swin_vanillak", (16, 16))])
def test_patch_embedding_attribution_map(models, key, grid):
    m = models[key]
    x = _images(2)
    pmap, delta = layer_integrated_gradients(m, x, TARGET, n_steps=16, return_convergence_delta=True)
    assert pmap.shape == (2, *grid) and torch.isfinite(pmap).all() and pmap.abs().sum() > 0
    gap = _score(m.eval(), x) - _score(m, torch.zeros_like(x))
    # everything depends on the image only through patch_embed: completeness holds for the whole output
    torch.testing.assert_close(pmap.sum((1, 2)), gap, atol=2e-3 + 0.02 * gap.abs().max().item(), rtol=0)
    raw = layer_integrated_gradients(m, x, TARGET, n_steps=4, reduce="none")
    assert raw.shape[0] == 2 and raw.dim() in (3, 4)


@pytest.mark.parametrize("key, layer", [("vit", "blocks.1.attn"), ("vit_kua", -1), ("swin_vanillak", 2)])
def test_attention_ig_completeness_and_batching(models, key, layer):
    m = models[key]
    m.train()  # attribution switches to eval and back
    before = _fused_flags(m)
    x = _images(3)
    attr, delta = attention_attribution(m, x, TARGET, layer=layer, method="ig", n_steps=16,
                                        return_convergence_delta=True)
    with torch.no_grad(), record_attention(m.eval(), layers=layer, charts=False) as rec:
        m(x)
    m.train()
    (name,) = rec.layers
    a = rec.attention[name]
    assert attr.shape == a.shape and torch.isfinite(attr).all() and attr.abs().sum() > 0
    # completeness, computed independently: F(x; A) - F(x; A' = 0)
    with torch.no_grad():
        f_a = attention_replaced(m, x, name, a).gather(1, TARGET.view(-1, 1)).squeeze(1)
        f_0 = attention_replaced(m, x, name, torch.zeros_like(a)).gather(1, TARGET.view(-1, 1)).squeeze(1)
    gap = f_a - f_0
    assert gap.abs().min() > 1e-4
    rows = attr.reshape(2, -1).sum(1)
    torch.testing.assert_close(rows, gap, atol=1e-4 + 0.01 * gap.abs().max().item(), rtol=0)
    assert delta.abs().max() < 1e-4 + 0.01 * gap.abs().max()
    # internal_batch_size (counted in images) does not change the result, Swin windows included
    small = attention_attribution(m, x, TARGET, layer=layer, method="ig", n_steps=16, internal_batch_size=4)
    torch.testing.assert_close(small, attr, atol=1e-6, rtol=1e-4)
    assert m.training and _fused_flags(m) == before


@pytest.mark.parametrize("key", ["vit_kua", "swin_vanillak"])
def test_attention_layer_methods(models, key):
    m = models[key].eval()
    x = _images(4)
    name = mkviz.record.attention_layers(m)[-1]
    before = _fused_flags(m)
    gxa = attention_attribution(m, x, TARGET, layer=name, method="grad_x_attn")
    # grad_x_attn = A ⊙ ∂F/∂A, checked against autograd through a graph-keeping recording
    with record_attention(m, layers=name, charts=False, detach=False) as rec:
        score = m(x).gather(1, TARGET.view(-1, 1)).sum()
    a = rec.attention[name]
    (grad,) = torch.autograd.grad(score, a)
    assert gxa.shape == a.shape and gxa.abs().sum() > 0
    torch.testing.assert_close(gxa, a.detach() * grad, atol=1e-6, rtol=1e-4)
    # captum LayerIntegratedGradients on attn_drop: from the black image's attention to the image's
    lig, delta = attention_attribution(m, x, TARGET, layer=name, method="layer_ig", n_steps=16,
                                       internal_batch_size=4, return_convergence_delta=True)
    assert lig.shape == a.shape and torch.isfinite(lig).all() and lig.abs().sum() > 0
    scale = lig.reshape(2, -1).sum(1).abs().max().item()
    assert delta.abs().max() < 1e-4 + 0.01 * scale
    assert _fused_flags(m) == before


def test_bad_arguments(models):
    m = models["vit"]
    with pytest.raises(ValueError, match="method"):
        attention_attribution(m, _images(), TARGET, method="saliency")
    with pytest.raises(ValueError, match="selects 2"):
        attention_attribution(m, _images(), TARGET, layer="blocks.*")
    with pytest.raises(ValueError, match="available"):
        attention_attribution(m, _images(), TARGET, layer="blocks.9.attn")
    with pytest.raises(ValueError, match="baseline"):
        integrated_gradients(m, _images(), TARGET, baseline=torch.zeros(1, 3, 8, 8))
