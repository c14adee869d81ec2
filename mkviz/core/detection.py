"""Detection and instance segmentation with a (manifold-key) ViT or Swin backbone: torchvision's Mask R-CNN
(Faster R-CNN without masks) on a simple feature pyramid (`mkviz.core.pyramid`), sized for 64x64 scenes of
Fashion-MNIST articles of about 20-36 px.

    build_detector(backbone, num_classes, image_size, masks, **timm_kwargs)   the model
    detection_loss(model, images, targets)                                    one training step's loss
    DETECTION_BACKBONES                                                       the small default trunks

The torchvision API: in train mode `model(images: list of (3, H, W), targets: list of dict(boxes (N, 4) xyxy
float, labels (N,) int64 in 1..num_classes-1, masks (N, H, W) uint8))` -> dict of losses; in eval mode
`model(images)` -> list of dict(boxes (K, 4), labels (K,), scores (K,), masks (K, 1, H, W) float in [0, 1]).

Choices at image_size 64 (they scale with image_size): pyramid strides 4, 8, 16, 32 (maps 16x16 .. 2x2) with 64
channels; one anchor size per level, image_size x (1/4, 3/8, 1/2, 3/4) = 16, 24, 32, 48 px, aspect ratios
(h/w) 0.5, 1, 2 (three anchors per location, 1,020 in all); box RoIAlign 7x7 and mask RoIAlign 14x14 (sampling
ratio 2) over all four maps, a box of side s read from level floor(3 + log2(s / 32)) (canonical scale 32 at
stride 8: articles under 32 px from the 16x16 map, 32-63 px from the 8x8 map); a two-layer MLP box head of
width 256 and a four-conv mask head of 64 channels; at most 20 detections an image. The images come normalised
by the dataset: the transform's mean is 0 and std 1 (no second normalisation), and min_size = max_size =
image_size (64x64 images are not resized).

To put the manifold key in: `build_detector("vit", variant="vanillak")` (a from-scratch key), or
`mkviz.convert(detector, "kua")`, which converts the trunk's attention function-preservingly (the whole detector
computes what it computed).
"""
from __future__ import annotations

from typing import Any, Sequence, Union

import timm
from timm.models import is_model_in_modules
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from .models import unbalanced_atlas_loss
from .pyramid import PYRAMID_STRIDES, PyramidBackbone, level_name
from .timm_models import BASE_MODULES, MANIFOLD_ARGS, PREFIX

__all__ = ["build_detector", "detection_loss", "DETECTION_BACKBONES", "ANCHOR_FRACTIONS", "ASPECT_RATIOS"]

# short names -> (timm model, kwargs): small trunks for 64-px scenes (img_size is build_detector's image_size)
DETECTION_BACKBONES: dict[str, tuple[str, dict[str, Any]]] = {
    # the Fashion-MNIST ViT of mkviz.training's `fashion` preset, on 64 px: 8x8 patches of 8 px, 4 blocks of 64
    "vit": ("vit_tiny_patch16_224", dict(patch_size=8, embed_dim=64, depth=4, num_heads=4)),
    # a small Swin: patches of 4 px, windows of 4, stages at strides 4, 8, 16, 32 of widths 32, 64, 128, 256
    "swin": ("swin_tiny_patch4_window7_224", dict(patch_size=4, window_size=4, embed_dim=32, depths=(2, 2, 2, 2),
                                                   num_heads=(2, 4, 8, 16))),
}
ANCHOR_FRACTIONS = (1 / 4, 3 / 8, 1 / 2, 3 / 4)  # anchor side / image_size, one per pyramid level
ASPECT_RATIOS = (0.5, 1.0, 2.0)  # anchor height / width
PYRAMID_CHANNELS = 64


def build_trunk(backbone: str, image_size: int, timm_kwargs: dict[str, Any]) -> nn.Module:
    """The timm model `backbone` names (a key of DETECTION_BACKBONES, or the name of a timm ViT-style or Swin-style
    architecture mkviz converts) at `image_size`; with any manifold option (variant=, num_charts=, ...) its
    `mkviz_` entrypoint."""
    name, kwargs = DETECTION_BACKBONES.get(backbone, (backbone, {}))
    kwargs = {**kwargs, "img_size": image_size, **timm_kwargs}
    base = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if not timm.is_model(base):
        raise ValueError(f"backbone: unknown model {backbone!r}; use one of "
                         f"{', '.join(map(repr, DETECTION_BACKBONES))} or a timm ViT or Swin name")
    if not is_model_in_modules(base, BASE_MODULES):
        raise ValueError(f"backbone: expected a timm ViT-style or Swin-style model (timm modules "
                         f"{', '.join(BASE_MODULES)}); got {backbone!r}")
    if any(k in MANIFOLD_ARGS for k in kwargs):
        name = PREFIX + base
    kwargs.setdefault("pretrained", False)
    try:
        return timm.create_model(name, num_classes=0, **kwargs)
    except TypeError as err:  # a kwarg this architecture does not take
        raise ValueError(f"timm_kwargs: {name} does not accept {sorted(timm_kwargs)}: {err}") from None


def check_trunk_size(trunk: nn.Module, image_size: int) -> None:
    """ValueError unless `trunk` takes image_size x image_size images cut into whole patches."""
    embed = getattr(trunk, "patch_embed", None)
    patch = getattr(embed, "patch_size", None)
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if patch and image_size % patch:
        raise ValueError(f"image_size: {image_size} is not divisible by the backbone's patch size {patch}")
    built = getattr(embed, "img_size", None)
    dynamic = getattr(trunk, "dynamic_img_size", False) or getattr(embed, "dynamic_img_size", False)
    if built is not None and tuple(built) != (image_size, image_size) and not dynamic:
        raise ValueError(f"image_size: the backbone was built for {tuple(built)} images, not {image_size}x"
                         f"{image_size} (build it with img_size={image_size})")


def rcnn_parts(out_channels: int, num_classes: int, image_size: int, masks: bool) -> dict[str, nn.Module]:
    """The anchor generator, RoI pools and heads of the module docstring."""
    names = [level_name(s) for s in PYRAMID_STRIDES]
    sizes = tuple((round(f * image_size),) for f in ANCHOR_FRACTIONS)
    pool = dict(featmap_names=names, sampling_ratio=2, canonical_scale=32 * image_size // 64, canonical_level=3)
    parts: dict[str, nn.Module] = dict(
        rpn_anchor_generator=AnchorGenerator(sizes, (ASPECT_RATIOS,) * len(sizes)),
        box_roi_pool=MultiScaleRoIAlign(output_size=7, **pool),
        box_head=TwoMLPHead(out_channels * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
    )
    if masks:
        parts.update(mask_roi_pool=MultiScaleRoIAlign(output_size=14, **pool),
                     mask_head=MaskRCNNHeads(out_channels, [out_channels] * 4, 1),
                     mask_predictor=MaskRCNNPredictor(out_channels, out_channels, num_classes))
    return parts


def build_detector(backbone: Union[str, nn.Module] = "vit", num_classes: int = 11, image_size: int = 64,
                   masks: bool = True, **timm_kwargs: Any) -> Union[MaskRCNN, FasterRCNN]:
    """Mask R-CNN (masks=False: Faster R-CNN) on a simple feature pyramid over `backbone`: "vit" or "swin"
    (DETECTION_BACKBONES), a timm ViT / Swin name (pretrained=True in timm_kwargs loads timm's weights), or a
    timm model built for image_size (plain or converted by mkviz; used in place). Manifold options in
    timm_kwargs (variant="kua", num_charts=8, ...) build the trunk through timm's `mkviz_<arch>` entrypoint.

    num_classes counts the background (11: ten Fashion-MNIST classes, labels 1..10). ValueError in one line
    for an unknown backbone, num_classes < 2, or an image_size the pyramid or the patches do not divide.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2 (the background and at least one class); got "
                         f"{num_classes!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < PYRAMID_STRIDES[-1]:
        raise ValueError(f"image_size must be an int >= {PYRAMID_STRIDES[-1]}; got {image_size!r}")
    if isinstance(backbone, str):
        trunk = build_trunk(backbone, image_size, timm_kwargs)
    elif isinstance(backbone, nn.Module):
        if timm_kwargs:
            raise ValueError(f"timm_kwargs {sorted(timm_kwargs)} apply to a backbone given by name, not to a model")
        trunk = backbone
    else:
        raise ValueError(f"backbone must be a name or a torch.nn.Module; got {type(backbone).__name__}")
    body = PyramidBackbone(trunk, PYRAMID_STRIDES, PYRAMID_CHANNELS)  # checks the family first
    check_trunk_size(trunk, image_size)
    if image_size % PYRAMID_STRIDES[-1]:
        raise ValueError(f"image_size: {image_size} is not divisible by the pyramid's coarsest stride "
                         f"{PYRAMID_STRIDES[-1]}")
    parts = rcnn_parts(body.out_channels, num_classes, image_size, masks)
    cls = MaskRCNN if masks else FasterRCNN
    return cls(body, num_classes=None, min_size=image_size, max_size=image_size, image_mean=[0.0, 0.0, 0.0],
               image_std=[1.0, 1.0, 1.0], rpn_pre_nms_top_n_train=300, rpn_pre_nms_top_n_test=150,
               rpn_post_nms_top_n_train=150, rpn_post_nms_top_n_test=100, rpn_batch_size_per_image=64,
               box_batch_size_per_image=64, box_detections_per_img=20, **parts)


def detection_loss(model: nn.Module, images: Union[torch.Tensor, Sequence[torch.Tensor]],
                   targets: Sequence[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The sum of a torchvision detector's training losses (RPN objectness and boxes, RoI classes and boxes,
    masks) on images (B, 3, H, W) or a list of (3, H, W), plus KUA's unbalanced-atlas term (0 without one).
    The model must be in training mode."""
    if not model.training:
        raise ValueError("detection_loss: the model is in eval mode (it returns detections, not losses); call "
                         "model.train() first")
    losses = model(list(images), list(targets))
    return sum(losses.values()) + unbalanced_atlas_loss(model)
