"""mkviz: the manifold key of arXiv 2402.00534 (a documented reconstruction) for timm models.

    convert / create_model / fold      models (mkviz.convert)
    ManifoldKey                        the key path (mkviz.key)
    ManifoldAttention, ...             drop-in attention modules (mkviz.attention)
    count_params / count_flops         cost (mkviz.cost)
    record_attention                   fused and per-chart attention, chart keys (mkviz.record)
    integrated_gradients, ...          captum attributions: pixels, patches, attention (mkviz.attribution)
    class_relevance, relevance_map     Chefer et al.'s class relevance per patch, per chart (mkviz.relevance)
    deletion_insertion                 faithfulness of a saliency map: deletion / insertion curves (mkviz.faithfulness)
    ChartExplorer, ChartCountExplorer  interactive explorers, ipywidgets + plotly (mkviz.explorers)
    mkviz.figures                      plain plotly figures (overlays, chart maps, similarity, curves, tables)
    TrainConfig, load_checkpoint       training and checkpoints (mkviz.train; `mkviz train` on the command line)
"""
import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it; imported on first use, so that `mkviz --help` and
# `mkviz --version` answer without loading torch and timm
_EXPORTS = {
    "ContextBroadcast": "attention", "ManifoldQKV": "attention", "ManifoldAttention": "attention",
    "ManifoldWindowAttention": "attention",
    "attn_layer": "attention",
    "convert": "convert", "create_model": "convert", "fold": "convert", "manifold_modules": "convert",
    "unbalanced_atlas_loss": "convert",
    "count_flops": "cost", "count_params": "cost",
    "VARIANTS": "key", "ManifoldKey": "key", "key_impl": "key",
    "AttentionRecording": "record", "attention_layers": "record", "eager_attention": "record",
    "eval_mode": "record", "record_attention": "record", "select_layers": "record",
    "attention_attribution": "attribution", "attention_replaced": "attribution",
    "integrated_gradients": "attribution", "layer_integrated_gradients": "attribution",
    "ChartCountExplorer": "explorers", "ChartExplorer": "explorers",
    "TrainConfig": "train", "load_checkpoint": "checkpoint",
    "class_relevance": "relevance", "relevance_map": "relevance",
    "deletion_insertion": "faithfulness",
}

__all__ = ["__version__", "figures", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name == "figures":
        value = importlib.import_module(".figures", __name__)
    else:
        raise AttributeError(f"module 'mkviz' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """`mkviz.convert` is both a function and a submodule. Importing the submodule makes Python set the
    package attribute to the module; this data descriptor keeps `mkviz.convert` the function (the module
    stays importable as `mkviz.convert` through `sys.modules`, e.g. `from mkviz.convert import fold`)."""

    @property
    def convert(self) -> Any:
        return importlib.import_module(".convert", __name__).convert

    @convert.setter
    def convert(self, value: Any) -> None:  # the import system's setattr(package, "convert", module)
        pass


sys.modules[__name__].__class__ = _Package

from . import plugins  # noqa: E402  (registers with timm and transformers once they are imported)

plugins.install()
