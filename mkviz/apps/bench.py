"""Benchmarks against timm's baseline.

    python -m mkviz.bench [run] [--quick] [--json PATH] [--model NAME] [--img-size 224] [--batch-size 8]
                          [--device cpu|cuda] [--dtype float32|bfloat16] [--compile]
                          [--variants ...] [--num-charts 1 2 4 8 16] [--repeats 5]
        the suite: for each variant x number of charts, parameters, nominal FLOPs, training and
        inference throughput, folded inference throughput and peak training memory, each as a
        ratio to timm's unmodified model measured in the same run, interleaved (round robin,
        rotating order) so that machine noise hits both sides alike; plus the latency of a full
        re-forward at a new chart count. Prints a table; --json writes one record per
        (variant, num_charts).
    python -m mkviz.bench table PATH.json
        a Markdown table from a JSON written by `run` (docs/benchmarks.md is made this way).
    python -m mkviz.bench params [--models ...] [--num-charts 8] [--markdown]
        parameters and nominal FLOPs (every chart computed as written, docs/design.md §2) of each
        variant vs the unmodified timm model, as a table; random weights, nothing downloaded.
    python -m mkviz.bench record ...
        overhead of recording attention (mkviz.bench_record).

Ratios are variant / baseline for throughput (> 1: faster than timm) and for parameters, FLOPs
and memory (> 1: bigger). efficiency = train_throughput_ratio / (baseline FLOPs / variant FLOPs)
with the nominal per-chart FLOPs (`count_flops(reference=True)`): an implementation that computes
less than the nominal architecture scores above 1. See docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import timm
import torch
from torch import nn
from torch.nn import functional as F

from ..core.checks import ArgumentParser, run_command
from ..core.cost import count_flops, count_params, machine_description
from ..core.key import LINEAR_VARIANTS, VARIANTS, resolve_variant
from ..core.models import convert, fold
from ..viz.explorers import ChartExplorer
from . import bench_record

__all__ = ["CostRow", "cost_table", "format_cost_table", "RECORD_FIELDS", "run_suite", "format_suite",
           "format_markdown", "main"]

DEFAULT_MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
                  "swin_tiny_patch4_window7_224")
DEFAULT_CHARTS = (1, 2, 4, 8, 16)
# --quick: every variant at 8 charts and VanillaK at every chart count, on smaller inputs
QUICK = dict(img_size=96, batch_size=8, repeats=3, warmup=1)

# the fields every record carries (issue 6); records hold more (absolute numbers, settings)
RECORD_FIELDS = ("variant", "num_charts", "params", "flops", "params_ratio", "flops_ratio",
                 "train_throughput_ratio", "infer_throughput_ratio", "folded_infer_throughput_ratio",
                 "peak_memory_ratio", "efficiency", "model", "device")


# ---------------------------------------------------------------------------------------- params
@dataclass
class CostRow:
    model: str
    variant: str  # "baseline" or a variant name
    num_charts: int
    params: int
    flops: int
    params_ratio: float
    flops_ratio: float


def cost_table(models: Sequence[str] = DEFAULT_MODELS, num_charts: int = 8, img_size: int = 224) -> list[CostRow]:
    """Parameters and FLOPs (batch 1, img_size²) of each model: baseline, then every variant."""
    rows = []
    for name in models:
        torch.manual_seed(0)
        base = timm.create_model(name, pretrained=False, img_size=img_size).eval()
        size = (1, 3, img_size, img_size)
        p0, f0 = count_params(base), count_flops(base, size)
        rows.append(CostRow(name, "baseline", 0, p0, f0, 1.0, 1.0))
        for variant in VARIANTS:
            model = convert(base, variant, num_charts)
            p, f = count_params(model), count_flops(model, size)
            rows.append(CostRow(name, variant, num_charts, p, f, p / p0, f / f0))
            del model
    return rows


def format_cost_table(rows: Sequence[CostRow], markdown: bool = False) -> str:
    """Render rows as a fixed-width text table, or a Markdown table."""
    head = ["model", "variant", "charts", "params (M)", "× params", "GFLOPs", "× FLOPs"]
    body = [[r.model, r.variant, str(r.num_charts or "-"), f"{r.params / 1e6:.2f}", f"{r.params_ratio:.2f}",
             f"{r.flops / 1e9:.2f}", f"{r.flops_ratio:.2f}"] for r in rows]
    return _render(head, body, markdown, left=2)


def _render(head: Sequence[str], body: Sequence[Sequence[str]], markdown: bool, left: int) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * left + ["---:"] * (len(head) - left)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < left else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


# ---------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _round_robin(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int,
                 device: torch.device) -> dict[str, list[float]]:
    """Time every fn once per round, `repeats` rounds after `warmup` untimed calls each; the order
    rotates from round to round so that no model always runs first (or right after a slow one).

    Each timed call follows one untimed call of the same fn (its turn is two calls): switching models
    costs re-warming caches and the memory allocator (measured here: up to 17 % of a ViT-S training step
    after a larger model's step), which is not the fn's own cost and would otherwise leak into its
    neighbour's time."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fns[name]()  # settle
            times[name].append(_timed(fns[name], device))
    return times


def _ratio(times: dict[str, list[float]], name: str, ref: str = "baseline") -> float:
    """Throughput of `name` relative to `ref`: the median over rounds of t_ref / t_name (same round)."""
    return statistics.median(a / b for a, b in zip(times[ref], times[name]))


# ---------------------------------------------------------------------------------------- memory
def _libc() -> Optional[ctypes.CDLL]:
    try:
        lib = ctypes.CDLL("libc.so.6")
        lib.malloc_trim  # noqa: B018 (glibc only)
        return lib
    except (OSError, AttributeError):
        return None


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


def memory_method(device: torch.device) -> Optional[str]:
    """How peak memory is measured on `device` (None: not measurable here)."""
    if device.type == "cuda":
        return "cuda: torch.cuda.max_memory_allocated() growth during one training step + parameters + optimiser state"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status("VmHWM")
    except OSError:
        return None
    return ("cpu: peak resident-set growth during one training step (Linux VmHWM, reset through "
            "/proc/self/clear_refs after malloc_trim) + parameters + optimiser state")


def _persistent_bytes(model: nn.Module, opt: Optional[torch.optim.Optimizer]) -> int:
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    if opt is not None:
        for state in opt.state.values():
            total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    return total


def _peak_step_bytes(step: Callable[[], Any], model: nn.Module, opt: torch.optim.Optimizer,
                     device: torch.device) -> Optional[int]:
    """Peak memory of one training step: what the step allocates at its peak (activations, gradients,
    temporaries) + what it keeps (parameters, buffers, optimiser state)."""
    opt.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        grown = torch.cuda.max_memory_allocated(device) - before
    else:
        lib = _libc()
        if lib is not None:
            lib.malloc_trim(0)  # give freed heap back, so that the step's allocations show as RSS growth
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM (peak RSS) to the current RSS
            before = _proc_status("VmRSS")
            step()
            grown = _proc_status("VmHWM") - before
        except OSError:
            return None
    return max(grown, 0) + _persistent_bytes(model, opt)


# ---------------------------------------------------------------------------------------- the suite
def _adamw(model: nn.Module) -> torch.optim.Optimizer:
    """The training step's optimiser, the same for every model (baseline included): AdamW with its fused
    kernel where the parameters' device has one (CPU and CUDA in current torch), else the default one.
    The optimiser's cost grows with the parameters, so its fastest form is the fair one to compare."""
    params = list(model.parameters())
    try:
        return torch.optim.AdamW(params, lr=1e-6, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(params, lr=1e-6)


def _pairs(variants: Sequence[str], num_charts: Sequence[int], quick: bool,
           explicit: bool) -> list[tuple[str, int]]:
    variants = [resolve_variant(v) for v in variants]
    if quick and not explicit:
        pairs = [("vanillak", h) for h in num_charts if "vanillak" in variants]
        pairs += [(v, 8) for v in variants if v != "vanillak"]
        return sorted(set(pairs), key=lambda p: (VARIANTS.index(p[0]), p[1]))
    return [(v, h) for v in variants for h in num_charts]


def _groups(pairs: Sequence[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """Models measured together (round robin with the baseline): one group per variant, with all its chart
    counts. Only the baseline and that variant's models are alive at once, so one variant's memory traffic
    and caches do not slow another's (measured here: KUA at 8 charts trained at 0.50-0.55x of the baseline
    while sharing the rounds with the other three variants, 0.60-0.62x alone)."""
    by_variant: dict[str, list[tuple[str, int]]] = {}
    for pair in pairs:
        by_variant.setdefault(pair[0], []).append(pair)
    return list(by_variant.values())


def _load() -> Optional[float]:
    """1-minute load average (other processes competing for the cores), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


class _GroupRunner:
    """Measures one group of variants against the baseline `base` on the fixed batch (x, y): training,
    inference and folded-inference throughput (all models round robin), peak memory, parameters, FLOPs."""

    def __init__(self, base: nn.Module, x: torch.Tensor, y: torch.Tensor, dev: torch.device,
                 amp: Callable[[], Any], maybe_compile: Callable[[nn.Module], Any], repeats: int, warmup: int,
                 mem_method: Optional[str], log: Callable[[str], None]) -> None:
        self.base, self.x, self.y, self.dev, self.amp, self.maybe_compile = base, x, y, dev, amp, maybe_compile
        self.repeats, self.warmup, self.mem_method, self.log = repeats, warmup, mem_method, log
        self.size = (1, 3, x.shape[-2], x.shape[-1])
        self.base_params, self.base_flops = count_params(base), count_flops(base, self.size)
        self.t0 = time.perf_counter()

    def stamp(self) -> str:
        return f"{time.perf_counter() - self.t0:6.1f}s"

    def trainer(self, m: nn.Module) -> tuple[Callable[[], None], torch.optim.Optimizer]:
        opt, run = _adamw(m), self.maybe_compile(m)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with self.amp():
                loss = F.cross_entropy(run(self.x), self.y)
            loss.backward()
            opt.step()
        return step, opt

    def inferrer(self, m: nn.Module) -> Callable[[], None]:
        run = self.maybe_compile(m)

        def forward() -> None:
            with torch.inference_mode(), self.amp():
                run(self.x)
        return forward

    def _train_times(self, models: dict[str, nn.Module], label: str) -> tuple[dict, dict]:
        """Training step times per model, and each model's peak memory of one step (or None)."""
        steps, opts = {}, {}
        for n, m in models.items():
            steps[n], opts[n] = self.trainer(m)
        self.log(f"{self.stamp()} [{label}] training throughput ({self.repeats} rounds)")
        times = _round_robin(steps, self.repeats, self.warmup, self.dev)
        peak = {n: _peak_step_bytes(steps[n], models[n], opts[n], self.dev) if self.mem_method else None
                for n in models}
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        return times, peak

    def _infer_times(self, models: dict[str, nn.Module], group: Sequence[tuple[str, int]], label: str
                     ) -> tuple[dict, Optional[dict]]:
        """Inference step times per model, and of the folded linear variants (None if the group has none)."""
        for m in models.values():
            m.eval()
        self.log(f"{self.stamp()} [{label}] inference throughput")
        infer_t = _round_robin({n: self.inferrer(m) for n, m in models.items()}, self.repeats, self.warmup, self.dev)
        if not any(v in LINEAR_VARIANTS for v, _ in group):
            return infer_t, None
        self.log(f"{self.stamp()} [{label}] folded inference throughput")
        folded = {"baseline": self.base}
        folded.update({f"{v}/{h}": fold(models[f"{v}/{h}"]) for v, h in group if v in LINEAR_VARIANTS})
        return infer_t, _round_robin({n: self.inferrer(m) for n, m in folded.items()}, self.repeats, self.warmup,
                                     self.dev)

    def measure(self, group: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
        """One record per (variant, num_charts) of `group` (without the run-wide fields)."""
        label = ", ".join(f"{v}/{h}" for v, h in group)
        self.log(f"{self.stamp()} [{label}] building")
        models = {"baseline": self.base.train()}
        for v, h in group:
            models[f"{v}/{h}"] = convert(self.base, v, h).train()
        costs = {n: (count_params(m), count_flops(m, self.size)) for n, m in models.items() if n != "baseline"}
        train_t, peak = self._train_times(models, label)
        infer_t, folded_t = self._infer_times(models, group, label)
        return [self._record(v, h, costs[f"{v}/{h}"], train_t, infer_t, folded_t, peak) for v, h in group]

    def _record(self, v: str, h: int, cost: tuple[int, int], train_t: dict, infer_t: dict,
                folded_t: Optional[dict], peak: dict) -> dict[str, Any]:
        n, (params, flops), b = f"{v}/{h}", cost, self.x.shape[0]
        train_ratio, foldable = _ratio(train_t, n), v in LINEAR_VARIANTS
        rec = dict(
            variant=v, num_charts=h, params=params, flops=flops,
            params_ratio=params / self.base_params, flops_ratio=flops / self.base_flops,
            train_throughput_ratio=train_ratio,
            infer_throughput_ratio=_ratio(infer_t, n),
            folded_infer_throughput_ratio=_ratio(folded_t, n) if foldable else None,
            peak_memory_ratio=(peak[n] / peak["baseline"]) if peak[n] and peak["baseline"] else None,
            efficiency=train_ratio / (self.base_flops / flops),
            train_images_per_s=b / statistics.median(train_t[n]),
            baseline_train_images_per_s=b / statistics.median(train_t["baseline"]),
            infer_images_per_s=b / statistics.median(infer_t[n]),
            baseline_infer_images_per_s=b / statistics.median(infer_t["baseline"]),
            folded_infer_images_per_s=b / statistics.median(folded_t[n]) if foldable else None,
            peak_memory_bytes=peak[n], baseline_peak_memory_bytes=peak["baseline"],
            reforward_convert_ms=None, reforward_forward_ms=None, reforward_ms=None,
            reforward_baseline_forward_ms=None, reforward_img_size=None,
        )
        folded_text = f" folded x{rec['folded_infer_throughput_ratio']:.3f}" if foldable else ""
        infer_ratio = rec["infer_throughput_ratio"]
        self.log(f"{self.stamp()} [{n}] train x{train_ratio:.3f} infer x{infer_ratio:.3f}{folded_text}")
        return rec


def run_suite(
        model: str = "vit_small_patch16_224",
        img_size: int = 224,
        batch_size: int = 8,
        device: str = "cpu",
        dtype: str = "float32",
        compile: bool = False,
        variants: Sequence[str] = VARIANTS,
        num_charts: Sequence[int] = DEFAULT_CHARTS,
        repeats: int = 5,
        warmup: int = 1,
        quick: bool = False,
        pairs: Optional[Sequence[tuple[str, int]]] = None,
        latency_img_size: Optional[int] = 224,
        model_kwargs: Optional[dict] = None,
        seed: int = 0,
        log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run the benchmark; return one record (a dict, `RECORD_FIELDS` and more) per (variant, num_charts).

    Models are timm's `model` (random weights, `model_kwargs` passed to `timm.create_model`) and its
    conversions. Each variant is measured in its own group together with the baseline: all models of
    the group run round robin in every repeat. `pairs` overrides the (variant, num_charts) grid;
    `latency_img_size` (None: skip) is the image size of the re-forward latency (VanillaK only).
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16'; got {dtype!r}")
    if repeats < 1 or warmup < 0 or batch_size < 1 or img_size < 1:
        raise ValueError("repeats and batch_size and img_size must be >= 1, warmup >= 0")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    if pairs is None:
        pairs = _pairs(variants, num_charts, quick, explicit=False)
    pairs = list(dict.fromkeys((resolve_variant(v), int(h)) for v, h in pairs))
    model_kwargs = dict(model_kwargs or {})
    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext
    maybe_compile = (lambda m: torch.compile(m)) if compile else (lambda m: m)
    if compile:
        warmup = max(warmup, 2)
    mem_method = memory_method(dev)

    torch.manual_seed(seed)
    base = timm.create_model(model, pretrained=False, img_size=img_size, **model_kwargs).to(dev)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=gen).to(dev)
    y = torch.randint(0, base.num_classes or 1000, (batch_size,), generator=gen).to(dev)
    runner = _GroupRunner(base, x, y, dev, amp, maybe_compile, repeats, warmup, mem_method, log)
    optimizer = "AdamW (fused)" if _adamw(base).defaults.get("fused") else "AdamW"
    common = dict(model=model, device=dev.type, dtype=dtype, compile=compile, img_size=img_size,
                  batch_size=batch_size, repeats=repeats, warmup=warmup, quick=quick,
                  baseline_params=runner.base_params, baseline_flops=runner.base_flops, memory_method=mem_method,
                  optimizer=optimizer,
                  date=datetime.date.today().isoformat(), machine=machine_description(), load_average_start=_load())
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for group in _groups(pairs):
        for rec in runner.measure(group):
            rec.update(common)
            records[(rec["variant"], rec["num_charts"])] = rec
        gc.collect()
        lib = _libc()
        if lib is not None and dev.type == "cpu":
            lib.malloc_trim(0)

    latency_charts = [h for v, h in pairs if v == "vanillak"]
    if latency_img_size and latency_charts:
        log(f"{runner.stamp()} [latency] re-forward at a new chart count ({latency_img_size} px, batch 1)")
        lat = reforward_latency(model, latency_charts, latency_img_size, dev, repeats=1 if quick else repeats,
                                model_kwargs=model_kwargs, amp=amp)
        for h, values in lat.items():
            records[("vanillak", h)].update(values, reforward_img_size=latency_img_size)
    load = _load()
    for rec in records.values():
        rec["load_average_end"] = load
    log(f"{runner.stamp()} done")
    return [records[p] for p in pairs]


def reforward_latency(model: str, num_charts: Sequence[int], img_size: int = 224, device: torch.device | str = "cpu",
                      repeats: int = 3, model_kwargs: Optional[dict] = None,
                      amp: Callable[[], Any] = contextlib.nullcontext) -> dict[int, dict[str, float]]:
    """What an explorer pays to show a new chart count: convert the model to VanillaK at H charts and
    forward one image (eval, no recording). Medians in ms, with the baseline forward for scale."""
    dev = torch.device(device)
    torch.manual_seed(0)
    base = timm.create_model(model, pretrained=False, img_size=img_size, **(model_kwargs or {})).to(dev).eval()
    x = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0)).to(dev)

    def forward(m: nn.Module) -> float:
        with torch.inference_mode(), amp():
            return _timed(lambda: m(x), dev)

    forward(base)
    out: dict[int, dict[str, float]] = {}
    for h in num_charts:
        conv, fwd, ref = [], [], []
        for _ in range(repeats + 1):  # the first round warms up
            ref.append(forward(base))
            _sync(dev)
            start = time.perf_counter()
            mk = convert(base, "vanillak", h)
            _sync(dev)
            conv.append(time.perf_counter() - start)
            fwd.append(forward(mk))
            del mk
        c, f, b = (statistics.median(t[1:]) * 1e3 for t in (conv, fwd, ref))
        out[h] = dict(reforward_convert_ms=c, reforward_forward_ms=f, reforward_ms=c + f,
                      reforward_baseline_forward_ms=b)
    return out


# ---------------------------------------------------------------------------------------- output
def explorer_latency(model: str = "vit_small_patch16_224", img_size: int = 224, num_charts: int = 8,
                     moves: int = 20, seed: int = 0) -> dict[str, float]:
    """Latency of the notebook explorer (`mkviz.ChartExplorer`) on a converted model (random weights).

    first_forward_ms: building the explorer's cache for one image (the recorded forward);
    slider_move_ms: median of `moves` query-slider moves (re-slice the cached maps, update the figure).
    """

    torch.manual_seed(seed)
    base = timm.create_model(model, pretrained=False, img_size=img_size).eval()
    converted = convert(base, "vanillak", num_charts).eval()
    images = torch.randn(1, 3, img_size, img_size)
    start = time.perf_counter()
    explorer = ChartExplorer(converted, images)
    first = (time.perf_counter() - start) * 1000.0
    return {"first_forward_ms": first, "slider_move_ms": explorer.update_latency_ms(moves)}


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_suite(records: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """The suite's table (ratios to the baseline) and the re-forward latency section."""
    head = ["variant", "charts", "params (M)", "× params", "× FLOPs", "× train", "× infer", "× folded",
            "× memory", "efficiency"]
    body = [[r["variant"], str(r["num_charts"]), f"{r['params'] / 1e6:.2f}", _fmt(r["params_ratio"]),
             _fmt(r["flops_ratio"]), _fmt(r["train_throughput_ratio"]), _fmt(r["infer_throughput_ratio"]),
             _fmt(r["folded_infer_throughput_ratio"]), _fmt(r["peak_memory_ratio"]), _fmt(r["efficiency"])]
            for r in records]
    parts = [_render(head, body, markdown, left=1)]
    if records:
        r0 = records[0]
        parts.append(
            f"\nbaseline {r0['model']} ({r0['baseline_params'] / 1e6:.2f} M params, "
            f"{r0['baseline_flops'] / 1e9:.2f} GFLOPs/image at {r0['img_size']} px): "
            f"train {r0['baseline_train_images_per_s']:.1f} images/s, "
            f"inference {r0['baseline_infer_images_per_s']:.1f} images/s "
            f"(batch {r0['batch_size']}, {r0['device']}, {r0['dtype']}{', compiled' if r0['compile'] else ''}, "
            f"{r0.get('optimizer', 'AdamW')}, median of {r0['repeats']} rounds{', QUICK settings' if r0['quick'] else ''})")
    lat = [r for r in records if r.get("reforward_ms") is not None]
    if lat:
        head = ["charts", "convert (ms)", "forward (ms)", "re-forward (ms)", "baseline forward (ms)"]
        body = [[str(r["num_charts"]), _fmt(r["reforward_convert_ms"], 1), _fmt(r["reforward_forward_ms"], 1),
                 _fmt(r["reforward_ms"], 1), _fmt(r["reforward_baseline_forward_ms"], 1)] for r in lat]
        parts.append(f"\nRe-forward at a new chart count: convert {lat[0]['model']} to VanillaK at H charts, "
                     f"forward one {lat[0]['reforward_img_size']} px image (recording off)\n")
        parts.append(_render(head, body, markdown, left=1))
    return "\n".join(parts)


def format_markdown(records: Sequence[dict[str, Any]]) -> str:
    """Markdown tables for docs/benchmarks.md, with the settings and machine they were measured on."""
    if not records:
        return "(no records)"
    r0 = records[0]
    m = r0.get("machine", {})
    head = (f"Measured {r0.get('date', '?')} on {r0['device']} ({m.get('cpu_count', '?')} cores, "
            f"{m.get('torch_threads', '?')} torch threads{', ' + m['gpu'] if m.get('gpu') else ''}), "
            f"Python {m.get('python', '?')}, torch {m.get('torch', '?')}, timm {m.get('timm', '?')}: "
            f"`{r0['model']}` at {r0['img_size']} px, batch {r0['batch_size']}, {r0['dtype']}"
            f"{', torch.compile' if r0['compile'] else ''}, median of {r0['repeats']} interleaved rounds after "
            f"{r0['warmup']} warm-up{' (--quick)' if r0['quick'] else ''}; 1-minute load average "
            f"{r0.get('load_average_start', '?')} at the start, {r0.get('load_average_end', '?')} at the end "
            f"(other processes on the same cores).\n\n")
    return head + format_suite(records, markdown=True)


# ---------------------------------------------------------------------------------------- CLI
def _run_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    gpu = torch.cuda.is_available()
    r = sub.add_parser("run", help="the suite (default): throughput, memory, FLOPs vs timm's baseline")
    r.add_argument("--model", default=None,
                   help="timm model name (default: vit_small_patch16_224 on cpu, vit_base_patch16_224 on cuda)")
    r.add_argument("--img-size", type=int, default=None, help=f"default 224 ({QUICK['img_size']} with --quick)")
    r.add_argument("--batch-size", type=int, default=None,
                   help=f"default 8 on cpu, 64 on cuda ({QUICK['batch_size']} on cpu with --quick)")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if gpu else "cpu",
                   help="default: cuda when a GPU is visible, else cpu")
    r.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="bfloat16: torch.autocast for every model, baseline included")
    r.add_argument("--compile", action="store_true", help="torch.compile every model (baseline included)")
    r.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"default: {' '.join(VARIANTS)}")
    r.add_argument("--num-charts", nargs="+", type=int, default=None, help="default 1 2 4 8 16")
    r.add_argument("--repeats", type=int, default=None, help=f"timed rounds (default 5, {QUICK['repeats']} with --quick)")
    r.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 1; 2 with --compile)")
    r.add_argument("--quick", action="store_true",
                   help=f"under 2 minutes on 2 CPU cores: {QUICK['img_size']} px, batch {QUICK['batch_size']}, "
                        f"{QUICK['repeats']} rounds; every variant at 8 charts + VanillaK at every chart count")
    r.add_argument("--latency-img-size", type=int, default=224, help="image size of the re-forward latency (0: skip)")
    r.add_argument("--json", metavar="PATH", help="write the records as JSON")
    r.add_argument("--markdown", action="store_true", help="print Markdown tables")
    return r


def _run(args: argparse.Namespace) -> int:
    cuda = args.device == "cuda"
    model = args.model or ("vit_base_patch16_224" if cuda else "vit_small_patch16_224")
    quick = args.quick
    img = args.img_size or (QUICK["img_size"] if quick else 224)
    batch = args.batch_size or (64 if cuda else (QUICK["batch_size"] if quick else 8))
    repeats = args.repeats or (QUICK["repeats"] if quick else 5)
    warmup = QUICK["warmup"] if args.warmup is None else args.warmup
    charts = args.num_charts or list(DEFAULT_CHARTS)
    pairs = _pairs(args.variants, charts, quick, explicit=args.num_charts is not None)
    if quick:
        print(f"QUICK mode: {model} at {img} px (not 224), batch {batch}, {repeats} rounds after {warmup} warm-up; "
              f"{len(pairs)} records: " + ", ".join(f"{v}/{h}" for v, h in pairs), flush=True)
    start = time.perf_counter()
    records = run_suite(model, img, batch, args.device, args.dtype, args.compile, pairs=pairs, repeats=repeats,
                        warmup=warmup, quick=quick, latency_img_size=args.latency_img_size or None,
                        log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_markdown(records) if args.markdown else format_suite(records))
    if records and records[0]["memory_method"]:
        print(f"\nmemory: {records[0]['memory_method']}")
    print(f"efficiency = train throughput ratio / (baseline FLOPs / variant FLOPs), nominal per-chart FLOPs; "
          f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "record":  # the recording-overhead benchmark has its own options
        return int(bench_record.main(argv[1:]) or 0)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["run"] + argv  # the suite is the default subcommand

    parser = ArgumentParser(prog="mkviz bench", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    t = sub.add_parser("table", help="Markdown tables from a JSON written by `run --json`")
    t.add_argument("path", help="a JSON file written by `mkviz bench run --json PATH`")
    p = sub.add_parser("params", help="parameters and FLOPs of each variant vs the timm baseline")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="timm model names")
    p.add_argument("--num-charts", type=int, default=8, help="charts of every variant (default 8)")
    p.add_argument("--img-size", type=int, default=224, help="input size in pixels (default 224)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    sub.add_parser("record", help="overhead of recording attention (forwards to mkviz.bench_record)",
                   add_help=False)
    e = sub.add_parser("explorer", help="notebook explorer latency: a slider move (cached forward), in ms")
    e.add_argument("--model", default="vit_small_patch16_224", help="timm model name (default vit_small_patch16_224)")
    e.add_argument("--img-size", type=int, default=224, help="input size in pixels (default 224)")
    e.add_argument("--num-charts", type=int, default=8, help="VanillaK charts (default 8)")
    e.add_argument("--moves", type=int, default=20, help="slider moves timed (default 20)")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "explorer":
        ms = explorer_latency(args.model, args.img_size, args.num_charts, args.moves)
        print(f"explorer ({args.model}, {args.img_size} px, vanillak, {args.num_charts} charts): built with its "
              f"first recorded forward in {ms['first_forward_ms']:.0f} ms; slider move {ms['slider_move_ms']:.1f} ms "
              f"(median of {args.moves}; target <= 50 ms)")
        return 0
    if args.command == "table":
        with open(args.path) as f:
            print(format_markdown(json.load(f)))
        return 0
    rows = cost_table(args.models, args.num_charts, args.img_size)
    print(format_cost_table(rows, markdown=args.markdown))
    print(f"\nFLOPs: one {args.img_size}x{args.img_size} image, a multiply-add = 2, every chart computed as "
          "written (nominal); mkviz's fast path computes less (docs/design.md §6).")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_command("bench", main, sys.argv[1:]))
