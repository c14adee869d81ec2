"""The report of a sweep, regenerated from its per-run JSON: statistics, markdown tables, SVG plots.

The page (e.g. docs/reproduction.md) is hand-written prose around generated blocks::

    <!-- mkviz:begin results-shapes -->
    ... table written by this module ...
    <!-- mkviz:end results-shapes -->

`write_report` rewrites only the blocks (and creates the page from a template if it does not exist);
`check_page` lists the blocks whose text differs from what the JSON gives (a test runs it).

Statistics, per dataset, on test accuracy over seeds: mean ± sample std (ddof 1); the difference of a
configuration to the baseline with a 95 % Welch interval and Welch's t-test p-value (unequal
variances); and, because every configuration shares its seeds (same data, data order and schedule),
a paired t-test on the per-seed differences as a second, usually sharper, reading.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional, Sequence
import json
import sys

import numpy as np

from . import sweep_analysis as analysis
from .stats import welch
from .sweep_config import load_sweep

__all__ = ["load_results", "summarize", "welch", "render_blocks", "specialisation_blocks", "pages", "write_report",
           "check_page", "make_plots"]

_PLOTLY_UID = re.compile(rb'<defs id="defs-([0-9a-f]+)"')
_BLOCK = re.compile(r"<!-- mkviz:begin (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- mkviz:end (?P=name) -->", re.S)


def load_results(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every run record (`<run_id>.json`) in `results_dir`, sorted by run id."""
    d = Path(results_dir)
    if not d.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]


def paired_p(a: dict[int, float], b: dict[int, float]) -> float:
    """Two-sided paired t-test p-value on the seeds both share (NaN with < 2 shared seeds or zero spread)."""
    from scipy import stats
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds])
    if len(d) < 2 or np.ptp(d) <= 1e-12:  # no spread: undefined, or an exact constant shift
        return math.nan if len(d) < 2 or abs(d[0]) <= 1e-12 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


METRICS = ("test_acc", "val_acc")  # the classification metrics; a dense task's are test_miou, test_map, ...
_METRIC = re.compile(r"(test|val)_[a-z0-9_]+")


def report_metric(sweep: dict[str, Any], dataset: Optional[str] = None) -> str:
    """The metric a sweep's report compares: `report.metric`, "test_acc" (default), "val_acc" (a sweep that selects
    settings, such as a learning-rate check, must not look at the test set), or a dense task's "test_miou",
    "test_map", ...; a mapping {dataset: metric} gives each dataset (e.g. each task) its own."""
    metric = (sweep.get("report") or {}).get("metric", "test_acc")
    if isinstance(metric, dict):
        if dataset not in metric:
            raise ValueError(f"sweep {sweep['name']}: report.metric must name a metric for every dataset "
                             f"{list(sweep['datasets'])}, got {metric!r}")
        metric = metric[dataset]
    if not isinstance(metric, str) or not _METRIC.fullmatch(metric):
        raise ValueError(f"sweep {sweep['name']}: report.metric must be one of {list(METRICS)} or another "
                         f"test_<name> / val_<name> of the run records, got {metric!r}")
    return metric


def summarize(records: list[dict[str, Any]], sweep: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{dataset: {config: stats}} in the sweep file's order; stats: n, seeds, accs (by seed), mean, std,
    params, flops, and (except for the baseline) the Welch comparison and paired p against the baseline."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    base = sweep["baseline"]
    for dataset in sweep["datasets"]:
        metric = report_metric(sweep, dataset)
        rows: dict[str, dict[str, Any]] = {}
        for config in sweep["configs"]:
            recs = [r for r in records if r["dataset"] == dataset and r["config"] == config]
            if not recs:
                continue
            accs = {r["seed"]: float(r[metric]) for r in recs}
            v = np.array(list(accs.values()))
            rows[config] = {"n": len(v), "accs": dict(sorted(accs.items())), "mean": float(v.mean()),
                            "std": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
                            "params": recs[0]["params"], "flops": recs[0]["flops"],
                            "flops_of": recs[0].get("flops_of", "model"),
                            "variant": recs[0]["variant"], "num_charts": recs[0]["num_charts"],
                            "train_time_s": float(np.mean([r["train_time_s"] for r in recs]))}
        if base in rows:
            for config, row in rows.items():
                if config != base:
                    row["welch"] = welch(list(row["accs"].values()), list(rows[base]["accs"].values()))
                    row["paired_p"] = paired_p(row["accs"], rows[base]["accs"])
        if rows:
            out[dataset] = rows
    return out


# ----------------------------------------------------------------------------- markdown
def _pct(x: float, digits: int = 1) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.{digits}f}"


def _pp(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:+.1f}"


def _p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _results_table(rows: dict[str, dict[str, Any]], base: str, label: str = "test acc") -> str:
    mflops = "backbone MFLOPs" if any(r.get("flops_of") == "backbone" for r in rows.values()) else "MFLOPs"
    lines = [f"| configuration | variant | charts | params | ×params | {mflops} | {label} % (mean ± std) | n "
             "| Δ vs baseline, pp [95 % CI] | Welch p | paired p | per seed (%) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    bp = rows[base]["params"] if base in rows else None
    for config, r in rows.items():
        w = r.get("welch")
        delta = f"{_pp(w['diff'])} [{_pp(w['lo'])}, {_pp(w['hi'])}]" if w else "(reference)"
        ratio = f"{r['params'] / bp:.2f}" if bp else "–"
        seeds = ", ".join(f"{_pct(a)}" for a in r["accs"].values())
        charts = "–" if r["num_charts"] is None else str(r["num_charts"])
        lines.append(f"| `{config}` | {r['variant']} | {charts} | {r['params'] / 1e3:.0f}k | {ratio} "
                     f"| {r['flops'] / 1e6:.1f} | {_pct(r['mean'])} ± {_pct(r['std'])} | {r['n']} | {delta} "
                     f"| {_p(w['p']) if w else '–'} | {_p(r['paired_p']) if w else '–'} | {seeds} |")
    return "\n".join(lines) + "\n"


def _verdicts(summary: dict[str, dict[str, dict[str, Any]]], base: str) -> str:
    lines = []
    for dataset, rows in summary.items():
        comps = {c: r for c, r in rows.items() if "welch" in r}
        if not comps:
            continue
        k = len(comps)
        sig = [c for c, r in comps.items() if r["welch"]["p"] < 0.05]
        strict = [c for c, r in comps.items() if r["welch"]["p"] < 0.05 / k]
        best = max(comps, key=lambda c: comps[c]["mean"])
        text = (f"- **{dataset}**: {k} comparisons with `{base}` ({_pct(rows[base]['mean'])} %). Welch p < 0.05: "
                + (", ".join(f"`{c}` ({_pp(comps[c]['welch']['diff'])} pp)" for c in sig) if sig else "none")
                + f"; after Bonferroni (p < {0.05 / k:.4f}): "
                + (", ".join(f"`{c}`" for c in strict) if strict else "none")
                + f". Highest mean: `{best}` ({_pct(comps[best]['mean'])} %, {_pp(comps[best]['welch']['diff'])} pp "
                  f"[{_pp(comps[best]['welch']['lo'])}, {_pp(comps[best]['welch']['hi'])}]).")
        lines.append(text)
    return "\n".join(lines) + "\n"


def _controls(summary: dict[str, dict[str, dict[str, Any]]], sweep: dict[str, Any]) -> str:
    """Each parameter-matched control against the configuration whose parameters it matches."""
    lines = ["| dataset | configuration | its control | Δ (pp) [95 % CI] | Welch p | paired p |",
             "|---|---|---|---:|---:|---:|"]
    for dataset, rows in summary.items():
        for control, kw in sweep["configs"].items():
            target = kw.get("match_params")
            if target and target in rows and control in rows:
                a, b = rows[target], rows[control]
                w = welch(list(a["accs"].values()), list(b["accs"].values()))
                lines.append(f"| {dataset} | `{target}` ({_pct(a['mean'])} %, {a['params'] / 1e3:.0f}k) | `{control}` "
                             f"({_pct(b['mean'])} %, {b['params'] / 1e3:.0f}k) | {_pp(w['diff'])} [{_pp(w['lo'])}, "
                             f"{_pp(w['hi'])}] | {_p(w['p'])} | {_p(paired_p(a['accs'], b['accs']))} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else "No parameter-matched control in this sweep.\n"


def _setup(records: list[dict[str, Any]], sweep: dict[str, Any]) -> str:
    if not records:
        return "No finished runs yet.\n"
    machines = sorted({f"{r['machine']['gpu'] or 'CPU'} ({r['machine']['cpu_count']} cores), torch "
                       f"{r['machine']['torch']}, timm {r['machine']['timm']}" for r in records})
    threads = sorted({r["threads"] for r in records})
    total = sum(r["train_time_s"] for r in records)
    dates = sorted(r["finished"][:10] for r in records)
    per = []
    for dataset in sweep["datasets"]:
        recs = [r for r in records if r["dataset"] == dataset]
        if recs:
            t = recs[0]["train"]
            size = t["timm_kwargs"].get("img_size", t.get("image_size"))
            extra = (f", {t['num_train']} training images, difficulty {t['difficulty']}" if t["dataset"] == "shapes"
                     else f", the first {t['num_train']} training images" if t["dataset"] == "fashion-mnist"
                     and t.get("num_train") else "")
            lrs = sorted({r["train"]["lr"] for r in recs})
            epochs = sorted({r["train"]["epochs"] for r in recs})
            lr = f"lr {lrs[0]:g}" if len(lrs) == 1 else "peak lr " + "/".join(f"{v:g}" for v in lrs) + " by family"
            per.append(f"- `{dataset}`: {t['dataset']} at {size} px{extra}; "
                       f"{'/'.join(map(str, epochs))} epochs, batch {t['batch_size']}, {lr}, {len(recs)} runs, "
                       f"mean training time {np.mean([r['train_time_s'] for r in recs]):.0f} s per run")
    seeds = sorted({r["seed"] for r in records})
    lines = [f"- {len(records)} finished runs ({len(sweep['configs'])} configurations × {len(sweep['datasets'])} "
             f"datasets × seeds {seeds}), finished {dates[0]}" + (f" to {dates[-1]}" if dates[-1] != dates[0] else ""),
             f"- machine: {'; '.join(machines)}; {', '.join(map(str, threads))} torch thread(s) per run",
             f"- total training time {total / 60:.0f} min (sum over runs; runs went "
             f"{sweep['jobs']} at a time)", *per]
    return "\n".join(lines) + "\n"


def render_blocks(sweep: dict[str, Any], records: Optional[list[dict[str, Any]]] = None,
                  summary: Optional[dict[str, dict[str, dict[str, Any]]]] = None) -> dict[str, str]:
    """The generated blocks of the page, by name: setup, results-<dataset>..., verdicts, plots.
    `summary` is `summarize(records, sweep)` when the caller already has it."""
    records = load_results(sweep["results_dir"]) if records is None else records
    summary = summarize(records, sweep) if summary is None else summary
    base = sweep["baseline"]
    blocks = {"setup": _setup(records, sweep)}
    for dataset in sweep["datasets"]:
        rows = summary.get(dataset)
        label = report_metric(sweep, dataset).replace("_", " ")
        blocks[f"results-{dataset}"] = _results_table(rows, base, label) if rows else "No finished runs yet.\n"
    rep = sweep.get("report") or {}
    if rep.get("primary"):  # a sweep that stated its comparisons: the full analysis
        if len(sweep["datasets"]) > 1:
            blocks["stated-test"] = analysis.stated_test_block(sweep, summary)
        for dataset, rows in summary.items():
            dataset_records = [r for r in records if r["dataset"] == dataset]
            blocks[f"comparisons-{dataset}"] = analysis.comparisons_block(sweep, rows)
            blocks[f"cost-{dataset}"] = analysis.cost_block(sweep, rows, dataset_records)
            blocks[f"curves-{dataset}"] = analysis.curves_block(sweep, dataset_records)
        if rep.get("lr_check"):
            lr_sweep = load_sweep(rep["lr_check"])
            blocks["lr-check"] = analysis.lr_check_block(lr_sweep, load_results(lr_sweep["results_dir"]))
    else:
        blocks["verdicts"] = _verdicts(summary, base) if summary else "No finished runs yet.\n"
        blocks["controls"] = _controls(summary, sweep)
    if sweep.get("plots_dir"):
        rel = Path(sweep["plots_dir"]).relative_to(Path(sweep["page"]).parent) if sweep.get("page") else None
        blocks["plots"] = (f"![test accuracy vs number of charts]({rel}/acc_vs_charts.svg)\n\n"
                           f"![test accuracy per configuration]({rel}/configs.svg)\n")
        if rep.get("primary"):
            blocks["plots"] += f"\n![training curves]({rel}/curves.svg)\n"
    return blocks


def specialisation_blocks(sweep: dict[str, Any], records: Optional[list[dict[str, Any]]] = None) -> dict[str, str]:
    """The generated blocks of the chart-specialisation page (`report.specialisation_page`)."""
    records = load_results(sweep["results_dir"]) if records is None else records
    page = sweep["report"]["specialisation_page"]
    blocks = {"chart-setup": _setup(records, sweep), **analysis.specialisation_blocks(sweep, records)}
    if sweep.get("plots_dir"):
        svg = analysis.page_link(page, Path(sweep["plots_dir"]) / "chart_similarity.svg")
        blocks["chart-plot"] = f"![chart similarity over training]({svg})\n"
    return blocks


def pages(sweep: dict[str, Any], records: Optional[list[dict[str, Any]]] = None,
          summary: Optional[dict[str, dict[str, dict[str, Any]]]] = None) -> dict[Path, dict[str, str]]:
    """{page path: its generated blocks}: the sweep's page and, if the report names one, its chart-specialisation
    page."""
    records = load_results(sweep["results_dir"]) if records is None else records
    out = {Path(sweep["page"]): render_blocks(sweep, records, summary)}
    if (sweep.get("report") or {}).get("specialisation_page"):
        out.setdefault(Path(sweep["report"]["specialisation_page"]), {}).update(specialisation_blocks(sweep, records))
    return out


def _template(sweep: dict[str, Any], blocks: dict[str, str]) -> str:
    parts = [f"# {sweep['name']}\n", sweep.get("description", "") + "\n"]
    for name, body in blocks.items():
        parts.append(f"## {name}\n\n<!-- mkviz:begin {name} -->\n{body}<!-- mkviz:end {name} -->\n")
    return "\n".join(parts)


def _replace_blocks(text: str, blocks: dict[str, str]) -> str:
    seen = set()

    def sub(m: re.Match) -> str:
        name = m.group("name")
        seen.add(name)
        body = blocks.get(name, m.group("body"))
        return f"<!-- mkviz:begin {name} -->\n{body}<!-- mkviz:end {name} -->"

    text = _BLOCK.sub(sub, text)
    for name in blocks:
        if name not in seen:
            text += f"\n<!-- mkviz:begin {name} -->\n{blocks[name]}<!-- mkviz:end {name} -->\n"
    return text


def check_page(sweep: dict[str, Any]) -> list[str]:
    """Blocks of the page that differ from what the results give ([] when in sync)."""
    stale = []
    for page, blocks in pages(sweep).items():
        if not page.is_file():
            stale.append(f"{page} does not exist; run: mkviz sweep {sweep['path']} --report-only")
            continue
        found = {m.group("name"): m.group("body") for m in _BLOCK.finditer(page.read_text())}
        for name, body in blocks.items():
            if name not in found:
                stale.append(f"{page}: block {name!r} is missing; run: mkviz sweep {sweep['path']} --report-only")
            elif found[name] != body:
                stale.append(f"{page}: block {name!r} differs from {sweep['results_dir']}; run: mkviz sweep "
                             f"{sweep['path']} --report-only")
    return stale


# ----------------------------------------------------------------------------- plots
def make_plots(sweep: dict[str, Any], summary: dict[str, dict[str, dict[str, Any]]],
               records: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """Two plotly figures: accuracy vs chart count (the `report.chart_series` configs, default: every
    VanillaK config) and accuracy per configuration (`report.bars`, default: all), one panel per dataset,
    mean ± std with each seed as a dot; the baseline (and a param-matched control) as reference lines."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    base = sweep["baseline"]
    configs = list(sweep["configs"])
    rep = sweep.get("report") or {}
    series = rep.get("chart_series") or [c for c in configs if str(sweep["configs"][c].get("variant")).lower()
                                         == "vanillak"]
    bars = rep.get("bars") or configs
    controls = [c for c in configs if sweep["configs"][c].get("match_params")]
    datasets = list(summary)
    figs = {}

    fig = make_subplots(1, max(1, len(datasets)), subplot_titles=datasets)
    for i, ds in enumerate(datasets, 1):
        rows = summary[ds]
        pts = sorted((rows[c]["num_charts"], rows[c]) for c in series if c in rows)
        if pts:
            x = [p[0] for p in pts]
            fig.add_trace(go.Scatter(x=x, y=[100 * p[1]["mean"] for p in pts], mode="lines+markers",
                                     error_y=dict(array=[100 * p[1]["std"] for p in pts]), name="VanillaK",
                                     line=dict(color="#d62728"), showlegend=i == 1), 1, i)
            for n, r in pts:
                fig.add_trace(go.Scatter(x=[n] * r["n"], y=[100 * a for a in r["accs"].values()], mode="markers",
                                         marker=dict(size=5, color="#d62728", opacity=0.4), showlegend=False,
                                         hoverinfo="y"), 1, i)
        for ref, color, dash in [(base, "#1f77b4", "dash")] + [(c, "#2ca02c", "dot") for c in controls]:
            if ref in rows:
                m, s = 100 * rows[ref]["mean"], 100 * rows[ref]["std"]
                fig.add_hline(y=m, line=dict(color=color, dash=dash), row=1, col=i)
                fig.add_hrect(y0=m - s, y1=m + s, fillcolor=color, opacity=0.1, line_width=0, row=1, col=i)
                if i == 1:
                    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"{ref} (mean ± std)",
                                             line=dict(color=color, dash=dash)), 1, i)
        fig.update_xaxes(type="log", tickvals=[1, 2, 4, 8, 16], title_text="charts H", row=1, col=i)
        fig.update_yaxes(title_text="test accuracy (%)" if i == 1 else None, row=1, col=i)
    fig.update_layout(title="Test accuracy vs number of charts (mean ± std over seeds; dots: seeds)",
                      width=450 * max(1, len(datasets)) + 100, height=420, template="plotly_white",
                      legend=dict(orientation="h", y=-0.25))
    figs["acc_vs_charts"] = fig

    fig = make_subplots(1, max(1, len(datasets)), subplot_titles=datasets)
    palette = {"baseline": "#1f77b4", "vanillak": "#d62728", "simplek": "#9467bd", "spatialk": "#ff7f0e",
               "kua": "#8c564b"}
    for i, ds in enumerate(datasets, 1):
        rows = summary[ds]
        names = [c for c in bars if c in rows]
        colors = ["#2ca02c" if c in controls else palette.get(rows[c]["variant"], "#7f7f7f") for c in names]
        fig.add_trace(go.Bar(x=names, y=[100 * rows[c]["mean"] for c in names], marker_color=colors,
                             error_y=dict(array=[100 * rows[c]["std"] for c in names]), showlegend=False), 1, i)
        for c in names:
            fig.add_trace(go.Scatter(x=[c] * rows[c]["n"], y=[100 * a for a in rows[c]["accs"].values()],
                                     mode="markers", marker=dict(size=5, color="black", opacity=0.5),
                                     showlegend=False), 1, i)
        lo = min(100 * min(rows[c]["accs"].values()) for c in names) if names else 0
        fig.update_yaxes(range=[max(0, lo - 5), 100], title_text="test accuracy (%)" if i == 1 else None,
                         row=1, col=i)
    fig.update_layout(title="Test accuracy per configuration (bars: mean ± std; dots: seeds)",
                      width=450 * max(1, len(datasets)) + 100, height=420, template="plotly_white")
    figs["configs"] = fig
    if rep.get("primary") and records:
        figs["curves"] = analysis.curves_figure(sweep, records,
                                               [c for c in dict.fromkeys(bars + series) if c in sweep["configs"]])
    if rep.get("specialisation_page") and records:
        chart_fig = analysis.specialisation_figure(sweep, records)
        if chart_fig is not None:
            figs["chart_similarity"] = chart_fig
    return figs


def svg_bytes(fig: Any) -> bytes:
    """The figure as SVG that depends on the figure alone: plotly names the defs, clip paths and legend after a
    random per-render id, and each trace after a random uid; both become fixed names, so that an unchanged
    plot is written byte for byte the same (and a tracked file does not change)."""
    import plotly.graph_objects as go

    fig = go.Figure(fig)
    for i, trace in enumerate(fig.data):
        trace.uid = f"mkviz{i}"
    svg = fig.to_image(format="svg")
    uid = _PLOTLY_UID.search(svg)
    return re.sub(rb"(defs-|clip|legend)" + uid.group(1), rb"\g<1>mkviz", svg) if uid else svg


def write_report(sweep: dict[str, Any], plots: bool = True) -> list[Path]:
    """Rewrite the page's generated blocks (create the page if missing) and, with `plots`, the SVGs
    (needs kaleido and a Chrome/Chromium; skipped with a message otherwise). Returns the written paths."""
    records = load_results(sweep["results_dir"])
    summary = summarize(records, sweep)
    written = []
    for page, blocks in pages(sweep, records, summary).items():
        text = _replace_blocks(page.read_text(), blocks) if page.is_file() else _template(sweep, blocks)
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(text)
        written.append(page)
    if plots and sweep.get("plots_dir") and records:
        out = Path(sweep["plots_dir"])
        out.mkdir(parents=True, exist_ok=True)
        try:
            for name, fig in make_plots(sweep, summary, records).items():
                svg, path = svg_bytes(fig), out / f"{name}.svg"
                if not path.is_file() or path.read_bytes() != svg:  # unchanged plots are not touched
                    path.write_bytes(svg)
                written.append(path)
        except Exception as err:  # noqa: BLE001 - kaleido/Chromium missing: the tables still stand
            print(f"mkviz sweep: plots not written ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                  "install kaleido and Chromium for SVG export", file=sys.stderr)
    return written
