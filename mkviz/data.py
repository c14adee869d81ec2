"""Datasets for mkviz: a procedural spatial-relation "shapes" dataset, sklearn digits, CIFAR, ImageFolder.

Shapes (``ShapesDataset``)
--------------------------
Every image holds exactly one **red** and one **blue** object (circle, square, triangle or diamond, sizes
and shapes random) on a textured background; from difficulty ``"medium"`` on there are also distractor
objects in other colours. The label is the position of the red object relative to the blue one::

    0 "red left of blue"   1 "red right of blue"   2 "red above blue"   3 "red below blue"

Objects never overlap and never touch the border, and the centre displacement between red and blue is
dominated by one axis (the other component is at most half as large), so the label is unambiguous.
Presence says nothing about the class (every image has one red and one blue object): a model has to
compare *where* the two are. Object slot 0 is always the red object, slot 1 the blue one, slots
2..5 the distractors, so the evidence for the label is ``masks[0] | masks[1]``.

Difficulty (``0/1/2`` or ``"easy"/"medium"/"hard"``): easy = no distractors, large objects, faint
smooth-noise background; medium = 1-2 distractors (green/yellow/white), stripes; hard = 2-4 distractors
(also cyan/magenta/orange), smaller objects, stronger texture and colour jitter.

Scenes are sampled in blocks of 1024 from ``numpy.random.default_rng([seed, split_id, difficulty, block])``
(labels exactly balanced within a block), stored as a few numbers per object and rendered, vectorised
over a batch, with coordinate grids. The split is part of the seed, so train/val/test never share a
scene; a dataset of ``n`` samples is a prefix of a longer one with the same arguments; the scene is
defined in unit coordinates, so ``image_size`` only changes the resolution. Rendering is elementwise
float32 arithmetic followed by rounding to uint8, so the same (seed, split, difficulty, index,
image_size) gives bitwise the same image whether it is rendered alone, in a batch, or cached.

Sample structure (one design for all datasets)
----------------------------------------------
``dataset[i]`` is ``(image, label)`` for **every** dataset here (image: float32 ``(3, H, W)``, label:
int), so one training loop consumes them all. Datasets with ground truth (shapes, digits) also offer:

* ``ds.sample(i) -> Sample(image, label, masks, evidence_mask)`` (always),
* ``with_masks=True``: ``ds[i]`` returns that ``Sample`` instead. ``Sample`` is a NamedTuple whose first
  two fields are image and label; ``collate`` / torch's ``default_collate`` batch it into a ``Sample`` of
  stacked tensors (masks have a fixed shape: the object count is padded with empty masks),
* ``ds.batch(indices) -> Sample`` with batched tensors, rendered in one vectorised call.

Real data: ``DigitsDataset`` (sklearn's bundled 8x8 handwritten digits, upsampled; evidence = ink
pixels), and CIFAR-10/100 and any ImageFolder via ``build_dataset`` (no masks).
"""
from __future__ import annotations

import functools
import math
import operator
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, default_collate

__all__ = [
    "Sample", "ShapesDataset", "DigitsDataset", "LabeledSubset", "make_shapes_splits", "build_dataset",
    "collate", "default_data_root", "CLASS_NAMES", "SHAPE_KINDS", "DIFFICULTIES", "SPLITS",
    "DATASET_NAMES", "MAX_OBJECTS", "IMAGENET_MEAN", "IMAGENET_STD", "IN_MEMORY_DATASETS",
    "FashionMNISTDataset", "load_fashion_mnist", "FASHION_MNIST_CLASSES", "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD", "FASHION_MNIST_SYSTEM_DIR", "data_config",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 224
SPLITS = ("train", "val", "test")
DIFFICULTIES = ("easy", "medium", "hard")
DATASET_NAMES = ("shapes", "digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
# datasets held in memory as uint8 pixels at their own size (no crop, no timm transform)
IN_MEMORY_DATASETS = ("shapes", "digits", "fashion-mnist")
CLASS_NAMES = ("red left of blue", "red right of blue", "red above blue", "red below blue")
SHAPE_KINDS = ("circle", "square", "triangle", "diamond")
MAX_OBJECTS = 6  # red, blue and up to 4 distractors; masks are padded to this count
RED = (0.90, 0.12, 0.12)
BLUE = (0.12, 0.28, 0.92)
DISTRACTOR_COLORS = {
    "green": (0.15, 0.72, 0.22), "yellow": (0.95, 0.85, 0.15), "white": (0.95, 0.95, 0.95),
    "cyan": (0.10, 0.80, 0.85), "magenta": (0.85, 0.20, 0.80), "orange": (0.98, 0.62, 0.12),
}

_BLOCK = 1024  # scenes per RNG block
_EXTENT = 1.17  # every shape lies within this many radii of its centre
_PAD, _GAP = 0.02, 0.04  # min distance object-border and object-object (unit coordinates)
_LEVELS: dict[int, dict[str, Any]] = {
    0: dict(radius=(0.10, 0.15), distractors=(0, 0), palette=("white",), jitter=0.03,
            noise=0.08, tint=0.03, stripes=(0.0, 0.0), grid=4),
    1: dict(radius=(0.08, 0.13), distractors=(1, 2), palette=("green", "yellow", "white"), jitter=0.05,
            noise=0.12, tint=0.05, stripes=(0.04, 0.10), grid=5),
    2: dict(radius=(0.07, 0.11), distractors=(2, 4), palette=tuple(DISTRACTOR_COLORS), jitter=0.07,
            noise=0.16, tint=0.08, stripes=(0.08, 0.16), grid=7),
}


class Sample(NamedTuple):
    """One sample with ground truth (or a batch of them, leading dim ``B``, after collation).

    image: float32 ``(3, H, W)``; label: int (``(B,)`` int64 when batched);
    masks: bool ``(num_objects, H, W)``, one per object slot, empty for absent objects;
    evidence_mask: bool ``(H, W)``, union of the objects the label depends on.
    """

    image: Tensor
    label: Any
    masks: Tensor
    evidence_mask: Tensor


def collate(batch: Sequence[Any]) -> Any:
    """Collate for ``DataLoader``: ``(image, label)`` pairs -> ``(images (B,3,H,W), labels (B,))``;
    ``Sample``s -> ``Sample`` of stacked tensors (masks ``(B,K,H,W)``, evidence ``(B,H,W)``)."""
    return default_collate(batch)


def default_data_root() -> Path:
    """Where CIFAR is looked for / downloaded when ``root`` is None: ``$MKVIZ_DATA`` or ``~/.cache/mkviz/data``."""
    return Path(os.environ.get("MKVIZ_DATA", "~/.cache/mkviz/data")).expanduser()


# ----------------------------------------------------------------------------- argument checks
def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value.lower()


def _check_image_size(image_size: Any, lo: int = MIN_IMAGE_SIZE, hi: int = MAX_IMAGE_SIZE) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not lo <= image_size <= hi:
        raise ValueError(f"image_size must be an int in [{lo}, {hi}], got {image_size!r}")
    return int(image_size)


def _check_difficulty(difficulty: Any) -> int:
    if isinstance(difficulty, str) and difficulty.lower() in DIFFICULTIES:
        return DIFFICULTIES.index(difficulty.lower())
    if isinstance(difficulty, (int, np.integer)) and not isinstance(difficulty, bool) and 0 <= difficulty <= 2:
        return int(difficulty)
    raise ValueError(f"difficulty must be one of 0, 1, 2 or {list(DIFFICULTIES)}, got {difficulty!r}")


def _check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def _check_index(index: Any, n: int) -> int:
    i = operator.index(index)
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for dataset of size {n}")
    return i % n


def _to_float(images: Tensor, normalize: bool, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 ``(..., 3, H, W)`` -> float32 in [0, 1], then ``(x - mean) / std`` if ``normalize``."""
    x = images.float().div_(255.0)
    return (x - mean) / std if normalize else x


def _split_indices(labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Stratified, seeded partition of ``range(len(labels))`` into sorted train/val/test index arrays."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_test = round(len(idx) * val_fraction), round(len(idx) * test_fraction)
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val:n_val + n_test])
        parts["train"].append(idx[n_val + n_test:])
    return {s: np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64) for s, v in parts.items()}


# ----------------------------------------------------------------------------- shapes: scene sampling
def _sample_block(rng: np.random.Generator, n: int, level: int) -> dict[str, np.ndarray]:
    """Scene parameters for ``n`` images (unit coordinates, y pointing down). Arrays ``(n,)``, ``(n, K)``..."""
    cfg, K = _LEVELS[level], MAX_OBJECTS
    label = rng.permutation(np.arange(n) % len(CLASS_NAMES))
    r = rng.uniform(*cfg["radius"], size=(n, K))
    kind = rng.integers(0, len(SHAPE_KINDS), size=(n, K))
    ext = _EXTENT * r
    cx, cy = np.zeros((n, K)), np.zeros((n, K))

    # red (slot 0) and blue (slot 1): displacement red -> blue is (du along the label's axis, dv across)
    e0, e1 = ext[:, 0], ext[:, 1]
    d_min, d_max = e0 + e1 + _GAP, 1.0 - e0 - e1 - 2 * _PAD
    d = d_min + rng.uniform(size=n) * (d_max - d_min)
    du = np.where(label % 2 == 0, d, -d)  # left/above: blue has the larger x/y
    dv = rng.uniform(-0.5, 0.5, size=n) * d
    lo0, hi0, lo1, hi1 = e0 + _PAD, 1.0 - e0 - _PAD, e1 + _PAD, 1.0 - e1 - _PAD

    def place(delta: np.ndarray) -> np.ndarray:  # red coordinate such that red and red + delta both fit
        lo, hi = np.maximum(lo0, lo1 - delta), np.minimum(hi0, hi1 - delta)
        return lo + rng.uniform(size=n) * (hi - lo)

    u0, v0 = place(du), place(dv)
    horizontal = label < 2
    cx[:, 0], cy[:, 0] = np.where(horizontal, u0, v0), np.where(horizontal, v0, u0)
    cx[:, 1], cy[:, 1] = cx[:, 0] + np.where(horizontal, du, dv), cy[:, 0] + np.where(horizontal, dv, du)

    # distractors: rejection sampling, vectorised over the images still waiting; misses are dropped
    active = np.zeros((n, K), bool)
    active[:, :2] = True
    count = rng.integers(cfg["distractors"][0], cfg["distractors"][1] + 1, size=n)
    for k in range(2, K):
        todo = count > k - 2
        for _ in range(30):
            idx = np.flatnonzero(todo)
            if idx.size == 0:
                break
            lo, hi = ext[idx, k] + _PAD, 1.0 - ext[idx, k] - _PAD
            x = lo + rng.uniform(size=idx.size) * (hi - lo)
            y = lo + rng.uniform(size=idx.size) * (hi - lo)
            dist = np.hypot(x[:, None] - cx[idx], y[:, None] - cy[idx])
            ok = ((dist > ext[idx, k][:, None] + ext[idx] + _GAP) | ~active[idx]).all(1)
            acc = idx[ok]
            cx[acc, k], cy[acc, k], active[acc, k] = x[ok], y[ok], True
            todo[acc] = False

    palette = np.array([DISTRACTOR_COLORS[c] for c in cfg["palette"]])
    color = np.empty((n, K, 3))
    color[:, 0], color[:, 1] = RED, BLUE
    color[:, 2:] = palette[rng.integers(0, len(palette), size=(n, K - 2))]
    color = np.clip(color + rng.uniform(-cfg["jitter"], cfg["jitter"], size=(n, K, 3)), 0.0, 1.0)

    theta, freq = rng.uniform(0, np.pi, size=n), rng.uniform(2.0, 6.0, size=n)
    g = cfg["grid"]
    return dict(
        label=label, cx=cx, cy=cy, r=r, kind=kind, active=active, color=color,
        base=rng.uniform(0.35, 0.65, size=(n, 1)) + rng.uniform(-cfg["tint"], cfg["tint"], size=(n, 3)),
        noise=rng.uniform(-cfg["noise"], cfg["noise"], size=(n, g, g)),
        stripe_amp=rng.uniform(*cfg["stripes"], size=n), stripe_phase=rng.uniform(size=n),
        fx=freq * np.cos(theta), fy=freq * np.sin(theta),
    )


# ----------------------------------------------------------------------------- shapes: rendering
def _circle(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    return dx * dx + dy * dy <= r * r


def _square(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    return torch.maximum(dx.abs(), dy.abs()) <= 0.82 * r


def _triangle(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:  # apex up at -1.1 r, base at +0.65 r
    return (dy <= 0.65 * r) & (dx.abs() <= (dy + 1.1 * r) * 0.555)


def _diamond(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    return dx.abs() + dy.abs() <= 1.15 * r


_SHAPE_FNS = (_circle, _square, _triangle, _diamond)


def _bilinear(grid: Tensor, size: int) -> Tensor:
    """Smooth upsampling of ``(B, G, G)`` node values to ``(B, size, size)`` (elementwise ops only)."""
    g = grid.shape[-1]
    pos = (torch.arange(size, dtype=torch.float32) + 0.5) / size * (g - 1)
    i0 = pos.floor().long().clamp(max=g - 2)
    w = pos - i0
    rows = grid[:, i0, :] + (grid[:, i0 + 1, :] - grid[:, i0, :]) * w.view(1, -1, 1)
    return rows[:, :, i0] + (rows[:, :, i0 + 1] - rows[:, :, i0]) * w.view(1, 1, -1)


def _render_masks(p: dict[str, Tensor], idx: Tensor, size: int) -> Tensor:
    """bool ``(B, MAX_OBJECTS, size, size)``: pixel centres inside each (active) object."""
    B, K = idx.numel(), MAX_OBJECTS
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    cx, cy, r = (p[k][idx].reshape(-1) for k in ("cx", "cy", "r"))
    kind, active = p["kind"][idx].reshape(-1), p["active"][idx].reshape(-1)
    masks = torch.zeros(B * K, size, size, dtype=torch.bool)
    for k, fn in enumerate(_SHAPE_FNS):
        sel = torch.nonzero(active & (kind == k)).squeeze(1)
        if sel.numel():
            masks[sel] = fn(c.view(1, 1, -1) - cx[sel].view(-1, 1, 1), c.view(1, -1, 1) - cy[sel].view(-1, 1, 1),
                            r[sel].view(-1, 1, 1))
    return masks.view(B, K, size, size)


def _render_images(p: dict[str, Tensor], idx: Tensor, size: int, masks: Tensor) -> Tensor:
    """uint8 ``(B, 3, size, size)``: textured background with the objects of ``masks`` painted on."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    t = p["fx"][idx].view(-1, 1, 1) * c.view(1, 1, -1) + p["fy"][idx].view(-1, 1, 1) * c.view(1, -1, 1)
    t += p["stripe_phase"][idx].view(-1, 1, 1)
    t -= t.floor()
    stripes = t.mul_(2.0).sub_(1.0).abs_().mul_(2.0).sub_(1.0)  # triangle wave in [-1, 1]
    lum = _bilinear(p["noise"][idx], size).add_(stripes.mul_(p["stripe_amp"][idx].view(-1, 1, 1)))
    canvas = (lum.unsqueeze(1) + p["base"][idx].view(-1, 3, 1, 1)).mul_(255.0).round_().clamp_(0.0, 255.0)
    image = canvas.to(torch.uint8)
    color = (p["color"][idx] * 255.0).round().to(torch.uint8)  # (B, K, 3)
    for k in range(MAX_OBJECTS):
        if p["active"][idx, k].any():
            image = torch.where(masks[:, k].unsqueeze(1), color[:, k].view(-1, 3, 1, 1), image)
    return image


class ShapesDataset(Dataset):
    """Procedural red/blue spatial-relation dataset (see the module docstring for the label rule).

    Args:
        num_samples: number of images (>= 1).
        image_size: side length H = W in pixels, int in [32, 224].
        difficulty: 0/1/2 or "easy"/"medium"/"hard".
        seed: int >= 0. Together with ``split`` and ``difficulty`` it fixes every scene.
        split: "train", "val" or "test" (independent random streams: splits never share a scene).
        transform: optional callable applied to the float image tensor ``(3, H, W)`` after
            normalisation. It does not see the masks, so keep it photometric if you use masks.
        normalize: ``(x - mean) / std`` (ImageNet statistics by default); False gives [0, 1].
        mean, std: per-channel statistics used when ``normalize`` is True.
        with_masks: ``ds[i]`` returns a ``Sample`` instead of ``(image, label)``.
        precompute: render all images into a uint8 cache at construction (``N*3*H*W`` bytes) for fast
            ``__getitem__``; otherwise each image is rendered on access (bitwise the same pixels).

    Attributes: ``labels`` (int64 ``(N,)``), ``class_names``, ``num_classes`` (4), ``max_objects`` (6),
    ``difficulty`` (int), ``image_size``, ``split``, ``seed``.
    ``ds[i]`` -> ``(image float32 (3,H,W), label int)``; ``ds.sample(i)`` -> ``Sample`` with masks
    ``(6,H,W)`` (slot 0 red, 1 blue, 2..5 distractors or empty) and evidence ``masks[0] | masks[1]``.
    """

    class_names = CLASS_NAMES
    num_classes = len(CLASS_NAMES)
    max_objects = MAX_OBJECTS

    def __init__(
        self,
        num_samples: int = 10_000,
        image_size: int = 64,
        difficulty: int | str = "easy",
        seed: int = 0,
        split: str = "train",
        transform: Callable[[Tensor], Tensor] | None = None,
        normalize: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        with_masks: bool = False,
        precompute: bool = True,
    ) -> None:
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.image_size = _check_image_size(image_size)
        self.difficulty = _check_difficulty(difficulty)
        self.seed = _check_int("seed", seed, 0)
        self.split = _check_choice("split", split, SPLITS)
        self.transform, self.normalize, self.with_masks = transform, normalize, with_masks
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

        blocks = [
            _sample_block(np.random.default_rng([self.seed, SPLITS.index(self.split), self.difficulty, b]),
                          _BLOCK, self.difficulty)
            for b in range(-(-self.num_samples // _BLOCK))
        ]
        self._params: dict[str, Tensor] = {}
        for key in blocks[0]:
            arr = np.concatenate([blk[key] for blk in blocks])[: self.num_samples]
            self._params[key] = torch.from_numpy(arr.astype(np.float32) if arr.dtype == np.float64 else arr)
        self.labels: Tensor = self._params["label"].long()
        self._cache: Tensor | None = None  # uint8 (N, 3, H, W)
        if precompute:
            self._cache = self._render(torch.arange(self.num_samples), masks=False)[0]

    def __len__(self) -> int:
        return self.num_samples

    def _render(self, idx: Tensor, image: bool = True, masks: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """(uint8 images ``(B,3,H,W)``, bool masks ``(B,K,H,W)``) for the indices ``idx``; either may be
        skipped (None). Rendered in chunks of 128 (cache-friendly); cached images are reused."""
        size, use_cache = self.image_size, image and self._cache is not None
        ims, ms = [], []
        for chunk in idx.split(128):
            m = _render_masks(self._params, chunk, size) if masks or (image and not use_cache) else None
            if image:
                ims.append(self._cache[chunk] if use_cache else _render_images(self._params, chunk, size, m))
            if masks:
                ms.append(m)
        return (torch.cat(ims) if image else None), (torch.cat(ms) if masks else None)

    def _finish(self, images: Tensor) -> Tensor:
        x = _to_float(images, self.normalize, self.mean, self.std)
        if self.transform is None:
            return x
        return torch.stack([self.transform(im) for im in x]) if x.dim() == 4 else self.transform(x)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | Sample:
        i = _check_index(index, self.num_samples)
        if self.with_masks:
            return self.sample(i)
        img = self._cache[i] if self._cache is not None else self._render(torch.tensor([i]), masks=False)[0][0]
        return self._finish(img), int(self.labels[i])

    def sample(self, index: int) -> Sample:
        """``Sample(image (3,H,W), label int, masks bool (6,H,W), evidence_mask bool (H,W))``."""
        i = _check_index(index, self.num_samples)
        images, masks = self._render(torch.tensor([i]))
        return Sample(self._finish(images[0]), int(self.labels[i]), masks[0], masks[0, 0] | masks[0, 1])

    def batch(self, indices: Sequence[int] | Tensor) -> Sample:
        """Batched ``Sample``: image ``(B,3,H,W)``, label int64 ``(B,)``, masks ``(B,6,H,W)``, evidence ``(B,H,W)``."""
        idx = torch.tensor([_check_index(i, self.num_samples) for i in torch.as_tensor(indices).reshape(-1).tolist()],
                           dtype=torch.long)
        images, masks = self._render(idx)
        return Sample(self._finish(images), self.labels[idx], masks, masks[:, 0] | masks[:, 1])

    def images_uint8(self, indices: Sequence[int] | Tensor | None = None) -> Tensor:
        """Raw rendered pixels, uint8 ``(B, 3, H, W)`` (all images when ``indices`` is None)."""
        idx = torch.arange(self.num_samples) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        idx = idx.reshape(-1)
        return self._render(idx, masks=False)[0]

    def __repr__(self) -> str:
        return (f"ShapesDataset(num_samples={self.num_samples}, image_size={self.image_size}, "
                f"difficulty={DIFFICULTIES[self.difficulty]!r}, seed={self.seed}, split={self.split!r})")


def make_shapes_splits(
    num_train: int = 8_000,
    num_val: int = 1_000,
    num_test: int = 1_000,
    image_size: int = 64,
    difficulty: int | str = "easy",
    seed: int = 0,
    **kwargs: Any,
) -> tuple[ShapesDataset, ShapesDataset, ShapesDataset]:
    """``(train, val, test)`` ShapesDatasets with the same settings; extra kwargs go to ``ShapesDataset``."""
    return tuple(  # type: ignore[return-value]
        ShapesDataset(n, image_size, difficulty, seed, split, **kwargs)
        for n, split in ((num_train, "train"), (num_val, "val"), (num_test, "test"))
    )


# ----------------------------------------------------------------------------- digits
@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


class DigitsDataset(Dataset):
    """sklearn's bundled handwritten digits (1797 real 8x8 images, 10 classes), upsampled bilinearly.

    White ink on black, replicated to 3 channels. Splits are a seeded, class-stratified partition of
    all 1797 images (about 70 / 15 / 15 %), disjoint and together complete for a given ``seed``.

    Args:
        split: "train", "val" or "test".
        image_size: int in [32, 224].
        seed: int >= 0, fixes the partition.
        transform, normalize, mean, std, with_masks: as in ``ShapesDataset``.
        threshold: ink level in [0, 1] above which an upsampled pixel belongs to the evidence mask.

    ``ds[i]`` -> ``(image float32 (3,H,W), label int)``; ``ds.sample(i)`` -> ``Sample`` with masks
    ``(1,H,W)`` and evidence ``(H,W)`` = upsampled ink > ``threshold``. ``indices``: positions in
    ``sklearn.datasets.load_digits()`` of this split's images.
    """

    class_names = tuple(str(d) for d in range(10))
    num_classes = 10
    max_objects = 1
    fractions = {"train": 0.70, "val": 0.15, "test": 0.15}

    def __init__(
        self,
        split: str = "train",
        image_size: int = 32,
        seed: int = 0,
        transform: Callable[[Tensor], Tensor] | None = None,
        normalize: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        with_masks: bool = False,
        threshold: float = 0.5,
    ) -> None:
        self.split = _check_choice("split", split, SPLITS)
        self.image_size = _check_image_size(image_size)
        self.seed = _check_int("seed", seed, 0)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        self.transform, self.normalize, self.with_masks, self.threshold = transform, normalize, with_masks, threshold
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        images, targets = _load_digits()
        self.indices = _split_indices(targets, self.seed, self.fractions["val"], self.fractions["test"])[self.split]
        self._images = torch.from_numpy(images[self.indices])  # (N, 8, 8) in [0, 1]
        self.labels: Tensor = torch.from_numpy(targets[self.indices])

    def __len__(self) -> int:
        return len(self.indices)

    def _ink(self, idx: Tensor) -> Tensor:
        """Upsampled ink in [0, 1], float32 ``(B, H, W)``."""
        up = F.interpolate(self._images[idx].unsqueeze(1), size=(self.image_size,) * 2, mode="bilinear",
                           align_corners=False)
        return up.squeeze(1).clamp(0.0, 1.0)

    def _finish(self, ink: Tensor) -> Tensor:
        x = ink.unsqueeze(-3).expand(*ink.shape[:-2], 3, *ink.shape[-2:])
        x = (x - self.mean) / self.std if self.normalize else x.contiguous()
        if self.transform is None:
            return x
        return torch.stack([self.transform(im) for im in x]) if x.dim() == 4 else self.transform(x)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | Sample:
        i = _check_index(index, len(self))
        if self.with_masks:
            return self.sample(i)
        return self._finish(self._ink(torch.tensor([i]))[0]), int(self.labels[i])

    def sample(self, index: int) -> Sample:
        """``Sample(image (3,H,W), label int, masks bool (1,H,W), evidence_mask bool (H,W))``."""
        i = _check_index(index, len(self))
        ink = self._ink(torch.tensor([i]))[0]
        evidence = ink > self.threshold
        return Sample(self._finish(ink), int(self.labels[i]), evidence.unsqueeze(0), evidence)

    def batch(self, indices: Sequence[int] | Tensor) -> Sample:
        """Batched ``Sample``: image ``(B,3,H,W)``, label ``(B,)``, masks ``(B,1,H,W)``, evidence ``(B,H,W)``."""
        idx = torch.tensor([_check_index(i, len(self)) for i in torch.as_tensor(indices).reshape(-1).tolist()],
                           dtype=torch.long)
        ink = self._ink(idx)
        evidence = ink > self.threshold
        return Sample(self._finish(ink), self.labels[idx], evidence.unsqueeze(1), evidence)


# ----------------------------------------------------------------------------- Fashion-MNIST
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
# statistics of the 60,000 official training images (pixels / 255)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
# where Debian's package `dataset-fashion-mnist` installs the gzipped IDX files
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array: magic 0x0000 0x08 ndim, then ndim big-endian sizes."""
    import gzip

    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    if raw[:3] != b"\x00\x00\x08" or not 1 <= ndim <= 3:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise ValueError(f"{path} is truncated: {data.size} bytes for shape {shape}")
    return data.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``folder`` or torchvision's ``folder/FashionMNIST/raw``, else None."""
    for d in (folder, folder / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


@functools.lru_cache(maxsize=4)
def load_fashion_mnist(official_split: str = "train", root: str | None = None,
                       download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The official Fashion-MNIST ``"train"`` (60,000) or ``"test"`` (10,000) images and labels.

    Returns ``(images uint8 (N, 28, 28), labels int64 (N,))``. Looks in ``root`` (the IDX files, gzipped
    or not, or torchvision's ``root/FashionMNIST/raw`` layout) when given, else in
    ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``). With ``download`` and a
    ``root``, missing files are downloaded there by ``torchvision.datasets.FashionMNIST``.
    """
    images_stem, labels_stem = _FASHION_FILES[_check_choice("official_split", official_split, tuple(_FASHION_FILES))]
    folder = Path(root).expanduser() if root is not None else FASHION_MNIST_SYSTEM_DIR
    found = [_find_idx(folder, s) for s in (images_stem, labels_stem)]
    if None in found and download:
        if root is None:
            raise ValueError("download=True needs a data root to download Fashion-MNIST into (--data-root DIR)")
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(folder), train=official_split == "train", download=True)
        found = [_find_idx(folder, s) for s in (images_stem, labels_stem)]
    if None in found:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder}: install Debian's package (apt-get install dataset-fashion-mnist), "
            "or pass --data-root DIR --download (download=True) to fetch it with torchvision")
    images, labels = _read_idx(found[0]), _read_idx(found[1]).astype(np.int64)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST files in {folder} have images {images.shape} and labels {labels.shape}")
    return images, labels


class FashionMNISTDataset(Dataset):
    """Fashion-MNIST (Zalando): 28x28 grey article images, 10 clothing classes.

    Splits: "test" is the official 10,000-image test set; "train" and "val" partition the official
    60,000 training images, with ``val_fraction`` (10 %, i.e. 6,000 images) held out by a seeded,
    class-stratified draw (``seed``). The data is read from Debian's ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``), or from ``root`` (see ``load_fashion_mnist``).

    Args:
        split: "train", "val" or "test".
        image_size: H = W in pixels, int in [28, 224]; other sizes than 28 are resized bilinearly
            (antialiased), as timm's transform does.
        in_chans: 1 (grey) or 3 (grey replicated, for RGB models).
        mean, std: per-channel statistics (one value is replicated); default: Fashion-MNIST's own.
        normalize: ``(x - mean) / std``; False gives [0, 1].
        augment: random horizontal flip and a random shift of up to 2 px (``augment_shift``, zero
            padded), drawn from torch's global RNG (so a resumed run replays it). Meant for "train".
        num_samples: keep only the first ``num_samples`` images of the split (None: all of them).
        root, download, seed: where the files are, whether torchvision may download them, the val draw.
        threshold: ink level in [0, 1) above which a pixel belongs to the article (the evidence mask).

    ``ds[i]`` -> ``(image float32 (C,H,W), label int)``; ``ds.sample(i)`` / ``ds.batch(indices)`` give
    ``Sample``s whose evidence mask is the article's silhouette (pixels above ``threshold``);
    ``ds.images_uint8(indices)`` -> uint8 ``(B, 3, H, W)`` pixels for display; ``ds.indices``: positions
    in the official training or test set; ``ds.labels``, ``ds.class_names``, ``ds.num_classes``.
    """

    class_names = FASHION_MNIST_CLASSES
    num_classes = 10
    max_objects = 1
    val_fraction = 0.1

    def __init__(
        self,
        split: str = "train",
        image_size: int = 28,
        in_chans: int = 3,
        mean: Sequence[float] = FASHION_MNIST_MEAN,
        std: Sequence[float] = FASHION_MNIST_STD,
        normalize: bool = True,
        augment: bool = False,
        num_samples: int | None = None,
        root: str | os.PathLike | None = None,
        download: bool = False,
        seed: int = 0,
        with_masks: bool = False,
        threshold: float = 0.25,
        augment_shift: int = 2,
    ) -> None:
        self.split = _check_choice("split", split, SPLITS)
        self.image_size = _check_image_size(image_size, 28, MAX_IMAGE_SIZE)
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans!r}")
        self.in_chans, self.seed = in_chans, _check_int("seed", seed, 0)
        self.normalize, self.augment, self.with_masks = normalize, augment, with_masks
        self.augment_shift = _check_int("augment_shift", augment_shift, 0)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        self.threshold = threshold
        self.mean = _channel_stats("mean", mean, in_chans)
        self.std = _channel_stats("std", std, in_chans)
        images, labels = load_fashion_mnist("test" if self.split == "test" else "train",
                                            None if root is None else str(root), download)
        if self.split == "test":
            indices = np.arange(len(labels))
        else:
            indices = _split_indices(labels, self.seed, self.val_fraction, 0.0)[self.split]
        if num_samples is not None:
            indices = indices[:_check_int("num_samples", num_samples, 1)]
        self.indices = indices
        self._images = torch.from_numpy(images[indices])  # uint8 (N, 28, 28)
        self.labels: Tensor = torch.from_numpy(labels[indices])

    def __len__(self) -> int:
        return len(self.indices)

    def _pixels(self, idx: Tensor) -> Tensor:
        """float32 ``(B, H, W)`` in [0, 1] at ``image_size``."""
        x = self._images[idx].float().div_(255.0)
        if self.image_size != 28:
            x = F.interpolate(x.unsqueeze(1), size=(self.image_size,) * 2, mode="bilinear", align_corners=False,
                              antialias=True).squeeze(1).clamp_(0.0, 1.0)
        return x

    def _augment(self, x: Tensor) -> Tensor:
        """Random horizontal flip and shift (zero padded) per image, from torch's global RNG. x: (B, H, W)."""
        B, H, W = x.shape
        flip = torch.rand(B) < 0.5
        x = torch.where(flip.view(B, 1, 1), x.flip(-1), x)
        s = self.augment_shift
        if s == 0:
            return x
        shifts = torch.randint(-s, s + 1, (B, 2))
        padded = F.pad(x, (s, s, s, s))
        return torch.stack([padded[b, s + dy:s + dy + H, s + dx:s + dx + W]
                            for b, (dy, dx) in enumerate(shifts.tolist())])

    def _finish(self, x: Tensor) -> Tensor:
        """``(B, H, W)`` in [0, 1] -> float32 ``(B, C, H, W)``, normalised if asked."""
        x = x.unsqueeze(1).expand(-1, self.in_chans, -1, -1)
        return (x - self.mean) / self.std if self.normalize else x.contiguous()

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, int]]:
        """A batch at once (``DataLoader`` uses it): ``[(image (C,H,W), label), ...]``."""
        idx = torch.tensor([_check_index(i, len(self)) for i in indices], dtype=torch.long)
        x = self._pixels(idx)
        if self.augment:
            x = self._augment(x)
        return list(zip(self._finish(x).unbind(0), self.labels[idx].tolist()))

    def __getitem__(self, index: int) -> tuple[Tensor, int] | Sample:
        if self.with_masks:
            return self.sample(index)
        return self.__getitems__([index])[0]

    def sample(self, index: int) -> Sample:
        """``Sample(image (C,H,W), label int, masks bool (1,H,W), evidence_mask bool (H,W))`` (no augmentation)."""
        s = self.batch([index])
        return Sample(s.image[0], int(s.label[0]), s.masks[0], s.evidence_mask[0])

    def batch(self, indices: Sequence[int] | Tensor) -> Sample:
        """Batched ``Sample`` (no augmentation): image ``(B,C,H,W)``, label ``(B,)``, masks ``(B,1,H,W)``,
        evidence ``(B,H,W)`` = the article's pixels above ``threshold``."""
        idx = torch.tensor([_check_index(i, len(self)) for i in torch.as_tensor(indices).reshape(-1).tolist()],
                           dtype=torch.long)
        x = self._pixels(idx)
        evidence = x > self.threshold
        return Sample(self._finish(x), self.labels[idx], evidence.unsqueeze(1), evidence)

    def images_uint8(self, indices: Sequence[int] | Tensor | None = None) -> Tensor:
        """Pixels for display at ``image_size``, uint8 ``(B, 3, H, W)`` (all images when ``indices`` is None)."""
        idx = torch.arange(len(self)) if indices is None else torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        x = (self._pixels(idx) * 255.0).round_().to(torch.uint8)
        return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()

    def __repr__(self) -> str:
        return (f"FashionMNISTDataset(split={self.split!r}, num_samples={len(self)}, image_size={self.image_size}, "
                f"in_chans={self.in_chans}, augment={self.augment}, seed={self.seed})")


def _channel_stats(name: str, values: Sequence[float], in_chans: int) -> Tensor:
    """Per-channel statistics as ``(C, 1, 1)``; one value is replicated to every channel."""
    v = [float(x) for x in values]
    if len(v) == 1:
        v = v * in_chans
    if len(v) != in_chans:
        raise ValueError(f"{name} must have 1 or {in_chans} values, got {list(values)!r}")
    return torch.tensor(v, dtype=torch.float32).view(in_chans, 1, 1)


# ----------------------------------------------------------------------------- CIFAR / ImageFolder
class LabeledSubset(Dataset):
    """``(image, label)`` view of ``dataset`` restricted to ``indices``, with ``class_names``,
    ``num_classes`` and ``labels`` (int64 ``(N,)``) like the other datasets here."""

    def __init__(self, dataset: Dataset, indices: Sequence[int] | np.ndarray, class_names: Sequence[str],
                 targets: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.labels: Tensor = torch.as_tensor(np.asarray(targets, dtype=np.int64)[self.indices])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.dataset[int(self.indices[_check_index(index, len(self))])]


def _image_transform(image_size: int, is_training: bool, normalize: bool, cfg: dict[str, Any] | None) -> Callable:
    """timm's transform for ``cfg`` (from a model) if given, else resize + crop (+ pad-crop/flip when training)."""
    if cfg is not None:
        from timm.data import create_transform

        cfg = {**cfg, "input_size": (3, image_size, image_size)}
        return create_transform(**cfg, is_training=is_training, normalize=normalize)
    from torchvision import transforms as T

    ops: list[Any] = [T.Resize(image_size, antialias=True)]
    if is_training:
        ops += [T.RandomCrop(image_size, padding=image_size // 8, padding_mode="reflect"), T.RandomHorizontalFlip()]
    else:
        ops += [T.CenterCrop(image_size)]
    ops.append(T.ToTensor())
    if normalize:
        ops.append(T.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return T.Compose(ops)


def _build_cifar(name: str, root: Path, split: str, transform: Callable, download: bool, seed: int) -> LabeledSubset:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    where = root / cls.base_folder
    hint = (f"{name} not found (or incomplete) in {where}; pass --download (download=True in Python) to download "
            f"it into {root}")
    if not download and not where.is_dir():
        raise FileNotFoundError(hint)
    try:
        base = cls(str(root), train=split != "test", transform=transform, download=download)
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
        raise FileNotFoundError(hint) from e
    if split == "test":
        indices = np.arange(len(base))
    else:  # 10 % of the official training set, stratified and seeded, is held out as "val"
        indices = _split_indices(np.asarray(base.targets), seed, 0.1, 0.0)[split]
    return LabeledSubset(base, indices, base.classes, base.targets)


def _build_imagefolder(root: Path, split: str, transform: Callable, seed: int) -> LabeledSubset:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder root {root} does not exist or is not a directory")
    split_dirs = [s for s in SPLITS if (root / s).is_dir()]
    folder = root / split if split_dirs else root
    if split_dirs and not folder.is_dir():
        raise FileNotFoundError(f"split folder {folder} not found (root {root} has split folders {split_dirs})")

    def has_images(d: Path) -> bool:
        return any(p.is_file() and p.suffix.lower() in IMG_EXTENSIONS for p in d.rglob("*"))

    if not has_images(folder):
        raise ValueError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {folder}")
    if not any(d.is_dir() and has_images(d) for d in folder.iterdir()):
        raise ValueError(f"images in {folder} must be in one sub-folder per class: {folder}/<class>/<image>")
    base = ImageFolder(str(folder), transform=transform, allow_empty=True)
    if split_dirs:
        indices = np.arange(len(base))
    else:  # one folder for everything: stratified, seeded 80 / 10 / 10 partition
        indices = _split_indices(np.asarray(base.targets), seed, 0.1, 0.1)[split]
    return LabeledSubset(base, indices, base.classes, base.targets)


def _model_image_size(model: torch.nn.Module, cfg: dict[str, Any]) -> int:
    """The size ``model`` was built for: ``patch_embed.img_size`` (timm ViTs, e.g. ``img_size=32``; their
    ``pretrained_cfg`` still says 224), else the data config's ``input_size``."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    return int(cfg["input_size"][-1])


def data_config(name: str, image_size: int, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The timm data config of a model trained by mkviz on dataset ``name`` at ``image_size``.

    ``model_cfg``: the model's own config (``timm.data.resolve_model_data_config(model)``). The result
    (``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``, ``crop_mode``) makes
    ``timm.data.create_transform(**cfg)`` reproduce the training-time preprocessing: in-memory
    datasets (shapes, digits, Fashion-MNIST) are fed at their own size without a crop (``crop_pct``
    1.0, bilinear), Fashion-MNIST with its own mean/std; CIFAR and ImageFolder get timm's transform
    with the model's statistics and crop at ``image_size``.
    """
    name = _check_choice("name", name, DATASET_NAMES)
    in_chans = int(model_cfg["input_size"][0])
    cfg = {"input_size": (in_chans, int(image_size), int(image_size)), "mean": tuple(model_cfg["mean"]),
           "std": tuple(model_cfg["std"]), "interpolation": model_cfg.get("interpolation", "bicubic"),
           "crop_pct": float(model_cfg.get("crop_pct", 0.875)), "crop_mode": model_cfg.get("crop_mode", "center")}
    if name in IN_MEMORY_DATASETS:
        cfg.update(interpolation="bilinear", crop_pct=1.0, crop_mode="center")
    if name == "fashion-mnist":
        cfg.update(mean=FASHION_MNIST_MEAN * in_chans, std=FASHION_MNIST_STD * in_chans)
    return cfg


def build_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    model: torch.nn.Module | None = None,
    *,
    seed: int = 0,
    normalize: bool = True,
    with_masks: bool = False,
    **kwargs: Any,
) -> Dataset:
    """One entry point for every dataset; ``ds[i]`` is always ``(image float32 (3,H,W), label int)``.

    Args:
        name: "shapes", "digits", "fashion-mnist", "cifar10", "cifar100" or "imagefolder" (case-insensitive).
        root: data folder. CIFAR: where ``cifar-10-batches-py`` / ``cifar-100-python`` live (None:
            ``default_data_root()``). ImageFolder (required): ``root/<class>/<image>``, or
            ``root/{train,val,test}/<class>/<image>`` (e.g. Imagenette). Fashion-MNIST: a folder holding
            its IDX files (None: Debian's ``/usr/share/datasets/fashion-mnist``). Ignored for shapes/digits.
        split: "train", "val" or "test". CIFAR: train/val = stratified 90/10 partition of the official
            training set, test = the official test set. ImageFolder without split folders: stratified
            80/10/10 partition. All partitions are seeded by ``seed``.
        image_size: H = W. None: the model's input size if ``model`` is given (``patch_embed.img_size``
            when it has one, else its data config's ``input_size``), else 64 (shapes),
            32 (digits, CIFAR), 224 (ImageFolder).
        download: CIFAR and Fashion-MNIST; False (default) never touches the network and raises
            FileNotFoundError naming the folder it looked in when the data is missing.
        model: optional timm model. CIFAR/ImageFolder use ``timm.data.resolve_data_config({}, model=model)``
            and ``timm.data.create_transform(**cfg, is_training=split == "train")``; shapes/digits take the
            model's mean/std (and input size when ``image_size`` is None).
        seed: seeds scenes (shapes) or partitions (others).
        normalize: normalise with mean/std (ImageNet unless the model says otherwise); False gives [0, 1].
        with_masks: shapes/digits/fashion-mnist only: ``ds[i]`` returns a ``Sample``.
        **kwargs: shapes: ``num_samples``, ``difficulty``, ``transform``, ``precompute``; digits:
            ``transform``, ``threshold``; fashion-mnist: ``num_samples``, ``augment``, ``in_chans``,
            ``threshold`` (its mean/std/channels come from ``model`` when given, else its own statistics);
            CIFAR/ImageFolder: ``transform`` (replaces the default one).

    Returns: a Dataset with ``class_names``, ``num_classes`` and ``labels``.
    """
    name = _check_choice("name", name, DATASET_NAMES)
    split = _check_choice("split", split, SPLITS)
    cfg = None
    if model is not None:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        if image_size is None:
            image_size = _model_image_size(model, cfg)
    if name == "fashion-mnist":
        if cfg is not None:
            kwargs = {"mean": cfg["mean"], "std": cfg["std"], "in_chans": int(cfg["input_size"][0]), **kwargs}
        return FashionMNISTDataset(split=split, image_size=image_size if image_size is not None else 28,
                                   root=root, download=download, seed=seed, normalize=normalize,
                                   with_masks=with_masks, **kwargs)
    if name in ("shapes", "digits"):
        stats = {} if cfg is None else {"mean": cfg["mean"], "std": cfg["std"]}
        cls = ShapesDataset if name == "shapes" else DigitsDataset
        size = image_size if image_size is not None else (64 if name == "shapes" else 32)
        return cls(split=split, image_size=size, seed=seed, normalize=normalize, with_masks=with_masks,
                   **stats, **kwargs)

    if with_masks:
        raise ValueError(f"with_masks=True is only available for {list(IN_MEMORY_DATASETS)}, not {name!r}")
    unknown = set(kwargs) - {"transform"}
    if unknown:
        raise TypeError(f"unexpected arguments for {name!r}: {sorted(unknown)}")
    size = _check_image_size(image_size if image_size is not None else (32 if name.startswith("cifar") else 224),
                             8, 1024)
    _check_int("seed", seed, 0)
    transform = kwargs.get("transform") or _image_transform(size, split == "train", normalize, cfg)
    if name == "imagefolder":
        if root is None:
            raise ValueError("root is required for name='imagefolder' (a folder of <class>/<image> files)")
        return _build_imagefolder(Path(root).expanduser(), split, transform, seed)
    return _build_cifar(name, Path(root).expanduser() if root is not None else default_data_root(), split,
                        transform, download, seed)
