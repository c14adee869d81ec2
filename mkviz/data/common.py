"""What every dataset of mkviz shares: the sample structure (`Sample`, `collate`), the splits, the image-size bounds,
the argument checks, and the stratified seeded split of a labelled set.

``dataset[i]`` is ``(image, label)`` for **every** dataset (image: float32 ``(3, H, W)``, label: int), so one
training loop consumes them all. Datasets with ground truth (shapes, digits) also offer ``ds.sample(i) -> Sample``,
``with_masks=True`` (then ``ds[i]`` is that ``Sample``) and ``ds.batch(indices) -> Sample``.
"""
from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

__all__ = [
    "Sample", "collate", "default_data_root", "DIFFICULTIES", "SPLITS", "IMAGENET_MEAN", "IMAGENET_STD",
    "check_image_size", "check_difficulty", "check_int", "check_index", "to_float", "split_indices",
    "channel_stats",
]


IMAGENET_MEAN = (0.485, 0.456, 0.406)

IMAGENET_STD = (0.229, 0.224, 0.225)

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 224

SPLITS = ("train", "val", "test")

DIFFICULTIES = ("easy", "medium", "hard")

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
def check_image_size(image_size: Any, lo: int = MIN_IMAGE_SIZE, hi: int = MAX_IMAGE_SIZE) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not lo <= image_size <= hi:
        raise ValueError(f"image_size must be an int in [{lo}, {hi}], got {image_size!r}")
    return int(image_size)

def check_difficulty(difficulty: Any) -> int:
    if isinstance(difficulty, str) and difficulty.lower() in DIFFICULTIES:
        return DIFFICULTIES.index(difficulty.lower())
    if isinstance(difficulty, (int, np.integer)) and not isinstance(difficulty, bool) and 0 <= difficulty <= 2:
        return int(difficulty)
    raise ValueError(f"difficulty must be one of 0, 1, 2 or {list(DIFFICULTIES)}, got {difficulty!r}")

def check_int(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)

def check_index(index: Any, n: int) -> int:
    i = operator.index(index)
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for dataset of size {n}")
    return i % n

def to_float(images: Tensor, normalize: bool, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 ``(..., 3, H, W)`` -> float32 in [0, 1], then ``(x - mean) / std`` if ``normalize``."""
    x = images.float().div_(255.0)
    return (x - mean) / std if normalize else x

def split_indices(labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
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

def channel_stats(name: str, values: Sequence[float], in_chans: int) -> Tensor:
    """Per-channel statistics as ``(C, 1, 1)``; one value is replicated to every channel."""
    v = [float(x) for x in values]
    if len(v) == 1:
        v = v * in_chans
    if len(v) != in_chans:
        raise ValueError(f"{name} must have 1 or {in_chans} values, got {list(values)!r}")
    return torch.tensor(v, dtype=torch.float32).view(in_chans, 1, 1)
