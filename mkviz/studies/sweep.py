"""Experiment sweeps: `mkviz sweep configs/repro_small.yaml` trains every (dataset, configuration, seed)
run a YAML file lists, resumably, writes one JSON per finished run, then regenerates the report page.

The YAML file and how it becomes runs: `mkviz.studies.sweep_config`.

A run's id is ``<dataset>__<config>__s<seed>``. The seed fixes the generated data, the initialisation and
the data order, and every configuration uses the same seeds and schedule, so configurations differ only
in the model. Re-running the command skips runs whose JSON exists (after checking it was made with the
same settings), resumes runs that have a checkpoint in ``runs_dir`` and starts the rest.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import datetime as dt
import fnmatch
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..core.checks import ArgumentParser
from ..core.cost import count_flops, count_params, machine_description
from ..core.key import membership_mode
from ..training import checkpoint as ckpt
from ..training.config import TrainConfig
from ..training.inputs import build_datasets
from ..training.loop import evaluate, train
from ..training.run_dir import changed_settings
from ..training.tasks import TASKS
from . import sweep_report
from .sweep_config import Run, expand_runs, load_sweep
import torch
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["run_state", "run_sweep", "one_hot_test_accuracy", "make_parser", "main"]


# ----------------------------------------------------------------------------- running
def _paths(sweep: dict[str, Any], run: Run) -> tuple[Path, Path]:
    return Path(sweep["results_dir"]) / f"{run.run_id}.json", Path(sweep["runs_dir"]) / run.run_id


def _diff_settings(saved: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    return changed_settings(saved, asked)


def run_state(sweep: dict[str, Any], run: Run) -> str:
    """'done' (its JSON exists and matches the settings), 'partial' (a checkpoint to resume) or 'todo'.
    Raises ValueError when a saved result or checkpoint was made with other settings (never overwritten)."""

    result, out = _paths(sweep, run)
    asked = TrainConfig(**run.train).resolved().to_dict()
    if result.is_file():
        saved = json.loads(result.read_text())
        diffs = _diff_settings(saved.get("train", {}), asked)
        if diffs:
            raise ValueError(f"{result} was made with other settings: {'; '.join(diffs)}. Delete it (and "
                             f"{out}) to run it again with the new settings, or use another results_dir")
        return "done"
    if (out / ckpt.LATEST_FILE).exists() or ckpt.list_checkpoints(out):
        saved = ckpt.read_json(out / "run.json").get("train", {}) if (out / "run.json").is_file() else {}
        diffs = _diff_settings(saved, asked)
        if diffs:
            raise ValueError(f"checkpoint {out} was made with other settings: {'; '.join(diffs)}. Delete it to "
                             "start that run again")
        return "partial"
    return "todo"


def forward_flops(model: nn.Module, task: str, size: int) -> int:
    """Forward FLOPs of one `size` x `size` image (`count_flops`). A detector is counted up to its feature pyramid
    (`model.backbone`): its heads run on its detections, whose number depends on the weights, not the design."""
    return count_flops(model.backbone if task == "detection" else model, (1, 3, size, size))


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_one(sweep: dict[str, Any], run: Run, state: str) -> dict[str, Any]:
    """Train (state "todo") or resume (state "partial", from `run_state`) one run and write its result JSON
    atomically; returns the record."""
    result_path, out = _paths(sweep, run)
    cfg = TrainConfig(**run.train, out=str(out), resume=state == "partial", quiet=True)
    t0 = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t0
    model = res.pop("model")
    resolved = cfg.resolved()
    size = int(getattr(model.patch_embed, "img_size", (32, 32))[0]) if hasattr(model, "patch_embed") else \
        int(resolved.timm_kwargs.get("img_size", 32))  # a dense model: its backbone's input size
    # every metric of the final evaluation: val_/test_ loss and acc (classification), miou, map, ... (dense tasks)
    metrics = {f"{split}_{name}": value for split in ("val", "test") for name, value in res[split].items()
               if name != "count"}
    record = {
        "sweep": sweep["name"], "run_id": run.run_id, "dataset": run.dataset, "config": run.config,
        "seed": run.seed, "variant": resolved.variant, "task": resolved.task, "headline": TASKS[resolved.task].headline,
        "num_charts": cfg.num_charts if resolved.variant != "baseline" else None,
        "params": count_params(model), "flops": forward_flops(model.cpu().eval(), resolved.task, size),
        "flops_of": "backbone" if resolved.task == "detection" else "model",
        **metrics, "epochs": res["epoch"], "steps": res["step"], "history": res["history"],
        "train_time_s": round(sum(r["time"] for r in res["history"]), 2), "wall_time_s": round(wall, 2),
        "resumed": state == "partial", "threads": torch.get_num_threads(), "machine": machine_description(),
        "train": resolved.to_dict(), "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for key in ("out", "resume", "quiet"):
        record["train"].pop(key, None)
    if res.get("chart_init"):
        record["chart_init"] = res["chart_init"]
    if resolved.variant == "kua" and resolved.task == "classification":
        record["test_acc_one_hot"] = one_hot_test_accuracy(resolved, model)
    ckpt.atomic_write_json(result_path, record)
    return {**record, "_state": state}


def one_hot_test_accuracy(cfg: Any, model: Any) -> float:
    """Test accuracy of a trained KUA model when each token takes its most probable chart's key alone."""


    test = build_datasets(cfg, model, ("test",))["test"]
    with membership_mode(model, "one_hot"):
        return float(evaluate(model, DataLoader(test, batch_size=256))["acc"])


def run_sweep(sweep: dict[str, Any], jobs: Optional[int] = None, only: Optional[str] = None,
              log: Any = sys.stderr) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Run every unfinished run (in `jobs` processes; 1: in this process). Returns (records, failures)."""
    runs = expand_runs(sweep, only)
    states = {r.run_id: run_state(sweep, r) for r in runs}  # fail early on settings mismatches
    todo = [r for r in runs if states[r.run_id] != "done"]
    jobs = jobs or sweep["jobs"]
    print(f"sweep {sweep['name']}: {len(runs)} runs, {len(runs) - len(todo)} done, "
          f"{sum(s == 'partial' for s in states.values())} to resume, {len(todo)} to run with {jobs} job(s) of "
          f"{sweep['threads_per_job']} thread(s)", file=log, flush=True)
    records = [{**json.loads(_paths(sweep, r)[0].read_text()), "_state": "skipped"} for r in runs
               if states[r.run_id] == "done"]
    failures: list[tuple[str, str]] = []
    t0 = time.perf_counter()

    def report(run: Run, rec: Optional[dict[str, Any]], err: Optional[BaseException]) -> None:
        n = len(records) + len(failures)
        if err is not None:
            failures.append((run.run_id, f"{type(err).__name__}: {err}"))
            print(f"[{n + 1}/{len(runs)}] {run.run_id} FAILED: {err}", file=log, flush=True)
        else:
            records.append(rec)
            headline = rec.get("headline", "acc")
            print(f"[{n + 1}/{len(runs)}] {run.run_id}  test {headline} {rec['test_' + headline]:.3f}  "
                  f"({rec['wall_time_s']:.0f} s{', resumed' if rec['_state'] == 'partial' else ''}; "
                  f"{time.perf_counter() - t0:.0f} s elapsed)", file=log, flush=True)

    if jobs == 1:
        _worker_init(sweep["threads_per_job"])
        for run in todo:
            try:
                report(run, _run_one(sweep, run, states[run.run_id]), None)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as err:  # noqa: BLE001 - one failed run must not stop the sweep
                report(run, None, err)
    elif todo:
        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                    initargs=(sweep["threads_per_job"],)) as pool:
            futures = {pool.submit(_run_one, sweep, run, states[run.run_id]): run for run in todo}
            for fut in cf.as_completed(futures):
                err = fut.exception()
                report(futures[fut], None if err else fut.result(), err)
    return records, failures


# ----------------------------------------------------------------------------- CLI
def make_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="mkviz sweep", description="Train every run of a sweep file (resumable), then regenerate "
                "its report page from the per-run JSON.")
    p.add_argument("config", help="sweep YAML file, e.g. configs/repro_small.yaml")
    p.add_argument("--jobs", type=int, help="runs in parallel (default: the file's 'jobs')")
    p.add_argument("--only", help="only run ids matching this glob, e.g. 'digits__*' or '*__s0'; several globs "
                                  "separated by commas: ids matching any")
    p.add_argument("--list", action="store_true", help="list the runs and their state (done/partial/todo), run nothing")
    p.add_argument("--report-only", action="store_true", help="regenerate the page and plots from the JSON only")
    p.add_argument("--check", action="store_true", help="exit 1 if the page is out of sync with the JSON")
    p.add_argument("--no-plots", action="store_true", help="do not (re)write the SVG plots")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = make_parser().parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be an integer >= 1, got {args.jobs}")
    sweep = load_sweep(args.config)
    if args.check:
        stale = sweep_report.check_page(sweep)
        for line in stale:
            print(f"mkviz sweep --check: {line}", file=sys.stderr)
        if not stale:
            print(f"{sweep['page']} is in sync with {sweep['results_dir']}")
        return 1 if stale else 0
    if args.list:
        for run in expand_runs(sweep, args.only):
            print(f"{run_state(sweep, run):8s} {run.run_id}")
        return 0
    failures: list[tuple[str, str]] = []
    if not args.report_only:
        _, failures = run_sweep(sweep, args.jobs, args.only)
    if sweep.get("page"):
        written = sweep_report.write_report(sweep, plots=not args.no_plots)
        for path in written:
            print(f"wrote {path}")
    for run_id, err in failures:
        print(f"mkviz sweep: run {run_id} failed: {err}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
