"""Figures (mkviz.figures) and explorers (mkviz.explorers): exact data in the figures, controls driven from Python.

Expected maps are computed independently: a separate forward inside `mkviz.record_attention` and
`AttentionRecording.image_map` / `mkviz.metrics`, never through the explorer's cache.
"""
from __future__ import annotations

import re

import base64
import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch

import mkviz
from mkviz import figures as F
from mkviz import metrics
from mkviz.data import ShapesDataset
from conftest import small_swin, small_vit

go = pytest.importorskip("plotly.graph_objects")
pytest.importorskip("ipywidgets")
viz = pytest.importorskip("mkviz.explorers")


def _exact(actual, expected, atol=0.0):
    a = np.asarray(actual, dtype=np.float64)
    e = expected.detach().double().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected, np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    np.testing.assert_allclose(a, e, rtol=0, atol=atol)


def _decode_png(uri: str) -> np.ndarray:
    from PIL import Image
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


class Recorded:
    """Independent reference: one recorded forward per image, cached by the test (not by the explorer)."""

    def __init__(self, model, images):
        self.model, self.images, self.recs = model, images, {}

    def rec(self, i, lazy=False):
        if (i, lazy) not in self.recs:
            with torch.no_grad(), mkviz.record_attention(self.model, lazy=lazy) as rec:
                self.model(self.images[i:i + 1])
            self.recs[i, lazy] = rec
        return self.recs[i, lazy]

    def maps(self, i, layer, query, head=None):
        """The maps of a lazy recording (what the explorer draws, exactly), checked against the full maps."""
        maps = []
        for lazy in (True, False):
            rec = self.rec(i, lazy)
            fused = rec.image_map(layer, query, head=head)
            H = self.model.get_submodule(layer).key.num_charts
            maps.append((fused, torch.stack([rec.image_map(layer, query, chart=c, head=head) for c in range(H)])))
        for lazy_map, full_map in zip(*maps):
            torch.testing.assert_close(lazy_map, full_map, rtol=1e-5, atol=1e-7)
        return maps[0]


def _heat_z(fig):
    names = [t.name for t in fig.data if t.type == "heatmap"]
    return {n: np.asarray(fig.data[[t.name for t in fig.data].index(n)].z) for n in names}


def _check_explorer_maps(ex, ref):
    fused, charts = ref.maps(ex.image_index, ex.layer, ex.query, ex.head)
    z = _heat_z(ex.maps_figure)
    _exact(z["fused"], fused)
    for c in range(charts.shape[0]):
        _exact(z[f"chart {c + 1}"], charts[c])
    return fused, charts


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vit4():
    torch.manual_seed(0)
    return mkviz.convert(small_vit(), "vanillak", 4, perturbation=0.5).eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(3, 3, 32, 32)


@pytest.fixture(scope="module")
def masks():
    m = torch.zeros(3, 32, 32, dtype=torch.bool)
    m[0, 4:20, 8:30] = True
    m[1, 16:32, 0:12] = True
    m[2, 0:9, 0:9] = True
    return m


@pytest.fixture(scope="module")
def explorer(vit4, images, masks):
    return viz.ChartExplorer(vit4, images, masks=masks, class_names=list("abcde"), labels=[0, 1, 2])


# --------------------------------------------------------------------------- figures
def test_to_uint8_image_layouts_and_ranges():
    chw = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    hwc = chw.permute(1, 2, 0).numpy()
    assert np.array_equal(F.to_uint8_image(chw), hwc)
    assert np.array_equal(F.to_uint8_image(hwc), hwc)
    unit = torch.rand(3, 4, 4)
    assert np.array_equal(F.to_uint8_image(unit), np.round(unit.permute(1, 2, 0).double().numpy() * 255).astype(np.uint8))
    normed = F.to_uint8_image(torch.randn(3, 6, 6) * 3)  # outside [0, 1]: min-max
    assert normed.min() == 0 and normed.max() == 255
    assert F.to_uint8_image(torch.rand(6, 6)).shape == (6, 6, 3)
    with pytest.raises(ValueError, match="channels"):
        F.to_uint8_image(np.zeros((5, 6, 4)))


def test_attention_overlay_traces_geometry_and_exact_data():
    img = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)
    heat = torch.rand(4, 6)
    fig = F.attention_overlay(img, heat, title="t", query_box=(1, 2, 8))
    assert [t.name for t in fig.data] == ["image", "heat", "query"]
    assert np.array_equal(_decode_png(fig.data[0].source), img.permute(1, 2, 0).numpy())
    _exact(fig.data[1].z, heat)
    # 4x6 map over 32x48 pixels: 8-pixel cells centred on pixel centres 3.5, 11.5, ...
    h = fig.data[1]
    assert (h.x0, h.dx, h.y0, h.dy) == (3.5, 8.0, 3.5, 8.0)
    assert h.colorscale is not None and 0 < h.opacity < 1
    assert list(fig.data[2].x) == [15.5, 23.5, 23.5, 15.5, 15.5] and list(fig.data[2].y) == [7.5, 7.5, 15.5, 15.5, 7.5]
    assert tuple(fig.layout.yaxis.range) == (31.5, -0.5)  # image orientation: row 0 at the top
    assert tuple(fig.layout.xaxis.range) == (-0.5, 47.5)
    assert fig.layout.title.text == "t"
    # image-resolution heat: one cell per pixel; (row, col) query box uses the map's cells
    fig = F.attention_overlay(img.permute(1, 2, 0).numpy(), torch.rand(32, 48), query_box=(0, 0))
    assert (fig.data[1].x0, fig.data[1].dx) == (0.0, 1.0)
    assert list(fig.data[2].x) == [-0.5, 0.5, 0.5, -0.5, -0.5]
    with pytest.raises(ValueError, match="heat"):
        F.attention_overlay(img, torch.rand(2, 3, 4))


def test_chart_maps_figure_panels_scale_and_data():
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    fused, charts = torch.rand(4, 4), torch.rand(8, 4, 4) * 2
    fig = F.chart_maps_figure(img, fused, charts, query=(1, 3))
    heats = [t for t in fig.data if t.type == "heatmap"]
    assert len(heats) == 9 and len(fig.layout.images) == 9  # images: layout images, not traces
    assert len([t for t in fig.data if t.type == "scatter"]) == 9 and len(fig.data) == 18
    for p, im in enumerate(fig.layout.images):  # pixel (0, 0) at the top left of its own panel
        axis = "" if p == 0 else str(p + 1)
        assert (im.name, im.xref, im.yref) == (f"image {p}", "x" + axis, "y" + axis)
        assert (im.x, im.y, im.sizex, im.sizey, im.xanchor, im.yanchor) == (-0.5, -0.5, 32, 32, "left", "top")
        assert np.array_equal(_decode_png(im.source), img.permute(1, 2, 0).numpy())
    assert F.chart_grid_shape(9) == (2, 5)
    assert len([k for k in fig.layout.to_plotly_json() if k.startswith("xaxis")]) == 10  # 2x5 subplots
    assert [a.text for a in fig.layout.annotations][:3] == ["fused", "chart 1", "chart 2"]
    _exact(heats[0].z, fused)
    for c in range(8):
        _exact(heats[c + 1].z, charts[c])
        assert heats[c + 1].xaxis == f"x{c + 2}"
    lo, hi = float(torch.cat([fused.reshape(-1), charts.reshape(-1)]).min()), float(torch.cat([fused.reshape(-1), charts.reshape(-1)]).max())
    assert all(h.zmin == lo and h.zmax == hi for h in heats)
    for ax in ("yaxis", "yaxis5", "yaxis9"):
        assert tuple(fig.layout[ax].range) == (31.5, -0.5)
    own = F.chart_maps_figure(img, fused, charts, shared_scale=False, image_in_charts=False)
    oh = [t for t in own.data if t.type == "heatmap"]
    assert oh[3].zmin == float(charts[2].min()) and oh[3].zmax == float(charts[2].max())
    assert len(own.layout.images) == 1 and len(own.data) == 9
    spare = F.chart_maps_figure(img, fused, charts[:2], num_panels=6, titles=["F", "A", "B"])
    sh = [t for t in spare.data if t.type == "heatmap"]
    assert [bool(t.visible) for t in sh] == [True, True, True, False, False, False]
    assert [a.text for a in spare.layout.annotations][:3] == ["F", "A", "B"]
    assert [bool(a.visible) for a in spare.layout.annotations] == [True] * 3 + [False] * 3
    assert spare.layout.meta["charts"] == 2 and spare.layout.meta["panels"] == 6
    with pytest.raises(ValueError, match="titles"):
        F.chart_maps_figure(img, fused, charts, titles=["x"])
    with pytest.raises(ValueError, match="chart_maps"):
        F.chart_maps_figure(img, fused, torch.rand(3, 5, 5))


def _shown_domains(fig, num_shown):
    return [(list(fig.layout["xaxis" + ("" if p == 0 else str(p + 1))].domain),
             list(fig.layout["yaxis" + ("" if p == 0 else str(p + 1))].domain)) for p in range(num_shown)]


def _subplot_domains(rows, cols, num_panels):
    from plotly.subplots import make_subplots
    ref = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.02, vertical_spacing=0.08 if rows > 1 else 0.0)
    return _shown_domains(ref, num_panels)


def test_show_chart_panels_regrids_the_shown_panels_like_make_subplots():
    """Panels shown take make_subplots' grid for their own count (no blank rows for reserved panels);
    hidden panels' axes shrink to a corner sliver; titles sit centred on top of their panel."""
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    fused, charts = torch.rand(4, 4), torch.rand(2, 4, 4)
    fig = F.chart_maps_figure(img, fused, charts, query=(0, 0), num_panels=9, panel_size=150)
    for shown, (rows, cols) in ((3, (1, 3)), (9, (2, 5)), (6, (2, 5)), (1, (1, 1)), (3, (1, 3))):
        F.show_chart_panels(fig, shown)
        got, want = _shown_domains(fig, shown), _subplot_domains(rows, cols, shown)
        for (gx, gy), (wx, wy) in zip(got, want):
            _exact(gx, wx, atol=1e-12)
            _exact(gy, wy, atol=1e-12)
        for p in range(shown, 9):
            assert _shown_domains(fig, 9)[p] == ([0.0, 1e-3], [0.0, 1e-3])
        assert fig.layout.height == max(260, 150 * rows + 80)
        for p, ann in enumerate(fig.layout.annotations):
            assert bool(ann.visible) == (p < shown)
            if p < shown:
                (x0, x1), (_, y1) = got[p]
                assert ann.x == pytest.approx((x0 + x1) / 2) and ann.y == pytest.approx(y1)
        shown_axes = {"x"} | {f"x{p + 1}" for p in range(1, shown)}
        assert all(bool(t.visible) == (t.xaxis in shown_axes) for t in fig.data)
        assert [bool(im.visible) for im in fig.layout.images] == [p < shown for p in range(9)]
        assert sum(bool(t.visible) for t in fig.data if t.type == "heatmap") == shown
        assert fig.layout.meta["charts"] == shown - 1
    wide = F.chart_maps_figure(img, fused, charts, cols=2)  # explicit columns are kept: 3 panels on 2 x 2
    _exact(_shown_domains(wide, 3)[2][1], _subplot_domains(2, 2, 3)[2][1], atol=1e-12)
    for bad in (0, 10):
        with pytest.raises(ValueError, match="num_shown"):
            F.show_chart_panels(fig, bad)


def test_similarity_heatmap_kinds():
    m = torch.rand(5, 5)
    for kind, (lo, hi) in {"cosine": (-1, 1), "cka": (0, 1), "js": (0, 1)}.items():
        fig = F.similarity_heatmap(m, kind)
        assert len(fig.data) == 1 and fig.data[0].name == "similarity"
        _exact(fig.data[0].z, m)
        assert (fig.data[0].zmin, fig.data[0].zmax) == (lo, hi)
        assert list(fig.data[0].x) == [f"c{i}" for i in range(1, 6)]
        assert fig.layout.yaxis.autorange == "reversed" and fig.layout.xaxis.title.text == "chart"
    with pytest.raises(ValueError, match="kind"):
        F.similarity_heatmap(m, "dot")
    with pytest.raises(ValueError, match="square"):
        F.similarity_heatmap(torch.rand(2, 3))


def test_evidence_and_entropy_bars():
    fig = F.evidence_bars([0.1, 0.4, 0.2], fused=0.3, chance=0.25)
    assert list(fig.data[0].x) == ["fused", "chart 1", "chart 2", "chart 3"]
    _exact(fig.data[0].y, [0.3, 0.1, 0.4, 0.2])
    assert fig.data[1].name == "chance" and list(fig.data[1].y) == [0.25, 0.25]
    assert tuple(fig.layout.yaxis.range) == (0, 1)
    fig = F.evidence_bars({"a": 0.5, "b": 0.7})
    assert list(fig.data[0].x) == ["a", "b"] and len(fig.data) == 1
    fig = F.entropy_bars(torch.tensor([1.0, 2.0]), fused=1.5, max_entropy=math.log(17))
    _exact(fig.data[0].y, [1.5, 1.0, 2.0])
    assert fig.data[1].y[0] == pytest.approx(math.log(17))


def test_training_curves_forms():
    recs = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.2, "train_acc": 0.5, "val_acc": 0.4},
            {"epoch": 2, "train_loss": 0.5, "val_loss": 0.9, "train_acc": 0.7, "val_acc": 0.6}]
    fig = F.training_curves(recs)
    names = [t.name for t in fig.data]
    assert names == ["train_loss", "val_loss", "train_acc", "val_acc"]
    by = {t.name: t for t in fig.data}
    assert by["train_loss"].xaxis == "x" and by["val_acc"].xaxis == "x2"
    assert list(by["val_loss"].y) == [1.2, 0.9] and list(by["val_loss"].x) == [1, 2]
    assert by["val_loss"].line.dash == "dash" and by["train_loss"].line.dash == "solid"
    cols = F.training_curves({"train_loss": [3, 2, 1], "val_acc": [0.1, 0.2, 0.3]})
    assert [list(t.x) for t in cols.data] == [[1, 2, 3]] * 2
    runs = F.training_curves({"baseline": recs, "vanillak": {"train_loss": [2.0, 1.0]}})
    assert [t.name for t in runs.data] == ["baseline train_loss", "baseline val_loss", "baseline train_acc",
                                           "baseline val_acc", "vanillak train_loss"]
    assert runs.data[0].line.color != runs.data[4].line.color
    assert fig.layout.xaxis.title.text == "epoch" and fig.layout.yaxis2.title.text == "accuracy"
    with pytest.raises(ValueError, match="records"):
        F.training_curves(42)


def test_accuracy_vs_charts_and_cost_table():
    fig = F.accuracy_vs_charts({8: 0.8, 1: 0.6, 2: 0.7}, baseline=0.65, current=2)
    assert [t.name for t in fig.data] == ["accuracy", "baseline", "current"]
    assert list(fig.data[0].x) == [1, 2, 8] and list(fig.data[0].y) == [0.6, 0.7, 0.8]
    assert list(fig.data[2].x) == [2] and list(fig.data[2].y) == [0.7]
    assert fig.layout.xaxis.type == "log" and list(fig.layout.xaxis.tickvals) == [1, 2, 8]
    multi = F.accuracy_vs_charts({"vanillak": {1: 0.5, 4: 0.6}, "kua": {1: 0.4, 4: 0.7}})
    assert [t.name for t in multi.data] == ["vanillak", "kua"]
    tab = F.cost_table_figure([{"model": "vit", "params (M)": 5.7183, "charts": 8}, {"model": "swin", "extra": True}])
    assert tab.data[0].type == "table"
    assert list(tab.data[0].header.values) == ["<b>model</b>", "<b>params (M)</b>", "<b>charts</b>", "<b>extra</b>"]
    assert [list(c) for c in tab.data[0].cells.values] == [["vit", "swin"], ["5.72", ""], ["8", ""], ["", "True"]]


def test_figures_are_deterministic():
    img, fused, charts = torch.zeros(3, 16, 16, dtype=torch.uint8), torch.rand(2, 2), torch.rand(3, 2, 2)
    a = F.chart_maps_figure(img, fused, charts, query=(0, 1)).to_json()
    assert a == F.chart_maps_figure(img, fused, charts, query=(0, 1)).to_json()


# --------------------------------------------------------------------------- ChartExplorer
def test_explorer_initial_state_and_widgets(explorer, vit4, images):
    ref = Recorded(vit4, images)
    assert isinstance(explorer.maps_figure, go.FigureWidget)
    assert isinstance(explorer.similarity_figure, go.FigureWidget) and isinstance(explorer.stats_figure, go.FigureWidget)
    import ipywidgets as W
    assert isinstance(explorer.widget, W.VBox)
    assert explorer.maps_figure in explorer.widget.children
    assert explorer.layer_dropdown.options == ("blocks.0.attn", "blocks.1.attn")
    assert explorer.head_dropdown.options[0] == ("mean", "mean") and len(explorer.head_dropdown.options) == 5
    assert (explorer.row_slider.max, explorer.col_slider.max) == (3, 3)
    assert explorer.query == (2, 2)
    _check_explorer_maps(explorer, ref)
    assert "predicted:" in explorer.info.value and "label: a" in explorer.info.value
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # no frontend needed to build the view


def test_explorer_controls_update_to_independent_slices(explorer, vit4, images, masks):
    ref = Recorded(vit4, images)
    forwards = explorer.cache.forwards
    explorer.row_slider.value = 3
    fused, charts = _check_explorer_maps(explorer, ref)
    assert explorer.cache.forwards == forwards  # a slider move does not run the model
    explorer.col_slider.value = 0
    _check_explorer_maps(explorer, ref)
    box = next(t for t in explorer.maps_figure.data if t.name == "query 0")
    assert list(box.x) == [-0.5, 7.5, 7.5, -0.5, -0.5] and list(box.y) == [23.5, 23.5, 31.5, 31.5, 23.5]
    explorer.head_dropdown.value = 2
    assert explorer.head == 2
    _check_explorer_maps(explorer, ref)
    explorer.layer_dropdown.value = "blocks.1.attn"
    _check_explorer_maps(explorer, ref)
    explorer.image_slider.value = 2
    _check_explorer_maps(explorer, ref)
    assert explorer.cache.forwards == forwards + 1  # image 2 is recorded once, on first view
    for im in explorer.maps_figure.layout.images:  # every panel's layout image shows image 2
        assert np.array_equal(_decode_png(im.source), F.to_uint8_image(images[2]))
    # shared colour scale off: each panel its own range
    explorer.shared_scale_checkbox.value = False
    z = _heat_z(explorer.maps_figure)
    h1 = next(t for t in explorer.maps_figure.data if t.name == "chart 1")
    assert h1.zmin == pytest.approx(float(z["chart 1"].min())) and h1.zmax == pytest.approx(float(z["chart 1"].max()))
    explorer.shared_scale_checkbox.value = True
    explorer.head_dropdown.value = "mean"
    _check_explorer_maps(explorer, ref)


def test_explorer_stats_and_similarity_match_metrics(explorer, vit4, images, masks):
    ref = Recorded(vit4, images)
    explorer.image_slider.value, explorer.layer_dropdown.value = 1, "blocks.1.attn"
    explorer.row_slider.value, explorer.col_slider.value, explorer.head_dropdown.value = 1, 2, 3
    rec, layer, grid = ref.rec(1), "blocks.1.attn", (4, 4)
    idx = 1 + 1 * 4 + 2
    frow = rec.attention[layer][0, 3, idx]
    crow = rec.chart_attention[layer][0, :, 3, idx]
    ent = explorer.stats_figure.data[0].y
    _exact(ent, torch.cat([metrics.attention_entropy(frow)[None], metrics.attention_entropy(crow)]), atol=1e-6)
    assert explorer.stats_figure.data[1].y[0] == pytest.approx(math.log(17))
    ev = explorer.stats_figure.data[2].y
    expected = torch.cat([metrics.attention_on_evidence(frow, masks[1], grid, 1)[None],
                          metrics.attention_on_evidence(crow, masks[1], grid, 1)])
    _exact(ev, expected, atol=1e-6)
    assert explorer.stats_figure.data[3].y[0] == pytest.approx(float(metrics.patch_coverage(masks[1], grid).mean()))
    # similarity: cosine of the head's key channels, JS of the head's chart attention, mean head = all
    d = rec.chart_keys[layer].shape[-1] // 4
    _exact(explorer.similarity_figure.data[0].z,
           metrics.chart_similarity(chart_keys=rec.chart_keys[layer][..., 3 * d:4 * d], kind="cosine"), atol=1e-6)
    explorer.similarity_toggle.value = "js"
    _exact(explorer.similarity_figure.data[0].z,
           metrics.chart_similarity(chart_attn=rec.chart_attention[layer][:, :, 3:4], kind="js"), atol=1e-6)
    assert explorer.similarity_figure.data[0].zmin == 0
    explorer.head_dropdown.value = "mean"
    lazy = ref.rec(1, lazy=True)  # what the explorer computes from (exactly); the full recording agrees to 1e-6
    for kind in ("js", "cka", "cosine"):
        explorer.similarity_toggle.value = kind
        _exact(explorer.similarity_figure.data[0].z, lazy.chart_similarity(layer, kind))
        _exact(explorer.similarity_figure.data[0].z, rec.chart_similarity(layer, kind), atol=1e-6)
    assert explorer.similarity_figure.data[0].z.shape == (4, 4)


def test_explorer_click_moves_sliders(explorer, vit4, images):
    ref = Recorded(vit4, images)
    explorer.layer_dropdown.value = "blocks.0.attn"
    heat = next(t for t in explorer.maps_figure.data if t.name == "chart 2")
    # pixel (x=27, y=9) lies in patch row 1, col 3 of the 8-pixel grid
    assert explorer.on_image_click(heat, SimpleNamespace(xs=[27.0], ys=[9.0], point_inds=[]), None) == (1, 3)
    assert explorer.query == (1, 3)
    _check_explorer_maps(explorer, ref)
    assert explorer.on_image_click(heat, SimpleNamespace(xs=[3.5], ys=[9.0]), None) == (1, 0)  # row unchanged
    _check_explorer_maps(explorer, ref)
    assert explorer.on_image_click(heat, SimpleNamespace(xs=[], ys=[]), None) is None
    assert explorer.on_image_click(heat, SimpleNamespace(xs=[500.0], ys=[-3.0]), None) == (0, 3)  # clamped
    # the handler is registered on every heat map of the FigureWidget (they cover the images)
    assert all(t._click_callbacks for t in explorer.maps_figure.data if t.type == "heatmap")


def test_explorer_key_atlas_follows_the_controls_and_a_click_moves_the_query(explorer, vit4, images):
    ref = Recorded(vit4, images)
    explorer.image_slider.value, explorer.layer_dropdown.value, explorer.head_dropdown.value = 1, "blocks.1.attn", 2
    atlas = explorer.atlas_figure
    names = [t.name for t in atlas.data]
    assert names == ["queries"] + [f"chart {c + 1} keys" for c in range(4)] + ["current query"]
    expected = mkviz.figures.key_atlas(ref.rec(1, lazy=True), "blocks.1.attn", head=2)
    for t, e in zip(atlas.data[:-1], expected.data[:-1]):
        _exact(t.x, e.x)
        _exact(t.y, e.y)
    assert list(atlas.data[0].text[:2]) == ["cls", "patch (0, 0)"] and len(atlas.data[0].x) == 17
    # a click on chart 3's key of token 1 + 2·4 + 3 selects patch (2, 3); the ring moves onto that query
    key_trace = atlas.data[3]
    assert explorer.on_atlas_click(key_trace, SimpleNamespace(point_inds=[1 + 2 * 4 + 3], xs=[], ys=[]), None) == (2, 3)
    assert explorer.query == (2, 3) and (explorer.row_slider.value, explorer.col_slider.value) == (2, 3)
    ring = atlas.data[-1]
    assert ring.x == (atlas.data[0].x[12],) and ring.y == (atlas.data[0].y[12],) and ring.customdata == (12,)
    _check_explorer_maps(explorer, ref)
    assert explorer.on_atlas_click(atlas.data[0], SimpleNamespace(point_inds=[0]), None) is None  # cls: no patch
    assert explorer.on_atlas_click(atlas.data[0], SimpleNamespace(point_inds=[]), None) is None
    assert all(t._click_callbacks for t in atlas.data[:-1])


def test_key_atlas_projection_is_pca_of_queries_and_keys(vit4, images):
    with torch.no_grad(), mkviz.record_attention(vit4) as rec:
        vit4(images[:2])
    fig = mkviz.figures.key_atlas(rec, "blocks.0.attn", head=None, image=1, query=5)
    q = rec.queries["blocks.0.attn"][1].transpose(0, 1).reshape(17, -1) * vit4.blocks[0].attn.scale
    points = torch.cat([q, rec.chart_keys["blocks.0.attn"][1].reshape(4 * 17, -1)]).double()
    centred = points - points.mean(0)
    coords = np.stack([np.concatenate([t.x for t in fig.data[:-1]]), np.concatenate([t.y for t in fig.data[:-1]])], 1)
    # the 2-D coordinates are the projection on the top two principal axes (up to each axis's sign)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    ref = (centred @ vh[:2].T).numpy()
    np.testing.assert_allclose(np.abs(coords), np.abs(ref), rtol=1e-4, atol=1e-5)
    assert fig.data[-1].customdata == (5,) and fig.data[-1].x == (fig.data[0].x[5],)
    with pytest.raises(ValueError, match="head: expected None or an int in"):
        mkviz.figures.key_atlas(rec, "blocks.0.attn", head=4)
    with pytest.raises(ValueError, match="`method` must be one of"):
        mkviz.figures.key_atlas(rec, "blocks.0.attn", method="tsne")
    layers = [f"blocks.{i}.attn" for i in range(len(vit4.blocks))]
    with pytest.raises(ValueError, match=r"^layer: expected the name of a recorded layer, one of "
                                         + re.escape(str(layers)) + "; got 0$"):
        mkviz.figures.key_atlas(rec, 0)  # a layer index instead of a recorded layer's name


def test_explorer_latency_uses_cache(explorer):
    forwards = explorer.cache.forwards
    ms = explorer.update_latency_ms(n=5)
    assert isinstance(ms, float) and explorer.cache.forwards == forwards  # redraws from the cache, no forward


def test_explorer_deit_two_prefix_tokens_and_from_dataset():
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, patch_size=8,
                             embed_dim=64, depth=2, num_heads=4, num_classes=4)
    m = mkviz.convert(deit, "kua", 3).eval()
    assert m.num_prefix_tokens == 2
    ds = ShapesDataset(num_samples=4, image_size=32, seed=0)
    ex = viz.ChartExplorer.from_dataset(m, ds, indices=[0, 3], query=(0, 1))
    assert ex.class_names == list(ds.class_names) and ex.labels == [int(ds.labels[0]), int(ds.labels[3])]
    ref = Recorded(m, ds.batch([0, 3]).image)
    _check_explorer_maps(ex, ref)
    ex.image_slider.value = 1
    ex.row_slider.value = 3
    _check_explorer_maps(ex, ref)
    assert np.array_equal(_decode_png(ex.maps_figure.layout.images[0].source),
                          ds.images_uint8([3])[0].permute(1, 2, 0).numpy())
    assert len(ex.stats_figure.data) == 4  # evidence panel from the dataset's masks


def test_explorer_swin_layers_and_query_retarget():
    torch.manual_seed(0)
    m = mkviz.convert(small_swin(), "spatialk", 2).eval()
    imgs = torch.randn(2, 3, 32, 32)
    ex = viz.ChartExplorer(m, imgs, query=(13, 6))
    ref = Recorded(m, imgs)
    assert ex._grid() == (16, 16)
    _check_explorer_maps(ex, ref)
    ex.layer_dropdown.value = "layers.0.blocks.1.attn"  # shifted windows
    _check_explorer_maps(ex, ref)
    ex.layer_dropdown.value = "layers.1.blocks.1.attn"  # 8x8 stage grid: same place in the image
    assert ex.query == (6, 3) and (ex.row_slider.max, ex.col_slider.max) == (7, 7)
    fused, _ = _check_explorer_maps(ex, ref)
    h = next(t for t in ex.maps_figure.data if t.name == "fused")
    assert (h.dx, h.dy, h.x0) == (4.0, 4.0, 1.5)
    ex.head_dropdown.value = 1
    ex.col_slider.value = 7
    _check_explorer_maps(ex, ref)
    assert ex.on_image_click(None, SimpleNamespace(xs=[31.0], ys=[0.0])) == (0, 7)
    _check_explorer_maps(ex, ref)


def test_explorer_rejects_unsupported_models(images):
    with pytest.raises(ValueError, match="convert"):
        viz.ChartExplorer(small_vit(), images)
    blocks = mkviz.convert(small_vit(), "vanillak", 2).blocks
    with pytest.raises(ValueError, match="unsupported model Sequential"):
        viz.ChartExplorer(blocks, images)
    with pytest.raises(ValueError, match="masks"):
        viz.ChartExplorer(mkviz.convert(small_vit(), "vanillak", 2), images, masks=torch.ones(2, 32, 32))


# --------------------------------------------------------------------------- ChartCountExplorer
def test_chart_count_explorer_switches_panels_and_similarity(images, masks):
    torch.manual_seed(0)
    models = {h: mkviz.convert(small_vit(), "vanillak", h, perturbation=0.5).eval() for h in (4, 1, 2)}
    ex = viz.ChartCountExplorer(models, images, masks=masks, accuracies={1: 0.5, 2: 0.55, 4: 0.6}, baseline=0.52)
    assert ex.charts_slider.options == (1, 2, 4) and ex.num_charts == 4
    assert len([t for t in ex.maps_figure.data if t.type == "heatmap"]) == 5
    current = next(t for t in ex.accuracy_figure.data if t.name == "current")
    for h in (4, 1, 2):
        ex.charts_slider.value = h
        ref = Recorded(models[h], images)
        assert ex.visible_chart_panels() == h
        assert sum(bool(a.visible) for a in ex.maps_figure.layout.annotations) == 1 + h
        assert sum(bool(im.visible) for im in ex.maps_figure.layout.images) == 1 + h
        rows = F.chart_grid_shape(1 + h)[0]  # the grid fits the panels shown, not the 5 reserved
        assert ex.maps_figure.layout.height == max(260, 170 * rows + 80)
        assert list(ex.maps_figure.layout.xaxis.domain) == _subplot_domains(rows, min(1 + h, 5), 1)[0][0]
        assert np.asarray(ex.similarity_figure.data[0].z).shape == (h, h)
        assert list(ex.similarity_figure.data[0].x) == [f"c{i + 1}" for i in range(h)]
        _exact(ex.similarity_figure.data[0].z, ref.rec(0).chart_similarity("blocks.0.attn", "cosine"))
        fused, charts = ref.maps(0, "blocks.0.attn", ex.query)
        z = _heat_z(ex.maps_figure)
        _exact(z["fused"], fused)
        for c in range(h):
            _exact(z[f"chart {c + 1}"], charts[c])
        assert list(current.x) == [h] and list(current.y) == [{1: 0.5, 2: 0.55, 4: 0.6}[h]]
        assert f"H = {h} charts" in ex.info.value
    ex.row_slider.value, ex.head_dropdown.value, ex.layer_dropdown.value = 0, 1, "blocks.1.attn"
    ref = Recorded(models[2], images)
    fused, charts = ref.maps(0, "blocks.1.attn", (0, 2), head=1)
    z = _heat_z(ex.maps_figure)
    _exact(z["fused"], fused)
    _exact(z["chart 2"], charts[1])
    with pytest.raises(ValueError, match="charts"):
        viz.ChartCountExplorer({3: models[4]}, images)
