"""mkviz: the manifold key of arXiv 2402.00534 (a documented reconstruction) for timm models.

    convert / create_model / fold      models (mkviz.convert)
    ManifoldKey                        the key path (mkviz.key)
    ManifoldAttention, ...             drop-in attention modules (mkviz.attention)
    count_params / count_flops         cost (mkviz.cost)
"""
from .attention import ContextBroadcast, ManifoldAttention, ManifoldWindowAttention, attn_layer
from .convert import convert, create_model, fold, manifold_modules, unbalanced_atlas_loss
from .cost import count_flops, count_params, key_impl
from .key import VARIANTS, ManifoldKey

__version__ = "0.1.0"

__all__ = [
    "VARIANTS", "ManifoldKey", "ContextBroadcast", "ManifoldAttention", "ManifoldWindowAttention", "attn_layer",
    "convert", "create_model", "fold", "manifold_modules", "unbalanced_atlas_loss",
    "count_params", "count_flops", "key_impl",
]
