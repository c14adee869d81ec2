"""What a training run is asked to do: `TrainConfig` (checked on construction, `resolved()` applies the preset),
the presets, and the model spec and class count a configuration implies.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..core.key import VARIANTS, resolve_variant
from ..data.registry import DATASET_NAMES, DENSE_DATASETS, build_dataset
from .tasks import TASKS

__all__ = ["TrainConfig", "PRESETS", "model_spec", "num_classes_of", "RUNTIME_FIELDS"]


# Small ViTs defined by timm kwargs on top of a timm model name.
PRESETS: dict[str, dict[str, Any]] = {
    # the shipped checkpoints: 32-px shapes, 4x4 patches of 8 px + cls token, 4 blocks of width 64
    "tiny": dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4),
    # Fashion-MNIST at its own 28 px: 7x7 patches of 4 px + cls token, 4 blocks of width 64 (data/README.md)
    "fashion": dict(model="vit_tiny_patch16_224", img_size=28, patch_size=4, embed_dim=64, depth=4, num_heads=4),
    # the Fashion-MNIST scenes at 64 px (segmentation, detection): 8x8 patches of 8 px + cls token, 4 blocks of 64
    "scenes": dict(model="vit_tiny_patch16_224", img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4),
    # for tests and smoke runs: 2 blocks, 4x4 patches of 8 px
    "micro": dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
}

VARIANT_CHOICES = ("baseline",) + VARIANTS

NUM_CLASSES = {"shapes": 4, "digits": 10, "fashion-mnist": 10, "fashion-scenes": 11, "cifar10": 10, "cifar100": 100}

# fields of TrainConfig that do not change the trajectory of a run (may differ when resuming)
RUNTIME_FIELDS = {"out", "resume", "overwrite", "quiet", "compile", "num_workers", "save_every_steps", "keep_last",
                   "log_every", "device", "export", "export_half", "max_steps", "data_root", "download",
                   "deterministic", "optimizer_state", "amp"}

# fields that define the model (checked against --init-from checkpoints)
_MODEL_FIELDS = ("model", "timm_kwargs", "variant", "num_charts", "context_broadcast", "kernel_size", "expand_from",
                 "key_hidden", "task", "head_layers")

@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in every checkpoint's config.json)."""

    # task
    task: str = "classification"              # classification | segmentation | detection (training.tasks.TASKS)
    head_layers: int = 1                      # segmentation: the last N blocks (ViT) / stages (Swin) feed the head
    # model
    model: Optional[str] = None               # timm name; None: the preset's (or "tiny" preset if neither,
    #                                           "scenes" on fashion-scenes)
    preset: Optional[str] = None              # a key of PRESETS (its timm kwargs; explicit timm_kwargs win)
    timm_kwargs: dict = field(default_factory=dict)
    variant: str = "baseline"                 # baseline | vanillak | simplek | spatialk | kua
    num_charts: int = 8
    context_broadcast: bool = False
    kernel_size: int = 1
    expand_from: str = "key"
    ua_weight: float = 0.0                    # KUA unbalanced-atlas weight λ (added to the loss)
    key_hidden: int = 0                       # baseline only: key factorised C_in -> key_hidden -> C (0: off)
    pretrained: bool = False                  # timm pretrained weights (needs internet), converted function-preservingly
    init_from: Optional[str] = None           # start from this mkviz checkpoint's weights
    # data
    dataset: str = "shapes"
    data_root: Optional[str] = None
    download: bool = False
    image_size: Optional[int] = None          # None: the model's input size
    num_train: Optional[int] = None           # shapes: images rendered (None: 8000); fashion-mnist: the first
    #                                           num_train of its training split (None: all 54,000)
    #                                           fashion-scenes: scenes generated (None: 10,000)
    num_val: int = 1000                       # shapes only (fashion-mnist: 6,000 held out of the official train)
    num_test: int = 1000                      # shapes only (fashion-mnist: the official 10,000)
    num_eval: Optional[int] = None            # fashion-mnist: validate and test on the first N images of each
    #                                           split (None: all 6,000 / 10,000); for quick runs;
    #                                           fashion-scenes: val and test scenes (None: 1,000 each)
    difficulty: str = "easy"
    augment: bool = False                     # fashion-mnist: random flips and 2-px shifts of training images
    # optimisation
    epochs: int = 10
    batch_size: int = 64                      # per process; global batch = batch_size × world size
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_steps: Optional[int] = None        # None: 5 % of the total steps
    label_smoothing: float = 0.1
    grad_clip: float = 1.0                    # max global grad norm (0: off)
    amp: Optional[bool] = None                # bf16 autocast; None: on for CUDA, off on CPU
    compile: bool = False
    seed: int = 0                             # the initialisation (and, unless data_seed is set, the data)
    data_seed: Optional[int] = None           # the data: shapes rendered, val split, subset, order
    num_workers: int = 0
    device: Optional[str] = None              # None: cuda (this rank's GPU) if available, else cpu
    deterministic: bool = False               # torch.use_deterministic_algorithms(True)
    # output
    out: str = "outputs/train"
    resume: bool = False
    overwrite: bool = False
    save_every_steps: int = 0                 # also checkpoint every N steps within an epoch (0: epoch ends only)
    keep_last: int = 2                        # training checkpoints kept
    log_every: int = 0                        # append the global-batch loss to steps.jsonl every N steps (0: off)
    max_steps: Optional[int] = None           # stop (with a checkpoint) after this many steps in total
    optimizer_state: bool = True              # False: checkpoints without optimiser state (cannot be resumed)
    export: Optional[str] = None              # also write the final weights + config (no optimiser) here
    export_half: bool = False                 # ... in float16
    quiet: bool = False

    def resolved(self) -> "TrainConfig":
        """A validated copy with the preset expanded into `model` and `timm_kwargs`."""
        c = dataclasses.replace(self, timm_kwargs=dict(self.timm_kwargs))
        _check_task(c)
        if c.preset is None and c.model is None:
            c.preset = "scenes" if c.dataset in DENSE_DATASETS else "tiny"
        if c.preset is not None:
            if c.preset not in PRESETS:
                raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {c.preset!r}")
            p = dict(PRESETS[c.preset])
            name = p.pop("model")
            c.model = c.model or name
            c.timm_kwargs = {**p, **c.timm_kwargs}
        if c.image_size is None and c.dataset in DENSE_DATASETS:  # the scenes' canvas is the model's input
            c.image_size = int(c.timm_kwargs.get("img_size", 64))
        if c.image_size is not None and "img_size" not in c.timm_kwargs:
            c.timm_kwargs["img_size"] = c.image_size
        c.variant = str(c.variant).lower()
        if c.variant not in VARIANT_CHOICES:
            raise ValueError(f"variant must be one of {', '.join(VARIANT_CHOICES)} (case-insensitive); "
                             f"got {self.variant!r}")
        if c.variant != "baseline":
            c.variant = resolve_variant(c.variant)
        if c.num_train is None and c.dataset not in ("fashion-mnist", "fashion-scenes"):
            c.num_train = 8000  # shapes' default (unused by digits, CIFAR, ImageFolder)
        for name in ("epochs", "batch_size", "num_charts", "kernel_size", "num_val", "keep_last", "head_layers"):
            _positive(name, getattr(c, name))
        if c.num_train is not None:
            _positive("num_train", c.num_train)
        if c.num_eval is not None:
            _positive("num_eval", c.num_eval)
        _positive("key_hidden", c.key_hidden, allow_zero=True)
        if c.key_hidden and (c.variant != "baseline" or c.init_from or c.pretrained):
            raise ValueError(f"key-hidden (the over-parameterised key control) applies to a from-scratch baseline "
                             f"only; got variant {c.variant!r}" + (", --init-from" if c.init_from else "")
                             + (", --pretrained" if c.pretrained else ""))
        if c.data_seed is not None:
            _positive("data_seed", c.data_seed, allow_zero=True)
        for name in ("num_test", "save_every_steps", "log_every", "num_workers", "seed"):
            _positive(name, getattr(c, name), allow_zero=True)
        if c.max_steps is not None:
            _positive("max_steps", c.max_steps)
        if c.warmup_steps is not None:
            _positive("warmup_steps", c.warmup_steps, allow_zero=True)
        if c.image_size is not None:
            _positive("image_size", c.image_size)
        for name in ("lr",):
            if not (_finite(getattr(c, name)) and getattr(c, name) > 0):
                raise ValueError(f"{name.replace('_', '-')} must be a finite number > 0, got {getattr(c, name)!r}")
        for name in ("min_lr", "weight_decay", "grad_clip", "ua_weight"):
            if not (_finite(getattr(c, name)) and getattr(c, name) >= 0):
                raise ValueError(f"{name.replace('_', '-')} must be a finite number >= 0, got {getattr(c, name)!r}")
        if not 0 <= c.label_smoothing < 1:
            raise ValueError(f"label-smoothing must be in [0, 1), got {c.label_smoothing!r}")
        if c.resume and c.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if c.pretrained and c.init_from:
            raise ValueError("--pretrained and --init-from exclude each other")
        if c.device is not None:
            _check_device(c.device)
        return c

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

def _check_task(c: TrainConfig) -> None:
    """One-line ValueErrors for a task that is unknown, or does not fit the dataset or the options."""
    if c.task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {c.task!r}")
    if c.dataset not in DATASET_NAMES:
        raise ValueError(f"dataset must be one of {list(DATASET_NAMES)}, got {c.dataset!r}")
    allowed = TASKS[c.task].datasets
    if c.dataset not in allowed:
        raise ValueError(f"--task {c.task} trains on --dataset {' or '.join(allowed)}, got --dataset {c.dataset}"
                         + ("; its scenes have no image labels: use --task segmentation" if c.dataset in DENSE_DATASETS
                            else ""))

def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

def _check_device(text: str) -> None:
    """ValueError unless `text` names a device this machine has: cpu, cuda, cuda:N or mps."""
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device must be cpu, cuda, cuda:N or mps; got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: CUDA is not available on this machine (torch {torch.__version__}); "
                         "use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {text}: MPS is not available on this machine; use --device cpu")

def _positive(name: str, value: Any, allow_zero: bool = False) -> None:
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name.replace('_', '-')} must be an integer >= {lo}, got {value!r}")

# ----------------------------------------------------------------------------- model
def model_spec(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    """The spec `build_model` builds from; a task other than classification adds ``task`` and ``head``."""
    spec = dict(model=cfg.model, timm_kwargs={**cfg.timm_kwargs, "num_classes": num_classes}, variant=cfg.variant,
                num_charts=cfg.num_charts, context_broadcast=cfg.context_broadcast, kernel_size=cfg.kernel_size,
                expand_from=cfg.expand_from, ua_weight=cfg.ua_weight, key_hidden=cfg.key_hidden)
    if cfg.task == "segmentation":
        spec.update(task=cfg.task, head={"indices": cfg.head_layers})
    elif cfg.task != "classification":
        spec["task"] = cfg.task
    return spec

# ----------------------------------------------------------------------------- data
def num_classes_of(cfg: TrainConfig) -> int:
    if cfg.dataset in NUM_CLASSES:
        return NUM_CLASSES[cfg.dataset]
    return build_dataset(cfg.dataset, cfg.data_root, "train", 32, cfg.download, seed=cfg.seed).num_classes

def data_seed_of(cfg: TrainConfig) -> int:
    """The seed of everything about the data of a run: `data_seed`, or `seed` when it is None."""
    return cfg.seed if cfg.data_seed is None else cfg.data_seed
