"""The over-parameterised key control (mkviz.overparam): exact folding, preserving init, parameter matching."""
import pytest
import timm
import torch

from mkviz.training.build import build_model
from mkviz.core.cost import count_params
from mkviz.core.overparam import FactorisedKeyQKV, factorise_key, fold_key, key_hidden_for_params
from mkviz.studies.sweep_config import match_key_hidden
from mkviz.training.config import PRESETS, TrainConfig, model_spec


def _vit(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                             num_classes=4, **kw).eval()


def test_preserve_keeps_the_function_and_fold_restores_a_plain_qkv():
    model = _vit()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        factorise_key(model, 40, init="preserve", seed=1)
        assert isinstance(model.blocks[0].attn.qkv, FactorisedKeyQKV)
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
        # train the factors away from the identity, then fold: same outputs from one plain Linear
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        moved = model(x)
        fold_key(model)
        assert type(model.blocks[0].attn.qkv) is torch.nn.Linear
        torch.testing.assert_close(model(x), moved, atol=1e-5, rtol=1e-5)


def test_scratch_init_gives_a_plain_key_scale_and_gradients_reach_both_factors():
    model = factorise_key(_vit(), 512, seed=0)
    qkv = model.blocks[0].attn.qkv
    w, _ = qkv.key_linear()
    assert w.shape == (32, 32)
    assert abs(w.std().item() - 0.02) < 0.003  # the product has timm's key std 0.02
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for p in (qkv.key_in.weight, qkv.key_out.weight, qkv.qv.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_hidden_width_for_a_parameter_budget():
    # per layer a plain key has A*C_in + A parameters; the factorised one E*(C_in + A + 1) + A
    assert key_hidden_for_params(64, 64, 33_760) == round((33_760 + 64 * 64) / 129)
    model = _vit()
    before = count_params(model)
    factorise_key(model, 100)
    assert count_params(model) - before == 2 * (100 * (32 + 32 + 1) + 32 - (32 * 32 + 32))


def test_sweep_matches_the_manifold_keys_parameters():
    common = dict(preset="micro", dataset="shapes")
    target = TrainConfig(**common, variant="vanillak", num_charts=8).resolved()
    target_params = count_params(build_model(model_spec(target, 4)))
    hidden = match_key_hidden(TrainConfig(**common), target_params)
    got = TrainConfig(**common, key_hidden=hidden).resolved()
    assert abs(count_params(build_model(model_spec(got, 4))) - target_params) <= 2 * (32 + 32 + 1)


def test_bad_inputs_get_one_clear_error():
    with pytest.raises(ValueError, match="hidden_dim must be an integer >= 1"):
        FactorisedKeyQKV(8, 8, 0)
    with pytest.raises(ValueError, match="init must be one of"):
        factorise_key(_vit(), 8, init="identity")
    with pytest.raises(ValueError, match="needs hidden_dim >= the key width 32"):
        factorise_key(_vit(), 8, init="preserve")
    with pytest.raises(ValueError, match="from-scratch baseline only"):
        TrainConfig(variant="vanillak", key_hidden=8).resolved()
    assert "micro" in PRESETS
