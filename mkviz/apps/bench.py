"""Benchmarks against timm's baseline.

    python -m mkviz.bench [run] [--quick] [--json PATH] [--model NAME] [--img-size 224] [--batch-size 8]
                          [--device cpu|cuda] [--dtype float32|bfloat16] [--compile [model|blocks]]
                          [--variants ...] [--num-charts 1 2 4 8 16] [--repeats 5]
        the suite: for each variant x number of charts, parameters, nominal FLOPs, training and
        inference throughput, folded inference throughput and peak training memory, each as a
        ratio to timm's unmodified model measured in the same run, interleaved (round robin,
        rotating order) so that machine noise hits both sides alike; plus the latency of a full
        re-forward at a new chart count. Prints a table; --json writes one record per
        (variant, num_charts).
    python -m mkviz.bench table PATH.json
        a Markdown table from a JSON written by `run` (docs/benchmarks.md is made this way).
    python -m mkviz.bench profile [--model ...] [--batch-size 8] [--device cpu|cuda] [--variants ...]
        where a training step's time goes (torch.profiler): step time, operators, kernels and device time per
        step of the baseline and each variant, and each one's top operators (mkviz.apps.bench_profile).
    python -m mkviz.bench targets PATH.json [PATH.json ...]
        the targets (training >= 0.9, folded inference >= 0.97, efficiency >= 0.85 at 8 charts) per run.
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
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import timm
import torch

from ..core.checks import ArgumentParser, run_command
from ..core.cost import count_flops, count_params
from ..core.key import VARIANTS
from ..core.models import convert
from ..viz.explorers import ChartExplorer
from . import bench_record
from .bench_profile import format_profile, profile_steps
from .bench_suite import COMPILE_SCOPES, DEFAULT_CHARTS, DEFAULT_MODELS, QUICK, RECORD_FIELDS, run_suite, suite_pairs

__all__ = ["CostRow", "cost_table", "format_cost_table", "RECORD_FIELDS", "run_suite", "format_suite", "format_markdown", "main"]


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

def _compiled(record: dict[str, Any], text: str) -> str:
    """`text` (+ " per block" for `--compile blocks`) when the record's models were compiled, else ""."""
    if not record["compile"]:
        return ""
    return text + (" per block" if record.get("compile_scope") == "blocks" else "")

def _gpu(machine: dict[str, Any]) -> str:
    """", NVIDIA H200 (driver 580.1, CUDA 13.0)" from a record's machine, "" without a GPU."""
    if not machine.get("gpu"):
        return ""
    extra = ", ".join(f"{k} {machine[f]}" for k, f in (("driver", "gpu_driver"), ("CUDA", "cuda")) if machine.get(f))
    return f", {machine['gpu']}" + (f" ({extra})" if extra else "")

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
            f"(batch {r0['batch_size']}, {r0['device']}, {r0['dtype']}{_compiled(r0, ', compiled')}, "
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
            f"{m.get('torch_threads', '?')} torch threads{_gpu(m)}), "
            f"Python {m.get('python', '?')}, torch {m.get('torch', '?')}, timm {m.get('timm', '?')}: "
            f"`{r0['model']}` at {r0['img_size']} px, batch {r0['batch_size']}, {r0['dtype']}"
            f"{_compiled(r0, ', torch.compile')}, median of {r0['repeats']} interleaved rounds after "
            f"{r0['warmup']} warm-up{' (--quick)' if r0['quick'] else ''}; 1-minute load average "
            f"{r0.get('load_average_start', '?')} at the start, {r0.get('load_average_end', '?')} at the end "
            f"(other processes on the same cores).\n\n")
    return head + format_suite(records, markdown=True)

# the targets, at 8 charts: (label, record field, variants, threshold)
TARGETS = (("training throughput ≥ 0.9", "train_throughput_ratio", ("vanillak", "simplek", "spatialk"), 0.9),
           ("folded inference ≥ 0.97", "folded_infer_throughput_ratio", ("vanillak", "simplek", "spatialk"), 0.97),
           ("efficiency ≥ 0.85", "efficiency", ("vanillak", "simplek", "spatialk", "kua"), 0.85))

def format_targets(runs: dict[str, Sequence[dict[str, Any]]]) -> str:
    """A Markdown table of the targets against several runs ({column label: records}): each cell lists the
    variants' values at 8 charts in TARGETS order, a value below its target in bold."""
    head = ["target", "variants"] + list(runs)
    body = []
    for label, field, variants, threshold in TARGETS:
        cells = []
        for records in runs.values():
            at8 = {r["variant"]: r[field] for r in records if r["num_charts"] == 8}
            values = [at8.get(v) for v in variants]
            cells.append(" / ".join("–" if x is None else (f"**{x:.2f}**" if x < threshold else f"{x:.2f}")
                                    for x in values))
        body.append([label, " / ".join(variants)] + cells)
    return _render(head, body, markdown=True, left=2)

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
    r.add_argument("--compile", nargs="?", const="model", default=None, choices=COMPILE_SCOPES,
                   help="torch.compile every model, the baseline included: the whole model (`--compile`, "
                        "`--compile model`) or each transformer block on its own (`--compile blocks`: one block's "
                        "graph to compile instead of the whole model's, the cold start of regional compilation)")
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
    pairs = suite_pairs(args.variants, charts, quick, explicit=args.num_charts is not None)
    if quick:
        print(f"QUICK mode: {model} at {img} px (not 224), batch {batch}, {repeats} rounds after {warmup} warm-up; "
              f"{len(pairs)} records: " + ", ".join(f"{v}/{h}" for v, h in pairs), flush=True)
    start = time.perf_counter()
    records = run_suite(model, img, batch, args.device, args.dtype, args.compile or False, pairs=pairs, repeats=repeats,
                        warmup=warmup, quick=quick, latency_img_size=args.latency_img_size or None,
                        log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_markdown(records) if args.markdown else format_suite(records))
    if records and records[0]["memory_method"]:
        print(f"\nmemory: {records[0]['memory_method']}")
    print(f"efficiency = train throughput ratio / (baseline FLOPs / variant FLOPs), nominal per-chart FLOPs; "
          f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        _write_json(args.json, records)
    return 0

def _write_json(path: str, records: Sequence[dict[str, Any]]) -> None:
    """Write the records; say so, and say when an existing file was replaced."""
    existed = os.path.exists(path)
    with open(path, "w") as f:
        json.dump(records, f, indent=1)
        f.write("\n")
    print(f"{'replaced' if existed else 'wrote'} {path}")

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
    f = sub.add_parser("profile", help="where a training step's time goes (torch.profiler), baseline and variants")
    f.add_argument("--model", default="vit_small_patch16_224", help="timm model name (default vit_small_patch16_224)")
    f.add_argument("--img-size", type=int, default=224, help="input size in pixels (default 224)")
    f.add_argument("--batch-size", type=int, default=8, help="default 8")
    f.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    f.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    f.add_argument("--variants", nargs="+", default=["vanillak", "simplek"], help="default: vanillak simplek")
    f.add_argument("--num-charts", type=int, default=8, help="charts of every variant (default 8)")
    f.add_argument("--steps", type=int, default=5, help="profiled steps (default 5, after 3 untimed)")
    f.add_argument("--json", metavar="PATH", help="write the records as JSON")
    g = sub.add_parser("targets", help="the targets (training, folded inference, efficiency) against saved runs")
    g.add_argument("paths", nargs="+", help="JSON files written by `mkviz bench run --json PATH`")
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
    if args.command == "profile":
        records = profile_steps(args.model, args.variants, args.num_charts, args.img_size, args.batch_size,
                                args.device, args.dtype, args.steps)
        print(format_profile(records))
        if args.json:
            _write_json(args.json, records)
        return 0
    if args.command == "targets":
        runs = {}
        for path in args.paths:
            with open(path) as f:
                runs[path] = json.load(f)
        print(format_targets(runs))
        return 0
    rows = cost_table(args.models, args.num_charts, args.img_size)
    print(format_cost_table(rows, markdown=args.markdown))
    print(f"\nFLOPs: one {args.img_size}x{args.img_size} image, a multiply-add = 2, every chart computed as "
          "written (nominal); mkviz's fast path computes less (docs/design.md §6).")
    return 0

if __name__ == "__main__":
    raise SystemExit(run_command("bench", main, sys.argv[1:]))
