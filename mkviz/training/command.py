"""`mkviz train`: its options, the TrainConfig they make (`config_from_args`) and `main`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Optional, Sequence

from ..core.checks import ArgumentParser
from ..data.registry import DATASET_NAMES
from .config import PRESETS, TrainConfig, VARIANT_CHOICES
from .loop import train
from .tasks import TASKS

__all__ = ["make_parser", "config_from_args", "main"]


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
    m.add_argument("--task", default="classification", type=str.lower, choices=tuple(TASKS),
                   help="what the model learns: image classes, or the classes of the pixels of --dataset "
                   "fashion-scenes (segmentation), case-insensitive (default: %(default)s)")
    m.add_argument("--head-layers", type=int, default=1, metavar="N",
                   help="--task segmentation: the last N blocks (ViT) or stages (Swin) feed the segmentation head "
                   "(default: %(default)s)")
    m.add_argument("--model", help="timm model name (default: the preset's model)")
    m.add_argument("--preset", choices=sorted(PRESETS),
                   help="a small ViT, timm kwargs on top of its model; the timm-kwarg options below override them "
                   "(default: tiny, scenes on fashion-scenes, unless --model is given): "
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
                   "over-parameterised key control (mkviz.core.overparam); 0: off (default: %(default)s)")
    m.add_argument("--pretrained", action="store_true", help="timm pretrained weights (downloads), converted "
                   "function-preservingly")
    m.add_argument("--init-from", metavar="CKPT", help="start from an mkviz checkpoint (a baseline one is "
                   "converted function-preservingly to --variant); with --task segmentation or detection, a "
                   "classification checkpoint's backbone")

def _data_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--dataset", default="shapes", type=str.lower, choices=DATASET_NAMES,
                   help="dataset, case-insensitive (default: %(default)s)")
    g.add_argument("--data-root", help="CIFAR / ImageFolder / Fashion-MNIST folder (default for fashion-mnist: "
                   "Debian's /usr/share/datasets/fashion-mnist)")
    g.add_argument("--download", action="store_true", help="download CIFAR / Fashion-MNIST into --data-root if missing")
    g.add_argument("--image-size", type=int, help="input size in pixels (default: the model's)")
    g.add_argument("--num-train", type=int, default=None,
                   help="training images: shapes renders N, fashion-mnist uses the first N of its 54,000, "
                   "fashion-scenes generates N scenes (default: 8000 for shapes, all for fashion-mnist, 10,000 "
                   "scenes)")
    g.add_argument("--num-val", type=int, default=1000, help="shapes: validation images (default: %(default)s)")
    g.add_argument("--num-test", type=int, default=1000,
                   help="shapes: test images; 0: no test evaluation (default: %(default)s)")
    g.add_argument("--num-eval", type=int, default=None,
                   help="fashion-mnist: validate and test on the first N images of each split; fashion-scenes: "
                   "generate N val and N test scenes (default: all images, 1,000 scenes)")
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
                   "preserving values, chart scales not at all (mkviz.training.optim) (default: %(default)s)")
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
        msg, metric = f"done: {result['step']} steps", TASKS[cfg.task].headline
        for split in ("val", "test"):
            if metric in result.get(split, {}):
                msg += f", {split} {metric} {result[split][metric]:.4f}"
        print(msg + f"; run in {result['out']}", file=sys.stderr)
    return 0
