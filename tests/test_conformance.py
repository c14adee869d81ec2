"""timm conformance of converted models, after timm's own tests/test_models.py: every supported family (small
sizes, random weights) converted to a manifold key still behaves as a timm model.

torch.jit.script is not tested: it is deprecated in torch 2.14 (it warns "switch to torch.compile or
torch.export") and TorchScript cannot compile mkviz's modules (postponed annotations, an optional Python
recorder callable, context managers on the key path). torch.compile and torch.export are tested instead.
"""
from __future__ import annotations

import warnings

import pytest
import timm
import torch

import mkviz

from small_models import randomized, small_family

pytestmark = pytest.mark.usefixtures("one_thread")

# family -> the variant its conversion uses here (each variant appears; KUA and SimpleK take other key paths)
FAMILY_VARIANTS = {"vit": "vanillak", "swin": "spatialk", "beit": "kua", "eva": "simplek", "rope": "vanillak",
                   "swinv2": "kua", "relpos": "simplek"}


@pytest.fixture(scope="module", params=list(FAMILY_VARIANTS))
def converted(request):
    torch.manual_seed(0)
    return request.param, mkviz.convert(small_family(request.param), FAMILY_VARIANTS[request.param], 2,
                                        context_broadcast=request.param in ("vit", "rope"))


def test_forward_and_backward_reach_every_parameter(converted):
    name, model = converted
    model.train()
    model.zero_grad()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{name}: parameters without a gradient: {missing}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradients: {bad}"
    assert sum(p.grad.abs().sum() > 0 for _, p in model.named_parameters() if p.requires_grad) > 0


def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(converted):
    name, model = converted
    model.train()
    x = torch.randn(2, 3, 32, 32)
    results = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        torch.manual_seed(1)  # the same stochastic depth draws in both runs (checkpointing replays its own)
        out = model(x)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    model.set_grad_checkpointing(False)
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-6, rtol=1e-5)
    assert len(results[1][1]) == len(results[0][1])
    for g_ckpt, g in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g_ckpt, g, atol=1e-6, rtol=1e-4)


def test_features_head_intermediates_and_reset_classifier(converted):
    name, model = converted
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
        torch.testing.assert_close(logits, model(x), atol=1e-6, rtol=1e-5)
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        final, intermediates = model.forward_intermediates(x, indices=2)
        torch.testing.assert_close(final, features, atol=1e-6, rtol=1e-5)
        assert len(intermediates) == 2 and all(t.dim() == 4 and t.shape[0] == 2 for t in intermediates)
        only = model.forward_intermediates(x, indices=2, intermediates_only=True)
        for a, b in zip(only, intermediates):
            torch.testing.assert_close(a, b)
    head = model.get_classifier()
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)
    model.reset_classifier(7)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    model.reset_classifier(5)
    model.get_classifier().load_state_dict(head.state_dict())


def test_torch_export_matches_eager(converted):
    """torch.export (the successor of TorchScript) traces every family; the exported program computes the same."""
    name, model = converted
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["rope", "swinv2"])
def test_torch_compile_forward_and_backward(family):
    """torch.compile of a converted RoPE ViT and Swin V2 (rotary embedding; cosine attention with the logit
    scale's clamp), randomised weights, about a minute each on one CPU core: the eager outputs and gradients."""
    torch.manual_seed(0)
    # timm's Swin V2 config has stochastic depth (drop_path_rate 0.2): off, so both runs compute the same function
    kwargs = {"depth": 1} if family == "rope" else {"drop_path_rate": 0.0}
    model = randomized(mkviz.convert(small_family(family, **kwargs), "vanillak", 2)).train()
    x = torch.randn(2, 3, 32, 32)
    out = torch.compile(model)(x)
    out.square().mean().backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ref = model(x)
    ref.square().mean().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g_compiled, p in zip(compiled_grads, model.parameters()):
        torch.testing.assert_close(g_compiled, p.grad, atol=1e-5, rtol=1e-4)


def test_timm_builds_manifold_attention_through_attn_layer(seeded):
    """Where timm takes `attn_layer` (VisionTransformer and the models built on it: DeiT, CLIP, DINOv2-style
    registers), `mkviz.attn_layer` builds the manifold key from scratch."""
    layer = mkviz.attn_layer(variant="spatialk", num_charts=3)
    for name, extra in (("vit_tiny_patch16_224", {}), ("deit_tiny_patch16_224", {}),
                        ("vit_small_patch14_reg4_dinov2", dict(img_size=28, patch_size=7))):
        cfg = {**dict(img_size=32, patch_size=8, depth=2, num_classes=5), **extra}
        model = timm.create_model(name, pretrained=False, attn_layer=layer, **cfg)
        modules = list(mkviz.manifold_modules(model))
        assert len(modules) == 2 and all(m.key.variant == "spatialk" and m.key.num_charts == 3 for _, m in modules)
        out = model(torch.randn(2, 3, cfg["img_size"], cfg["img_size"]))
        assert out.shape == (2, 5) and torch.isfinite(out).all()
