"""mkviz checkpoint folders in timm's Hub format, so that `timm.create_model("local-dir:PATH", pretrained=True)`
loads them: a baseline or folded model with plain timm, a manifold-key model after `import mkviz`.

A folder holds `model.safetensors` and `config.json`. config.json is timm's (`timm.models.save_for_hf`'s
config, written by the same helper):

    architecture     the timm architecture: `vit_tiny_patch16_224`, or `mkviz_vit_tiny_patch16_224` for a
                     manifold key (`mkviz.core.timm_models`)
    num_classes, num_features, global_pool, label_names
    model_args       the architecture's kwargs (img_size, patch_size, ..., and the manifold options)
    pretrained_cfg   the data config it was trained with (input_size, mean, std, crop_pct, interpolation, ...)

with mkviz's own keys beside them, which timm ignores: model_spec, class_names, train, metrics, history,
dataset, image_size, format_version (what `mkviz.training.load_checkpoint` reads, as before). Folders
written before this format (no `architecture`) still load with `load_checkpoint`; `migrate_checkpoint`
(`python -m mkviz.training.timm_hub PATH...`) adds the timm keys and changes nothing else.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from timm.data import resolve_model_data_config
from timm.models._hub import save_config_for_hf
from torch import nn

from ..core.timm_models import MANIFOLD_ARGS, PREFIX
from .build import load_checkpoint, model_input_size
from .checkpoint import CONFIG_FILE, MODEL_FILE, atomic_write_json, find_checkpoint, read_json, save_tensors

__all__ = ["HUB_KEYS", "is_hub_config", "hub_architecture", "hub_fields", "save_hub", "migrate_checkpoint",
           "main"]

HUB_KEYS = ("architecture", "num_classes", "num_features", "global_pool", "label_names", "model_args",
            "pretrained_cfg")


def is_hub_config(config: dict[str, Any]) -> bool:
    """True when a config.json already has timm's keys (`architecture` and `pretrained_cfg`)."""
    return "architecture" in config and "pretrained_cfg" in config


def _is_plain(model: nn.Module) -> bool:
    """True when `model` has no mkviz module (a baseline, or a folded model without context broadcasting)."""
    return not any(type(m).__module__.startswith("mkviz.") for m in model.modules())


def hub_architecture(model: nn.Module, spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(timm architecture, model_args) of `model` built from `spec`: the plain timm name and timm kwargs for
    a plain model, `mkviz_<name>` and the manifold options as well otherwise."""
    args = dict(spec.get("timm_kwargs") or {})
    if _is_plain(model):
        return spec["model"], args
    options = {k: spec[k] for k in MANIFOLD_ARGS if spec.get(k) is not None and k != "seed"}
    return PREFIX + spec["model"], {**args, **options}


def data_config_of(model: nn.Module) -> dict[str, Any]:
    """timm's data config of `model`, its input size the one the model was built for (a model built with another
    `img_size` than its architecture's default keeps the default in its pretrained cfg)."""
    config = resolve_model_data_config(model)
    size = model_input_size(model)
    if size is not None:
        config["input_size"] = (config["input_size"][0], size, size)
    return config


def hub_fields(model: nn.Module, spec: dict[str, Any], class_names: Optional[Sequence[str]] = None) -> dict:
    """timm's config.json keys (`HUB_KEYS`) for `model`, written by timm's own `save_config_for_hf`."""
    arch, model_args = hub_architecture(model, spec)
    model_config: dict[str, Any] = {"pretrained_cfg": {"architecture": arch}}
    if class_names:
        model_config["label_names"] = list(class_names)
    # timm's factory records the creation kwargs in `model._model_args`, which `save_config_for_hf` starts from:
    # a model folded from `mkviz_<arch>` would carry the manifold options into a plain architecture's args
    created = getattr(model, "_model_args", None)
    if created is not None and _is_plain(model):
        model._model_args = {k: v for k, v in created.items() if k not in MANIFOLD_ARGS}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            save_config_for_hf(model, str(path), model_config=model_config, model_args=model_args,
                               data_config=data_config_of(model))
            return json.loads(path.read_text())
    finally:
        if created is not None:
            model._model_args = created


def save_hub(model: nn.Module, folder: str | Path, spec: dict[str, Any],
             metadata: Optional[dict[str, Any]] = None) -> Path:
    """Write `model` (built from `spec`; folded or not) as a timm Hub folder: model.safetensors and config.json
    (timm's keys, `model_spec` and `metadata`). ValueError when `folder` exists and is not empty."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} exists and is not empty; choose a new folder (nothing is overwritten)")
    config = {**(metadata or {}), "model_spec": spec}
    config.update(hub_fields(model, spec, config.get("class_names")))
    save_tensors(folder / MODEL_FILE, model.state_dict(), {"format": "pt"})
    atomic_write_json(folder / CONFIG_FILE, config)
    return folder


def migrate_checkpoint(path: str | Path) -> bool:
    """Add timm's keys to an older checkpoint folder's config.json (nothing else changes; the weights are
    not touched). False when it has them already."""
    folder = find_checkpoint(path)
    config = read_json(folder / CONFIG_FILE)
    if is_hub_config(config):
        return False
    model, _ = load_checkpoint(folder)  # derives the data config of checkpoints saved before it was recorded
    fields = hub_fields(model, config["model_spec"], config.get("class_names"))
    atomic_write_json(folder / CONFIG_FILE, {**config, **fields})
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mkviz.training.timm_hub", description="migrate checkpoint folders to "
                                "timm's Hub format (config.json keys added; weights untouched)")
    p.add_argument("paths", nargs="+", help="checkpoint folders")
    for path in p.parse_args(argv).paths:
        print(f"{path}: {'migrated' if migrate_checkpoint(path) else 'already in the Hub format'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
