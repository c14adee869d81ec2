"""The key path: fast == reference, the algebra of docs/design.md §2 and §6, costs, and clear errors."""
from __future__ import annotations

import math

import pytest
import timm
import torch

import mkviz
from mkviz.core.attention import ManifoldAttention
from mkviz.core.key import ManifoldKey

from conftest import assert_fast_matches_reference, small_swin, small_vit

CONFIGS = [
    dict(),
    dict(kernel_size=3),
    dict(expand_from="input"),
    dict(bias=False),
    dict(kernel_size=5, expand_from="input", bias=False),
]


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter a generic value (no identities, no zeros) so that nothing cancels by luck."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 2 and p.shape[0] == 3 else 0.0))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_fast_path_equals_reference(variant, config):
    """Same outputs and the same gradients for every parameter and the input."""
    key = ManifoldKey(24, 16, variant=variant, num_charts=3, **config).double()
    _randomise(key)
    assert_fast_matches_reference(key, torch.randn(2, 7, 24, dtype=torch.float64, requires_grad=True))


def test_chart_keys_follow_the_equations():
    """K_c = φ_c(s_c ⊙ (x W_kᵀ + b_k)) with φ_c the c-th group of the convolution (kernel 1)."""
    key = ManifoldKey(12, 12, variant="vanillak", num_charts=4)
    _randomise(key)
    x = torch.randn(2, 5, 12)
    k0 = key.base(x)  # (B, N, C)
    w = key.chart_maps.weight.view(4, 12, 12)  # (H, C_out, C_in)
    b = key.chart_maps.bias.view(4, 12)
    manual = torch.stack([(k0 * key.scale[c]) @ w[c].T + b[c] for c in range(4)], dim=1)  # (B, H, N, C)
    torch.testing.assert_close(key.chart_keys(x), manual)
    torch.testing.assert_close(key(x), manual.mean(1), rtol=1e-5, atol=1e-6)


def test_kua_membership_and_unbalanced_atlas_loss():
    key = ManifoldKey(8, 8, variant="KUA", num_charts=4, ua_weight=0.5)
    _randomise(key)
    x = torch.randn(3, 6, 8)
    probs = key.membership_probs(x)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 6))
    manual = torch.einsum("bnh,bhnc->bnc", probs, key.chart_keys(x))
    key.train()
    torch.testing.assert_close(key(x), manual, rtol=1e-5, atol=1e-6)
    expected = -0.5 * ((probs - 0.25) ** 2).sum(-1).mean()
    torch.testing.assert_close(key.ua_loss, expected)
    # at uniform membership (a converted model) the term is exactly 0 and its gradient reaches W_m
    model = mkviz.convert(small_vit(), "kua", 4, ua_weight=0.1).train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    loss = mkviz.unbalanced_atlas_loss(model)
    assert loss.item() == 0.0
    assert mkviz.unbalanced_atlas_loss(model).item() == 0.0  # read once, then cleared
    model.zero_grad()
    _randomise(model)
    model(torch.randn(2, 3, 32, 32))
    loss = mkviz.unbalanced_atlas_loss(model)
    assert loss.item() < 0
    loss.backward()
    assert all(m.key.membership.weight.grad.abs().sum() > 0 for _, m in mkviz.manifold_modules(model))
    with pytest.raises(ValueError, match="ua_weight applies to variant 'kua' only"):
        ManifoldKey(8, 8, variant="vanillak", ua_weight=0.1)


def test_vanillak_attention_is_geometric_mean_of_chart_attention():
    """Mean chart logits => A ∝ Π_c A_c^{1/H} (docs/design.md §2.8), per head."""
    torch.manual_seed(0)
    attn = ManifoldAttention(32, num_heads=4, qkv_bias=True, variant="vanillak", num_charts=5)
    _randomise(attn)
    x = torch.randn(2, 9, 32)
    q, k, _ = attn.project_qkv(x)  # (B, heads, N, d)
    B, N, H, heads, d = 2, 9, 5, 4, 8
    charts = attn.key.chart_keys(x).view(B, H, N, heads, d).permute(0, 1, 3, 2, 4)  # (B, H, heads, N, d)
    chart_attn = (q.unsqueeze(1) @ charts.transpose(-2, -1) * attn.scale).softmax(-1)  # (B, H, heads, N, N)
    fused = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)  # (B, heads, N, N)
    geo = chart_attn.log().mean(1).exp()
    geo = geo / geo.sum(-1, keepdim=True)
    torch.testing.assert_close(fused, geo, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [small_vit, small_swin], ids=["vit", "swin"])
@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_fused_and_eager_paths_agree(make, variant):
    torch.manual_seed(0)
    model = mkviz.convert(make(), variant, 3).eval()
    _randomise(model)
    x = torch.randn(2, 3, 32, 32)
    outs = []
    for fused in (True, False):
        for _, m in mkviz.manifold_modules(model):
            m.fused_attn = fused
        with torch.no_grad():
            outs.append(model(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_attention_masks_match_timm():
    """attn_mask (bool and additive) and is_causal behave as in timm.layers.Attention."""
    torch.manual_seed(0)
    timm_attn = timm.layers.Attention(16, num_heads=2, qkv_bias=True).eval()
    model = mkviz.convert(torch.nn.Sequential(timm_attn), "simplek", 3)
    ours = model[0].eval()
    x = torch.randn(2, 6, 16)
    bool_mask = torch.rand(2, 1, 6, 6) > 0.3
    bool_mask[..., 0] = True
    float_mask = torch.randn(2, 1, 6, 6)
    for fused in (True, False):
        timm_attn.fused_attn = ours.fused_attn = fused
        with torch.no_grad():
            torch.testing.assert_close(ours(x, attn_mask=bool_mask), timm_attn(x, attn_mask=bool_mask))
            torch.testing.assert_close(ours(x, attn_mask=float_mask), timm_attn(x, attn_mask=float_mask))
            torch.testing.assert_close(ours(x, is_causal=True), timm_attn(x, is_causal=True))


def test_one_chart_vanillak_is_a_disentangled_baseline():
    """H = 1: the key is (x W_kᵀ + b_k)·diag(s)·Aᵀ + a, one extra C×C map (plus scale and bias)."""
    base = small_vit(qkv_bias=True)
    model = mkviz.convert(base, "vanillak", 1)
    C, depth = 64, 2
    assert mkviz.count_params(model) - mkviz.count_params(base) == depth * (C * C + 2 * C)
    key = next(mkviz.manifold_modules(model))[1].key
    _randomise(key)
    w, b = key.effective_linear()
    a = key.chart_maps.weight[:, :, 0] * key.scale[0]  # A diag(s)
    torch.testing.assert_close(w, a @ key.base.weight)
    torch.testing.assert_close(b, a @ key.base.bias + key.chart_maps.bias)


def test_params_and_flops_follow_the_formulas():
    """Per block, N tokens, width C, H charts (a multiply-add = 2 FLOPs), nominal per-chart cost:
    vanillak +H·C²·N MACs, simplek +2H·C²·N, spatialk +(H-1)·C²·N, kua +(H·C² + 2H·C)·N."""
    base = timm.create_model("vit_tiny_patch16_224", img_size=64)
    N, C, depth, H = 17, 192, 12, 4
    base_flops, base_params = mkviz.count_flops(base, (1, 3, 64, 64)), mkviz.count_params(base)
    # baseline ViT-Ti: patch embed + per block (4C² + 2·4C²)·N + 2N²C, + head
    expected_base = 2 * (16 * 3 * 16 * 16 * C + depth * (12 * C * C * N + 2 * N * N * C) + C * 1000)
    assert base_flops == expected_base
    macs = {"vanillak": H * C * C * N, "simplek": 2 * H * C * C * N, "spatialk": (H - 1) * C * C * N,
            "kua": (H * C * C + 2 * H * C) * N}
    params = {"vanillak": H * C * C + 2 * H * C, "simplek": 2 * H * C * C + 2 * H * C + C,
              "spatialk": (H - 1) * C * C + (H - 1) * C + H * C, "kua": H * C * C + 2 * H * C + H * C + H}
    for variant in mkviz.VARIANTS:
        model = mkviz.convert(base, variant, H)
        assert mkviz.count_flops(model, (1, 3, 64, 64)) - base_flops == 2 * depth * macs[variant], variant
        assert mkviz.count_params(model) - base_params == depth * params[variant], variant
    # the fast path of VanillaK adds only the parameter-space product (C³ per block), independent of N
    fast = mkviz.count_flops(mkviz.convert(base, "vanillak", H), (1, 3, 64, 64), reference=False)
    assert fast - base_flops == 2 * depth * C ** 3


def test_context_broadcast_adds_the_token_mean():
    torch.manual_seed(0)
    attn = ManifoldAttention(16, num_heads=2, variant="vanillak", num_charts=2, context_broadcast=True)
    assert torch.equal(attn.context_broadcast.scale, torch.ones(16))  # from scratch: plain CB
    x = torch.randn(2, 5, 16)
    cb = attn.context_broadcast
    attn.context_broadcast = None
    plain = attn(x)
    attn.context_broadcast = cb
    torch.testing.assert_close(attn(x), plain + plain.mean(dim=1, keepdim=True))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("num_charts", [0, -1, 2.5, "8", True, 10 ** 6])
def test_bad_num_charts(num_charts):
    with pytest.raises(ValueError, match=r"num_charts must be an integer in \[1, 64\] for a key of width 64"):
        ManifoldKey(64, 64, num_charts=num_charts)
    with pytest.raises(ValueError, match="num_charts must be an integer"):
        mkviz.convert(small_vit(), "vanillak", num_charts=num_charts)


@pytest.mark.parametrize("variant", ["vanilla", "", None, "KUAX"])
def test_bad_variant(variant):
    with pytest.raises(ValueError, match="variant must be one of vanillak, simplek, spatialk, kua"):
        mkviz.convert(small_vit(), variant)
    if variant is not None:  # create_model(variant=None) is the plain baseline
        with pytest.raises(ValueError, match="variant must be one of"):
            mkviz.create_model("vit_tiny_patch16_224", variant=variant)


@pytest.mark.parametrize("kernel_size", [0, 2, -3, 1.0])
def test_bad_kernel_size(kernel_size):
    with pytest.raises(ValueError, match=r"kernel_size must be an odd integer >= 1"):
        mkviz.convert(small_vit(), "simplek", 2, kernel_size=kernel_size)


def test_bad_choices_and_widths():
    with pytest.raises(ValueError, match="expand_from must be one of 'key', 'input'"):
        ManifoldKey(8, 8, expand_from="value")
    with pytest.raises(ValueError, match="init must be one of 'preserve', 'scratch'"):
        mkviz.convert(small_vit(), init="random")
    key = ManifoldKey(8, 8, num_charts=2)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, tokens, 8\).*got \(2, 3, 9\)"):
        key(torch.randn(2, 3, 9))
    attn = ManifoldAttention(16, num_heads=2, num_charts=2)
    with pytest.raises(ValueError, match=r"x: expected shape \(batch, tokens, 16\)"):
        attn(torch.randn(2, 3, 12))
    with pytest.raises(ValueError, match="input_size must be"):
        mkviz.count_flops(small_vit(), (3, 32, 32))


@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = mkviz.convert(small_vit(), "vanillak", 4).eval()
    _randomise(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_chart_keys_fast_equals_reference(variant):
    """chart_keys: one matmul over the stacked operators (fast) == the grouped convolution (reference)."""
    key = ManifoldKey(24, 16, variant=variant, num_charts=3).double()
    _randomise(key)
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    fast = key.chart_keys(x)
    key.impl = "reference"
    torch.testing.assert_close(fast, key.chart_keys(x), rtol=1e-12, atol=1e-12)


def test_inference_cache_follows_parameter_changes():
    """Without autograd the fused qkv is cached; any in-place change of a parameter invalidates it."""
    torch.manual_seed(0)
    model = mkviz.convert(small_vit(qkv_bias=True), "simplek", 3).eval()
    x = torch.randn(2, 3, 32, 32)

    def reference():
        with torch.no_grad(), mkviz.key_impl(model, "reference"):
            return model(x)

    with torch.inference_mode():
        first = model(x)
    torch.testing.assert_close(first, reference(), rtol=1e-5, atol=1e-5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # a training step changes every parameter in place
    model.train()
    model(x).sum().backward()
    opt.step()
    model.eval()
    with torch.inference_mode():
        after_step = model(x)
    assert (after_step - first).abs().max() > 1e-3
    torch.testing.assert_close(after_step, reference(), rtol=1e-5, atol=1e-5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state[next(k for k in state if k.endswith("key.fusion.weight"))] *= 0.5
    model.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(), rtol=1e-5, atol=1e-5)
