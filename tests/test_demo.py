"""`mkviz demo` from the shipped checkpoints: the summary, the report, and the report in a real browser."""
from __future__ import annotations

import re
from html import escape
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import screenshots_dir

from mkviz.training.checkpoint import shipped_checkpoints_dir
from mkviz.data import FASHION_MNIST_SYSTEM_DIR
from mkviz.apps.demo import FUSED_MAP_NOTES
from mkviz.apps.shipped import MAIN_MODELS, NAMES

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = screenshots_dir()


def _mkviz(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkviz.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if not (FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; `make install` does it)")
    missing = [f"{d}/{n}" for d, names in (("fashion-mnist", NAMES), ("shapes", MAIN_MODELS)) for n in names
               if not (shipped_checkpoints_dir() / d / n / "model.safetensors").is_file()]
    assert not missing, f"shipped checkpoints missing: {missing}"
    out = tmp_path_factory.mktemp("demo")
    result = _mkviz("demo", "--out", str(out), "--no-train", "--test-images", "2000")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


@pytest.mark.slow
def test_demo_prints_summary_and_writes_report(demo_run):
    out, stdout = demo_run
    report = out / "report.html"
    assert f"report: {report}" in stdout
    fashion, shapes = stdout.split("\nshapes:")
    accuracies = {}
    for name in NAMES:
        match = re.search(rf"^{re.escape(name)}\s+([0-9.]+)\s", fashion, flags=re.M)
        assert match, f"no Fashion-MNIST summary line for {name}:\n{stdout}"
        accuracies[name] = float(match.group(1))
    # the shipped models learned Fashion-MNIST (chance is 0.10; data/README.md gives their full-test accuracy)
    assert min(accuracies.values()) > 0.75, accuracies
    for name in MAIN_MODELS:  # and the shapes models the relation task (chance 0.25)
        match = re.search(rf"^{re.escape(name)}\s+([0-9.]+)\s+([0-9.]+)$", shapes, flags=re.M)
        assert match and float(match.group(1)) > 0.9, shapes
    html = report.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html), "the report must open offline (plotly.js inlined)"
    assert "Plotly.newPlot" in html
    # accuracy vs charts, 3 images x 4 variants, 4 similarities, entropy, distance, curves, one evidence chart
    assert html.count('class="plotly-graph-div"') == 1 + 12 + 4 + 2 + 1 + 1
    for variant in ("vanillak", "simplek", "spatialk", "kua"):  # each variant's maps carry its own caption
        assert html.count(escape(FUSED_MAP_NOTES[variant])) == 3, variant
    assert "Ankle boot" in html or "T-shirt/top" in html


@pytest.mark.slow
def test_demo_report_embeds_a_chart_explorer_of_what_record_attention_records(demo_run):
    """One kernel-free chart explorer (VanillaK-8, the first test image of each of the first classes): its
    embedded rows are record_attention's maps (float16), its plotly.js the report's own copy."""
    import torch

    from mkviz.apps.demo import EXPLORER_ID, EXPLORER_MODEL
    from mkviz.explain.record import record_attention
    from mkviz.training.build import load_checkpoint
    from mkviz.training.config import TrainConfig
    from mkviz.training.inputs import build_datasets
    from mkviz.viz.explorer_html import embedded_data

    html = (demo_run[0] / "report.html").read_text()
    assert html.count('class="mkviz-explorer"') == 1 and html.count("Plotly.register") <= 1
    data = embedded_data(html, EXPLORER_ID)
    model, config = load_checkpoint(shipped_checkpoints_dir() / "fashion-mnist" / EXPLORER_MODEL)
    test = build_datasets(TrainConfig(**config["train"]).resolved(), model, splits=("test",))["test"]
    labels = test.labels.tolist()
    indices = [labels.index(y) for y in data["labels"]]
    assert data["labels"] == sorted(set(data["labels"])) and len(indices) == 3
    with torch.no_grad(), record_attention(model.eval()) as rec:
        model(test.batch(indices).image)
    p = data["prefix"]
    assert data["layers"] == [n for n in rec.layers if n in rec.chart_attention] and data["models"][0]["charts"] == 8
    for layer in data["layers"]:
        full = torch.cat([rec.attention[layer][:, None], rec.chart_attention[layer]], 1)  # (B, 1 + H, heads, N, N)
        want = full[..., p:, p:].permute(0, 2, 3, 1, 4).numpy()  # (B, heads, G, 1 + H, G)
        rows = data["models"][0]["layers"][layer]["rows"].astype("float32")
        assert rows.shape == want.shape
        assert abs(rows - want).max() < 1e-3  # float16 rows


@pytest.mark.slow
def test_demo_report_renders_in_chromium(demo_run, browser):
    out, _ = demo_run
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto((out / "report.html").as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0", timeout=60_000)
    divs = page.locator(".plotly-graph-div")
    n = divs.count()
    rendered = page.evaluate("""() => Array.from(document.querySelectorAll('.plotly-graph-div')).filter(
        d => d.querySelector('.main-svg') && d.getBoundingClientRect().height > 50).length""")
    assert n == 1 + 12 + 4 + 2 + 1 + 1 and rendered == n, f"{rendered} of {n} plots rendered"  # as counted above
    # heat maps carry real data (non-empty traces)
    traces = page.evaluate("""() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(
        d => (d.data || []).length)""")
    assert min(traces) >= 1
    assert not errors, errors
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "demo_report.png"), full_page=False)
    page.close()


@pytest.mark.slow
def test_demo_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _mkviz("demo", "--out", str(tmp_path / "o"), "--checkpoints", str(empty), "--no-train")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "checkpoint" in result.stderr and "not found" in result.stderr
    result = _mkviz("demo", "--pretrained", "vit_tiny_patch16_224", "--data-root", str(tmp_path / "nope"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--data-root" in result.stderr and "does not exist" in result.stderr
    result = _mkviz("demo", "--images", "0")
    assert result.returncode == 2 and "--images must be >= 1" in result.stderr


def test_shipped_checkpoints_dir_is_found_from_anywhere(tmp_path, monkeypatch):
    """The notebooks' way to the shipped checkpoints: MKVIZ_ROOT, else upwards from the working directory,
    else beside the package."""
    monkeypatch.delenv("MKVIZ_ROOT", raising=False)
    monkeypatch.chdir(ROOT / "notebooks")
    assert shipped_checkpoints_dir() == ROOT / "data" / "checkpoints"
    monkeypatch.chdir(tmp_path)  # no repository upwards: the package's own clone
    assert shipped_checkpoints_dir() == ROOT / "data" / "checkpoints"  # beside the package
    monkeypatch.setenv("MKVIZ_ROOT", str(tmp_path))
    assert shipped_checkpoints_dir() == tmp_path.resolve() / "data" / "checkpoints"
