"""Notebooks 04 and 06 and the key atlas in a real JupyterLab, driven by headless chromium (Playwright).

The test starts JupyterLab on a free loopback port with a random token, on a temporary copy of the
notebooks (so nothing on disk in `notebooks/` can change, autosave or not), opens notebook 04, runs all
cells from the Run menu, waits for the explorer's plotly FigureWidget, moves the query-row slider with the
keyboard and checks that the rendered heat maps changed; then does the same run for notebook 06. Both
widgets are saved as screenshots in $MKVIZ_SCREENSHOTS (default <temp>/mkviz-screenshots, outside the repository).
In 06 it then lowers the chart count (the panels re-grid: fewer rows, a lower figure; nb06_chart_count_h4.png)
and clicks a chart panel, which must set the query sliders to the cell clicked.
A second test writes a small notebook of its own into the lab's folder (one shipped checkpoint and the
explorer, seconds to run, instead of notebook 07's minutes), waits for the explorer's key atlas to draw its
9 × 50 points, clicks its most isolated point and checks that the query sliders, the ring and the info line
move to that point's patch.
The kernels run in small mode (MKVIZ_SMALL=1) and find the shipped checkpoints through MKVIZ_ROOT (this
repository, unless MKVIZ_ROOT is already set: then that root, e.g. one holding stand-in checkpoints).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import screenshots_dir

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SCREENSHOTS = screenshots_dir()
NB04 = "04_what_each_chart_attends_to.ipynb"
NB06 = "06_how_many_charts.ipynb"

# JupyterLab user settings for the test: no autosave, no news toast, every cell rendered (no windowing,
# so the plotly widgets lay out at their real size), no "Select Kernel" dialog where avoidable.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

# The explorer's maps figure is the first plotly plot inside a widget output; its heat-map state is the
# z arrays of its heatmap traces plus the rendered heat-map images (plotly draws heatmaps as <image>s).
HEAT_STATE_JS = """() => {
  const gd = document.querySelector('.jp-OutputArea-output .widget-vbox .js-plotly-plot');
  if (!gd || !gd.data) return null;
  const z = gd.data.filter(t => t.type === 'heatmap' && t.visible !== false).map(t => t.z);
  const imgs = Array.from(gd.querySelectorAll('g.hm image')).map(i => i.getAttribute('href') || '');
  return JSON.stringify({z: z, images: imgs});
}"""

# The maps figure's visible heat maps and its height (the chart-count explorer re-grids on a new H).
PANELS_JS = """() => {
  const gd = document.querySelector('.jp-OutputArea-output .widget-vbox .js-plotly-plot');
  if (!gd || !gd.data) return null;
  return JSON.stringify({heatmaps: gd.data.filter(t => t.type === 'heatmap' && t.visible !== false).length,
                         height: gd.layout.height});
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read()
    return json.loads(body) if body else None


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(base url, token, root dir) of a JupyterLab on a temp copy of notebooks 04 and 06 (tests may add their own)."""
    jupyter = Path(sys.executable).parent / "jupyter"
    if not jupyter.exists():
        pytest.skip("browser lab test skipped: jupyter is not installed next to this python")
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "notebooks"
    root.mkdir()
    for name in (NB04, NB06):  # only the .ipynb: no jupytext pair here, so nothing gets synced back
        shutil.copy2(NOTEBOOKS / name, root / name)
    settings = tmp / "settings"
    for rel, value in LAB_SETTINGS.items():
        path = settings / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    token, port = secrets.token_hex(16), _free_port()
    env = {**os.environ, "MKVIZ_SMALL": "1", "MKVIZ_ROOT": os.environ.get("MKVIZ_ROOT") or str(ROOT),
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
           "OMP_NUM_THREADS": "1"}
    cmd = [str(jupyter), "lab", "--no-browser", "--allow-root", f"--ServerApp.token={token}", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
           f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
           "--LabApp.expose_app_in_browser=True"]
    log = open(tmp / "lab.log", "wb")
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{(tmp / 'lab.log').read_text()[-3000:]}")
            try:
                _api(base, token, "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not answer /api/status within 60 s:\n"
                                       f"{(tmp / 'lab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield base, token, root
    finally:
        try:
            for kernel in _api(base, token, "/api/kernels") or []:
                _api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
        except OSError:
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started (its own session)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


def _open_and_run_all(page, base: str, token: str, notebook: str) -> None:
    """Open a notebook in JupyterLab, accept a kernel dialog if one shows, and Run → Run All Cells."""
    page.goto(f"{base}/lab/tree/{notebook}?token={token}&reset", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)
    # JupyterLab starts the notebook's kernel (python3); older setups ask first
    try:
        page.wait_for_selector(".jp-Dialog .jp-mod-accept", timeout=3_000)
        page.click(".jp-Dialog .jp-mod-accept")
    except Exception:  # noqa: BLE001 - no dialog: the kernel starts on its own
        pass
    page.wait_for_function("() => { const k = document.querySelector('.jp-NotebookPanel .jp-Toolbar "
                           "[data-jp-item-name=\"kernelName\"]'); return k && !/No Kernel/.test(k.textContent); }",
                           timeout=60_000)
    page.click("li.lm-MenuBar-item:has-text('Run')")
    page.click("li.lm-Menu-item[data-command='runmenu:run-all']")


def _wait_for_widget(page, timeout_ms: int = 120_000):
    """The explorer's maps figure, rendered (heat-map images drawn), as a Playwright locator of the widget."""
    page.wait_for_function(HEAT_STATE_JS.replace("return JSON.stringify", "if (!imgs.length || !z.length) return null;"
                                                 " return JSON.stringify"), timeout=timeout_ms)
    return page.locator(".jp-OutputArea-output .widget-vbox").first


def _errors(page) -> list[str]:
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] pre, "
                        ".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").all_inner_texts()


def _wait_until_idle(page, timeout_ms: int = 120_000) -> None:
    """Every code cell has run: no '[*]' prompts left and the last code cell has an execution count."""
    page.wait_for_function("""() => {
      const prompts = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))
        .map(p => p.textContent.trim());
      return prompts.length && prompts.every(p => /^\\[\\d+\\]:$/.test(p));
    }""", timeout=timeout_ms)


@pytest.mark.slow
def test_explorers_render_and_react_in_jupyterlab(browser, lab):
    base, token, root = lab
    before = {name: (root / name).read_bytes() for name in (NB04, NB06)}
    repo_before = {name: (NOTEBOOKS / name).read_bytes() for name in (NB04, NB06)}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1800, "height": 2400})
    page = context.new_page()
    try:
        # ---- notebook 04: run, find the explorer, move the query-row slider, see the maps change
        _open_and_run_all(page, base, token, NB04)
        widget = _wait_for_widget(page)
        _wait_until_idle(page)
        assert not _errors(page), _errors(page)
        heat_before = page.evaluate(HEAT_STATE_JS)
        assert heat_before is not None
        state = json.loads(heat_before)
        assert len(state["z"]) == 9, "fused + 8 chart heat maps expected"  # VanillaK-8
        # the explorer's sliders: image, query row, query col (ipywidgets 8 noUiSlider handles)
        row = widget.locator(".widget-slider:has(.widget-label:text-is('query row')) .noUi-handle").first
        row.scroll_into_view_if_needed()
        widget.screenshot(path=str(SCREENSHOTS / "nb04_explorer.png"))
        row.focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(f"() => ({HEAT_STATE_JS})() !== {json.dumps(heat_before)}", timeout=30_000)
        after = json.loads(page.evaluate(HEAT_STATE_JS))
        assert after["z"] != state["z"], "the heat-map data did not change after moving the slider"
        assert after["images"] != state["images"], "the rendered heat-map images did not change"
        value = widget.locator(".widget-slider:has(.widget-label:text-is('query row')) .widget-readout").first
        assert value.inner_text().strip() == "4"  # row 3: where section 4 leaves it (under the pullover's centroid)

        for kernel in _api(base, token, "/api/kernels"):  # done with 04: free the CPU for 06
            _api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")

        # ---- notebook 06 (a fresh page load: only 06 is open): run, wait for the chart-count explorer
        _open_and_run_all(page, base, token, NB06)
        widget = _wait_for_widget(page)
        _wait_until_idle(page)
        assert not _errors(page), _errors(page)
        charts = widget.locator(".widget-slider:has(.widget-label:text-is('charts H'))")
        assert charts.count() == 1
        assert json.loads(page.evaluate(PANELS_JS)) == {"heatmaps": 9, "height": 420}  # H = 8: 2 rows of 5
        widget.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        widget.screenshot(path=str(SCREENSHOTS / "nb06_chart_count.png"))
        # fewer charts: the panels shown re-grid into one row (no blank rows for the 17 reserved panels)
        charts.locator(".noUi-handle").first.focus()
        page.keyboard.press("ArrowLeft")  # H = 8 -> 4
        want = json.dumps({"heatmaps": 5, "height": 260}, separators=(",", ":"))  # as JSON.stringify writes it
        page.wait_for_function(f"() => ({PANELS_JS})() === {json.dumps(want)}", timeout=30_000)
        assert charts.locator(".widget-readout").first.inner_text().strip() == "4"
        page.wait_for_timeout(500)
        widget.screenshot(path=str(SCREENSHOTS / "nb06_chart_count_h4.png"))
        # a click on chart 1's panel picks the query (Python gets plotly's click; no hidden panel's axes lie over it)
        box = page.evaluate("""() => {
          const gd = document.querySelector('.jp-OutputArea-output .widget-vbox .js-plotly-plot');
          const r = gd.querySelector('.nsewdrag[data-subplot="x2y2"]').getBoundingClientRect();
          return {x: r.x, y: r.y, w: r.width, h: r.height};
        }""")
        page.mouse.click(box["x"] + 0.1 * box["w"], box["y"] + 0.1 * box["h"])  # the top-left cell
        readout = lambda name: widget.locator(f".widget-slider:has(.widget-label:text-is('{name}')) "
                                              ".widget-readout").first.inner_text().strip()
        deadline = time.monotonic() + 30
        while (readout("query row"), readout("query col")) != ("0", "0") and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert (readout("query row"), readout("query col")) == ("0", "0")
    finally:
        context.close()
    for name in (NB04, NB06):
        assert (NOTEBOOKS / name).read_bytes() == repo_before[name], f"notebooks/{name} changed on disk"
        assert (root / name).read_bytes() == before[name], f"{name} was saved by JupyterLab (autosave is off)"


# A small notebook for the key-atlas test: one shipped Fashion-MNIST checkpoint (VanillaK, 8 charts) and the
# explorer on two test images, the last layer chosen and the query at the centre patch (3, 3). (Notebook 07
# shows the same explorer after sections that take minutes; this one is ready in seconds.)
ATLAS_NOTEBOOK = "key_atlas_click.ipynb"
ATLAS_CELLS = [
    "import torch\n"
    "import mkviz\n"
    "from mkviz.training.checkpoint import load_checkpoint, shipped_checkpoints_dir\n"
    "from mkviz.data import build_dataset\n"
    "torch.set_num_threads(1)\n"
    "model = load_checkpoint(shipped_checkpoints_dir() / 'fashion-mnist' / 'vanillak-8')[0]\n"
    "test = build_dataset('fashion-mnist', split='test', model=model)\n"
    "batch = test.batch([0, 1])",
    "ex = mkviz.ChartExplorer(model, batch.image, class_names=test.class_names, labels=batch.label,\n"
    "                         display_images=test.images_uint8([0, 1]), layer='blocks.3.attn', query=(3, 3))\n"
    "ex",
]

# The explorer's key atlas: the widget's plotly plot with a "current query" trace (`gd`, below). Returns the
# token ringed now, the number of points in its data, the number of markers drawn in the SVG and the pixel
# positions (viewport coordinates) of the patch points one may click (not cls, not the ringed token), the
# most isolated first. The trained model's queries sit in one tight cluster and the 8 charts' keys of a
# token nearly coincide, so no point is far from all others: the test asks plotly which point it would pick
# (its hover) before it clicks. Positions come from plotly's full data (typed arrays decoded) and axes.
ATLAS_GD_JS = """(() => Array.from(document.querySelectorAll('.jp-OutputArea-output .widget-vbox .js-plotly-plot'))
  .find(p => p._fullData && p._fullData.some(t => t.name === 'current query')))()"""
ATLAS_JS = """() => {
  const gd = %s;
  if (!gd || !gd._fullLayout || !gd.querySelector('.scatterlayer .point')) return null;
  const L = gd._fullLayout, box = gd.getBoundingClientRect();
  const px = (t, i) => ({x: box.x + L.xaxis._offset + L.xaxis.l2p(t.x[i]),
                         y: box.y + L.yaxis._offset + L.yaxis.l2p(t.y[i])});
  const pts = [];
  gd._fullData.forEach(t => { if (t.name !== 'current query') Array.from(t.x).forEach((_, i) =>
      pts.push({...px(t, i), token: Number(t.customdata[i])})); });
  const ring = Number(gd._fullData.find(t => t.name === 'current query').customdata[0]);
  const gap = p => Math.min(...pts.filter(o => o !== p).map(o => Math.hypot(o.x - p.x, o.y - p.y)));
  const candidates = pts.filter(p => p.token >= 1 && p.token !== ring).map(p => ({...p, gap: gap(p)}))
    .sort((a, b) => b.gap - a.gap).slice(0, 10);
  return JSON.stringify({ring: ring, points: pts.length, drawn: gd.querySelectorAll('.scatterlayer .point').length,
                         candidates: candidates});
}""" % ATLAS_GD_JS
# The token of the point plotly's hover picked under the mouse (what a click there selects), or null.
ATLAS_HOVER_JS = """() => {
  const gd = %s;
  const h = gd && gd._hoverdata;
  return h && h.length ? Number(h[0].customdata) : null;
}""" % ATLAS_GD_JS
SCROLL_TO_ATLAS_JS = "() => %s.scrollIntoView({block: 'center'})" % ATLAS_GD_JS


def _write_notebook(path: Path, cells: list[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, str(path))


@pytest.mark.slow
def test_key_atlas_renders_and_a_click_moves_the_query_in_jupyterlab(browser, lab):
    base, token, root = lab
    _write_notebook(root / ATLAS_NOTEBOOK, ATLAS_CELLS)
    context = browser.new_context(viewport={"width": 1800, "height": 2400})
    page = context.new_page()
    try:
        for kernel in _api(base, token, "/api/kernels") or []:  # one kernel at a time on a small machine
            _api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
        _open_and_run_all(page, base, token, ATLAS_NOTEBOOK)
        widget = _wait_for_widget(page, timeout_ms=180_000)
        _wait_until_idle(page, timeout_ms=180_000)
        assert not _errors(page), _errors(page)
        page.wait_for_function(f"() => ({ATLAS_JS})() !== null", timeout=60_000)
        widget.screenshot(path=str(SCREENSHOTS / "atlas_explorer.png"))  # (this scrolls: positions are read after)
        page.evaluate(SCROLL_TO_ATLAS_JS)  # the atlas is the widget's last figure: bring it into the viewport
        page.wait_for_timeout(500)
        atlas = json.loads(page.evaluate(ATLAS_JS))
        assert atlas["points"] == 50 * 9  # 50 queries and 8 charts x 50 keys: 49 patches + cls each
        assert atlas["drawn"] == 50 * 9 + 1  # every marker is in the SVG, and the ring
        assert atlas["ring"] == 1 + 3 * 7 + 3  # the explorer starts at query (3, 3)
        picked = None  # (x, y, token) of a patch point plotly's hover picks under the mouse
        for cand in atlas["candidates"]:
            page.mouse.move(5, 5)  # off the plot: plotly unhovers
            page.wait_for_function(f"() => ({ATLAS_HOVER_JS})() === null", timeout=10_000)
            page.mouse.move(cand["x"], cand["y"])
            page.wait_for_function(f"() => ({ATLAS_HOVER_JS})() !== null", timeout=10_000)
            hovered = page.evaluate(ATLAS_HOVER_JS)
            if hovered >= 1 and hovered != atlas["ring"]:
                picked = (cand["x"], cand["y"], hovered)
                break
        assert picked is not None, atlas["candidates"]
        x, y, clicked = picked
        page.evaluate(f"() => {{ window.atlasClicks = []; {ATLAS_GD_JS}.on('plotly_click', "
                      "d => window.atlasClicks.push(d.points.map(p => Number(p.customdata)))); }")
        page.mouse.click(x, y)
        page.wait_for_function("() => window.atlasClicks.length > 0", timeout=10_000)
        assert page.evaluate("() => window.atlasClicks") == [[clicked]]  # plotly's click: that one point
        row, col = divmod(clicked - 1, 7)
        readout = lambda name: widget.locator(f".widget-slider:has(.widget-label:text-is('{name}')) "
                                              ".widget-readout").first.inner_text().strip()
        deadline = time.monotonic() + 60
        while (readout("query row"), readout("query col")) != (str(row), str(col)) and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert (readout("query row"), readout("query col")) == (str(row), str(col))
        # the ring follows (the atlas redraws from Python), and the info line names the new query
        page.wait_for_function(f"() => JSON.parse(({ATLAS_JS})()).ring === {clicked}", timeout=60_000)
        assert f"query (row {row}, col {col})" in widget.locator(".widget-html").first.inner_text()
        page.locator(".js-plotly-plot", has=page.locator(".legendtext:text-is('current query')")).screenshot(
            path=str(SCREENSHOTS / "atlas_after_click.png"))
    finally:
        context.close()
