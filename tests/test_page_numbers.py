"""Every number written by hand on a results page agrees with the data.

The generated blocks (`<!-- mkviz:begin NAME --> … <!-- mkviz:end NAME -->`) are checked by the page-sync test
(tests/test_sweep.py). This test covers the prose around them: every decimal number and percentage outside the
blocks, code and links must lie inside a span of the CLAIMS table (a template whose `{}` are filled from the
per-run JSON, the sweep file or the checkpoints, and must then appear verbatim on the page) or of the ALLOWED
table (a constant of the design or a quoted outside number, with its reason). A new study page registers its
page in PAGES and its numbers below.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
import math
import re
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest

import gpu_runs_data as gpu

ROOT = Path(__file__).resolve().parents[1]
REPRO, CHARTS, LR = "docs/reproduction_fmnist.md", "docs/chart_specialisation.md", "docs/lr_check_fmnist.md"
KERNEL = "docs/kernel_size_fmnist.md"
DENSE = "docs/dense_fmnist.md"
KUA_USAGE = "docs/kua_usage_fmnist.md"
README, DATA = "README.md", "data/README.md"
GPU = gpu.PAGE

# page -> (start, end) of the region checked (None: the whole page)
PAGES = {
    REPRO: None, CHARTS: None, LR: None, KERNEL: None, DENSE: None, KUA_USAGE: None, GPU: None,
    README: ("## Does it help?", "## The course"),
    DATA: ("| checkpoint | variant |", "**Why this recipe**"),
}


def mk(module: str, name: str):
    """mkviz's analysis functions, in one place: they may move between modules."""
    return getattr(importlib.import_module(f"mkviz.{module}"), name)


# ----------------------------------------------------------------------------- the data
@functools.lru_cache(None)
def study(name: str = "repro_fmnist"):
    sweep = mk("sweep", "load_sweep")(ROOT / f"configs/{name}.yaml")
    records = mk("sweep_report", "load_results")(ROOT / sweep["results_dir"])
    rows = mk("sweep_report", "summarize")(records, sweep)["fmnist"]
    return sweep, records, rows


def row(config: str) -> dict:
    return study()[2][config]


@functools.lru_cache(None)
def family() -> dict[tuple[str, str], dict]:
    """Every comparison of the page's family: stats.compare plus the Holm p over the family."""
    sweep, _, rows = study()
    stats = importlib.import_module("mkviz.stats")
    fam = mk("sweep_analysis", "comparison_family")(sweep, rows)
    res = [stats.compare(rows[a]["accs"], rows[b]["accs"]) for a, b, _ in fam]
    holm = stats.holm([r["paired"]["p"] for r in res])
    return {(a, b): {**r, "holm": h} for (a, b, _), r, h in zip(fam, res, holm)}


def cmp(a: str, b: str) -> dict:
    return family()[(a, b)]


def runs(config: str) -> list[dict]:
    return [r for r in study()[1] if r["config"] == config]


def mean_of(config: str, get: Callable[[dict], float]) -> float:
    return float(np.mean([get(r) for r in runs(config)]))


def last_gain(config: str) -> float:
    return mean_of(config, lambda r: r["history"][-1]["val_acc"] - r["history"][-2]["val_acc"])


def gap(config: str) -> float:
    return mean_of(config, lambda r: r["history"][-1]["train_acc"] - r["history"][-1]["val_acc"])


def chart(config: str, key: str, when: str = "end") -> float:
    return mean_of(config, lambda r: (r["chart_init"] if when == "init" else r["history"][-1])[key])


def cost_ratio(config: str, column: int) -> float:
    """A ratio column of the page's generated cost table (itself checked against the JSON by the page-sync test)."""
    text = (ROOT / REPRO).read_text()
    block = text[text.index("<!-- mkviz:begin cost-fmnist -->"):text.index("<!-- mkviz:end cost-fmnist -->")]
    line = next(x for x in block.splitlines() if x.startswith(f"| `{config}` |"))
    return float(line.split("|")[column + 1].split()[0])


def train_flops(config: str) -> float:
    """Training FLOPs against the baseline's: the cost table's step ratio times the epochs ratio (the table's own
    total column is rounded to 2 decimals)."""
    return cost_ratio(config, 5) * runs(config)[0]["epochs"] / runs(B)[0]["epochs"]


@functools.lru_cache(None)
def checkpoints() -> dict[str, dict]:
    out = {}
    for p in sorted((ROOT / "data/checkpoints/fashion-mnist").glob("*/config.json")):
        d = json.loads(p.read_text())
        out[p.parent.name] = {"test": d["metrics"]["test"]["acc"], "val": d["metrics"]["val"]["acc"],
                              "history": d["history"]}
    return out


@functools.lru_cache(None)
def kernel_family() -> dict[tuple[str, str], dict]:
    """Study v3's stated family: stats.compare, the Holm p over the family, the TOST p and its Holm values."""
    stats = importlib.import_module("mkviz.stats")
    sweep, _, rows = study("kernel_fmnist")
    in_family = mk("sweep_analysis", "in_holm_family")
    fam = [c for c in mk("sweep_analysis", "comparison_family")(sweep, rows) if in_family(sweep, c[2])]
    res = [stats.compare(rows[a]["accs"], rows[b]["accs"]) for a, b, _ in fam]
    tost = [stats.tost_paired(rows[a]["accs"], rows[b]["accs"], sweep["report"]["equivalence_margin"])["p"]
            for a, b, _ in fam]
    holm, holm_tost = stats.holm([r["paired"]["p"] for r in res]), stats.holm(tost)
    primary = [i for i, (_, _, role) in enumerate(fam) if role == "primary"]
    holm_tost_primary = dict(zip(primary, stats.holm([tost[i] for i in primary])))
    return {(a, b): {**r, "holm": h, "tost": t, "holm_tost": ht, "holm_tost_primary": holm_tost_primary.get(i)}
            for i, ((a, b, _), r, h, t, ht) in enumerate(zip(fam, res, holm, tost, holm_tost))}


def kcmp(a: str, b: str) -> dict:
    return kernel_family()[(a, b)]


def kernel_paired(a: str, b: str) -> dict:
    """The paired comparison of two study v3 configurations outside the family (description)."""
    rows = study("kernel_fmnist")[2]
    return importlib.import_module("mkviz.stats").paired(rows[a]["accs"], rows[b]["accs"])


def kernel_train_flops(a: str, b: str) -> float:
    """Counted training FLOPs of run a over run b (step FLOPs at the batch size × epochs)."""
    count = mk("core.cost", "count_train_flops")
    out = []
    for config in (a, b):
        train = next(r["train"] for r in study("kernel_fmnist")[1] if r["config"] == config)
        cfg = mk("training.config", "TrainConfig")(**train).resolved()
        model = mk("training.build", "build_model")(mk("training.loop", "model_spec")(cfg, 10))
        size = cfg.timm_kwargs["img_size"]
        out.append(count(model, (cfg.batch_size, 3, size, size)) * cfg.epochs)
    return out[0] / out[1]


def p_lt(p: float) -> str:                                 # "< 0.001" or "0.012"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def kua_usage_end(key: str) -> list:
    """A quantity of the KUA usage runs' last epoch, one value per run."""
    return [r["history"][-1][key] for r in study("kua_usage_fmnist")[1]]


def kernel_margin() -> str:
    sweep = mk("sweep", "load_sweep")(ROOT / "configs/kernel_fmnist.yaml")
    return f"{100 * sweep['report']['equivalence_margin']:g}"


@functools.lru_cache(None)
def dense_sweep() -> dict:
    return mk("sweep", "load_sweep")(ROOT / "configs/dense_fmnist.yaml")


def dense_power(family: int) -> tuple[str, str]:
    """The two-sided level of Holm's first step over `family` comparisons and the 80 %-power MDE of a paired t-test
    with the dense study's seeds, in units of the paired differences' standard deviation."""
    n, alpha = len(dense_sweep()["seeds"]), 0.05 / family
    mde = mk("stats", "min_detectable_effect")(1 / math.sqrt(n), n - 1, alpha)
    return f"{alpha:g}", f"{mde:.2f}"


@functools.lru_cache(None)
def dense_rows() -> dict:
    sweep = dense_sweep()
    records = mk("sweep_report", "load_results")(ROOT / sweep["results_dir"])
    return mk("sweep_report", "summarize")(records, sweep)


@functools.lru_cache(None)
def dense_test() -> dict:
    """The dense study's stated test (`stated_test`: Holm across the two tasks) by (task, configuration), each
    with the paired MDE at Holm's first level of the group it was adjusted over."""
    out = {}
    for c in mk("sweep_analysis", "stated_test")(dense_sweep(), dense_rows()):
        pr = c["paired"]
        mde = 100 * mk("stats", "min_detectable_effect")(pr["se"], pr["n"] - 1, 0.05 / c["holm_over"])
        out[(c["dataset"], c["a"])] = {**c, "mde": mde}
    return out


def dense_diff(task: str, config: str) -> tuple[str, str, str, str]:
    """Δ, its paired 95 % interval (points) and p of `config` − baseline on `task`."""
    pr = dense_test()[(task, config)]["paired"]
    return (f"{100 * pr['diff']:+.1f}", f"{100 * pr['lo']:+.1f}", f"{100 * pr['hi']:+.1f}", p_lt(pr["p"]))


def dense_records(task: str) -> list[dict]:
    sweep = dense_sweep()
    return [r for r in mk("sweep_report", "load_results")(ROOT / sweep["results_dir"]) if r["dataset"] == task]


def dense_last_gain(task: str) -> float:
    """What the last epoch added to the validation metric, in points, averaged over the task's runs."""
    key = f"val_{dense_sweep()['report']['metric'][task].removeprefix('test_')}"
    return float(np.mean([100 * (r["history"][-1][key] - r["history"][-2][key]) for r in dense_records(task)]))


def dense_times(task: str, config: str) -> list[float]:
    return [r["train_time_s"] for r in dense_records(task) if r["config"] == config]


def margin_pp() -> str:
    return f"{100 * study()[0]['report']['equivalence_margin']:g}"


def tost_readings() -> tuple[str, ...]:
    """TOST p of the two primary comparisons, Holm over the primary pair, Holm over the family."""
    stats, (sweep, _, rows) = importlib.import_module("mkviz.stats"), study()
    fam = mk("sweep_analysis", "comparison_family")(sweep, rows)
    tost = {(a, b): stats.tost_paired(rows[a]["accs"], rows[b]["accs"], sweep["report"]["equivalence_margin"])["p"]
            for a, b, _ in fam}
    primary = stats.holm([tost[(V8, B)], tost[(V8, OP)]])
    family = dict(zip(tost, stats.holm(list(tost.values()))))
    return (p3(tost[(V8, B)]), p3(primary[0]), p3(tost[(V8, OP)]), p3(primary[1]), p3(family[(V8, B)]),
            p3(family[(V8, OP)]))


# ----------------------------------------------------------------------------- formats as the pages write them
def minus(s: str) -> str:
    return s.replace("-", "−")


def pc(x: float, d: int = 1) -> str:                       # 0.8223 -> "82.2"
    return f"{100 * x:.{d}f}"


def pp(x: float, d: int = 1) -> str:                       # signed points: "+0.0", "−0.6"
    return minus(f"{100 * x:+.{d}f}")


def pm(config: str) -> str:                                # "82.2 ± 0.3 %"
    return f"{pc(row(config)['mean'])} ± {pc(row(config)['std'])} %"


def ci(r: dict) -> str:                                    # "[−0.4, +0.4]"
    return f"[{pp(r['lo'])}, {pp(r['hi'])}]"


def p3(p: float) -> str:
    return f"{p:.3f}"


def p2(p: float) -> str:
    return f"{p:.2f}"


# ----------------------------------------------------------------------------- the claims
class Claim(NamedTuple):
    page: str
    template: str                  # the exact text on the page, `{}` where computed values go
    values: Callable[[], tuple]    # the computed strings, in order


V8, B, OP = "vanillak-8", "baseline", "overparam-key"
K1, K8 = "vanillak-1-k3", "vanillak-8-k3"
CLAIMS = [
    # --- gpu_runs.md: the two GPU runs' logs, the bench JSON and the training metrics (tests/gpu_runs_data.py)
    Claim(GPU, "original key by {} to {}", lambda: (f"{min(gpu.refusal_errors()):.1e}", f"{max(gpu.refusal_errors()):.1e}")),
    Claim(GPU, "training {}, inference {}, folded inference {}.", lambda: tuple(
        f"{x:.2f}" for x in gpu.log_ratios(1, "bench ViT-B compiled per block")["vanillak"])),
    Claim(GPU, "trained at {} (ViT-S) and {} (ViT-B) of the baseline's", lambda: (
        f"{gpu.log_ratios(1, 'bench ViT-S eager')['vanillak'][0]:.2f}",
        f"{gpu.log_ratios(1, 'bench ViT-B eager')['vanillak'][0]:.2f}")),
    Claim(GPU, "against {} and\n  {} in run 2", lambda: tuple(
        f"{gpu.bench(k)['vanillak']['train_throughput_ratio']:.2f}" for k in ("ViT-S/16 eager", "ViT-B/16 eager"))),
    Claim(GPU, "SpatialK-8 ({}) and SimpleK-8\n  ({}), and at", lambda: tuple(
        f"{gpu.bench('ViT-S/16 eager')[v]['infer_throughput_ratio']:.2f}" for v in ("spatialk", "simplek"))),
    Claim(GPU, "(VanillaK-8 training\n  {} → {})", lambda: tuple(
        f"{gpu.bench(k)['vanillak']['train_throughput_ratio']:.2f}" for k in ("ViT-S/16 eager", "ViT-S/16 compiled per block"))),
    Claim(GPU, "3 epochs of {}, {} and\n{} s; validation accuracy {} % after the first, {} %\nafter the last; test accuracy {} %",
          lambda: (*(f"{m['time']:.1f}" for m in gpu.notebook_baseline()),
                   f"{100 * gpu.notebook_baseline()[0]['val_acc']:.1f}", f"{100 * gpu.notebook_baseline()[-1]['val_acc']:.1f}",
                   f"{100 * gpu.notebook_test_acc():.2f}")),
    Claim(GPU, "logit difference on a batch {},", lambda: (
        re.search(r"max \|VanillaK-8 - baseline\| = ([\d.e+-]+)", gpu.log(2))[1],)),
    Claim(GPU, "(VanillaK-8 {} and {}, SpatialK-8 {} and {}, SimpleK-8 {} and {} ms", lambda: tuple(
        f"{gpu.extra_step_ms(k, v):.1f}" for v in ("vanillak", "spatialk", "simplek")
        for k in ("ViT-S/16 eager", "ViT-B/16 eager"))),
    Claim(GPU, "grows with the model ({} and {} ms)", lambda: tuple(
        f"{gpu.extra_step_ms(k, 'kua'):.1f}" for k in ("ViT-S/16 eager", "ViT-B/16 eager"))),
    Claim(GPU, "an epoch took {}–{} s", lambda: (f"{min(gpu.study_epoch_times()):.1f}", f"{max(gpu.study_epoch_times()):.1f}")),
    Claim(GPU, "about {} images/s per run. At that pace one run takes about\n{} minutes, the 30 runs of the primary "
               "comparison about {} hours three at a\ntime, all 81 runs about {} hours", lambda: tuple(
        f"{gpu.study_pace()[k]:.0f}" for k in ("images_per_s", "run_min", "stage0_h", "all_h"))),
    Claim(GPU, "10 epochs) about {} hours", lambda: (f"{gpu.study_pace()['lr_check_h']:.0f}",)),
    Claim(GPU, "the study needs about {} hours of one H200", lambda: (
        f"{gpu.study_pace(6)['all_h'] + gpu.study_pace(6)['lr_check_h']:.0f}",)),
    Claim(GPU, "VanillaK-8 meets it ({}) and\n  SimpleK-8 falls just short ({})", lambda: tuple(
        f"{gpu.bench('ViT-B/16 compiled per block')[v]['train_throughput_ratio']:.2f}" for v in ("vanillak", "simplek"))),
    Claim(GPU, "the baseline's step takes {} ms under it, {} ms in the benchmark", lambda: (
        f"{gpu.profile()['baseline']['step_ms']:.1f}", f"{gpu.bench_step_ms('ViT-S/16 eager'):.1f}")),
    Claim(GPU, "busy for\n  {} ms of a {} ms benchmark step", lambda: (
        f"{gpu.profile()['baseline']['device_ms_per_step']:.1f}", f"{gpu.bench_step_ms('ViT-S/16 eager'):.1f}")),
    Claim(GPU, "VanillaK-8 {} ms, SpatialK-8 {} ms, SimpleK-8 {} ms,\n  against {}, {} and {} ms more per step", lambda: (
        *(f"{gpu.profile_extra(v, 'device_ms_per_step'):.1f}" for v in ("vanillak", "spatialk", "simplek")),
        *(f"{gpu.extra_step_ms('ViT-S/16 eager', v):.1f}" for v in ("vanillak", "spatialk", "simplek")))),
    Claim(GPU, "operators ({}, {} and {} more per step)", lambda: tuple(
        f"{gpu.profile_extra(v, 'ops_per_step'):.0f}" for v in ("vanillak", "spatialk", "simplek"))),
    Claim(GPU, "(VanillaK-8 {} → {} ms, SimpleK-8 {} → {} ms)", lambda: tuple(
        f"{gpu.extra_step_ms(k, v):.1f}" for v in ("vanillak", "simplek")
        for k in ("ViT-B/16 eager", "ViT-B/16 compiled per block"))),
    Claim(GPU, "ViT-S much less (VanillaK-8 {} → {} ms)", lambda: tuple(
        f"{gpu.extra_step_ms(k, 'vanillak'):.1f}" for k in ("ViT-S/16 eager", "ViT-S/16 compiled per block"))),
    Claim(GPU, "KUA-8 adds {} ms of device time", lambda: (f"{gpu.profile_extra('kua', 'device_ms_per_step'):.1f}",)),
    Claim(GPU, "Run All took\n**{}**", lambda: (gpu.notebook_run_all(),)),
    Claim(GPU, "as in run 2 ({} %, same seed); one more epoch of it and of its VanillaK-8 conversion gave\n{} % and {} %",
          lambda: (f"{100 * gpu.notebook_gpu()['table']['start_test_acc']:.2f}",
                   *(f"{100 * r['test acc']:.2f}" for r in gpu.notebook_gpu()["table"]["rows"]))),
    Claim(GPU, "An epoch took {}–{} s, about {} images/s per run\nbut {} images/s on the GPU against {} with three runs:\n{}×",
          lambda: (f"{min(gpu.study_epoch_times(6)):.1f}", f"{max(gpu.study_epoch_times(6)):.1f}",
                   f"{gpu.study_pace(6)['images_per_s']:.0f}", f"{gpu.study_pace(6)['gpu_images_per_s']:.0f}",
                   f"{gpu.study_pace(3)['gpu_images_per_s']:.0f}",
                   f"{gpu.study_pace(6)['gpu_images_per_s'] / gpu.study_pace(3)['gpu_images_per_s']:.2f}")),
    Claim(GPU, "one run takes about {} minutes, the primary comparison\nabout {} hours, all 81 runs about {} hours and "
               "the learning-rate check about\n{} hours", lambda: tuple(
        f"{gpu.study_pace(6)[k]:.0f}" for k in ("run_min", "stage0_h", "all_h", "lr_check_h"))),
    # --- dense_fmnist.md: the question, from the sweep file, the dataset's defaults and mkviz.stats
    Claim(DENSE, "box IoU at most {} with\n  every earlier", lambda: (
        f"{inspect.signature(mk('data.scenes', 'FashionScenesDataset')).parameters['max_iou'].default:g}",)),
    Claim(DENSE, "equivalence at a margin of **±{} point**", lambda: (
        f"{100 * dense_sweep()['report']['equivalence_margin']:g}",)),
    Claim(DENSE, "weight decay {}\n  (chart scales", lambda: (f"{dense_sweep()['common']['weight_decay']:g}",)),
    Claim(DENSE, "unbalanced-atlas weight {} (as in", lambda: (f"{dense_sweep()['configs']['kua-8']['ua_weight']:g}",)),
    Claim(DENSE, "primary\n  comparisons (α = {}) detects with 80 % power a true difference of {} σ", lambda: dense_power(2)),
    Claim(DENSE, "four-comparison family (α = {}) one of {} σ", lambda: dense_power(4)),
    # --- dense_fmnist.md: the answer, from the per-run JSON (dense_test: the stated test across the two tasks)
    Claim(DENSE, "VanillaK-8 − baseline is {} points of test mIoU (paired 95 %\n  interval [{}, {}], p = {})",
          lambda: dense_diff("seg", "vanillak-8")),
    Claim(DENSE, "detection: {} points of test box mAP ([{}, {}], p = {})", lambda: dense_diff("det", "vanillak-8")),
    Claim(DENSE, "Holm\n  over the two primary comparisons {} and {}", lambda: tuple(
        p_lt(dense_test()[(t, "vanillak-8")]["holm_p"]) for t in ("seg", "det"))),
    Claim(DENSE, "TOST p {} and {}, {} and {} after Holm's adjustment", lambda: (
        *(p_lt(dense_test()[(t, "vanillak-8")]["tost_p"]) for t in ("seg", "det")),
        *(p_lt(dense_test()[(t, "vanillak-8")]["holm_tost_p"]) for t in ("seg", "det")))),
    Claim(DENSE, "σ = {} points of mIoU and\n  {} of mAP, so the stated test could detect a difference of {} points of mIoU "
                 "or {} of mAP", lambda: (
        *(f"{100 * dense_test()[(t, 'vanillak-8')]['paired']['sd']:.2f}" for t in ("seg", "det")),
        *(f"{dense_test()[(t, 'vanillak-8')]['mde']:.1f}" for t in ("seg", "det")))),
    Claim(DENSE, "{} points of mIoU ([{}, {}], p = {}) and", lambda: dense_diff("seg", "kua-8")),
    Claim(DENSE, "{} points of box mAP\n  ([{}, {}], p = {})", lambda: dense_diff("det", "kua-8")),
    Claim(DENSE, "over the four stated comparisons {} and {}", lambda: tuple(
        p_lt(dense_test()[(t, "kua-8")]["holm_p"]) for t in ("seg", "det"))),
    Claim(DENSE, "5 epochs added\n  {} points of validation mAP", lambda: (f"{dense_last_gain('det'):+.2f}",)),
    Claim(DENSE, "its last epoch added {} points", lambda: (f"{dense_last_gain('seg'):+.2f}",)),
    Claim(README, "VanillaK-8 − baseline is {} points of segmentation mIoU ([{}, {}]) and {} points of\ndetection box "
                  "mAP ([{}, {}])", lambda: (*dense_diff("seg", "vanillak-8")[:3], *dense_diff("det", "vanillak-8")[:3])),
    Claim(README, "(it could see about\n{} points)", lambda: (
        f"{max(dense_test()[(t, 'vanillak-8')]['mde'] for t in ('seg', 'det')):.1f}",)),
    Claim(README, "KUA-8 is\n{} and {} points behind", lambda: (
        dense_diff("seg", "kua-8")[0], dense_diff("det", "kua-8")[0])),
    Claim(DENSE, "detection runs took {} to {} s", lambda: tuple(
        f"{f(dense_times('det', 'baseline')):.0f}" for f in (min, max))),
    # --- reproduction_fmnist.md: the question and the set-up
    Claim(REPRO, "KUA-8 (λ = {}", lambda: (str(study()[0]["configs"]["kua-8"]["ua_weight"]),)),
    Claim(REPRO, "the last epoch added {}–{} points", lambda: (
        f"{100 * min(last_gain(c) for c in (B, V8, OP)):.1f}", f"{100 * max(last_gain(c) for c in (B, V8, OP)):.1f}")),
    Claim(REPRO, "against the spread between seeds ({}–{}", lambda: (
        f"{100 * min(last_gain(c) for c in (B, V8, OP)):.1f}", f"{100 * max(last_gain(c) for c in (B, V8, OP)):.1f}")),
    Claim(REPRO, "wide-MLP control added capacity the manifold key does not have and {}× its FLOPs",
          lambda: (f"{cost_ratio('baseline-wide', 2):.2f}",)),  # the same MLP widening, here on the cost table
    Claim(REPRO, "(weight decay {} with", lambda: (str(study()[0]["common"]["weight_decay"]),)),
    Claim(REPRO, "label smoothing {}, batch", lambda: (str(study()[0]["common"]["label_smoothing"]),)),
    Claim(REPRO, "took {}–{} s of training per run", lambda: (
        f"{min(r['train_time_s'] for r in runs(B)):.0f}", f"{max(r['train_time_s'] for r in runs(B)):.0f}")),
    Claim(REPRO, "(9 epochs, {}× the\n  training FLOPs)", lambda: (f"{train_flops('baseline-long'):.3f}",)),
    Claim(REPRO, "reach\n{}–{} % with the same architecture", lambda: (
        pc(min(c["test"] for c in checkpoints().values()), 2), pc(max(c["test"] for c in checkpoints().values()), 2))),
    Claim(REPRO, "(with\n5 paired seeds {}, so it can never reach", lambda: (
        str(importlib.import_module("mkviz.stats").permutation_paired(dict.fromkeys(range(5), 1.0),
                                                                       dict.fromkeys(range(5), 0.0))["floor"]),)),
    Claim(REPRO, "kernel size 3's exact unpaired p is that floor, 1/{} = {} for 3 against 10 runs", lambda: (
        str(math.comb(13, 3)) if cmp("vanillak-8-k3", B)["perm"]["floor"] == 1 / math.comb(13, 3) else "?",
        f"{cmp('vanillak-8-k3', B)['perm']['p']:.2g}")),
    Claim(REPRO, "equivalence columns (two one-sided paired tests at ±{} points)", lambda: (margin_pp(),)),
    Claim(REPRO, "(margin ±{} points, chosen after the\nstudy ran)", lambda: (margin_pp(),)),
    Claim(REPRO, "inside ±{} points (TOST p = {},\nHolm over the primary pair {}), and VanillaK-8 − over-parameterised "
                 "key too (p = {}, Holm {}).\nOver the whole family of comparisons neither is shown equivalent "
                 "(Holm {} and {})", lambda: (margin_pp(), *tost_readings())),
    Claim(README, "give two one-sided tests at ±{} points", lambda: (margin_pp(),)),
    Claim(README, "VanillaK-8 k=3 − VanillaK-1 k=3 is {} points, equivalent within the stated ±{} (TOST p = {}), "
                  "while\nVanillaK-1 k=3 is {} points above the baseline and {} above the FLOP-matched one (both "
                  "Holm p {})", lambda: (
        pp(kcmp(K8, K1)["paired"]["diff"]), kernel_margin(), p3(kcmp(K8, K1)["tost"]),
        pp(kcmp(K1, B)["paired"]["diff"]), pp(kcmp(K1, "baseline-15ep")["paired"]["diff"]),
        p_lt(max(kcmp(K1, B)["holm"], kcmp(K1, "baseline-15ep")["holm"])))),
    # --- kernel_size_fmnist.md: the question, stated before its runs (the margin is the sweep file's)
    Claim(KERNEL, "equivalence at a margin of **±{}\n  points** stated here in advance", lambda: (kernel_margin(),)),
    Claim(KERNEL, "The equivalence test at ±{} points", lambda: (kernel_margin(),)),
    Claim(KERNEL, "gives a minimum\n  detectable effect of about {} a point at 10 seeds", lambda: (
        "half" if round(100 * cmp(V8, B)["mde_paired"], 1) == 0.5 and cmp(V8, B)["paired"]["n"] == 10 else "?",)),
    # --- kua_usage_fmnist.md: the reading
    Claim(KUA_USAGE, "near uniform to {} (1/8 = {} is uniform)", lambda: (
        f"{np.mean(kua_usage_end('membership_max')):.3f}", f"{1 / 8:.3f}")),
    Claim(KUA_USAGE, "inference changes test accuracy by {} points", lambda: (pp(float(np.mean(
        [r["test_acc_one_hot"] - r["test_acc"] for r in study("kua_usage_fmnist")[1]]))),)),
    Claim(KUA_USAGE, "usage entropy falls from log2 8 = 3 bits at the start to {} bits at the end", lambda: (
        f"{np.mean(kua_usage_end('chart_usage_entropy')):.2f}",)),
    Claim(KUA_USAGE, "the most used chart\n  takes {} of the tokens and the least {}", lambda: tuple(
        f"{np.mean([np.mean(pick(np.asarray(u), axis=1)) for u in kua_usage_end('chart_usage_layers')]):.3f}"
        for pick in (np.max, np.min))),
    Claim(KUA_USAGE, "That is about {} charts' worth", lambda: (
        f"{np.mean([np.mean([2 ** e for e in r['history'][-1]['chart_usage_entropy_layers']]) for r in study('kua_usage_fmnist')[1]]):.1f}",)),
    # --- kernel_size_fmnist.md: the answer
    Claim(KERNEL, "VanillaK-8 k=3 − VanillaK-1 k=3 is {} points (paired {} % interval {}, p = {},\n  10 seeds)",
          lambda: (pp(kcmp(K8, K1)["paired"]["diff"]), "95", ci(kcmp(K8, K1)["paired"]), p3(kcmp(K8, K1)["paired"]["p"]))),
    Claim(KERNEL, "the stated margin of ±{} points", lambda: (kernel_margin(),)),
    Claim(KERNEL, "TOST\n  p = {} (Holm over the primary comparison {}, over the family of three {})", lambda: (
        p3(kcmp(K8, K1)["tost"]), p3(kcmp(K8, K1)["holm_tost_primary"]), p3(kcmp(K8, K1)["holm_tost"]))),
    Claim(KERNEL, "VanillaK-1 k=3 − baseline is {} points ({}, Holm p over the family {})", lambda: (
        pp(kcmp(K1, B)["paired"]["diff"]), ci(kcmp(K1, B)["paired"]), p_lt(kcmp(K1, B)["holm"]))),
    Claim(KERNEL, "(15 epochs, {}× VanillaK-1 k=3's counted training FLOPs)", lambda: (
        f"{kernel_train_flops('baseline-15ep', K1):.3f}",)),
    Claim(KERNEL, "it is\n  {} points ({}, Holm p {})", lambda: (
        pp(kcmp(K1, "baseline-15ep")["paired"]["diff"]), ci(kcmp(K1, "baseline-15ep")["paired"]),
        p_lt(kcmp(K1, "baseline-15ep")["holm"]))),
    Claim(KERNEL, "three more epochs buy the baseline {} points", lambda: (
        pp(kernel_paired("baseline-15ep", B)["diff"]),)),
    Claim(KERNEL, "also has {}× the baseline's parameters", lambda: (
        f"{study('kernel_fmnist')[2][K1]['params'] / study('kernel_fmnist')[2][B]['params']:.2f}",)),
    # --- the answer
    Claim(REPRO, "VanillaK-8 scored {} and the plain ViT {}", lambda: (pm(V8), pm(B))),
    Claim(REPRO, "VanillaK-8 − baseline is {} points ({} % interval {}, p = {}, Hedges' g = {})", lambda: (
        pp(cmp(V8, B)["paired"]["diff"]), "95", ci(cmp(V8, B)["paired"]), p3(cmp(V8, B)["paired"]["p"]),
        minus(f"{cmp(V8, B)['g']:+.2f}"))),
    Claim(REPRO, "a true difference of {} points with {} % probability\n(Welch: {})", lambda: (
        pc(cmp(V8, B)["mde_paired"]), "80", pc(cmp(V8, B)["mde_welch"]))),
    Claim(REPRO, "control is {} points ({}, p = {}, minimum detectable effect {}, g = {})", lambda: (
        pp(cmp(V8, OP)["paired"]["diff"]), ci(cmp(V8, OP)["paired"]), p3(cmp(V8, OP)["paired"]["p"]),
        pc(cmp(V8, OP)["mde_paired"]), minus(f"{cmp(V8, OP)['g']:+.2f}"))),
    Claim(REPRO, "level with the baseline ({}, {}, p = {})", lambda: (
        pp(cmp(OP, B)["paired"]["diff"]), ci(cmp(OP, B)["paired"]), p2(cmp(OP, B)["paired"]["p"]))),
    Claim(REPRO, "Holm's adjustment ({} and {} over the pair)", lambda: tuple(
        p3(p) for p in importlib.import_module("mkviz.stats").holm([cmp(V8, B)["paired"]["p"], cmp(V8, OP)["paired"]["p"]]))),
    Claim(REPRO, "costs\n{}× the training FLOPs) scored {} (5 seeds): VanillaK-8 − it is {} points paired\n({}, p = {};", lambda: (
        f"{train_flops('baseline-wide'):.1f}", pm("baseline-wide"), pp(cmp(V8, "baseline-wide")["paired"]["diff"]),
        ci(cmp(V8, "baseline-wide")["paired"]), p2(cmp(V8, "baseline-wide")["paired"]["p"]))),
    Claim(REPRO, "could only have seen about {} point)", lambda: (f"{100 * cmp(V8, 'baseline-wide')['mde_paired']:.0f}",)),
    Claim(REPRO, "(`baseline-long`: {}× the training FLOPs; a VanillaK-8 step does the\nbaseline's FLOPs, {} GFLOPs per "
                 "batch of 64) scored {}: VanillaK-8 − it is {} points paired\n({}, p = {}; Welch {}, p = {}; "
                 "the exact paired permutation test reaches its floor of\n{} at 5 seeds). After Holm's adjustment over "
                 "the whole family of comparisons it is p = {},", lambda: (
        f"{train_flops('baseline-long'):.3f}", "4.31" if cost_ratio(V8, 5) == 1.0 else "?", pm("baseline-long"),
        pp(cmp(V8, "baseline-long")["paired"]["diff"]), ci(cmp(V8, "baseline-long")["paired"]),
        p3(cmp(V8, "baseline-long")["paired"]["p"]), pp(cmp(V8, "baseline-long")["welch"]["diff"]),
        p3(cmp(V8, "baseline-long")["welch"]["p"]), f"{cmp(V8, 'baseline-long')['perm_paired']['floor']:.3f}"[:5],
        p3(cmp(V8, "baseline-long")["holm"]))),
    Claim(REPRO, "SpatialK-8 {}\n({}), SimpleK-8 {} ({}, p = {}), KUA-8 {} ({} {}, paired p = {},\nHolm over the family {}:",
          lambda: (pm("spatialk-8"), pp(cmp("spatialk-8", B)["paired"]["diff"]), pm("simplek-8"),
                   pp(cmp("simplek-8", B)["paired"]["diff"]), p2(cmp("simplek-8", B)["paired"]["p"]), pm("kua-8"),
                   pp(cmp("kua-8", B)["paired"]["diff"]), ci(cmp("kua-8", B)["paired"]), p3(cmp("kua-8", B)["paired"]["p"]),
                   p3(cmp("kua-8", B)["holm"]))),
    Claim(REPRO, "survives Holm's adjustment at\n{}).", lambda: ("0.05" if min(r["holm"] for r in family().values()) > 0.05
                                                              else "?",)),
    Claim(REPRO, "VanillaK at 1, 2, 4, 8 and 16 charts: {}, {}, {}, {} and {} %", lambda: tuple(
        pc(row(f"vanillak-{h}")["mean"]) for h in (1, 2, 4, 8, 16))),
    Claim(REPRO, "added {}, {} and {} points of validation accuracy", lambda: tuple(
        f"{100 * last_gain(c):.2f}" for c in (B, V8, OP))),
    Claim(REPRO, "the last epoch added {} to {} points) and every model gained {}–{} points", lambda: (
        pp(min(last_gain(c + "-12ep") for c in (B, V8, OP)), 2), pp(max(last_gain(c + "-12ep") for c in (B, V8, OP)), 2),
        pc(min(row(c + "-12ep")["mean"] - row(c)["mean"] for c in (B, V8, OP))),
        pc(max(row(c + "-12ep")["mean"] - row(c)["mean"] for c in (B, V8, OP))))),
    Claim(REPRO, "baseline {}, VanillaK-8 {}, over-parameterised key {}.", lambda: (
        pm("baseline-12ep"), pm("vanillak-8-12ep"), pm("overparam-key-12ep"))),
    Claim(REPRO, "baseline is {} points paired ({}, p = {}, minimum detectable effect {})", lambda: (
        pp(cmp("vanillak-8-12ep", "baseline-12ep")["paired"]["diff"]), ci(cmp("vanillak-8-12ep", "baseline-12ep")["paired"]),
        p2(cmp("vanillak-8-12ep", "baseline-12ep")["paired"]["p"]), pc(cmp("vanillak-8-12ep", "baseline-12ep")["mde_paired"]))),
    Claim(REPRO, "over-parameterised key {} ({}, p = {}; 4 seeds could only have seen {} points)", lambda: (
        pp(cmp("vanillak-8-12ep", "overparam-key-12ep")["paired"]["diff"]),
        ci(cmp("vanillak-8-12ep", "overparam-key-12ep")["paired"]),
        p2(cmp("vanillak-8-12ep", "overparam-key-12ep")["paired"]["p"]),
        pc(cmp("vanillak-8-12ep", "overparam-key-12ep")["mde_paired"]))),
    Claim(REPRO, "(train − validation {} points at 8 epochs, {}–{} at 12)", lambda: (
        pc(gap(B)), pc(min(gap(c + "-12ep") for c in (B, V8, OP))), pc(max(gap(c + "-12ep") for c in (B, V8, OP))))),
    Claim(REPRO, "which scored {} on 3 seeds ({} points, Welch p =\n{}, Holm over the family {})", lambda: (
        pm("vanillak-8-k3"), pp(cmp("vanillak-8-k3", B)["welch"]["diff"]), p3(cmp("vanillak-8-k3", B)["welch"]["p"]),
        p3(cmp("vanillak-8-k3", B)["holm"]))),
    Claim(REPRO, "it has 3 seeds, {}× the parameters and {}× the training FLOPs", lambda: (
        f"{cost_ratio('vanillak-8-k3', 2):.1f}", f"{train_flops('vanillak-8-k3'):.2f}")),
    Claim(REPRO, "12 epochs ({}× its FLOPs, against kernel size 3's {}×) reaches the same {} %", lambda: (
        f"{train_flops('baseline-12ep'):.1f}", f"{train_flops('vanillak-8-k3'):.2f}",
        pc(row("baseline-12ep")["mean"]) if pc(row("baseline-12ep")["mean"]) == pc(row("vanillak-8-k3")["mean"]) else "?")),
    # --- chart_specialisation.md
    Claim(CHARTS, "(λ = {} here", lambda: (str(study()[0]["configs"]["kua-8"]["ua_weight"]),)),
    Claim(CHARTS, "Chart-key cosine rises from {} at\n  initialisation to {} ± {} at the end at 8 charts (10 seeds; {} after "
                  "12 epochs), and to\n  {}–{} at 2, 4 and 16 charts", lambda: (
        f"{chart(V8, 'chart_cosine', 'init'):.3f}", f"{chart(V8, 'chart_cosine'):.3f}",
        f"{np.std([r['history'][-1]['chart_cosine'] for r in runs(V8)], ddof=1):.3f}",
        f"{chart('vanillak-8-12ep', 'chart_cosine'):.3f}",
        f"{min(chart(f'vanillak-{h}', 'chart_cosine') for h in (2, 4, 16)):.3f}",
        f"{max(chart(f'vanillak-{h}', 'chart_cosine') for h in (2, 4, 16)):.3f}")),
    Claim(CHARTS, "JS divergence ends at {} bit at 8 charts\n  ({} after 12 epochs)", lambda: (
        f"{chart(V8, 'chart_js'):.5f}", f"{chart('vanillak-8-12ep', 'chart_js'):.5f}")),
    Claim(CHARTS, "The JS grows from {} to\n  {} bit", lambda: (
        f"{chart(V8, 'chart_js', 'init'):.5f}", f"{chart(V8, 'chart_js'):.4f}")),
    Claim(CHARTS, "starts less alike ({}: more\n  random taps) and ends at the same {} (3 seeds)", lambda: (
        f"{chart('vanillak-8-k3', 'chart_cosine', 'init'):.3f}", f"{chart('vanillak-8-k3', 'chart_cosine'):.3f}")),
    Claim(CHARTS, "start with unrelated charts (cosine {}) and end at {}–{}", lambda: (
        f"{max(chart(c, 'chart_cosine', 'init') for c in ('spatialk-8', 'vanillak-8-input')):.2f}",
        f"{min(chart(c, 'chart_cosine') for c in ('spatialk-8', 'vanillak-8-input')):.2f}",
        f"{max(chart(c, 'chart_cosine') for c in ('spatialk-8', 'vanillak-8-input')):.2f}")),
    Claim(CHARTS, "(≈ {} bit)", lambda: (f"{chart('spatialk-8', 'chart_js'):.3f}",)),
    Claim(CHARTS, "Cosine falls from {} to\n  {} ± {} (5 seeds)", lambda: (
        f"{chart('simplek-8', 'chart_cosine', 'init'):.3f}", f"{chart('simplek-8', 'chart_cosine'):.3f}",
        f"{np.std([r['history'][-1]['chart_cosine'] for r in runs('simplek-8')], ddof=1):.3f}")),
    Claim(CHARTS, "at λ = {} the memberships", lambda: (str(study()[0]["configs"]["kua-8"]["ua_weight"]),)),
    Claim(CHARTS, "(mean max membership {}; uniform is {}) to nearly one-hot ({} ± {} at the end)", lambda: (
        f"{chart('kua-8', 'membership_max', 'init'):.3f}", f"{1 / 8:.3f}", f"{chart('kua-8', 'membership_max'):.3f}",
        f"{np.std([r['history'][-1]['membership_max'] for r in runs('kua-8')], ddof=1):.3f}")),
    Claim(CHARTS, "Chart-key cosine falls from {} to {} ± {} and the maps diverge by\n  {} bit", lambda: (
        f"{chart('kua-8', 'chart_cosine', 'init'):.3f}", f"{chart('kua-8', 'chart_cosine'):.2f}",
        f"{np.std([r['history'][-1]['chart_cosine'] for r in runs('kua-8')], ddof=1):.2f}",
        f"{chart('kua-8', 'chart_js'):.3f}")),
    Claim(CHARTS, "costs {} points ({} % against {} % soft, 5 seeds)", lambda: (
        f"{100 * (row('kua-8')['mean'] - mean_of('kua-8', lambda r: r['test_acc_one_hot'])):.1f}",
        pc(mean_of("kua-8", lambda r: r["test_acc_one_hot"])), pc(row("kua-8")["mean"]))),
    Claim(CHARTS, "scored {} points below the baseline (5 seeds, paired p = {})", lambda: (
        f"{-100 * cmp('kua-8', B)['paired']['diff']:.1f}", p3(cmp("kua-8", B)["paired"]["p"]))),
    Claim(CHARTS, "over its 21\ncomparisons ({}).", lambda: (p3(cmp("kua-8", B)["holm"]),)),
    # --- README.md, the reproduction paragraph
    Claim(README, "(9 epochs, {}× the training FLOPs;", lambda: (f"{train_flops('baseline-long'):.3f}",)),
    Claim(README, "VanillaK-8 − baseline is {}\npoints (paired {} % interval {}) and VanillaK-8 − over-parameterised key {} {},\n"
                  "where the study could have seen {} points", lambda: (
        pp(cmp(V8, B)["paired"]["diff"]), "95", ci(cmp(V8, B)["paired"]), pp(cmp(V8, OP)["paired"]["diff"]),
        ci(cmp(V8, OP)["paired"]), pc(cmp(V8, B)["mde_paired"]))),
    Claim(README, "is {} points ahead of\nit (p = {}, {} after adjusting for every comparison); KUA-8 is {} point behind "
                  "the baseline ({}\nafter adjustment", lambda: (
        pc(-cmp(V8, "baseline-long")["paired"]["diff"]), p3(cmp(V8, "baseline-long")["paired"]["p"]),
        p3(cmp(V8, "baseline-long")["holm"]), pc(-cmp("kua-8", B)["paired"]["diff"]), p3(cmp("kua-8", B)["holm"]))),
    Claim(README, "still level with both ({} and {} points, 4 seeds)", lambda: (
        pc(cmp("vanillak-8-12ep", "baseline-12ep")["paired"]["diff"]).replace("-", "−"),
        pp(cmp("vanillak-8-12ep", "overparam-key-12ep")["paired"]["diff"]))),
]

CLAIMS += [Claim(DATA, " | {} | {} | ", (lambda n: lambda: (f"{checkpoints()[n]['val']:.3f}", f"{checkpoints()[n]['test']:.4f}"))(n))
           for n in ("baseline", "vanillak-8", "simplek-8", "spatialk-8", "kua-8", "vanillak-1", "vanillak-2",
                     "vanillak-4", "vanillak-16")]
CLAIMS += [
    Claim(DATA, "baseline {}, best spatialk-8 {}, lowest kua-8 {}", lambda: (
        f"{checkpoints()['baseline']['test']:.4f}", f"{max(c['test'] for c in checkpoints().values()):.4f}"
        if max(checkpoints(), key=lambda n: checkpoints()[n]["test"]) == "spatialk-8" else "?",
        f"{min(c['test'] for c in checkpoints().values()):.4f}"
        if min(checkpoints(), key=lambda n: checkpoints()[n]["test"]) == "kua-8" else "?")),
    Claim(DATA, "at epoch 10 the baseline's train accuracy is {} and its validation accuracy {}, which gained {} over "
                "the last two epochs", lambda: (
        f"{checkpoints()['baseline']['history'][-1]['train_acc']:.3f}",
        f"{checkpoints()['baseline']['history'][-1]['val_acc']:.3f}",
        f"{checkpoints()['baseline']['history'][-1]['val_acc'] - checkpoints()['baseline']['history'][-3]['val_acc']:.3f}")),
]

# numbers that are constants of the design or quoted from outside, not results: (page, exact text, reason)
ALLOWED = [
    (GPU, '"perturbation=0.1 is too large to keep', "the refusal's message, quoted (0.1: the default perturbation)"),
    (GPU, "**Training throughput ≥ 0.9**", "the issue's target"),
    (DENSE, "IoU\n  0.50:0.95", "COCO's definition of mAP"),
    (DENSE, "80 % power", "the stated power of the MDE"),
    (REPRO, "arXiv 2402.00534", "the paper's identifier"),
    (REPRO, "+0.87 top-1 for ViT-B and +0.52 for Swin-T", "the paper's reported ImageNet gains"),
    (REPRO, "gain (+0.52, Swin-T)", "the paper's reported ImageNet gain"),
    (REPRO, "the paper's effect is +0.5 to +0.9", "the paper's reported gains, rounded"),
    (REPRO, "t-test at α = 0.05", "the stated test level"),
    (REPRO, "80 % probability at α = 0.05", "the stated power and test level of the MDE"),
    (REPRO, "can never reach 0.05", "the stated test level"),
    (KERNEL, "Holm's adjustment over these three comparisons at α = 0.05", "the stated test level"),
    (KERNEL, "effect (80 % power)", "the stated power of the MDE"),
    (KERNEL, "at 10 seeds and α = 0.05", "the stated test level"),
    (DATA, "human performance 0.835; MLP\n256-128-100 0.883; 2 Conv+pooling 0.876 and 0.916; 3 Conv+pooling+BN 0.903; "
           "HOG+SVM 0.926; ResNet18\n0.949; WRN-28-10 + random erasing 0.963", "the dataset's own benchmark table, quoted"),
    (DATA, "Why not about 0.9", "a round target, not a measurement"),
    (DATA, "should pass 0.9", "a round target, not a measurement"),
]


# ----------------------------------------------------------------------------- the checks
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?%|(?<![\w.])\d*\.\d+")


def page_text(page: str) -> str:
    text = (ROOT / page).read_text()
    if PAGES[page]:
        start, end = PAGES[page]
        text = text[text.index(start):text.index(end)]
    return text


def prose_mask(text: str) -> list[tuple[int, int]]:
    """Spans that are not prose: generated blocks, code, link targets, section references."""
    skip = []
    for pattern, flags in ((r"<!-- mkviz:begin (\S+) -->.*?<!-- mkviz:end \1 -->", re.S), (r"```.*?```", re.S),
                           (r"`[^`\n]*`", 0), (r"\]\([^)]*\)", 0), (r"§\s?\d+(?:\.\d+)*", 0)):
        skip += [m.span() for m in re.finditer(pattern, text, flags)]
    return skip


def test_claims_hold():
    """Each claim, filled in from the data, is on its page verbatim."""
    wrong = []
    for c in CLAIMS:
        filled = c.template.format(*c.values())
        if filled not in page_text(c.page):
            wrong.append(f"{c.page}: expected «{filled}»")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("page", list(PAGES))
def test_every_prose_number_is_claimed_or_allowed(page):
    text = page_text(page)
    covered = prose_mask(text)
    spans = [c.template.format(*c.values()) for c in CLAIMS if c.page == page]
    spans += [t for p, t, _ in ALLOWED if p == page]
    for s in spans:
        covered += [m.span() for m in re.finditer(re.escape(s), text)]
    loose = []
    for m in NUMBER.finditer(text):
        if not any(a <= m.start() and m.end() <= b for a, b in covered):
            line = text.count("\n", 0, m.start())
            loose.append(f"{page} (region line {line + 1}): {m.group()!r} in «{text.splitlines()[line].strip()[:100]}»")
    assert not loose, "numbers in prose that no claim checks:\n" + "\n".join(loose)


def test_allowed_texts_are_on_their_pages():
    for page, text, _ in ALLOWED:
        assert text in page_text(page), (page, text)
