"""torch.fx, the meta device and dtype changes on converted models of every family x variant.

Each family x variant runs with one option set by default (rotated so that every family and every variant meets
every option set: charts 1 and 8, kernel size 1 and 3, context broadcasting, expand_from="input"); the other
option sets are marked slow. torch.jit.script stays refused (README's support table).
"""
from __future__ import annotations

import pytest
import timm
import torch
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import mkviz

from small_models import SMALL, randomized, small_family

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILY_NAMES = list(SMALL)  # vit, swin, beit, eva, rope, swinv2, relpos
OPTIONS = [dict(num_charts=1), dict(num_charts=8, kernel_size=3), dict(num_charts=3, context_broadcast=True),
           dict(num_charts=3, expand_from="input")]


def cases(every_option: bool = True) -> list:
    """(family, variant, options) for every family x variant x option set, all but one option set slow; or
    (every_option=False) only the rotated, default one."""
    out = []
    for fi, family in enumerate(FAMILY_NAMES):
        for vi, variant in enumerate(mkviz.VARIANTS):
            for oi, options in enumerate(OPTIONS):
                if oi != (fi + vi) % len(OPTIONS) and not every_option:
                    continue
                marks = () if oi == (fi + vi) % len(OPTIONS) else (pytest.mark.slow,)
                label = f"{family}-{variant}-" + "-".join(f"{k}={v}" for k, v in options.items())
                out.append(pytest.param(family, variant, options, marks=marks, id=label))
    return out


def converted(family: str, variant: str, options: dict) -> torch.nn.Module:
    """A small model of `family`, weights redrawn (outputs of order 1), converted; eval mode."""
    torch.manual_seed(0)
    return randomized(mkviz.convert(small_family(family), variant, **options)).eval()


def linear_functional(out: torch.Tensor) -> torch.Tensor:
    """A generic scalar of the output (every entry weighted differently) to backpropagate."""
    return (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()


@pytest.mark.parametrize("family, variant, options", cases())
def test_symbolic_trace_equals_eager_outputs_and_gradients(family, variant, options):
    model = converted(family, variant, options)
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    results = []
    for module in (model, graph):
        xi = x.clone().requires_grad_(True)
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        out = module(xi)
        grads = torch.autograd.grad(linear_functional(out), [xi] + [p for _, p in named])
        results.append((out.detach(), grads[0], dict(zip([n for n, _ in named], grads[1:]))))
    (eager, eager_dx, eager_grads), (traced, traced_dx, traced_grads) = results
    assert eager.shape == (2, 5) and eager.std() > 0.1
    assert (traced - eager).abs().max().item() <= 1e-6
    torch.testing.assert_close(traced_dx, eager_dx, atol=1e-6, rtol=1e-5)
    assert set(traced_grads) == set(eager_grads), "the graph must use every parameter of the model"
    for name, grad in eager_grads.items():
        torch.testing.assert_close(traced_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def first_attention_output(model: torch.nn.Module) -> str:
    """The graph node name of the first manifold attention's output projection, e.g. 'blocks.0.attn.proj'."""
    path, _ = next(mkviz.manifold_modules(model))
    return f"{path}.proj"


@pytest.mark.parametrize("family, variant, options", cases(every_option=False))  # it traces twice: the rotation
def test_torchvision_feature_extraction(family, variant, options):
    model = converted(family, variant, options)
    train_nodes, eval_nodes = get_graph_node_names(model)
    node = first_attention_output(model)
    assert node in eval_nodes and node in train_nodes
    extractor = create_feature_extractor(model, return_nodes={node: "attn", eval_nodes[-1]: "out"})
    captured = {}
    handle = model.get_submodule(node).register_forward_hook(lambda m, a, out: captured.setdefault("attn", out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features, out = extractor(x), model(x)
    handle.remove()
    assert (features["out"] - out).abs().max().item() <= 1e-6
    assert features["attn"].shape == captured["attn"].shape
    assert (features["attn"] - captured["attn"]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_timm_fx_feature_extraction(family):
    """timm's FX feature wrapper (what `create_model(..., features_only=True, feature_cls='fx')` builds) on a
    converted model: its last feature equals the hooked output of that module in eager mode."""
    variant = mkviz.VARIANTS[FAMILY_NAMES.index(family) % len(mkviz.VARIANTS)]
    model = converted(family, variant, dict(num_charts=3))
    last = len(model.feature_info) - 1
    features = timm.models.FeatureGraphNet(model, out_indices=(last,))
    module = model.get_submodule(model.feature_info[last]["module"])
    captured = {}
    handle = module.register_forward_hook(lambda m, a, out: captured.setdefault("out", out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = features(x)
        model(x)
    handle.remove()
    assert len(got) == 1 and got[0].shape == captured["out"].shape
    assert (got[0] - captured["out"]).abs().max().item() <= 1e-6


@pytest.mark.parametrize("family, variant, options", cases())
def test_meta_device_build_and_forward(family, variant, options):
    with torch.device("meta"):
        model = mkviz.convert(small_family(family), variant, **options).eval()
    assert all(p.is_meta for p in model.parameters())
    out = model(torch.randn(2, 3, 32, 32, device="meta"))
    assert out.is_meta and out.shape == (2, 5)
    with torch.no_grad():  # the inference cache is not used on meta (no storage to stamp)
        assert model(torch.randn(1, 3, 32, 32, device="meta")).shape == (1, 5)


@pytest.mark.parametrize("family, variant, options", cases())
def test_dtype_change_after_forward_leaves_no_stale_cache(family, variant, options):
    model = converted(family, variant, options)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)  # fills the fused-qkv cache of foldable keys
        model.to(torch.float64)
        high = model(x.double())
        model.to(torch.float32)  # float32 -> float64 -> float32 keeps every weight exactly
        again = model(x)
        model.to(torch.bfloat16)
        low = model(x.bfloat16())
    assert high.dtype == torch.float64 and again.dtype == torch.float32 and low.dtype == torch.bfloat16
    scale = ref.abs().max().item()
    assert (high.float() - ref).abs().max().item() <= 1e-4 * scale
    assert (again - ref).abs().max().item() <= 1e-6
    assert (low.float() - ref).abs().max().item() <= 0.1 * scale


def test_traced_graph_keeps_the_input_check():
    """The input check is an FX leaf: the graph calls it, so a traced attention refuses a wrong width with the
    eager message (and tracing never branches on the input's shape)."""
    model = converted("vit", "vanillak", dict(num_charts=3))
    path, attn = next(mkviz.manifold_modules(model))
    graph = torch.fx.symbolic_trace(attn)
    assert any(getattr(n.target, "__name__", "") == "check_tokens" for n in graph.graph.nodes)
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(graph(x), attn(x), atol=1e-6, rtol=0)
    for module in (attn, graph):
        with pytest.raises(ValueError, match=r"expected shape \(batch, tokens, 64\) for an attention .* got \(2, 5, 65\)"):
            module(torch.randn(2, 5, 65))


def test_tracing_kua_in_training_leaves_no_proxy_behind():
    """KUA's unbalanced-atlas term is a side output of an eager training forward; a traced graph does not carry
    it, and tracing leaves no proxy in the key (the eager forward still sets it)."""
    torch.manual_seed(0)
    model = randomized(mkviz.convert(small_family("vit"), "kua", 3, ua_weight=0.5)).train()
    torch.fx.symbolic_trace(model)
    keys = [m for m in model.modules() if isinstance(m, mkviz.ManifoldKey)]
    assert keys and all(k.ua_loss is None for k in keys)
    model(torch.randn(2, 3, 32, 32))
    loss = mkviz.unbalanced_atlas_loss(model)
    assert isinstance(loss, torch.Tensor) and loss.item() < 0


def test_torch_jit_script_is_refused_in_one_line():
    model = mkviz.convert(small_family("vit"), "vanillak", 3)
    with pytest.raises(RuntimeError, match=r"^torch\.jit\.script: .*TorchScript is deprecated in torch 2\.14"):
        torch.jit.script(model)
    key = mkviz.ManifoldKey(16, 16, num_charts=2)
    with pytest.raises(RuntimeError, match="not scriptable"):
        torch.jit.script(key)
