"""Benchmarks against timm's baseline.

    python -m mkviz.bench params [--models ...] [--num-charts 8] [--markdown]
        parameters and nominal FLOPs (every chart computed as written, DESIGN.md §2) of each
        variant vs the unmodified timm model, as a table; random weights, nothing downloaded.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional, Sequence

import timm
import torch

from .convert import convert
from .cost import count_flops, count_params
from .key import VARIANTS

__all__ = ["CostRow", "cost_table", "format_cost_table", "main"]

DEFAULT_MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
                  "swin_tiny_patch4_window7_224")


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
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mkviz bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="parameters and FLOPs of each variant vs the timm baseline")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="timm model names")
    p.add_argument("--num-charts", type=int, default=8)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    rows = cost_table(args.models, args.num_charts, args.img_size)
    print(format_cost_table(rows, markdown=args.markdown))
    print(f"\nFLOPs: one {args.img_size}x{args.img_size} image, a multiply-add = 2, every chart computed as "
          "written (nominal); mkviz's fast path computes less (DESIGN.md §2).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
