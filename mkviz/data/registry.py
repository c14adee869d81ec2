"""Datasets by name: `build_dataset(name, split, ...)` for every dataset of mkviz (shapes, digits, Fashion-MNIST,
Fashion-MNIST scenes, CIFAR-10/100, ImageFolder) and `data_config`, the timm data config a model is trained with.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from timm.data import create_transform
from timm.data import resolve_data_config

from ..core.checks import check_choice
from .common import (IMAGENET_MEAN, IMAGENET_STD, Sample, SPLITS, check_image_size, check_index, check_int,
                     default_data_root, split_indices)
from .digits import DigitsDataset
from .fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD, FashionMNISTDataset
from .scenes import FashionScenesDataset
from .shapes import ShapesDataset

__all__ = ["LabeledSubset", "build_dataset", "DATASET_NAMES", "IN_MEMORY_DATASETS", "DENSE_DATASETS", "data_config"]


DATASET_NAMES = ("shapes", "digits", "fashion-mnist", "fashion-scenes", "cifar10", "cifar100", "imagefolder")

# datasets held in memory as uint8 pixels at their own size (no crop, no timm transform)
IN_MEMORY_DATASETS = ("shapes", "digits", "fashion-mnist", "fashion-scenes")

# datasets whose items are (image, target dict) for detection and segmentation, not (image, label)
DENSE_DATASETS = ("fashion-scenes",)

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
        return self.dataset[int(self.indices[check_index(index, len(self))])]

def _image_transform(image_size: int, is_training: bool, normalize: bool, cfg: dict[str, Any] | None) -> Callable:
    """timm's transform for ``cfg`` (from a model) if given, else resize + crop (+ pad-crop/flip when training)."""
    if cfg is not None:

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
        indices = split_indices(np.asarray(base.targets), seed, 0.1, 0.0)[split]
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
        indices = split_indices(np.asarray(base.targets), seed, 0.1, 0.1)[split]
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
    name = check_choice("name", name, DATASET_NAMES, ignore_case=True)
    in_chans = int(model_cfg["input_size"][0])
    cfg = {"input_size": (in_chans, int(image_size), int(image_size)), "mean": tuple(model_cfg["mean"]),
           "std": tuple(model_cfg["std"]), "interpolation": model_cfg.get("interpolation", "bicubic"),
           "crop_pct": float(model_cfg.get("crop_pct", 0.875)), "crop_mode": model_cfg.get("crop_mode", "center")}
    if name in IN_MEMORY_DATASETS:
        cfg.update(interpolation="bilinear", crop_pct=1.0, crop_mode="center")
    if name in ("fashion-mnist", "fashion-scenes"):
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
    """One entry point for every dataset; ``ds[i]`` is ``(image float32 (3,H,W), label int)``, except for
    "fashion-scenes" (``DENSE_DATASETS``): ``(image float32 (3,H,W), target dict)`` (``FashionScenesDataset``).

    Args:
        name: "shapes", "digits", "fashion-mnist", "fashion-scenes", "cifar10", "cifar100" or "imagefolder"
            (case-insensitive).
        root: data folder. CIFAR: where ``cifar-10-batches-py`` / ``cifar-100-python`` live (None:
            ``default_data_root()``). ImageFolder (required): ``root/<class>/<image>``, or
            ``root/{train,val,test}/<class>/<image>`` (e.g. Imagenette). Fashion-MNIST: a folder holding
            its IDX files (None: Debian's ``/usr/share/datasets/fashion-mnist``). Ignored for shapes/digits.
        split: "train", "val" or "test". CIFAR: train/val = stratified 90/10 partition of the official
            training set, test = the official test set. ImageFolder without split folders: stratified
            80/10/10 partition. All partitions are seeded by ``seed``.
        image_size: H = W. None: the model's input size if ``model`` is given (``patch_embed.img_size``
            when it has one, else its data config's ``input_size``), else 64 (shapes),
            32 (digits, CIFAR), 224 (ImageFolder), 64 (fashion-scenes: the canvas).
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
            fashion-scenes: ``num_samples`` and the scene options of ``FashionScenesDataset`` (mean/std/channels
            as fashion-mnist);
            CIFAR/ImageFolder: ``transform`` (replaces the default one).

    Returns: a Dataset with ``class_names``, ``num_classes`` and ``labels``.
    """
    name = check_choice("name", name, DATASET_NAMES, ignore_case=True)
    split = check_choice("split", split, SPLITS, ignore_case=True)
    cfg = None
    if model is not None:

        cfg = resolve_data_config({}, model=model)
        if image_size is None:
            image_size = _model_image_size(model, cfg)
    if name in ("fashion-mnist", "fashion-scenes") and cfg is not None:
        kwargs = {"mean": cfg["mean"], "std": cfg["std"], "in_chans": int(cfg["input_size"][0]), **kwargs}
    if name == "fashion-scenes":
        if with_masks:
            raise ValueError("with_masks=True does not apply to 'fashion-scenes' (its targets always hold masks)")
        return FashionScenesDataset(split=split, image_size=image_size if image_size is not None else 64, root=root,
                                    download=download, seed=seed, normalize=normalize, **kwargs)
    if name == "fashion-mnist":
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
    size = check_image_size(image_size if image_size is not None else (32 if name.startswith("cifar") else 224),
                             8, 1024)
    check_int("seed", seed, 0)
    transform = kwargs.get("transform") or _image_transform(size, split == "train", normalize, cfg)
    if name == "imagefolder":
        if root is None:
            raise ValueError("root is required for name='imagefolder' (a folder of <class>/<image> files)")
        return _build_imagefolder(Path(root).expanduser(), split, transform, seed)
    return _build_cifar(name, Path(root).expanduser() if root is not None else default_data_root(), split,
                        transform, download, seed)
