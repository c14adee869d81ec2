"""The numbers of docs/gpu_runs.md, computed from the files the GPU runs left (shared by its tests)."""
from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "docs/results/gpu_2026-12-04"
PAGE = "docs/gpu_runs.md"
BENCH = {"ViT-S/16 eager": "docs/bench_cuda_vit_s_224_h8.json",
         "ViT-B/16 eager": "docs/bench_cuda_vit_b_224_h8.json",
         "ViT-S/16 compiled per block": "docs/bench_cuda_vit_s_224_h8_compiled.json"}
STUDY_TRAIN_IMAGES = 54_000  # configs/repro_gpu.yaml: all training images but the 6,000 held out for validation


def bench(label: str) -> dict[str, dict]:
    return {r["variant"]: r for r in json.loads((ROOT / BENCH[label]).read_text())}


def log(run: int) -> str:
    return (RUNS / f"log_run{run}.txt").read_text()


def log_ratios(run: int, step: str) -> dict[str, tuple[float, ...]]:
    """{variant: (train, infer[, folded])} printed by one bench step of a run's log."""
    text = log(run).split(f"== {step} (")[1].split("\n== ")[0]
    return {m[0]: tuple(float(x) for x in m[1:] if x) for m in
            re.findall(r"\[(\w+)/8\] train x([\d.]+) infer x([\d.]+)(?: folded x([\d.]+))?", text)}


def refusal_errors() -> list[float]:
    return [float(x) for x in re.findall(r"differs from the original by ([\d.e+-]+) ", log(1))]


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def study_epoch_times() -> list[float]:
    return [m["time"] for p in sorted((RUNS / "repro_gpu_partial").glob("*.jsonl")) for m in metrics(p)]


def study_pace() -> dict[str, float]:
    """Mean epoch time with three runs sharing the GPU, and what the stated runs would take at that pace."""
    t = sum(study_epoch_times()) / len(study_epoch_times())
    run_min = 30 * t / 60
    return {"epoch_s": t, "images_per_s": STUDY_TRAIN_IMAGES / t, "run_min": run_min,
            "stage0_h": 30 / 3 * run_min / 60, "all_h": 81 / 3 * run_min / 60,
            "lr_check_h": 54 / 3 * (10 * t / 60) / 60}


def notebook_baseline() -> list[dict]:
    return metrics(RUNS / "notebook03_baseline/metrics.jsonl")


def notebook_test_acc() -> float:
    return json.loads((RUNS / "notebook03_baseline/results.json").read_text())["metrics"]["test"]["acc"]


def extra_step_ms(label: str, variant: str) -> float:
    """How much longer a training step of `variant` took than the baseline's, in ms (medians, same run)."""
    r = bench(label)[variant]
    return 1e3 * r["batch_size"] * (1 / r["train_images_per_s"] - 1 / r["baseline_train_images_per_s"])
