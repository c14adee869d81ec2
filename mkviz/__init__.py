"""mkviz: the manifold key of arXiv 2402.00534 (a documented reconstruction) for timm models.

    convert / create_model / fold      models (mkviz.convert)
    ManifoldKey                        the key path (mkviz.key)
    ManifoldAttention, ...             drop-in attention modules (mkviz.attention)
    count_params / count_flops         cost (mkviz.cost)
    record_attention                   fused and per-chart attention, chart keys (mkviz.record)
    integrated_gradients, ...          captum attributions: pixels, patches, attention (mkviz.attribution)
    ChartExplorer, ChartCountExplorer  interactive explorers, ipywidgets + plotly (mkviz.viz)
    mkviz.figures                      plain plotly figures (overlays, chart maps, similarity, curves, tables)
    TrainConfig, load_checkpoint       training and checkpoints (mkviz.train; `mkviz train` on the command line)
"""
from .attention import ContextBroadcast, ManifoldAttention, ManifoldWindowAttention, attn_layer
from .convert import convert, create_model, fold, manifold_modules, unbalanced_atlas_loss
from .cost import count_flops, count_params
from .key import VARIANTS, ManifoldKey, key_impl
from .record import AttentionRecording, attention_layers, eager_attention, eval_mode, record_attention, select_layers
from .attribution import attention_attribution, attention_replaced, integrated_gradients, layer_integrated_gradients

from . import figures
from .viz import ChartCountExplorer, ChartExplorer  # plotly and ipywidgets are imported on first use
from .train import TrainConfig, load_checkpoint

__version__ = "0.1.0"

__all__ = [
    "VARIANTS", "ManifoldKey", "ContextBroadcast", "ManifoldAttention", "ManifoldWindowAttention", "attn_layer",
    "convert", "create_model", "fold", "manifold_modules", "unbalanced_atlas_loss",
    "count_params", "count_flops", "key_impl",
    "AttentionRecording", "record_attention", "attention_layers", "select_layers",
    "integrated_gradients", "layer_integrated_gradients", "attention_attribution", "attention_replaced",
    "eager_attention", "eval_mode",
    "figures", "ChartExplorer", "ChartCountExplorer", "TrainConfig", "load_checkpoint",
]
