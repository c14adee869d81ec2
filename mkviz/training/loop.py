"""The training loop: `train(cfg)` trains or fine-tunes a baseline or manifold-key timm model (`mkviz train ...` on
the command line: `mkviz.training.command`).

    cfg = TrainConfig(preset="tiny", variant="vanillak", num_charts=8, epochs=10, out="outputs/vk8")
    result = train(cfg)                      # dict: history, final val/test metrics, paths
    model, config = load_checkpoint("outputs/vk8")
    evaluate(model, loader)                  # {"loss", "acc", "count"}

The task (`--task`, `mkviz.training.tasks.TASKS`) supplies the model, the loss of a step, the evaluation and the
batches' collation: classification (the default) or segmentation of the Fashion-MNIST scenes.

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

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..core.models import convert, manifold_modules, unbalanced_atlas_loss
from ..explain.specialisation import chart_statistics, probe_images, probe_labels
from . import checkpoint as ckpt
from .build import (build_model, derive_data_config, describe_spec, load_checkpoint, model_input_size,
                    state_dict_mismatch)
from .checkpoint import CheckpointError
from .config import TrainConfig, data_seed_of, model_spec, num_classes_of
from .distributed import Dist, init_dist
from .inputs import EpochBatchSampler, build_datasets
from .optim import build_optimizer
from .run_dir import check_out_dir, check_resume_config, read_jsonl, write_jsonl
from .tasks import TASKS, Task, autocast, evaluate, to_device
from .timm_hub import hub_fields

__all__ = ["train", "evaluate", "lr_at"]


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

# what a classifier has after its last block and a dense model's trunk does not (timm's prune_intermediate_layers)
CLASSIFIER_PARTS = ("head.", "norm.", "fc_norm.")

def _init_dense_from(model: nn.Module, spec: dict[str, Any], path: str, seed: int) -> None:
    """A dense model's timm trunk (a segmenter's `backbone`, a detector's `backbone.trunk`) from a classification
    checkpoint, converted to the asked variant as for classification; the heads keep their initialisation."""
    saved = ckpt.read_json(ckpt.find_checkpoint(path) / ckpt.CONFIG_FILE).get("model_spec") or {}
    if saved.get("task", "classification") != "classification":
        raise CheckpointError(f"--init-from {path}: a {saved['task']} checkpoint; a dense run starts from a "
                              "classification checkpoint's backbone (--resume continues a dense run)")
    source = _init_from({**spec, "task": "classification"}, path, seed)
    trunk = getattr(model.backbone, "trunk", model.backbone)
    missing, unexpected = trunk.load_state_dict(source.state_dict(), strict=False)
    unexpected = [k for k in unexpected if not k.startswith(CLASSIFIER_PARTS)]  # pruned from a dense trunk
    if missing or unexpected:
        raise CheckpointError(f"--init-from {path}: the checkpoint's backbone does not fit this {spec['task']} "
                              f"model (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")

def lr_at(step: int, total: int, base: float, min_lr: float, warmup: int) -> float:
    """Linear warmup from base/warmup to base over `warmup` steps, then cosine to `min_lr` at `total`."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (base - min_lr) * (1.0 + math.cos(math.pi * min(1.0, t)))

# ----------------------------------------------------------------------------- training
def train(config: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run `config` describes; returns {"history", "val", "test", "out", ...}.

    Works as one process or under torchrun (DDP: gloo on CPU, nccl on GPU; only rank 0 writes)."""
    cfg = config.resolved()
    d, device = init_dist(cfg.device)
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
    d: Dist
    device: torch.device
    amp: bool
    out: Path
    meta: dict[str, Any]                      # config.json of every checkpoint
    model: nn.Module
    train_model: nn.Module                    # `model`, or its DDP / torch.compile wrapper
    optimizer: torch.optim.Optimizer
    anchored_decay: Any                       # mkviz.training.optim's decay towards the chart maps' anchors
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
    probe_labels: Optional[torch.Tensor] = None  # their labels (KUA's chart usage per class)
    chart_init: dict[str, Any] = field(default_factory=dict)  # chart statistics before the first step

    @property
    def task(self) -> Task:
        return TASKS[self.cfg.task]

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

def _train(cfg: TrainConfig, d: Dist, device: torch.device) -> dict[str, Any]:
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

def _setup_run(cfg: TrainConfig, d: Dist, device: torch.device) -> _Run:
    """Check --out (and --resume), build the model, data, optimiser and schedule, restore a resumed run's
    progress, and (rank 0) write run.json and the logs kept so far."""
    resume_from = check_out_dir(cfg, d)
    d.barrier()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
    state = _resume_state(cfg, d, resume_from) if resume_from is not None else None

    torch.manual_seed(cfg.seed)
    model, spec, data, meta = _build_model_and_data(cfg, device, resuming=resume_from is not None)
    # AdamW; chart scales undecayed, chart maps decayed towards the identity (mkviz.training.optim)
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
                            sampler=list(range(d.rank, len(data["val"]), d.world)), collate_fn=TASKS[cfg.task].collate)
    run = _Run(cfg, d, device, amp, Path(cfg.out), meta, model, train_model, optimizer, anchored_decay,
               data["train"], val_loader, steps_per_epoch, total_steps, warmup, **progress)
    if cfg.variant != "baseline":  # follow the charts over training (mkviz.explain.specialisation)
        # 256 validation images; 64 scenes for a dense task (its forward is a whole segmenter or detector)
        run.probe = probe_images(data["val"], 256 if cfg.task == "classification" else 64)
        run.probe_labels = probe_labels(data["val"]) if cfg.task == "classification" else None
        run.chart_init = (state.get("chart_init", {}) if state is not None
                          else chart_statistics(model, run.probe, labels=run.probe_labels))
    if d.main:
        run.out.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_json(run.out / "run.json", meta)
        steps_rows = [r for r in read_jsonl(run.out / "steps.jsonl") if r.get("step", 0) <= run.step]
        if cfg.log_every:
            write_jsonl(run.out / "steps.jsonl", steps_rows)
        write_jsonl(run.out / "metrics.jsonl", run.history)
    return run

def _resume_state(cfg: TrainConfig, d: Dist, resume_from: Path) -> dict[str, Any]:
    """The progress state of the checkpoint --resume continues, after checking that it was made with the
    same arguments and number of processes and holds the optimiser state."""
    saved = ckpt.read_json(resume_from / ckpt.CONFIG_FILE)
    check_resume_config(saved.get("train", {}), cfg, resume_from)
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
    if cfg.init_from and not resuming and cfg.task == "classification":
        model = _init_from(spec, cfg.init_from, cfg.seed)
    elif cfg.init_from and not resuming:
        model = build_model(spec, seed=cfg.seed)
        _init_dense_from(model, spec, cfg.init_from, cfg.seed)
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
    if cfg.task == "classification":  # timm's config.json keys (mkviz.training.timm_hub)
        meta.update(hub_fields(model, spec, class_names))
    return model, spec, data, meta

def _schedule(cfg: TrainConfig, d: Dist, n_train: int) -> tuple[int, int, int]:
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
             spec: dict[str, Any], device: torch.device, d: Dist) -> dict[str, Any]:
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
                        pin_memory=run.device.type == "cuda", collate_fn=run.task.collate)
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

def _train_step(run: _Run, x: torch.Tensor, y: Any) -> tuple[float, torch.Tensor]:
    """One optimiser step on this rank's batch (x, y: labels or targets); returns its learning rate and
    (detached) task loss."""
    cfg, model = run.cfg, run.model
    x, y = x.to(run.device, non_blocking=True), to_device(y, run.device)
    lr = run.lr(run.step)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    with autocast(run.device, run.amp):
        task, n, correct = run.task.step(run.train_model, x, y, cfg.label_smoothing)
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
        run.running["loss_sum"] += float(task_v) * n
        run.running["ua_sum"] += float(loss.detach() - task_v) * n
        run.running["correct"] += correct
        run.running["count"] += n
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
    task = run.task
    val = task.evaluate(run.model, run.val_loader, run.device, run.amp, d.enabled)
    n = max(sums[3].item(), 1.0)
    row = {"epoch": run.epoch + 1, "step": run.step, "train_loss": sums[0].item() / n}
    if task.train_metric:
        row[f"train_{task.train_metric}"] = sums[2].item() / n
    row.update({f"val_{k}": v for k, v in val.items() if k != "count"})
    row.update({"lr": run.lr(run.step - 1), "time": r["time"]})
    if cfg.variant == "kua":
        row["ua_loss"] = sums[1].item() / n
    if run.probe is not None:
        row.update(chart_statistics(run.model, run.probe, labels=run.probe_labels))
    run.history.append(row)
    run.epoch, run.batch_in_epoch = run.epoch + 1, 0
    run.running = _new_running()
    run.save(run.epoch, 0)
    if d.main:
        write_jsonl(run.out / "metrics.jsonl", run.history)
        if not cfg.quiet:
            m, h = task.train_metric, task.headline
            train_m = f" {m.replace('_', ' ')} {row['train_' + m]:.3f}" if m else ""
            print(f"epoch {row['epoch']}/{cfg.epochs}  train loss {row['train_loss']:.4f}{train_m}"
                  f"  val loss {row['val_loss']:.4f} {h} {row['val_' + h]:.3f}  lr {row['lr']:.2e}"
                  f"  {row['time']:.1f}s", file=sys.stderr, flush=True)

def _finish(run: _Run) -> dict[str, Any]:
    """The run's result; after the last epoch also the test metrics, results.json, the final export
    (out/final) and --export."""
    cfg, d, out = run.cfg, run.d, run.out
    result: dict[str, Any] = {"out": str(out), "history": run.history, "step": run.step, "epoch": run.epoch,
                              "finished": run.epoch >= cfg.epochs, "world_size": d.world,
                              "chart_init": run.chart_init}
    if run.history:
        result["val"] = {k[4:]: v for k, v in run.history[-1].items() if k.startswith("val_")}
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
                   d: Dist) -> Optional[dict[str, float]]:
    if cfg.dataset == "shapes" and cfg.num_test == 0:
        return None
    try:
        ds = build_datasets(cfg, model, ("test",))["test"]
    except FileNotFoundError:  # e.g. an ImageFolder without a test/ folder
        return None
    loader = DataLoader(ds, batch_size=2 * cfg.batch_size, num_workers=cfg.num_workers,
                        sampler=list(range(d.rank, len(ds), d.world)), collate_fn=TASKS[cfg.task].collate)
    res = TASKS[cfg.task].evaluate(model, loader, device, amp, d.enabled)
    return {k: v for k, v in res.items() if k != "count"}

def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
