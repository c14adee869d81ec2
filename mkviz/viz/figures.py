"""Plain plotly figures (no widgets) for attention, charts, similarity, evidence, training and cost.

    attention_overlay(image, heat, title=..., query_box=(row, col, patch))   image + semi-transparent map
    chart_maps_figure(image, fused_map, chart_maps, query=(row, col))       fused map beside the H chart maps
    show_chart_panels(fig, num_shown)                                       re-grid a chart_maps_figure in place
    similarity_heatmap(matrix, kind="cosine" | "js" | "cka")                chart-by-chart matrix
    evidence_bars(values, fused=None, chance=None)                          share of attention on evidence
    entropy_bars(values, fused=None)                                        per-chart attention entropy
    training_curves(records)                                                loss / accuracy per epoch
    accuracy_vs_charts(accuracies, baseline=None)                           accuracy against chart count
    cost_table_figure(rows)                                                 a go.Table of cost rows
    key_atlas(rec, layer, head=None, image=0)                               queries and every chart's keys in 2-D

Every builder returns a fresh `plotly.graph_objects.Figure`, deterministic given its inputs (no random
colours, no timestamps), with titles, axis labels and explicit colour scales. Images are drawn with
`go.Image` or as layout images (pixel (0, 0) at the top left: the y axis runs downwards, like an image)
and maps with `go.Heatmap` stretched over the image: a (h, w) map over an (H_img, W_img) image gets cells of
H_img/h × W_img/w pixels whose centres sit on the pixel-centre coordinates of the cell, so a patch-grid
map (ViT (gh, gw), Swin stage grid) lines up with its patches without being resampled, and the heat-map
`z` is exactly the map that was passed in.

`mkviz.viz.explorers` builds its interactive explorers on these figures (it updates their trace data in place):
traces carry stable `name`s ("image", "fused", "chart 3", "query", ...), listed in each docstring.
Accepted array types: torch tensors, numpy arrays, nested lists.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .figure_base import (as_map, heat_cell, heat_geometry, image_axes, image_source, image_trace, panel_image,
                          plotly_go, query_box_path, to_numpy, to_uint8_image)
from .key_atlas import ATLAS_CURRENT_TRACE, ATLAS_QUERY_TRACE, key_atlas

__all__ = [
    "HEAT_COLORSCALE", "attention_overlay", "chart_maps_figure", "chart_grid_shape", "show_chart_panels",
    "similarity_heatmap", "evidence_bars", "entropy_bars", "training_curves", "accuracy_vs_charts",
    "cost_table_figure", "chart_stat_bars",
]


HEAT_COLORSCALE = "Inferno"

_PANEL_SPACING, _PANEL_ROW_SPACING = 0.02, 0.08  # chart_maps_figure: between columns, rows (paper fractions)

_HIDDEN_DOMAIN = 1e-3  # a hidden panel's axes: a sliver [0, 1e-3] in the figure's bottom-left corner

_SIM_STYLE = {  # kind -> (colour scale, zmin, zmax, zmid, what the value is)
    "cosine": ("RdBu_r", -1.0, 1.0, 0.0, "cosine similarity of chart keys"),
    "cka": ("Viridis", 0.0, 1.0, None, "linear CKA of chart keys"),
    "js": ("Magma_r", 0.0, 1.0, None, "Jensen-Shannon divergence of chart attention (bits)"),
}

_REGULARISER = "ua_loss"  # a training-history key that is a regulariser, not a data loss

_RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf")

# --------------------------------------------------------------------------- attention pictures
def attention_overlay(image: Any, heat: Any, title: str = "attention", query_box: Optional[Tuple] = None, *,
                      colorscale: str = HEAT_COLORSCALE, opacity: float = 0.6, zmin: Optional[float] = None,
                      zmax: Optional[float] = None, colorbar_title: str = "attention",
                      height: int = 420) -> "go.Figure":
    """One image with a semi-transparent heat map on top and (optionally) the query patch outlined.

    image: (3, H, W) or (H, W, 3) (uint8, or float; see `to_uint8_image`).
    heat: (h, w) map; a map at image resolution is drawn pixel for pixel, a coarser one (a patch grid)
        as cells of H/h × W/w pixels, aligned with the image. z of the "heat" trace is exactly `heat`.
    query_box: (row, col, patch) outlines cell (row, col) of a grid with `patch`-pixel cells (an int or
        (ph, pw)); (row, col) alone uses the heat map's own cells.
    Traces: "image", "heat", and "query" when query_box is given.
    """
    go = plotly_go()
    img = to_uint8_image(image)
    z = as_map(heat, "heat")
    hw = img.shape[:2]
    fig = go.Figure()
    fig.add_trace(image_trace(img))
    fig.add_trace(go.Heatmap(z=z, name="heat", colorscale=colorscale, opacity=opacity, zmin=zmin, zmax=zmax,
                             colorbar=dict(title=dict(text=colorbar_title)), **heat_geometry(hw, z.shape),
                             hovertemplate="x %{x:.0f}, y %{y:.0f}<br>%{z:.4f}<extra></extra>"))
    if query_box is not None:
        if len(query_box) == 3:
            row, col, patch = query_box
            cell = (float(patch), float(patch)) if np.isscalar(patch) else (float(patch[0]), float(patch[1]))
        else:
            (row, col), cell = query_box, heat_cell(hw, z.shape)
        xs, ys = query_box_path(int(row), int(col), cell)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="query", line=dict(color="cyan", width=2),
                                 hoverinfo="skip", showlegend=False))
    image_axes(fig, hw)
    fig.update_layout(title=dict(text=title), height=height, margin=dict(l=10, r=10, t=50, b=10),
                      plot_bgcolor="white")
    return fig

def chart_grid_shape(num_panels: int, cols: Optional[int] = None) -> Tuple[int, int]:
    """(rows, cols) of the subplot grid for `num_panels` panels: at most 5 columns by default."""
    cols = cols or min(num_panels, 5)
    return math.ceil(num_panels / cols), cols

def _panel_domains(num_panels: int, cols: Optional[int] = None) -> List[Tuple[List[float], List[float]]]:
    """(x domain, y domain) of each panel, row by row from the top left: `make_subplots`' grid for
    `chart_grid_shape(num_panels, cols)` with the spacings `chart_maps_figure` uses."""
    rows, ncols = chart_grid_shape(num_panels, cols)
    hs, vs = _PANEL_SPACING, (_PANEL_ROW_SPACING if rows > 1 else 0.0)
    width, height = (1 - hs * (ncols - 1)) / ncols, (1 - vs * (rows - 1)) / rows
    out = []
    for p in range(num_panels):
        r, c = divmod(p, ncols)
        x0, y0 = c * (width + hs), (rows - 1 - r) * (height + vs)  # row 0 at the top
        out.append(([x0, min(1.0, x0 + width)], [y0, min(1.0, y0 + height)]))
    return out

def show_chart_panels(fig: "go.Figure", num_shown: int) -> None:
    """Show the first `num_shown` panels (the fused map and num_shown - 1 charts) of a `chart_maps_figure`
    on a grid sized for them, and hide the others; in place (a `go.FigureWidget` too).

    The figure keeps every reserved panel (`num_panels`), so a chart-count switch only moves axes and
    toggles visibility. Hidden panels' axes shrink to a sliver in the bottom-left corner: they take no
    room, and (unlike plotly's `visible=False` axes, which keep their drag box) catch no clicks over the
    panels shown. Sets the height for the shown rows and `layout.meta["charts"]` to num_shown - 1.
    """
    meta = dict(fig.layout.meta or {})
    total = int(meta.get("panels", 0))
    if not 1 <= num_shown <= total:
        raise ValueError(f"num_shown: expected 1..{total} (the figure's panels); got {num_shown!r}")
    domains = _panel_domains(num_shown, meta.get("cols"))
    hidden = ([0.0, _HIDDEN_DOMAIN], [0.0, _HIDDEN_DOMAIN])
    rows = chart_grid_shape(num_shown, meta.get("cols"))[0]
    for p in range(total):
        axis = "" if p == 0 else str(p + 1)
        xd, yd = domains[p] if p < num_shown else hidden
        fig.layout["xaxis" + axis].domain, fig.layout["yaxis" + axis].domain = xd, yd
        ann = fig.layout.annotations[p]  # the panel's title, centred above it
        ann.update(x=(xd[0] + xd[1]) / 2, y=yd[1], visible=p < num_shown)
    shown_axes = {"x" if p == 0 else f"x{p + 1}" for p in range(num_shown)}
    for t in fig.data:
        if bool(t.visible) != (t.xaxis in shown_axes):
            t.visible = t.xaxis in shown_axes
    for im in fig.layout.images:  # named "image p"
        shown = int(im.name.split()[-1]) < num_shown
        if bool(im.visible) != shown:
            im.visible = shown
    meta["charts"] = num_shown - 1
    fig.update_layout(height=_panels_height(rows, int(meta.get("panel_size", 190))), meta=meta)

def _panels_height(rows: int, panel_size: int) -> int:
    return max(260, int(panel_size * rows) + 80)

def chart_maps_figure(image: Any, fused_map: Any, chart_maps: Any, query: Optional[Tuple[int, int]] = None,
                      titles: Optional[Sequence[str]] = None, *, shared_scale: bool = True,
                      colorscale: str = HEAT_COLORSCALE, opacity: float = 0.6, cols: Optional[int] = None,
                      image_in_charts: bool = True, num_panels: Optional[int] = None,
                      title: str = "what the fused key and each chart attend to",
                      panel_size: int = 190) -> "go.Figure":
    """The fused attention map beside the H chart maps, one subplot each, all over the image.

    image: (3, H, W) / (H, W, 3); fused_map: (h, w); chart_maps: (H_c, h, w) (same grid as fused_map).
    query: (row, col) cell of the query on that grid, outlined in every panel.
    titles: 1 + H_c panel titles (default "fused", "chart 1", ...).
    shared_scale: one colour range (min..max over all maps) for every panel, so panels compare by colour;
        False gives each panel its own range.
    image_in_charts: draw the image under every chart map (else only under the fused map).
    num_panels: reserve this many panels (>= 1 + H_c); unused panels (traces, images and titles) are
        hidden and the shown ones fill a grid sized for them (`show_chart_panels`). `mkviz.viz.explorers` uses it to
        switch chart counts without rebuilding the figure.
    Traces per panel p (0 = fused): a heat map named "fused" / "chart c" (c from 1), and "query p" (when
    query is given); the image is a layout image named "image p" (panel 0 always, charts with
    image_in_charts; see `panel_image`). layout.meta holds {"panels", "charts", "grid": (h, w),
    "image_size": (H, W), "cols", "panel_size"}.
    """
    go = plotly_go()
    from plotly.subplots import make_subplots

    img = to_uint8_image(image)
    fused = as_map(fused_map, "fused_map")
    charts = to_numpy(chart_maps)
    if charts.ndim != 3 or charts.shape[1:] != fused.shape:
        raise ValueError(f"chart_maps: expected (H_c, {fused.shape[0]}, {fused.shape[1]}) like fused_map; "
                         f"got shape {charts.shape}")
    n_charts = charts.shape[0]
    n = max(1 + n_charts, num_panels or 0)
    rows, ncols = chart_grid_shape(n, cols)
    names = ["fused"] + [f"chart {c + 1}" for c in range(n - 1)]
    if titles is not None:
        if len(titles) != 1 + n_charts:
            raise ValueError(f"titles: expected {1 + n_charts} titles (fused + charts); got {len(titles)}")
        names[:1 + n_charts] = list(titles)
    fig = make_subplots(rows=rows, cols=ncols, subplot_titles=[t or " " for t in names],  # one title each
                        horizontal_spacing=_PANEL_SPACING,
                        vertical_spacing=_PANEL_ROW_SPACING if rows > 1 else 0.0)
    hw = img.shape[:2]
    geo = heat_geometry(hw, fused.shape)
    if shared_scale:
        allv = np.concatenate([fused.reshape(-1), charts.reshape(-1)]).astype(np.float64)
        zmin, zmax = float(allv.min()), float(allv.max())
    src = image_source(img)
    if src is None:  # pragma: no cover - pillow comes with torchvision
        raise ImportError("chart_maps_figure draws the image as PNG: it needs pillow (pip install pillow)")
    for p in range(n):
        axis = "" if p == 0 else str(p + 1)
        visible = p <= n_charts
        if p == 0 or image_in_charts:
            fig.add_layout_image(**panel_image(src, hw, axis), name=f"image {p}", visible=visible)
        z = fused if p == 0 else (charts[p - 1] if visible else np.zeros_like(fused))
        kw = dict(zmin=zmin, zmax=zmax) if shared_scale else dict(zmin=float(z.min()), zmax=float(z.max()))
        fig.add_trace(go.Heatmap(z=z, name=names[p], xaxis="x" + axis,
                                 yaxis="y" + axis, colorscale=colorscale, opacity=opacity, showscale=p == 0,
                                 visible=visible, colorbar=dict(title=dict(text="attention"), len=0.8),
                                 hovertemplate="x %{x:.0f}, y %{y:.0f}<br>%{z:.4f}<extra>" + names[p] + "</extra>",
                                 **geo, **kw))
        if query is not None:
            xs, ys = query_box_path(int(query[0]), int(query[1]), heat_cell(hw, fused.shape))
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"query {p}", xaxis="x" + axis,
                                     yaxis="y" + axis, line=dict(color="cyan", width=2), hoverinfo="skip",
                                     showlegend=False, visible=visible))
        image_axes(fig, hw, "xaxis" + axis, "yaxis" + axis, "x" + axis)
    fig.update_layout(title=dict(text=title), margin=dict(l=10, r=10, t=70, b=10), plot_bgcolor="white",
                      meta=dict(panels=n, charts=n_charts, grid=list(fused.shape), image_size=list(hw),
                                cols=cols, panel_size=int(panel_size)))
    for ann in fig.layout.annotations:  # one title per panel, in panel order
        ann.update(font=dict(size=12))
    show_chart_panels(fig, 1 + n_charts)  # the grid for the panels shown, the reserved ones hidden
    return fig

# --------------------------------------------------------------------------- metrics
def similarity_heatmap(matrix: Any, kind: str = "cosine", labels: Optional[Sequence[str]] = None,
                       title: Optional[str] = None, *, annotate: bool = True, height: int = 380) -> "go.Figure":
    """An (H, H) chart-by-chart matrix as a heat map (chart 1 at the top left).

    kind: "cosine" (keys, diverging RdBu in [-1, 1]), "cka" (keys, Viridis in [0, 1]) or "js"
    (Jensen-Shannon divergence of chart attention in bits, [0, 1], 0 = identical). One trace "similarity"
    whose z is `matrix`.
    """
    go = plotly_go()
    if kind not in _SIM_STYLE:
        raise ValueError(f"kind: expected one of {tuple(_SIM_STYLE)}; got {kind!r}")
    z = as_map(matrix, "matrix")
    if z.shape[0] != z.shape[1]:
        raise ValueError(f"matrix: expected a square (H, H) matrix; got shape {z.shape}")
    cs, zmin, zmax, zmid, what = _SIM_STYLE[kind]
    labels = list(labels) if labels is not None else [f"c{i + 1}" for i in range(z.shape[0])]
    if len(labels) != z.shape[0]:
        raise ValueError(f"labels: expected {z.shape[0]} labels; got {len(labels)}")
    fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, name="similarity", colorscale=cs, zmin=zmin, zmax=zmax,
                               zmid=zmid, colorbar=dict(title=dict(text=kind)),
                               texttemplate="%{z:.2f}" if annotate else None,
                               hovertemplate="%{y} vs %{x}: %{z:.4f}<extra></extra>"))
    fig.update_layout(title=dict(text=title or what), height=height, margin=dict(l=10, r=10, t=50, b=10),
                      xaxis=dict(title=dict(text="chart"), side="bottom", type="category", constrain="domain"),
                      yaxis=dict(title=dict(text="chart"), autorange="reversed", type="category",
                                 scaleanchor="x", scaleratio=1, constrain="domain"))
    return fig

def _bar_values(values: Any, fused: Optional[float], prefix: str = "chart") -> Tuple[List[str], List[float]]:
    if isinstance(values, Mapping):
        names, vals = [str(k) for k in values], [float(v) for v in values.values()]
    else:
        vals = [float(v) for v in to_numpy(values).reshape(-1)]
        names = [f"{prefix} {i + 1}" for i in range(len(vals))]
    if fused is not None:
        names, vals = ["fused"] + names, [float(fused)] + vals
    return names, vals

def _bar_colors(names: Sequence[str]) -> List[str]:
    return ["#444444" if n == "fused" else "#1f77b4" for n in names]

def evidence_bars(values: Any, fused: Optional[float] = None, chance: Optional[float] = None,
                  title: str = "share of attention on the evidence", height: int = 320) -> "go.Figure":
    """Bars of the share of attention landing on the evidence mask, per chart (and fused, dark, first).

    values: a sequence (chart 1..H) or a dict label -> share; fused: the fused attention's share;
    chance: the share uniform attention would give (the mask's patch coverage), drawn as a dashed line.
    Traces: "evidence" (bars); "chance" when given (also a dashed line across the whole plot). The y axis is
    fixed to [0, 1].
    """
    go = plotly_go()
    names, vals = _bar_values(values, fused)
    fig = go.Figure(go.Bar(x=names, y=vals, name="evidence", marker_color=_bar_colors(names),
                           hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    if chance is not None:
        fig.add_trace(go.Scatter(x=[names[0], names[-1]], y=[float(chance)] * 2, mode="lines", name="chance",
                                 line=dict(dash="dash", color="#d62728")))
        # across the whole plot, so that it shows for a single bar too
        fig.add_hline(y=float(chance), line=dict(dash="dash", color="#d62728", width=1))
    fig.update_layout(title=dict(text=title), height=height, margin=dict(l=10, r=10, t=50, b=10),
                      yaxis=dict(title=dict(text="share of attention"), range=[0, 1]),
                      xaxis=dict(title=dict(text="attention"), type="category"), showlegend=chance is not None)
    return fig

def entropy_bars(values: Any, fused: Optional[float] = None, max_entropy: Optional[float] = None,
                 title: str = "attention entropy", height: int = 320) -> "go.Figure":
    """Bars of attention entropy (nats) per chart (and fused); max_entropy (log N) as a dashed line.

    Traces: "entropy" (bars); "uniform" when max_entropy is given.
    """
    go = plotly_go()
    names, vals = _bar_values(values, fused)
    fig = go.Figure(go.Bar(x=names, y=vals, name="entropy", marker_color=_bar_colors(names),
                           hovertemplate="%{x}: %{y:.3f} nats<extra></extra>"))
    if max_entropy is not None:
        fig.add_trace(go.Scatter(x=[names[0], names[-1]], y=[float(max_entropy)] * 2, mode="lines",
                                 name="uniform", line=dict(dash="dash", color="#7f7f7f")))
    fig.update_layout(title=dict(text=title), height=height, margin=dict(l=10, r=10, t=50, b=10),
                      yaxis=dict(title=dict(text="entropy (nats)"), rangemode="tozero"),
                      xaxis=dict(title=dict(text="attention"), type="category"),
                      showlegend=max_entropy is not None)
    return fig

# --------------------------------------------------------------------------- training and cost
def _is_number_list(v: Any) -> bool:
    return isinstance(v, (list, tuple, np.ndarray)) and all(isinstance(x, (int, float, np.number)) for x in v)

def _runs(records: Any) -> Dict[str, List[dict]]:
    """Normalise to {run name: [per-epoch dict, ...]}."""
    if isinstance(records, Mapping):
        vals = list(records.values())
        if vals and all(_is_number_list(v) for v in vals):  # one run, columns: {"train_loss": [...], ...}
            n = len(vals[0])
            if any(len(v) != n for v in vals):
                raise ValueError("records: every column of a {metric: [values]} history needs the same length")
            return {"": [{k: records[k][i] for k in records} for i in range(n)]}
        out = {}
        for name, run in records.items():
            out[str(name)] = _runs(run)[""]
        return out
    if isinstance(records, (list, tuple)) and all(isinstance(r, Mapping) for r in records):
        return {"": [dict(r) for r in records]}
    raise ValueError("records: expected a list of per-epoch dicts, a {metric: [values]} dict, or a dict "
                     "run name -> either of those")

def training_curves(records: Any, title: str = "training curves", height: int = 360) -> "go.Figure":
    """Loss (left) and accuracy (right) per epoch, for one run or several.

    records: a list of per-epoch dicts ({"epoch", "train_loss", "val_loss", "train_acc", "val_acc", ...}),
    a {metric: [values]} history, or a dict run name -> either (one colour per run, solid = train,
    dashed = val/test). Keys containing "loss" go to the left panel, keys containing "acc" to the right,
    a regulariser ("ua_loss", KUA's unbalanced-atlas term) to a third panel of its own; x is "epoch" when
    present, else 1, 2, .... Trace names are "<run> <metric>" (just "<metric>" for one unnamed run). The
    legend sits below the plot in rows (it never scrolls); the figure grows to hold it.
    """
    go = plotly_go()
    from plotly.subplots import make_subplots

    runs = _runs(records)
    regularised = any(_REGULARISER in row for rows in runs.values() for row in rows)
    titles = ["loss", "accuracy"] + (["KUA regulariser (ua_loss)"] if regularised else [])
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.1)
    for r, (run, rows) in enumerate(runs.items()):
        color = _RUN_COLORS[r % len(_RUN_COLORS)]
        keys: List[str] = []
        for row in rows:
            keys += [k for k in row if k not in keys]
        xs = [row.get("epoch", i + 1) for i, row in enumerate(rows)]
        for key in keys:
            col = 3 if key == _REGULARISER else 1 if "loss" in key else 2 if "acc" in key else None
            if col is None:
                continue
            pts = [(x, row[key]) for x, row in zip(xs, rows) if row.get(key) is not None]
            if not pts:
                continue
            dash = "solid" if key.startswith("train") else "dash"
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[float(p[1]) for p in pts], mode="lines+markers",
                                     name=f"{run} {key}".strip(), line=dict(color=color, dash=dash),
                                     legendgroup=run or key), row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", row=1, col=2)
    legend_rows = math.ceil(len(fig.data) / 4)
    fig.update_layout(title=dict(text=title), height=height + 22 * legend_rows, margin=dict(l=10, r=10, t=60, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.18 * 360 / height, xanchor="left", x=0.0))
    return fig

def chart_stat_bars(values: Mapping[str, Sequence[float]], ylabel: str, title: str = "",
                    height: int = 340, reference: Optional[Tuple[str, float]] = None) -> "go.Figure":
    """Grouped bars of one statistic per chart, one group per model: {model: [fused, chart 1, ..., chart H]}.

    Traces: one bar trace per model, x = "fused", "chart 1", ... (models may have different chart counts);
    reference (label, value), e.g. ("chance", 0.2): a dashed line across the plot, trace named by its label.
    """
    go = plotly_go()
    fig = go.Figure()
    for i, (name, vals) in enumerate(values.items()):
        names, ys = _bar_values(list(vals)[1:], fused=list(vals)[0])
        fig.add_trace(go.Bar(x=names, y=ys, name=str(name), marker_color=_RUN_COLORS[i % len(_RUN_COLORS)],
                             hovertemplate=f"{name} %{{x}}: %{{y:.3f}}<extra></extra>"))
    if reference is not None:
        label, value = reference
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=label,
                                 line=dict(dash="dash", color="#d62728")))  # the legend entry of the line below
        fig.add_hline(y=float(value), line=dict(dash="dash", color="#d62728", width=1))
    fig.update_layout(title=dict(text=title or ylabel), height=height, barmode="group",
                      margin=dict(l=10, r=10, t=50, b=10), yaxis=dict(title=dict(text=ylabel), rangemode="tozero"),
                      xaxis=dict(type="category"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    return fig

def accuracy_vs_charts(accuracies: Mapping, baseline: Optional[float] = None, current: Optional[int] = None,
                       title: str = "accuracy against the number of charts", height: int = 340) -> "go.Figure":
    """Accuracy against chart count (log2 x axis), one line per variant.

    accuracies: {charts: accuracy} (one line "accuracy") or {variant: {charts: accuracy}}.
    baseline: the baseline's accuracy, a dashed line "baseline". current: a chart count to mark ("current").
    """
    go = plotly_go()
    if accuracies and all(isinstance(v, Mapping) for v in accuracies.values()):
        lines = {str(k): dict(v) for k, v in accuracies.items()}
    else:
        lines = {"accuracy": dict(accuracies)}
    counts = sorted({int(c) for v in lines.values() for c in v})
    if not counts:
        raise ValueError("accuracies: nothing to plot")
    fig = go.Figure()
    for i, (name, acc) in enumerate(lines.items()):
        cs = sorted(acc, key=int)
        fig.add_trace(go.Scatter(x=[int(c) for c in cs], y=[float(acc[c]) for c in cs], mode="lines+markers",
                                 name=name, line=dict(color=_RUN_COLORS[i % len(_RUN_COLORS)])))
    if baseline is not None:
        fig.add_trace(go.Scatter(x=[counts[0], counts[-1]], y=[float(baseline)] * 2, mode="lines",
                                 name="baseline", line=dict(dash="dash", color="#7f7f7f")))
    if current is not None:
        first = lines[next(iter(lines))]
        key = next((c for c in first if int(c) == int(current)), None)
        y = [float(first[key])] if key is not None else []
        fig.add_trace(go.Scatter(x=[int(current)] if y else [], y=y, mode="markers", name="current",
                                 marker=dict(size=14, symbol="circle-open", color="black", line=dict(width=2))))
    fig.update_layout(title=dict(text=title), height=height, margin=dict(l=10, r=10, t=50, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
                      xaxis=dict(title=dict(text="number of charts H"), type="log", tickvals=counts,
                                 ticktext=[str(c) for c in counts]),
                      yaxis=dict(title=dict(text="accuracy")))
    return fig

def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3g}" if abs(float(v)) < 1e-2 and v != 0 else f"{float(v):,.2f}"
    return str(v)

def cost_table_figure(rows: Sequence[Mapping], columns: Optional[Sequence[str]] = None,
                      title: str = "cost", height: Optional[int] = None) -> "go.Figure":
    """A `go.Table` of rows (dicts); columns in first-appearance order unless given. Floats get 2 decimals."""
    go = plotly_go()
    rows = [dict(r) for r in rows]
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    cells = [[_fmt(r.get(c)) for r in rows] for c in columns]
    fig = go.Figure(go.Table(header=dict(values=[f"<b>{c}</b>" for c in columns], fill_color="#e8e8e8",
                                         align="left"),
                             cells=dict(values=cells, align=["left"] + ["right"] * (len(columns) - 1))))
    fig.update_layout(title=dict(text=title), height=height or 120 + 28 * len(rows),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig
