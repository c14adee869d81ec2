"""mkviz's architectures in timm's registry: `mkviz_<timm architecture>`, the manifold options as kwargs.

    timm.create_model("mkviz_vit_tiny_patch16_224", variant="kua", num_charts=8)             from scratch
    timm.create_model("mkviz_vit_small_patch16_224", pretrained=True, variant="vanillak")    timm's weights,
                                                                              converted function-preservingly
    timm.create_model("local-dir:data/checkpoints/fashion-mnist/kua-8", pretrained=True)   a saved mkviz model

`register()` (run when mkviz and timm are both imported) registers one entrypoint per architecture of the
timm modules mkviz converts (`BASE_MODULES`); `timm.list_models("mkviz*")` lists them. Manifold options
(`MANIFOLD_ARGS`): variant ("vanillak", "simplek", "spatialk", "kua", or "baseline" with `key_hidden`),
num_charts, kernel_size, context_broadcast, expand_from, ua_weight, key_hidden, seed; every other kwarg goes
to the timm architecture. A saved folder (`mkviz.timm_hub`) records them in config.json's `model_args`.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import timm
from timm.models import get_pretrained_cfg, load_pretrained, register_model
from torch import nn

__all__: list[str] = []  # timm's register_model appends every entrypoint's name

PREFIX = "mkviz_"
BASE_MODULES = ("vision_transformer", "deit", "swin_transformer", "swin_transformer_v2", "beit", "eva",
                "vision_transformer_relpos")
MANIFOLD_ARGS = ("variant", "num_charts", "kernel_size", "context_broadcast", "expand_from", "ua_weight",
                 "key_hidden", "seed")
DEFAULTS = dict(variant="vanillak", num_charts=8, kernel_size=1, context_broadcast=False, expand_from="key",
                ua_weight=0.0, key_hidden=None)


def base_architecture(name: str) -> str:
    """The timm architecture under an mkviz name (`mkviz_vit_tiny_patch16_224` -> `vit_tiny_patch16_224`)."""
    if not name.startswith(PREFIX):
        raise ValueError(f"{name!r} is not an mkviz architecture (expected the prefix {PREFIX!r})")
    return name[len(PREFIX):]


def spec_from_kwargs(arch: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The mkviz model spec (`mkviz.checkpoint.build_model`) of `mkviz_<arch>` called with `kwargs`."""
    options = {**DEFAULTS, **{k: kwargs[k] for k in MANIFOLD_ARGS if k in kwargs and k != "seed"}}
    timm_kwargs = {k: v for k, v in kwargs.items() if k not in MANIFOLD_ARGS}
    return {"model": arch, **options, "timm_kwargs": timm_kwargs}


def _source_cfg(arch: str, pretrained_cfg: Any, overlay: Optional[dict]) -> dict[str, Any]:
    """The pretrained cfg of `mkviz_<arch>`: timm's for `arch`, then the given cfg (a saved folder's), the overlay."""
    if isinstance(pretrained_cfg, str):  # a tag of the base architecture
        pretrained_cfg = get_pretrained_cfg(f"{arch}.{pretrained_cfg}")
    cfg: dict[str, Any] = {}
    for part in (get_pretrained_cfg(arch), pretrained_cfg):
        if part is not None:
            cfg.update(part if isinstance(part, dict) else part.to_dict())
    cfg.update(overlay or {})
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}  # as timm's own cfgs


def _is_saved(pretrained_cfg: Any) -> bool:
    """True when timm passes the cfg of a saved model (a `local-dir:` / `hf-hub:` folder, a file, a state dict)."""
    cfg = pretrained_cfg if isinstance(pretrained_cfg, dict) else getattr(pretrained_cfg, "__dict__", {})
    return cfg.get("source") in ("local-dir", "hf-hub") or bool(cfg.get("file") or cfg.get("state_dict"))


def build(arch: str, pretrained: bool = False, pretrained_cfg: Any = None,
          pretrained_cfg_overlay: Optional[dict] = None, cache_dir: Any = None, **kwargs: Any) -> nn.Module:
    """`mkviz_<arch>`: a saved mkviz model (pretrained, with a saved folder's cfg), else timm's `arch` converted
    (pretrained: timm's weights, function-preserving; else the from-scratch key)."""
    from .checkpoint import build_model

    spec = spec_from_kwargs(arch, kwargs)
    saved = _is_saved(pretrained_cfg)
    cfg = _source_cfg(arch, pretrained_cfg, pretrained_cfg_overlay)
    model = build_model(spec, pretrained=pretrained and not saved, seed=kwargs.get("seed", 0))
    cfg["architecture"] = PREFIX + arch
    model.pretrained_cfg = model.default_cfg = cfg
    if pretrained and saved:
        load_pretrained(model, cfg, num_classes=model.num_classes, in_chans=kwargs.get("in_chans", 3),
                        cache_dir=cache_dir)
    return model


def _entrypoint(arch: str) -> Callable[..., nn.Module]:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return build(arch, pretrained=pretrained, **kwargs)

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
