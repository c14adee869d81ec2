"""mkviz.record: recorded fused / per-chart attention, chart keys, memberships; restore on exit."""
from __future__ import annotations

import pytest
import timm
import torch
from timm.utils import AttentionExtract

import mkviz
from mkviz.explain.record import attention_layers, record_attention, select_layers
from conftest import small_swin, small_vit


def _images(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g)


def _fused_state(model):
    return [(getattr(m, "recorder", None), m.fused_attn) for n, m in model.named_modules() if n in
            attention_layers(model)]


@pytest.fixture(scope="module")
def vit_vanilla():
    torch.manual_seed(0)
    return mkviz.convert(small_vit().eval(), "vanillak", num_charts=4, seed=1)


@pytest.fixture(scope="module")
def swin_vanilla():
    torch.manual_seed(0)
    return mkviz.convert(small_swin().eval(), "vanillak", num_charts=3, seed=1)


def _chart_logits_geomean(chart_attn):
    """Normalised geometric mean over charts: softmax(mean_c log A_c)."""
    return chart_attn.double().clamp_min(1e-300).log().mean(1).softmax(-1)


def test_vit_recording_shapes_stochastic_and_geometric_mean(vit_vanilla):
    m, x = vit_vanilla, _images()
    with torch.no_grad():
        ref = m(x)
        with record_attention(m) as rec:
            out = m(x)
    assert (out - ref).abs().max().item() <= 1e-5
    assert rec.layers == ["blocks.0.attn", "blocks.1.attn"]
    B, heads, N, H = 2, 4, 17, 4
    for name in rec.layers:
        a, ca = rec.attention[name], rec.chart_attention[name]
        assert a.shape == (B, heads, N, N) and ca.shape == (B, H, heads, N, N)
        assert rec.chart_keys[name].shape == (B, H, N, 64)
        assert rec.queries[name].shape == (B, heads, N, 16)
        assert not a.requires_grad
        torch.testing.assert_close(a.sum(-1), torch.ones(B, heads, N), atol=1e-5, rtol=0)
        torch.testing.assert_close(ca.sum(-1), torch.ones(B, H, heads, N), atol=1e-5, rtol=0)
        # VanillaK: fused attention = normalised geometric mean of the charts' maps
        err = (_chart_logits_geomean(ca) - a.double()).abs().max().item()
        assert err <= 1e-5, err
        # the charts differ (zero-sum perturbation), so this is not trivially one map repeated
        assert (ca[:, 0] - ca[:, 1]).abs().max().item() > 1e-4
    assert rec.membership == {}  # VanillaK has no membership
    assert rec.num_forwards == 1


def test_recorded_maps_equal_manual_recomputation(vit_vanilla):
    m, x = vit_vanilla, _images(seed=3)
    name = "blocks.1.attn"
    mod = m.get_submodule(name)
    with torch.no_grad(), record_attention(m, layers=[name]) as rec:
        m(x)
    q, keys = rec.queries[name], rec.chart_keys[name]
    # chart keys equal the key module's reference computation on the block input (norm1 of the residual stream)
    with torch.no_grad():
        tokens = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        tokens = m.blocks[0](tokens)
        torch.testing.assert_close(keys, mod.key.chart_keys(m.blocks[1].norm1(tokens)), atol=1e-5, rtol=1e-5)
    B, H, N, C = keys.shape
    kc = keys.reshape(B, H, N, 4, 16).transpose(2, 3)  # (B, H, heads, N, d)
    manual = torch.softmax(q.unsqueeze(1) @ kc.transpose(-2, -1) * mod.scale, dim=-1)
    torch.testing.assert_close(rec.chart_attention[name], manual, atol=1e-6, rtol=1e-5)
    # fused = softmax(q Kᵀ scale) with K the fused key = mean of charts
    k = keys.mean(1).reshape(B, N, 4, 16).transpose(1, 2)
    torch.testing.assert_close(rec.attention[name], torch.softmax(q @ k.transpose(-2, -1) * mod.scale, -1),
                               atol=1e-6, rtol=1e-5)


def test_swin_vanillak_geometric_mean_with_relative_position_bias(swin_vanilla):
    m, x = swin_vanilla, _images(seed=1)
    with torch.no_grad():
        ref = m(x)
        with record_attention(m, keep_bias=True) as rec:
            out = m(x)
    assert (out - ref).abs().max().item() <= 1e-5
    assert len(rec.layers) == 4
    shifted = 0
    for name in rec.layers:
        a, ca, bias = rec.attention[name], rec.chart_attention[name], rec.attn_bias[name]
        geo = rec.layout[name]
        nw = (geo["resolution"][0] // 4) * (geo["resolution"][1] // 4)
        heads = a.shape[1]
        assert a.shape == (2 * nw, heads, 16, 16) and ca.shape == (2 * nw, 3, heads, 16, 16)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)
        torch.testing.assert_close(ca.sum(-1), torch.ones(ca.shape[:-1]), atol=1e-5, rtol=0)
        assert (_chart_logits_geomean(ca) - a.double()).abs().max().item() <= 1e-5
        # recompute from q, K_c and the (relative position + shift mask) bias
        mod = m.get_submodule(name)
        q, keys = rec.queries[name], rec.chart_keys[name]
        kc = keys.reshape(*keys.shape[:3], heads, -1).transpose(2, 3)
        manual = torch.softmax(q.unsqueeze(1) @ kc.transpose(-2, -1) * mod.scale + bias.unsqueeze(1), -1)
        torch.testing.assert_close(ca, manual, atol=1e-6, rtol=1e-5)
        shifted += geo["shift_size"] != (0, 0)
        # a bias that is not constant per row would break the identity if it were applied unevenly
        assert bias.std().item() > 0
    assert shifted == 2  # the shifted-window blocks (with their -100 mask) are covered
    img = rec.image_map(rec.layers[1], query=(5, 6), image_size=32, chart=2, head=0)
    assert img.shape == (32, 32) and abs(img.sum().item() / 4 - 1) < 1e-4  # 2x2 px per token, mass 1


def test_kua_membership_and_chart_metrics():
    torch.manual_seed(0)
    m = mkviz.convert(small_vit().eval(), "kua", num_charts=3, seed=2)
    for _, mod in mkviz.manifold_modules(m):  # non-uniform memberships
        torch.nn.init.normal_(mod.key.membership.weight, std=0.5)
    with torch.no_grad(), record_attention(m, layers=0) as rec:
        m(_images())
    p = rec.membership["blocks.0.attn"]
    assert p.shape == (2, 17, 3)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 17))
    assert p.std().item() > 1e-3
    sim = rec.chart_similarity("blocks.0.attn")
    assert sim.shape == (3, 3) and torch.allclose(sim.diagonal(), torch.ones(3), atol=1e-5)
    assert sim.min().item() < 1 - 1e-4
    js = rec.chart_similarity("blocks.0.attn", kind="js")
    assert js.shape == (3, 3) and js.max().item() > 0
    ent = rec.entropy("blocks.0.attn")
    assert 0 < ent.item() <= torch.log(torch.tensor(17.0)).item() + 1e-5
    assert rec.rollout().shape == (2, 17, 17)


def test_restores_fused_path_also_after_exception(vit_vanilla):
    m = vit_vanilla
    before = _fused_state(m)
    assert all(r is None for r, _ in before)
    with pytest.raises(RuntimeError, match="boom"):
        with record_attention(m) as rec:
            assert all(r is not None for r, _ in _fused_state(m))
            raise RuntimeError("boom")
    assert _fused_state(m) == before
    assert rec.attention == {}


def test_plain_timm_restores_fused_attn_after_exception():
    m = small_vit().eval()
    for blk in m.blocks:
        blk.attn.fused_attn = True
    with pytest.raises(AssertionError, match="Input height"):
        with record_attention(m):
            assert not any(b.attn.fused_attn for b in m.blocks)
            m(torch.randn(1, 3, 31, 32))  # wrong size
    assert all(b.attn.fused_attn for b in m.blocks)
    assert all(not b.attn.attn_drop._forward_pre_hooks for b in m.blocks)
    assert all(not b.attn.q_norm._forward_hooks for b in m.blocks)
    assert not m._forward_pre_hooks


def test_layer_selection_options_and_keep_last(vit_vanilla):
    m = vit_vanilla
    assert select_layers(m, [-1]) == ["blocks.1.attn"]
    assert select_layers(m, "blocks.*") == ["blocks.0.attn", "blocks.1.attn"]
    assert select_layers(m, ["blocks.1.attn", 1]) == ["blocks.1.attn"]
    with pytest.raises(ValueError, match="available.*blocks.0.attn"):
        record_attention(m, layers=["blocks.7.attn"])
    with pytest.raises(ValueError, match="out of range"):
        record_attention(m, layers=5)
    x1, x2 = _images(seed=1), _images(b=3, seed=2)
    with torch.no_grad(), record_attention(m, layers=["blocks.1.attn"], charts=False, dtype=torch.float16,
                                           to_cpu=True) as rec:
        m(x1)
        m(x2)  # keep-last
        assert rec.num_forwards == 2
        a = rec.attention["blocks.1.attn"]
        assert a.shape == (3, 4, 17, 17) and a.dtype == torch.float16
        assert set(rec.attention) == {"blocks.1.attn"} and rec.chart_attention == {} and rec.chart_keys == {}
        rec.clear()
        assert rec.attention == {} and rec.num_forwards == 0
    with pytest.raises(ValueError, match="chart"):
        rec.image_map("blocks.1.attn", (0, 0), chart=0)


def test_detach_false_keeps_graph(vit_vanilla):
    m = vit_vanilla
    with record_attention(m, layers=-1, detach=False) as rec:
        out = m(_images())
    a = rec.chart_attention["blocks.1.attn"]
    assert a.requires_grad
    (g,) = torch.autograd.grad(a[:, 0, :, 0, 1].sum(), m.blocks[1].attn.key.scale)
    assert g.abs().sum().item() > 0
    del out


@pytest.mark.parametrize("kind", ["vit", "swin", "deit"])
def test_plain_timm_baselines(kind):
    torch.manual_seed(0)
    if kind == "vit":
        m = small_vit()
    elif kind == "swin":
        m = small_swin()
    else:
        m = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=64, depth=2, num_heads=4, num_classes=5)
    m.eval()
    for mod in m.modules():
        if hasattr(mod, "fused_attn"):
            mod.fused_attn = True
    x = _images()
    with torch.no_grad():
        ref = m(x)
        with record_attention(m) as rec:
            out = m(x)
    assert (out - ref).abs().max().item() <= 1e-5
    assert rec.chart_attention == {} and rec.chart_keys == {}
    assert set(rec.attention) == set(rec.layers) == set(rec.queries)
    for name in rec.layers:
        a = rec.attention[name]
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), atol=1e-5, rtol=0)
    if kind == "swin":
        assert set(rec.layout) == set(rec.layers)
        assert rec.image_map(rec.layers[1], (3, 3)).shape == (16, 16)
    else:
        n = 18 if kind == "deit" else 17  # DeiT distilled: cls + dist token
        a = rec.attention["blocks.0.attn"]
        assert a.shape == (2, 4, n, n)
        mod = m.blocks[0].attn
        with torch.no_grad():
            tokens = m.blocks[0].norm1(m.norm_pre(m._pos_embed(m.patch_embed(x))))
            q = mod.qkv(tokens).reshape(2, n, 3, 4, 16).permute(2, 0, 3, 1, 4)[0]
        torch.testing.assert_close(rec.queries["blocks.0.attn"], q, atol=1e-5, rtol=1e-5)
        img = rec.image_map("blocks.0.attn", query=(1, 2), image_size=32)
        assert img.shape == (32, 32)
        grid = rec.image_map("blocks.0.attn", query=0)  # cls token's attention over the 4x4 patches
        assert grid.shape == (4, 4)
        torch.testing.assert_close(grid.sum(), 1 - a[0, :, 0, : n - 16].sum(-1).mean(), atol=1e-5, rtol=1e-5)
    assert all(mod.fused_attn for mod in m.modules() if hasattr(mod, "fused_attn"))


def test_converted_deit_distilled_records_charts():
    torch.manual_seed(0)
    base = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             embed_dim=64, depth=2, num_heads=4, num_classes=5).eval()
    m = mkviz.convert(base, "spatialk", num_charts=2)
    with torch.no_grad(), record_attention(m, layers="blocks.1.attn") as rec:
        m(_images())
    assert rec.attention["blocks.1.attn"].shape == (2, 4, 18, 18)
    assert rec.chart_attention["blocks.1.attn"].shape == (2, 2, 4, 18, 18)
    with torch.no_grad():
        x = torch.randn(2, 18, 64)
        mod = m.blocks[1].attn
        torch.testing.assert_close(mkviz.record.chart_keys_of(mod, x), mod.key.chart_keys(x), atol=1e-5, rtol=1e-5)


def test_timm_attention_extract_on_converted_model():
    torch.manual_seed(0)
    m = mkviz.convert(small_vit().eval(), "simplek", num_charts=2)
    for _, mod in mkviz.manifold_modules(m):
        mod.fused_attn = False  # eager mode: attn_drop sees the attention
    extract = AttentionExtract(m, method="hook")  # default names '*attn_drop'
    x = _images()
    with torch.no_grad():
        maps = extract(x)
    assert set(maps) == {"blocks.0.attn.attn_drop", "blocks.1.attn.attn_drop"}
    for name, a in maps.items():
        assert a.shape == (2, 4, 17, 17) and a.abs().sum().item() > 0
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 17), atol=1e-5, rtol=0)
    with torch.no_grad(), record_attention(m) as rec:
        m(x)
    torch.testing.assert_close(maps["blocks.1.attn.attn_drop"], rec.attention["blocks.1.attn"], atol=1e-6, rtol=0)


def test_bench_record_runs(capsys):
    from mkviz.apps.bench_record import main
    assert main(["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "1", "--repeats", "1",
                 "--num-charts", "2"]) == 0
    out = capsys.readouterr().out
    for mode in ("fused_only", "charts", "lazy_one_query"):
        assert f"overhead {mode} / plain" in out
    assert main(["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "1", "--memory",
                 "--num-charts", "2"]) == 0
    out = capsys.readouterr().out
    assert "| full: fused + chart maps (computed) |" in out and "| lazy: x, q, k (measured) |" in out


@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_fast_and_reference_key_paths_record_the_same_maps(variant):
    """Chart keys from the fast key path (one matmul for all charts) and from the reference path (the grouped
    convolution as written) give the same recorded keys and maps, Swin bias + shift mask included."""
    from mkviz.core.key import key_impl
    torch.manual_seed(0)
    m = mkviz.convert(small_swin().eval(), variant, num_charts=3, seed=1)
    x = _images(seed=2)
    with torch.no_grad(), record_attention(m) as fast:
        m(x)
    with torch.no_grad(), key_impl(m, "reference"), record_attention(m) as ref:
        m(x)
    assert fast.chart_attention.keys() == ref.chart_attention.keys() and len(fast.chart_attention) > 0
    for name in fast.chart_attention:
        torch.testing.assert_close(fast.chart_keys[name], ref.chart_keys[name], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast.chart_attention[name], ref.chart_attention[name], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(fast.chart_attention[name].sum(-1),
                                   torch.ones_like(fast.chart_attention[name][..., 0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_reused_key_buffer_gives_the_maps_of_a_fresh_copy(variant):
    """Without autograd, recording lays every layer's chart keys out in ONE buffer it reuses; with autograd
    (detach=False) each layer gets its own copy. Same keys and maps in every layer, and the recorded
    queries are their own tensors, not views pinning the layer's whole qkv output."""
    torch.manual_seed(0)
    m = mkviz.convert(small_vit().eval(), variant, num_charts=4, seed=1)
    x = _images(b=3, seed=4)
    with torch.no_grad(), record_attention(m) as rec:
        m(x)
    with record_attention(m, detach=False) as graph:
        m(x)
    assert rec._keys_buffer is None  # dropped on exit
    for name in rec.layers:
        assert graph.chart_attention[name].requires_grad
        torch.testing.assert_close(rec.chart_keys[name], graph.chart_keys[name].detach(), atol=0, rtol=0)
        torch.testing.assert_close(rec.chart_attention[name], graph.chart_attention[name].detach(),
                                   atol=1e-7, rtol=1e-6)
        q = rec.queries[name]
        assert q.shape == (3, 4, 17, 16) and q.untyped_storage().nbytes() == q.numel() * q.element_size()


def test_recording_is_freed_without_the_garbage_collector(vit_vanilla):
    """A recording holds no reference cycle: dropping the last reference frees its maps at once (with
    only the cyclic collector to free them, repeated recordings would pile up gigabytes)."""
    import gc
    import weakref
    m, x = vit_vanilla, _images(b=8)
    gc.disable()
    try:
        with torch.no_grad(), record_attention(m) as rec:
            m(x)
        maps = weakref.ref(rec.chart_attention["blocks.0.attn"])
        assert rec.chart_keys["blocks.0.attn"].shape == (8, 4, 17, 64)
        gone = weakref.ref(rec)
        del rec
        assert gone() is None and maps() is None
    finally:
        gc.enable()


def test_recording_under_bf16_autocast_and_with_a_dtype(vit_vanilla):
    """Under CPU bf16 autocast the chart path (keys, their reused buffer, logits, in-place softmax) runs in
    bf16; with dtype=float16 the chart keys and maps are cast like every other recorded tensor."""
    m, x = vit_vanilla, _images(b=8, seed=5)
    name = "blocks.1.attn"
    with torch.no_grad(), record_attention(m) as ref:
        m(x)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), record_attention(m) as rec:
        m(x)
    ca = rec.chart_attention[name]
    assert ca.dtype == torch.bfloat16 and rec.chart_keys[name].dtype == torch.bfloat16
    torch.testing.assert_close(ca.float().sum(-1), torch.ones(ca.shape[:-1]), atol=2e-2, rtol=0)
    assert (ca.float() - ref.chart_attention[name]).abs().max().item() < 5e-2
    with torch.no_grad(), record_attention(m, dtype=torch.float16) as half:
        m(x)
    assert half.chart_attention[name].dtype == torch.float16 and half.chart_keys[name].dtype == torch.float16
    torch.testing.assert_close(half.chart_keys[name].float(), ref.chart_keys[name], atol=2e-3, rtol=2e-3)


# --------------------------------------------------------------------------- lazy recordings
def _lazy_vs_full(model, x, queries_list):
    with torch.no_grad():
        ref = model(x)
        with record_attention(model) as full:
            model(x)
        with record_attention(model, lazy=True) as lazy:
            out = model(x)
    assert (out - ref).abs().max().item() <= 1e-6  # the lazy recording leaves the model's forward as it was
    assert not lazy.attention and not lazy.chart_attention  # no N x N map kept
    for name in full.layers:
        for queries in queries_list:
            torch.testing.assert_close(lazy.attention_rows(name, queries), full.attention[name][:, :, queries],
                                       rtol=1e-5, atol=1e-6)
            for c in range(full.chart_attention[name].shape[1]) if name in full.chart_attention else ():
                torch.testing.assert_close(lazy.attention_rows(name, queries, chart=c),
                                           full.chart_attention[name][:, c][:, :, queries], rtol=1e-5, atol=1e-6)
        if name in full.chart_keys:
            torch.testing.assert_close(lazy.chart_keys_for(name), full.chart_keys[name], rtol=1e-5, atol=1e-6)
    return full, lazy


@pytest.mark.parametrize("variant, options", [("vanillak", {}), ("kua", {}), ("simplek", {"kernel_size": 3}),
                                              ("spatialk", {"expand_from": "input"})])
def test_lazy_rows_equal_the_full_recording_vit(variant, options):
    torch.manual_seed(0)
    model = mkviz.convert(small_vit().eval(), variant, num_charts=3, seed=1, **options).eval()
    # one query (the W_c^T q path), a few, and every query (the chart-key path)
    full, lazy = _lazy_vs_full(model, _images(), [[0], [3, 16, 5], list(range(17))])
    name = full.layers[-1]
    for chart in (None, 1):
        torch.testing.assert_close(lazy.image_map(name, (1, 2), chart=chart), full.image_map(name, (1, 2), chart=chart))
    torch.testing.assert_close(lazy.entropy(name, chart=2), full.entropy(name, chart=2))
    torch.testing.assert_close(lazy.chart_similarity(name, "js"), full.chart_similarity(name, "js"), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(lazy.rollout(), full.rollout(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"queries: expected token indices in \[0, 17\)"):
        lazy.attention_rows(name, [17])
    with pytest.raises(ValueError, match=r"chart: expected an int in \[0, 3\)"):
        lazy.attention_rows(name, [0], chart=3)


def test_lazy_rows_equal_the_full_recording_swin_and_plain_models():
    torch.manual_seed(0)
    swin = mkviz.convert(small_swin().eval(), "vanillak", num_charts=2, seed=1).eval()
    full, lazy = _lazy_vs_full(swin, _images(), [[0], [7, 2], list(range(16))])
    for name in full.layers:  # shifted windows and the relative position bias included
        torch.testing.assert_close(lazy.image_map(name, (3, 5), chart=1), full.image_map(name, (3, 5), chart=1))
    plain = small_vit(qk_norm=True).eval()  # plain timm Attention: q and k from q_norm and k_norm
    full, lazy = _lazy_vs_full(plain, _images(), [[0], list(range(17))])
    assert lazy.inputs and not lazy.attention
    with pytest.raises(ValueError, match="no chart attention"):
        lazy.attention_rows(full.layers[0], [0], chart=0)
    qk = mkviz.convert(small_vit(qk_norm=True).eval(), "vanillak", num_charts=2, seed=1).eval()  # k_norm on charts
    _lazy_vs_full(qk, _images(), [[1], list(range(17))])


def test_chart_maps_stack_every_charts_image_map():
    torch.manual_seed(0)
    model = mkviz.convert(small_vit(), "vanillak", 4).eval()  # 32 px, 4 x 4 patches
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), record_attention(model) as rec:
        model(x)
    maps = rec.chart_maps("blocks.1.attn", (1, 2), head=0, batch_index=1)
    assert maps.shape == (4, 4, 4)
    for c in range(4):
        torch.testing.assert_close(maps[c], rec.image_map("blocks.1.attn", (1, 2), chart=c, head=0, batch_index=1))
    # each chart's row of query (1, 2) is a distribution over the 16 patches and the class token
    cls_share = rec.chart_attention["blocks.1.attn"][1, :, 0, 1 + 4 + 2, 0]  # (H,) attention on the class token
    torch.testing.assert_close(maps.sum((1, 2)) + cls_share, torch.ones(4))
