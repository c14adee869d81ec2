"""The run folder of a training run: what may be written where (`--out`, `--overwrite`, `--resume`, `--export`),
that a resumed run asks for the settings it was started with, and the JSON-lines history files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

from . import checkpoint as ckpt
from .checkpoint import CheckpointError
from .config import RUNTIME_FIELDS, TrainConfig
from .distributed import Dist

__all__ = ["changed_settings", "check_out_dir", "check_resume_config", "write_jsonl", "read_jsonl"]


# files in --out that a fresh run does not replace without --overwrite (a run's results, an exported checkpoint)
_KEPT_FILES = ("results.json", "final", ckpt.MODEL_FILE, ckpt.CONFIG_FILE)

# ----------------------------------------------------------------------------- the run directory
def check_out_dir(cfg: TrainConfig, d: Dist) -> Optional[Path]:
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

def check_resume_config(saved: dict[str, Any], cfg: TrainConfig, where: Path) -> None:
    diffs = changed_settings(saved, cfg.to_dict(), "checkpoint")
    if diffs:
        raise CheckpointError(f"--resume: checkpoint {where} was made with other arguments: " + "; ".join(diffs)
                              + " (resume with the same arguments)")

def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    ckpt.atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows
