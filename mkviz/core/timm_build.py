"""The models behind timm's `mkviz_<arch>` entrypoints (`mkviz.core.timm_models`): from scratch, timm's
pretrained weights converted, or a saved mkviz folder (`local-dir:` / `hf-hub:`) loaded by timm."""
from __future__ import annotations

from typing import Any, Optional

from timm.models import get_pretrained_cfg, load_pretrained
from torch import nn

from .models import create_model
from .overparam import factorise_key
from .timm_models import DEFAULTS, MANIFOLD_ARGS, PREFIX

__all__ = ["spec_from_kwargs", "build_spec", "build"]


def spec_from_kwargs(arch: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The mkviz model spec (`mkviz.training.build_model`) of `mkviz_<arch>` called with `kwargs`."""
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
    spec = spec_from_kwargs(arch, kwargs)
    saved = _is_saved(pretrained_cfg)
    cfg = _source_cfg(arch, pretrained_cfg, pretrained_cfg_overlay)
    model = build_spec(spec, pretrained=pretrained and not saved, seed=kwargs.get("seed", 0))
    cfg["architecture"] = PREFIX + arch
    model.pretrained_cfg = model.default_cfg = cfg
    if pretrained and saved:
        load_pretrained(model, cfg, num_classes=model.num_classes, in_chans=kwargs.get("in_chans", 3),
                        cache_dir=cache_dir)
    return model


def build_spec(spec: dict[str, Any], pretrained: bool = False, seed: int = 0) -> nn.Module:
    """The model a spec describes (`model`, `timm_kwargs`, `variant`, `num_charts`, ..., `key_hidden`), without
    its data config (`mkviz.training.build_model` adds it)."""
    variant = None if spec["variant"] == "baseline" else spec["variant"]
    model = create_model(spec["model"], variant=variant, num_charts=spec["num_charts"], pretrained=pretrained,
                         context_broadcast=spec["context_broadcast"], kernel_size=spec["kernel_size"],
                         expand_from=spec["expand_from"], ua_weight=spec["ua_weight"], seed=seed,
                         **spec["timm_kwargs"])
    if spec.get("key_hidden"):
        factorise_key(model, spec["key_hidden"], seed=seed)
    return model
