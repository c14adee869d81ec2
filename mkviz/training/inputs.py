"""What a run trains on: the datasets a TrainConfig names (with the model's data config), and the sampler that
makes the batch order a pure function of (seed, epoch).
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from ..data.registry import build_dataset
from .config import TrainConfig, data_seed_of

__all__ = ["build_datasets", "EpochBatchSampler"]


def build_datasets(cfg: TrainConfig, model: Optional[nn.Module] = None, splits: Sequence[str] = ("train", "val")
                   ) -> dict[str, Dataset]:
    """The datasets of a (resolved) config, transformed for `model` (mean/std, input size)."""
    out: dict[str, Dataset] = {}
    for split in splits:
        kw: dict[str, Any] = {}
        if cfg.dataset == "shapes":
            n = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}[split]
            kw = dict(num_samples=n, difficulty=cfg.difficulty)
        elif cfg.dataset == "fashion-mnist" and split == "train":
            kw = dict(num_samples=cfg.num_train, augment=cfg.augment)
        elif cfg.dataset in ("fashion-mnist", "fashion-scenes"):
            kw = dict(num_samples=cfg.num_train if split == "train" else cfg.num_eval)
        out[split] = build_dataset(cfg.dataset, cfg.data_root, split, cfg.image_size, cfg.download, model=model,
                                   seed=data_seed_of(cfg), **kw)
        if len(out[split]) == 0:
            raise ValueError(f"dataset {cfg.dataset!r} split {split!r} has no images")
    return out

class EpochBatchSampler(Sampler):
    """This rank's batches of one epoch, a pure function of (seed, epoch): batch s is
    `perm[s*G + rank*b : s*G + (rank+1)*b]` with G = b·world_size; batches before `start` are skipped."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        self.n, self.b, self.seed, self.epoch, self.rank, self.world, self.start = \
            n, batch_size, seed, epoch, rank, world_size, start
        self.num_batches = n // (batch_size * world_size)

    def __len__(self) -> int:
        return self.num_batches - self.start

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        G = self.b * self.world
        for s in range(self.start, self.num_batches):
            lo = s * G + self.rank * self.b
            yield perm[lo:lo + self.b]
