"""`mkviz demo`: the main job. Small manifold-key ViTs on the shapes dataset, evaluated and pictured.

Offline and on CPU: loads the small checkpoints shipped in `data/checkpoints/` (or trains the
missing ones with the same recipe), evaluates them on a held-out test split, and writes a
self-contained HTML report (plotly inlined) with

    * accuracy, parameters and FLOPs of the baseline and each variant at 8 charts (and VanillaK
      at 1-16 charts);
    * for a few test images: the fused and per-chart attention of the query patch on the red object;
    * chart similarity (cosine of chart keys) per variant;
    * "attention on evidence": the share of that query's attention on the two objects the label
      depends on, fused and per chart, against the share of the image they cover (chance);
    * training curves, and a check that conversion and folding keep a timm model's outputs.

With `--pretrained NAME --data-root DIR` it does the same for a user's timm model (needs the
weights, i.e. internet once): converted function-preservingly, pictured on the user's images.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from .checkpoint import SHIPPED_CHECKPOINTS
from .convert import convert, fold
from .cost import count_flops, count_params
from .key import VARIANTS

MAIN_MODELS = ("baseline", "vanillak-8", "simplek-8", "spatialk-8", "kua-8")
CHART_SWEEP = ("vanillak-1", "vanillak-2", "vanillak-4", "vanillak-8", "vanillak-16")


def recipe(name: str) -> dict[str, Any]:
    """The `TrainConfig` fields of a shipped checkpoint (the same as scripts/make_checkpoints.sh)."""
    variant, _, charts = name.partition("-")
    fields = dict(preset="tiny", dataset="shapes", num_train=6000, num_val=1000, num_test=1000, epochs=10,
                  batch_size=32, lr=1e-3, seed=0, variant=variant)
    if charts:
        fields["num_charts"] = int(charts)
    if variant == "kua":
        fields["ua_weight"] = 0.01
    return fields


@dataclass
class LoadedModel:
    name: str
    model: nn.Module
    config: dict
    source: str  # "shipped", "trained now"


def load_or_train(name: str, checkpoints: Path, out: Path, allow_training: bool = True) -> LoadedModel:
    """Load checkpoint `name` from `checkpoints`, else (allow_training) train it with its recipe."""
    from .train import TrainConfig, load_checkpoint, train

    path = checkpoints / name
    if (path / "model.safetensors").is_file():
        model, config = load_checkpoint(path)
        return LoadedModel(name, model, config, "shipped" if checkpoints == SHIPPED_CHECKPOINTS else str(path))
    if not allow_training:
        raise FileNotFoundError(f"checkpoint {path} not found (run `bash scripts/make_checkpoints.sh`, "
                                "or drop --no-train to train it now)")
    run_dir = out / "checkpoints" / name
    print(f"  {name}: no checkpoint in {checkpoints}; training it now (a few minutes on CPU)", flush=True)
    fields = recipe(name)
    resume = (run_dir / "latest.json").is_file()
    train(TrainConfig(**fields, out=str(run_dir), resume=resume, quiet=True, export=str(run_dir / "export")))
    model, config = load_checkpoint(run_dir / "export")
    return LoadedModel(name, model, config, "trained now")


# ----------------------------------------------------------------------------- analysis
def _query_cells(masks: torch.Tensor, grid: tuple[int, int]) -> list[tuple[int, int]]:
    """Patch (row, col) under the centroid of each image's red object. masks: (B, K, H, W) bool."""
    B, _, H, W = masks.shape
    cells = []
    for b in range(B):
        ys, xs = torch.nonzero(masks[b, 0], as_tuple=True)
        r = int(ys.float().mean() * grid[0] / H)
        c = int(xs.float().mean() * grid[1] / W)
        cells.append((min(r, grid[0] - 1), min(c, grid[1] - 1)))
    return cells


def evidence_shares(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, layer: str) -> dict[str, Any]:
    """Share of the red-object query's attention on the evidence (red ∪ blue), fused and per chart.

    Averaged over images and heads. Returns {"fused": float, "charts": [H floats] or [], "chance": float}.
    """
    from .maps import patch_grid, query_index
    from .metrics import attention_on_evidence
    from .record import record_attention

    with torch.no_grad(), record_attention(model, layers=[layer]) as rec:
        model(images)
    grid = patch_grid(model, tuple(images.shape[-2:]))
    cells = _query_cells(masks, grid.grid_size)
    idx = torch.tensor([query_index(r, c, grid.grid_size, grid.num_prefix_tokens) for r, c in cells])
    evidence = masks[:, 0] | masks[:, 1]  # (B, H, W)
    batch = torch.arange(len(cells))
    fused_rows = rec.attention[layer][batch, :, idx]  # (B, heads, N)
    fused = attention_on_evidence(fused_rows, evidence, grid.grid_size, grid.num_prefix_tokens)
    charts = []
    if layer in rec.chart_attention:
        chart_rows = rec.chart_attention[layer][batch, :, :, idx]  # (B, H, heads, N)
        for c in range(chart_rows.shape[1]):
            share = attention_on_evidence(chart_rows[:, c], evidence, grid.grid_size,
                                          grid.num_prefix_tokens)
            charts.append(share.mean().item())
    return {"fused": fused.mean().item(), "charts": charts, "chance": evidence.float().mean().item()}


def conversion_check(model_name: str = "vit_tiny_patch16_224", num_charts: int = 8, img_size: int = 64,
                     seed: int = 0) -> list[list[Any]]:
    """Max output change when converting a timm model (random weights) and folding it back, per variant."""
    import timm

    torch.manual_seed(seed)
    base = timm.create_model(model_name, pretrained=False, img_size=img_size).eval()
    x = torch.randn(2, 3, img_size, img_size)
    rows = []
    with torch.no_grad():
        y = base(x)
        for variant in VARIANTS:
            model = convert(base, variant, num_charts).eval()
            conv_diff = (model(x) - y).abs().max().item()
            fold_diff = "n/a (not linear)" if variant == "kua" else f"{(fold(model)(x) - y).abs().max().item():.1e}"
            rows.append([variant, f"{conv_diff:.1e}", fold_diff])
    return rows


# ----------------------------------------------------------------------------- the report
def run(out: Path, checkpoints: Path = SHIPPED_CHECKPOINTS, num_images: int = 3, num_eval_images: int = 64,
        allow_training: bool = True) -> dict[str, Any]:
    """Everything `mkviz demo` does; returns the summary (also written into the report)."""
    from . import figures
    from .data import CLASS_NAMES
    from .record import record_attention
    from .report import Report
    from .train import TrainConfig, build_datasets, evaluate

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    print(f"mkviz demo: models from {checkpoints}", flush=True)
    models = {name: load_or_train(name, checkpoints, out, allow_training) for name in MAIN_MODELS + CHART_SWEEP}
    # the held-out test split exactly as training made it (same seed, size and normalisation)
    train_cfg = TrainConfig(**models["baseline"].config["train"]).resolved()
    test = build_datasets(train_cfg, models["baseline"].model, splits=("test",))["test"]
    image_size = test.image_size
    loader = torch.utils.data.DataLoader(test, batch_size=250)
    summary: dict[str, Any] = {"models": {}}
    base_params = count_params(models["baseline"].model)
    base_flops = count_flops(models["baseline"].model, (1, 3, image_size, image_size))
    rows = []
    for name, lm in models.items():
        acc = evaluate(lm.model, loader)["acc"]
        params, flops = count_params(lm.model), count_flops(lm.model, (1, 3, image_size, image_size))
        summary["models"][name] = {"test_acc": acc, "params": params, "flops": flops, "source": lm.source}
        rows.append([name, f"{acc:.3f}", f"{params / 1e3:.0f}k", f"{params / base_params:.2f}",
                     f"{flops / 1e6:.1f}", f"{flops / base_flops:.2f}", lm.source])

    layer = f"blocks.{len(models['baseline'].model.blocks) - 1}.attn"
    eval_batch = test.batch(range(num_eval_images))
    evidence = {name: evidence_shares(models[name].model, eval_batch.image, eval_batch.masks, layer)
                for name in MAIN_MODELS}
    summary["evidence"] = evidence

    report = Report("mkviz demo: the manifold key on small ViTs",
                    subtitle=f"{time.strftime('%Y-%m-%d %H:%M')} · shapes dataset ({image_size} px, label = where the "
                             "red object is relative to the blue one) · a documented reconstruction of arXiv "
                             "2402.00534, not the authors' code; these numbers are ours, not the paper's.")
    report.add_table(f"Accuracy, parameters and FLOPs (held-out test split, {len(test)} images)",
                     ["model", "test acc", "params", "× params", "MFLOPs", "× FLOPs", "weights"], rows,
                     note="Chance is 0.25 (4 classes). FLOPs: one image, nominal per-chart cost "
                          "(mkviz.count_flops); the fast path computes less.")
    report.add_figure("Accuracy vs number of charts (VanillaK)",
                      figures.accuracy_vs_charts({int(n.split("-")[1]): summary["models"][n]["test_acc"]
                                                  for n in CHART_SWEEP},
                                                 baseline=summary["models"]["baseline"]["test_acc"]))

    # what each chart attends to, for a few test images
    pictures = test.batch(range(num_images))
    uint8 = test.images_uint8(range(num_images))
    grid_model = models["vanillak-8"].model
    with torch.no_grad(), record_attention(grid_model, layers=[layer]) as rec:
        grid_model(pictures.image)
    from .maps import patch_grid
    grid = patch_grid(grid_model, (image_size, image_size)).grid_size
    for i, (r, c) in enumerate(_query_cells(pictures.masks, grid)):
        fused = rec.image_map(layer, (r, c), batch_index=i)
        charts = torch.stack([rec.image_map(layer, (r, c), chart=h, batch_index=i)
                              for h in range(rec.chart_attention[layer].shape[1])])
        label = CLASS_NAMES[int(pictures.label[i])]
        report.add_figure(f"Test image {i}: '{label}', VanillaK-8, {layer}, query on the red object",
                          figures.chart_maps_figure(uint8[i], fused, charts, query=(r, c)),
                          note="Fused attention (left) is the normalised geometric mean of the chart maps. "
                               "The query patch is outlined; heads averaged.")

    for name in MAIN_MODELS[1:]:
        with torch.no_grad(), record_attention(models[name].model, layers=[layer]) as rec:
            models[name].model(eval_batch.image[:16])
        report.add_figure(f"Chart similarity, {name} ({layer})",
                          figures.similarity_heatmap(rec.chart_similarity(layer, "cosine"), kind="cosine"),
                          note="Cosine similarity of the chart keys K_c, averaged over tokens and 16 test images.")

    for name in MAIN_MODELS:
        ev = evidence[name]
        report.add_figure(f"Attention on evidence, {name}",
                          figures.evidence_bars(ev["charts"] or [ev["fused"]],
                                                fused=ev["fused"] if ev["charts"] else None, chance=ev["chance"]),
                          note=f"Share of the red-object query's attention on the red and blue objects, {layer}, "
                               f"{num_eval_images} test images, heads averaged. Chance = area share "
                               f"{ev['chance']:.3f}.")

    histories = {name: lm.config.get("history") for name, lm in models.items() if lm.config.get("history")}
    if histories:
        report.add_figure("Training curves", figures.training_curves({n: histories[n] for n in MAIN_MODELS
                                                                      if n in histories}))
    report.add_table("Conversion and folding keep a timm model's outputs (ViT-Ti, random weights, 8 charts)",
                     ["variant", "max |Δ| after convert", "max |Δ| after fold"], conversion_check(),
                     note="Function-preserving initialisation: s_c = 1, φ_c = I + δ_c with Σ δ_c = 0.")
    path = report.write(out / "report.html")
    summary["report"] = str(path)
    summary["seconds"] = time.perf_counter() - start
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(f"\n{'model':<12} {'test acc':>8} {'params':>8} {'on evidence (fused)':>20}  weights")
    for name, m in summary["models"].items():
        ev = summary["evidence"].get(name)
        ev_text = f"{ev['fused']:.3f}" if ev else ""
        print(f"{name:<12} {m['test_acc']:>8.3f} {m['params'] / 1e3:>7.0f}k {ev_text:>20}  {m['source']}")
    chance = next(iter(summary["evidence"].values()))["chance"]
    print(f"\nchance accuracy 0.25; evidence covers {chance:.3f} of the image")
    print(f"report: {summary['report']}  ({summary['seconds']:.0f} s)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _demo_parser(prog="mkviz demo", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="output folder (report.html goes here)")
    parser.add_argument("--checkpoints", default=str(SHIPPED_CHECKPOINTS), help="folder of checkpoints")
    parser.add_argument("--no-train", action="store_true", help="fail instead of training missing checkpoints")
    parser.add_argument("--images", type=int, default=3, help="test images pictured")
    parser.add_argument("--pretrained", metavar="NAME", help="a timm model name: picture its attention instead")
    parser.add_argument("--data-root", help="with --pretrained: an image folder (ImageFolder layout)")
    parser.add_argument("--variant", help="with --pretrained: the variant to convert to (default vanillak)")
    parser.add_argument("--num-charts", type=int, help="with --pretrained: number of charts (default 8)")
    args = parser.parse_args(argv)
    if args.images < 1:
        raise ValueError(f"--images must be >= 1; got {args.images}")
    if args.pretrained:
        from .demo_pretrained import run_pretrained
        summary = run_pretrained(args.pretrained, args.data_root, Path(args.out), args.variant or "vanillak",
                                 8 if args.num_charts is None else args.num_charts, args.images)
        print(f"report: {summary['report']}")
        return 0
    print_summary(run(Path(args.out), Path(args.checkpoints), args.images, allow_training=not args.no_train))
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Refuse arguments the chosen mode would ignore, and an --out or --checkpoints that cannot be used."""
    from .checkpoint import check_output_dir

    check_output_dir("--out", args.out)
    if not args.pretrained:
        ignored = [flag for flag, value in (("--data-root", args.data_root), ("--variant", args.variant),
                                            ("--num-charts", args.num_charts)) if value is not None]
        if ignored:
            raise ValueError(f"{', '.join(ignored)} only apply with --pretrained NAME (without it the demo uses the "
                             "checkpoints in --checkpoints)")
        if args.checkpoints is not None and not Path(args.checkpoints).is_dir():
            raise FileNotFoundError(f"--checkpoints {args.checkpoints} does not exist or is not a folder")


def _demo_parser(**kwargs: Any) -> argparse.ArgumentParser:
    """`mkviz demo`'s parser: errors as one line (train's _Parser, via mkviz.cli), and `_check_args` run on
    what it parses."""
    from .train import _Parser

    class DemoParser(_Parser):
        def parse_args(self, *args: Any, **kw: Any) -> argparse.Namespace:  # type: ignore[override]
            parsed = super().parse_args(*args, **kw)
            _check_args(parsed)
            return parsed

    return DemoParser(**kwargs)


if __name__ == "__main__":
    from .cli import main as _cli_main
    raise SystemExit(_cli_main(["demo", *sys.argv[1:]]))
