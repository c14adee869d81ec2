"""Known-answer tests for mkviz.metrics."""
from __future__ import annotations

import math

import pytest
import torch

from mkviz.explain.metrics import (
    attention_entropy,
    attention_on_evidence,
    attention_rollout,
    chart_cka,
    chart_cosine_similarity,
    chart_js_divergence,
    chart_similarity,
    mean_attention_distance,
    patch_coverage,
)


def _softmax_rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).softmax(dim=-1)


# --------------------------------------------------------------------------- chart similarity
def test_identical_charts_cosine_js_cka():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 1, 10, 6, generator=g).expand(2, 3, 10, 6).contiguous()  # 3 identical charts
    a = torch.randn(2, 1, 2, 10, 10, generator=g).softmax(-1).expand(2, 3, 2, 10, 10).contiguous()
    ones = torch.ones(3, 3)
    torch.testing.assert_close(chart_cosine_similarity(k), ones, atol=1e-5, rtol=0)
    torch.testing.assert_close(chart_cka(k), ones, atol=1e-5, rtol=0)
    torch.testing.assert_close(chart_js_divergence(a), torch.zeros(3, 3), atol=1e-6, rtol=0)


def test_cosine_known_values_and_reduce():
    # chart 0: e1 for every token, chart 1: e2 (orthogonal), chart 2: -e1 (opposite)
    k = torch.zeros(1, 3, 5, 4)
    k[:, 0, :, 0] = 1.0
    k[:, 1, :, 1] = 2.0
    k[:, 2, :, 0] = -3.0
    s = chart_cosine_similarity(k)
    expected = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    torch.testing.assert_close(s, expected)
    assert chart_cosine_similarity(k.expand(4, -1, -1, -1), reduce="none").shape == (4, 3, 3)


def test_cosine_is_mean_of_per_token_cosines():
    k = torch.randn(2, 2, 7, 5, dtype=torch.float64)
    per_tok = torch.nn.functional.cosine_similarity(k[:, 0], k[:, 1], dim=-1)  # (B, N)
    s = chart_cosine_similarity(k, reduce="none")
    torch.testing.assert_close(s[:, 0, 1], per_tok.mean(-1))


def test_js_disjoint_one_hot_is_one_base2():
    N = 6
    a = torch.zeros(1, 2, 1, N, N)
    a[0, 0, 0, :, 0] = 1.0  # chart 0 attends to key 0
    a[0, 1, 0, :, 3] = 1.0  # chart 1 attends to key 3 (disjoint)
    js = chart_js_divergence(a)
    torch.testing.assert_close(js, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    js_nats = chart_js_divergence(a, base=math.e)
    assert js_nats[0, 1].item() == pytest.approx(math.log(2), abs=1e-6)
    assert torch.isfinite(js).all()


def test_js_matches_manual_formula():
    a = _softmax_rand(2, 3, 2, 5, 5, seed=1)
    p, q = a[:, 0], a[:, 2]
    m = 0.5 * (p + q)
    manual = 0.5 * (p * (p / m).log2()).sum(-1) + 0.5 * (q * (q / m).log2()).sum(-1)
    js = chart_js_divergence(a, reduce="none")
    assert js.shape == (2, 2, 5, 3, 3)
    torch.testing.assert_close(js[..., 0, 2], manual)
    torch.testing.assert_close(chart_js_divergence(a)[0, 2], manual.mean())
    full = chart_js_divergence(a)
    torch.testing.assert_close(full, full.T)
    assert (full >= 0).all() and (full <= 1).all()


def test_js_half_overlap():
    # P = (1/2, 1/2, 0), Q = (0, 1/2, 1/2): M = (1/4, 1/2, 1/4) -> JS = 1/2 bit
    a = torch.zeros(1, 2, 1, 3, 3)
    a[0, 0, 0, :] = torch.tensor([0.5, 0.5, 0.0])
    a[0, 1, 0, :] = torch.tensor([0.0, 0.5, 0.5])
    assert chart_js_divergence(a)[0, 1].item() == pytest.approx(0.5, abs=1e-6)


def test_cka_invariances():
    g = torch.Generator().manual_seed(0)
    B, N, C = 3, 64, 8
    x = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(C, C, generator=g, dtype=torch.float64))
    y_orth_scaled = 3.7 * x @ q + 5.0  # orthogonal transform, isotropic scale, translation
    z = torch.randn(B, N, C, generator=g, dtype=torch.float64)  # independent
    keys = torch.stack([x, y_orth_scaled, z], dim=1)  # (B, 3, N, C)
    cka = chart_cka(keys)
    assert cka[0, 1].item() == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(cka.diagonal(), torch.ones(3, dtype=torch.float64))
    assert cka[0, 2].item() < 0.35  # independent random features: far from 1
    torch.testing.assert_close(cka, cka.T)
    # cosine is *not* invariant to the orthogonal transform
    assert chart_cosine_similarity(keys)[0, 1].item() < 0.9


def test_cka_matches_feature_space_formula():
    g = torch.Generator().manual_seed(3)
    keys = torch.randn(2, 2, 9, 4, generator=g, dtype=torch.float64)
    keys[:, 1] = keys[:, 1] + 0.5 * keys[:, 0]
    out = chart_cka(keys, reduce="none")
    for b in range(2):
        x = keys[b, 0] - keys[b, 0].mean(0)
        y = keys[b, 1] - keys[b, 1].mean(0)
        ref = (y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm())
        assert out[b, 0, 1].item() == pytest.approx(ref.item(), abs=1e-10)


def test_chart_similarity_dispatch_and_errors():
    k = torch.randn(1, 2, 4, 3)
    a = _softmax_rand(1, 2, 1, 4, 4).float()
    torch.testing.assert_close(chart_similarity(chart_keys=k, kind="cosine"), chart_cosine_similarity(k))
    torch.testing.assert_close(chart_similarity(chart_keys=k, kind="cka"), chart_cka(k))
    torch.testing.assert_close(chart_similarity(chart_attn=a, kind="js"), chart_js_divergence(a))
    with pytest.raises(ValueError, match=r"kind.*cosine.*js.*cka"):
        chart_similarity(chart_keys=k, kind="euclid")
    with pytest.raises(ValueError, match="chart_attn"):
        chart_similarity(chart_keys=k, kind="js")
    with pytest.raises(ValueError, match="chart_keys"):
        chart_similarity(chart_attn=a, kind="cka")


@pytest.mark.parametrize(
    "fn,arg,name",
    [
        (chart_cosine_similarity, torch.zeros(2, 3, 4), "chart_keys"),
        (chart_cka, torch.zeros(2, 3, 4), "chart_keys"),
        (chart_js_divergence, torch.zeros(1, 2, 3, 4, 5), "chart_attn"),
        (chart_js_divergence, torch.zeros(2, 3, 4, 4), "chart_attn"),
    ],
)
def test_shape_validation(fn, arg, name):
    with pytest.raises(ValueError, match=name):
        fn(arg)


# --------------------------------------------------------------------------- entropy
def test_entropy_one_hot_and_uniform():
    n = 7
    one_hot = torch.zeros(n)
    one_hot[3] = 1.0
    assert attention_entropy(one_hot).item() == pytest.approx(0.0, abs=1e-7)
    uniform = torch.full((n,), 1.0 / n)
    assert attention_entropy(uniform).item() == pytest.approx(math.log(n), abs=1e-6)


def test_entropy_shapes_and_reductions():
    a = torch.full((2, 3, 5, 5), 0.2)
    assert attention_entropy(a).shape == (2, 3, 5)
    assert attention_entropy(a, reduce="query").shape == (2, 3)
    assert attention_entropy(a, reduce="mean").item() == pytest.approx(math.log(5), abs=1e-6)
    # distribution along another dim
    assert attention_entropy(a.transpose(-1, -2), dim=-2).shape == (2, 3, 5)
    with pytest.raises(ValueError, match="reduce"):
        attention_entropy(a, reduce="sum")


# --------------------------------------------------------------------------- mean attention distance
def _grid_attn(gh, gw, prefix=0):
    n = prefix + gh * gw
    return torch.zeros(n, n, dtype=torch.float64)


def test_mean_distance_corner_to_corner():
    a = _grid_attn(4, 4)
    a[0, 15] = 1.0  # query patch (0, 0) -> key patch (3, 3)
    d = mean_attention_distance(a, 4, reduce="none")
    assert d[0].item() == pytest.approx(math.sqrt(18), abs=1e-12)
    # in pixels with 16-px patches
    d_px = mean_attention_distance(a, (4, 4), patch_size=16, reduce="none")
    assert d_px[0].item() == pytest.approx(16 * math.sqrt(18), abs=1e-9)


def test_mean_distance_uniform_from_corner():
    a = _grid_attn(4, 4)
    a[0, :] = 1.0 / 16
    # sum over i, j in 0..3 of sqrt(i^2 + j^2), done by hand:
    # 12 (axis terms: 2*(1+2+3)) + 6*sqrt2 (sqrt2 + sqrt8 + sqrt18) + 2(sqrt5 + sqrt10 + sqrt13)
    expected = (12 + 6 * math.sqrt(2) + 2 * math.sqrt(5) + 2 * math.sqrt(10) + 2 * math.sqrt(13)) / 16
    d = mean_attention_distance(a, 4, reduce="none")
    assert d[0].item() == pytest.approx(expected, abs=1e-12)


def test_mean_distance_prefix_tokens_ignored():
    gh = gw = 4
    prefix = 2
    a = _grid_attn(gh, gw, prefix)
    a[:, prefix + 15] = 0.25  # every token (incl. prefix queries) puts 0.25 on patch (3, 3)
    a[:, 0] = 0.75  # ... and 0.75 on the cls token
    a[0, :] = 0.0
    a[0, prefix + 0] = 1.0  # cls query row would be distance-heavy if counted; it is excluded
    d = mean_attention_distance(a, 4, num_prefix_tokens=prefix, reduce="none")
    assert d.shape == (16,)
    pos = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1).reshape(16, 2)
    expected = (pos - pos[15]).norm(dim=-1).double()
    torch.testing.assert_close(d, expected)  # renormalised: cls mass ignored
    d_raw = mean_attention_distance(a, 4, num_prefix_tokens=prefix, renormalize=False, reduce="none")
    torch.testing.assert_close(d_raw, 0.25 * expected)
    assert mean_attention_distance(a, 4, num_prefix_tokens=prefix).item() == pytest.approx(expected.mean().item())


def test_mean_distance_leading_dims_and_nonsquare():
    gh, gw = 2, 3
    a = torch.zeros(2, 3, 4, 6, 6)  # (B, H, heads, N, N) chart attention
    a[..., :, 5] = 1.0  # everyone attends to patch (1, 2)
    d = mean_attention_distance(a, (gh, gw))
    assert d.shape == (2, 3, 4)
    pos = torch.tensor([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]], dtype=torch.float32)
    torch.testing.assert_close(d, torch.full((2, 3, 4), (pos - pos[5]).norm(dim=-1).mean().item()))
    with pytest.raises(ValueError, match="attn"):
        mean_attention_distance(a, (3, 3))


# --------------------------------------------------------------------------- rollout
def test_rollout_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    r = attention_rollout([eye, eye, eye])
    torch.testing.assert_close(r, torch.eye(5).expand(2, 5, 5))
    torch.testing.assert_close(attention_rollout([eye], add_residual=False), torch.eye(5).expand(2, 5, 5))


def test_rollout_uniform():
    n = 4
    u = torch.full((1, 2, n, n), 1.0 / n, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    U = torch.full((n, n), 1.0 / n, dtype=torch.float64)
    torch.testing.assert_close(attention_rollout([u])[0], 0.5 * eye + 0.5 * U)
    # two layers: (0.5 I + 0.5 U)^2 = 0.25 I + 0.75 U   (U^2 = U)
    torch.testing.assert_close(attention_rollout([u, u])[0], 0.25 * eye + 0.75 * U)
    torch.testing.assert_close(attention_rollout([u, u], add_residual=False)[0], U)


def test_rollout_order_and_fusion():
    g = torch.Generator().manual_seed(0)
    a1 = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64).softmax(-1)
    a2 = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64).softmax(-1)
    eye = torch.eye(5, dtype=torch.float64)

    def step(a):
        a = 0.5 * a.mean(1) + 0.5 * eye
        return a / a.sum(-1, keepdim=True)

    r = attention_rollout([a1, a2])
    torch.testing.assert_close(r, step(a2) @ step(a1))  # last layer on the left
    torch.testing.assert_close(r.sum(-1), torch.ones(2, 5, dtype=torch.float64))
    torch.testing.assert_close(attention_rollout(torch.stack([a1, a2])), r)  # stacked input
    mx = attention_rollout([a1], head_fusion="max", add_residual=False)
    torch.testing.assert_close(mx, a1.amax(1) / a1.amax(1).sum(-1, keepdim=True))


def test_rollout_discard_and_errors():
    a = torch.tensor([[[0.1, 0.2, 0.3, 0.4]] * 4])  # (1, 4, 4), head-fused
    r = attention_rollout([a], add_residual=False, discard_ratio=0.5)
    # per row the 2 smallest entries are dropped, but the diagonal is never dropped
    assert (r > 0).sum(-1).tolist() == [[2, 2, 2, 2]]
    torch.testing.assert_close(r.sum(-1), torch.ones(1, 4))
    assert r[0, 0, 0] > 0  # diagonal entry 0.1 (smallest) survives
    with pytest.raises(ValueError, match="attns"):
        attention_rollout([torch.ones(1, 2, 3, 3), torch.ones(1, 2, 4, 4)])
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([a], head_fusion="sum")
    with pytest.raises(ValueError, match="discard_ratio"):
        attention_rollout([a], discard_ratio=1.0)


# --------------------------------------------------------------------------- evidence
def test_evidence_all_inside_and_uniform_quarter():
    gh = gw = 4
    mask = torch.zeros(32, 32, dtype=torch.bool)  # 8-px patches
    mask[:16, :16] = True  # covers patches (0,0),(0,1),(1,0),(1,1)
    row = torch.zeros(1 + 16)
    row[1 + 0] = 0.6
    row[1 + 5] = 0.4  # patch (1, 1)
    assert attention_on_evidence(row, mask, (gh, gw), num_prefix_tokens=1).item() == pytest.approx(1.0)
    uniform = torch.full((16,), 1 / 16)
    assert attention_on_evidence(uniform, mask, 4).item() == pytest.approx(0.25)


def test_evidence_prefix_excluded():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:16, :16] = True
    row = torch.zeros(1 + 16)
    row[0] = 0.5  # cls
    row[1:] = 0.5 / 16
    assert attention_on_evidence(row, mask, 4, num_prefix_tokens=1).item() == pytest.approx(0.25)
    assert attention_on_evidence(row, mask, 4, num_prefix_tokens=1, renormalize=False).item() == pytest.approx(0.125)


def test_patch_coverage_pixel_conversion():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[0:8, 0:4] = True  # half of patch (0, 0)
    mask[8:16, 8:16] = True  # all of patch (1, 1)
    mask[31, 31] = True  # one pixel of patch (3, 3)
    cov = patch_coverage(mask, 4).view(4, 4)
    assert cov[0, 0].item() == pytest.approx(0.5)
    assert cov[1, 1].item() == pytest.approx(1.0)
    assert cov[3, 3].item() == pytest.approx(1 / 64)
    assert cov.sum().item() == pytest.approx(0.5 + 1 + 1 / 64)
    any_ = patch_coverage(mask, 4, weighting="any").view(4, 4)
    maj = patch_coverage(mask, 4, weighting="majority").view(4, 4)
    assert any_[0, 0] == 1 and any_[3, 3] == 1 and any_.sum() == 3
    assert maj[0, 0] == 0 and maj[1, 1] == 1 and maj.sum() == 1  # exactly half is not a majority
    # non-square grid (2, 4) on a 16 x 32 image: patch (1, 3) is pixels [8:16, 24:32]
    m2 = torch.zeros(16, 32, dtype=torch.bool)
    m2[8:16, 24:32] = True
    cov2 = patch_coverage(m2, (2, 4))
    assert cov2.argmax().item() == 1 * 4 + 3 and cov2.sum().item() == pytest.approx(1.0)


def test_evidence_fraction_weighting_and_batched_mask():
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[0, 0:8, 0:4] = True  # image 0: half of patch (0, 0)
    mask[1, 0:8, 0:8] = True  # image 1: all of patch (0, 0)
    rows = torch.zeros(2, 3, 16)  # (B, heads, N) with all mass on patch (0, 0)
    rows[..., 0] = 1.0
    out = attention_on_evidence(rows, mask, 4)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, torch.tensor([[0.5] * 3, [1.0] * 3]))
    out_any = attention_on_evidence(rows, mask, 4, weighting="any")
    torch.testing.assert_close(out_any, torch.ones(2, 3))
    # full attention matrix: one value per query
    full = torch.full((2, 3, 16, 16), 1 / 16)
    res = attention_on_evidence(full, mask, 4)
    assert res.shape == (2, 3, 16) and ((res >= 0) & (res <= 1)).all()
    torch.testing.assert_close(res[0], torch.full((3, 16), 0.5 / 16))
    with pytest.raises(ValueError, match="attn_rows"):
        attention_on_evidence(torch.zeros(3, 16), mask, 4)  # batch 3 vs mask batch 2
    with pytest.raises(ValueError, match="attn_rows"):
        attention_on_evidence(torch.zeros(17), mask[0], 4)  # N mismatch without prefix
    with pytest.raises(ValueError, match="mask"):
        attention_on_evidence(torch.zeros(16), torch.zeros(1, 1, 32, 32), 4)


def test_js_divergence_is_finite_for_denormal_weights():
    """A float32 softmax can give weights ~1e-45 whose half underflows; JS must stay finite and in [0, 1]."""
    from mkviz.explain.metrics import chart_js_divergence

    tiny = torch.finfo(torch.float32).smallest_normal / 2 ** 23  # the smallest float32 denormal, 2^-149
    a = torch.tensor([1.0 - tiny, tiny, 0.0])
    b = torch.tensor([1.0, 0.0, 0.0])
    chart_attn = torch.stack([a.expand(3, 3), b.expand(3, 3)]).view(1, 2, 1, 3, 3)  # (B, H, heads, N, N)
    js = chart_js_divergence(chart_attn)
    assert torch.isfinite(js).all() and js.min() >= 0 and js.max() < 1e-30
