"""Train or fine-tune a baseline or manifold-key timm model: `mkviz train ...` or `mkviz.train.train(cfg)`.

    cfg = TrainConfig(preset="tiny", variant="vanillak", num_charts=8, epochs=10, out="outputs/vk8")
    result = train(cfg)                      # dict: history, final val/test metrics, paths
    model, config = load_checkpoint("outputs/vk8")
    evaluate(model, loader)                  # {"loss", "acc", "count"}

Determinism and exact resume
----------------------------
* The learning rate is a pure function of the global step (linear warmup, then cosine to `min_lr`).
* The order of the training data is a pure function of (seed, epoch): a `torch.Generator` seeded with
  `seed * 1_000_003 + epoch` permutes the training set; the global batch of step s is
  `perm[s*G:(s+1)*G]` with G = batch_size × world_size (the incomplete last batch is dropped).
* With W processes (torchrun) rank r trains on `perm[s*G + r*b : s*G + (r+1)*b]` (b = --batch-size, per
  process). DDP averages the ranks' gradients, and every rank's loss is a mean over b samples, so the
  update is the one a single process makes on the whole global batch of G = W·b samples: a run with
  `torchrun --nproc_per_node 2 ... --batch-size 32` follows the same loss curve as one process with
  `--batch-size 64` (up to float summation order).
* A checkpoint holds the model, AdamW state, step counters, the batch reached within the epoch, the
  running epoch metrics and the RNG states of every rank; `--resume` restores them all and skips the
  batches already done, so on CPU an interrupted-and-resumed run ends with bitwise the same weights
  as an uninterrupted one (with num_workers=0; worker processes reseed per epoch, so random
  augmentations in workers are not replayed exactly).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ..core.checks import ArgumentParser, run_command
from ..core.key import VARIANTS, resolve_variant
from ..core.models import convert, manifold_modules, unbalanced_atlas_loss
from ..data.registry import DATASET_NAMES, build_dataset
from ..explain.specialisation import chart_statistics, probe_images
from . import checkpoint as ckpt
from .checkpoint import (CheckpointError, build_model, derive_data_config, describe_spec, load_checkpoint,
                         model_input_size, state_dict_mismatch)
from .optim import build_optimizer

__all__ = ["TrainConfig", "PRESETS", "train", "evaluate", "build_datasets",
           "changed_settings", "model_spec", "num_classes_of", "RUNTIME_FIELDS",
           "EpochBatchSampler", "lr_at", "main"]

# Small ViTs defined by timm kwargs on top of a timm model name.
PRESETS: dict[str, dict[str, Any]] = {
    # the shipped checkpoints: 32-px shapes, 4x4 patches of 8 px + cls token, 4 blocks of width 64
    "tiny": dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=4),
    # Fashion-MNIST at its own 28 px: 7x7 patches of 4 px + cls token, 4 blocks of width 64 (data/README.md)
    "fashion": dict(model="vit_tiny_patch16_224", img_size=28, patch_size=4, embed_dim=64, depth=4, num_heads=4),
    # for tests and smoke runs: 2 blocks, 4x4 patches of 8 px
    "micro": dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
}
VARIANT_CHOICES = ("baseline",) + VARIANTS
NUM_CLASSES = {"shapes": 4, "digits": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}

# fields of TrainConfig that do not change the trajectory of a run (may differ when resuming)
RUNTIME_FIELDS = {"out", "resume", "overwrite", "quiet", "compile", "num_workers", "save_every_steps", "keep_last",
                   "log_every", "device", "export", "export_half", "max_steps", "data_root", "download",
                   "deterministic", "optimizer_state", "amp"}
# files in --out that a fresh run does not replace without --overwrite (a run's results, an exported checkpoint)
_KEPT_FILES = ("results.json", "final", ckpt.MODEL_FILE, ckpt.CONFIG_FILE)
# fields that define the model (checked against --init-from checkpoints)
_MODEL_FIELDS = ("model", "timm_kwargs", "variant", "num_charts", "context_broadcast", "kernel_size", "expand_from",
                 "key_hidden")


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in every checkpoint's config.json)."""

    # model
    model: Optional[str] = None               # timm name; None: the preset's (or "tiny" preset if neither)
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
    num_val: int = 1000                       # shapes only (fashion-mnist: 6,000 held out of the official train)
    num_test: int = 1000                      # shapes only (fashion-mnist: the official 10,000)
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
        if c.preset is None and c.model is None:
            c.preset = "tiny"
        if c.preset is not None:
            if c.preset not in PRESETS:
                raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {c.preset!r}")
            p = dict(PRESETS[c.preset])
            name = p.pop("model")
            c.model = c.model or name
            c.timm_kwargs = {**p, **c.timm_kwargs}
        if c.image_size is not None and "img_size" not in c.timm_kwargs:
            c.timm_kwargs["img_size"] = c.image_size
        c.variant = str(c.variant).lower()
        if c.variant not in VARIANT_CHOICES:
            raise ValueError(f"variant must be one of {', '.join(VARIANT_CHOICES)} (case-insensitive); "
                             f"got {self.variant!r}")
        if c.variant != "baseline":
            c.variant = resolve_variant(c.variant)
        if c.dataset not in DATASET_NAMES:
            raise ValueError(f"dataset must be one of {list(DATASET_NAMES)}, got {c.dataset!r}")
        if c.num_train is None and c.dataset != "fashion-mnist":
            c.num_train = 8000  # shapes' default (unused by digits, CIFAR, ImageFolder)
        for name in ("epochs", "batch_size", "num_charts", "kernel_size", "num_val", "keep_last"):
            _positive(name, getattr(c, name))
        if c.num_train is not None:
            _positive("num_train", c.num_train)
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
    return dict(model=cfg.model, timm_kwargs={**cfg.timm_kwargs, "num_classes": num_classes}, variant=cfg.variant,
                num_charts=cfg.num_charts, context_broadcast=cfg.context_broadcast, kernel_size=cfg.kernel_size,
                expand_from=cfg.expand_from, ua_weight=cfg.ua_weight, key_hidden=cfg.key_hidden)


def _init_from(model_spec: dict[str, Any], path: str, seed: int) -> nn.Module:
    """Build the asked model from a checkpoint's weights: same spec, or a baseline checkpoint converted
    function-preservingly to the asked variant; anything else is a clear error."""
    directory = ckpt.find_checkpoint(path)
    saved = ckpt.read_json(directory / ckpt.CONFIG_FILE).get("model_spec")
    if not isinstance(saved, dict):
        raise CheckpointError(f"corrupt checkpoint {directory / ckpt.CONFIG_FILE}: no model_spec")
    arch = lambda s: ({k: v for k, v in s["timm_kwargs"].items() if k != "num_classes"}, s["model"])  # noqa: E731
    if arch(saved) != arch(model_spec):
        raise CheckpointError(f"--init-from {path}: checkpoint is model {saved['model']} {saved['timm_kwargs']}, "
                              f"asked {model_spec['model']} {model_spec['timm_kwargs']}")
    asked, have = describe_spec(model_spec), describe_spec(saved)
    same = all(saved.get(k) == model_spec.get(k) for k in ("variant", "num_charts", "context_broadcast",
                                                          "kernel_size", "expand_from"))
    if saved["variant"] == "baseline" and model_spec["variant"] != "baseline":
        model, _ = load_checkpoint(directory)
        model = convert(model, model_spec["variant"], model_spec["num_charts"], model_spec["context_broadcast"],
                        inplace=True, kernel_size=model_spec["kernel_size"], expand_from=model_spec["expand_from"],
                        ua_weight=model_spec["ua_weight"], init="preserve", seed=seed)
    elif saved["variant"] == "baseline" or same:
        model, _ = load_checkpoint(directory)
        if saved["variant"] != "baseline":
            for _, m in manifold_modules(model):
                m.key.ua_weight = model_spec["ua_weight"]
    else:
        raise CheckpointError(f"--init-from {path}: checkpoint variant mismatch: it holds {have} "
                              f"(context_broadcast={saved['context_broadcast']}, kernel_size={saved['kernel_size']}),"
                              f" asked {asked} (context_broadcast={model_spec['context_broadcast']}, "
                              f"kernel_size={model_spec['kernel_size']})")
    n = model_spec["timm_kwargs"]["num_classes"]
    if saved["timm_kwargs"].get("num_classes") != n:
        model.reset_classifier(n)
    return model.train()


# ----------------------------------------------------------------------------- data
def num_classes_of(cfg: TrainConfig) -> int:
    if cfg.dataset in NUM_CLASSES:
        return NUM_CLASSES[cfg.dataset]
    return build_dataset(cfg.dataset, cfg.data_root, "train", 32, cfg.download, seed=cfg.seed).num_classes


def data_seed_of(cfg: TrainConfig) -> int:
    """The seed of everything about the data of a run: `data_seed`, or `seed` when it is None."""
    return cfg.seed if cfg.data_seed is None else cfg.data_seed


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


def lr_at(step: int, total: int, base: float, min_lr: float, warmup: int) -> float:
    """Linear warmup from base/warmup to base over `warmup` steps, then cosine to `min_lr` at `total`."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (base - min_lr) * (1.0 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, device: str | torch.device | None = None, amp: bool = False,
             distributed: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy of `model` over `loader` (batches of (images, labels)).

    With `distributed`, every rank evaluates its shard and the sums are all-reduced."""
    was_training = model.training
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in loader:
        x, y = batch[0].to(device, non_blocking=True), torch.as_tensor(batch[1]).to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(x)
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
        sums[1] += (logits.argmax(-1) == y).sum().double()
        sums[2] += y.numel()
    if distributed:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    loss, correct, count = sums.tolist()
    return {"loss": loss / max(count, 1), "acc": correct / max(count, 1), "count": int(count)}


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- distributed
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def _init_dist(device_arg: Optional[str]) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg is not None:
        device = torch.device(device_arg)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(rank, world, local), device


# ----------------------------------------------------------------------------- the run directory
def _check_out_dir(cfg: TrainConfig, d: _Dist) -> Optional[Path]:
    """Apply the never-overwrite rule; returns the checkpoint to resume from (or None)."""
    out = Path(cfg.out)
    ckpt.check_output_dir("--out", out)
    _check_export_dir(cfg, out)
    has_ckpt = (out / ckpt.LATEST_FILE).exists() or bool(ckpt.list_checkpoints(out))
    if cfg.resume:
        if not has_ckpt:
            raise FileNotFoundError(f"--resume: no checkpoint to resume in {out} (no {ckpt.LATEST_FILE} or "
                                    f"{ckpt.CKPT_DIR}/)")
        _check_run_json(out)
        return ckpt.resume_checkpoint(out, sys.stderr if d.main else None)
    if has_ckpt and not cfg.overwrite:
        raise ValueError(f"output directory {out} already holds a run's checkpoint; pass --resume to continue it "
                         "or --overwrite to start again (or choose another --out)")
    kept = [name for name in _KEPT_FILES if (out / name).exists()]
    if kept and not cfg.overwrite:
        raise ValueError(f"--out {out} already holds {', '.join(kept)}, which a new run would replace or mix with; "
                         "pass --overwrite to replace them, or choose another --out")
    if (has_ckpt or kept) and cfg.overwrite and d.main:
        for name in (ckpt.CKPT_DIR, "final"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (ckpt.LATEST_FILE, "metrics.jsonl", "steps.jsonl", "run.json", "results.json", ckpt.MODEL_FILE,
                     ckpt.CONFIG_FILE):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    return None


def _check_export_dir(cfg: TrainConfig, out: Path) -> None:
    """--export must be a folder, and one that holds another checkpoint is replaced only with --overwrite
    (this run's own earlier export, e.g. of a resumed run, is replaced)."""
    if not cfg.export:
        return
    export = Path(cfg.export)
    ckpt.check_output_dir("--export", export)
    held = [name for name in (ckpt.MODEL_FILE, ckpt.CONFIG_FILE) if (export / name).exists()]
    if not held or cfg.overwrite:
        return
    with contextlib.suppress(CheckpointError, AttributeError, TypeError):
        if Path(ckpt.read_json(export / ckpt.CONFIG_FILE)["train"]["out"]).resolve() == out.resolve():
            return
    raise ValueError(f"--export {export} already holds a checkpoint ({', '.join(held)}); pass --overwrite to "
                     "replace it, or choose another --export")


def _check_run_json(out: Path) -> None:
    """--resume refuses a run whose run.json (the run's record, rewritten on every start) is unreadable."""
    path = out / "run.json"
    if not path.exists():
        return
    try:
        ok = isinstance(ckpt.read_json(path), dict)
    except CheckpointError:
        ok = False
    if not ok:
        raise CheckpointError(f"--resume: {path} is corrupt (not a JSON object); it would be rewritten: restore "
                              "it or delete it to resume, or start again with --overwrite")


def changed_settings(saved: dict[str, Any], asked: dict[str, Any], saved_as: str = "saved") -> list[str]:
    """The fields that change a run's trajectory (not `RUNTIME_FIELDS`) on which two `TrainConfig` dicts
    differ, as "name=saved (saved_as) vs asked (asked)". A field missing from `saved` (a config written
    before the field existed) counts as its default value."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    keys = [k for k in sorted(set(saved) | set(asked)) if k not in RUNTIME_FIELDS]
    return [f"{k}={saved.get(k, defaults.get(k))!r} ({saved_as}) vs {asked.get(k)!r} (asked)" for k in keys
            if saved.get(k, defaults.get(k)) != asked.get(k)]


def _check_resume_config(saved: dict[str, Any], cfg: TrainConfig, where: Path) -> None:
    diffs = changed_settings(saved, cfg.to_dict(), "checkpoint")
    if diffs:
        raise CheckpointError(f"--resume: checkpoint {where} was made with other arguments: " + "; ".join(diffs)
                              + " (resume with the same arguments)")


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    ckpt.atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


# ----------------------------------------------------------------------------- training
def train(config: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run `config` describes; returns {"history", "val", "test", "out", ...}.

    Works as one process or under torchrun (DDP: gloo on CPU, nccl on GPU; only rank 0 writes)."""
    cfg = config.resolved()
    d, device = _init_dist(cfg.device)
    try:
        return _train(cfg, d, device)
    finally:
        if d.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _new_running() -> dict[str, float]:
    """The running sums of an epoch's training metrics (a checkpoint saves them mid-epoch)."""
    return {"loss_sum": 0.0, "ua_sum": 0.0, "correct": 0.0, "count": 0.0, "time": 0.0}


@dataclass
class _Run:
    """A training run between steps: what `_setup_run` builds and the progress a checkpoint saves
    (epoch, batch reached within it, global step, the epoch's running metrics, the per-epoch history)."""

    cfg: TrainConfig
    d: _Dist
    device: torch.device
    amp: bool
    out: Path
    meta: dict[str, Any]                      # config.json of every checkpoint
    model: nn.Module
    train_model: nn.Module                    # `model`, or its DDP / torch.compile wrapper
    optimizer: torch.optim.Optimizer
    anchored_decay: Any                       # mkviz.optim's decay towards the chart maps' anchors
    train_data: Dataset
    val_loader: DataLoader
    steps_per_epoch: int
    total_steps: int
    warmup: int
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    running: dict[str, float] = field(default_factory=_new_running)
    history: list[dict[str, Any]] = field(default_factory=list)
    probe: Optional[torch.Tensor] = None      # manifold models: the first 256 val images, for chart statistics
    chart_init: dict[str, Any] = field(default_factory=dict)  # chart statistics before the first step

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.d.world

    def lr(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.cfg.lr, self.cfg.min_lr, self.warmup)

    def save(self, epoch: int, batch: int) -> None:
        """Checkpoint the run at `batch` of `epoch` (every rank's RNG state; only rank 0 writes)."""
        cfg, d = self.cfg, self.d
        rngs = [ckpt.rng_state()]
        if d.enabled:
            rngs = [None] * d.world
            torch.distributed.all_gather_object(rngs, ckpt.rng_state())
        if not d.main:
            return
        otensors, ometa = ckpt.optimizer_to_tensors(self.optimizer) if cfg.optimizer_state else ({}, {})
        st = {"epoch": epoch, "batch": batch, "step": self.step, "steps_per_epoch": self.steps_per_epoch,
              "total_steps": self.total_steps, "warmup_steps": self.warmup, "world_size": d.world,
              "global_batch_size": self.global_batch, "optimizer": ometa, "rng": rngs, "running": self.running,
              "history": self.history, "chart_init": self.chart_init,
              "scheduler": {"type": "warmup_cosine", "base_lr": cfg.lr, "min_lr": cfg.min_lr}}
        ckpt.write_checkpoint_dir(self.out, f"step-{self.step:08d}", self.model.state_dict(), self.meta, st,
                                  otensors if cfg.optimizer_state else None, keep_last=cfg.keep_last)


def _train(cfg: TrainConfig, d: _Dist, device: torch.device) -> dict[str, Any]:
    run = _setup_run(cfg, d, device)
    use_bar = not cfg.quiet and d.main and sys.stderr.isatty()
    run.model.train()
    while run.epoch < cfg.epochs:
        if _train_epoch(run, use_bar):
            break  # --max-steps reached inside the epoch (checkpointed there)
        _end_epoch(run)
        if cfg.max_steps is not None and run.step >= cfg.max_steps:
            break
    return _finish(run)


def _setup_run(cfg: TrainConfig, d: _Dist, device: torch.device) -> _Run:
    """Check --out (and --resume), build the model, data, optimiser and schedule, restore a resumed run's
    progress, and (rank 0) write run.json and the logs kept so far."""
    resume_from = _check_out_dir(cfg, d)
    d.barrier()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    state = _resume_state(cfg, d, resume_from) if resume_from is not None else None

    torch.manual_seed(cfg.seed)
    model, spec, data, meta = _build_model_and_data(cfg, device, resuming=resume_from is not None)
    # AdamW; chart scales undecayed, chart maps decayed towards the identity (mkviz.optim)
    optimizer, anchored_decay = build_optimizer(model, cfg.lr, cfg.weight_decay)
    steps_per_epoch, total_steps, warmup = _schedule(cfg, d, len(data["train"]))
    progress: dict[str, Any] = {}
    if resume_from is not None:
        assert state is not None
        progress = _restore(resume_from, state, model, optimizer, spec, device, d)

    train_model: nn.Module = model
    if d.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    val_loader = DataLoader(data["val"], batch_size=2 * cfg.batch_size, num_workers=cfg.num_workers,
                            sampler=list(range(d.rank, len(data["val"]), d.world)))
    run = _Run(cfg, d, device, amp, Path(cfg.out), meta, model, train_model, optimizer, anchored_decay,
               data["train"], val_loader, steps_per_epoch, total_steps, warmup, **progress)
    if cfg.variant != "baseline":  # follow the charts over training (mkviz.specialisation)
        run.probe = probe_images(data["val"])
        run.chart_init = state.get("chart_init", {}) if state is not None else chart_statistics(model, run.probe)
    if d.main:
        run.out.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_json(run.out / "run.json", meta)
        steps_rows = [r for r in _read_jsonl(run.out / "steps.jsonl") if r.get("step", 0) <= run.step]
        if cfg.log_every:
            _write_jsonl(run.out / "steps.jsonl", steps_rows)
        _write_jsonl(run.out / "metrics.jsonl", run.history)
    return run


def _resume_state(cfg: TrainConfig, d: _Dist, resume_from: Path) -> dict[str, Any]:
    """The progress state of the checkpoint --resume continues, after checking that it was made with the
    same arguments and number of processes and holds the optimiser state."""
    saved = ckpt.read_json(resume_from / ckpt.CONFIG_FILE)
    _check_resume_config(saved.get("train", {}), cfg, resume_from)
    state = ckpt.read_json(resume_from / ckpt.STATE_FILE) if (resume_from / ckpt.STATE_FILE).is_file() else None
    if state is None or not (resume_from / ckpt.OPTIM_FILE).is_file():
        raise CheckpointError(f"--resume: checkpoint {resume_from} has no optimizer/progress state "
                              "(exported or saved with --no-optimizer-state); use --init-from to fine-tune it")
    if state.get("world_size", 1) != d.world:
        raise CheckpointError(f"--resume: checkpoint {resume_from} was made with {state.get('world_size')} "
                              f"processes, this run has {d.world}")
    return state


def _build_model_and_data(cfg: TrainConfig, device: torch.device, resuming: bool
                          ) -> tuple[nn.Module, dict[str, Any], dict[str, Dataset], dict[str, Any]]:
    """The model on `device` (from --init-from unless `resuming`, else built), its spec with the data config,
    the train and val datasets, and the run's checkpoint config (meta)."""
    num_classes = num_classes_of(cfg)
    spec = model_spec(cfg, num_classes)
    if cfg.init_from and not resuming:
        model = _init_from(spec, cfg.init_from, cfg.seed)
    else:
        model = build_model(spec, pretrained=cfg.pretrained, seed=cfg.seed)
    model.to(device)
    # the preprocessing this run feeds the model, the timm way (timm.data.resolve_model_data_config)
    spec["data_config"] = derive_data_config(model, cfg.dataset, cfg.image_size)
    data = build_datasets(cfg, model, ("train", "val"))
    class_names = list(getattr(data["train"], "class_names", []))
    if len(class_names) != num_classes:
        class_names = [str(i) for i in range(num_classes)]
    meta = {"train": cfg.to_dict(), "model_spec": spec, "class_names": class_names,
            "image_size": cfg.image_size or model_input_size(model), "dataset": cfg.dataset, "format_version": 1}
    return model, spec, data, meta


def _schedule(cfg: TrainConfig, d: _Dist, n_train: int) -> tuple[int, int, int]:
    """(steps per epoch, total steps, warmup steps) of global batches of batch_size × world size."""
    G = cfg.batch_size * d.world
    steps_per_epoch = n_train // G
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {cfg.batch_size} x {d.world} process(es) = {G} exceeds the {n_train} "
                         "training images")
    total_steps = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(0.05 * total_steps)
    return steps_per_epoch, total_steps, warmup


def _restore(resume_from: Path, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
             spec: dict[str, Any], device: torch.device, d: _Dist) -> dict[str, Any]:
    """Load a checkpoint's weights, optimiser state and this rank's RNG state; returns the progress fields
    of `_Run` (epoch, batch_in_epoch, step, running, history)."""
    tensors, _ = ckpt.load_tensors(resume_from / ckpt.MODEL_FILE)
    otensors, _ = ckpt.load_tensors(resume_from / ckpt.OPTIM_FILE)
    try:
        model.load_state_dict(tensors)
        ckpt.optimizer_from_tensors(optimizer, {k: v.to(device) for k, v in otensors.items()}, state["optimizer"])
    except (RuntimeError, CheckpointError) as err:
        raise CheckpointError(f"--resume: checkpoint {resume_from} does not fit this run's model "
                              f"({describe_spec(spec)}): {state_dict_mismatch(err)}"[:400]) from None
    ckpt.set_rng_state(state["rng"][d.rank])
    return dict(epoch=state["epoch"], batch_in_epoch=state["batch"], step=state["step"],
                running=dict(state["running"]), history=list(state["history"]))


def _train_epoch(run: _Run, use_bar: bool) -> bool:
    """Train from batch `run.batch_in_epoch` of epoch `run.epoch` to its end (checkpointing every
    --save-every-steps); True when --max-steps stopped the run inside the epoch (checkpointed there)."""
    cfg, d = run.cfg, run.d
    sampler = EpochBatchSampler(len(run.train_data), cfg.batch_size, data_seed_of(cfg), run.epoch, d.rank, d.world,
                                run.batch_in_epoch)
    loader = DataLoader(run.train_data, batch_sampler=sampler, num_workers=cfg.num_workers,
                        generator=torch.Generator().manual_seed(data_seed_of(cfg) * 1_000_003 + run.epoch),
                        pin_memory=run.device.type == "cuda")
    bar = _progress(len(sampler), f"epoch {run.epoch + 1}/{cfg.epochs}", use_bar)
    stopped = False
    t0 = time.perf_counter()
    b = run.batch_in_epoch
    for x, y in loader:
        lr, task_v = _train_step(run, x, y)
        b += 1
        if cfg.log_every and run.step % cfg.log_every == 0:
            _log_step(run, task_v, lr)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(task_v):.4f}", lr=f"{lr:.2e}")
        stop_now = cfg.max_steps is not None and run.step >= cfg.max_steps
        if b < run.steps_per_epoch and (stop_now or (cfg.save_every_steps and run.step % cfg.save_every_steps == 0)):
            run.running["time"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            run.save(run.epoch, b)
        if stop_now:
            stopped = b < run.steps_per_epoch
            break
    if bar is not None:
        bar.close()
    run.running["time"] += time.perf_counter() - t0
    return stopped


def _train_step(run: _Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """One optimiser step on this rank's batch (x, y); returns its learning rate and (detached) task loss."""
    cfg, model = run.cfg, run.model
    x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
    lr = run.lr(run.step)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    with _autocast(run.device, run.amp):
        logits = run.train_model(x)
        task = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    loss = task + unbalanced_atlas_loss(model) if cfg.variant == "kua" else task
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    run.anchored_decay.apply(lr)  # the decay towards the anchors, at this step's lr, right before the step
    run.optimizer.step()
    run.step += 1
    with torch.no_grad():
        task_v = task.detach()
        run.running["loss_sum"] += float(task_v) * y.numel()
        run.running["ua_sum"] += float(loss.detach() - task_v) * y.numel()
        run.running["correct"] += float((logits.argmax(-1) == y).sum())
        run.running["count"] += y.numel()
    return lr, task_v


def _log_step(run: _Run, task_v: torch.Tensor, lr: float) -> None:
    """Append the global batch's mean task loss (all ranks' mean) to steps.jsonl (rank 0)."""
    lv = task_v.double().reshape(1)
    if run.d.enabled:
        torch.distributed.all_reduce(lv)
        lv /= run.d.world
    if run.d.main:
        with open(run.out / "steps.jsonl", "a") as f:
            f.write(json.dumps({"step": run.step, "epoch": run.epoch, "loss": lv.item(), "lr": lr}) + "\n")


def _end_epoch(run: _Run) -> None:
    """End of an epoch: global train metrics, validation, the metrics row, a checkpoint at the start of the
    next epoch, metrics.jsonl and the epoch line."""
    cfg, d = run.cfg, run.d
    r = run.running
    sums = torch.tensor([r["loss_sum"], r["ua_sum"], r["correct"], r["count"]], dtype=torch.float64,
                        device=run.device)
    if d.enabled:
        torch.distributed.all_reduce(sums)
    val = evaluate(run.model, run.val_loader, run.device, run.amp, d.enabled)
    n = max(sums[3].item(), 1.0)
    row = {"epoch": run.epoch + 1, "step": run.step, "train_loss": sums[0].item() / n,
           "train_acc": sums[2].item() / n, "val_loss": val["loss"], "val_acc": val["acc"],
           "lr": run.lr(run.step - 1), "time": r["time"]}
    if cfg.variant == "kua":
        row["ua_loss"] = sums[1].item() / n
    if run.probe is not None:
        row.update(chart_statistics(run.model, run.probe))
    run.history.append(row)
    run.epoch, run.batch_in_epoch = run.epoch + 1, 0
    run.running = _new_running()
    run.save(run.epoch, 0)
    if d.main:
        _write_jsonl(run.out / "metrics.jsonl", run.history)
        if not cfg.quiet:
            print(f"epoch {row['epoch']}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
                  f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}  lr {row['lr']:.2e}"
                  f"  {row['time']:.1f}s", file=sys.stderr, flush=True)


def _finish(run: _Run) -> dict[str, Any]:
    """The run's result; after the last epoch also the test metrics, results.json, the final export
    (out/final) and --export."""
    cfg, d, out = run.cfg, run.d, run.out
    result: dict[str, Any] = {"out": str(out), "history": run.history, "step": run.step, "epoch": run.epoch,
                              "finished": run.epoch >= cfg.epochs, "world_size": d.world,
                              "chart_init": run.chart_init}
    if run.history:
        result["val"] = {"loss": run.history[-1]["val_loss"], "acc": run.history[-1]["val_acc"]}
    if run.epoch >= cfg.epochs:
        test = _evaluate_test(cfg, run.model, run.device, run.amp, d)
        if test is not None:
            result["test"] = test
        if d.main:
            extra = {"metrics": {"val": result.get("val"), "test": test, "epochs": cfg.epochs, "steps": run.step},
                     "history": run.history, "chart_init": run.chart_init}  # per-epoch curves travel with the exported weights
            ckpt.atomic_write_json(out / "results.json", extra)
            final = ckpt.export_checkpoint(out, out / "final", extra=extra)
            result["final"] = str(final)
            if cfg.export:
                result["export"] = str(ckpt.export_checkpoint(out, cfg.export, half=cfg.export_half, extra=extra))
    d.barrier()
    result["model"] = run.model
    return result


def _evaluate_test(cfg: TrainConfig, model: nn.Module, device: torch.device, amp: bool,
                   d: _Dist) -> Optional[dict[str, float]]:
    if cfg.dataset == "shapes" and cfg.num_test == 0:
        return None
    try:
        ds = build_datasets(cfg, model, ("test",))["test"]
    except FileNotFoundError:  # e.g. an ImageFolder without a test/ folder
        return None
    loader = DataLoader(ds, batch_size=2 * cfg.batch_size, num_workers=cfg.num_workers,
                        sampler=list(range(d.rank, len(ds), d.world)))
    res = evaluate(model, loader, device, amp, d.enabled)
    return {"loss": res["loss"], "acc": res["acc"]}


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------- CLI
def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"--timm-kwarg expects KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except ValueError:
        return k.strip(), v


def make_parser() -> argparse.ArgumentParser:
    """The parser of `mkviz train`. Every option's help says what it does and, where it takes a value, its
    default (written out, or `%(default)s`), exactly once; flags are off unless given."""
    p = ArgumentParser(prog="mkviz train", description="Train or fine-tune a baseline or manifold-key timm model "
                       "(one process, or several with torchrun).")
    _model_options(p.add_argument_group("model"))
    _data_options(p.add_argument_group("data"))
    _optimisation_options(p.add_argument_group("optimisation"))
    _output_options(p.add_argument_group("output"))
    return p


def _model_options(m: argparse._ArgumentGroup) -> None:
    m.add_argument("--model", help="timm model name (default: the preset's model)")
    m.add_argument("--preset", choices=sorted(PRESETS),
                   help="a small ViT, timm kwargs on top of its model; the timm-kwarg options below override them "
                   "(default: tiny, unless --model is given): "
                   + "; ".join(f"{k}: {v}" for k, v in PRESETS.items()))
    for flag, typ in (("--img-size", int), ("--patch-size", int), ("--embed-dim", int), ("--depth", int),
                      ("--num-heads", int), ("--mlp-ratio", float), ("--drop-rate", float),
                      ("--drop-path-rate", float)):
        also = ", else --image-size" if flag == "--img-size" else ""
        m.add_argument(flag, type=typ, help="timm kwarg " + flag[2:].replace("-", "_")
                       + f" (default: the preset's{also}, else the timm model's)")
    m.add_argument("--timm-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="any other timm.create_model kwarg (VALUE parsed as JSON if possible); repeatable")
    m.add_argument("--variant", default="baseline", type=str.lower, choices=VARIANT_CHOICES,
                   help="timm's attention (baseline) or a manifold-key variant, case-insensitive "
                   "(default: %(default)s)")
    m.add_argument("--num-charts", type=int, default=8, help="number of charts H (default: %(default)s)")
    m.add_argument("--context-broadcast", action="store_true",
                   help="add context broadcasting (γ ⊙ the token mean) to the attention output")
    m.add_argument("--kernel-size", type=int, default=1,
                   help="chart-map kernel size, odd; > 1 also mixes neighbouring tokens (default: %(default)s)")
    m.add_argument("--expand-from", default="key", choices=("key", "input"),
                   help="what the charts expand: the projected base key or the tokens themselves "
                   "(default: %(default)s)")
    m.add_argument("--ua-weight", type=float, default=0.0,
                   help="KUA unbalanced-atlas weight λ, added to the loss; 0: off (default: %(default)s)")
    m.add_argument("--key-hidden", type=int, default=0, metavar="E",
                   help="baseline only: factorise each key projection into two linear layers C_in -> E -> C, the "
                   "over-parameterised key control (mkviz.overparam); 0: off (default: %(default)s)")
    m.add_argument("--pretrained", action="store_true", help="timm pretrained weights (downloads), converted "
                   "function-preservingly")
    m.add_argument("--init-from", metavar="CKPT", help="start from an mkviz checkpoint (a baseline one is "
                   "converted function-preservingly to --variant)")


def _data_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--dataset", default="shapes", type=str.lower, choices=DATASET_NAMES,
                   help="dataset, case-insensitive (default: %(default)s)")
    g.add_argument("--data-root", help="CIFAR / ImageFolder / Fashion-MNIST folder (default for fashion-mnist: "
                   "Debian's /usr/share/datasets/fashion-mnist)")
    g.add_argument("--download", action="store_true", help="download CIFAR / Fashion-MNIST into --data-root if missing")
    g.add_argument("--image-size", type=int, help="input size in pixels (default: the model's)")
    g.add_argument("--num-train", type=int, default=None,
                   help="training images: shapes renders N, fashion-mnist uses the first N of its 54,000 "
                   "(default: 8000 for shapes, all for fashion-mnist)")
    g.add_argument("--num-val", type=int, default=1000, help="shapes: validation images (default: %(default)s)")
    g.add_argument("--num-test", type=int, default=1000,
                   help="shapes: test images; 0: no test evaluation (default: %(default)s)")
    g.add_argument("--difficulty", default="easy", choices=("easy", "medium", "hard"),
                   help="shapes: scene difficulty (from medium on, distractor objects) (default: %(default)s)")
    g.add_argument("--augment", action="store_true", help="fashion-mnist: random flips and 2-px shifts in training")


def _optimisation_options(o: argparse._ArgumentGroup) -> None:
    o.add_argument("--epochs", type=int, default=10, help="epochs to train (default: %(default)s)")
    o.add_argument("--batch-size", type=int, default=64,
                   help="per process; the global batch is this × the number of processes (default: %(default)s)")
    o.add_argument("--lr", type=float, default=1e-3,
                   help="peak learning rate: linear warmup to it, then cosine to --min-lr (default: %(default)s)")
    o.add_argument("--min-lr", type=float, default=1e-5,
                   help="learning rate at the end of the cosine schedule (default: %(default)s)")
    o.add_argument("--weight-decay", type=float, default=0.05,
                   help="AdamW weight decay; chart maps and SimpleK's fusion decay towards their function-"
                   "preserving values, chart scales not at all (mkviz.optim) (default: %(default)s)")
    o.add_argument("--warmup-steps", type=int, help="linear warmup steps (default: 5%% of the total steps)")
    o.add_argument("--label-smoothing", type=float, default=0.1,
                   help="label smoothing of the cross-entropy (default: %(default)s)")
    o.add_argument("--grad-clip", type=float, default=1.0,
                   help="max global gradient norm; 0: no clipping (default: %(default)s)")
    o.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA, off otherwise)")
    o.add_argument("--compile", action="store_true", help="torch.compile the model")
    o.add_argument("--seed", type=int, default=0,
                   help="seed of the initialisation, the data and its order (default: %(default)s)")
    o.add_argument("--data-seed", type=int, default=None,
                   help="seed of the data alone (shapes rendered, val split, order), so that runs can share the "
                   "data and differ in initialisation or the reverse (default: --seed)")
    o.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader worker processes; 0: load in the main process (default: %(default)s)")
    o.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: this process's GPU if CUDA is available, "
                   "else cpu)")
    o.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")


def _output_options(r: argparse._ArgumentGroup) -> None:
    r.add_argument("--out", default="outputs/train", help="run directory (default: %(default)s)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    r.add_argument("--overwrite", action="store_true", help="start again in an --out that holds a run")
    r.add_argument("--save-every-steps", type=int, default=0,
                   help="also checkpoint every N steps mid-epoch; 0: at epoch ends only (default: %(default)s)")
    r.add_argument("--keep-last", type=int, default=2, help="training checkpoints kept (default: %(default)s)")
    r.add_argument("--log-every", type=int, default=0,
                   help="append the loss to steps.jsonl every N steps; 0: off (default: %(default)s)")
    r.add_argument("--max-steps", type=int,
                   help="stop (with a checkpoint) after N steps in total (default: no limit: all --epochs)")
    r.add_argument("--no-optimizer-state", dest="optimizer_state", action="store_false",
                   help="write checkpoints without the optimiser state (smaller, but the run cannot be resumed); "
                   "without this flag they hold it")
    r.add_argument("--export", metavar="DIR", help="also write the final weights + config (no optimiser) to DIR")
    r.add_argument("--export-half", action="store_true", help="with --export: export in float16")
    r.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")


def config_from_args(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    args = make_parser().parse_args(argv)
    timm_kwargs = dict(_kv(t) for t in args.timm_kwarg)
    for name in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "drop_rate",
                 "drop_path_rate"):
        if getattr(args, name) is not None:
            timm_kwargs[name] = getattr(args, name)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    return TrainConfig(**{**values, "timm_kwargs": timm_kwargs})


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = config_from_args(argv)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0 and not cfg.quiet:
        msg = f"done: {result['step']} steps"
        if "val" in result:
            msg += f", val acc {result['val']['acc']:.4f}"
        if "test" in result:
            msg += f", test acc {result['test']['acc']:.4f}"
        print(msg + f"; run in {result['out']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("train", main, sys.argv[1:]))
