"""The course notebooks are paired jupytext notebooks, committed in sync and without outputs.

Executing them is nbmake's job (`MKVIZ_SMALL=1 pytest --nbmake notebooks/`); these tests check the
files themselves, so a `.py` edited without `jupytext --sync notebooks/*.py` fails here.
"""
from __future__ import annotations

import re
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOURCES = sorted(NOTEBOOKS.glob("*.py"))
IPYNBS = sorted(NOTEBOOKS.glob("*.ipynb"))


def _cells(notebook) -> list[tuple[str, str]]:
    """(cell type, source without trailing whitespace) of every cell: what both files must agree on."""
    return [(cell.cell_type, cell.source.rstrip()) for cell in notebook.cells]


def test_there_are_notebooks_and_a_jupytext_config():
    assert SOURCES, "no notebooks/*.py found"
    config = (ROOT / "jupytext.toml").read_text()
    assert re.search(r'^formats\s*=\s*"ipynb,py:percent"', config, re.M), config


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_py_source_has_a_paired_ipynb_in_sync(source: Path):
    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} is missing: run `jupytext --sync notebooks/{source.name}`"
    text = jupytext.read(source)
    assert text.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent", \
        f"{source.name}: header must pair it as 'ipynb,py:percent'"
    assert _cells(text) == _cells(jupytext.read(paired)), \
        f"{source.name} and {paired.name} are out of sync: run `jupytext --sync notebooks/{source.name}`"


@pytest.mark.parametrize("notebook", IPYNBS, ids=lambda p: p.name)
def test_every_ipynb_has_a_py_source(notebook: Path):
    assert notebook.with_suffix(".py").exists(), f"{notebook.name} has no py:percent source next to it"


@pytest.mark.parametrize("notebook", IPYNBS, ids=lambda p: p.name)
def test_committed_ipynb_has_no_outputs(notebook: Path):
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{notebook.name} cell {i} has outputs: strip them (jupytext --sync rewrites it)"
            assert cell.execution_count is None, f"{notebook.name} cell {i} has an execution count"


@pytest.mark.parametrize("notebook", IPYNBS, ids=lambda p: p.name)
def test_notebook_runs_on_the_default_kernel_offline(notebook: Path):
    nb = nbformat.read(notebook, as_version=4)
    # nbmake starts the notebook's kernelspec; "python3" resolves to the interpreter running pytest
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", notebook.name
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert "MKVIZ_SMALL" in code, f"{notebook.name} must honour MKVIZ_SMALL (the test scale)"
    assert not re.search(r"pretrained\s*=\s*True|download\s*=\s*True", code), \
        f"{notebook.name}: notebooks must not download weights or data"


# the course site's code blocks (sphinx-book-theme, docs/book/conf.py) show about 100 characters before they
# cut a line off at the right edge
SITE_CODE_WIDTH = 100


@pytest.mark.parametrize("source", SOURCES + sorted((NOTEBOOKS / "solutions").glob("*.py")),
                         ids=lambda p: p.name)
def test_code_lines_fit_the_site_page_width(source: Path):
    long = [f"cell {i}: {line}" for i, cell in enumerate(jupytext.read(source).cells)
            if cell.cell_type == "code" for line in cell.source.splitlines() if len(line) > SITE_CODE_WIDTH]
    assert not long, f"{source.name}: code lines over {SITE_CODE_WIDTH} characters:\n" + "\n".join(long)


def test_instructors_times_are_the_notebooks_own():
    """docs/instructors.md's Run All columns repeat what each notebook's time table says it measured."""
    table = (ROOT / "docs/instructors.md").read_text()
    for path in sorted(NOTEBOOKS.glob("0*.py")):
        text = path.read_text()
        default = re.search(r"# \| Run All at the default[^|]*\| ([^|(]+?) \(measured", text)[1].strip()
        small = re.search(r"# \| Run All, `MKVIZ_SMALL=1` \| ([^|(]+?) \(measured", text)[1].strip()
        row = re.search(rf"^\| {path.name[:2]} \| [^|]+ \| [^|]+ \| ([^|]+) \| ([^|]+) \|", table, re.M)
        assert row and (row[1].strip(), row[2].strip()) == (default, small), (path.name, default, small)
