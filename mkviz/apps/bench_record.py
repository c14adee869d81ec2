"""Overhead of `mkviz.record_attention`: recording every layer (with and without charts) vs a plain forward.

    python -m mkviz.bench_record --model vit_small_patch16_224 --img-size 224 --batch-size 8 --repeats 5
    python -m mkviz.bench_record --memory --model vit_base_patch16_384 --img-size 384 --batch-size 1
    python -m mkviz.bench_record --relevance --batch-size 8     # class_relevance vs a forward + backward

Modes: "plain" (no recording), "fused_only" (full maps, charts=False), "charts" (full maps with every
chart), "lazy_one_query" (`lazy=True`, then one query's rows, fused and every chart, of every layer).
`--memory` prints what each recording keeps for one forward: the lazy one measured, the full one
computed from the shapes (B·heads·N² per map; running it is not needed to know its size).
`--relevance` times `mkviz.class_relevance` (charts=False and True) against a forward + backward of the
target logits (parameter gradients included, as in training).

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

from ..core.models import convert
from ..explain.record import record_attention
from ..explain.relevance import class_relevance

MODES = ("plain", "fused_only", "charts", "lazy_one_query")


def _one_query_rows(rec, query: int = 0) -> None:
    """Read one query's rows, fused and every chart, of every recorded layer."""
    for name in rec.layers:
        rec.attention_rows(name, [query])
        for c in range(rec.model.get_submodule(name).key.num_charts):
            rec.attention_rows(name, [query], chart=c)


def _run(model: torch.nn.Module, x: torch.Tensor, mode: str) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        if mode == "plain":
            model(x)
        else:
            with record_attention(model, charts=(mode != "fused_only"), lazy=(mode == "lazy_one_query")) as rec:
                model(x)
            if mode == "lazy_one_query":
                _one_query_rows(rec)
            del rec
    return time.perf_counter() - start


def _kept_bytes(rec) -> int:
    stores = (rec.attention, rec.chart_attention, rec.chart_keys, rec.membership, rec.queries, rec.attn_bias,
              rec.inputs, rec.keys)
    return sum(t.numel() * t.element_size() for d in stores for t in d.values())


def memory_table(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Bytes a recording keeps for one forward: lazy (measured) against full maps (computed from the shapes)."""
    with torch.no_grad(), record_attention(model, lazy=True) as rec:
        model(x)
    lazy = _kept_bytes(rec)
    q = next(iter(rec.queries.values()))
    B, heads, N, _ = q.shape
    H = model.get_submodule(rec.layers[0]).key.num_charts
    L, C = len(rec.layers), heads * q.shape[-1]
    per_map = B * heads * N * N * 4
    full_maps = L * (1 + H) * per_map
    full_total = full_maps + L * (B * H * N * C + B * heads * N * q.shape[-1]) * 4  # + chart keys + queries
    print(f"{L} layers, batch {B}, {heads} heads, {N} tokens, {H} charts, fp32")
    print("| recording | kept per forward |")
    print("|---|---:|")
    print(f"| full: fused + chart maps (computed) | {full_maps / 2**20:,.0f} MiB |")
    print(f"| full: maps + chart keys + queries (computed) | {full_total / 2**20:,.0f} MiB |")
    print(f"| lazy: x, q, k (measured) | {lazy / 2**20:,.1f} MiB |")


def relevance_times(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> None:
    """class_relevance (fused, per chart) against a forward + backward, interleaved; median ratios."""
    def forward_backward():
        model.zero_grad(set_to_none=True)
        logits = model(x)
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()

    runs = {"forward_backward": forward_backward, "relevance": lambda: class_relevance(model, x),
            "relevance_charts": lambda: class_relevance(model, x, charts=True)}
    times = {k: [] for k in runs}
    for k, fn in runs.items():
        fn()  # warm-up
    for r in range(repeats):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    for k, ts in times.items():
        ratio = statistics.median(t / f for t, f in zip(ts, times["forward_backward"]))
        print(f"{k:>17}: median {statistics.median(ts) * 1e3:8.1f} ms  {ratio:.2f}x forward+backward")


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
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                   help="modes to time, 'plain' always included (default: all)")
    p.add_argument("--memory", action="store_true", help="print what each recording keeps, then stop")
    p.add_argument("--relevance", action="store_true", help="time class_relevance against a forward + backward")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        p.error("--repeats and --batch-size must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    base = timm.create_model(args.model, pretrained=False, img_size=args.img_size)
    model = convert(base, args.variant, args.num_charts, inplace=True).eval()
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    if args.memory:
        memory_table(model, x)
        return 0
    if args.relevance:
        relevance_times(model, x, args.repeats)
        return 0

    modes = tuple(m for m in MODES if m == "plain" or m in args.modes)
    for mode in modes:  # warm-up
        _run(model, x, mode)
    times = {m: [] for m in modes}
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    for r in range(args.repeats):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        for mode in order:
            times[mode].append(_run(model, x, mode))
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    ratios = {m: statistics.median(t / p for t, p in zip(times[m], times["plain"])) for m in modes[1:]}
    print(f"model {args.model} {args.img_size}px, batch {args.batch_size}, {args.variant} with {args.num_charts} "
          f"charts, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, repeats {args.repeats}")
    if load_before is not None:
        print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
    for mode in modes:
        ts = times[mode]
        print(f"{mode:>10}: median {statistics.median(ts) * 1e3:8.1f} ms  (min {min(ts) * 1e3:.1f}, "
              f"max {max(ts) * 1e3:.1f})")
    targets = {"fused_only": 1.5, "charts": 3.0, "lazy_one_query": 1.5}
    for mode, ratio in ratios.items():
        print(f"overhead {mode} / plain: {ratio:.2f}x  (target <= {targets[mode]}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
