"""What a run learns (`mkviz train --task`): for each task the model it builds from a spec, the loss of a training
step, the evaluation, and how its batches are collated. The loop (`mkviz.training.loop`) only calls these.

    TASKS["classification"]   a timm classifier; cross-entropy; loss and accuracy
    TASKS["segmentation"]     a timm backbone + mkviz.core.segmentation's head; per-pixel cross-entropy;
                              loss, mIoU and pixel accuracy (torchmetrics)
    TASKS["detection"]        a timm backbone in mkviz.core.detection's Mask R-CNN (simple feature pyramid);
                              torchvision's summed losses; loss, box and mask COCO mAP (torchmetrics)

A task is one `Task` entry (its build, step, evaluate and collate functions); `--task` offers every entry.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..core.detection import build_detector
from ..core.models import class_logits
from ..core.segmentation import SegmentationModel
from ..core.timm_build import build_spec
from ..data.registry import DATASET_NAMES, DENSE_DATASETS
from ..data.scenes import collate_scenes
from ..explain.detection_metrics import detection_map

__all__ = ["Task", "TASKS", "build_backbone", "spec_classes", "to_device", "autocast", "evaluate",
           "evaluate_segmentation", "evaluate_detection", "classification_step", "segmentation_step",
           "detection_step"]


@dataclass(frozen=True)
class Task:
    """One task of `mkviz train --task`.

    datasets: the datasets it trains on. build(spec, pretrained, seed) -> the model. step(model, images, targets,
    label_smoothing) -> (task loss, samples n, correct): run inside autocast on this rank's batch, ``correct``
    summed into the epoch's ``train_<train_metric>`` (n-weighted; "" for none). evaluate(model, loader, device,
    amp, distributed) -> metrics, written as ``val_<name>``/``test_<name>``; ``headline`` is the one the epoch
    line and the run's result name besides the loss. collate: the DataLoader's collate_fn (None: torch's).
    """

    datasets: tuple[str, ...]
    build: Callable[[dict[str, Any], bool, int], nn.Module]
    step: Callable[[nn.Module, torch.Tensor, Any, float], tuple[torch.Tensor, int, float]]
    evaluate: Callable[..., dict[str, float]]
    collate: Optional[Callable] = None
    train_metric: str = "acc"
    headline: str = "acc"


def spec_classes(spec: dict[str, Any]) -> int:
    """The number of classes a model spec asks for (background included for the dense tasks)."""
    return int(spec["timm_kwargs"]["num_classes"])


def build_backbone(spec: dict[str, Any], pretrained: bool = False, seed: int = 0) -> nn.Module:
    """The timm model of ``spec`` (converted to its variant) without a classifier (``num_classes=0``)."""
    return build_spec({**spec, "timm_kwargs": {**spec["timm_kwargs"], "num_classes": 0}}, pretrained, seed)


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors in nested lists / tuples / dicts moved to ``device`` (a batch's targets); the rest as is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp``, else nothing."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- classification
def classification_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        label_smoothing: float) -> tuple[torch.Tensor, int, float]:
    """Cross-entropy of ``model(images)`` (B, classes) against ``labels`` (B,); correct = right argmaxes."""
    logits = class_logits(model(images))
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    return loss, labels.numel(), float((logits.detach().argmax(-1) == labels).sum())


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device | None = None, amp: bool = False,
             distributed: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `model` over `loader` (batches of (images, labels)).

    With `distributed`, every rank evaluates its shard and the sums are all-reduced."""
    was_training = model.training
    model.eval()
    device = torch.device(device if device is not None else next(model.parameters()).device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in loader:
        x, y = batch[0].to(device, non_blocking=True), torch.as_tensor(batch[1]).to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        sums[1] += (logits.argmax(-1) == y).sum().double()
        sums[2] += y.numel()
    if distributed:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    loss, correct, count = sums.tolist()
    return {"loss": loss / max(count, 1), "acc": correct / max(count, 1), "count": int(count)}


# ----------------------------------------------------------------------------- segmentation
def _semantic(targets: list[dict[str, Any]]) -> torch.Tensor:
    """The targets' semantic masks stacked: int64 (B, H, W)."""
    return torch.stack([t["semantic"] for t in targets])


def segmentation_step(model: nn.Module, images: torch.Tensor, targets: list[dict[str, Any]],
                      label_smoothing: float) -> tuple[torch.Tensor, int, float]:
    """Per-pixel cross-entropy of ``model(images)`` (B, classes, H, W) against the semantic masks (B, H, W);
    correct = the batch's pixel accuracy × B (so the epoch's train_pixel_acc is the mean over images)."""
    semantic = _semantic(targets)
    logits = model(images)
    loss = F.cross_entropy(logits.float(), semantic, label_smoothing=label_smoothing)
    acc = float((logits.detach().argmax(1) == semantic).float().mean())
    return loss, len(semantic), acc * len(semantic)


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, loader: Iterable, device: str | torch.device | None = None,
                          amp: bool = False, distributed: bool = False) -> dict[str, float]:
    """Per-pixel cross-entropy, mIoU (torchmetrics' MulticlassJaccardIndex, macro over the classes present in
    prediction or truth, background included, from the confusion matrix over the whole loader) and pixel accuracy
    of a segmentation model over ``loader`` (batches of (images (B,3,H,W), targets with "semantic" (H,W))).
    With ``distributed`` the ranks' sums and confusion matrices are reduced."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    was_training = model.training
    model.eval()
    device = torch.device(device if device is not None else next(model.parameters()).device)
    n = int(getattr(model, "num_classes"))
    sync = dict(sync_on_compute=distributed)
    miou = MulticlassJaccardIndex(n, average="macro", **sync).to(device)
    pixel = MulticlassAccuracy(n, average="micro", **sync).to(device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)
    for images, targets in loader:
        semantic = _semantic(targets).to(device)
        with autocast(device, amp):
            logits = model(images.to(device)).float()  # (B, classes, H, W)
        sums[0] += F.cross_entropy(logits, semantic, reduction="sum").double()
        sums[1] += semantic.numel()
        miou.update(logits.argmax(1), semantic)
        pixel.update(logits.argmax(1), semantic)
    if distributed:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    return {"loss": float(sums[0] / sums[1].clamp(min=1)), "miou": float(miou.compute()),
            "pixel_acc": float(pixel.compute()), "count": int(sums[1])}


# ----------------------------------------------------------------------------- detection (torchvision's API)
def detection_step(model: nn.Module, images: torch.Tensor, targets: list[dict[str, Any]],
                   label_smoothing: float) -> tuple[torch.Tensor, int, float]:
    """The sum of a torchvision detector's training losses, ``model(list(images), targets)`` (a dict of
    losses in train mode); no train accuracy (correct = 0). ``label_smoothing`` does not apply."""
    losses = model(list(images), targets)
    return sum(losses.values()), len(targets), 0.0


@torch.no_grad()
def evaluate_detection(model: nn.Module, loader: Iterable, device: str | torch.device | None = None,
                       amp: bool = False, distributed: bool = False) -> dict[str, float]:
    """The detector's training loss (train-mode forward, loader read, under a forked RNG: the random state is untouched)
    and COCO mAP (`mkviz.explain.detection_metrics.detection_map`: box and mask, IoU 0.50:0.95 and 0.50) over
    ``loader`` (batches of (images (B,3,H,W), targets)). One process only: COCO mAP does not split over ranks."""
    if distributed:
        raise ValueError("task: detection evaluates in one process (COCO mAP does not reduce over ranks); "
                         "train it without torchrun")
    device = torch.device(device if device is not None else next(model.parameters()).device)
    was_training, total = model.training, 0.0
    model.train()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        batches = [(images.to(device), to_device(targets, device)) for images, targets in loader]
        for images, targets in batches:
            with autocast(device, amp):
                total += float(sum(model(list(images), targets).values())) * len(targets)
    model.train(was_training)
    count = sum(len(targets) for _, targets in batches)
    scores = detection_map(model, batches, class_metrics=False)
    return {"loss": total / max(count, 1), "map": scores["box_map"], "map_50": scores["box_map_50"],
            "mask_map": scores.get("mask_map", float("nan")), "mask_map_50": scores.get("mask_map_50", float("nan")),
            "count": count}


def _build_detector(spec: dict[str, Any], pretrained: bool, seed: int) -> nn.Module:
    size = spec["timm_kwargs"].get("img_size", 64)
    return build_detector(build_backbone(spec, pretrained, seed), num_classes=spec_classes(spec), image_size=size)


def _build_segmenter(spec: dict[str, Any], pretrained: bool, seed: int) -> nn.Module:
    return SegmentationModel(build_backbone(spec, pretrained, seed), spec_classes(spec), **spec.get("head", {}))


CLASSIFICATION_DATASETS = tuple(d for d in DATASET_NAMES if d not in DENSE_DATASETS)

TASKS: dict[str, Task] = {
    "classification": Task(CLASSIFICATION_DATASETS, build_spec, classification_step, evaluate),
    "segmentation": Task(DENSE_DATASETS, _build_segmenter, segmentation_step, evaluate_segmentation,
                         collate=collate_scenes, train_metric="pixel_acc", headline="miou"),
    "detection": Task(DENSE_DATASETS, _build_detector, detection_step, evaluate_detection,
                      collate=collate_scenes, train_metric="", headline="map"),
}
