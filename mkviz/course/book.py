"""`make book`: the course as a static site that works offline (Sphinx + MyST-NB, docs/book/conf.py).

    python -m mkviz.book [--out build/book] [--full] [--notebooks 01 04]

1. **Stage** the sources in `<out>/src`: docs/book/index.md (the landing page), README.md, docs/*.md with the
   images they show, data/README.md, and every notebooks/0*.ipynb **executed** in a fresh kernel at the small
   scale (MKVIZ_SMALL=1; `--full` for the default scale). After execution each plotly figure
   (`application/vnd.plotly.v1+json`) is given as `text/html` that draws it with the site's local
   plotly.js (plotly's own HTML renderers load MathJax from a CDN). The kernel runs with MKVIZ_STATIC_HTML=1,
   so each explorer's output also carries its kernel-free HTML (`ChartExplorer.to_html`: the maps of every
   image, layer, head and query embedded, redrawn in the page on a click or a slider); the site shows that
   in place of the live widget, and a short note where an output has no such HTML (a Swin explorer, any
   other widget).
2. **Build** `<out>/html` with sphinx-build (MyST-NB reads the executed notebooks, nothing is re-run). MathJax
   (sphinx-mathjax-offline) and plotly.js are copied into `_static/`: no page loads anything from the network.

Open `<out>/html/index.html` from disk or any static server. Prints each notebook's execution time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["WIDGET_NOTE", "add_plotly_html", "build", "execute_notebook", "main", "stage"]

ROOT = Path(__file__).resolve().parents[2]  # the repository: mkviz/course/book.py -> mkviz -> the root
PLOTLY_JSON, WIDGET_VIEW = "application/vnd.plotly.v1+json", "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ('<p class="mkviz-widget-note"><em>Interactive explorer: it needs a running kernel. Open this '
               'notebook in JupyterLab (<code>make lab</code>) to use its sliders; the figures below draw the same '
               'maps statically.</em></p>')
EXPLORER_DIV = 'class="mkviz-explorer"'   # what a kernel-free explorer's HTML holds (docs/book/conf.py)
DOC_SUFFIXES = {".md", ".svg", ".png", ".jpg"}


def add_plotly_html(nb: Any) -> int:
    """Give every plotly output a text/html rendering instead of its JSON (a div and a Plotly.newPlot call that
    uses the page's plotly.js, no CDN) and replace every widget view by its kernel-free explorer (the output's
    text/html holding a `class="mkviz-explorer"` div) or else by WIDGET_NOTE; the number of figures."""
    import plotly.io as pio

    figures = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if PLOTLY_JSON in data:   # the HTML replaces the JSON (which the site's renderer cannot draw)
                data["text/html"] = pio.to_html(data.pop(PLOTLY_JSON), include_plotlyjs=False,
                                                include_mathjax=False, full_html=False, default_width="100%",
                                                validate=False)
                figures += 1
            if WIDGET_VIEW in data:
                page = data.get("text/html", "")
                page = "".join(page) if isinstance(page, list) else page
                out["data"] = {"text/html": page if EXPLORER_DIV in page else WIDGET_NOTE}
    nb.metadata.pop("widgets", None)   # no widget state: the page loads no widget manager
    return figures


def execute_notebook(source: Path, target: Path, small: bool = True, timeout: int = 900) -> float:
    """Run `source` top to bottom in a fresh python3 kernel (its folder as working directory), prepare its
    outputs for the site (add_plotly_html) and write it to `target`; the seconds execution took."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(source, as_version=4)
    env = {"MKVIZ_SMALL": "1" if small else "0", "MKVIZ_ROOT": os.environ.get("MKVIZ_ROOT") or str(ROOT),
           "MKVIZ_STATIC_HTML": "1"}   # the explorers' outputs also carry their kernel-free HTML
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)   # the kernel inherits this process's environment
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(source.parent.resolve())}}).execute()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    seconds = time.perf_counter() - start
    add_plotly_html(nb)
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return seconds


def stage(src: Path, notebooks: Sequence[Path], small: bool = True) -> dict[str, float]:
    """Copy the site's pages into `src` (a fresh folder) and execute the notebooks into `src/notebooks`;
    {notebook name: seconds}."""
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    shutil.copy2(ROOT / "docs" / "book" / "index.md", src / "index.md")
    shutil.copy2(ROOT / "README.md", src / "README.md")
    (src / "data").mkdir()
    shutil.copy2(ROOT / "data" / "README.md", src / "data" / "README.md")
    for path in sorted((ROOT / "docs").rglob("*")):
        rel = path.relative_to(ROOT)
        if path.is_file() and path.suffix in DOC_SUFFIXES and rel.parts[1] not in ("book", "results"):
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / rel)
    times = {}
    for nb in notebooks:
        times[nb.name] = execute_notebook(nb, src / "notebooks" / nb.name, small=small)
        print(f"executed {nb.name} in {times[nb.name]:.1f} s", flush=True)
    return times


def build(out: Path, notebooks: Optional[Sequence[Path]] = None, small: bool = True) -> Path:
    """Stage and build the site into `out/html`; returns the path of its index.html."""
    from sphinx.cmd.build import build_main

    notebooks = sorted((ROOT / "notebooks").glob("0*.ipynb")) if notebooks is None else notebooks
    stage(out / "src", notebooks, small=small)
    start = time.perf_counter()
    rc = build_main(["-b", "html", "-q", "-c", str(ROOT / "docs" / "book"), str(out / "src"), str(out / "html")])
    if rc:
        raise RuntimeError(f"sphinx-build failed with exit status {rc}")
    print(f"built {out / 'html'} in {time.perf_counter() - start:.1f} s", flush=True)
    return out / "html" / "index.html"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mkviz.book", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "book", help="output folder (default: %(default)s)")
    parser.add_argument("--full", action="store_true", help="execute the notebooks at the default scale, not small")
    parser.add_argument("--notebooks", nargs="+", metavar="NN",
                        help="only the notebooks whose names start with these numbers (default: all)")
    args = parser.parse_args(argv)
    notebooks = sorted((ROOT / "notebooks").glob("0*.ipynb"))
    if args.notebooks:
        notebooks = [p for p in notebooks if p.name[:2] in args.notebooks]
        if not notebooks:
            parser.error(f"--notebooks: no notebook starts with {args.notebooks}")
    start = time.perf_counter()
    index = build(args.out, notebooks, small=not args.full)
    print(f"the course site: {index} ({time.perf_counter() - start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
