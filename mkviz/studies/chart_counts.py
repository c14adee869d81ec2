"""Accuracy against the number of charts, from the Fashion-MNIST reproduction's per-run JSON.

The demo report plots the reproduction's seeds (mean and spread per chart count) beside the shipped
single-seed checkpoints. It runs from an installed wheel too, where `docs/results/` is absent, so the
few numbers it needs ship as `data/studies/chart_counts_fmnist.json`, written from the per-run JSON by

    python -m mkviz.studies.chart_counts            # docs/results/repro_fmnist -> data/studies/...

and checked against them by `tests/test_chart_counts.py` (the file cannot drift from the study).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from ..training.checkpoint import shipped_checkpoints_dir
from .sweep_config import load_sweep
from .sweep_report import load_results

__all__ = ["STUDY_CONFIG", "chart_count_summary", "summary_path", "load_chart_count_summary", "main"]

STUDY_CONFIG = "configs/repro_fmnist.yaml"
_VARIANT = "vanillak"
# a config on the sweep's default recipe sets no more than these (no epochs, kernel size or expansion of its own)
_DEFAULT_RECIPE_KEYS = {"variant", "num_charts", "lr", "stage", "seeds"}


def chart_count_summary(records: list[dict[str, Any]], sweep: dict[str, Any]) -> dict[str, Any]:
    """{"study", "page", "what", "baseline": {seed: acc}, "charts": {count: {seed: acc}}} from the run records.

    Takes the sweep's `baseline` and every VanillaK config on the default recipe (the 1-16 chart sweep:
    kernel size 1, key expansion, the sweep's own epochs), so controls such as `vanillak-8-12ep` stay out.
    """
    configs = sweep["configs"]
    plain = {name: cfg for name, cfg in configs.items()
             if cfg.get("variant") == _VARIANT and set(cfg) <= _DEFAULT_RECIPE_KEYS}
    by_count: dict[str, dict[str, float]] = {}
    for name, cfg in sorted(plain.items(), key=lambda kv: kv[1]["num_charts"]):
        by_count[str(cfg["num_charts"])] = _accs(records, name)
    train = next(r["train"] for r in records if r["config"] == sweep["baseline"])
    return {"study": sweep["name"], "page": sweep.get("page"),
            "what": f"test accuracy after {train['epochs']} epochs on {train['num_train']} training images, "
                    "one run per seed",
            "baseline": _accs(records, sweep["baseline"]), "charts": by_count}


def _accs(records: list[dict[str, Any]], config: str) -> dict[str, float]:
    """{seed: test accuracy} of one config (seeds as strings: the JSON file's keys)."""
    return {str(r["seed"]): float(r["test_acc"]) for r in sorted(records, key=lambda r: r["seed"])
            if r["config"] == config}


def summary_path(root: Optional[Path] = None) -> Path:
    """`data/studies/chart_counts_fmnist.json` of the repository (or the installed wheel)."""
    base = root if root is not None else shipped_checkpoints_dir().parent
    return base / "studies" / "chart_counts_fmnist.json"


def load_chart_count_summary(path: Optional[Path] = None) -> dict[str, Any]:
    """The shipped summary (see `chart_count_summary`)."""
    p = Path(path) if path is not None else summary_path()
    if not p.is_file():
        raise FileNotFoundError(f"path: no chart-count summary at {p}; write it with python -m mkviz.studies.chart_counts")
    return json.loads(p.read_text())


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mkviz.studies.chart_counts", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=STUDY_CONFIG, help=f"the sweep file (default {STUDY_CONFIG})")
    p.add_argument("--out", default=None, help="default: data/studies/chart_counts_fmnist.json")
    args = p.parse_args(argv)
    sweep = load_sweep(args.config)
    summary = chart_count_summary(load_results(sweep["results_dir"]), sweep)
    out = Path(args.out) if args.out else summary_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out}: baseline and {len(summary['charts'])} chart counts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
