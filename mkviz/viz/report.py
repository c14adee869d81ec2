"""A self-contained HTML report: sections of prose, tables and plotly figures, plotly.js inlined once.

The file opens offline in any browser (no CDN, no server). Used by `mkviz demo`.

    report = Report("mkviz demo")
    report.add_text("Accuracy", "<p>...</p>")
    report.add_table("Models", ["model", "acc"], [["baseline", "0.91"]])
    report.add_figure("Attention", fig)
    report.write("outputs/demo/report.html")
"""
from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from ..training.checkpoint import atomic_write_bytes

__all__ = ["Report"]

_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table.data { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
table.data th, table.data td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
table.data th { background: #f3f3f3; } table.data td:first-child, table.data th:first-child { text-align: left; }
.note { color: #555; font-size: .9rem; } .figure { margin: .6rem 0 1.2rem 0; }
"""


@dataclass
class Report:
    """An ordered list of sections rendered to one HTML file."""

    title: str
    subtitle: str = ""
    sections: list[tuple[str, str]] = field(default_factory=list)  # (heading or "", html body)
    _num_figures: int = 0

    def add_text(self, heading: str, body_html: str) -> None:
        """A section of trusted HTML (written by mkviz itself)."""
        self.sections.append((heading, body_html))

    def add_table(self, heading: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> None:
        """A plain HTML table; cells are escaped."""
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
        self.sections.append((heading, f'<table class="data"><tr>{head}</tr>{body}</table>{note_html}'))

    def add_figure(self, heading: str, figure, note: str = "") -> None:
        """A plotly figure (plotly.js is inlined once for the whole report)."""
        self._num_figures += 1
        div = figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"mkviz-fig-{self._num_figures}",
                             config={"displaylogo": False, "responsive": True})
        note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
        self.sections.append((heading, f'<div class="figure">{div}</div>{note_html}'))

    def render(self) -> str:
        """The whole document as a string."""
        from plotly.offline import get_plotlyjs

        parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
                 f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style>",
                 f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        if self.subtitle:
            parts.append(f'<p class="note">{html.escape(self.subtitle)}</p>')
        for heading, body in self.sections:
            if heading:
                parts.append(f"<h2>{html.escape(heading)}</h2>")
            parts.append(body)
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename): a crash never leaves half a report; the file gets the usual
        permissions (0666 less the umask, like any file the user writes) to be shared. Returns the path."""

        path = Path(path)
        atomic_write_bytes(path, self.render().encode("utf-8"))
        return path
