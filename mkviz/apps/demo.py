"""`mkviz demo`: the main job. Small manifold-key ViTs on Fashion-MNIST (and on shapes), evaluated and pictured.

Offline and on CPU: loads the small checkpoints shipped in `data/checkpoints/<dataset>/` (or trains
the missing ones with the same recipe, `mkviz.shipped`), evaluates them and writes a self-contained
HTML report (plotly inlined) with, first on Fashion-MNIST (real 28-px article images, 7x7 patches):

    * accuracy on the official 10,000 test images, parameters and FLOPs of the baseline, each variant
      at 8 charts and VanillaK at 1-16 charts, and the accuracy against the number of charts;
    * for a few test images: the fused and per-chart attention of a query patch on the article, for
      every variant;
    * chart similarity (cosine of chart keys) per variant, and the entropy and mean distance of each
      chart's attention;
    * training curves;

then the "attention on evidence" lesson on the shapes dataset (the label is where the red object
is relative to the blue one, so the two objects are the evidence): the share of the red object's
attention that lands on them, fused and per chart, against the share of the image they cover;
and a check that conversion and folding keep a timm model's outputs.

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

import timm
import torch
from torch import nn

from ..core.checks import ArgumentParser, run_command
from ..core.cost import count_flops, count_params
from ..core.key import VARIANTS
from ..core.models import convert, fold
from ..explain.faithfulness import compare_saliency, faithfulness_table
from ..explain.maps import patch_grid, query_index
from ..explain.metrics import attention_on_evidence, mean_attention_distance
from ..explain.record import record_attention
from ..training.build import load_checkpoint
from ..training.checkpoint import check_output_dir, shipped_checkpoints_dir
from ..training.config import TrainConfig
from ..training.inputs import build_datasets
from ..training.loop import evaluate, train
from ..studies.chart_counts import load_chart_count_summary
from ..viz import figures
from ..viz.chart_count_figure import seeds_vs_charts
from ..viz.explorer_html import chart_explorer_html
from ..viz.report import Report
from .demo_pretrained import run_pretrained
from .shipped import CHART_SWEEP, MAIN_MODELS, NAMES, recipe


@dataclass
class LoadedModel:
    name: str
    model: nn.Module
    config: dict
    source: str  # "shipped", "trained now" or the folder it came from


def load_or_train(dataset: str, name: str, checkpoints: Path, out: Path, allow_training: bool = True) -> LoadedModel:
    """Load checkpoint `checkpoints/<dataset>/<name>`, else (allow_training) train it with its recipe."""
    path = checkpoints / dataset / name
    if (path / "model.safetensors").is_file():
        model, config = load_checkpoint(path)
        shipped = checkpoints.resolve() == shipped_checkpoints_dir().resolve()
        return LoadedModel(name, model, config, "shipped" if shipped else str(path))
    if not allow_training:
        raise FileNotFoundError(f"checkpoint {path} not found (run `make checkpoints`, "
                                "or drop --no-train to train it now)")
    run_dir = out / "checkpoints" / dataset / name
    print(f"  {dataset}/{name}: no checkpoint in {checkpoints}; training it now (minutes on a CPU)", flush=True)
    resume = (run_dir / "latest.json").is_file()
    train(TrainConfig(**recipe(dataset, name), out=str(run_dir), resume=resume, quiet=True,
                      export=str(run_dir / "export")))
    model, config = load_checkpoint(run_dir / "export")
    return LoadedModel(name, model, config, "trained now")


# ----------------------------------------------------------------------------- analysis
def _query_cells(masks: torch.Tensor, grid: tuple[int, int]) -> list[tuple[int, int]]:
    """Patch (row, col) under the centroid of each image's first object mask (shapes: the red object;
    Fashion-MNIST: the article). masks: (B, K, H, W) bool."""
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
def _log(message: str) -> None:
    print(f"mkviz demo: {message}", flush=True)


def _test_split(models: dict[str, LoadedModel]) -> Any:
    """The held-out test split exactly as training made it (same seed, size and normalisation)."""
    base = models["baseline"]
    return build_datasets(TrainConfig(**base.config["train"]).resolved(), base.model, splits=("test",))["test"]


def _accuracies(models: dict[str, LoadedModel], test: Any) -> dict[str, float]:
    """Test accuracy of every model on the dataset `test`."""
    loader = torch.utils.data.DataLoader(test, batch_size=500)
    return {name: evaluate(lm.model, loader)["acc"] for name, lm in models.items()}


def _model_table(report: Any, models: dict[str, LoadedModel], test: Any, size: int, heading: str,
                 note: str) -> dict[str, Any]:
    """Accuracy on `test` (images of `size` px), parameters and FLOPs of every model, as a table and the
    accuracy-vs-charts figure; returns {name: numbers}."""
    base_params = count_params(models["baseline"].model)
    base_flops = count_flops(models["baseline"].model, (1, 3, size, size))
    numbers, rows = {}, []
    for name, acc in _accuracies(models, test).items():
        lm = models[name]
        params, flops = count_params(lm.model), count_flops(lm.model, (1, 3, size, size))
        seconds = sum(row.get("time", 0.0) for row in lm.config.get("history", []))
        numbers[name] = {"test_acc": acc, "params": params, "flops": flops, "source": lm.source}
        rows.append([name, f"{acc:.4f}", f"{params / 1e3:.0f}k", f"{params / base_params:.2f}", f"{flops / 1e6:.1f}",
                     f"{flops / base_flops:.2f}", f"{seconds:.0f}", lm.source])
    report.add_table(heading, ["model", "test acc", "params", "× params", "MFLOPs", "× FLOPs", "train s", "weights"],
                     rows, note=note)
    _chart_count_figure(report, {int(n.split("-")[1]): numbers[n]["test_acc"] for n in CHART_SWEEP},
                        numbers["baseline"]["test_acc"])
    return numbers


def _chart_count_figure(report: Any, checkpoints: dict[int, float], baseline: float) -> None:
    """Accuracy against chart count: the reproduction's seeds beside the single-seed shipped checkpoints."""
    summary = load_chart_count_summary()
    report.add_figure("Accuracy vs number of charts (VanillaK)", seeds_vs_charts(summary, checkpoints, baseline),
                      note=f"Left: the Fashion-MNIST reproduction ({summary['page']}), every seed, mean ± 1 s.d. per "
                           "chart count and the baseline's band; differences within a band are seed noise (the "
                           "page tests them). Right: the checkpoints shipped in data/checkpoints, one training run "
                           "each, so their order says nothing about the number of charts.")


def _distinct_classes(labels: torch.Tensor, count: int) -> list[int]:
    """Indices of the first `count` test images with pairwise different labels (in label order)."""
    first = {}
    for i, y in enumerate(labels.tolist()):
        first.setdefault(y, i)
    return [first[y] for y in sorted(first)][:count]


def _chart_pictures(report: Any, models: dict[str, LoadedModel], test: Any, indices: list[int], layer: str,
                    what: str) -> None:
    """Fused and per-chart attention of the query patch under each image's object, for every variant."""

    pictures = test.batch(indices)
    uint8 = test.images_uint8(indices)
    size = tuple(pictures.image.shape[-2:])
    for i, index in enumerate(indices):
        label = test.class_names[int(pictures.label[i])]
        for name in MAIN_MODELS[1:]:
            model = models[name].model
            grid = patch_grid(model, size).grid_size
            (r, c), = _query_cells(pictures.masks[i:i + 1], grid)
            with torch.no_grad(), record_attention(model, layers=[layer]) as rec:
                model(pictures.image[i:i + 1])
            fused = rec.image_map(layer, (r, c))
            charts = rec.chart_maps(layer, (r, c))
            report.add_figure(f"Test image {index}: '{label}', {name}, {layer}, query on {what}",
                              figures.chart_maps_figure(uint8[i], fused, charts, query=(r, c)),
                              note="Fused attention (left) and each chart's; the query patch is outlined; heads "
                                   "averaged. " + FUSED_MAP_NOTES[name.split("-")[0]])


# what the fused map is, given the charts' maps, for each variant (docs/design.md §2.4, §2.8)
_MEAN_FUSION = ("averages its chart keys, so its fused map is the normalised geometric mean of the charts' maps: "
                "a patch gets attention only where every chart gives it some.")
FUSED_MAP_NOTES = {
    "vanillak": "VanillaK " + _MEAN_FUSION,
    "spatialk": "SpatialK " + _MEAN_FUSION,
    "simplek": "SimpleK mixes its chart keys with a learned dense fusion, so its fused map is not a function of "
               "the charts' maps: it need not resemble any of them.",
    "kua": "KUA mixes its chart keys per token by a learned membership, so its fused map is the geometric mean "
           "only where the memberships are uniform; elsewhere the charts a token belongs to decide its key.",
}
# what chart similarity can and cannot be read as, per variant (docs/design.md §3.1)
SIMILARITY_NOTES = {
    "vanillak": "Under VanillaK's mean fusion every chart key gets the same gradient: charts that start equal stay "
                "equal, but small differences can grow or shrink (docs/design.md §3.1); the similarity is measured, "
                "not implied.",
    "spatialk": "SpatialK's charts are separate projections of the tokens averaged into the key; each gets the same "
                "key gradient, and how far they drift apart is measured here (docs/design.md §3.1).",
    "simplek": "SimpleK's charts enter through a learned dense fusion, so each gets its own gradient; chart keys "
               "can differ without changing the fused key (docs/design.md §2.4).",
    "kua": "KUA weights each chart per token by its membership; a chart a token does not belong to gets little "
           "gradient from it (docs/design.md §8).",
}

EXPLORER_MODEL, EXPLORER_ID = "vanillak-8", "mkviz-explorer-fashion"


def _chart_explorer(report: Any, models: dict[str, LoadedModel], test: Any, indices: list[int], layer: str) -> None:
    """The chart explorer of one model on the images above, kernel-free (plotly.js: the report's own copy)."""
    pictures = test.batch(indices)
    page = chart_explorer_html(models[EXPLORER_MODEL].model, pictures.image, masks=pictures.evidence_mask,
                               class_names=test.class_names, labels=pictures.label,
                               display_images=test.images_uint8(indices), layer=layer, full_page=False,
                               plotly_js="none", element_id=EXPLORER_ID)
    report.add_text(f"Chart explorer ({EXPLORER_MODEL})",
                    f"<p>The maps above for every layer, head and query patch of {EXPLORER_MODEL}, precomputed and "
                    "embedded: pick a layer, a head or an image, or click a patch in any map to move the query "
                    "(no kernel, no network). The bars give each map's entropy and its share on the article's "
                    "silhouette; the key atlas shows queries and every chart's keys in one 2-D projection.</p>"
                    + page)


def _chart_statistics(report: Any, models: dict[str, LoadedModel], images: torch.Tensor, layer: str) -> None:
    """Chart similarity per variant, and each chart's attention entropy and mean distance."""
    entropy, distance = {}, {}
    for name in MAIN_MODELS[1:]:
        model = models[name].model
        grid = patch_grid(model, tuple(images.shape[-2:]))
        with torch.no_grad(), record_attention(model, layers=[layer]) as rec:
            model(images)
        report.add_figure(f"Chart similarity, {name} ({layer})",
                          figures.similarity_heatmap(rec.chart_similarity(layer, "cosine"), kind="cosine"),
                          note=f"Cosine similarity of the chart keys K_c, averaged over tokens and {len(images)} "
                               "test images. " + SIMILARITY_NOTES[name.split("-")[0]])
        maps = [rec.attention[layer]] + list(rec.chart_attention[layer].unbind(1))  # each (B, heads, N, N)
        entropy[name] = [rec.entropy(layer).item()] + [rec.entropy(layer, chart=c).item()
                                                         for c in range(len(maps) - 1)]
        distance[name] = [mean_attention_distance(a, grid.grid_size, grid.num_prefix_tokens).mean().item()
                          for a in maps]
    report.add_figure("Attention entropy per chart", figures.chart_stat_bars(entropy, "entropy (nats)"),
                      note=f"{layer}, mean over queries, heads and images; 'fused' is the attention the model uses.")
    report.add_figure("Mean attention distance per chart", figures.chart_stat_bars(distance, "distance (patches)"),
                      note=f"{layer}: how far (in patches) each query's attention reaches, as in the ViT paper.")


FAITHFULNESS_METHODS = ("attention", "charts (mean)", "rollout", "relevance", "ig", "random")


def _faithfulness(report: Any, models: dict[str, LoadedModel], images: torch.Tensor, steps: int = 7) -> dict[str, Any]:
    """Deletion / insertion ranking of the saliency maps (mkviz.explain.faithfulness) per model, as one small table."""
    gaps, rows = {}, []
    for name in MAIN_MODELS:
        table = {r["method"]: r for r in faithfulness_table(compare_saliency(models[name].model, images, steps=steps))}
        charts = [r["gap"] for m, r in table.items() if m.startswith("chart ")]
        gaps[name] = {m: (sum(charts) / len(charts) if m == "charts (mean)" and charts else
                          table[m]["gap"] if m in table else None) for m in FAITHFULNESS_METHODS}
        rows.append([name] + ["—" if gaps[name][m] is None else f"{gaps[name][m]:.3f}" for m in FAITHFULNESS_METHODS])
    report.add_table(f"Which map is faithful? Insertion AUC − deletion AUC ({len(images)} test images)",
                     ["model", *FAITHFULNESS_METHODS], rows,
                     note=f"Patches are deleted from the image (or inserted into a blank one) in the order of each map, "
                          f"{steps} steps of 7 patches, replaced by the dataset mean (0 after normalisation); the AUC "
                          "is the area under the predicted class's probability. Higher is more faithful; a random "
                          "order scores about 0. attention / charts: the class token's row in the last layer; "
                          "rollout: over all layers; relevance: Chefer et al.; ig: integrated gradients on the patch "
                          "embedding (notebook 07).")
    return gaps


def fashion_section(report: Any, checkpoints: Path, out: Path, num_images: int, num_test_images: Optional[int],
                    allow_training: bool) -> dict[str, Any]:
    """The Fashion-MNIST part of the report; returns its summary."""
    _log(f"Fashion-MNIST models from {checkpoints / 'fashion-mnist'}")
    models = {name: load_or_train("fashion-mnist", name, checkpoints, out, allow_training) for name in NAMES}
    full_test = _test_split(models)
    test = full_test if num_test_images is None else \
        torch.utils.data.Subset(full_test, range(min(num_test_images, len(full_test))))
    _log(f"evaluating {len(models)} models on {len(test)} Fashion-MNIST test images")
    report.add_text("Fashion-MNIST", "<p>Zalando's Fashion-MNIST (28&times;28 grey article images, 10 classes; "
                    "60,000 training and 10,000 test images). Each model is a 4-block ViT of width 64 on 7&times;7 "
                    "patches of 4 px, trained from scratch by <code>mkviz train</code> (data/README.md).</p>")
    numbers = _model_table(report, models, test, full_test.image_size,
                           f"Accuracy, parameters and FLOPs ({len(test)} test images)",
                           "Chance is 0.10 (10 classes). FLOPs: one image, nominal per-chart cost (mkviz.count_flops); "
                           "the fast path computes less. train s: the training time on one CPU thread.")
    layer = f"blocks.{len(models['baseline'].model.blocks) - 1}.attn"
    _log("recording fused and per-chart attention")
    shown = _distinct_classes(full_test.labels, num_images)
    _chart_pictures(report, models, full_test, shown, layer, "the article")
    _chart_explorer(report, models, full_test, shown, layer)
    _chart_statistics(report, models, full_test.batch(range(32)).image, layer)
    _log("ranking saliency maps by deletion and insertion")
    faithfulness = _faithfulness(report, models, full_test.batch(range(8)).image)
    histories = {n: models[n].config["history"] for n in MAIN_MODELS if models[n].config.get("history")}
    if histories:
        report.add_figure("Training curves (Fashion-MNIST)", figures.training_curves(histories))
    return {"models": numbers, "faithfulness": faithfulness}


def shapes_section(report: Any, checkpoints: Path, out: Path, num_eval_images: int,
                   allow_training: bool) -> dict[str, Any]:
    """The shapes part: where attention lands against the evidence the label depends on."""
    _log(f"shapes models from {checkpoints / 'shapes'}")
    models = {name: load_or_train("shapes", name, checkpoints, out, allow_training) for name in MAIN_MODELS}
    test = _test_split(models)
    report.add_text("Shapes: attention on the evidence", "<p>On the project's procedural shapes (32 px, 4&times;4 "
                    "patches) the label is where the red object is relative to the blue one, so the two objects are "
                    "the evidence, and their masks are known. Does the red object's query attend to them?</p>")
    numbers = {name: {"test_acc": acc, "params": count_params(models[name].model), "source": models[name].source}
               for name, acc in _accuracies(models, test).items()}
    layer = f"blocks.{len(models['baseline'].model.blocks) - 1}.attn"
    batch = test.batch(range(num_eval_images))
    evidence = {name: evidence_shares(models[name].model, batch.image, batch.masks, layer) for name in MAIN_MODELS}
    chance = evidence["baseline"]["chance"]  # the same images for every model
    shares = {f"{name} (acc {numbers[name]['test_acc']:.3f})": [ev["fused"], *ev["charts"]]
              for name, ev in evidence.items()}
    report.add_figure("Attention on the evidence, every model and chart",
                      figures.chart_stat_bars(shares, "share of attention", reference=("chance", chance),
                                              title="share of the red-object query's attention on the evidence"),
                      note=f"Share of the red-object query's attention on the red and blue objects, {layer}, "
                           f"{num_eval_images} shapes test images, heads averaged; 'fused' is the attention the model "
                           f"uses, 'chart c' what chart c alone would give (the baseline has no charts). Chance "
                           f"(dashed) = the share of patches the objects cover, {chance:.3f}.")
    return {"models": numbers, "evidence": evidence}


def run(out: Path, checkpoints: Optional[Path] = None, num_images: int = 3, num_eval_images: int = 64,
        allow_training: bool = True, num_test_images: Optional[int] = None) -> dict[str, Any]:
    """Everything `mkviz demo` does; returns the summary (also written into the report)."""

    start = time.perf_counter()
    checkpoints = Path(checkpoints) if checkpoints is not None else shipped_checkpoints_dir()
    out.mkdir(parents=True, exist_ok=True)
    report = Report("mkviz demo: the manifold key on small ViTs",
                    subtitle=f"{time.strftime('%Y-%m-%d %H:%M')} · Fashion-MNIST and the shapes dataset · a "
                             "documented "
                             "reconstruction of arXiv 2402.00534, not the authors' code; these numbers are ours, "
                             "not the paper's.")
    summary: dict[str, Any] = {
        "fashion-mnist": fashion_section(report, checkpoints, out, num_images, num_test_images, allow_training),
        "shapes": shapes_section(report, checkpoints, out, num_eval_images, allow_training)}
    _log("conversion and folding check")
    report.add_table("Conversion and folding keep a timm model's outputs (ViT-Ti, random weights, 8 charts)",
                     ["variant", "max |Δ| after convert", "max |Δ| after fold"], conversion_check(),
                     note="Function-preserving initialisation: s_c = 1, φ_c = I + δ_c with Σ δ_c = 0.")
    summary["report"] = str(report.write(out / "report.html"))
    summary["seconds"] = time.perf_counter() - start
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    fm, sh = summary["fashion-mnist"]["models"], summary["shapes"]
    print("\nFashion-MNIST")
    print(f"{'model':<12} {'test acc':>8} {'params':>8}  weights")
    for name, m in fm.items():
        print(f"{name:<12} {m['test_acc']:>8.4f} {m['params'] / 1e3:>7.0f}k  {m['source']}")
    print("\nshapes: attention of the red object's query on the evidence")
    print(f"{'model':<12} {'test acc':>8} {'on evidence (fused)':>20}")
    for name, m in sh["models"].items():
        print(f"{name:<12} {m['test_acc']:>8.3f} {sh['evidence'][name]['fused']:>20.3f}")
    chance = next(iter(sh["evidence"].values()))["chance"]
    print(f"chance: Fashion-MNIST accuracy 0.10, shapes accuracy 0.25; the evidence covers {chance:.3f} of the image")
    gaps = summary["fashion-mnist"].get("faithfulness")
    if gaps:
        print("\nFashion-MNIST: which map is faithful (insertion AUC - deletion AUC, 8 test images; higher is better)")
        print(f"{'model':<12} " + " ".join(f"{m:>13}" for m in FAITHFULNESS_METHODS))
        for name, row in gaps.items():
            print(f"{name:<12} " + " ".join(f"{'-' if row[m] is None else format(row[m], '.3f'):>13}"
                                            for m in FAITHFULNESS_METHODS))
    print(f"report: {summary['report']}  ({summary['seconds']:.0f} s)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _demo_parser(prog="mkviz demo", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/demo", help="output folder (report.html goes here)")
    parser.add_argument("--checkpoints", default=None,
                        help="folder holding fashion-mnist/ and shapes/ checkpoints (default: the repository's "
                             "data/checkpoints)")
    parser.add_argument("--no-train", action="store_true", help="fail instead of training missing checkpoints")
    parser.add_argument("--images", type=int, default=3, help="Fashion-MNIST test images pictured")
    parser.add_argument("--test-images", type=int, default=None,
                        help="evaluate on the first N Fashion-MNIST test images (default: all 10,000)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (these models are small: 1 is fastest on a shared machine)")
    parser.add_argument("--pretrained", metavar="NAME", help="a timm model name: picture its attention instead")
    parser.add_argument("--data-root", help="with --pretrained: an image folder (ImageFolder layout)")
    parser.add_argument("--variant", help="with --pretrained: the variant to convert to (default vanillak)")
    parser.add_argument("--num-charts", type=int, help="with --pretrained: number of charts (default 8)")
    args = parser.parse_args(argv)
    for flag, value in (("--images", args.images), ("--threads", args.threads), ("--test-images", args.test_images)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1; got {value}")
    torch.set_num_threads(args.threads)
    if args.pretrained:
        summary = run_pretrained(args.pretrained, args.data_root, Path(args.out), args.variant or "vanillak",
                                 8 if args.num_charts is None else args.num_charts, args.images)
        print(f"report: {summary['report']}")
        return 0
    checkpoints = Path(args.checkpoints) if args.checkpoints else None
    print_summary(run(Path(args.out), checkpoints, args.images, allow_training=not args.no_train,
                      num_test_images=args.test_images))
    return 0


def _check_args(args: argparse.Namespace) -> None:
    """Refuse arguments the chosen mode would ignore, and an --out or --checkpoints that cannot be used."""
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
    """`mkviz demo`'s parser: errors as one line (train's ArgumentParser, via mkviz.apps.cli), and `_check_args` run on
    what it parses."""

    class DemoParser(ArgumentParser):
        def parse_args(self, *args: Any, **kw: Any) -> argparse.Namespace:  # type: ignore[override]
            parsed = super().parse_args(*args, **kw)
            _check_args(parsed)
            return parsed

    return DemoParser(**kwargs)


if __name__ == "__main__":
    raise SystemExit(run_command("demo", main, sys.argv[1:]))
