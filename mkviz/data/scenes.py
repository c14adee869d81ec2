"""Multi-object Fashion-MNIST scenes (``FashionScenesDataset``): 2-4 articles on a 64x64 canvas, with boxes,
instance masks, labels and a semantic mask, for detection and segmentation.

A scene is generated from ``numpy.random.default_rng([seed, split id, index])`` when it is asked for (nothing is
precomputed: 10,000 scenes cost nothing up front), so the same (seed, split, index) gives byte-identical scenes
alone or in a batch. Per scene:

* the number of articles is uniform in ``[min_objects, max_objects]``;
* each article is a random image of the split's pool, resized bilinearly (antialiased, rounded to uint8) to a
  square of uniform side in ``[min_size, max_size]`` px, its silhouette the pixels above ``threshold``;
* its position is drawn (rejection sampling, at most ``max_tries`` tries per article, else a RuntimeError
  naming the scene) until the tight box of its silhouette has box IoU <= ``max_iou`` with every earlier
  article's silhouette box, and every earlier article keeps >= ``min_visible`` of its silhouette visible;
* later articles occlude earlier ones: the later silhouette's pixels replace the canvas, elsewhere the
  canvas keeps the brighter pixel (both below ``threshold``), so a pixel is above ``threshold`` exactly where
  some article is visible; the earlier masks lose the occluded pixels.

Pools: "train" and "val" scenes take their articles from the same seeded, class-stratified partition of the
official 60,000 training images as ``FashionMNISTDataset(split, seed=seed)`` (54,000 / 6,000), "test" scenes
from the official 10,000 test images.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import box_iou, masks_to_boxes

from ..core.checks import check_choice
from .common import SPLITS, channel_stats, check_image_size, check_index, check_int, split_indices
from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist

__all__ = ["FashionScenesDataset", "Scene", "SCENE_CLASSES", "collate_scenes", "SCENE_SIZES"]


# index 0 is the background, as torchvision's detection models and the semantic masks count it
SCENE_CLASSES = ("background",) + FASHION_MNIST_CLASSES

# scenes per split when num_samples is None
SCENE_SIZES = {"train": 10_000, "val": 1_000, "test": 1_000}

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


class Scene(NamedTuple):
    """One generated scene with N articles, canvas S x S (what ``FashionScenesDataset.scene`` returns).

    pixels: uint8 ``(S, S)``; boxes: float32 ``(N, 4)`` xyxy, tight around each visible mask, pixel edges
    (``x1 = last column + 1``); labels: int64 ``(N,)`` in 1..10; masks: bool ``(N, S, S)`` visible silhouettes
    (disjoint); semantic: int64 ``(S, S)``, 0 = background, else the label of the top-most article;
    full_boxes: float32 ``(N, 4)`` the boxes of the whole silhouettes (the overlap rule holds on them);
    sources: int64 ``(N,)`` the articles' indices in the official training or test set; placements: int64
    ``(N, 3)`` each article's top-left row, column and side in px (bottom-most article first).
    """

    pixels: Tensor
    boxes: Tensor
    labels: Tensor
    masks: Tensor
    semantic: Tensor
    full_boxes: Tensor
    sources: Tensor
    placements: Tensor


def collate_scenes(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict[str, Any]]]:
    """Collate for ``DataLoader``: ``[(image (3,H,W), target), ...]`` -> ``(images (B,3,H,W), [target, ...])``;
    the targets stay a list (their boxes and masks differ in count). A torchvision detector takes
    ``list(images)`` and the list of targets; ``torch.stack([t["semantic"] for t in targets])`` is ``(B,H,W)``."""
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


def _box(mask: Tensor) -> Tensor:
    """Tight xyxy box of a bool ``(S, S)`` mask, pixel edges: float32 ``(4,)``."""
    return masks_to_boxes(mask[None]).squeeze(0) + torch.tensor([0.0, 0.0, 1.0, 1.0])


class FashionScenesDataset(Dataset):
    """Scenes of 2-4 Fashion-MNIST articles (module docstring: how they are made), for detection and segmentation.

    Args:
        split: "train", "val" or "test" (which images the articles come from; module docstring).
        num_samples: scenes in the dataset (None: 10,000 train, 1,000 val, 1,000 test).
        image_size: the canvas side S in px (default 64), at least ``max_size``.
        min_objects, max_objects: articles per scene (2-4).
        min_size, max_size: article side in px (20-36), before the silhouette's tight box.
        max_iou: the largest box IoU of an article's silhouette box with an earlier one (0.2).
        min_visible: the smallest visible share of every article's silhouette (0.5).
        max_tries: positions tried per article before a RuntimeError (100).
        threshold: ink level in [0, 1) above which a pixel belongs to an article (0.25).
        in_chans, mean, std, normalize: as ``FashionMNISTDataset`` (Fashion-MNIST's statistics by default).
        root, download, seed: where the images are, whether torchvision may download them, the seed of the
            train/val partition and of every scene.

    ``ds[i]`` -> ``(image float32 (C,S,S), target)`` with target ``{"boxes": float32 (N,4) xyxy, "labels":
    int64 (N,) in 1..10, "masks": uint8 (N,S,S), "semantic": int64 (S,S) in 0..10, "image_id": int}``, N in
    [min_objects, max_objects]; ``collate_scenes`` batches them. ``ds.scene(i)`` -> the ``Scene`` (raw pixels,
    bool masks, the silhouette boxes the overlap rule holds on, the source images); ``ds.images_uint8(idx)`` ->
    uint8 ``(B, 3, S, S)`` for display; ``ds.pool``: the indices in the official set articles come from.
    """

    class_names = SCENE_CLASSES
    num_classes = len(SCENE_CLASSES)
    val_fraction = 0.1

    def __init__(
        self,
        split: str = "train",
        num_samples: int | None = None,
        image_size: int = 64,
        *,
        min_objects: int = 2,
        max_objects: int = 4,
        min_size: int = 20,
        max_size: int = 36,
        max_iou: float = 0.2,
        min_visible: float = 0.5,
        max_tries: int = 100,
        threshold: float = 0.25,
        in_chans: int = 3,
        mean: Sequence[float] = FASHION_MNIST_MEAN,
        std: Sequence[float] = FASHION_MNIST_STD,
        normalize: bool = True,
        root: str | os.PathLike | None = None,
        download: bool = False,
        seed: int = 0,
    ) -> None:
        self.split = check_choice("split", split, SPLITS, ignore_case=True)
        self.seed = check_int("seed", seed, 0)
        self.num_samples = SCENE_SIZES[self.split] if num_samples is None else check_int("num_samples", num_samples, 1)
        self.min_objects = check_int("min_objects", min_objects, 1)
        self.max_objects = check_int("max_objects", max_objects, self.min_objects)
        self.min_size = check_int("min_size", min_size, 8)
        self.max_size = check_int("max_size", max_size, self.min_size)
        self.image_size = check_image_size(image_size, self.max_size, 224)
        self.max_tries = check_int("max_tries", max_tries, 1)
        for name, value, closed in (("max_iou", max_iou, True), ("min_visible", min_visible, True),
                                    ("threshold", threshold, False)):
            if not (isinstance(value, (int, float)) and 0.0 <= value and (value <= 1.0 if closed else value < 1.0)):
                raise ValueError(f"{name} must be a number in [0, 1{']' if closed else ')'}, got {value!r}")
        self.max_iou, self.min_visible, self.threshold = float(max_iou), float(min_visible), float(threshold)
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans!r}")
        self.in_chans, self.normalize = in_chans, normalize
        self.mean, self.std = channel_stats("mean", mean, in_chans), channel_stats("std", std, in_chans)
        self.official_split = "test" if self.split == "test" else "train"
        images, labels = load_fashion_mnist(self.official_split, None if root is None else str(root), download)
        if self.split == "test":
            self.pool = np.arange(len(labels))
        else:  # the partition FashionMNISTDataset(split, seed=seed) uses
            self.pool = split_indices(labels, self.seed, self.val_fraction, 0.0)[self.split]
        self._images, self._labels = images, labels  # uint8 (M, 28, 28), int64 (M,): read-only, shared

    def __len__(self) -> int:
        return self.num_samples

    def _article(self, source: int, size: int) -> Tensor:
        """Image ``source`` of the official set resized to uint8 ``(size, size)`` (bilinear, antialiased)."""
        x = torch.tensor(self._images[source], dtype=torch.float32).div(255.0)[None, None]  # (1, 1, 28, 28)
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x[0, 0].clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)

    def scene(self, index: int) -> Scene:
        """The scene ``index`` (generated from ``[seed, split, index]``; the class docstring says what it holds)."""
        index = check_index(index, len(self))
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        cut = round(self.threshold * 255)
        canvas = torch.zeros(self.image_size, self.image_size, dtype=torch.uint8)
        wholes: list[Tensor] = []   # each article's whole silhouette, bool (S, S)
        masks: list[Tensor] = []    # what is visible of it now
        boxes: list[Tensor] = []    # its silhouette's tight box
        sources, placements = [], []
        for k in range(int(rng.integers(self.min_objects, self.max_objects + 1))):
            source = int(self.pool[rng.integers(len(self.pool))])
            placed = self._place(rng, source, wholes, masks, boxes)
            if placed is None:
                raise RuntimeError(
                    f"FashionScenesDataset({self.split!r}, seed={self.seed}): scene {index}: no position for article "
                    f"{k + 1} within max_tries={self.max_tries} at max_iou={self.max_iou}, min_visible="
                    f"{self.min_visible}; raise max_tries or max_iou, or lower max_objects or max_size")
            y, x, article, full = placed
            size = article.shape[0]
            region = canvas[y:y + size, x:x + size]
            canvas[y:y + size, x:x + size] = torch.where(article > cut, article, torch.maximum(region, article))
            masks = [m & ~full for m in masks] + [full]
            wholes.append(full)
            boxes.append(_box(full))
            sources.append(source)
            placements.append((y, x, size))
        stacked = torch.stack(masks)  # (N, S, S) bool, disjoint
        labels = torch.from_numpy(self._labels[sources] + 1)
        semantic = (stacked.long() * labels.view(-1, 1, 1)).sum(0)  # masks are disjoint: the top-most label
        return Scene(canvas, torch.stack([_box(m) for m in masks]), labels, stacked,
                     semantic, torch.stack(boxes), torch.tensor(sources, dtype=torch.int64),
                     torch.tensor(placements, dtype=torch.int64))

    def _place(self, rng: np.random.Generator, source: int, wholes: list[Tensor], masks: list[Tensor],
               boxes: list[Tensor]) -> tuple[int, int, Tensor, Tensor] | None:
        """(y, x, the article resized, uint8 (s,s), its silhouette on the canvas, bool (S,S)) of the first of
        ``max_tries`` random (side, position) draws that keeps the overlap rules with the earlier articles, else
        None."""
        S, cut = self.image_size, round(self.threshold * 255)
        resized: dict[int, tuple[Tensor, Tensor, Tensor | None]] = {}  # side -> (article, silhouette, its box)
        for _ in range(self.max_tries):
            size = int(rng.integers(self.min_size, self.max_size + 1))
            y, x = (int(v) for v in rng.integers(0, S - size + 1, size=2))
            if size not in resized:
                article = self._article(source, size)
                resized[size] = (article, article > cut, _box(article > cut) if bool((article > cut).any()) else None)
            article, silhouette, box = resized[size]
            if box is None:
                continue
            if boxes and float(box_iou((box + torch.tensor([x, y, x, y]))[None], torch.stack(boxes)).max()) > self.max_iou:
                continue
            full = torch.zeros(S, S, dtype=torch.bool)
            full[y:y + size, x:x + size] = silhouette
            if all(int((m & ~full).sum()) >= self.min_visible * int(w.sum()) for m, w in zip(masks, wholes)):
                return y, x, article, full
        return None

    def _image(self, pixels: Tensor) -> Tensor:
        """uint8 ``(S, S)`` -> float32 ``(C, S, S)``, normalised if asked."""
        x = pixels.float().div(255.0).unsqueeze(0).expand(self.in_chans, -1, -1)
        return (x - self.mean) / self.std if self.normalize else x.contiguous()

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        s = self.scene(index)
        target = {"boxes": s.boxes, "labels": s.labels, "masks": s.masks.to(torch.uint8), "semantic": s.semantic,
                  "image_id": check_index(index, len(self))}
        return self._image(s.pixels), target

    def images_uint8(self, indices: Sequence[int] | Tensor) -> Tensor:
        """Pixels for display, uint8 ``(B, 3, S, S)``."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()
        return torch.stack([self.scene(i).pixels for i in idx]).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()

    def __repr__(self) -> str:
        return (f"FashionScenesDataset(split={self.split!r}, num_samples={len(self)}, image_size={self.image_size}, "
                f"objects={self.min_objects}-{self.max_objects}, sizes={self.min_size}-{self.max_size}, "
                f"max_iou={self.max_iou}, seed={self.seed})")
