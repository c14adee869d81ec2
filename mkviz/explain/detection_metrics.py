"""COCO mean average precision of a detector, boxes and masks, with torchmetrics' MeanAveragePrecision on the
pycocotools backend (the `dense` extra: `pip install mkviz[dense]`; imported inside the functions).

    detection_map(model, batches)      a torchvision detector (mkviz.core.detection) evaluated on batches
    coco_map(predictions, targets)     the same numbers for given predictions

Both return floats: box_map, box_map_50, box_map_75 (COCO mAP over IoU 0.50:0.95, at 0.50, at 0.75) and, when
the predictions carry masks, mask_map, mask_map_50, mask_map_75; with class_metrics, box_map_per_class (and
mask_map_per_class): {label: AP} for the labels seen in targets or predictions (-1 where a label has no target).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence, Union

import torch
from torch import nn

__all__ = ["detection_map", "coco_map"]

SUMMARY = ("map", "map_50", "map_75")
IOU_TYPES = {"bbox": "box", "segm": "mask"}  # torchmetrics' name -> the name in the returned keys


def metric_prediction(prediction: dict[str, torch.Tensor], masks: bool) -> dict[str, torch.Tensor]:
    """A torchvision prediction as torchmetrics reads it: masks (K, 1, H, W) in [0, 1] -> bool (K, H, W) at 0.5."""
    out = {k: prediction[k].detach().cpu() for k in ("boxes", "scores", "labels")}
    if masks:
        out["masks"] = prediction["masks"].detach().cpu().flatten(0, 1) > 0.5  # (K, 1, H, W) -> (K, H, W)
    return out


def metric_target(target: dict[str, torch.Tensor], masks: bool) -> dict[str, torch.Tensor]:
    """A target as torchmetrics reads it: boxes, labels, masks (N, H, W) as bool."""
    out = {k: target[k].detach().cpu() for k in ("boxes", "labels")}
    if masks:
        out["masks"] = target["masks"].detach().cpu().bool()
    return out


def coco_map(predictions: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]],
             class_metrics: bool = True) -> dict[str, Any]:
    """COCO mAP of `predictions` (torchvision's: boxes (K, 4) xyxy, scores (K,), labels (K,), optionally masks
    (K, 1, H, W)) against `targets` (boxes (N, 4) xyxy, labels (N,), masks (N, H, W)), one of each per image.
    Mask mAP is computed when every prediction carries masks."""
    from torchmetrics.detection import MeanAveragePrecision

    if len(predictions) != len(targets):
        raise ValueError(f"predictions and targets: one of each per image; got {len(predictions)} and {len(targets)}")
    masks = bool(predictions) and all("masks" in p for p in predictions)
    iou_types = ("bbox", "segm") if masks else ("bbox",)
    metric = MeanAveragePrecision(iou_type=iou_types, backend="pycocotools", class_metrics=class_metrics)
    metric.update([metric_prediction(p, masks) for p in predictions], [metric_target(t, masks) for t in targets])
    result = metric.compute()
    out: dict[str, Any] = {}
    for iou_type in iou_types:
        prefix = f"{iou_type}_" if len(iou_types) > 1 else ""
        name = IOU_TYPES[iou_type]
        out.update({f"{name}_{key}": float(result[prefix + key]) for key in SUMMARY})
        if class_metrics:
            per_class = result[prefix + "map_per_class"].reshape(-1).tolist()  # (C,) or a 0-d tensor -> list
            out[f"{name}_map_per_class"] = dict(zip(result["classes"].reshape(-1).tolist(), per_class))
    return out


@torch.no_grad()
def detection_map(model: nn.Module, batches: Iterable[tuple[Union[torch.Tensor, Sequence[torch.Tensor]],
                                                            Sequence[dict[str, torch.Tensor]]]],
                  class_metrics: bool = True) -> dict[str, Any]:
    """COCO box (and mask) mAP of a torchvision detector over `batches` of (images (B, 3, H, W) or a list of
    (3, H, W), targets: a list of dicts with boxes, labels, masks), run in eval mode on the model's device (its
    mode is restored after). The keys of `coco_map`, and `images`: how many images were scored."""
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    predictions, targets = [], []
    try:
        for images, batch_targets in batches:
            predictions += model([image.to(device) for image in images])
            targets += list(batch_targets)
    finally:
        model.train(training)
    if not targets:
        raise ValueError("batches: no images to evaluate")
    return {**coco_map(predictions, targets, class_metrics), "images": len(targets)}
