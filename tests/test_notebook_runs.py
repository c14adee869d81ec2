"""A notebook run as a script (where Jupyter is not installed) and the page made from its results table."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mkviz.course import notebook_runs

RESULTS = Path("docs/results/notebook03_gpu.json")
PAGE = Path("docs/notebook03_gpu.md")

SCRIPT = """\
# %%
import os
import plotly.graph_objects as go
go.Figure(go.Scatter(x=[0, 1], y=[1, 2])).show()
go.Figure(go.Bar(x=["a"], y=[3])).show()
open(os.environ["MKVIZ_TEST_MARK"], "w").write("ran")
"""


def test_run_writes_the_record_and_the_figures(tmp_path, monkeypatch):
    script = tmp_path / "01_demo.py"
    script.write_text(SCRIPT)
    mark = tmp_path / "mark.txt"
    monkeypatch.setenv("MKVIZ_TEST_MARK", str(mark))
    record = tmp_path / "run" / "run.json"
    out = notebook_runs.run_notebook_script(script, record)
    assert mark.read_text() == "ran"
    assert json.loads(record.read_text()) == out
    assert out["notebook"] == "01_demo" and out["seconds"] >= 0
    assert out["env"]["MKVIZ_TEST_MARK"] == str(mark)                   # the settings the run read
    figures = sorted(p.name for p in (tmp_path / "run" / "figures").iterdir())
    assert figures == ["figure_01.html", "figure_02.html"]               # one HTML file per fig.show()
    assert "Scatter" in (tmp_path / "run" / "figures" / "figure_01.html").read_text() or \
        '"type":"scatter"' in (tmp_path / "run" / "figures" / "figure_01.html").read_text()
    with pytest.raises(ValueError, match="exists: choose a new path"):
        notebook_runs.run_notebook_script(script, record)                # a saved record is never overwritten
    with pytest.raises(ValueError, match="path must be a notebook's py:percent file"):
        notebook_runs.run_notebook_script(tmp_path / "missing.ipynb", tmp_path / "other.json")


def _results(seconds: float = 125.4) -> dict:
    row = {"run": "baseline, continued", "params": 21_669_514, "steps": 844, "loss, first ¼": 0.71234,
           "loss, last ¼": 0.6012, "val acc": 0.91233, "test acc": 0.90871, "time (s)": 51.2}
    table = {"notebook": "03_fine_tuning", "scale": "GPU", "seed": 0, "start_test_acc": 0.9012,
             "settings": {"model": "vit_small_patch16_224", "image_size": 224, "dataset": "fashion-mnist",
                          "batch_size": 128, "epochs": 2, "lr": 3e-4, "amp": True},
             "machine": {"gpu": "NVIDIA H200", "gpu_driver": "580.1", "cuda": "13.0", "cpu_count": 16,
                         "python": "3.12.3", "torch": "2.11.0", "timm": "1.0.31"},
             "rows": [row]}
    run = {"notebook": "03_fine_tuning", "seconds": seconds, "date": "2026-12-04",
           "env": {"MKVIZ_DEVICE": "cuda"}}
    return {"name": "notebook03_gpu", "table": table, "run": run}


def test_page_numbers_come_from_the_results():
    page = notebook_runs.render_page(_results())
    assert "| baseline, continued | 21.67 M | 844 | 0.712 | 0.601 | 91.23 | 90.87 | 51 |" in page
    assert "**2 min 5 s**" in page and "90.12 %" in page
    assert "NVIDIA H200 (driver 580.1, CUDA 13.0)" in page
    assert "MKVIZ_DEVICE=cuda python -m mkviz.course.notebook_runs run notebooks/03_fine_tuning.py" in page
    assert "**45 s**" in notebook_runs.render_page(_results(seconds=44.6))


@pytest.mark.skipif(not RESULTS.is_file(), reason="no GPU run of notebook 03 committed")
def test_committed_page_matches_its_results():
    results = json.loads(RESULTS.read_text())
    results.setdefault("name", RESULTS.stem)
    assert PAGE.read_text() == notebook_runs.render_page(results), \
        f"run: python -m mkviz.course.notebook_runs page {RESULTS} {PAGE}"


@pytest.mark.skipif(not RESULTS.is_file(), reason="no GPU run of notebook 03 committed")
def test_gpu_run_all_time_is_the_committed_runs():
    """Notebook 03's time table and docs/instructors.md give the Run All time of the committed GPU run."""
    minutes = notebook_runs.format_duration(json.loads(RESULTS.read_text())["run"]["seconds"])
    assert f"**{minutes}**" in PAGE.read_text()
    notebook = Path("notebooks/03_fine_tuning.py").read_text()
    assert re.search(r"# \| Run All at GPU scale [^|]*\| ([^|(]+?) \(measured", notebook)[1] == minutes
    instructors = re.search(r"^\| 03 \|(?: [^|]+ \|){4} ([^|]+?) on an H200", Path("docs/instructors.md").read_text(), re.M)
    assert instructors and instructors[1] == minutes
