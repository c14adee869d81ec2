"""The benchmark suite (`mkviz bench run`): for each variant x number of charts, parameters, nominal FLOPs,
training and inference throughput, folded inference throughput and peak training memory, each as a ratio to
timm's unmodified model measured in the same run; and the latency of a re-forward at a new chart count.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import timm
import torch
from torch import nn
from torch.nn import functional as F

from ..core.cost import count_flops, count_params, machine_description
from ..core.key import LINEAR_VARIANTS, VARIANTS, resolve_variant
from ..core.models import convert, fold
from .bench_timing import libc, memory_method, peak_step_bytes, round_robin, time_ratio, sync, timed

__all__ = ["COMPILE_SCOPES", "RECORD_FIELDS", "compile_blocks", "fused_adamw", "run_suite", "suite_pairs",
           "amp_context", "training_step"]


DEFAULT_MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
                  "swin_tiny_patch4_window7_224")

DEFAULT_CHARTS = (1, 2, 4, 8, 16)

# --quick: every variant at 8 charts and VanillaK at every chart count, on smaller inputs
QUICK = dict(img_size=96, batch_size=8, repeats=3, warmup=1)

# what `compile=` compiles: the whole model (one graph), or each transformer block on its own ("regional
# compilation": the blocks of a ViT share one compiled graph, so a cold start compiles one block, not twelve)
COMPILE_SCOPES = ("model", "blocks")

# compiled graphs per code object before dynamo falls back to eager: the suite compiles the baseline, every
# variant and the folded models, for training and for inference, so timm's default (8) is too few; a run
# that still hits it fails instead of timing eager code as compiled
RECOMPILE_LIMIT = 64

# the fields every record carries (issue 6); records hold more (absolute numbers, settings)
RECORD_FIELDS = ("variant", "num_charts", "params", "flops", "params_ratio", "flops_ratio",
                 "train_throughput_ratio", "infer_throughput_ratio", "folded_infer_throughput_ratio",
                 "peak_memory_ratio", "efficiency", "model", "device")

# ---------------------------------------------------------------------------------------- the suite
def fused_adamw(model: nn.Module) -> torch.optim.Optimizer:
    """The training step's optimiser, the same for every model (baseline included): AdamW with its fused
    kernel where the parameters' device has one (CPU and CUDA in current torch), else the default one.
    The optimiser's cost grows with the parameters, so its fastest form is the fair one to compare."""
    params = list(model.parameters())
    try:
        return torch.optim.AdamW(params, lr=1e-6, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return torch.optim.AdamW(params, lr=1e-6)

def amp_context(device_type: str, dtype: str) -> Callable[[], Any]:
    """The context every model's forward runs in: bf16 autocast for dtype "bfloat16", nothing for "float32"."""
    if dtype == "bfloat16":
        return lambda: torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext

def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: Callable[[], Any],
                  run: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
                  ) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    """The timed training step, the same for every model: forward of `run` (default: `model`; its compiled
    form when compiling) on x (B, 3, H, W) under the `amp` context, cross-entropy with y (B,), backward, a
    `fused_adamw` step on `model`'s parameters. Returns the step and its optimiser."""
    opt, run = fused_adamw(model), run or model

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp():
            loss = F.cross_entropy(run(x), y)
        loss.backward()
        opt.step()
    return step, opt

def suite_pairs(variants: Sequence[str], num_charts: Sequence[int], quick: bool,
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

def compile_blocks(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """`torch.compile` each block of `model.blocks` in place (timm's ViT-style models); returns `model`.
    `compile_kwargs` go to `nn.Module.compile` (`backend=`, `mode=`). Blocks of the same structure and shapes
    share one compiled graph (dynamo guards on the code, the parameters are inputs)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        raise ValueError(f"compile scope 'blocks' needs a model with a `blocks` list of transformer blocks "
                         f"(timm's ViT, DeiT, EVA, BEiT); {type(model).__name__} has none: use scope 'model'")
    for block in blocks:
        block.compile(**compile_kwargs)
    return model

def _compiler(scope: Optional[str]) -> Callable[[nn.Module], Any]:
    """The function that makes a model's compiled form (identity when `scope` is None)."""
    if scope is None:
        return lambda m: m
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"compile must be False, True or one of {COMPILE_SCOPES}; got {scope!r}")
    dynamo = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name differs between torch versions
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), RECOMPILE_LIMIT))
    if hasattr(dynamo, "fail_on_recompile_limit_hit"):
        dynamo.fail_on_recompile_limit_hit = True
    return torch.compile if scope == "model" else compile_blocks

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
        return training_step(m, self.x, self.y, self.amp, run=self.maybe_compile(m))

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
        times = round_robin(steps, self.repeats, self.warmup, self.dev)
        peak = {n: peak_step_bytes(steps[n], models[n], opts[n], self.dev) if self.mem_method else None
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
        infer_t = round_robin({n: self.inferrer(m) for n, m in models.items()}, self.repeats, self.warmup, self.dev)
        if not any(v in LINEAR_VARIANTS for v, _ in group):
            return infer_t, None
        self.log(f"{self.stamp()} [{label}] folded inference throughput")
        folded = {"baseline": self.base}
        folded.update({f"{v}/{h}": fold(models[f"{v}/{h}"]) for v, h in group if v in LINEAR_VARIANTS})
        return infer_t, round_robin({n: self.inferrer(m) for n, m in folded.items()}, self.repeats, self.warmup,
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
        train_ratio, foldable = time_ratio(train_t, n), v in LINEAR_VARIANTS
        rec = dict(
            variant=v, num_charts=h, params=params, flops=flops,
            params_ratio=params / self.base_params, flops_ratio=flops / self.base_flops,
            train_throughput_ratio=train_ratio,
            infer_throughput_ratio=time_ratio(infer_t, n),
            folded_infer_throughput_ratio=time_ratio(folded_t, n) if foldable else None,
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
        compile: bool | str = False,
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
    `compile`: False, True (= "model": `torch.compile` of the whole model) or "blocks" (each transformer block
    compiled on its own, `compile_blocks`), the same for every model, the baseline included.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16'; got {dtype!r}")
    if repeats < 1 or warmup < 0 or batch_size < 1 or img_size < 1:
        raise ValueError("repeats and batch_size and img_size must be >= 1, warmup >= 0")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    if pairs is None:
        pairs = suite_pairs(variants, num_charts, quick, explicit=False)
    pairs = list(dict.fromkeys((resolve_variant(v), int(h)) for v, h in pairs))
    model_kwargs = dict(model_kwargs or {})
    amp = amp_context(dev.type, dtype)
    scope = ("model" if compile is True else compile) if compile else None
    maybe_compile = _compiler(scope)
    if scope:
        warmup = max(warmup, 2)
    mem_method = memory_method(dev)

    torch.manual_seed(seed)
    base = timm.create_model(model, pretrained=False, img_size=img_size, **model_kwargs).to(dev)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=gen).to(dev)
    y = torch.randint(0, base.num_classes or 1000, (batch_size,), generator=gen).to(dev)
    runner = _GroupRunner(base, x, y, dev, amp, maybe_compile, repeats, warmup, mem_method, log)
    optimizer = "AdamW (fused)" if fused_adamw(base).defaults.get("fused") else "AdamW"
    common = dict(model=model, device=dev.type, dtype=dtype, compile=scope is not None, compile_scope=scope,
                  img_size=img_size,
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
        lib = libc()
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
            return timed(lambda: m(x), dev)

    forward(base)
    out: dict[int, dict[str, float]] = {}
    for h in num_charts:
        conv, fwd, ref = [], [], []
        for _ in range(repeats + 1):  # the first round warms up
            ref.append(forward(base))
            sync(dev)
            start = time.perf_counter()
            mk = convert(base, "vanillak", h)
            sync(dev)
            conv.append(time.perf_counter() - start)
            fwd.append(forward(mk))
            del mk
        c, f, b = (statistics.median(t[1:]) * 1e3 for t in (conv, fwd, ref))
        out[h] = dict(reforward_convert_ms=c, reforward_forward_ms=f, reforward_ms=c + f,
                      reforward_baseline_forward_ms=b)
    return out
