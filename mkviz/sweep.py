"""Experiment sweeps: `mkviz sweep configs/repro_small.yaml` trains every (dataset, configuration, seed)
run a YAML file lists, resumably, writes one JSON per finished run, then regenerates the report page.

The YAML file (paths are relative to the working directory; see configs/repro_small.yaml)::

    name: repro_small
    results_dir: docs/results/repro_small   # one <run_id>.json per finished run (commit these)
    runs_dir: outputs/sweeps/repro_small    # training checkpoints (resumable; not committed)
    page: docs/reproduction.md              # regenerated from the JSON by mkviz.sweep_report
    plots_dir: docs/reproduction
    baseline: baseline                      # the configuration differences are measured against
    seeds: [0, 1, 2]
    jobs: 2                                 # runs in parallel (processes); threads_per_job torch threads each
    common: {preset: tiny, epochs: 12, ...} # TrainConfig fields shared by every run
    datasets: {shapes: {dataset: shapes, difficulty: hard}, digits: {dataset: digits}}
    configs:
      baseline: {variant: baseline}
      baseline-wide: {variant: baseline, match_params: vanillak-8}   # MLP widened to VanillaK-8's parameters
      vanillak-8: {variant: vanillak, num_charts: 8}

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

from . import checkpoint as ckpt

__all__ = ["Run", "load_sweep", "expand_runs", "run_state", "run_sweep", "match_mlp_ratio", "match_key_hidden",
           "MATCH_BY", "main"]

_SWEEP_KEYS = {"name", "description", "results_dir", "runs_dir", "page", "plots_dir", "baseline", "seeds", "jobs",
               "threads_per_job", "save_every_steps", "common", "datasets", "configs", "report"}
_CONFIG_ONLY_KEYS = {"match_params", "match_by", "seeds", "stage"}  # configuration keys, not TrainConfig fields
MATCH_BY = ("mlp", "key")                      # widen the baseline's MLP, or factorise its key (key_hidden)
_RUN_FIELDS = {"out", "resume", "overwrite", "quiet", "export", "export_half"}  # set by the sweep itself


@dataclass
class Run:
    """One training run of a sweep: `train` holds the TrainConfig fields (without output paths)."""

    run_id: str
    dataset: str
    config: str
    seed: int
    train: dict[str, Any]


def _fail(path: Path, message: str) -> None:
    raise ValueError(f"sweep file {path}: {message}")


def load_sweep(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a sweep YAML file; returns a dict with every key filled in."""
    import yaml

    from .train import TrainConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {path} not found")
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"sweep file {path} is not valid YAML{where}: {what}") from None
    if not isinstance(sweep, dict):
        _fail(path, "must hold a mapping (name, seeds, common, datasets, configs, ...)")
    unknown = set(sweep) - _SWEEP_KEYS
    if unknown:
        _fail(path, f"unknown keys {sorted(unknown)}; allowed: {sorted(_SWEEP_KEYS)}")
    name = sweep.get("name") or path.stem
    sweep = {"name": name, "description": "", "results_dir": f"docs/results/{name}",
             "runs_dir": f"outputs/sweeps/{name}", "page": None, "plots_dir": None, "baseline": "baseline",
             "seeds": [0, 1, 2], "jobs": 1, "threads_per_job": 1, "save_every_steps": 0, "common": {},
             "report": {}, **sweep, "path": str(path)}
    for key in ("datasets", "configs"):
        if not isinstance(sweep.get(key), dict) or not sweep[key]:
            _fail(path, f"'{key}' must be a non-empty mapping of name -> TrainConfig fields")
    seeds = sweep["seeds"]
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and s >= 0 for s in seeds)
            and len(set(seeds)) == len(seeds)):
        _fail(path, f"'seeds' must be a list of distinct integers >= 0, got {seeds!r}")
    for key in ("jobs", "threads_per_job"):
        if not (isinstance(sweep[key], int) and sweep[key] >= 1):
            _fail(path, f"'{key}' must be an integer >= 1, got {sweep[key]!r}")
    if sweep["baseline"] not in sweep["configs"]:
        _fail(path, f"baseline {sweep['baseline']!r} is not one of the configs {sorted(sweep['configs'])}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - _RUN_FIELDS - {"seed"}
    groups = [("common", {"common": sweep["common"]})] + [(k, sweep[k]) for k in ("datasets", "configs")]
    for group, entries in groups:
        for entry, kw in entries.items():
            where = group if group == "common" else f"{group}.{entry}"
            if not isinstance(kw, dict):
                _fail(path, f"{where} must be a mapping of TrainConfig fields, got {kw!r}")
            bad = set(kw) - fields - (_CONFIG_ONLY_KEYS if group == "configs" else set())
            if bad:
                _fail(path, f"{where}: unknown fields {sorted(bad)}; allowed: {sorted(fields)}")
            if "__" in str(entry) or "/" in str(entry):
                _fail(path, f"{group} name {entry!r} may not contain '__' or '/'")
    for entry, kw in sweep["configs"].items():
        own = kw.get("seeds", seeds)
        if not (isinstance(own, list) and own and all(isinstance(s, int) and s >= 0 for s in own)
                and len(set(own)) == len(own)):
            _fail(path, f"configs.{entry}.seeds must be a list of distinct integers >= 0, got {own!r}")
        if isinstance(kw.get("stage", 0), bool) or not isinstance(kw.get("stage", 0), int):
            _fail(path, f"configs.{entry}.stage must be an integer, got {kw['stage']!r}")
        if kw.get("match_by", "mlp") not in MATCH_BY:
            _fail(path, f"configs.{entry}.match_by must be one of {list(MATCH_BY)}, got {kw['match_by']!r}")
        target = kw.get("match_params")
        if target is not None and (target not in sweep["configs"] or "match_params" in sweep["configs"][target]):
            _fail(path, f"configs.{entry}.match_params must name another config without match_params, "
                        f"got {target!r}; configs: {sorted(sweep['configs'])}")
    return sweep


def _train_kwargs(sweep: dict[str, Any], dataset: str, config: str, seed: int) -> dict[str, Any]:
    layers = (sweep["common"], sweep["datasets"][dataset], sweep["configs"][config])
    kw = {k: v for layer in layers for k, v in layer.items()}
    timm_kwargs = {k: v for layer in layers for k, v in (layer.get("timm_kwargs") or {}).items()}
    if timm_kwargs:  # merged key by key: a dataset or config adds to the common timm kwargs
        kw["timm_kwargs"] = timm_kwargs
    kw["seed"] = seed
    if "dataset" not in kw:
        kw["dataset"] = dataset
    for key in _CONFIG_ONLY_KEYS:
        kw.pop(key, None)
    if sweep["save_every_steps"]:
        kw["save_every_steps"] = sweep["save_every_steps"]
    return kw


def expand_runs(sweep: dict[str, Any], only: Optional[str] = None) -> list[Run]:
    """Every run of the sweep, by stage (a configuration's `stage`, default 0: e.g. the primary comparison
    first), then seed-major (all configurations of seed 0 first); a configuration runs the sweep's seeds or its
    own `seeds`; optionally filtered by a glob on the run id; `match_params` is resolved into the widened MLP's `mlp_ratio` (`match_by: mlp`, the
    default) or the factorised key's `key_hidden` (`match_by: key`)."""
    from .train import TrainConfig

    matched: dict[tuple[str, str], float] = {}
    runs = []
    all_seeds = sorted({s for ckw in sweep["configs"].values() for s in ckw.get("seeds", sweep["seeds"])})
    for seed in all_seeds:
        for dataset in sweep["datasets"]:
            for config, ckw in sweep["configs"].items():
                run_id = f"{dataset}__{config}__s{seed}"
                if seed not in ckw.get("seeds", sweep["seeds"]) or (only and not fnmatch.fnmatch(run_id, only)):
                    continue
                kw = _train_kwargs(sweep, dataset, config, seed)
                if ckw.get("match_params"):
                    key = (dataset, config)
                    by_key = ckw.get("match_by", "mlp") == "key"
                    if key not in matched:
                        target = _params_of(TrainConfig(**_train_kwargs(sweep, dataset, ckw["match_params"], seed)))
                        matched[key] = (match_key_hidden if by_key else match_mlp_ratio)(TrainConfig(**kw), target)
                    if by_key:
                        kw["key_hidden"] = matched[key]
                    else:
                        kw["timm_kwargs"] = {**kw.get("timm_kwargs", {}), "mlp_ratio": matched[key]}
                try:
                    TrainConfig(**kw).resolved()
                except (TypeError, ValueError) as err:
                    raise ValueError(f"sweep {sweep['name']}: run {run_id}: {err}") from None
                runs.append(Run(run_id, dataset, config, seed, kw))
    stage = {config: ckw.get("stage", 0) for config, ckw in sweep["configs"].items()}
    return sorted(runs, key=lambda r: stage[r.config])  # stable: seed-major within a stage


def _params_of(cfg: Any) -> int:
    from .cost import count_params
    from .checkpoint import build_model
    from .train import model_spec, num_classes_of

    c = cfg.resolved()
    return count_params(build_model(model_spec(c, num_classes_of(c))))


def match_mlp_ratio(cfg: Any, target_params: int) -> float:
    """The `mlp_ratio` that gives the model of `cfg` (a baseline TrainConfig) the parameter count closest
    to `target_params`: the "more parameters, same attention" control. Parameters grow linearly with the
    MLP's hidden width, so two probes give the slope; the ratio is (hidden + 0.5) / width so that timm's
    `int(width * mlp_ratio)` lands on the chosen hidden width."""
    c = cfg.resolved()
    if c.variant != "baseline":
        raise ValueError(f"match_params widens a baseline's MLP; config has variant {c.variant!r}")
    width = c.timm_kwargs.get("embed_dim")
    if width is None:
        import timm
        width = timm.create_model(c.model, pretrained=False).embed_dim

    def params(hidden: int) -> int:
        kw = {**c.timm_kwargs, "mlp_ratio": (hidden + 0.5) / width}
        return _params_of(dataclasses.replace(c, timm_kwargs=kw, preset=None))

    h0 = int(width * float(c.timm_kwargs.get("mlp_ratio", 4.0)))
    p0, p1 = params(h0), params(h0 + 1)
    hidden = max(1, h0 + round((target_params - p0) / (p1 - p0)))
    return (hidden + 0.5) / width


def match_key_hidden(cfg: Any, target_params: int) -> int:
    """The `key_hidden` that gives the model of `cfg` (a baseline TrainConfig) the parameter count closest to
    `target_params`: the over-parameterised key control. Parameters grow linearly with the hidden width, so
    two probes give the slope."""
    c = cfg.resolved()
    if c.variant != "baseline":
        raise ValueError(f"match_by: key factorises a baseline's key; config has variant {c.variant!r}")
    p1, p2 = (_params_of(dataclasses.replace(c, key_hidden=e)) for e in (1, 2))
    return max(1, 1 + round((target_params - p1) / (p2 - p1)))


# ----------------------------------------------------------------------------- running
def _paths(sweep: dict[str, Any], run: Run) -> tuple[Path, Path]:
    return Path(sweep["results_dir"]) / f"{run.run_id}.json", Path(sweep["runs_dir"]) / run.run_id


def _diff_settings(saved: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    from .train import changed_settings
    return changed_settings(saved, asked)


def run_state(sweep: dict[str, Any], run: Run) -> str:
    """'done' (its JSON exists and matches the settings), 'partial' (a checkpoint to resume) or 'todo'.
    Raises ValueError when a saved result or checkpoint was made with other settings (never overwritten)."""
    from .train import TrainConfig

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


def _worker_init(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def _run_one(sweep: dict[str, Any], run: Run, state: str) -> dict[str, Any]:
    """Train (state "todo") or resume (state "partial", from `run_state`) one run and write its result JSON
    atomically; returns the record."""
    import torch

    from .bench import machine_description

    from .cost import count_flops, count_params
    from .train import TrainConfig, train

    result_path, out = _paths(sweep, run)
    cfg = TrainConfig(**run.train, out=str(out), resume=state == "partial", quiet=True)
    t0 = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t0
    model = res.pop("model")
    size = int(getattr(model.patch_embed, "img_size", (32, 32))[0]) if hasattr(model, "patch_embed") else 32
    resolved = cfg.resolved()
    record = {
        "sweep": sweep["name"], "run_id": run.run_id, "dataset": run.dataset, "config": run.config,
        "seed": run.seed, "variant": resolved.variant,
        "num_charts": cfg.num_charts if resolved.variant != "baseline" else None,
        "params": count_params(model), "flops": count_flops(model.cpu(), (1, 3, size, size)),
        "val_acc": res["val"]["acc"], "test_acc": res["test"]["acc"], "test_loss": res["test"]["loss"],
        "epochs": res["epoch"], "steps": res["step"], "history": res["history"],
        "train_time_s": round(sum(r["time"] for r in res["history"]), 2), "wall_time_s": round(wall, 2),
        "resumed": state == "partial", "threads": torch.get_num_threads(), "machine": machine_description(),
        "train": resolved.to_dict(), "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for key in ("out", "resume", "quiet"):
        record["train"].pop(key, None)
    if res.get("chart_init"):
        record["chart_init"] = res["chart_init"]
    if resolved.variant == "kua":
        record["test_acc_one_hot"] = one_hot_test_accuracy(resolved, model)
    ckpt.atomic_write_json(result_path, record)
    return {**record, "_state": state}


def one_hot_test_accuracy(cfg: Any, model: Any) -> float:
    """Test accuracy of a trained KUA model when each token takes its most probable chart's key alone."""
    from torch.utils.data import DataLoader

    from .key import membership_mode
    from .train import build_datasets, evaluate

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
            print(f"[{n + 1}/{len(runs)}] {run.run_id}  test acc {rec['test_acc']:.3f}  "
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
    from .cli import ArgumentParser

    p = ArgumentParser(prog="mkviz sweep", description="Train every run of a sweep file (resumable), then regenerate "
                "its report page from the per-run JSON.")
    p.add_argument("config", help="sweep YAML file, e.g. configs/repro_small.yaml")
    p.add_argument("--jobs", type=int, help="runs in parallel (default: the file's 'jobs')")
    p.add_argument("--only", help="only run ids matching this glob, e.g. 'digits__*' or '*__s0'")
    p.add_argument("--list", action="store_true", help="list the runs and their state (done/partial/todo), run nothing")
    p.add_argument("--report-only", action="store_true", help="regenerate the page and plots from the JSON only")
    p.add_argument("--check", action="store_true", help="exit 1 if the page is out of sync with the JSON")
    p.add_argument("--no-plots", action="store_true", help="do not (re)write the SVG plots")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import sweep_report

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
