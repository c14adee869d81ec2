"""Hugging Face transformers ViT, DeiT, Swin and DINOv2 (docs/design.md §11.6): conversion keeps the function,
folding is exact, recordings give what `output_attentions=True` gives on a plain eager model, whatever the
`attn_implementation`, and per-chart maps are defined as for timm. Small random-weight configs; nothing downloads."""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install mkviz[hf])")

import mkviz  # noqa: E402
from mkviz.core.key import ManifoldKey  # noqa: E402

from small_models import randomized  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("vit", "deit", "swin", "dinov2")
VIT_SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8)


def small_hf(family: str, attn_implementation: str = "eager") -> torch.nn.Module:
    """A small random-weight transformers model of `family`, in eval mode, outputs of order 1."""
    impl = dict(attn_implementation=attn_implementation)
    if family == "vit":
        model = transformers.ViTForImageClassification(transformers.ViTConfig(**VIT_SIZE, num_labels=5, **impl))
    elif family == "deit":  # the distilled DeiT: class and distillation tokens
        model = transformers.DeiTForImageClassificationWithTeacher(
            transformers.DeiTConfig(**VIT_SIZE, num_labels=5, **impl))
    elif family == "swin":  # 16x16 tokens, window 4: shifted windows (and their mask) in every second block
        model = transformers.SwinForImageClassification(transformers.SwinConfig(
            image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=5,
            **impl))
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**VIT_SIZE, **impl))
    with torch.no_grad():
        randomized(model)
    return model.eval()


def output(out) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def hf_attentions(model: torch.nn.Module) -> list:
    return [(n, m) for n, m in model.named_modules() if type(m).__name__ in
            ("ViTAttention", "DeiTAttention", "SwinAttention", "Dinov2Attention")]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    torch.manual_seed(0)
    model = small_hf(request.param)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x, output_attentions=True)
    assert output(out).std() > 0.1, "the probe must be sensitive: outputs of order 1"
    return request.param, model, x, output(out), out.attentions


@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_hf_conversion_preserves_outputs(family, variant):
    name, model, x, y, _ = family
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for num_charts, options in ((1, {}), (3, {}), (3, dict(expand_from="input", kernel_size=3))):
        converted = mkviz.convert(model, variant, num_charts, **options)
        keys = [m.k_proj for _, m in hf_attentions(converted)]
        assert keys and all(isinstance(k, ManifoldKey) and k.num_charts == num_charts for k in keys)
        with torch.no_grad():
            diff = (output(converted(pixel_values=x)) - y).abs().max().item()
        assert diff <= 1e-5, f"{name} {variant} H={num_charts} {options}: max |diff| {diff:.2e}"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the original must be untouched"
    assert all(type(m.k_proj) is torch.nn.Linear for _, m in hf_attentions(model))


def test_hf_conversion_under_sdpa_trains(family):
    """The same function under `attn_implementation="sdpa"`; every trainable parameter gets a finite gradient
    (but the mask token of masked-image modelling, unused here)."""
    name, model, x, y, _ = family
    sdpa = small_hf(name, "sdpa")
    sdpa.load_state_dict(model.state_dict())
    converted = mkviz.convert(sdpa, "kua", 3, ua_weight=0.1).train()
    assert converted.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert (output(converted.eval()(pixel_values=x)) - y).abs().max().item() <= 1e-5
    converted.train()
    for key in (m.k_proj for _, m in hf_attentions(converted)):
        key.membership.weight.data.normal_(0, 0.5)  # memberships away from uniform: a nonzero atlas term
    y_train = output(converted(pixel_values=x))
    atlas = mkviz.unbalanced_atlas_loss(converted)
    assert atlas.item() < 0, "KUA's atlas term is read from the Hugging Face k_proj keys"
    (y_train.square().mean() + atlas).backward()
    grads = {n: p.grad for n, p in converted.named_parameters() if p.requires_grad and "mask_token" not in n}
    missing = [n for n, g in grads.items() if g is None or not torch.isfinite(g).all()]
    assert not missing, f"{name}: parameters without a finite gradient: {missing[:5]}"
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "membership" in n)


@pytest.mark.parametrize("variant", ["vanillak", "simplek", "spatialk"])
def test_hf_fold_is_exact_after_training(family, variant):
    name, model, x, _, _ = family
    converted = mkviz.convert(model, variant, 3)
    with torch.no_grad():  # move the key path away from its start, as training would
        for n, p in converted.named_parameters():
            if ".k_proj." in n:
                p.add_(0.05 * torch.randn_like(p))
        y = output(converted(pixel_values=x))
    folded = mkviz.fold(converted)
    with torch.no_grad():
        diff = (output(folded(pixel_values=x)) - y).abs().max().item()
    assert diff <= 1e-5, f"{name} {variant}: folded max |diff| {diff:.2e}"
    assert sorted(folded.state_dict()) == sorted(model.state_dict()), "folding gives back the plain model's keys"
    assert mkviz.count_params(folded) == mkviz.count_params(model)
    assert folded.mkviz_config["folded"] is True
    assert isinstance(hf_attentions(converted)[0][1].k_proj, ManifoldKey), "inplace=False keeps the input"


def test_hf_fold_refuses_kua_and_wide_kernels(family):
    _, model, _, _, _ = family
    for variant, options in (("kua", {}), ("vanillak", dict(kernel_size=3))):
        converted = mkviz.convert(model, variant, 2, **options)
        with pytest.raises(ValueError, match=r"fold\(\): .*attention uses variant .*cannot be folded"):
            mkviz.fold(converted, inplace=True)
        assert all(isinstance(m.k_proj, ManifoldKey) for _, m in hf_attentions(converted)), "nothing changed"


def last_of_each_stage(layers: list) -> list:
    """Swin's `output_attentions` gives one map per stage: its last block's."""
    stages = {}
    for n in layers:
        stages[n.split(".blocks.")[0]] = n
    return list(stages.values())


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_hf_recording_equals_output_attentions(family, impl):
    """Plain and converted models, loaded eager or sdpa: the recorded fused maps are the plain eager model's
    `output_attentions`; recording changes no output and leaves no trace."""
    name, model, x, y, attentions = family
    plain = small_hf(name, impl)
    plain.load_state_dict(model.state_dict())
    for subject, tol in ((plain, 0.0), (mkviz.convert(plain, "vanillak", 3), 1e-5)):
        with mkviz.record_attention(subject) as rec, torch.no_grad():
            y_rec = output(subject(pixel_values=x))
        assert (y_rec - y).abs().max().item() <= 1e-5
        layers = last_of_each_stage(rec.layers) if name == "swin" else rec.layers
        assert len(layers) == len(attentions)
        for layer, expected in zip(layers, attentions):
            assert rec.attention[layer].shape == expected.shape
            assert (rec.attention[layer] - expected).abs().max().item() <= tol, f"{name} {impl} {layer}"
            heads, d = expected.shape[1], rec.queries[layer].shape[-1]
            assert rec.queries[layer].shape == (expected.shape[0], heads, expected.shape[2], d)
        for _, m in hf_attentions(subject):  # back to the model's own implementation, no hooks
            assert m.config is subject.config and not m._forward_pre_hooks and not hasattr(m, "mkviz_recorder")
        assert subject.config._attn_implementation == impl
        assert bool(rec.chart_attention) == (subject is not plain)


@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_hf_chart_maps(family, variant):
    """δ = 0: every chart's map is the fused map; δ > 0: each chart's map is softmax(q·K_cᵀ·scale + bias) from
    the recorded q, K_c and bias, rows sum to 1, and for VanillaK the fused map is their geometric mean."""
    name, model, x, _, _ = family
    same = mkviz.convert(model, variant, 3, perturbation=0.0)
    with mkviz.record_attention(same) as rec, torch.no_grad():
        same(pixel_values=x)
    for layer in rec.layers:
        diff = (rec.chart_attention[layer] - rec.attention[layer].unsqueeze(1)).abs().max().item()
        assert diff <= 1e-5, f"{name} {variant} {layer}: identical charts differ from the fused map by {diff:.1e}"
    converted = mkviz.convert(model, variant, 3)
    with mkviz.record_attention(converted, keep_bias=True) as rec, torch.no_grad():
        converted(pixel_values=x)
    assert (name == "swin") == bool(rec.attn_bias), "only Swin has an additive bias (position bias + shift mask)"
    for layer in rec.layers:
        q, keys, charts = rec.queries[layer], rec.chart_keys[layer], rec.chart_attention[layer]
        B, H, N, _ = keys.shape
        k = keys.view(B, H, N, q.shape[1], -1).transpose(2, 3)  # (B, H, heads, N, d)
        logits = q.unsqueeze(1) @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        if layer in rec.attn_bias:
            logits = logits + rec.attn_bias[layer].unsqueeze(1)
        torch.testing.assert_close(charts, logits.softmax(-1), rtol=0, atol=1e-6)
        torch.testing.assert_close(charts.sum(-1), torch.ones_like(charts[..., 0]), rtol=0, atol=1e-5)
        assert (charts[:, 0] - charts[:, 1]).abs().max() > 1e-4, "δ > 0: the charts attend differently"
        if variant == "vanillak":
            geo = charts.clamp_min(1e-30).log().mean(1).softmax(-1)  # normalised geometric mean over the charts
            torch.testing.assert_close(geo, rec.attention[layer], rtol=0, atol=1e-5)
        if variant == "kua":
            torch.testing.assert_close(rec.membership[layer].sum(-1), torch.ones(B, N), rtol=0, atol=1e-6)


def test_hf_refusals():
    model = small_hf("vit")
    converted = mkviz.convert(model, "vanillak", 2)
    with pytest.raises(ValueError, match="already has a manifold key"):
        mkviz.convert(converted)
    with pytest.raises(ValueError, match="context_broadcast: True is not supported for Hugging Face models"):
        mkviz.convert(model, context_broadcast=True)
    beit = transformers.BeitForImageClassification(transformers.BeitConfig(**VIT_SIZE, num_labels=5))
    with pytest.raises(ValueError, match=r"cannot convert attention of class transformers\.models\.beit.*"
                                         r"Hugging Face transformers: mkviz converts ViTAttention"):
        mkviz.convert(beit)


def test_hf_gradient_checkpointing_and_folded_checkpoint_round_trip(tmp_path, monkeypatch):
    """A converted model trains with transformers' gradient checkpointing (same outputs and gradients); a folded
    one saves with `save_pretrained` and loads back into the plain class with `from_pretrained`."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model, x = small_hf("vit"), torch.randn(2, 3, 32, 32)
    converted = mkviz.convert(model, "simplek", 3).train()
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            converted.activation_checkpointing_enable()
        converted.zero_grad()
        y = output(converted(pixel_values=x))
        y.square().mean().backward()
        results.append((y.detach(), [p.grad.clone() for p in converted.parameters() if p.grad is not None]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-6)
    assert len(results[1][1]) == len(results[0][1])
    for g1, g0 in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-6)
    folded = mkviz.fold(converted.eval())
    folded.save_pretrained(tmp_path)
    loaded = transformers.ViTForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        diff = (output(loaded(pixel_values=x)) - output(converted(pixel_values=x))).abs().max().item()
    assert diff <= 1e-5
