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
         "ViT-S/16 compiled per block": "docs/bench_cuda_vit_s_224_h8_compiled.json",
         "ViT-B/16 compiled per block": "docs/bench_cuda_vit_b_224_h8_compiled.json"}
PROFILE = "docs/profile_cuda_vit_s_224_h8.json"
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


STUDY_RUNS = {3: "repro_gpu_partial", 6: "repro_gpu_6jobs"}  # runs sharing the GPU -> their metrics


def study_epoch_times(jobs: int = 3) -> list[float]:
    return [m["time"] for p in sorted((RUNS / STUDY_RUNS[jobs]).glob("*.jsonl")) for m in metrics(p)]


def study_pace(jobs: int = 3) -> dict[str, float]:
    """Mean epoch time with `jobs` runs sharing the GPU, and what the stated runs would take at that pace."""
    t = sum(study_epoch_times(jobs)) / len(study_epoch_times(jobs))
    run_min = 30 * t / 60
    return {"epoch_s": t, "images_per_s": STUDY_TRAIN_IMAGES / t, "gpu_images_per_s": jobs * STUDY_TRAIN_IMAGES / t,
            "run_min": run_min, "stage0_h": 30 / jobs * run_min / 60, "all_h": 81 / jobs * run_min / 60,
            "lr_check_h": 54 / jobs * (10 * t / 60) / 60}


def profile() -> dict[str, dict]:
    """{variant: the profile record of one training step} (`mkviz bench profile`, ViT-S/16)."""
    return {r["variant"]: r for r in json.loads((ROOT / PROFILE).read_text())}


def notebook_baseline() -> list[dict]:
    return metrics(RUNS / "notebook03_baseline/metrics.jsonl")


def notebook_test_acc() -> float:
    return json.loads((RUNS / "notebook03_baseline/results.json").read_text())["metrics"]["test"]["acc"]


def extra_step_ms(label: str, variant: str) -> float:
    """How much longer a training step of `variant` took than the baseline's, in ms (medians, same run)."""
    r = bench(label)[variant]
    return 1e3 * r["batch_size"] * (1 / r["train_images_per_s"] - 1 / r["baseline_train_images_per_s"])


def profile_extra(variant: str, key: str) -> float:
    """How much more of `key` (device ms, operators, kernels per step) a variant's profiled step has."""
    return profile()[variant][key] - profile()["baseline"][key]


def bench_step_ms(label: str) -> float:
    """The baseline's training step in a benchmark run, in ms (batch over median throughput)."""
    r = next(iter(bench(label).values()))
    return 1e3 * r["batch_size"] / r["baseline_train_images_per_s"]


def notebook_gpu() -> dict:
    """Notebook 03's GPU run as committed: {"table": its results table, "run": its Run All record}."""
    return json.loads((ROOT / "docs/results/notebook03_gpu.json").read_text())


def notebook_run_all() -> str:
    """The Run All time of notebook 03's GPU run as its generated page writes it."""
    from mkviz.course.notebook_runs import format_duration

    return format_duration(notebook_gpu()["run"]["seconds"])
