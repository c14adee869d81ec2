"""The benchmark suite's core on a tiny model: JSON schema, positive finite ratios, the efficiency formula;
and the fast key path under bf16 autocast and in every evaluation order."""
from __future__ import annotations

import json
import math

import pytest
import torch

import mkviz
from mkviz.apps import bench, bench_suite
from mkviz.apps.bench_profile import format_profile, profile_steps
from mkviz.core.key import ManifoldKey

from conftest import assert_fast_matches_reference, small_vit

TINY = dict(patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5)


@pytest.fixture(scope="module")
def records():
    pairs = [("vanillak", 1), ("vanillak", 2), ("simplek", 2), ("spatialk", 2), ("kua", 2)]
    return bench.run_suite("vit_tiny_patch16_224", img_size=32, batch_size=2, repeats=1, pairs=pairs,
                           latency_img_size=32, model_kwargs=TINY, log=lambda s: None)


@pytest.mark.slow
def test_suite_records_schema(records, tmp_path):
    assert [(r["variant"], r["num_charts"]) for r in records] == \
        [("vanillak", 1), ("vanillak", 2), ("simplek", 2), ("spatialk", 2), ("kua", 2)]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(records))
    loaded = json.loads(path.read_text())
    assert isinstance(loaded, list)
    for r in loaded:
        assert set(bench.RECORD_FIELDS) <= set(r), set(bench.RECORD_FIELDS) - set(r)
        assert r["model"] == "vit_tiny_patch16_224" and r["device"] == "cpu"
        assert r["optimizer"] == "AdamW (fused)"  # every model, baseline included, trains with fused AdamW
        assert isinstance(r["params"], int) and isinstance(r["flops"], int)
        ratios = ["params_ratio", "flops_ratio", "train_throughput_ratio", "infer_throughput_ratio",
                  "peak_memory_ratio", "efficiency"]
        if r["variant"] == "kua":
            assert r["folded_infer_throughput_ratio"] is None
        else:
            ratios.append("folded_infer_throughput_ratio")
        for name in ratios:
            assert isinstance(r[name], float) and math.isfinite(r[name]) and r[name] > 0, (name, r[name])
        assert r["params_ratio"] > 1 and r["flops_ratio"] > 1
        # efficiency = train throughput ratio / (baseline FLOPs / variant FLOPs)
        assert r["efficiency"] == pytest.approx(r["train_throughput_ratio"] / (r["baseline_flops"] / r["flops"]))
        assert r["flops_ratio"] == pytest.approx(r["flops"] / r["baseline_flops"])
        assert r["params_ratio"] == pytest.approx(r["params"] / r["baseline_params"])
        if r["variant"] == "vanillak":
            assert r["reforward_ms"] > 0 and r["reforward_ms"] == pytest.approx(
                r["reforward_convert_ms"] + r["reforward_forward_ms"])
        else:
            assert r["reforward_ms"] is None


@pytest.mark.slow
def test_suite_tables(records, tmp_path):
    text = bench.format_suite(records)
    assert "efficiency" in text and "Re-forward" in text and "kua" in text
    md = bench.format_markdown(records)
    assert md.count("\n|") >= len(records) + 4 and "Python" in md
    path = tmp_path / "b.json"
    path.write_text(json.dumps(records))
    assert bench.main(["table", str(path)]) == 0


def test_quick_grid_covers_the_required_records():
    pairs = bench_suite.suite_pairs(mkviz.VARIANTS, bench.DEFAULT_CHARTS, quick=True, explicit=False)
    assert {(v, 8) for v in mkviz.VARIANTS} <= set(pairs)
    assert {("vanillak", h) for h in (1, 2, 4, 8, 16)} <= set(pairs)
    assert len(pairs) == 8
    full = bench_suite.suite_pairs(["VanillaK", "kua"], [2, 8], quick=False, explicit=True)
    assert full == [("vanillak", 2), ("vanillak", 8), ("kua", 2), ("kua", 8)]


def test_training_step_optimiser_is_adamw_with_the_same_updates():
    """The suite's optimiser is AdamW's fused kernel where the device has one; it makes AdamW's updates."""
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = bench_suite.fused_adamw(a), torch.optim.AdamW(b.parameters(), lr=1e-6)
    assert opt_a.defaults["fused"] is True
    x = torch.randn(16, 8)
    for m, opt in ((a, opt_a), (b, opt_b)):
        for _ in range(3):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-7)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dtype must be"):
        bench.run_suite(dtype="float16")
    with pytest.raises(ValueError, match="variant must be one of"):
        bench.run_suite(pairs=[("nope", 2)], repeats=1)


@pytest.mark.parametrize("variant", mkviz.VARIANTS)
def test_bf16_autocast_forward_is_close_to_fp32(variant):
    torch.manual_seed(0)
    model = mkviz.convert(small_vit(), variant, 4).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # move off the function-preserving init
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
    # and training under autocast gives finite gradients for the key path
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().square().mean()
    loss.backward()
    grads = [m.key.scale.grad for _, m in mkviz.manifold_modules(model)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("variant", mkviz.VARIANTS)
@pytest.mark.parametrize("tokens", [3, 40])  # few tokens: token-space order; many: parameter-space order
def test_fast_key_orders_match_reference(variant, tokens):
    """The fast path picks its evaluation order by cost; every order gives the reference's outputs and grads."""
    key = ManifoldKey(24, 24, variant=variant, num_charts=5).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in key.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    assert_fast_matches_reference(key, torch.randn(2, tokens, 24, dtype=torch.float64, requires_grad=True))


def test_explorer_latency_measures_a_slider_move():
    from mkviz.apps.bench import explorer_latency

    ms = explorer_latency("vit_tiny_patch16_224", img_size=32, num_charts=2, moves=3)
    assert set(ms) == {"first_forward_ms", "slider_move_ms"}
    # a slider move redraws from the cache: cheaper than the recorded forward that built the explorer
    assert ms["slider_move_ms"] < ms["first_forward_ms"]


def test_compile_blocks_and_fold():
    """The suite folds models whose blocks are compiled (`fold` deep-copies them): the folded copy, compiled
    again or not, computes its own function, not the original's."""
    torch.manual_seed(0)
    model = mkviz.convert(small_vit(depth=2), "vanillak", 2).eval()
    x = torch.randn(2, 3, 32, 32)
    bench_suite.compile_blocks(model, backend="eager")
    with torch.no_grad():
        before = model(x)
        stale = mkviz.fold(model)                                     # blocks copied with the compiled code
        fresh = bench_suite.compile_blocks(mkviz.fold(model), backend="eager")
        expected = fresh(x)
        assert (expected - before).abs().max().item() < 1e-5        # folding keeps the function
        for p in model.blocks.parameters():
            p.zero_()                                                 # change the original only
        assert (fresh(x) - expected).abs().max().item() == 0.0        # the fresh copy runs its own blocks
        assert (stale(x) - expected).abs().max().item() == 0.0        # so does the copy of compiled blocks
        assert (model(x) - expected).abs().max().item() > 1e-3       # while the original changed


def test_compile_scope_errors():
    with pytest.raises(ValueError, match="compile must be False, True or one of"):
        bench.run_suite("vit_tiny_patch16_224", img_size=32, batch_size=2, repeats=1, pairs=[("vanillak", 2)],
                        compile="everything", latency_img_size=None, model_kwargs=TINY, log=lambda s: None)
    with pytest.raises(ValueError, match="compile scope 'blocks' needs a model with a `blocks` list"):
        bench_suite.compile_blocks(torch.nn.Linear(2, 2))


def test_profile_counts_each_models_step():
    """`mkviz bench profile`: one record per model, the baseline first; the variants run more operators per step
    (the parameter-space key path); the baseline's extra time over itself is 0."""
    records = profile_steps("vit_tiny_patch16_224", ["vanillak", "kua"], num_charts=2, img_size=32, batch_size=2,
                            steps=1, warmup=1, model_kwargs=TINY)
    assert [r["variant"] for r in records] == ["baseline", "vanillak", "kua"]
    assert all(r["step_ms"] > 0 and r["ops_per_step"] > 0 and r["kernels_per_step"] is None for r in records)
    assert records[1]["ops_per_step"] > records[0]["ops_per_step"] < records[2]["ops_per_step"]
    assert "| baseline |" in format_profile(records) and "| 0.0 |" in format_profile(records)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        profile_steps(steps=0)
