"""Models from a spec or a checkpoint folder: `build_model(spec)` and `load_checkpoint(path)` (the model a
checkpoint describes, with the timm data config it was trained with, and its weights loaded).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch
from timm.data import resolve_data_config
from torch import nn

from ..data.registry import data_config
from .checkpoint import CheckpointError, CONFIG_FILE, MODEL_FILE, find_checkpoint, load_tensors, read_json
from .tasks import TASKS

__all__ = [
    "load_checkpoint", "build_model", "apply_data_config", "describe_spec", "state_dict_mismatch",
    "model_input_size", "derive_data_config",
]


# ----------------------------------------------------------------------------- models from checkpoints
def build_model(spec: dict[str, Any], pretrained: bool = False, seed: int = 0) -> nn.Module:
    """The model a spec describes (`model`, `timm_kwargs`, `variant`, `num_charts`, ...; `task`, default
    classification: `mkviz.training.tasks.TASKS`)."""
    try:
        model = TASKS[spec.get("task", "classification")].build(spec, pretrained, seed)
    except TypeError as err:  # a timm kwarg this model does not take
        raise ValueError(f"model {spec['model']!r} does not accept these arguments {spec['timm_kwargs']}: {err}") \
            from None
    if spec.get("data_config"):
        apply_data_config(model, spec["data_config"])
    return model

def apply_data_config(model: nn.Module, cfg: dict[str, Any]) -> None:
    """Record the preprocessing `model` was trained with in its `pretrained_cfg`, so that
    `timm.data.resolve_model_data_config(model)` and `timm.data.create_transform(**cfg)` reproduce it."""
    pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    pretrained_cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    model.pretrained_cfg = pretrained_cfg

def derive_data_config(model: nn.Module, dataset: str, image_size: Optional[int]) -> dict[str, Any]:
    """The data config of `model` trained by mkviz on `dataset` at `image_size` (None: the model's own input
    size), applied to the model (`apply_data_config`) and returned."""
    size = image_size or model_input_size(model) or 224
    cfg = data_config(dataset, size, resolve_data_config({}, model=model))
    apply_data_config(model, cfg)
    return cfg

def describe_spec(spec: dict[str, Any]) -> str:
    v = spec["variant"]
    if spec.get("key_hidden"):
        return f"baseline with a factorised key of hidden width {spec['key_hidden']}"
    return v if v == "baseline" else f"{v} with {spec['num_charts']} charts"

def load_checkpoint(path: str | os.PathLike, model: Optional[nn.Module] = None,
                    map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(model, config) from a checkpoint directory, a run directory or a model.safetensors file.

    Rebuilds the model from the saved spec (timm name, timm kwargs, variant, num_charts, ...) unless
    `model` is given, in which case the weights are loaded into it (CheckpointError on mismatch).
    Uses safetensors and json only. The model is returned in eval mode.
    """
    directory = find_checkpoint(path)
    tensors, meta = load_tensors(directory / MODEL_FILE)
    cfg_path = directory / CONFIG_FILE
    if cfg_path.is_file():
        config = read_json(cfg_path)
    elif "mkviz_config" in meta:
        config = json.loads(meta["mkviz_config"])
    else:
        raise CheckpointError(f"checkpoint {directory} has no {CONFIG_FILE} and no mkviz metadata")
    spec = config.get("model_spec")
    if not isinstance(spec, dict):
        raise CheckpointError(f"corrupt checkpoint {cfg_path}: no model_spec")
    if model is None:
        model = build_model(spec)
    if not spec.get("data_config") and "dataset" in config:  # saved before data configs were recorded
        derive_data_config(model, config["dataset"], config.get("image_size"))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {directory} ({describe_spec(spec)}, model {spec['model']}) does not "
                              f"fit the given model: {state_dict_mismatch(err)}"[:400]) from None
    return model.to(map_location).eval(), config

def state_dict_mismatch(err: Exception) -> str:
    """The telling line of a load_state_dict error (its second line names the first mismatch)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
    return lines[1] if len(lines) > 1 else lines[0]

def model_input_size(model: nn.Module) -> Optional[int]:
    """The square input size a timm ViT was built for (`patch_embed.img_size`, also of a segmentation model's
    `backbone`), else None."""
    owner = model if hasattr(model, "patch_embed") else getattr(model, "backbone", None)
    size = getattr(getattr(owner, "patch_embed", None), "img_size", None)
    return int(size[0]) if isinstance(size, (tuple, list)) else None
