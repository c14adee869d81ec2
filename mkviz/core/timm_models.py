"""mkviz's architectures in timm's registry: `mkviz_<timm architecture>`, the manifold options as kwargs.

    timm.create_model("mkviz_vit_tiny_patch16_224", variant="kua", num_charts=8)             from scratch
    timm.create_model("mkviz_vit_small_patch16_224", pretrained=True, variant="vanillak")    timm's weights,
                                                                              converted function-preservingly
    timm.create_model("local-dir:data/checkpoints/fashion-mnist/kua-8", pretrained=True)   a saved mkviz model

`register()` (run when mkviz and timm are both imported: `mkviz.REGISTRARS`) registers one entrypoint per architecture of the
timm modules mkviz converts (`BASE_MODULES`); `timm.list_models("mkviz*")` lists them. Manifold options
(`MANIFOLD_ARGS`): variant ("vanillak", "simplek", "spatialk", "kua", or "baseline" with `key_hidden`),
num_charts, kernel_size, context_broadcast, expand_from, ua_weight, key_hidden, seed; every other kwarg goes
to the timm architecture. `mkviz.core.timm_build` builds the models; a saved folder (`mkviz.training.timm_hub`) records them in config.json's `model_args`.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

import timm
from timm.models import register_model
from torch import nn

__all__: list[str] = []  # timm's register_model appends every entrypoint's name

PREFIX = "mkviz_"
BASE_MODULES = ("vision_transformer", "deit", "swin_transformer", "swin_transformer_v2", "beit", "eva",
                "vision_transformer_relpos")
MANIFOLD_ARGS = ("variant", "num_charts", "kernel_size", "context_broadcast", "expand_from", "ua_weight",
                 "key_hidden", "seed")
# the module that builds the models, imported by name when an entrypoint runs: this module is imported when
# timm is (mkviz/__init__.py's REGISTRARS), possibly while an mkviz module that imports timm is half-imported,
# so it imports no other mkviz module itself
BUILDER = f"{__package__}.timm_build"
DEFAULTS = dict(variant="vanillak", num_charts=8, kernel_size=1, context_broadcast=False, expand_from="key",
                ua_weight=0.0, key_hidden=None)


def base_architecture(name: str) -> str:
    """The timm architecture under an mkviz name (`mkviz_vit_tiny_patch16_224` -> `vit_tiny_patch16_224`)."""
    if not name.startswith(PREFIX):
        raise ValueError(f"{name!r} is not an mkviz architecture (expected the prefix {PREFIX!r})")
    return name[len(PREFIX):]


def _entrypoint(arch: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return importlib.import_module(BUILDER).build(arch, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = PREFIX + arch
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"timm's {arch} with mkviz's manifold key (options: {', '.join(MANIFOLD_ARGS)})."
    return entrypoint


def register() -> list[str]:
    """Register `mkviz_<arch>` for every architecture of `BASE_MODULES` (idempotent); the names."""
    names = []
    module = sys.modules[__name__]
    for arch in timm.list_models(module=list(BASE_MODULES)):
        name = PREFIX + arch
        if not timm.is_model(name):
            setattr(module, name, register_model(_entrypoint(arch)))
        names.append(name)
    return names
