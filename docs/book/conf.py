"""Sphinx configuration of the course site (`make book`; mkviz/course/book.py stages the sources and runs this).

The pages are the staged README, docs pages and the notebooks, already executed (MyST-NB does not re-run
them). Everything a page needs is a local file: MathJax from sphinx-mathjax-offline, plotly.js from the
plotly package, the theme's own assets; nothing is loaded from a CDN.
"""
import shutil
from pathlib import Path

import plotly

project = "mkviz: the manifold key, a course"
author = "the mkviz authors"
copyright = "the mkviz authors, MIT licence"

extensions = ["myst_nb", "sphinx-mathjax-offline"]   # the latter copies MathJax 3 into _static/mathjax
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# notebooks: executed by mkviz.book before the build, rendered as they are
nb_execution_mode = "off"
nb_ipywidgets_js = {}          # no widget manager from a CDN (mkviz.book replaces widget views by their
                               # kernel-free explorers, or else by a note)
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
# links from the README and docs to source files (mkviz/core/key.py, configs/...) have no page on the site
suppress_warnings = ["myst.xref_missing", "myst.header", "misc.highlighting_failure"]


html_theme = "sphinx_book_theme"
html_title = "mkviz course"
html_theme_options = {"show_toc_level": 2, "use_download_button": False, "use_fullscreen_button": False,
                      "use_repository_button": False}
html_last_updated_fmt = None
html_copy_source = False


def copy_plotly(app, exc):
    """plotly.js of the installed plotly package into _static (what the figures' HTML expects)."""
    if exc is None and app.builder.format == "html":
        source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        shutil.copy2(source, Path(app.outdir) / "_static" / "plotly.min.js")


def add_plotly(app, pagename, templatename, context, doctree):
    """plotly.js (4.6 MB) only on the pages that draw a figure or hold a kernel-free explorer, in <head>: before
    their Plotly.newPlot calls."""
    body = context.get("body", "")
    if "plotly-graph-div" in body or 'class="mkviz-explorer"' in body:
        app.add_js_file("plotly.min.js")


def setup(app):
    # MathJax 3 from _static/mathjax (set here: sphinx-mathjax-offline sets its default after conf.py is read);
    # SVG output needs no web fonts, which browsers refuse to load for pages opened from file://
    app.config.mathjax_path = "mathjax/tex-svg.js"
    app.connect("html-page-context", add_plotly)
    app.connect("build-finished", copy_plotly)
