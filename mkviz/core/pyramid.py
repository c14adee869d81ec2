"""A timm ViT or Swin as a detection backbone: ViTDet's simple feature pyramid (Li et al. 2022, "Exploring Plain
Vision Transformer Backbones for Object Detection", §3).

    SimpleFeaturePyramid   feature maps of a trunk -> one map per output stride: the source map resampled
                           (deconvolutions to go finer, identity, max-pooling to go coarser), then a 1x1 and a 3x3
                           convolution, each followed by a LayerNorm over channels
    PyramidBackbone        a timm model read through `forward_intermediates`, then the pyramid: a torchvision
                           detection backbone (`out_channels`, an OrderedDict of maps)

Strides are relative to the input image. A plain ViT (one reduction: its patch size p) gives the pyramid the last
block's patch tokens as one map (B, C, H/p, W/p) (the class token dropped, no final norm); at 64 px with p = 8
that is (B, 64, 8, 8), and the default strides (4, 8, 16, 32) give maps "p2".."p5" of 16x16 (one 2x
deconvolution), 8x8 (identity), 4x4 (2x2 max-pool) and 2x2 (4x4 max-pool). A Swin (stages at strides 4, 8, 16,
32 with patch 4) feeds each stage to the level of its own stride (identity, then the convolutions). The trunk's
classifier head and final norm are pruned (`prune_intermediate_layers`): every parameter left is used.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
from timm.layers import LayerNorm2d
from torch import nn

__all__ = ["SimpleFeaturePyramid", "PyramidBackbone", "PYRAMID_STRIDES", "pyramid_sources"]

PYRAMID_STRIDES = (4, 8, 16, 32)  # the output strides, "p2".."p5" (log2 of the stride), as in ViTDet / FPN


def level_name(stride: int) -> str:
    """The name of the map at `stride` (a power of 2): 4 -> "p2", 32 -> "p5"."""
    return f"p{int(math.log2(stride))}"


def power_of_two_ratio(stride: int, source: int) -> int:
    """log2(stride / source), a whole number, else a ValueError."""
    ratio = math.log2(stride / source)
    if ratio != round(ratio):
        raise ValueError(f"strides: {stride} and the trunk's stride {source} differ by a factor that is not a "
                         "power of 2")
    return int(round(ratio))


def resampler(channels: int, source: int, stride: int) -> tuple[nn.Module, int]:
    """(module, its output channels) taking a map at stride `source` to `stride`: ViTDet's stack of 2x2
    deconvolutions, each halving the channels (LayerNorm and GELU between two), identity, or a max-pool."""
    steps = power_of_two_ratio(stride, source)
    if steps > 0:
        return nn.MaxPool2d(2 ** steps, 2 ** steps), channels
    if steps == 0:
        return nn.Identity(), channels
    layers: list[nn.Module] = []
    for i in range(-steps):
        if i:
            layers += [LayerNorm2d(channels), nn.GELU()]
        layers.append(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
        channels //= 2
    return nn.Sequential(*layers), channels


def nearest_source(stride: int, sources: Sequence[int]) -> int:
    """The index of the source stride nearest to `stride` in log scale (the finer one on a tie)."""
    return min(range(len(sources)), key=lambda i: (abs(math.log2(stride / sources[i])), sources[i]))


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: for each output stride, the source map of the nearest stride (a plain
    ViT has one) resampled to it, then conv 1x1 + LayerNorm2d, conv 3x3 + LayerNorm2d (no biases).

    forward(features: list of (B, C_j, H/s_j, W/s_j), one per source) ->
    OrderedDict {"p2": (B, out_channels, H/4, W/4), ..., "p5": (B, out_channels, H/32, W/32)}.
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int],
                 strides: Sequence[int] = PYRAMID_STRIDES, out_channels: int = 64) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides) or not in_channels:
            raise ValueError(f"in_channels and in_strides: one entry per source map; got {list(in_channels)} and "
                             f"{list(in_strides)}")
        self.strides, self.out_channels = tuple(strides), out_channels
        self.sources = [nearest_source(s, in_strides) for s in self.strides]
        self.levels = nn.ModuleDict()
        for stride, j in zip(self.strides, self.sources):
            resample, channels = resampler(in_channels[j], in_strides[j], stride)
            self.levels[level_name(stride)] = nn.Sequential(
                resample,
                nn.Conv2d(channels, out_channels, kernel_size=1, bias=False), LayerNorm2d(out_channels),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False), LayerNorm2d(out_channels),
            )

    def forward(self, features: Sequence[torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict((name, level(features[j])) for (name, level), j in zip(self.levels.items(), self.sources))


def pyramid_sources(trunk: nn.Module) -> list[int]:
    """The indices of `trunk.feature_info` the pyramid reads: the last block of a plain ViT (one reduction), the
    last block of each stage of a hierarchical model (Swin)."""
    reductions = [info["reduction"] for info in trunk.feature_info]
    return [i for i, r in enumerate(reductions) if i == len(reductions) - 1 or reductions[i + 1] != r]


class PyramidBackbone(nn.Module):
    """A timm ViT-style or Swin-style model (plain or converted to the manifold key) and a simple feature
    pyramid: a torchvision detection backbone.

    forward(x (B, 3, H, W)) -> OrderedDict {"p2": (B, out_channels, H/4, W/4), ..., "p5": (B, out_channels, H/32,
    W/32)} for the default strides. The trunk is used in place (its head and final norm pruned).
    """

    def __init__(self, trunk: nn.Module, strides: Sequence[int] = PYRAMID_STRIDES, out_channels: int = 64) -> None:
        super().__init__()
        missing = [a for a in ("forward_intermediates", "feature_info", "patch_embed") if not hasattr(trunk, a)]
        if missing:
            raise ValueError(f"backbone: expected a timm ViT-style or Swin-style model (with forward_intermediates, "
                             f"feature_info, patch_embed); {type(trunk).__name__} lacks {', '.join(missing)}")
        self.indices = pyramid_sources(trunk)
        info = [trunk.feature_info[i] for i in self.indices]
        if hasattr(trunk, "prune_intermediate_layers"):
            trunk.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)
        self.trunk = trunk
        self.pyramid = SimpleFeaturePyramid([f["num_chs"] for f in info], [f["reduction"] for f in info],
                                            strides, out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        # each (B, C_j, H/s_j, W/s_j): a ViT's patch tokens laid out on the patch grid, a Swin stage's map
        features = self.trunk.forward_intermediates(x, indices=self.indices, intermediates_only=True,
                                                    output_fmt="NCHW")
        return self.pyramid(features)
