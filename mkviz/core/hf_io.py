"""Hugging Face `save_pretrained` / `from_pretrained` for manifold-key models, every variant (KUA included).

A converted `transformers` model (`mkviz.convert`) becomes an instance of a registered subclass of its class
(`MkvizViTForImageClassification` for `ViTForImageClassification`, ...) whose config (`MkvizViTConfig`, model
type "mkviz_vit") records the manifold options under `manifold_key`. `register()` (run when mkviz and
transformers are both imported: `mkviz.REGISTRARS`) registers the configs with `AutoConfig` and the models
with `AutoModel` / `AutoModelForImageClassification`, so that

    model = mkviz.convert(ViTForImageClassification(config), "kua", 8)
    model.save_pretrained(folder)
    AutoModelForImageClassification.from_pretrained(folder)   # MkvizViTForImageClassification, same outputs

`mkviz.fold` returns the plain class and config again. Loading a manifold-key folder into a plain class
(`ViTForImageClassification.from_pretrained(folder)`) logs one line naming the class to use.

transformers is optional (`pip install mkviz[hf]`): this module imports it inside the functions that need it.
"""
from __future__ import annotations

import copy
import logging
import re
from typing import Any, Optional

from torch import nn

from . import hf

__all__ = ["FAMILY_CLASSES", "MODEL_TYPE_PREFIX", "register", "manifold_class", "plain_class", "to_manifold_class",
           "to_plain_class", "attach_manifold_keys", "PlainLoadWarning", "plain_load_message"]

MODEL_TYPE_PREFIX = "mkviz_"

# family -> (config class, base model, image-classification classes) of transformers; the first
# image-classification class is the one `AutoModelForImageClassification` picks unless config.architectures
# names another
FAMILY_CLASSES = {
    "vit": ("ViTConfig", "ViTModel", ("ViTForImageClassification",)),
    "deit": ("DeiTConfig", "DeiTModel", ("DeiTForImageClassification", "DeiTForImageClassificationWithTeacher")),
    "swin": ("SwinConfig", "SwinModel", ("SwinForImageClassification",)),
    "dinov2": ("Dinov2Config", "Dinov2Model", ("Dinov2ForImageClassification",)),
}
OPTION_NAMES = ("variant", "num_charts", "kernel_size", "expand_from", "ua_weight", "context_broadcast")

_CONFIGS: dict[str, type] = {}  # family -> manifold config class
_MODELS: dict[str, type] = {}  # plain model class name -> manifold subclass
_REGISTERED: list[bool] = []


def _config_class(family: str) -> type:
    """`Mkviz<Config>`: the family's config plus `manifold_key` (the manifold options), model type mkviz_<family>."""
    if family not in _CONFIGS:
        import transformers
        from huggingface_hub.dataclasses import strict

        base = getattr(transformers, FAMILY_CLASSES[family][0])
        body = {"model_type": MODEL_TYPE_PREFIX + family, "__module__": __name__,
                "__annotations__": {"manifold_key": Optional[dict]}, "manifold_key": None}
        _CONFIGS[family] = strict(type("Mkviz" + base.__name__, (base,), body))
        globals()[_CONFIGS[family].__name__] = _CONFIGS[family]
    return _CONFIGS[family]


def attach_manifold_keys(model: nn.Module, options: dict[str, Any]) -> None:
    """Give every supported attention of `model` a from-scratch `ManifoldKey` with `options` (its weights come
    from the checkpoint); ValueError when `options` is not a dict of the manifold options."""
    if not isinstance(options, dict) or set(options) - set(OPTION_NAMES) or "variant" not in options:
        raise ValueError(f"config.manifold_key must be a dict with 'variant' and some of {OPTION_NAMES}; "
                         f"got {options!r}")
    opts = dict(dict(num_charts=8, kernel_size=1, expand_from="key", ua_weight=0.0, context_broadcast=False),
                **options)
    for path, module in model.named_modules():
        if hf.is_hf_attention(module):
            hf.convert_attention(path, module, False, 0.1, None, **opts)
    model.mkviz_config = opts


def manifold_class(plain: type) -> type:
    """The registered manifold-key subclass `Mkviz<plain>` of a transformers model class."""
    family = _family(plain)
    if plain.__name__ not in _MODELS:
        def __init__(self: nn.Module, config: Any, *args: Any, **kwargs: Any) -> None:
            plain.__init__(self, config, *args, **kwargs)
            attach_manifold_keys(self, config.manifold_key)

        body = {"__module__": __name__, "config_class": _config_class(family), "__init__": __init__,
                "plain_class": plain}
        _MODELS[plain.__name__] = type("Mkviz" + plain.__name__, (plain,), body)
        globals()[_MODELS[plain.__name__].__name__] = _MODELS[plain.__name__]
    return _MODELS[plain.__name__]


def plain_class(cls: type) -> type:
    """The transformers class a manifold-key class derives from (the class itself when plain)."""
    return getattr(cls, "plain_class", cls)


def _family(cls: type) -> str:
    for family, (_, base, heads) in FAMILY_CLASSES.items():
        if plain_class(cls).__name__ in (base, *heads):
            return family
    supported = [n for _, b, h in FAMILY_CLASSES.values() for n in (b, *h)]
    raise ValueError(f"Hugging Face save/load of manifold keys supports {supported}; not {cls.__name__}")


def to_manifold_class(model: nn.Module, options: dict[str, Any]) -> nn.Module:
    """Make a just-converted transformers model an instance of its manifold class, its config recording
    `options` (in place; the config is copied so that the unconverted model keeps its own)."""
    cls = manifold_class(type(model))
    config = copy.copy(model.config)
    config.__class__ = _config_class(_family(cls))
    config.manifold_key = {k: options[k] for k in OPTION_NAMES if k in options}
    config.architectures = [cls.__name__]
    _replace_config(model, model.config, config)
    model.__class__ = cls
    return model


def to_plain_class(model: nn.Module) -> nn.Module:
    """A folded manifold-key model back to its plain transformers class and config (in place)."""
    cls = plain_class(type(model))
    if cls is type(model):
        return model
    config = copy.copy(model.config)
    config.__class__ = cls.config_class
    vars(config).pop("manifold_key", None)
    config.architectures = [cls.__name__]
    _replace_config(model, model.config, config)
    model.__class__ = cls
    return model


def _replace_config(model: nn.Module, old: Any, new: Any) -> None:
    for module in model.modules():
        if getattr(module, "config", None) is old:
            module.config = new


class PlainLoadWarning(logging.Filter):
    """Turns transformers' model-type warning for a manifold-key folder loaded into a plain class into one line
    that names what to do (the plain class drops the key: its load report lists the key as missing)."""

    PATTERN = re.compile(r"model of type `(" + MODEL_TYPE_PREFIX + r"\w+)` to instantiate a model of type `(\w+)`")

    def filter(self, record: logging.LogRecord) -> bool:
        found = self.PATTERN.search(str(record.msg))
        if found:
            record.msg, record.args = plain_load_message(found.group(1), found.group(2)), ()
        return True


def plain_load_message(saved_type: str, plain_type: str) -> str:
    """The one line said when a manifold-key folder (`saved_type`) is loaded into a plain `plain_type` class."""
    return (f"this folder holds a manifold-key model ({saved_type}): a plain {plain_type} class drops its key and "
            f"re-initialises it; load it with AutoModelForImageClassification / AutoModel.from_pretrained after "
            f"`import mkviz`, or save a folded model (mkviz.fold) for plain transformers")


def register() -> None:
    """Register every manifold config with `AutoConfig` and model class with `AutoModel` /
    `AutoModelForImageClassification` (idempotent)."""
    if _REGISTERED:
        return
    import transformers

    for family, (config_name, base, heads) in FAMILY_CLASSES.items():
        config_cls = _config_class(family)
        transformers.AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        transformers.AutoModel.register(config_cls, manifold_class(getattr(transformers, base)), exist_ok=True)
        classes = tuple(manifold_class(getattr(transformers, h)) for h in heads)
        # several heads: a tuple, chosen by config.architectures as for transformers' own DeiT
        transformers.AutoModelForImageClassification.register(config_cls, classes if len(classes) > 1
                                                              else classes[0], exist_ok=True)
    logging.getLogger(transformers.configuration_utils.__name__).addFilter(PlainLoadWarning())
    _REGISTERED.append(True)
