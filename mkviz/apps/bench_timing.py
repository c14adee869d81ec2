"""How the benchmarks measure: wall time with the device synchronised, several functions timed round robin
(rotating order, so that machine noise hits every side alike), and peak memory of a training step.
"""
from __future__ import annotations

import ctypes
import gc
import statistics
import time
from typing import Any, Callable, Optional

import torch
from torch import nn

__all__ = ["sync", "timed", "round_robin", "time_ratio", "libc", "peak_step_bytes"]


# ---------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start

def round_robin(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int,
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
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fns[name]()  # settle
            times[name].append(timed(fns[name], device))
    return times

def time_ratio(times: dict[str, list[float]], name: str, ref: str = "baseline") -> float:
    """Throughput of `name` relative to `ref`: the median over rounds of t_ref / t_name (same round)."""
    return statistics.median(a / b for a, b in zip(times[ref], times[name]))

# ---------------------------------------------------------------------------------------- memory
def libc() -> Optional[ctypes.CDLL]:
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

def peak_step_bytes(step: Callable[[], Any], model: nn.Module, opt: torch.optim.Optimizer,
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
        lib = libc()
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
