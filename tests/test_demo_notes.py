"""The demo report's captions and its chart-count figure say what the data say.

A caption that calls the fused map "the normalised geometric mean of the charts' maps" stands under a model
only if that identity holds for the shipped model (measured here on its recorded attention), and the
chart-count figure draws the study's seeds, not single checkpoints, as its seeds.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mkviz.apps.demo import FUSED_MAP_NOTES, SIMILARITY_NOTES
from mkviz.apps.shipped import MAIN_MODELS
from mkviz.core.key import VARIANTS
from mkviz.explain.record import record_attention
from mkviz.studies.chart_counts import chart_count_summary, load_chart_count_summary, summary_path
from mkviz.studies.sweep_config import load_sweep
from mkviz.studies.sweep_report import load_results
from mkviz.training.build import load_checkpoint
from mkviz.training.checkpoint import shipped_checkpoints_dir
from mkviz.viz.chart_count_figure import seeds_vs_charts

ROOT = Path(__file__).resolve().parents[1]
GEOMETRIC = "fused map is the normalised geometric mean of the charts' maps"


def _geometric_mean_gap(name: str) -> float:
    """Largest |fused − normalised geometric mean of the chart maps| of a shipped model, last layer, 4 inputs."""
    model, config = load_checkpoint(shipped_checkpoints_dir() / "fashion-mnist" / name)
    torch.manual_seed(0)
    images = torch.randn(4, 3, 28, 28)  # normalised-scale inputs: the identity is about the maps, not the data
    layer = f"blocks.{len(model.blocks) - 1}.attn"
    with torch.no_grad(), record_attention(model.eval(), layers=[layer]) as rec:
        model(images)
    charts = rec.chart_attention[layer].double()  # (B, H, heads, N, N)
    geo = charts.log().mean(1).exp()  # (B, heads, N, N)
    geo = geo / geo.sum(-1, keepdim=True)
    return (rec.attention[layer].double() - geo).abs().max().item()


def test_every_variant_has_its_own_notes():
    assert set(FUSED_MAP_NOTES) == set(SIMILARITY_NOTES) == set(VARIANTS)
    for notes in (FUSED_MAP_NOTES, SIMILARITY_NOTES):
        assert all("near-copies" not in text and "never grow" not in text for text in notes.values())


@pytest.mark.parametrize("name", MAIN_MODELS[1:])
def test_geometric_mean_caption_only_where_the_identity_holds(name):
    gap = _geometric_mean_gap(name)
    claims = GEOMETRIC in FUSED_MAP_NOTES[name.split("-")[0]]
    if claims:
        assert gap < 1e-5, f"{name}: the caption claims the geometric mean, but the maps differ by {gap:.2e}"
    else:
        assert gap > 1e-3, f"{name}: the identity holds ({gap:.2e}); the caption should say so"


def test_shipped_chart_count_summary_is_the_study():
    """data/studies/chart_counts_fmnist.json recomputes from docs/results/repro_fmnist (no drift)."""
    sweep = load_sweep(ROOT / "configs" / "repro_fmnist.yaml")
    records = load_results(ROOT / sweep["results_dir"])
    assert load_chart_count_summary() == json.loads(json.dumps(chart_count_summary(records, sweep)))
    shipped = load_chart_count_summary(summary_path())
    assert sorted(shipped["charts"], key=int) == ["1", "2", "4", "8", "16"]
    assert len(shipped["baseline"]) == 10 and len(shipped["charts"]["8"]) == 10 and len(shipped["charts"]["4"]) == 5
    assert "12ep" not in json.dumps(shipped) and all(0.5 < a < 1 for a in shipped["baseline"].values())


def test_chart_count_figure_draws_every_seed_and_labels_checkpoints():
    summary = load_chart_count_summary()
    fig = seeds_vs_charts(summary, {1: 0.88, 8: 0.87}, 0.881)
    traces = {t.name: t for t in fig.data}
    seeds = [a for c in sorted(summary["charts"], key=int) for a in summary["charts"][c].values()]
    assert list(traces["one seed"].y) == pytest.approx(seeds)
    mean8 = sum(summary["charts"]["8"].values()) / 10
    assert traces["mean ± 1 s.d."].y[3] == pytest.approx(mean8)
    assert list(traces["shipped checkpoint (one seed)"].y) == [0.88, 0.87]
    assert traces["shipped checkpoint (one seed)"].xaxis == "x2"  # its own panel, not on the seeds' axis
    with pytest.raises(ValueError, match="summary"):
        seeds_vs_charts({"charts": {}})
