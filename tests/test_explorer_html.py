"""Kernel-free explorers (mkviz.viz.explorer_html): the embedded data against record_attention, bad inputs, and the
pages in headless chromium opened by file:// with every non-local request blocked.

Expected values come from separate forwards inside `mkviz.record_attention` (full maps, one image at a
time) and `mkviz.explain.metrics` / `mkviz.viz.figures`, never from the page's data.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mkviz
from mkviz.explain import metrics
from mkviz.viz import explorer_html as eh
from mkviz.viz import figures
from conftest import small_swin, small_vit

pytestmark = pytest.mark.usefixtures("one_thread")
LAYERS = ("blocks.0.attn", "blocks.1.attn")
P, GW = 1, 4  # small_vit: a cls token, a 4 x 4 patch grid


@pytest.fixture(scope="module")
def vit4():
    torch.manual_seed(0)
    return mkviz.convert(small_vit(), "vanillak", 4, perturbation=0.5).eval()


@pytest.fixture(scope="module")
def by_charts(vit4):
    torch.manual_seed(2)
    models = {h: mkviz.convert(small_vit(), "vanillak", h, perturbation=0.5).eval() for h in (1, 2)}
    return {**models, 4: vit4}


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def masks():
    m = torch.zeros(2, 32, 32, dtype=torch.bool)
    m[0, 4:20, 8:30] = True
    m[1, 16:32, 0:12] = True
    return m


class Recorded:
    """Full recordings, one forward per (model, image), cached by the test."""

    def __init__(self, images):
        self.images, self.recs = images, {}

    def rec(self, model, i):
        if (id(model), i) not in self.recs:
            with torch.no_grad(), mkviz.record_attention(model) as rec:
                model(self.images[i:i + 1])
            self.recs[id(model), i] = rec
        return self.recs[id(model), i]

    def maps(self, model, i, layer, query, head=None):
        """(1 + H, G) rows over the patch keys of query (row, col): fused then each chart (head None: mean)."""
        rec, t = self.rec(model, i), P + query[0] * GW + query[1]
        a = torch.cat([rec.attention[layer][0][None], rec.chart_attention[layer][0]])[:, :, t, P:]  # (M, heads, G)
        return (a.mean(1) if head is None else a[:, head]).double().numpy()


@pytest.fixture(scope="module")
def recorded(images):
    return Recorded(images)


@pytest.fixture(scope="module")
def page_html(vit4, images, masks):
    return eh.chart_explorer_html(vit4, images, masks=masks, class_names=list("abcde"), labels=[0, 3],
                                  dtype="float32", query=(2, 1))


# --------------------------------------------------------------------------- the embedded data
def test_embedded_rows_statistics_similarity_and_atlas_equal_mkviz(page_html, vit4, recorded, masks):
    d = eh.embedded_data(page_html)
    assert d["layers"] == list(LAYERS) and d["grid"] == [4, 4] and d["prefix"] == 1 and d["num_heads"] == 4
    assert d["initial"] == {"layer": 0, "query": [2, 1]}
    for i in range(2):
        for layer in LAYERS:
            arrays, rec = d["models"][0]["layers"][layer], recorded.rec(vit4, i)
            assert arrays["rows"].shape == (2, 4, 16, 5, 16)
            full = torch.cat([rec.attention[layer][0][None], rec.chart_attention[layer][0]])  # (5, heads, N, N)
            # rows: the float32 values record_attention gives, exactly (queries and keys: the 16 patches)
            np.testing.assert_array_equal(arrays["rows"][i], full[:, :, P:, P:].permute(1, 2, 0, 3).numpy())
            stacked = torch.cat([full.mean(1, keepdim=True), full], 1)[:, :, P:]  # (5, mean + heads, G, N)
            ent = metrics.attention_entropy(stacked).permute(1, 2, 0)
            np.testing.assert_allclose(arrays["entropy"][i], ent.numpy(), rtol=0, atol=1e-6)
            assert 0 < arrays["entropy"][i].min() and arrays["entropy"][i].max() <= math.log(17) + 1e-6
            cov = metrics.patch_coverage(masks[i].float(), (4, 4)).reshape(-1)
            patch = stacked[..., P:]
            share = ((patch * cov).sum(-1) / patch.sum(-1)).permute(1, 2, 0)
            np.testing.assert_allclose(arrays["evidence"][i], share.numpy(), rtol=0, atol=1e-6)
            for kind in ("cosine", "js", "cka"):  # head mean: the layer's similarity as record_attention gives it
                np.testing.assert_allclose(arrays["similarity"][kind][i, 0], rec.chart_similarity(layer, kind).numpy(),
                                           rtol=0, atol=1e-6)
            keys = rec.chart_keys[layer][..., 16:32]  # head 1's channels (head_dim 16)
            np.testing.assert_allclose(arrays["similarity"]["cka"][i, 2],
                                       metrics.chart_similarity(chart_keys=keys, kind="cka").numpy(), atol=1e-6)
            atlas = figures.key_atlas(rec, layer, head=1)
            xy = np.concatenate([np.stack([t.x, t.y], -1) for t in atlas.data[:-1]])
            np.testing.assert_allclose(arrays["atlas"][i, 2], xy, rtol=0, atol=1e-6)
    assert d["chance"] == pytest.approx([float(metrics.patch_coverage(m.float(), (4, 4)).mean()) for m in masks])
    assert [p[0] for p in d["models"][0]["predicted"]] == [int(vit4(im[None]).argmax()) for im in recorded.images]


def test_float16_rows_and_head_mean_only(vit4, images, recorded):
    d = eh.embedded_data(eh.chart_explorer_html(vit4, images, heads="mean", similarity=["js"], atlas=False,
                                                plotly_js="none"))
    rows = d["models"][0]["layers"]["blocks.1.attn"]["rows"]
    assert rows.dtype == np.float16 and rows.shape == (2, 1, 16, 5, 16)
    want = recorded.maps(vit4, 1, "blocks.1.attn", (3, 0))
    np.testing.assert_allclose(rows[1, 0, 12].astype(np.float64), want, rtol=1e-3, atol=1e-6)
    assert list(d["models"][0]["layers"]["blocks.1.attn"]["similarity"]) == ["js"]
    assert "atlas" not in d["models"][0]["layers"]["blocks.1.attn"]


def test_bad_inputs_name_the_argument(vit4, images, tmp_path):
    cases = [
        (dict(heads="some"), "heads must be one of 'all', 'mean'; got 'some'"),
        (dict(dtype="float64"), "dtype must be one of 'float32', 'float16'; got 'float64'"),
        (dict(similarity=["euclid"]), r"similarity: expected a non-empty sequence of \('cosine', 'js', 'cka'\)"),
        (dict(similarity="cosine"), "similarity: expected a non-empty sequence"),
        (dict(plotly_js="cdn"), "plotly_js must be one of 'inline', 'shared:<relative path>', 'none'; got 'cdn'"),
        (dict(plotly_js="shared:https://cdn.plot.ly/plotly.js"), "plotly_js: the shared copy must be a relative"),
        (dict(plotly_js="shared:/usr/share/plotly.js"), "plotly_js: the shared copy must be a relative"),
        (dict(query=(4, 0)), r"query: expected \(row, col\) with 0 <= row < 4 and 0 <= col < 4"),
        (dict(layer="blocks.7.attn"), r"layer: expected None, an index in \[-2, 2\) or one of"),
        (dict(layer=2), r"layer: expected None, an index"),
        (dict(full_page="yes"), "full_page: expected True or False"),
        (dict(element_id="1 bad"), "element_id: expected a letter"),
        (dict(labels=[0, 1, 2]), r"labels: expected one label per image \(2\)"),
        (dict(masks=torch.zeros(3, 32, 32)), r"masks: expected one evidence mask per image, \(B=2, H, W\)"),
        (dict(display_images=torch.zeros(1, 3, 32, 32, dtype=torch.uint8)), "display_images: expected 2 images"),
        (dict(max_bytes=1000), r"max_bytes: the embedded data would be .* MiB, over max_bytes=1000"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            eh.chart_explorer_html(vit4, images, **{"plotly_js": "none", **kwargs})
    with pytest.raises(ValueError, match=r"images: expected \(B, 3, H, W\)"):
        eh.chart_explorer_html(vit4, torch.zeros(2, 5, 32, 32))
    with pytest.raises(ValueError, match="model: VisionTransformer has no recorded manifold-key attention layer"):
        eh.chart_explorer_html(small_vit().eval(), images, plotly_js="none")
    with pytest.raises(ValueError, match="model: Swin window attention has no HTML explorer"):
        eh.chart_explorer_html(mkviz.convert(small_swin(), "vanillak", 2).eval(), images, plotly_js="none")
    with pytest.raises(ValueError, match="model: expected a manifold-key torch model"):
        eh.key_atlas_html("vit", images)
    with pytest.raises(ValueError, match=r"models_by_charts\[2\]: the model has 4 charts, not 2"):
        eh.chart_count_explorer_html({2: vit4}, images, plotly_js="none")
    with pytest.raises(ValueError, match=r"charts: expected one of the chart counts \[4\]"):
        eh.chart_count_explorer_html({4: vit4}, images, charts=8)
    with pytest.raises(ValueError, match="models_by_charts: expected a non-empty"):
        eh.chart_count_explorer_html({}, images)
    with pytest.raises(ValueError, match="html: expected the text an mkviz.viz.explorer_html function returned"):
        eh.save_html(tmp_path / "x.html", "<p>hello</p>")
    with pytest.raises(ValueError, match="html: no explorer data found"):
        eh.embedded_data("<p>hello</p>")


def test_save_html_never_overwrites_silently(vit4, images, tmp_path):
    page = eh.key_atlas_html(vit4, images, plotly_js="none")
    path = eh.save_html(tmp_path / "sub" / "atlas.html", page)
    assert path.read_text(encoding="utf-8") == page
    path.write_text("a student's notes")
    with pytest.raises(FileExistsError, match=r"path: .*atlas.html exists; pass overwrite=True"):
        eh.save_html(path, page)
    assert path.read_text() == "a student's notes"
    eh.save_html(path, page, overwrite=True)
    assert path.read_text(encoding="utf-8") == page


def test_pages_are_deterministic_and_plotly_js_is_inline_or_shared(vit4, images):
    a = eh.key_atlas_html(vit4, images, plotly_js="shared:static/plotly.min.js")
    assert a == eh.key_atlas_html(vit4, images, plotly_js="shared:static/plotly.min.js")
    assert '<script src="static/plotly.min.js"></script>' in a and "http" not in a.replace("http://www.w3.org", "")
    fragment = eh.key_atlas_html(vit4, images, plotly_js="none", full_page=False, element_id="atlas-1")
    assert fragment.startswith("<style>") and '<div class="mkviz-explorer" id="atlas-1">' in fragment
    assert "<html" not in fragment and "Plotly.register" not in fragment
    from plotly.offline import get_plotlyjs
    assert get_plotlyjs() in eh.chart_explorer_html(vit4, images[:1], plotly_js="inline", atlas=False)


# --------------------------------------------------------------------------- in the browser
MAPS_JS = """(id) => {
  const gd = document.querySelector('#' + id + ' .mkviz-plot-maps');
  if (!gd || !gd.data) return null;
  return gd.data.filter(t => t.type === 'heatmap' && t.visible !== false).map(t => t.z);
}"""
FIGURE_JS = """([id, name]) => {
  const gd = document.querySelector('#' + id + ' .mkviz-plot-' + name);
  return gd && gd.data ? JSON.parse(JSON.stringify(gd.data)) : null;
}"""
# the page position of grid cell (row, col)'s centre on the fused map (axes x, y)
CELL_JS = """([id, row, col]) => {
  const gd = document.querySelector('#' + id + ' .mkviz-plot-maps'), L = gd._fullLayout;
  const [H, W] = [32, 32], [gh, gw] = [4, 4], box = gd.getBoundingClientRect();
  const px = (col + 0.5) * W / gw - 0.5, py = (row + 0.5) * H / gh - 0.5;
  return [box.left + L.xaxis._offset + L.xaxis.l2p(px), box.top + L.yaxis._offset + L.yaxis.l2p(py)];
}"""


def _element_id(html: str) -> str:
    return html.split('<div class="mkviz-explorer" id="', 1)[1].split('"', 1)[0]


def _open(browser, path: Path):
    """A page on path (file://) that aborts and records every request that is not file://."""
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    page, blocked, errors = context.new_page(), [], []
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r):
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(path.as_uri())
    return context, page, blocked, errors


def _drawn(page, eid):
    page.wait_for_function(MAPS_JS, arg=eid, timeout=20_000)
    return [np.asarray(z, dtype=np.float64).reshape(-1) for z in page.evaluate(MAPS_JS, eid)]


def _assert_maps(drawn, want, atol=0.0):
    assert len(drawn) == len(want)
    for z, w in zip(drawn, want):
        np.testing.assert_allclose(z, w, rtol=0, atol=atol)


@pytest.mark.slow
def test_chart_explorer_page_click_layer_and_head(browser, page_html, vit4, recorded, tmp_path):
    path = eh.save_html(tmp_path / "explorer.html", page_html)
    eid = _element_id(page_html)
    context, page, blocked, errors = _open(browser, path)
    try:
        drawn = _drawn(page, eid)
        # head mean: the page averages the float32 heads in float64 (torch in float32): within 1e-7
        _assert_maps(drawn, recorded.maps(vit4, 0, LAYERS[0], (2, 1)), atol=1e-7)
        x, y = page.evaluate(CELL_JS, [eid, 0, 3])
        page.mouse.click(x, y)
        page.wait_for_function("() => mkvizExplorer.instances['%s'].state.row === 0" % eid, timeout=5_000)
        after = _drawn(page, eid)
        assert max(np.abs(a - b).max() for a, b in zip(after, drawn)) > 1e-3, "the click did not change the maps"
        _assert_maps(after, recorded.maps(vit4, 0, LAYERS[0], (0, 3)), atol=1e-7)
        assert page.input_value(f"#{eid} .mkviz-row") == "0" and page.input_value(f"#{eid} .mkviz-col") == "3"
        # a layer, a head and an image: the drawn values are the recorded float32 values exactly
        page.select_option(f"#{eid} .mkviz-layer", "1")
        page.select_option(f"#{eid} .mkviz-head", "3")  # option 0 is the mean: head 2
        page.select_option(f"#{eid} .mkviz-image", "1")
        _assert_maps(_drawn(page, eid), recorded.maps(vit4, 1, LAYERS[1], (0, 3), head=2))
        rec = recorded.rec(vit4, 1)
        entropy = page.evaluate(FIGURE_JS, [eid, "entropy"])[0]["y"]
        rows = torch.cat([rec.attention[LAYERS[1]][0][None], rec.chart_attention[LAYERS[1]][0]])[:, 2, P + 3]
        np.testing.assert_allclose(entropy, metrics.attention_entropy(rows).numpy(), rtol=0, atol=1e-6)
        page.select_option(f"#{eid} .mkviz-similarity", "js")
        sim = page.evaluate(FIGURE_JS, [eid, "similarity"])[0]
        want = metrics.chart_similarity(chart_attn=rec.chart_attention[LAYERS[1]][:, :, 2:3], kind="js")
        np.testing.assert_allclose(sim["z"], want.numpy(), rtol=0, atol=1e-6)
        assert sim["x"] == ["c1", "c2", "c3", "c4"]
        atlas = page.evaluate(FIGURE_JS, [eid, "atlas"])
        points = figures.key_atlas(rec, LAYERS[1], head=2)
        np.testing.assert_allclose(atlas[0]["x"], points.data[0].x, rtol=0, atol=1e-5)
        assert atlas[-1]["customdata"] == [P + 3]  # the ring on the query (0, 3)
        np.testing.assert_allclose(atlas[-1]["x"], [points.data[0].x[P + 3]], atol=1e-5)
        assert page.inner_text(f"#{eid} .mkviz-info").startswith("image 1 · label: d · predicted:")
        page.screenshot(path=str(tmp_path / "explorer.png"))
    finally:
        context.close()
    assert not errors, errors
    assert not blocked, f"the page requested non-local resources: {blocked}"


@pytest.mark.slow
def test_chart_count_page_slider_switches_model(browser, by_charts, images, recorded, tmp_path):
    from plotly.offline import get_plotlyjs

    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "plotly.min.js").write_text(get_plotlyjs(), encoding="utf-8")
    html = eh.chart_count_explorer_html(by_charts, images, accuracies={1: 0.5, 2: 0.55, 4: 0.6}, baseline=0.52,
                                        dtype="float32", query=(1, 1), layer=-1, heads="all",
                                        plotly_js="shared:static/plotly.min.js")
    path = eh.save_html(tmp_path / "count.html", html)
    eid = _element_id(html)
    context, page, blocked, errors = _open(browser, path)
    try:
        page.select_option(f"#{eid} .mkviz-head", "2")  # head 1
        _assert_maps(_drawn(page, eid), recorded.maps(by_charts[4], 0, LAYERS[1], (1, 1), head=1))
        slider = page.locator(f"#{eid} .mkviz-charts")
        for h in (2, 1):  # the slider's keyboard steps: H = 4 -> 2 -> 1
            slider.focus()
            page.keyboard.press("ArrowLeft")
            page.wait_for_function("() => mkvizExplorer.instances['%s'].model().charts === %d" % (eid, h))
            drawn = _drawn(page, eid)
            assert len(drawn) == 1 + h
            _assert_maps(drawn, recorded.maps(by_charts[h], 0, LAYERS[1], (1, 1), head=1))
            sim = page.evaluate(FIGURE_JS, [eid, "similarity"])[0]
            rec = recorded.rec(by_charts[h], 0)
            keys = rec.chart_keys[LAYERS[1]][..., 16:32]
            np.testing.assert_allclose(sim["z"], metrics.chart_similarity(chart_keys=keys).numpy(), atol=1e-6)
            current = next(t for t in page.evaluate(FIGURE_JS, [eid, "accuracy"]) if t["name"] == "current")
            assert current["x"] == [h] and current["y"] == [{1: 0.5, 2: 0.55, 4: 0.6}[h]]
            assert f"H = {h} charts" in page.inner_text(f"#{eid} .mkviz-info")
    finally:
        context.close()
    assert not errors, errors
    assert not blocked, f"the page requested non-local resources: {blocked}"


@pytest.mark.slow
def test_key_atlas_page_click_on_a_point_moves_the_query(browser, vit4, images, recorded, tmp_path):
    html = eh.key_atlas_html(vit4, images, dtype="float32", query=(0, 0))
    path = eh.save_html(tmp_path / "atlas.html", html)
    eid = _element_id(html)
    context, page, blocked, errors = _open(browser, path)
    try:
        _drawn(page, eid)
        token = P + 2 * GW + 3  # patch (2, 3)'s query point
        x, y = page.evaluate("""([id, t]) => {
          const gd = document.querySelector('#' + id + ' .mkviz-plot-atlas'), L = gd._fullLayout;
          const b = gd.getBoundingClientRect();
          const q = gd.data[0];
          return [b.left + L.xaxis._offset + L.xaxis.l2p(q.x[t]), b.top + L.yaxis._offset + L.yaxis.l2p(q.y[t])];
        }""", [eid, token])
        page.mouse.click(x, y)
        page.wait_for_function("() => mkvizExplorer.instances['%s'].state.col !== 0" % eid, timeout=5_000)
        state = page.evaluate("() => mkvizExplorer.instances['%s'].state" % eid)
        picked = P + state["row"] * GW + state["col"]
        # the point plotly picked (a query or a chart key of the picked patch) lies under the click
        distance = page.evaluate("""([id, t, x, y]) => {
          const gd = document.querySelector('#' + id + ' .mkviz-plot-atlas'), L = gd._fullLayout;
          const b = gd.getBoundingClientRect();
          const d = gd.data.slice(0, -1).map(tr => Math.hypot(b.left + L.xaxis._offset + L.xaxis.l2p(tr.x[t]) - x,
                                                              b.top + L.yaxis._offset + L.yaxis.l2p(tr.y[t]) - y));
          return Math.min(...d);
        }""", [eid, picked, x, y])
        assert distance < 8, (picked, token, distance)
        atlas = page.evaluate(FIGURE_JS, [eid, "atlas"])
        assert atlas[-1]["customdata"] == [picked] and atlas[-1]["x"] == [atlas[0]["x"][picked]]
        _assert_maps(_drawn(page, eid), recorded.maps(vit4, 0, LAYERS[0], (state["row"], state["col"]))[:1], atol=1e-7)
    finally:
        context.close()
    assert not errors, errors
    assert not blocked, f"the page requested non-local resources: {blocked}"


def test_public_names_and_the_page_assets_ship_with_the_viz_layer():
    assert all(getattr(mkviz, n) is getattr(eh, n)
               for n in ("chart_explorer_html", "chart_count_explorer_html", "key_atlas_html", "save_html"))
    assets = Path(eh.__file__).parent / "assets"
    assert {p.name for p in assets.iterdir()} >= {"explorer.js", "explorer.css"}


def test_explorers_export_themselves_as_they_stand(vit4, by_charts, images, masks, tmp_path, monkeypatch):
    """ChartExplorer / ChartCountExplorer.to_html: their models, images, masks, names and state; save_html never
    overwrites silently; with $MKVIZ_STATIC_HTML their notebook output carries the fragment too."""
    from mkviz.viz.explorers import ChartCountExplorer, ChartExplorer

    ex = ChartExplorer(vit4, images, masks=masks, class_names=list("abcde"), labels=[0, 3], layer=-1, query=(1, 2))
    ex.row_slider.value = 3
    d = eh.embedded_data(ex.to_html(plotly_js="none", dtype="float32"))
    assert d["initial"] == {"layer": 1, "query": [3, 2]} and d["class_names"] == list("abcde") and d["labels"] == [0, 3]
    assert d["chance"] == pytest.approx([float(metrics.patch_coverage(m.float(), (4, 4)).mean()) for m in masks])
    rows = d["models"][0]["layers"][LAYERS[1]]["rows"][0, :, 3 * GW + 2]  # (heads, M, G): image 0, query (3, 2)
    fused, charts = ex.current_maps()
    np.testing.assert_allclose(rows.mean(0), torch.cat([fused[None], charts]).reshape(5, -1).numpy(), atol=1e-6)
    path = ex.save_html(tmp_path / "explorer.html")
    assert eh.embedded_data(path.read_text(encoding="utf-8"))["initial"] == d["initial"]
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        ex.save_html(path)
    ex.save_html(path, overwrite=True, plotly_js="none")
    assert "Plotly.register" not in path.read_text(encoding="utf-8")

    assert "text/html" not in ex._repr_mimebundle_()
    monkeypatch.setenv("MKVIZ_STATIC_HTML", "1")
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle and '<div class="mkviz-explorer"' in bundle["text/html"]
    assert "<html" not in bundle["text/html"] and "Plotly.register" not in bundle["text/html"]
    swin = ChartExplorer(mkviz.convert(small_swin(), "vanillak", 2).eval(), images)
    assert "text/html" not in swin._repr_mimebundle_()  # no page form: the widget view only

    cx = ChartCountExplorer(by_charts, images, masks=masks, accuracies={1: 0.5, 2: 0.55, 4: 0.6}, baseline=0.52,
                            charts=2, query=(0, 1))
    c = eh.embedded_data(cx.to_html(plotly_js="none"))
    assert c["counts"] == [1, 2, 4] and c["initial_model"] == 1 and c["initial"] == {"layer": 0, "query": [0, 1]}
    assert c["accuracies"] == {"1": 0.5, "2": 0.55, "4": 0.6} and [m["charts"] for m in c["models"]] == [1, 2, 4]
