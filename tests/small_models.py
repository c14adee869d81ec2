"""Small timm models of every family mkviz converts, with random weights (nothing is downloaded)."""
from __future__ import annotations

import math

import timm
import torch

from conftest import small_swin, small_vit

# family -> (timm model name, keyword arguments that make it small: 32-px images, 2 blocks or 2 stages)
SMALL = {
    "vit": None,
    "swin": None,
    "beit": ("beit_base_patch16_224", dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)),
    "eva": ("eva02_tiny_patch14_224", dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)),
    "rope": ("eva02_tiny_patch14_224", dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                            attn_type="rope")),
    "swinv2": ("swinv2_tiny_window8_256", dict(img_size=32, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2),
                                               num_heads=(2, 4))),
    "relpos": ("vit_relpos_small_patch16_224", dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)),
}


def small_family(family: str, **kwargs) -> torch.nn.Module:
    """A small plain timm model of `family` (a key of SMALL), 5 classes, in eval mode."""
    if family == "vit":
        return small_vit(qkv_bias=True, **kwargs).eval()
    if family == "swin":
        return small_swin(**kwargs).eval()
    name, cfg = SMALL[family]
    return timm.create_model(name, pretrained=False, num_classes=5, **{**cfg, **kwargs}).eval()


@torch.no_grad()
def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter redrawn so that outputs are of order 1 and every bias, position table and layer scale
    matters (timm's own init leaves many at 0 and shrinks the head): matrices N(0, 1/fan_in), vectors
    N(0, 0.2²) (+1 for norm weights and layer scales), Swin V2's logit scale around log 10."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g).to(p)
        if "logit_scale" in name:
            p.copy_(math.log(10) + 0.3 * noise)
        elif p.dim() >= 2 and "relative_position_bias_table" not in name and "token" not in name:
            p.copy_(noise / math.sqrt(p[0].numel()))
        elif name.endswith("weight") or "gamma" in name or "ls" in name.split(".")[-2:][0]:
            p.copy_(1 + 0.2 * noise)
        else:
            p.copy_(0.2 * noise if p.dim() < 2 else 0.5 * noise)
    return model
