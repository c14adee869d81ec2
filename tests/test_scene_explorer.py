"""The explorers' scene panel (instance masks): per query, the share of the fused map and of each chart on the same
object, the other objects and the background, in the embedded data, the notebook widget and the page in chromium.

Expected shares are recomputed here from separate forwards inside `mkviz.record_attention` (full maps) and
`region_coverage`, per head, renormalised over the patches, then averaged over the heads (as
`scene_attention_shares` does), never from the explorers' data.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mkviz
from mkviz.explain.scene_attention import region_coverage
from mkviz.viz import explorer_html as eh
from mkviz.viz.scene_view import BACKGROUND_NOTE, chance_path
from conftest import small_swin
from test_explorer_html import CELL_JS, _element_id, _open, vit4  # noqa: F401 (vit4: the fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
LAYERS = ("blocks.0.attn", "blocks.1.attn")
P, GRID = 1, (4, 4)
ON_OBJECT = [(0, 0), (1, 1), (3, 2), (2, 3)]  # image 0: the square, the square, the bar, the bar
BACKGROUND = [(0, 3), (3, 0)]  # image 0: no rectangle covers half of these patches


@pytest.fixture(scope="module")
def scene():
    """Two 32-px images (4x4 patches of 8 px) with 2 and 3 rectangles, later ones on top."""
    torch.manual_seed(1)
    boxes = [[(0, 0, 16, 16), (16, 8, 32, 32)], [(0, 0, 12, 20), (8, 16, 24, 32), (20, 0, 32, 12)]]
    masks = []
    for rects in boxes:
        m = torch.zeros(len(rects), 32, 32, dtype=torch.uint8)
        for k, (y0, x0, y1, x1) in enumerate(rects):
            m[:k, y0:y1, x0:x1] = 0
            m[k, y0:y1, x0:x1] = 1
        masks.append(m)
    return torch.randn(2, 3, 32, 32), masks


@pytest.fixture(scope="module")
def recordings(vit4, scene):
    recs = []
    for i in range(2):
        with torch.no_grad(), mkviz.record_attention(vit4) as rec:
            vit4(scene[0][i:i + 1])
        recs.append(rec)
    return recs


def expected(rec, masks, layer, query, head=None):
    """((1 + H, 3) shares of the fused map and each chart, (3,) chance) of query (row, col); NaN same off objects."""
    q = query[0] * GRID[1] + query[1]
    rows = torch.cat([rec.attention[layer][0][None], rec.chart_attention[layer][0]])[:, :, P + q, P:].double()
    rows = rows / rows.sum(-1, keepdim=True)  # (M, heads, G): each head's row over the patches
    covs = [region_coverage(masks, k, GRID).double() for k in range(len(masks))]  # K x (3, G)
    on = [c for c in covs if c[0, q] >= 0.5]
    if on:
        cov = on[0]
    else:  # a query on no object: every object is "other"
        cov = torch.stack([torch.full_like(covs[0][0], float("nan")), covs[0][0] + covs[0][1], covs[0][2]])
    shares = torch.einsum("mhg,rg->mhr", rows, cov)
    return (shares.mean(1) if head is None else shares[:, head]).numpy(), cov.mean(1).numpy()


@pytest.fixture(scope="module")
def page_html(vit4, scene):
    return eh.chart_explorer_html(vit4, scene[0], instance_masks=scene[1], dtype="float32", query=(0, 0))


# --------------------------------------------------------------------------- the embedded data
def test_embedded_scene_shares_equal_the_recomputed_ones(page_html, scene, recordings):
    d = eh.embedded_data(page_html)
    worst = 0.0
    for i in range(2):
        for layer in LAYERS:
            shares = d["models"][0]["layers"][layer]["scene"]
            assert shares.dtype == np.float32 and shares.shape == (2, 5, 16, 5, 3)  # (B, mean + heads, G, M, 3)
            for query in ON_OBJECT + BACKGROUND:
                q = query[0] * GRID[1] + query[1]
                for k, head in enumerate([None, 0, 1, 2, 3]):
                    want, chance = expected(recordings[i], scene[1][i], layer, query, head)
                    np.testing.assert_allclose(shares[i, k, q], want, rtol=0, atol=1e-6, equal_nan=True)
                    worst = max(worst, float(np.nanmax(np.abs(shares[i, k, q] - want))))
                np.testing.assert_allclose(d["scene_chance"][i, q], chance, rtol=0, atol=1e-6, equal_nan=True)
            same = shares[..., 0]
            on_object = ~np.isnan(same)
            np.testing.assert_allclose(shares.sum(-1)[on_object], 1, rtol=0, atol=1e-6)  # per query and map
            np.testing.assert_allclose(shares[..., 1:].sum(-1)[~on_object], 1, rtol=0, atol=1e-6)
    background = np.isnan(d["models"][0]["layers"][LAYERS[0]]["scene"][0, 0, :, 0, 0])
    assert sorted(np.flatnonzero(background).tolist()) == [2, 3, 6, 7, 8, 12]  # image 0's patches on no object
    assert "evidence" not in d["models"][0]["stats"] and d["chance"] is None
    print(f"largest difference from the recomputed shares: {worst:.2e}")


def test_head_mean_only_keeps_the_mean_of_the_heads(vit4, scene, recordings):
    d = eh.embedded_data(eh.chart_explorer_html(vit4, scene[0], instance_masks=scene[1], heads="mean",
                                                similarity=["js"], atlas=False, plotly_js="none"))
    shares = d["models"][0]["layers"][LAYERS[1]]["scene"]
    assert shares.shape == (2, 1, 16, 5, 3)
    np.testing.assert_allclose(shares[1, 0, 5], expected(recordings[1], scene[1][1], LAYERS[1], (1, 1))[0], atol=1e-6)


def test_bad_instance_masks_are_one_line(vit4, scene):
    images, masks = scene
    cases = [
        (dict(masks=torch.zeros(2, 32, 32), instance_masks=masks), "instance_masks: pass either masks"),
        (dict(instance_masks=masks[:1]), r"instance_masks: expected 2 tensors \(K_b, H, W\), one per image"),
        (dict(instance_masks=[masks[0], masks[1][0]]), r"instance_masks: expected 2 tensors"),
        (dict(instance_masks=masks[0]), "instance_masks: expected a list of B tensors"),
        (dict(instance_masks=[masks[0], masks[1][:, :16]]), r"instance_masks: expected \(K_b, 32, 32\) like the images"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            eh.chart_explorer_html(vit4, images, plotly_js="none", **kwargs)
    from mkviz.viz.explorers import ChartExplorer
    with pytest.raises(ValueError, match="instance_masks: pass either masks"):
        ChartExplorer(vit4, images, masks=torch.zeros(2, 32, 32), instance_masks=masks)
    with pytest.raises(ValueError, match="instance_masks: the scene panel is for ViT / DeiT"):
        ChartExplorer(mkviz.convert(small_swin(), "vanillak", 2).eval(), images, instance_masks=masks)


# --------------------------------------------------------------------------- the notebook widget
def _bars(fig):
    """((M, 3) drawn shares, None -> NaN; (3,) chance) of a scene figure."""
    shares = np.array([[np.nan if v is None else v for v in t.y] for t in fig.data[:-1]], dtype=np.float64)
    line = fig.data[-1].y
    return shares, np.array([np.nan if line[j] is None else line[j] for j in (0, 3, 6)], dtype=np.float64)


def test_widget_scene_bars_follow_the_query(vit4, scene, recordings):
    pytest.importorskip("ipywidgets")
    from mkviz.viz.explorers import ChartExplorer

    ex = ChartExplorer(vit4, scene[0], instance_masks=scene[1], layer=-1, query=(0, 0))
    assert ex.scene_figure.data[-1].name == "chance" and [t.name for t in ex.scene_figure.data[:2]] == \
        ["fused", "chart 1"]
    before, chance = _bars(ex.scene_figure)
    want, want_chance = expected(recordings[0], scene[1][0], LAYERS[1], (0, 0))
    np.testing.assert_allclose(before, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(chance, want_chance, rtol=0, atol=1e-7)
    ex.row_slider.value = 3  # (3, 0): a background patch
    after, chance = _bars(ex.scene_figure)
    np.testing.assert_allclose(after, expected(recordings[0], scene[1][0], LAYERS[1], (3, 0))[0], atol=1e-6,
                               equal_nan=True)
    assert np.isnan(after[:, 0]).all() and np.isnan(chance[0]) and BACKGROUND_NOTE in ex.scene_figure.layout.title.text
    ex.col_slider.value = 2  # (3, 2): on the bar
    ex.head_dropdown.value = 1
    drawn = _bars(ex.scene_figure)[0]
    np.testing.assert_allclose(drawn, expected(recordings[0], scene[1][0], LAYERS[1], (3, 2), head=1)[0], atol=1e-6)
    assert np.abs(drawn - before).max() > 1e-3 and BACKGROUND_NOTE not in ex.scene_figure.layout.title.text
    ex.image_slider.value = 1
    np.testing.assert_allclose(ex.current_scene()["shares"].numpy(),
                               expected(recordings[1], scene[1][1], LAYERS[1], (3, 2), head=1)[0], atol=1e-6)
    d = eh.embedded_data(ex.to_html(plotly_js="none", dtype="float32"))  # the page carries the scenes
    np.testing.assert_allclose(d["models"][0]["layers"][LAYERS[1]]["scene"][1, 2, 14], _bars(ex.scene_figure)[0],
                               atol=1e-6)
    assert chance_path([0.5, 0.25, 0.25])[1] == [0.5, 0.5, None, 0.25, 0.25, None, 0.25, 0.25]


# --------------------------------------------------------------------------- in the browser
SCENE_JS = """(id) => {
  const gd = document.querySelector('#' + id + ' .mkviz-plot-scene');
  return gd && gd.data ? {data: JSON.parse(JSON.stringify(gd.data)), title: gd.layout.title.text,
    shown: gd.querySelector('.gtitle') ? gd.querySelector('.gtitle').textContent : null} : null;
}"""


def _drawn_scene(page, eid):
    page.wait_for_function(SCENE_JS, arg=eid, timeout=20_000)
    spec = page.evaluate(SCENE_JS, eid)
    shares = np.array([[np.nan if v is None else v for v in t["y"]] for t in spec["data"][:-1]], dtype=np.float64)
    return shares, spec


@pytest.mark.slow
def test_page_scene_bars_follow_a_click(browser, page_html, scene, recordings, tmp_path):
    path = eh.save_html(tmp_path / "scene.html", page_html)
    eid = _element_id(page_html)
    context, page, blocked, errors = _open(browser, path)
    try:
        first, spec = _drawn_scene(page, eid)
        np.testing.assert_allclose(first, expected(recordings[0], scene[1][0], LAYERS[0], (0, 0))[0], rtol=0,
                                   atol=1e-6)
        assert [t["name"] for t in spec["data"]] == ["fused", "chart 1", "chart 2", "chart 3", "chart 4", "chance"]
        x, y = page.evaluate(CELL_JS, [eid, 3, 2])  # on the bar
        page.mouse.click(x, y)
        page.wait_for_function("() => mkvizExplorer.instances['%s'].state.row === 3" % eid, timeout=5_000)
        after, spec = _drawn_scene(page, eid)
        want, chance = expected(recordings[0], scene[1][0], LAYERS[0], (3, 2))
        assert np.abs(after - first).max() > 1e-3, "the click did not change the bars"
        np.testing.assert_allclose(after, want, rtol=0, atol=1e-6)
        np.testing.assert_allclose([spec["data"][-1]["y"][j] for j in (0, 3, 6)], chance, rtol=0, atol=1e-7)
        assert BACKGROUND_NOTE not in spec["shown"]
        page.select_option(f"#{eid} .mkviz-layer", "1")
        page.select_option(f"#{eid} .mkviz-head", "2")  # option 0 is the mean: head 1
        x, y = page.evaluate(CELL_JS, [eid, 3, 0])  # on no object (the top right is under plotly's mode bar)
        page.mouse.move(x, y, steps=5)  # plotly clicks the point it last hovered: let the hover catch up
        page.wait_for_timeout(300)
        page.mouse.click(x, y)
        page.wait_for_function("() => mkvizExplorer.instances['%s'].state.col === 0" % eid, timeout=5_000)
        bg, spec = _drawn_scene(page, eid)
        want, chance = expected(recordings[0], scene[1][0], LAYERS[1], (3, 0), head=1)
        np.testing.assert_allclose(bg, want, rtol=0, atol=1e-6, equal_nan=True)
        assert all(t["y"][0] is None for t in spec["data"][:-1]) and spec["data"][-1]["y"][0] is None
        assert BACKGROUND_NOTE in spec["shown"], spec["shown"]
        page.screenshot(path=str(tmp_path / "scene.png"), full_page=True)
    finally:
        context.close()
    assert not errors, errors
    assert not blocked, f"the page requested non-local resources: {blocked}"
