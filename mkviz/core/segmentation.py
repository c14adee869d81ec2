"""Semantic segmentation on a timm backbone (plain or converted to the manifold key): a light head on the patch-token
maps that timm's ``forward_intermediates`` returns.

    model = build_segmenter("vit_tiny_patch16_224", num_classes=11, img_size=64, patch_size=8, embed_dim=64,
                            depth=4, num_heads=4)
    logits = model(images)                          # (B, 3, 64, 64) -> (B, 11, 64, 64)
    mk = mkviz.convert(model, "vanillak", 8)        # same logits at step 0: only the backbone's attention changes

The head: each chosen feature map (B, C_i, h_i, w_i) through a 1x1 conv to ``width`` channels, bilinearly resized to
the finest map and summed, then 3x3 conv, GroupNorm, GELU, a 1x1 conv to the classes, and bilinear upsampling to the
input size. The backbone is pruned with timm's ``prune_intermediate_layers`` (no classifier, no final norm, no block
after the last one used), so every parameter takes part in the loss.
"""
from __future__ import annotations

import math
from typing import Any, Sequence, Union

import timm
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SegmentationModel", "build_segmenter"]


class SegmentationModel(nn.Module):
    """A timm backbone with ``forward_intermediates`` (ViT, DeiT, Swin, ...) and a light segmentation head.

    Args:
        backbone: the timm model; pruned in place (``prune_intermediate_layers``).
        num_classes: output classes, background included (11 for the Fashion-MNIST scenes).
        indices: which feature maps: an int n takes the last n (blocks of a ViT, stages of a Swin), a list
            those indices of ``backbone.feature_info``.
        width: channels of the head (a multiple of 8 is not needed; GroupNorm takes gcd(8, width) groups).

    ``forward(x (B, 3, H, W)) -> logits (B, num_classes, H, W)``; ``indices``: the feature indices used.
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 11, indices: Union[int, Sequence[int]] = 1,
                 width: int = 64) -> None:
        super().__init__()
        if not hasattr(backbone, "forward_intermediates"):
            raise ValueError(f"backbone {type(backbone).__name__} has no forward_intermediates (a timm ViT, DeiT, "
                             "Swin, ... has)")
        for name, value in (("num_classes", num_classes), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        indices = list(indices) if isinstance(indices, Sequence) else indices
        self.indices = [int(i) for i in backbone.prune_intermediate_layers(indices, prune_norm=True, prune_head=True)]
        self.backbone, self.num_classes = backbone, num_classes
        chans = [int(backbone.feature_info[i]["num_chs"]) for i in self.indices]
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in chans)
        self.head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(math.gcd(8, width), width),
                                  nn.GELU(), nn.Conv2d(width, num_classes, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's chosen feature maps for ``x`` (B, 3, H, W): ``[(B, C_i, h_i, w_i), ...]``."""
        return self.backbone.forward_intermediates(x, indices=self.indices, intermediates_only=True,
                                                   output_fmt="NCHW")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x)
        size = max((m.shape[-2:] for m in maps), key=lambda hw: hw[0] * hw[1])  # the finest grid (h, w)
        fused = sum(F.interpolate(conv(m), size=size, mode="bilinear", align_corners=False)
                    for conv, m in zip(self.lateral, maps))  # (B, width, h, w)
        return F.interpolate(self.head(fused), size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_segmenter(model_name_or_backbone: Union[str, nn.Module], num_classes: int = 11,
                    indices: Union[int, Sequence[int]] = 1, width: int = 64, **timm_kwargs: Any) -> SegmentationModel:
    """A ``SegmentationModel`` on a timm model (built by name with ``timm.create_model(name, num_classes=0,
    **timm_kwargs)``, or given: an mkviz-converted one too)."""
    if isinstance(model_name_or_backbone, str):
        backbone = timm.create_model(model_name_or_backbone, pretrained=False, **{**timm_kwargs, "num_classes": 0})
    elif timm_kwargs:
        raise ValueError(f"timm kwargs {sorted(timm_kwargs)} only apply when the backbone is given by name")
    else:
        backbone = model_name_or_backbone
    return SegmentationModel(backbone, num_classes, indices, width)
