"""The analysis of a sweep that states its comparisons before running (`report.primary`, `report.controls` in
its YAML), and its chart-specialisation page, generated from the per-run JSON.

Blocks of the reproduction page (see `mkviz.studies.sweep_report` for how blocks are kept in sync):
    stated-test     (a sweep over several datasets) the stated comparisons of all datasets as one family: the
                    stated test, with each comparison's reading
    comparisons     every comparison of the family (primary, controls, each configuration vs the baseline), each
                    read every way `mkviz.studies.stats.compare` gives, with Holm's adjustment over the primary pair and
                    over the whole family
    lr-check        the learning-rate check (`report.lr_check`: another sweep file) by family and rate
    cost            parameters, FLOPs of a forward and of a training step, measured training time
    curves          how flat the training curves ended (table); validation accuracy and training loss per
                    epoch (plot)
Blocks of the specialisation page (`report.specialisation_page`):
    chart-similarity, chart-membership, and the plot chart_similarity.svg.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional
import os

import numpy as np

import torch

from ..core.cost import count_train_flops
from ..explain.specialisation import usage_entropy
from ..training.build import build_model
from ..training.config import TrainConfig, model_spec, num_classes_of
from . import stats

__all__ = ["FAMILIES", "comparison_family", "in_holm_family", "holm_steps", "equivalence_columns", "comparisons_block",
           "stated_test", "stated_test_block", "lr_check_block", "cost_block", "curves_block",
           "curves_figure", "specialisation_blocks", "usage_block", "usage_entropy_of", "specialisation_figure", "page_link"]


def _pp(x: float, digits: int = 1) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:+.{digits}f}"


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ms(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
    if not len(v):
        return "–"
    sd = f"{scale * v.std(ddof=1):.{digits}f}" if len(v) > 1 else "–"
    return f"{scale * v.mean():.{digits}f} ± {sd}"


# ----------------------------------------------------------------------------- the comparisons
FAMILIES = ("all", "stated")  # report.family: every comparison on the page, or only primary and controls


def comparison_family(sweep: dict[str, Any], rows: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(a, b, role) for every comparison a − b on the page, roles "primary", "control", "vs baseline"; each
    unordered pair once, in that order, restricted to configurations with results."""
    rep, base = sweep.get("report") or {}, sweep["baseline"]
    out, seen = [], set()
    candidates = [(a, b, "primary") for a, b in rep.get("primary", [])]
    candidates += [(a, b, "control") for a, b in rep.get("controls", [])]
    candidates += [(c, base, "vs baseline") for c in sweep["configs"] if c != base]
    for a, b, role in candidates:
        if a in rows and b in rows and frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            out.append((a, b, role))
    return out


def in_holm_family(sweep: dict[str, Any], role: str) -> bool:
    """Whether a comparison of this role is in the family Holm adjusts over: `report.family` "all" (default)
    takes every comparison on the page, "stated" only the primary comparisons and the stated controls."""
    family = (sweep.get("report") or {}).get("family", "all")
    if family not in FAMILIES:
        raise ValueError(f"report.family must be one of {', '.join(FAMILIES)}; got {family!r}")
    return family == "all" or role in ("primary", "control")


def holm_steps(pvalues: list[float]) -> list[Optional[int]]:
    """Each p-value's 0-based step in Holm's procedure (its rank among the valid p-values; None for NaN)."""
    valid = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    steps: list[Optional[int]] = [None] * len(pvalues)
    for rank, (_, i) in enumerate(valid):
        steps[i] = rank
    return steps


def equivalence_columns(sweep: dict[str, Any], res: list[dict[str, Any]], fam: list[tuple[str, str, str]],
                        rows: dict[str, dict[str, Any]], members: list[int]) -> list[str]:
    """Per comparison, the cells of the equivalence reading (`report.equivalence_margin`, in accuracy units):
    the paired TOST p at ±margin and its Holm-adjusted p over the primary comparisons and over the family, and
    the paired minimum detectable effect (80 % power) at the level Holm actually compared the comparison's paired
    p with (α / (m − step); for a primary comparison within the primary comparisons, the stated test)."""
    margin = (sweep.get("report") or {}).get("equivalence_margin")
    if margin is None:
        return [""] * len(fam)
    primary = [i for i, (_, _, role) in enumerate(fam) if role == "primary"]
    tost = [stats.tost_paired(rows[a]["accs"], rows[b]["accs"], margin) for a, b, _ in fam]
    paired_p = [r["paired"]["p"] for r in res]
    tost_family, tost_primary = (dict(zip(group, stats.holm([tost[i]["p"] for i in group])))
                                 for group in (members, primary))
    levels = {}
    for group in (members, primary):  # primary last: its level is the stated test's
        for i, step in zip(group, holm_steps([paired_p[i] for i in group])):
            if step is not None:
                levels[i] = stats.holm_level(len(group), step)
    cells = []
    for i, r in enumerate(res):
        lv = levels.get(i)
        mde = ("–" if lv is None else
               f"{_pp(stats.min_detectable_effect(r['paired']['se'], r['paired']['n'] - 1, alpha=lv)).lstrip('+')} "
               f"({lv:.3g})")
        family_p, primary_p = (_p(held[i]) if i in held else "–" for held in (tost_family, tost_primary))
        cells.append(f" | {_p(tost[i]['p'])} | {primary_p} | {family_p} | {mde}")
    return cells


def comparisons_block(sweep: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    """The family's table: Welch and paired differences with 95 % intervals and p, exact permutation p with
    their floors, minimum detectable effects at 80 % power, Hedges' g, Holm-adjusted paired p; with
    `report.equivalence_margin`, the equivalence reading (`equivalence_columns`)."""
    fam = comparison_family(sweep, rows)
    if not fam:
        return "No comparison has results yet.\n"
    rep = sweep.get("report") or {}
    res = [stats.compare(rows[a]["accs"], rows[b]["accs"]) for a, b, _ in fam]
    paired_p = [r["paired"]["p"] for r in res]
    members = [i for i, (_, _, role) in enumerate(fam) if in_holm_family(sweep, role)]
    holm_all = dict(zip(members, stats.holm([paired_p[i] for i in members])))
    primary = [i for i, (_, _, role) in enumerate(fam) if role == "primary"]
    holm_primary = dict(zip(primary, stats.holm([paired_p[i] for i in primary])))
    margin = rep.get("equivalence_margin")
    extra_head = (f" | TOST p (±{100 * margin:g} pp) | Holm TOST p (primary) | Holm TOST p (family) "
                  "| MDE pp, paired, at Holm's level (level)" if margin is not None else "")
    lines = ["| comparison (a − b) | role | n | Δ pp, Welch [95 % CI] | Welch p | Δ pp, paired [95 % CI] | paired p "
             "| exact perm. p (floor) | exact paired perm. p (floor) | MDE pp (Welch / paired) | Hedges g "
             "| Holm p (primary) | Holm p (family)" + extra_head + " |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" * 4 if extra_head else "")]
    extra = equivalence_columns(sweep, res, fam, rows, members)
    for i, ((a, b, role), r) in enumerate(zip(fam, res)):
        w, pr = r["welch"], r["paired"]
        g = "–" if math.isnan(r["g"]) else f"{r['g']:+.2f}"
        lines.append(
            f"| `{a}` − `{b}` | {role if i in holm_all else role + ' (description)'} | {rows[a]['n']}/{rows[b]['n']} "
            f"| {_pp(w['diff'])} [{_pp(w['lo'])}, {_pp(w['hi'])}] | {_p(w['p'])} "
            f"| {_pp(pr['diff'])} [{_pp(pr['lo'])}, {_pp(pr['hi'])}] | {_p(pr['p'])} "
            f"| {_p(r['perm']['p'])} ({r['perm']['floor']:.2g}) | {_p(r['perm_paired']['p'])} "
            f"({r['perm_paired']['floor']:.2g}) | {_pp(r['mde_welch']).lstrip('+')} / "
            f"{_pp(r['mde_paired']).lstrip('+')} | {g} "
            f"| {_p(holm_primary[i]) if i in holm_primary else '–'} | {_p(holm_all[i]) if i in holm_all else '–'}"
            f"{extra[i]} |")
    lines.append("")
    lines.append(f"Family: {len(members)} comparisons ({len(primary)} primary)"
                 + (f"; {len(fam) - len(members)} more rows are description, outside the family"
                    if len(members) < len(fam) else "")
                 + ". Holm's adjustment is applied to the paired t-test p-values, over the primary comparisons (the "
                   "stated test) and over the whole family.")
    if margin is not None:
        lines.append(f"Equivalence: two one-sided paired t-tests at ±{100 * margin:g} points (`report.equivalence_margin`"
                     "); a difference is shown equivalent when its Holm-adjusted TOST p is below 0.05. The last "
                     "column is the paired minimum detectable effect (80 % power) at the level Holm compared the "
                     "comparison's paired p with: within the primary comparisons for a primary one (the stated "
                     "test), within the family for the others.")
    return "\n".join(lines) + "\n"


def _reading(p_diff: float, p_equiv: float) -> str:
    if p_diff < 0.05:
        return "differs"
    return "equivalent" if p_equiv < 0.05 else "inconclusive"


def stated_test(sweep: dict[str, Any], summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The stated test of a sweep over several datasets (tasks): the primary comparisons and controls of every
    dataset as one family. Per comparison: {dataset, a, b, role, paired (`stats.paired`), tost_p (at
    `report.equivalence_margin`), holm_p, holm_tost_p, holm_over (the size of the group Holm adjusted over: the
    primary comparisons of all datasets for a primary one, the stated test; the whole family for a control),
    reading ("differs" when holm_p < 0.05, "equivalent" when holm_tost_p < 0.05, else "inconclusive")}."""
    margin = (sweep.get("report") or {}).get("equivalence_margin")
    if margin is None:
        raise ValueError("report.equivalence_margin is needed for the stated test of a sweep over several datasets")
    out = [{"dataset": dataset, "a": a, "b": b, "role": role, "paired": stats.paired(rows[a]["accs"], rows[b]["accs"]),
            "tost_p": stats.tost_paired(rows[a]["accs"], rows[b]["accs"], margin)["p"]}
           for dataset, rows in summary.items() for a, b, role in comparison_family(sweep, rows)
           if role in ("primary", "control")]
    for group in (out, [c for c in out if c["role"] == "primary"]):  # primary last: its group is the stated test
        for c, p, t in zip(group, stats.holm([c["paired"]["p"] for c in group]), stats.holm([c["tost_p"] for c in group])):
            c.update(holm_p=p, holm_tost_p=t, holm_over=len(group))
    for c in out:
        c["reading"] = _reading(c["holm_p"], c["holm_tost_p"])
    return out


def stated_test_block(sweep: dict[str, Any], summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The table of `stated_test`, with how to read it."""
    tests = stated_test(sweep, summary)
    if not tests:
        return "No stated comparison has results yet.\n"
    margin = sweep["report"]["equivalence_margin"]
    primary = sum(c["role"] == "primary" for c in tests)
    lines = [f"| dataset | comparison (a − b) | role | n | Δ pp, paired [95 % CI] | paired p | Holm p | "
             f"TOST p (±{100 * margin:g} pp) | Holm TOST p | Holm over | reading |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for c in tests:
        pr = c["paired"]
        over = f"the {primary} primary" if c["role"] == "primary" else f"all {len(tests)}"
        reading = c["reading"] if c["reading"] == "inconclusive" else f"**{c['reading']}**"
        lines.append(f"| `{c['dataset']}` | `{c['a']}` − `{c['b']}` | {c['role']} | {pr['n']} | {_pp(pr['diff'])} "
                     f"[{_pp(pr['lo'])}, {_pp(pr['hi'])}] | {_p(pr['p'])} | {_p(c['holm_p'])} | {_p(c['tost_p'])} | "
                     f"{_p(c['holm_tost_p'])} | {over} | {reading} |")
    lines += ["", f"Holm's adjustment runs over the datasets: a primary comparison within the {primary} primary "
              f"comparisons (the stated test), a control within all {len(tests)} stated comparisons. Reading: "
              "**differs** when the adjusted paired p is below 0.05, **equivalent** (within the margin) when the "
              "adjusted TOST p is, inconclusive otherwise. The per-dataset tables below adjust within one dataset."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- learning rates
def lr_check_block(lr_sweep: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """Mean validation accuracy ± std per family and peak rate; the best rate per family in bold."""
    table: dict[str, dict[float, list[float]]] = {}
    for r in records:
        family = r["config"].rsplit("-lr", 1)[0]
        table.setdefault(family, {}).setdefault(float(r["train"]["lr"]), []).append(float(r["val_acc"]))
    if not table:
        return "No finished runs yet.\n"
    rates = sorted({lr for per in table.values() for lr in per})
    lines = ["| family | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | chosen |",
             "|---|" + "---:|" * len(rates) + "---|"]
    for family in [c.rsplit("-lr", 1)[0] for c in lr_sweep["configs"]]:
        per = table.pop(family, None)
        if per is None:
            continue
        best = max(per, key=lambda lr: np.mean(per[lr]))
        cells = []
        for lr in rates:
            v = per.get(lr)
            text = "–" if not v else f"{_ms(v)} (n={len(v)})"
            cells.append(f"**{text}**" if lr == best and v else text)
        lines.append(f"| `{family}` | " + " | ".join(cells) + f" | {best:g} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- cost
def _train_step_flops(train: dict[str, Any], batch: int) -> Optional[int]:
    """Counted FLOPs of one classification training step (None for a dense task: a detector's step depends on its
    proposals and needs targets; the backbone's share is the classification model's)."""
    if train.get("task", "classification") != "classification":
        return None
    cfg = TrainConfig(**{k: v for k, v in train.items() if k != "timm_kwargs"},
                      timm_kwargs=dict(train["timm_kwargs"])).resolved()
    model = build_model(model_spec(cfg, num_classes_of(cfg)))
    size = cfg.timm_kwargs.get("img_size", 28)
    return count_train_flops(model, (batch, 3, size, size))


def cost_block(sweep: dict[str, Any], rows: dict[str, dict[str, Any]], records: list[dict[str, Any]]) -> str:
    """Parameters, forward MFLOPs per image, training-step GFLOPs (forward + backward, one batch), epochs and
    mean measured training time per run, with ratios to the baseline."""
    base = sweep["baseline"]
    info = {}
    for config, row in rows.items():
        recs = [r for r in records if r["config"] == config]
        train = recs[0]["train"]
        info[config] = {"params": row["params"], "flops": row["flops"], "epochs": train["epochs"],
                        "step": _train_step_flops(train, train["batch_size"]), "batch": train["batch_size"],
                        "time": float(np.mean([r["train_time_s"] for r in recs]))}
    b = info.get(base)
    of = " (backbone)" if any(r.get("flops_of") == "backbone" for r in rows.values()) else ""
    lines = [f"| configuration | params | × | forward MFLOPs/image{of} | training-step GFLOPs (batch) | × | epochs "
             "| training FLOPs × | mean training time (s) | × |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for config, i in info.items():
        ratio = (lambda key: f"{i[key] / b[key]:.2f}" if b and i[key] and b[key] else "–")
        counted = b and i["step"] and b["step"]
        total = f"{i['step'] * i['epochs'] / (b['step'] * b['epochs']):.2f}" if counted else "–"
        step = f"{i['step'] / 1e9:.2f} ({i['batch']})" if i["step"] else f"– ({i['batch']})"
        lines.append(f"| `{config}` | {i['params'] / 1e3:.0f}k | {ratio('params')} | {i['flops'] / 1e6:.1f} "
                     f"| {step} | {ratio('step')} | {i['epochs']} | {total} "
                     f"| {i['time']:.0f} | {ratio('time')} |")
    return "\n".join(lines) + "\n"


def curves_block(sweep: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """How flat the training curves were at the end, per configuration: validation accuracy after the last
    epoch, what the last epoch added to it (mean and range over seeds), and the train − validation gap then."""
    name = records[0].get("headline", "acc") if records else "acc"  # the task's metric: acc, miou, map
    val, trained = f"val_{name}", f"train_{name}"
    lines = [f"| configuration | n | epochs | val {name} % after the last epoch | last epoch's gain, pp (mean [min, "
             f"max]) | train − val, pp |", "|---|---:|---:|---:|---:|---:|"]
    gains_all = []
    for config in sweep["configs"]:
        hists = [r["history"] for r in records if r["config"] == config and len(r["history"]) >= 2]
        if not hists:
            continue
        gains = [h[-1][val] - h[-2][val] for h in hists]
        gaps = [h[-1][trained] - h[-1][val] for h in hists if trained in h[-1]]
        gains_all += gains
        lines.append(f"| `{config}` | {len(hists)} | {len(hists[0])} | {_ms([h[-1][val] for h in hists])} "
                     f"| {_pp(float(np.mean(gains)), 2)} [{_pp(min(gains), 2)}, {_pp(max(gains), 2)}] "
                     f"| {_pp(float(np.mean(gaps))) if gaps else '–'} |")
    if gains_all:
        what = "validation accuracy" if name == "acc" else f"validation {name}"
        lines += ["", f"Over all {len(gains_all)} runs the last epoch added {_pp(float(np.mean(gains_all)), 2)} points "
                      f"of {what} on average ({_pp(min(gains_all), 2)} to {_pp(max(gains_all), 2)})."]
    return "\n".join(lines) + "\n"


def curves_figure(sweep: dict[str, Any], records: list[dict[str, Any]], configs: list[str]) -> Any:
    """Validation accuracy and training loss per epoch, mean over seeds, one line per configuration."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(1, 2, subplot_titles=["validation accuracy (%)", "training loss"])
    for config in configs:
        hists = [r["history"] for r in records if r["config"] == config]
        if not hists:
            continue
        epochs = min(len(h) for h in hists)
        x = list(range(1, epochs + 1))
        for col, key, scale in ((1, "val_acc", 100.0), (2, "train_loss", 1.0)):
            y = [scale * float(np.mean([h[e][key] for h in hists])) for e in range(epochs)]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=config, legendgroup=config,
                                     showlegend=col == 1), 1, col)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title="Training curves (mean over seeds)", width=1000, height=430, template="plotly_white")
    return fig


# ----------------------------------------------------------------------------- chart specialisation
def _chart_series(recs: list[dict[str, Any]], key: str) -> list[list[float]]:
    """Per run: [value at init, after epoch 1, ..., after the last epoch] of a chart statistic."""
    return [[r.get("chart_init", {}).get(key, math.nan)] + [h.get(key, math.nan) for h in r["history"]]
            for r in recs]


def specialisation_blocks(sweep: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, str]:
    """Chart similarity at initialisation, after the first epoch and at the end, per configuration; and for
    KUA the memberships and the accuracy with one-hot memberships at inference."""
    lines = ["| configuration | variant | charts | kernel | expands | n | key cosine: init → epoch 1 → end "
             "| map JS (bits ×1000): init → epoch 1 → end |",
             "|---|---|---:|---:|---|---:|---|---|"]
    kua = ["| configuration | n | max membership: init → end (1/H = uniform) | test acc % soft | test acc % one-hot "
           "| Δ pp |", "|---|---:|---|---:|---:|---:|"]
    for config in sweep["configs"]:
        recs = [r for r in records if r["config"] == config and r.get("chart_init")]
        if not recs or recs[0]["num_charts"] in (None, 1):
            continue
        t = recs[0]["train"]
        cells = []
        for key, scale in (("chart_cosine", 1.0), ("chart_js", 1000.0)):
            series = _chart_series(recs, key)
            picks = [[s[0] for s in series], [s[1] for s in series], [s[-1] for s in series]]
            cells.append(" → ".join(_ms(v, scale, 3 if scale == 1 else 2) for v in picks))
        lines.append(f"| `{config}` | {t['variant']} | {t['num_charts']} | {t['kernel_size']} | {t['expand_from']} "
                     f"| {len(recs)} | {cells[0]} | {cells[1]} |")
        if t["variant"] == "kua":
            series = _chart_series(recs, "membership_max")
            soft = [r["test_acc"] for r in recs]
            hard = [r.get("test_acc_one_hot", math.nan) for r in recs]
            kua.append(f"| `{config}` | {len(recs)} | {_ms([s[0] for s in series], 1, 3)} → "
                       f"{_ms([s[-1] for s in series], 1, 3)} | {_ms(soft)} | {_ms(hard)} "
                       f"| {_pp(float(np.mean(hard) - np.mean(soft)))} |")
    blocks = {"chart-similarity": "\n".join(lines) + "\n" if len(lines) > 2 else "No finished runs yet.\n",
              "chart-membership": "\n".join(kua) + "\n" if len(kua) > 2 else "No KUA run yet.\n"}
    usage = usage_block(sweep, records)
    if usage:
        blocks["chart-usage"] = usage
    return blocks


def usage_block(sweep: dict[str, Any], records: list[dict[str, Any]]) -> Optional[str]:
    """KUA's chart usage (`mkviz.explain.specialisation.chart_usage`) for the configurations whose runs logged it:
    the usage entropy at initialisation and at the end (log2 H: every chart used alike; 0: a collapse onto one
    chart; mean over layers), the least- and most-used chart's share at the end (per layer, then the mean over
    layers: chart c of one layer is not chart c of another), and the range of the per-class entropies at the end
    (per class and layer, mean over layers; runs that logged per-class usage only averaged over layers by chart
    index, which mixes unrelated charts, show "–"). None when no run logged it."""
    lines = ["| configuration | n | usage entropy, bits (uniform = log2 H): init → end | least / most used chart, "
             "share at end (uniform = 1/H) | per-class usage entropy at end, bits: min – max |",
             "|---|---:|---|---|---|"]
    for config in sweep["configs"]:
        recs = [r for r in records if r["config"] == config and "chart_usage_entropy" in r["history"][-1]]
        if not recs:
            continue
        init = [r["chart_init"]["chart_usage_entropy"] for r in recs]
        end = [r["history"][-1]["chart_usage_entropy"] for r in recs]
        usage = [np.asarray(r["history"][-1]["chart_usage_layers"]) for r in recs]  # (layers, H) per run
        least, most = ([float(np.mean(pick(u, axis=1))) for u in usage] for pick in (np.min, np.max))
        by_class = [float(np.mean([usage_entropy_of(layer) for layer in per_layer])) for r in recs
                    for per_layer in r["history"][-1].get("chart_usage_by_class_layers", {}).values()]
        classes = f"{min(by_class):.3f} – {max(by_class):.3f}" if by_class else "–"
        lines.append(f"| `{config}` | {len(recs)} | {_ms(init, 1, 3)} → {_ms(end, 1, 3)} "
                     f"| {_ms(least, 1, 3)} / {_ms(most, 1, 3)} | {classes} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else None


def usage_entropy_of(usage: list[float]) -> float:
    """`usage_entropy` of a logged usage list."""
    return usage_entropy(torch.tensor(usage, dtype=torch.float64))


def specialisation_figure(sweep: dict[str, Any], records: list[dict[str, Any]]) -> Optional[Any]:
    """Chart key cosine and map JS per epoch (0 = initialisation), mean over seeds, per configuration."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(1, 2, subplot_titles=["key cosine between charts", "map JS between charts (bits)"])
    any_trace = False
    for config in sweep["configs"]:
        recs = [r for r in records if r["config"] == config and r.get("chart_init")]
        if not recs or recs[0]["num_charts"] in (None, 1):
            continue
        for col, key in ((1, "chart_cosine"), (2, "chart_js")):
            series = _chart_series(recs, key)
            n = min(len(s) for s in series)
            y = [float(np.nanmean([s[e] for s in series])) for e in range(n)]
            fig.add_trace(go.Scatter(x=list(range(n)), y=y, mode="lines+markers", name=config, legendgroup=config,
                                     showlegend=col == 1), 1, col)
            any_trace = True
    fig.update_xaxes(title_text="epoch (0: initialisation)")
    fig.update_layout(title="Do the charts drift apart? (mean over seeds)", width=1000, height=430,
                      template="plotly_white")
    return fig if any_trace else None


def page_link(page: str | Path, target: str | Path) -> str:
    """`target`'s path relative to the folder of `page` (for links between generated pages)."""
    return os.path.relpath(Path(target), Path(page).parent)
