"""Accuracy against the number of charts: a study's seeds (mean and spread) beside single-seed checkpoints.

    seeds_vs_charts(summary, checkpoints=None, checkpoint_baseline=None)

`summary` is `mkviz.studies.chart_counts.load_chart_count_summary()`: {"baseline": {seed: acc},
"charts": {count: {seed: acc}}, "what": str}. The two panels have their own y axes because they are two
regimes (the study's short runs on a subset, the checkpoints' full recipe): only comparisons within a
panel mean anything, and only the left one has seeds to compare with.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from .figure_base import plotly_go

__all__ = ["seeds_vs_charts"]

_SEED, _MEAN, _BASE = "#9ecae1", "#1f77b4", "#7f7f7f"


def _mean_sd(values: Mapping[str, float]) -> tuple[float, float]:
    v = np.asarray(list(values.values()), dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _study_traces(fig: Any, summary: Mapping[str, Any]) -> None:
    """Left panel: every seed (dots), mean ± 1 s.d. per chart count, the baseline's mean ± 1 s.d. as a band."""
    go = plotly_go()
    counts = sorted(summary["charts"], key=int)
    xs = [int(c) for c in counts]
    seeds_x = [int(c) for c in counts for _ in summary["charts"][c]]
    seeds_y = [a for c in counts for a in summary["charts"][c].values()]
    fig.add_trace(go.Scatter(x=seeds_x, y=seeds_y, mode="markers", name="one seed",
                             marker=dict(color=_SEED, size=6)), row=1, col=1)
    stats = [_mean_sd(summary["charts"][c]) for c in counts]
    fig.add_trace(go.Scatter(x=xs, y=[m for m, _ in stats], mode="lines+markers", name="mean ± 1 s.d.",
                             error_y=dict(type="data", array=[s for _, s in stats]),
                             line=dict(color=_MEAN)), row=1, col=1)
    mean, sd = _mean_sd(summary["baseline"])
    band = [xs[0], xs[-1], xs[-1], xs[0]]
    fig.add_trace(go.Scatter(x=band, y=[mean - sd, mean - sd, mean + sd, mean + sd], fill="toself",
                             mode="none", fillcolor="rgba(127,127,127,0.2)", name="baseline ± 1 s.d."), row=1, col=1)
    fig.add_trace(go.Scatter(x=[xs[0], xs[-1]], y=[mean, mean], mode="lines", name="baseline mean",
                             line=dict(dash="dash", color=_BASE)), row=1, col=1)


def _checkpoint_traces(fig: Any, checkpoints: Mapping[int, float], baseline: Optional[float]) -> None:
    """Right panel: one marker per shipped checkpoint (one seed each), the baseline checkpoint dashed."""
    go = plotly_go()
    xs = sorted(int(c) for c in checkpoints)
    fig.add_trace(go.Scatter(x=xs, y=[float(checkpoints[c]) for c in xs], mode="markers",
                             name="shipped checkpoint (one seed)",
                             marker=dict(symbol="diamond", size=9, color="#d62728")), row=1, col=2)
    if baseline is not None:
        fig.add_trace(go.Scatter(x=[xs[0], xs[-1]], y=[float(baseline)] * 2, mode="lines",
                                 name="baseline checkpoint (one seed)", line=dict(dash="dot", color=_BASE)),
                      row=1, col=2)


def seeds_vs_charts(summary: Mapping[str, Any], checkpoints: Optional[Mapping[int, float]] = None,
                    checkpoint_baseline: Optional[float] = None, height: int = 360) -> Any:
    """VanillaK accuracy against chart count (log2 x axes): the study's seeds left, the checkpoints right.

    Traces (left): "one seed", "mean ± 1 s.d.", "baseline ± 1 s.d.", "baseline mean"; (right, when
    `checkpoints` {count: acc} is given): "shipped checkpoint (one seed)", "baseline checkpoint (one seed)".
    """
    from plotly.subplots import make_subplots
    if not summary.get("charts"):
        raise ValueError("summary: needs 'charts' {count: {seed: accuracy}} with at least one chart count")
    cols = 2 if checkpoints else 1
    titles = [f"study: {summary.get('what', 'one run per seed')}"]
    if checkpoints:
        titles.append("shipped checkpoints: full recipe, one seed each")
    fig = make_subplots(1, cols, subplot_titles=titles, horizontal_spacing=0.12)
    _study_traces(fig, summary)
    if checkpoints:
        _checkpoint_traces(fig, checkpoints, checkpoint_baseline)
    fig.update_xaxes(type="log", dtick=np.log10(2), title_text="number of charts (VanillaK)")
    fig.update_yaxes(title_text="test accuracy", col=1)
    fig.update_annotations(font_size=11)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0.0))
    return fig
