"""Fashion-MNIST: the IDX reader, the official splits, channels and sizes, augmentation.

The files are looked for in Debian's package dataset-fashion-mnist (``FASHION_MNIST_SYSTEM_DIR``) or in ``root``.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Sequence
import gzip

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..core.checks import check_choice
from .common import (MAX_IMAGE_SIZE, Sample, SPLITS, channel_stats, check_image_size, check_index, check_int,
                     split_indices)

__all__ = [
    "FashionMNISTDataset", "load_fashion_mnist", "FASHION_MNIST_CLASSES", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
    "FASHION_MNIST_SYSTEM_DIR",
]


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
    images_stem, labels_stem = _FASHION_FILES[check_choice("official_split", official_split, tuple(_FASHION_FILES), ignore_case=True)]
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
        self.split = check_choice("split", split, SPLITS, ignore_case=True)
        self.image_size = check_image_size(image_size, 28, MAX_IMAGE_SIZE)
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans!r}")
        self.in_chans, self.seed = in_chans, check_int("seed", seed, 0)
        self.normalize, self.augment, self.with_masks = normalize, augment, with_masks
        self.augment_shift = check_int("augment_shift", augment_shift, 0)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        self.threshold = threshold
        self.mean = channel_stats("mean", mean, in_chans)
        self.std = channel_stats("std", std, in_chans)
        images, labels = load_fashion_mnist("test" if self.split == "test" else "train",
                                            None if root is None else str(root), download)
        if self.split == "test":
            indices = np.arange(len(labels))
        else:
            indices = split_indices(labels, self.seed, self.val_fraction, 0.0)[self.split]
        if num_samples is not None:
            indices = indices[:check_int("num_samples", num_samples, 1)]
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
        idx = torch.tensor([check_index(i, len(self)) for i in indices], dtype=torch.long)
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
        idx = torch.tensor([check_index(i, len(self)) for i in torch.as_tensor(indices).reshape(-1).tolist()],
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
