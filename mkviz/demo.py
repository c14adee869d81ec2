"""`mkviz demo`: a small end-to-end run of the manifold key on a timm ViT, offline, on CPU.

For each variant: convert a ViT-Tiny (random weights: nothing is downloaded) and check that the
outputs did not change, train a few steps on random data, check that the charts have started to
differ, fold the linear variants back into plain timm attention and check the outputs again.
Prints one line per variant and the cost table.
"""
from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import timm
import torch

from .bench import cost_table, format_cost_table
from .convert import convert, fold, manifold_modules, unbalanced_atlas_loss
from .key import VARIANTS


def _chart_spread(model: torch.nn.Module, x_tokens: torch.Tensor) -> float:
    """Mean relative distance between chart keys of the first layer (0: all charts identical)."""
    key = next(manifold_modules(model))[1].key
    with torch.no_grad():
        charts = key.chart_keys(x_tokens)  # (B, H, N, C)
    centre = charts.mean(dim=1, keepdim=True)
    return ((charts - centre).norm() / centre.norm().clamp_min(1e-12) / charts.shape[1] ** 0.5).item()


def run(model_name: str = "vit_tiny_patch16_224", num_charts: int = 8, img_size: int = 64, steps: int = 5,
        seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    base = timm.create_model(model_name, pretrained=False, img_size=img_size, num_classes=10).eval()
    x = torch.randn(4, 3, img_size, img_size)
    with torch.no_grad():
        y = base(x)
    tokens = torch.randn(2, 16, base.embed_dim)
    results = []
    for variant in VARIANTS:
        start = time.perf_counter()
        model = convert(base, variant, num_charts).eval()
        with torch.no_grad():
            conversion_diff = (model(x) - y).abs().max().item()
        spread_before = _chart_spread(model, tokens)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            xb = torch.randn(8, 3, img_size, img_size, generator=g)
            yb = torch.randint(0, 10, (8,), generator=g)
            loss = torch.nn.functional.cross_entropy(model(xb), yb) + unbalanced_atlas_loss(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        fold_diff = None
        if variant != "kua":
            with torch.no_grad():
                fold_diff = (fold(model)(x) - model(x)).abs().max().item()
        results.append(dict(variant=variant, conversion_diff=conversion_diff, spread_before=spread_before,
                            spread_after=_chart_spread(model, tokens), fold_diff=fold_diff,
                            seconds=time.perf_counter() - start))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mkviz demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224", help="timm ViT/DeiT model name")
    parser.add_argument("--num-charts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"mkviz demo: {args.model} (random weights), {args.num_charts} charts, {args.steps} AdamW steps\n")
    print(f"{'variant':<9} {'convert |Δ|':>12} {'chart spread':>22} {'fold |Δ|':>10} {'time':>7}")
    for r in run(args.model, args.num_charts, steps=args.steps):
        fold_text = f"{r['fold_diff']:.1e}" if r["fold_diff"] is not None else "n/a (kua)"
        print(f"{r['variant']:<9} {r['conversion_diff']:>12.1e} {r['spread_before']:>9.4f} -> {r['spread_after']:<9.4f}"
              f" {fold_text:>10} {r['seconds']:>6.1f}s")
    print("\nconvert |Δ|: max output change from converting (function-preserving: ~1e-7);")
    print("chart spread: how far the charts' keys are from their mean, before -> after training;")
    print("fold |Δ|: max output change from folding the trained key into one plain timm qkv.\n")
    print(format_cost_table(cost_table([args.model], args.num_charts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
