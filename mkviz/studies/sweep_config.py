"""A sweep file: the YAML that lists a study's runs, read and checked (`load_sweep`), expanded into runs
(`expand_runs`); `mkviz.studies.sweep` trains them, `mkviz.studies.sweep_report` writes their page.

The YAML file (paths are relative to the working directory; see configs/repro_small.yaml)::

    name: repro_small
    results_dir: docs/results/repro_small   # one <run_id>.json per finished run (commit these)
    runs_dir: outputs/sweeps/repro_small    # training checkpoints (resumable; not committed)
    page: docs/reproduction.md              # regenerated from the JSON by mkviz.studies.sweep_report
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

A run's id is ``<dataset>__<config>__s<seed>``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import timm

from ..core.cost import count_params
from ..training.build import build_model
from ..training.config import TrainConfig, model_spec, num_classes_of

__all__ = ["Run", "load_sweep", "expand_runs", "params_of", "match_mlp_ratio", "match_key_hidden", "MATCH_BY"]

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


def _matches(run_id: str, only: str) -> bool:
    """Whether `run_id` matches one of the comma-separated globs of `only`."""
    return any(fnmatch.fnmatch(run_id, glob.strip()) for glob in only.split(","))


def expand_runs(sweep: dict[str, Any], only: Optional[str] = None) -> list[Run]:
    """Every run of the sweep, by stage (a configuration's `stage`, default 0: e.g. the primary comparison
    first), then seed-major (all configurations of seed 0 first); a configuration runs the sweep's seeds or its
    own `seeds`; optionally filtered by globs on the run id (`only`, comma-separated: any may match); `match_params` is resolved into the widened MLP's `mlp_ratio` (`match_by: mlp`, the
    default) or the factorised key's `key_hidden` (`match_by: key`)."""

    matched: dict[tuple[str, str], float] = {}
    runs = []
    all_seeds = sorted({s for ckw in sweep["configs"].values() for s in ckw.get("seeds", sweep["seeds"])})
    for seed in all_seeds:
        for dataset in sweep["datasets"]:
            for config, ckw in sweep["configs"].items():
                run_id = f"{dataset}__{config}__s{seed}"
                if seed not in ckw.get("seeds", sweep["seeds"]) or (only and not _matches(run_id, only)):
                    continue
                kw = _train_kwargs(sweep, dataset, config, seed)
                if ckw.get("match_params"):
                    key = (dataset, config)
                    by_key = ckw.get("match_by", "mlp") == "key"
                    if key not in matched:
                        target = params_of(TrainConfig(**_train_kwargs(sweep, dataset, ckw["match_params"], seed)))
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


def params_of(cfg: Any) -> int:
    """Parameters of the model a TrainConfig describes."""
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
        width = timm.create_model(c.model, pretrained=False).embed_dim

    def params(hidden: int) -> int:
        kw = {**c.timm_kwargs, "mlp_ratio": (hidden + 0.5) / width}
        return params_of(dataclasses.replace(c, timm_kwargs=kw, preset=None))

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
    p1, p2 = (params_of(dataclasses.replace(c, key_hidden=e)) for e in (1, 2))
    return max(1, 1 + round((target_params - p1) / (p2 - p1)))
