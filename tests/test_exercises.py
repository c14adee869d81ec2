"""The course's checked exercises: the checking helper (mkviz.exercises), the notebooks' exercise cells, and
their solutions (notebooks/solutions/), each executed in its notebook with every check required to pass.

The exercise notebooks themselves, stubs in place, are executed by nbmake (`make test`); here each notebook
runs once more with the solution cells put in place by `mkviz.grading.with_solutions`, at the small scale.
"""
from __future__ import annotations

import re
from pathlib import Path

import jupytext
import pytest
import torch

from mkviz import exercises
from mkviz.data import FASHION_MNIST_SYSTEM_DIR
from mkviz.course.exercises import EXERCISES, check
from mkviz.course.grading import exercise_cells, grade, solutions_for, with_solutions
from mkviz.core.detection import build_detector
from mkviz.core.key import ManifoldKey
from mkviz.explain.metrics import patch_coverage

from conftest import small_vit

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
HAVE_DATA = (FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file()
NEEDS_DATA = ("03_", "04_", "05_", "06_", "07_", "08_")   # the notebooks that read Fashion-MNIST


@pytest.fixture(autouse=True)
def fresh_results():
    exercises.reset()
    yield
    exercises.reset()


def _line(capsys) -> str:
    out = capsys.readouterr().out.strip()
    assert "\n" not in out, f"a check prints exactly one line, got {out!r}"
    return out


# --------------------------------------------------------------------------- the helper
def test_not_attempted_wrong_and_right_answers_each_print_one_line(capsys):
    def stub(C, H):
        return None  # the notebook's stub

    check("01.vanillak-params", stub, C=8, H=2)
    assert _line(capsys).startswith("· TODO 01.vanillak-params: not attempted yet")
    check("01.vanillak-params", lambda C, H: H * C * C, C=8, H=2)
    line = _line(capsys)
    assert line.startswith("✗ FAIL 01.vanillak-params: for C=8, H=2 your formula gives 128; the key has ")
    assert "Hint: count the base key" in line
    check("01.vanillak-params", lambda C, H: C * C + C + H * C + H * C * C + H * C, C=8, H=2)
    assert _line(capsys).startswith("✓ PASS 01.vanillak-params: correct")
    assert exercises.results() == {"01.vanillak-params": "pass"}   # the latest result counts


def test_a_tensor_answer_is_compared_by_shape_then_values(capsys):
    torch.manual_seed(0)
    delta = torch.randn(4, 8, 8)
    check("02.zero-sum", delta[:2], delta=delta)
    assert "has shape (2, 8, 8), expected (4, 8, 8)" in _line(capsys)
    check("02.zero-sum", delta, delta=delta)
    assert "Σ_c δ'_c is not zero" in _line(capsys)
    other = torch.zeros(4, 8, 8)
    other[0], other[1] = 0.01, -0.01                                   # zero-sum too, but not the closest one
    check("02.zero-sum", delta - delta.mean(0) + other, delta=delta)
    assert _line(capsys).startswith("✗ FAIL 02.zero-sum: your δ' has the right shape but differs by up to 1.00e-02")
    check("02.zero-sum", delta - delta.mean(0), delta=delta)
    assert _line(capsys).startswith("✓ PASS 02.zero-sum")


def test_a_broken_answer_fails_the_check_without_raising(capsys):
    check("01.vanillak-params", lambda C, H: C * undefined_name, C=8, H=2)  # noqa: F821 - the student's bug
    line = _line(capsys)
    assert line.startswith("✗ FAIL 01.vanillak-params: checking your answer raised NameError")
    check("04.read-the-map", (7, 0), fused=torch.arange(49.0).view(7, 7))
    assert "(7, 0) lies outside the 7x7 grid" in _line(capsys)
    check("04.read-the-map", (6, 6), fused=torch.arange(49.0).view(7, 7))
    assert _line(capsys).startswith("✓ PASS")
    assert exercises.results() == {"01.vanillak-params": "fail", "04.read-the-map": "pass"}


def test_an_unknown_exercise_is_one_clear_error():
    with pytest.raises(ValueError, match=r"`name` must be one of \[.*'01.vanillak-params'.*\], got 'nope'"):
        check("nope", 1)


def test_the_spatialk_check_accepts_the_one_matmul_form(capsys):
    torch.manual_seed(0)
    key = ManifoldKey(16, 16, variant="spatialk", num_charts=3)
    with torch.no_grad():
        key.scale.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 16)
    W, s = key.chart_maps.weight.view(3, 16, 16), key.scale
    answer = x @ (s[:, :, None] * W).mean(0).T + (s * key.chart_maps.bias.view(3, 16)).mean(0)
    check("01.spatialk-one-matmul", answer, key=key, x=x)
    assert _line(capsys).startswith("✓ PASS")


def test_the_anchor_count_check_counts_the_detectors_anchors(capsys):
    torch.manual_seed(0)
    detector = build_detector("vit", embed_dim=32, depth=1, num_heads=2).eval()
    images = torch.randn(2, 3, 64, 64)
    check("08.anchor-count", (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2) * 3, detector=detector, images=images)
    assert _line(capsys).startswith("✓ PASS 08.anchor-count")
    check("08.anchor-count", 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2, detector=detector, images=images)  # one per location
    assert "you say 340 anchors; the detector's anchor generator places 1020" in _line(capsys)
    check("08.anchor-count", 1020.0, detector=detector, images=images)
    assert "should be an int" in _line(capsys)


def test_the_chance_shares_check_compares_with_scene_attention_shares(capsys):
    """Three rectangles on a 32-px image (4x4 patches of 8 px), the last on top; the third covers no patch for
    half its pixels, so it has no query and does not count."""
    torch.manual_seed(0)
    masks = torch.zeros(3, 32, 32, dtype=torch.uint8)
    for k, (y0, x0, y1, x1) in enumerate([(0, 0, 16, 16), (8, 16, 32, 32), (28, 0, 32, 6)]):
        masks[:k, y0:y1, x0:x1] = 0
        masks[k, y0:y1, x0:x1] = 1
    given = dict(model=small_vit().eval(), image=torch.randn(3, 32, 32), masks=masks, layer="blocks.1.attn")
    articles, per_article = masks.bool(), []
    for k in range(3):
        others = articles[torch.arange(3) != k].any(0)
        coverage = torch.stack([patch_coverage(m, (4, 4)) for m in (articles[k], others, ~articles.any(0))])
        if (coverage[0] >= 0.5).any():
            per_article.append(coverage.mean(1))
    assert len(per_article) == 2
    solution = dict(zip(("same", "other", "background"), torch.stack(per_article).mean(0).tolist()))
    check("08.chance-shares", solution, **given)
    assert _line(capsys).startswith("✓ PASS 08.chance-shares")
    check("08.chance-shares", tuple(solution.values()), **given)   # the three shares in order are accepted too
    assert _line(capsys).startswith("✓ PASS 08.chance-shares")
    every = torch.stack([torch.stack([patch_coverage(m, (4, 4)) for m in (articles[k], articles[torch.arange(3) != k]
                                      .any(0), ~articles.any(0))]).mean(1) for k in range(3)]).mean(0)
    check("08.chance-shares", dict(zip(solution, every.tolist())), **given)   # the third article counted too
    assert _line(capsys).startswith("✗ FAIL 08.chance-shares: your 'same' share is ")
    check("08.chance-shares", {"same": 0.1}, **given)
    assert "should have the keys ['same', 'other', 'background']" in _line(capsys)


def test_grading_a_student_notebook_reports_checks_and_errors(tmp_path, capsys):
    """`mkviz grade` on a small notebook: one exercise right, one cell raising, one exercise never checked."""
    import nbformat

    from mkviz.apps.cli import main

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell(source) for source in (
        "from mkviz.exercises import check",
        "# ✎ exercise 06.spread-vs-noise\nanswer = False",
        'check("06.spread-vs-noise", answer, accuracies={1: 0.88, 2: 0.881})',
        "# ✎ exercise 06.params-vs-charts\n1 / 0",
        'check("06.params-vs-charts", vanillak_model_params, models={})')]
    path = tmp_path / "06_student.ipynb"
    nbformat.write(nb, path)
    assert main(["grade", str(path)]) == 1
    out = capsys.readouterr().out
    assert "  pass           06.spread-vs-noise" in out and "  not attempted  06.params-vs-charts" in out
    assert "error          cell 3: ZeroDivisionError: division by zero" in out
    assert "06_student.ipynb: 1/2 exercises pass (2 cells raised an error)" in out
    assert main(["grade", str(tmp_path / "nope.txt")]) == 2
    assert "mkviz grade: error: `notebooks` must be existing .ipynb files" in capsys.readouterr().err


def test_solutions_must_match_the_notebooks_exercises(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("# ✎ exercise 01.vanillak-params\nanswer = None  # your code")]
    (tmp_path / "solutions.py").write_text("# %%\n# ✎ exercise 01.spatialk-one-matmul\nanswer = 1\n")
    with pytest.raises(ValueError, match=r"solutions for \['01.spatialk-one-matmul'\], but the notebook has "
                                         r"exercises \['01.vanillak-params'\]"):
        with_solutions(nb, tmp_path / "solutions.py")


# --------------------------------------------------------------------------- the notebooks and their solutions
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_every_notebook_has_checked_exercises_and_solutions(notebook: Path):
    """At least two exercises per notebook, each known to mkviz.exercises, a stub holding None, followed by a
    check cell for it; notebooks/solutions/<notebook>.py solves exactly these."""
    nb = jupytext.read(notebook)
    cells = exercise_cells(nb)
    assert len(cells) >= 2, f"{notebook.name} has {len(cells)} exercises"
    for name, i in cells.items():
        assert name in EXERCISES and name.startswith(notebook.name[:2] + "."), name
        assert "None  # your code" in nb.cells[i].source, f"{name}: the stub must hold `None  # your code`"
        following = nb.cells[i + 1]
        assert following.cell_type == "code" and re.search(rf'^check\("{re.escape(name)}", ', following.source, re.M), \
            f"{name}: the cell after the exercise must be its check"
    solved = with_solutions(nb, solutions_for(notebook))
    for name, i in exercise_cells(solved).items():
        assert "# your code" not in solved.cells[i].source, f"{name}: the solution still holds the stub"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem[:2])
def test_every_solution_passes_its_check_in_the_notebook(notebook: Path, monkeypatch):
    if notebook.name.startswith(NEEDS_DATA) and not HAVE_DATA:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; `make install` does it "
                    "as root)")
    monkeypatch.setenv("MKVIZ_SMALL", "1")
    monkeypatch.setenv("MKVIZ_ROOT", str(ROOT))
    report = grade(notebook, solutions=True, timeout=600)
    assert report.statuses and set(report.statuses.values()) == {"pass"} and not report.errors, report
