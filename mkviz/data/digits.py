"""sklearn's bundled 8x8 handwritten digits, upsampled to ``image_size`` (evidence = ink pixels)."""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..core.checks import check_choice
from .common import IMAGENET_MEAN, IMAGENET_STD, Sample, SPLITS, check_image_size, check_index, check_int, split_indices
from .shapes import ShapesDataset

__all__ = ["DigitsDataset"]


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
        self.split = check_choice("split", split, SPLITS, ignore_case=True)
        self.image_size = check_image_size(image_size)
        self.seed = check_int("seed", seed, 0)
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        self.transform, self.normalize, self.with_masks, self.threshold = transform, normalize, with_masks, threshold
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        images, targets = _load_digits()
        self.indices = split_indices(targets, self.seed, self.fractions["val"], self.fractions["test"])[self.split]
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
        i = check_index(index, len(self))
        if self.with_masks:
            return self.sample(i)
        return self._finish(self._ink(torch.tensor([i]))[0]), int(self.labels[i])

    def sample(self, index: int) -> Sample:
        """``Sample(image (3,H,W), label int, masks bool (1,H,W), evidence_mask bool (H,W))``."""
        i = check_index(index, len(self))
        ink = self._ink(torch.tensor([i]))[0]
        evidence = ink > self.threshold
        return Sample(self._finish(ink), int(self.labels[i]), evidence.unsqueeze(0), evidence)

    def batch(self, indices: Sequence[int] | Tensor) -> Sample:
        """Batched ``Sample``: image ``(B,3,H,W)``, label ``(B,)``, masks ``(B,1,H,W)``, evidence ``(B,H,W)``."""
        idx = torch.tensor([check_index(i, len(self)) for i in torch.as_tensor(indices).reshape(-1).tolist()],
                           dtype=torch.long)
        ink = self._ink(idx)
        evidence = ink > self.threshold
        return Sample(self._finish(ink), self.labels[idx], evidence.unsqueeze(1), evidence)
