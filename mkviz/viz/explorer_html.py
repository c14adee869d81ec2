"""Kernel-free explorers: the chart explorer, the chart-count explorer and the key atlas as self-contained HTML.

    html = chart_explorer_html(model, images, masks=masks, class_names=names)     # a page (str)
    save_html("explorer.html", html)                                              # refuses to overwrite
    chart_count_explorer_html({1: m1, 2: m2, 4: m4, 8: m8}, images, accuracies={1: .81, ...})
    chart_explorer_html(model, scenes, instance_masks=[m1, m2])                   # + same / other / background
    key_atlas_html(model, images)                                                 # the atlas and the fused map
    embedded_data(html)                                                           # the embedded arrays, decoded

`ChartExplorer.to_html()` / `.save_html(path)` (mkviz.viz.explorers) call these with the explorer's own
models, images and state. The arrays are precomputed by mkviz.viz.explorer_data and embedded in the page.

The page draws the figures `mkviz.viz.figures` builds (their layouts are embedded as templates) with plotly.js,
either inlined from the installed plotly package or read from a shared local copy, and updates them in the
browser (mkviz/viz/assets/explorer.js): image, layer, head, query (sliders, or a click on any map or atlas
point), chart count, similarity kind, shared colour scale. The page requests nothing from the network.
"""
from __future__ import annotations

import hashlib
import html as html_lib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..explain import metrics
from . import figures
from .explorer_data import (decode_array, display_sources, encode_arrays, evidence_masks, explorer_options,
                            figure_json, json_script, model_data, model_inputs)
from .scene_view import instance_masks_list, scene_region_bars

__all__ = ["chart_explorer_html", "chart_count_explorer_html", "key_atlas_html", "save_html", "embedded_data",
           "PLOTLY_JS_CHOICES", "MAX_DATA_BYTES"]

PLOTLY_JS_CHOICES = ("inline", "shared:<relative path>", "none")
MAX_DATA_BYTES = 48 * 2 ** 20  # refuse to write more embedded data than this per explorer (max_bytes)
DATA_VERSION = 1
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


def _maps_template(grid: Tuple[int, int], image_size: Tuple[int, int], charts: int, panels: int) -> dict:
    """`figures.chart_maps_figure` for 1 + charts shown panels (of `panels` reserved), its maps and image sources
    emptied (the page fills them)."""
    fused = np.zeros(grid, np.float32)
    blank = np.zeros((3, *image_size), np.uint8)
    fig = figures.chart_maps_figure(blank, fused, np.zeros((charts, *grid), np.float32), query=(0, 0),
                                    num_panels=panels, title="fused map and the charts' maps" if charts else
                                    "the fused map")
    spec = figure_json(fig)
    for t in spec["data"]:
        if t["type"] == "heatmap":
            t["z"] = []
    for im in spec["layout"].get("images", []):
        im["source"] = ""
    return spec


def _stat_templates(charts: int, evidence: bool, scene: bool = False) -> dict:
    zeros = [0.0] * charts
    out = dict(entropy=figure_json(figures.entropy_bars(zeros, fused=0.0, max_entropy=0.0,
                                                         title="entropy of the query's attention (nats)")))
    if evidence:
        out["evidence"] = figure_json(figures.evidence_bars(zeros, fused=0.0, chance=0.0))
    if scene:
        out["scene"] = figure_json(scene_region_bars(np.zeros((1 + charts, 3)), np.zeros(3)))
    return out


def _similarity_styles(kinds: Sequence[str]) -> dict:
    """{kind: {"trace": the heat-map trace of `figures.similarity_heatmap` (z emptied), "title"}}."""
    out = {}
    for kind in kinds:
        spec = figure_json(figures.similarity_heatmap(np.eye(2), kind))
        trace = spec["data"][0]
        trace.update(z=[], x=[], y=[])
        out[kind] = dict(trace=trace, layout=spec["layout"])
    return out


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def _plotly_tag(plotly_js: str) -> str:
    if plotly_js == "inline":
        from plotly.offline import get_plotlyjs
        return f"<script>{get_plotlyjs()}</script>"
    if plotly_js == "none":
        return ""
    if isinstance(plotly_js, str) and plotly_js.startswith("shared:") and len(plotly_js) > 7:
        path = plotly_js[7:]
        if _SCHEME.match(path) or path.startswith("/"):
            raise ValueError(f"plotly_js: the shared copy must be a relative local path (no scheme, no leading /); "
                             f"got {path!r}")
        return f'<script src="{html_lib.escape(path, quote=True)}"></script>'
    raise ValueError(f"plotly_js must be one of {', '.join(map(repr, PLOTLY_JS_CHOICES))}; got {plotly_js!r}")


def _render(payload: dict, plotly_js: str, full_page: bool, element_id: Optional[str], title: str) -> str:
    """The fragment (a div, its data, the explorer's css and js) or a whole page around it."""
    plotly_tag = _plotly_tag(plotly_js)
    if not isinstance(full_page, bool):
        raise ValueError(f"full_page: expected True or False; got {full_page!r}")
    data = json_script(payload)
    eid = element_id or "mkviz-" + hashlib.sha1(data.encode()).hexdigest()[:10]
    if not re.fullmatch(r"[A-Za-z][\w-]*", eid):
        raise ValueError(f"element_id: expected a letter then letters, digits, '-' or '_'; got {eid!r}")
    fragment = (f'<style>{_asset("explorer.css")}</style>\n{plotly_tag}\n<script>{_asset("explorer.js")}</script>\n'
                f'<div class="mkviz-explorer" id="{eid}"></div>\n'
                f'<script type="application/json" id="{eid}-data">{data}</script>\n'
                f'<script>mkvizExplorer.mount("{eid}");</script>\n')
    if not full_page:
        return fragment
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{html_lib.escape(title)}</title>\n</head>\n<body>\n{fragment}</body>\n</html>\n')


def _initial_state(layers: List[str], grid: Tuple[int, int], layer: Union[str, int, None],
                   query: Optional[Tuple[int, int]]) -> dict:
    if layer is None:
        li = 0
    elif isinstance(layer, int) and not isinstance(layer, bool) and -len(layers) <= layer < len(layers):
        li = layer % len(layers)
    elif layer in layers:
        li = layers.index(layer)
    else:
        raise ValueError(f"layer: expected None, an index in [-{len(layers)}, {len(layers)}) or one of {layers}; "
                         f"got {layer!r}")
    gh, gw = grid
    r, c = (gh // 2, gw // 2) if query is None else query
    if not (isinstance(r, int) and isinstance(c, int) and 0 <= r < gh and 0 <= c < gw):
        raise ValueError(f"query: expected (row, col) with 0 <= row < {gh} and 0 <= col < {gw}; got {query!r}")
    return dict(layer=li, query=[r, c])


def _payload(kind: str, models: List[Tuple[int, dict]], x: torch.Tensor, masks: Optional[torch.Tensor],
             sources: List[str], opts: dict, extra: dict) -> dict:
    """The JSON the page reads: shared metadata, one entry per model (arrays base64), figure templates."""
    ref = models[0][1]
    grid = ref["grid"]
    layers = list(ref["layers"])
    for h, m in models:
        if list(m["layers"]) != layers or m["grid"] != grid or m["heads"] != ref["heads"]:
            raise ValueError(f"models_by_charts: the model with {h} charts has other layers, grid or heads than "
                             f"the one with {models[0][0]}; the explorer compares one architecture")
    max_charts = max(m["charts"] for _, m in models) if opts["maps"] == "charts" else 0
    image_size = (int(x.shape[-2]), int(x.shape[-1]))
    chance = None if masks is None else [float(metrics.patch_coverage(m, grid.grid_size).mean()) for m in masks]
    scene = ref.get("scene_chance") is not None
    entries = []
    for h, m in models:
        charts = m["charts"] if opts["maps"] == "charts" else 0
        entry = dict(charts=m["charts"], predicted=m["predicted"],
                     layers={l: encode_arrays(a, opts["dtype"]) for l, a in m["layers"].items()},
                     maps=_maps_template(grid.grid_size, image_size, charts, 1 + max_charts),
                     stats=_stat_templates(charts, masks is not None, scene))
        if opts["atlas"]:
            entry["atlas"] = m["atlas_template"]
        entries.append(entry)
    return dict(version=DATA_VERSION, kind=kind, images=sources, image_size=list(image_size),
                grid=list(grid.grid_size), prefix=grid.num_prefix_tokens, layers=layers, num_heads=ref["heads"],
                heads=opts["heads"], dtype=opts["dtype"], maps=opts["maps"], chance=chance,
                similarity=opts["similarity"] if opts["maps"] == "charts" else [],
                similarity_styles=_similarity_styles(opts["similarity"]) if opts["maps"] == "charts" else {},
                scene_chance=encode_arrays({"c": ref["scene_chance"]}, "float32")["c"] if scene else None,
                models=entries, **extra)


def _explorer_html(kind: str, models: Sequence[Tuple[int, nn.Module]], images: Any, masks: Any, opts: dict,
                   kw: dict, extra: dict) -> str:
    """Record every model on the images, embed the arrays and the figure templates, render the page."""
    x, sample_masks = model_inputs(images)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    scenes = instance_masks_list(kw.get("instance_masks"), masks, x.shape[0], size)
    masks = sample_masks if masks is None and scenes is None else masks
    ev = evidence_masks(masks, x.shape[0], size)
    sources = display_sources(kw.get("display_images"), x)
    data = [(h, model_data(m, x, ev, opts, name=f"models_by_charts[{h}]" if kind == "count" else "model",
                           scenes=scenes)) for h, m in models]
    for h, d in data:
        if kind == "count" and d["charts"] != h:
            raise ValueError(f"models_by_charts[{h}]: the model has {d['charts']} charts, not {h}")
    initial = _initial_state(list(data[0][1]["layers"]), data[0][1]["grid"].grid_size, kw.get("layer"),
                             kw.get("query"))
    payload = _payload(kind, data, x, ev, sources, opts, dict(extra, initial=initial))
    size_bytes = len(json_script(payload))
    if size_bytes > kw["max_bytes"]:
        raise ValueError(f"max_bytes: the embedded data would be {size_bytes / 2 ** 20:.1f} MiB, over max_bytes="
                         f"{kw['max_bytes']}; pass fewer images, layers=[...], heads='mean' or dtype='float16'")
    return _render(payload, kw["plotly_js"], kw["full_page"], kw.get("element_id"), kw["title"])


def _labels_extra(class_names: Optional[Sequence[str]], labels: Any, n: int) -> dict:
    names = None if class_names is None else [str(c) for c in class_names]
    ys = None if labels is None else [int(v) for v in torch.as_tensor(labels).reshape(-1)]
    if ys is not None and len(ys) != n:
        raise ValueError(f"labels: expected one label per image ({n}); got {len(ys)}")
    return dict(class_names=names, labels=ys)


def chart_explorer_html(model: nn.Module, images: Any, masks: Any = None, *, instance_masks: Any = None,
                        class_names: Optional[Sequence[str]] = None, labels: Any = None, display_images: Any = None,
                        layers: Any = None, layer: Union[str, int, None] = None,
                        query: Optional[Tuple[int, int]] = None, heads: str = "all", dtype: str = "float16",
                        similarity: Sequence[str] = metrics.SIMILARITY_KINDS, atlas: bool = True,
                        plotly_js: str = "inline", full_page: bool = True, element_id: Optional[str] = None,
                        max_bytes: int = MAX_DATA_BYTES, title: str = "mkviz chart explorer") -> str:
    """`mkviz.ChartExplorer` as self-contained HTML: the fused map beside the H chart maps, chart similarity,
    per-chart entropy (and share on evidence), the key atlas; no kernel.

    Args:
        model: a manifold-key ViT / DeiT. images: float (B, 3, H, W) model inputs (or a batched `Sample`, whose
            evidence masks and labels are used). masks: optional (B, H, W) evidence masks.
        instance_masks: instead of masks, B tensors (K_b, H, W) of each scene's instance silhouettes (later
            instances on top): the page adds, for the current query, the share of each map (fused and every
            chart) on the same object (the instance covering the query's patch for at least half its pixels),
            the other objects and the background, one grouped bar chart with chance (uniform attention) dashed
            per region; a query on no object has no "same" bar ("query on the background"). Precomputed per
            image, head and query (`mkviz.viz.scene_view`); the head mean is the mean of the heads' shares.
        class_names, labels (B,): shown in the info line. display_images: (B, 3, H, W) uint8 or [0, 1] pixels
            to draw (default: the inputs, min-max rescaled).
        layers: which layers to record (`mkviz.select_layers` spec; default every manifold layer);
            layer: the one shown first (name or index); query: the first (row, col) on the patch grid.
        heads: "all" (every head; the page averages them for "mean") or "mean" (the head mean only: a
            heads-th of the rows). dtype: "float16" (half the size) or "float32" (the recorded values exactly)
            for the rows; statistics, similarity and atlas are float32.
        similarity: the kinds offered (`mkviz.explain.metrics.SIMILARITY_KINDS`). atlas: include the key atlas.
        plotly_js: "inline" (plotly.js of the installed plotly package inside the page, ~4.6 MB), "shared:<relative
            path>" (a <script src> to a local copy, e.g. one per site) or "none" (the host page loads plotly.js).
        full_page: a whole HTML document, or a fragment to embed (a div, its data and its scripts).
        element_id: the fragment's div id (default: derived from the data). max_bytes: refuse larger data.
    Returns the HTML text; `save_html(path, text)` writes it.
    """
    n = model_inputs(images)[0].shape[0]
    labels = labels if labels is not None or not hasattr(images, "label") else images.label
    opts = explorer_options(layers, heads, dtype, similarity, "charts", atlas)
    kw = dict(display_images=display_images, layer=layer, query=query, plotly_js=plotly_js, full_page=full_page,
              element_id=element_id, max_bytes=max_bytes, title=title, instance_masks=instance_masks)
    return _explorer_html("chart", [(0, model)], images, masks, opts, kw, _labels_extra(class_names, labels, n))


def chart_count_explorer_html(models_by_charts: Mapping[int, nn.Module], images: Any, masks: Any = None, *,
                              accuracies: Optional[Mapping[int, float]] = None, baseline: Optional[float] = None,
                              charts: Optional[int] = None, display_images: Any = None, layers: Any = None,
                              layer: Union[str, int, None] = None, query: Optional[Tuple[int, int]] = None,
                              heads: str = "mean", dtype: str = "float16",
                              similarity: Sequence[str] = metrics.SIMILARITY_KINDS, atlas: bool = False,
                              plotly_js: str = "inline", full_page: bool = True, element_id: Optional[str] = None,
                              max_bytes: int = MAX_DATA_BYTES, title: str = "mkviz chart-count explorer") -> str:
    """`mkviz.ChartCountExplorer` as self-contained HTML: the same images through models with different chart
    counts; a chart-count slider switches model (maps, similarity, statistics and, with accuracies, the marked
    point of the accuracy curve). models_by_charts: {H: model with H charts} (same architecture otherwise);
    accuracies: {H: accuracy}; baseline: a dashed line; charts: the count shown first (default the largest).
    heads defaults to "mean": the rows of every model grow with 1 + H, and five models (1..16 charts) with every
    head are ~15 MiB for 4 Fashion-MNIST images in float16 against ~4 MiB for the head mean (heads="all" adds
    the per-head views). The other arguments are `chart_explorer_html`'s."""
    if not isinstance(models_by_charts, Mapping) or not models_by_charts:
        raise ValueError("models_by_charts: expected a non-empty {num_charts: model} mapping")
    counts = sorted(int(h) for h in models_by_charts)
    if charts is not None and charts not in counts:
        raise ValueError(f"charts: expected one of the chart counts {counts}; got {charts!r}")
    first = counts.index(charts if charts is not None else counts[-1])
    extra: Dict[str, Any] = dict(counts=counts, initial_model=first)
    if accuracies:
        acc = {int(h): float(a) for h, a in accuracies.items()}
        extra["accuracies"] = acc
        extra["accuracy_figure"] = figure_json(figures.accuracy_vs_charts(acc, baseline=baseline,
                                                                           current=counts[first]))
    opts = explorer_options(layers, heads, dtype, similarity, "charts", atlas)
    kw = dict(display_images=display_images, layer=layer, query=query, plotly_js=plotly_js, full_page=full_page,
              element_id=element_id, max_bytes=max_bytes, title=title)
    models = [(h, models_by_charts[h]) for h in counts]
    return _explorer_html("count", models, images, masks, opts, kw, extra)


def key_atlas_html(model: nn.Module, images: Any, *, display_images: Any = None, layers: Any = None,
                   layer: Union[str, int, None] = None, query: Optional[Tuple[int, int]] = None, heads: str = "all",
                   dtype: str = "float16", plotly_js: str = "inline", full_page: bool = True,
                   element_id: Optional[str] = None, max_bytes: int = MAX_DATA_BYTES,
                   title: str = "mkviz key atlas") -> str:
    """The key atlas (`mkviz.viz.key_atlas.key_atlas`: queries and every chart's keys in one 2-D projection) beside
    the fused map, as self-contained HTML: image, layer and head controls; a click on an atlas point or on
    the map selects that patch as the query (ringed in the atlas). Arguments as in `chart_explorer_html`."""
    opts = explorer_options(layers, heads, dtype, metrics.SIMILARITY_KINDS, "fused", True)
    kw = dict(display_images=display_images, layer=layer, query=query, plotly_js=plotly_js, full_page=full_page,
              element_id=element_id, max_bytes=max_bytes, title=title)
    return _explorer_html("atlas", [(0, model)], images, None, opts, kw, {})


def save_html(path: Union[str, Path], html: str, *, overwrite: bool = False) -> Path:
    """Write an explorer's HTML to path (parent folders created); an existing file is replaced only with
    overwrite=True. Returns the path."""
    if not isinstance(html, str) or "mkvizExplorer" not in html:
        raise ValueError("html: expected the text an mkviz.viz.explorer_html function returned")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"path: {path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def embedded_data(html: str, element_id: Optional[str] = None) -> dict:
    """The data an explorer page embeds (its first explorer, or the one with element_id), arrays decoded:
    payload["models"][m]["layers"][layer] = {"rows": (B, k, G, M, G), "entropy": (B, k, G, M), "evidence",
    "similarity": {kind: (B, k, H, H)}, "atlas": (B, k, (1 + H)·N, 2), "scene": (B, k, G, M, 3)} (k: head
    options, "mean" first; rows with heads="all": one per head, no mean); payload["scene_chance"]: (B, G, 3)."""
    pattern = r'<script type="application/json" id="(%s)-data">(.*?)</script>' % (
        re.escape(element_id) if element_id else r"[A-Za-z][\w-]*")
    match = re.search(pattern, html, flags=re.S)
    if match is None:
        raise ValueError(f"html: no explorer data found{f' for element_id={element_id!r}' if element_id else ''}")
    payload = json.loads(match.group(2))
    if payload.get("scene_chance"):
        payload["scene_chance"] = decode_array(payload["scene_chance"])
    for entry in payload["models"]:
        for arrays in entry["layers"].values():
            for k, v in arrays.items():
                arrays[k] = {s: decode_array(m) for s, m in v.items()} if k == "similarity" else decode_array(v)
    return payload
