"""Where a training step's time goes: one step of timm's model and of each variant under `torch.profiler`.

    python -m mkviz.bench profile --model vit_small_patch16_224 --batch-size 128 --device cuda --dtype bfloat16 \\
        --variants vanillak simplek --num-charts 8 --json PATH

For each model (the baseline first): a few untimed steps, then `steps` profiled training steps (forward,
cross-entropy, backward, fused AdamW, as `mkviz bench run` times them). Per step: the wall time, the operators
that ran (top-level `aten::` calls, each one kernel launch or more on a GPU), the kernels launched and their
total device time (CUDA only), and the operators that took the most time (device time on CUDA, CPU time
elsewhere). A variant's extra time over the baseline that is not extra device time is launch and Python overhead.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

import timm
import torch
from torch.profiler import ProfilerActivity, profile

from ..core.cost import machine_description
from ..core.models import convert
from .bench_suite import amp_context, training_step
from .bench_timing import sync

__all__ = ["profile_steps", "format_profile", "format_profile_summary"]


def _profile_one(step, device: torch.device, steps: int, top: int) -> dict[str, Any]:
    cuda = device.type == "cuda"
    walls = []
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            walls.append(time.perf_counter() - start)
    events = prof.events()
    ops = [e for e in events if e.name.startswith("aten::")
           and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
    kernels = [e for e in events if cuda and e.device_type == torch.autograd.DeviceType.CUDA]
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = sorted(prof.key_averages(), key=lambda a: getattr(a, attr, 0.0), reverse=True)
    return {"step_ms": 1e3 * statistics.median(walls), "ops_per_step": len(ops) / steps,
            "kernels_per_step": len(kernels) / steps if cuda else None,
            "device_ms_per_step": sum(k.device_time for k in kernels) / 1e3 / steps if cuda else None,
            "top": [{"name": a.key, "ms_per_step": getattr(a, attr, 0.0) / 1e3 / steps,
                     "calls_per_step": a.count / steps} for a in table[:top]]}


def profile_steps(model: str = "vit_small_patch16_224", variants: Sequence[str] = ("vanillak", "simplek"),
                  num_charts: int = 8, img_size: int = 224, batch_size: int = 8, device: str = "cpu",
                  dtype: str = "float32", steps: int = 5, warmup: int = 3, top: int = 8,
                  model_kwargs: dict | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """One record per model (baseline, then each variant at `num_charts`), see the module docstring."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16'; got {dtype!r}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0; got steps={steps}, warmup={warmup}")
    dev = torch.device(device)
    torch.manual_seed(seed)
    base = timm.create_model(model, pretrained=False, img_size=img_size, **(model_kwargs or {})).to(dev).train()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 3, img_size, img_size, generator=gen).to(dev)
    y = torch.randint(0, base.num_classes or 1000, (batch_size,), generator=gen).to(dev)
    amp = amp_context(dev.type, dtype)
    records, machine = [], machine_description()
    for variant in ("baseline", *variants):
        m = base if variant == "baseline" else convert(base, variant, num_charts).train()
        step, _ = training_step(m, x, y, amp)  # the step `mkviz bench run` times
        for _ in range(warmup):
            step()
        rec = _profile_one(step, dev, steps, top)
        rec.update(variant=variant, num_charts=None if variant == "baseline" else num_charts, model=model,
                   img_size=img_size, batch_size=batch_size, device=dev.type, dtype=dtype, steps=steps,
                   machine=machine)
        records.append(rec)
        del step
    return records


def format_profile_summary(records: Sequence[dict[str, Any]]) -> str:
    """The per-model table: step time, its extra over the baseline (the first record), operators, kernels and
    device time per step."""
    base = records[0]
    lines = ["| model | step (ms) | extra over the baseline (ms) | operators / step | kernels / step "
             "| device time / step (ms) |", "|---|---:|---:|---:|---:|---:|"]
    fmt = lambda v, d=1: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in records:
        name = r["variant"] + (f"-{r['num_charts']}" if r["num_charts"] else "")
        lines.append(f"| {name} | {fmt(r['step_ms'])} | {fmt(r['step_ms'] - base['step_ms'])} "
                     f"| {fmt(r['ops_per_step'], 0)} | {fmt(r['kernels_per_step'], 0)} | {fmt(r['device_ms_per_step'])} |")
    return "\n".join(lines)


def format_profile(records: Sequence[dict[str, Any]]) -> str:
    """The per-model summary (`format_profile_summary`), then each model's top operators."""
    lines = [format_profile_summary(records)]
    for r in records:
        lines += ["", f"{r['variant']}: top operators by {'device' if r['device'] == 'cuda' else 'CPU'} time per step"]
        lines += [f"  {t['ms_per_step']:8.2f} ms  {t['calls_per_step']:6.0f} calls  {t['name']}" for t in r["top"]]
    return "\n".join(lines)
