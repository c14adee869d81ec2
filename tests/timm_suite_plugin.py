"""A pytest plugin that runs timm's own tests/test_models.py, unchanged, on converted models.

Loaded with `-p timm_suite_plugin` (tests/ on PYTHONPATH) by tests/test_timm_suite.py. Every model that timm
builds (`build_model_with_cfg`, the one place all timm entrypoints construct a model) is passed through
`mkviz.convert` before timm wraps it for features, so FX feature extraction (`feature_cls='fx'`) sees the
converted model. Environment:

    MKVIZ_TIMM_CONVERT   JSON {timm model name: mkviz.convert's options}, e.g. {"test_vit": {"variant": "kua",
                         "num_charts": 3}}; a model given {} (or null) stays plain (the baseline)
    MKVIZ_TIMM_MODELS    comma-separated timm model names to keep (default: those of MKVIZ_TIMM_CONVERT);
                         every other test item is deselected
    MKVIZ_TIMM_TESTS     comma-separated test function names to keep (default: TESTS)

Expected refusals (`REFUSALS`) are marked xfail(strict=True) with their reason: one that starts to pass fails
the run, so the list stays exact.
"""
from __future__ import annotations

import fnmatch
import json
import os
import sys
from typing import Callable

import pytest

# the tests of test_models.py that take a `model_name` and need no download (pretrained=False throughout)
TESTS = ("test_model_forward", "test_model_backward", "test_model_default_cfgs", "test_model_default_cfgs_non_std",
         "test_model_forward_torchscript", "test_model_forward_features", "test_model_forward_intermediates_features",
         "test_model_forward_intermediates", "test_model_forward_fx", "test_model_backward_fx",
         "test_model_forward_fx_torchscript")

JIT_REASON = ("torch.jit.script is refused: TorchScript is deprecated in the pinned torch (2.14) and cannot "
              "compile mkviz's modules; use torch.export / torch.compile, or mkviz.fold for a plain timm model")
POOL_REASON = ("attention pooling with learned latent queries (global_pool='map') is a pooling head, not "
               "self-attention over the tokens: mkviz.convert refuses it")

# (test function pattern, model pattern) -> reason; applies to converted runs only, first match wins. Scripting
# the torch.fx graph of a converted model works (test_model_forward_fx_torchscript passes): only the modules
# themselves are refused.
REFUSALS: dict[tuple[str, str], str] = {
    ("test_model_*", "test_vit3"): POOL_REASON,
    ("test_model_forward_torchscript", "*"): JIT_REASON,
}


def convert_options() -> dict[str, dict]:
    """{model name: mkviz.convert's options} from MKVIZ_TIMM_CONVERT ({} when unset or empty)."""
    text = os.environ.get("MKVIZ_TIMM_CONVERT", "").strip()
    return {name: opts or {} for name, opts in json.loads(text).items()} if text else {}


def converting(build: Callable, options: dict[str, dict]) -> Callable:
    """timm's build_model_with_cfg with its model class wrapped so that a model named in `options` is converted
    when built (timm passes the model name as `variant`)."""
    import mkviz

    def build_converted(model_cls, variant: str, *args, **kwargs):
        opts = options.get(variant.split(".")[0])
        if not opts:
            return build(model_cls, variant, *args, **kwargs)

        def make(*a, **kw):
            return mkviz.convert(model_cls(*a, **kw), inplace=True, **opts)
        return build(make, variant, *args, **kwargs)

    return build_converted


def install(options: dict[str, dict]) -> int:
    """Patch every imported timm.models module's `build_model_with_cfg`; returns how many were patched."""
    import timm.models  # noqa: F401  (imports every model module)
    from timm.models import _builder

    original = _builder.build_model_with_cfg
    patched = converting(original, options)
    count = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("timm.models") and getattr(module, "build_model_with_cfg", None) is original:
            module.build_model_with_cfg = patched
            count += 1
    return count


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "timeout(seconds): pytest-timeout's mark, used by timm's tests")
    options = convert_options()
    if options:
        install(options)


def model_of(name: str) -> str:
    """A model name without its pretrained tag: 'swin_tiny_patch4_window7_224.ms_in1k' -> 'swin_tiny_...224'."""
    return name.split(".")[0]


def refusal(test: str, model: str) -> str | None:
    """The reason an item is expected to fail on a converted model, or None."""
    for (test_pat, model_pat), reason in REFUSALS.items():
        if fnmatch.fnmatch(test, test_pat) and fnmatch.fnmatch(model, model_pat):
            return reason
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    options = convert_options()
    models = {m for m in os.environ.get("MKVIZ_TIMM_MODELS", "").split(",") if m} or set(options)
    tests = {t for t in os.environ.get("MKVIZ_TIMM_TESTS", "").split(",") if t} or set(TESTS)
    keep, drop, seen = [], [], set()
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = getattr(item, "originalname", item.name)
        model = model_of(params.get("model_name", ""))
        if name in tests and model in models and (name, model) not in seen:  # one pretrained tag per model
            seen.add((name, model))
            keep.append(item)
        else:
            drop.append(item)
    for item in keep:
        model = model_of(item.callspec.params["model_name"])
        reason = refusal(item.originalname, model) if options.get(model) else None
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep
