"""The procedural spatial-relation "shapes" dataset (``ShapesDataset``).

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
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..core.checks import check_choice
from .common import (DIFFICULTIES, IMAGENET_MEAN, IMAGENET_STD, Sample, SPLITS, check_difficulty, check_image_size,
                     check_index, check_int, to_float)

__all__ = ["ShapesDataset", "make_shapes_splits", "CLASS_NAMES", "SHAPE_KINDS", "MAX_OBJECTS"]


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
        self.num_samples = check_int("num_samples", num_samples, 1)
        self.image_size = check_image_size(image_size)
        self.difficulty = check_difficulty(difficulty)
        self.seed = check_int("seed", seed, 0)
        self.split = check_choice("split", split, SPLITS, ignore_case=True)
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
        x = to_float(images, self.normalize, self.mean, self.std)
        if self.transform is None:
            return x
        return torch.stack([self.transform(im) for im in x]) if x.dim() == 4 else self.transform(x)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | Sample:
        i = check_index(index, self.num_samples)
        if self.with_masks:
            return self.sample(i)
        img = self._cache[i] if self._cache is not None else self._render(torch.tensor([i]), masks=False)[0][0]
        return self._finish(img), int(self.labels[i])

    def sample(self, index: int) -> Sample:
        """``Sample(image (3,H,W), label int, masks bool (6,H,W), evidence_mask bool (H,W))``."""
        i = check_index(index, self.num_samples)
        images, masks = self._render(torch.tensor([i]))
        return Sample(self._finish(images[0]), int(self.labels[i]), masks[0], masks[0, 0] | masks[0, 1])

    def batch(self, indices: Sequence[int] | Tensor) -> Sample:
        """Batched ``Sample``: image ``(B,3,H,W)``, label int64 ``(B,)``, masks ``(B,6,H,W)``, evidence ``(B,H,W)``."""
        idx = torch.tensor([check_index(i, self.num_samples) for i in torch.as_tensor(indices).reshape(-1).tolist()],
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
