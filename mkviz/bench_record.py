"""Overhead of `mkviz.record_attention`: recording every layer (with and without charts) vs a plain forward.

    python -m mkviz.bench_record --model vit_small_patch16_224 --img-size 224 --batch-size 8 --repeats 5

Random weights (nothing is downloaded), converted with `mkviz.convert(variant, num_charts)`, eval mode,
`torch.no_grad()`. The three modes run interleaved in every repeat (plain, fused-only, charts, in a
rotating order), after one warm-up each; reported are the median times and the median of the per-repeat
ratios, so slow phases of a shared CPU hit all modes alike. The load average is printed for context.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Optional, Sequence

import timm
import torch

from .convert import convert
from .record import record_attention

MODES = ("plain", "fused_only", "charts")


def _run(model: torch.nn.Module, x: torch.Tensor, mode: str) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        if mode == "plain":
            model(x)
        else:
            with record_attention(model, charts=(mode == "charts")) as rec:
                model(x)
            del rec
    return time.perf_counter() - start


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mkviz bench record", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224", help="timm model name (default vit_small_patch16_224)")
    p.add_argument("--img-size", type=int, default=224, help="input size in pixels (default 224)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward (default 8)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--variant", default="vanillak", help="manifold-key variant (default vanillak)")
    p.add_argument("--num-charts", type=int, default=8, help="charts (default 8)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: leave torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and images (default 0)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        p.error("--repeats and --batch-size must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = timm.create_model(args.model, pretrained=False, img_size=args.img_size)
    model = convert(base, args.variant, args.num_charts, inplace=True).eval()
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)

    for mode in MODES:  # warm-up
        _run(model, x, mode)
    times = {m: [] for m in MODES}
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    for r in range(args.repeats):
        order = MODES[r % 3:] + MODES[:r % 3]
        for mode in order:
            times[mode].append(_run(model, x, mode))
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    ratios = {m: statistics.median(t / p for t, p in zip(times[m], times["plain"])) for m in MODES[1:]}
    print(f"model {args.model} {args.img_size}px, batch {args.batch_size}, {args.variant} with {args.num_charts} "
          f"charts, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, repeats {args.repeats}")
    if load_before is not None:
        print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    for mode in MODES:
        ts = times[mode]
        print(f"{mode:>10}: median {statistics.median(ts) * 1e3:8.1f} ms  (min {min(ts) * 1e3:.1f}, "
              f"max {max(ts) * 1e3:.1f})")
    print(f"overhead fused-only / plain: {ratios['fused_only']:.2f}x  (target <= 1.5x)")
    print(f"overhead charts     / plain: {ratios['charts']:.2f}x  (target <= 3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
