"""Kernel-free explorers: the chart explorer, the chart-count explorer and the key atlas as self-contained HTML.

    html = chart_explorer_html(model, images, masks=masks, class_names=names)     # a page (str)
    save_html("explorer.html", html)                                              # refuses to overwrite
    chart_count_explorer_html({1: m1, 2: m2, 4: m4, 8: m8}, images, accuracies={1: .81, ...})
    key_atlas_html(model, images)                                                 # the atlas and the fused map
    embedded_data(html)                                                           # the embedded arrays, decoded

What `mkviz.ChartExplorer` computes from a running kernel is precomputed here, once, and embedded in the
page: for every image, recorded layer, head and patch query, the fused attention row and every chart's row
over the patch keys (rows (B, heads, G, 1 + H, G), G = gh·gw patches, as base64 float32 or float16), the
per-chart statistics of each query (entropy of the whole row over all N keys, prefix tokens included;
share of the map on the evidence mask), the chart similarity matrices of every similarity kind
(`mkviz.metrics.chart_similarity`, as `ChartExplorer` computes them) and the key atlas's 2-D points
(`mkviz.figures.key_atlas`). The head "mean" of the maps is the mean of the heads' rows (computed in the
page from the embedded rows, or embedded alone with heads="mean"); its statistics and atlas are mkviz's.

The page draws the figures `mkviz.figures` builds (their layouts are embedded as templates) with plotly.js,
either inlined from the installed plotly package or read from a shared local copy, and updates them in the
browser (mkviz/assets/explorer.js): image, layer, head, query (sliders, or a click on any map or atlas
point), chart count, similarity kind, shared colour scale. The page requests nothing from the network.

Supported models: manifold-key ViT / DeiT (`mkviz.convert`, `mkviz.create_model`, checkpoints). Swin's
window attention has no page form yet: use `mkviz.ChartExplorer` in a notebook.
"""
from __future__ import annotations

import base64
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
from torch.nn import functional as F

import mkviz
from mkviz import figures, maps, metrics

__all__ = ["chart_explorer_html", "chart_count_explorer_html", "key_atlas_html", "save_html", "embedded_data",
           "model_data", "PLOTLY_JS_CHOICES", "ROW_DTYPES", "HEAD_CHOICES"]

PLOTLY_JS_CHOICES = ("inline", "shared:<relative path>", "none")
ROW_DTYPES = ("float32", "float16")
HEAD_CHOICES = ("all", "mean")
MAX_DATA_BYTES = 48 * 2 ** 20  # refuse to write more embedded data than this per explorer (max_bytes)
DATA_VERSION = 1
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")


# --------------------------------------------------------------------------- inputs
def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {tuple(allowed)}; got {value!r}")


def _model_inputs(images: Any) -> Tuple[torch.Tensor, Any]:
    """(float (B, 3, H, W) model inputs, evidence masks or None) from a tensor or a batched `Sample`."""
    masks = getattr(images, "evidence_mask", None) if hasattr(images, "image") else None
    x = images.image if hasattr(images, "image") else images
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise ValueError(f"images: expected a float tensor (B, 3, H, W) or a batched Sample; got {type(x).__name__}")
    x = torch.as_tensor(x)
    x = x[None] if x.dim() == 3 else x
    if x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[0] < 1:
        raise ValueError(f"images: expected (B, 3, H, W) with B >= 1; got shape {tuple(x.shape)}")
    return (x.float() if x.is_floating_point() else x.float() / 255.0), masks


def _evidence(masks: Any, n: int, size: Tuple[int, int]) -> Optional[torch.Tensor]:
    """Evidence masks (B, H, W) as floats at the image size, or None."""
    if masks is None:
        return None
    m = torch.as_tensor(masks)
    m = m[None] if m.dim() == 2 else m
    if m.dim() != 3 or m.shape[0] != n:
        raise ValueError(f"masks: expected one evidence mask per image, (B={n}, H, W); got shape {tuple(m.shape)}")
    m = m.float()
    return m if tuple(m.shape[-2:]) == size else F.interpolate(m[:, None], size=size, mode="nearest")[:, 0]


def _png_sources(display_images: Any, x: torch.Tensor) -> List[str]:
    """One PNG data URI per image: display_images (uint8 or [0, 1]) or the inputs min-max rescaled."""
    src = x if display_images is None else torch.as_tensor(display_images)
    src = src[None] if src.dim() == 3 else src
    if src.shape[0] != x.shape[0]:
        raise ValueError(f"display_images: expected {x.shape[0]} images (one per input); got {src.shape[0]}")
    return [figures.image_source(im) for im in src]


def _check_model(model: Any, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name}: expected a manifold-key torch model (mkviz.convert); got {type(model).__name__}")
    if not hasattr(model, "patch_embed"):
        raise ValueError(f"{name}: {type(model).__name__} is not a timm VisionTransformer; the HTML explorers "
                         "support manifold-key ViT / DeiT (Swin: mkviz.ChartExplorer in a notebook)")
    return model


# --------------------------------------------------------------------------- one image's data
def _head_stack(attn: torch.Tensor, heads: str) -> torch.Tensor:
    """(M, heads, N, N) maps -> (M, k, N, N): the head mean first, then (heads="all") every head."""
    mean = attn.mean(1, keepdim=True)
    return torch.cat([mean, attn], 1) if heads == "all" else mean


def _head_options(num_heads: int, heads: str) -> List[Optional[int]]:
    return [None] + (list(range(num_heads)) if heads == "all" else [])


def _shares(patch_maps: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass on the evidence: (..., G) maps, (G,) coverage -> (...)."""
    return ((patch_maps * cov).sum(-1) / patch_maps.sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)


def _similarities(rec: Any, layer: str, heads: List[Optional[int]], kinds: Sequence[str]) -> Dict[str, np.ndarray]:
    """{kind: (k, H, H)} for each head option, as `ChartExplorer` computes them (one image)."""
    keys, attn = rec.chart_keys[layer], rec.chart_attention[layer]  # (1, H, N, C), (1, H, heads, N, N)
    d = keys.shape[-1] // attn.shape[2]
    out = {}
    for kind in kinds:
        mats = []
        for h in heads:
            if kind == "js":
                a = attn if h is None else attn[:, :, h:h + 1]
                mats.append(metrics.chart_similarity(chart_attn=a, kind="js"))
            else:
                k = keys if h is None else keys[..., h * d:(h + 1) * d]
                mats.append(metrics.chart_similarity(chart_keys=k, kind=kind))
        out[kind] = torch.stack(mats).numpy()
    return out


def _atlas_points(rec: Any, layer: str, heads: List[Optional[int]]) -> np.ndarray:
    """(k, (1 + H)·N, 2): the points of `figures.key_atlas` (queries, then each chart's keys) per head option."""
    out = []
    for h in heads:
        fig = figures.key_atlas(rec, layer, head=h)
        out.append(np.concatenate([np.stack([np.asarray(t.x), np.asarray(t.y)], -1) for t in fig.data[:-1]]))
    return np.stack(out).astype(np.float32)


def _atlas_template(rec: Any, layer: str) -> dict:
    """`figures.key_atlas` of the first image and layer (head mean) with its points emptied (the page fills them)."""
    spec = _figure_json(figures.key_atlas(rec, layer))
    for t in spec["data"]:
        t.update(x=[], y=[])
    return spec


def _layer_data(rec: Any, layer: str, grid: Any, cov: Optional[torch.Tensor], opts: dict) -> dict:
    """One image's arrays for one layer: rows (k_rows, G, M, G), entropy and evidence (k, G, M), similarity, atlas."""
    p = grid.num_prefix_tokens
    fused = rec.attention[layer][0][None]  # (1, heads, N, N)
    charts = rec.chart_attention[layer][0]  # (H, heads, N, N)
    allmaps = fused if opts["maps"] == "fused" else torch.cat([fused, charts])  # (M, heads, N, N)
    patch = allmaps[:, :, p:, p:]  # (M, heads, G, G)
    rows = patch if opts["heads"] == "all" else patch.mean(1, keepdim=True)
    stacked = _head_stack(allmaps[:, :, p:], opts["heads"])  # (M, k, G, N): the patch queries' whole rows
    out = dict(rows=rows.permute(1, 2, 0, 3).numpy(),
               entropy=metrics.attention_entropy(stacked).permute(1, 2, 0).numpy())
    if cov is not None:
        out["evidence"] = _shares(stacked[..., p:], cov).permute(1, 2, 0).numpy()
    heads = _head_options(fused.shape[1], opts["heads"])
    if opts["maps"] == "charts":
        out["similarity"] = _similarities(rec, layer, heads, opts["similarity"])
    if opts["atlas"]:
        out["atlas"] = _atlas_points(rec, layer, heads)
    return out


def _record_image(model: nn.Module, x: torch.Tensor, layers: Any) -> Tuple[Any, torch.Tensor]:
    """(full recording of one image (1, 3, H, W), class probabilities (classes,))."""
    with torch.no_grad(), mkviz.record_attention(model, layers=layers, charts=True, to_cpu=True,
                                                 dtype=torch.float32) as rec:
        logits = model(x.to(next(model.parameters()).device))
    return rec, logits.detach().float().softmax(-1)[0].cpu()


def _manifold_layers(rec: Any, model: nn.Module, name: str) -> List[str]:
    if rec.layout:
        raise ValueError(f"{name}: Swin window attention has no HTML explorer; use mkviz.ChartExplorer in a notebook")
    layers = [n for n in rec.layers if n in rec.chart_attention]
    if not layers:
        raise ValueError(f"{name}: {type(model).__name__} has no recorded manifold-key attention layer: convert it "
                         "first (mkviz.convert(model, variant, num_charts)) or choose layers= among its manifold "
                         "layers")
    return layers


def model_data(model: nn.Module, x: torch.Tensor, masks: Optional[torch.Tensor], opts: dict,
               name: str = "model") -> dict:
    """Every embedded array of one model on images x (B, 3, H, W): {"charts", "heads", "grid", "layers":
    {layer: {array: (B, ...)}}, "predicted": [(class, p)]} (arrays stacked over the images)."""
    model = _check_model(model, name).eval()
    grid = maps.patch_grid(model, tuple(x.shape[-2:]))
    per_image, predicted, layers = [], [], None
    for i in range(x.shape[0]):
        rec, probs = _record_image(model, x[i:i + 1], opts["layers"])
        layers = layers or _manifold_layers(rec, model, name)
        cov = None if masks is None else metrics.patch_coverage(masks[i], grid.grid_size).reshape(-1)
        per_image.append({l: _layer_data(rec, l, grid, cov, opts) for l in layers})
        predicted.append((int(probs.argmax()), float(probs.max())))
        if i == 0 and opts["atlas"]:
            atlas = _atlas_template(rec, layers[0])
    first = model.get_submodule(layers[0])
    stacked = {l: {k: (np.stack([im[l][k] for im in per_image]) if k != "similarity" else
                       {s: np.stack([im[l][k][s] for im in per_image]) for s in per_image[0][l][k]})
                   for k in per_image[0][l]} for l in layers}
    return dict(charts=int(first.key.num_charts), heads=int(first.num_heads), grid=grid, layers=stacked,
                predicted=predicted, atlas_template=atlas if opts["atlas"] else None)


# --------------------------------------------------------------------------- encoding
def _b64(a: np.ndarray, dtype: str = "float32") -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode("ascii")


def _encode_layer(arrays: dict, dtype: str) -> dict:
    out = {}
    for k, v in arrays.items():
        if k == "similarity":
            out[k] = {s: dict(shape=list(m.shape), data=_b64(m)) for s, m in v.items()}
        else:
            out[k] = dict(shape=list(v.shape), dtype=dtype if k == "rows" else "float32",
                          data=_b64(v, dtype if k == "rows" else "float32"))
    return out


def _figure_json(fig: Any) -> dict:
    import plotly.io as pio
    return json.loads(pio.to_json(fig, validate=False))


def _maps_template(grid: Tuple[int, int], image_size: Tuple[int, int], charts: int, panels: int) -> dict:
    """`figures.chart_maps_figure` for 1 + charts shown panels (of `panels` reserved), its maps and image sources
    emptied (the page fills them)."""
    fused = np.zeros(grid, np.float32)
    blank = np.zeros((3, *image_size), np.uint8)
    fig = figures.chart_maps_figure(blank, fused, np.zeros((charts, *grid), np.float32), query=(0, 0),
                                    num_panels=panels, title="fused map and the charts' maps" if charts else
                                    "the fused map")
    spec = _figure_json(fig)
    for t in spec["data"]:
        if t["type"] == "heatmap":
            t["z"] = []
    for im in spec["layout"].get("images", []):
        im["source"] = ""
    return spec


def _stat_templates(charts: int, evidence: bool) -> dict:
    zeros = [0.0] * charts
    out = dict(entropy=_figure_json(figures.entropy_bars(zeros, fused=0.0, max_entropy=0.0,
                                                         title="entropy of the query's attention (nats)")))
    if evidence:
        out["evidence"] = _figure_json(figures.evidence_bars(zeros, fused=0.0, chance=0.0))
    return out


def _similarity_styles(kinds: Sequence[str]) -> dict:
    """{kind: {"trace": the heat-map trace of `figures.similarity_heatmap` (z emptied), "title"}}."""
    out = {}
    for kind in kinds:
        spec = _figure_json(figures.similarity_heatmap(np.eye(2), kind))
        trace = spec["data"][0]
        trace.update(z=[], x=[], y=[])
        out[kind] = dict(trace=trace, layout=spec["layout"])
    return out


# --------------------------------------------------------------------------- the page
def _asset(name: str) -> str:
    return resources.files("mkviz").joinpath("assets", name).read_text(encoding="utf-8")


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
    raise ValueError(f"plotly_js: expected one of {PLOTLY_JS_CHOICES}; got {plotly_js!r}")


def _json_script(payload: dict) -> str:
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _render(payload: dict, plotly_js: str, full_page: bool, element_id: Optional[str], title: str) -> str:
    """The fragment (a div, its data, the explorer's css and js) or a whole page around it."""
    plotly_tag = _plotly_tag(plotly_js)
    if not isinstance(full_page, bool):
        raise ValueError(f"full_page: expected True or False; got {full_page!r}")
    data = _json_script(payload)
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


def _options(layers: Any, heads: str, dtype: str, similarity: Sequence[str], maps_: str, atlas: bool) -> dict:
    _check_choice("heads", heads, HEAD_CHOICES)
    _check_choice("dtype", dtype, ROW_DTYPES)
    if isinstance(similarity, str) or not similarity or any(k not in metrics.SIMILARITY_KINDS for k in similarity):
        raise ValueError(f"similarity: expected a non-empty sequence of {metrics.SIMILARITY_KINDS}; got {similarity!r}")
    return dict(layers=layers, heads=heads, dtype=dtype, similarity=list(similarity), maps=maps_, atlas=bool(atlas))


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
    entries = []
    for h, m in models:
        charts = m["charts"] if opts["maps"] == "charts" else 0
        entry = dict(charts=m["charts"], predicted=m["predicted"],
                     layers={l: _encode_layer(a, opts["dtype"]) for l, a in m["layers"].items()},
                     maps=_maps_template(grid.grid_size, image_size, charts, 1 + max_charts),
                     stats=_stat_templates(charts, masks is not None))
        if opts["atlas"]:
            entry["atlas"] = m["atlas_template"]
        entries.append(entry)
    return dict(version=DATA_VERSION, kind=kind, images=sources, image_size=list(image_size),
                grid=list(grid.grid_size), prefix=grid.num_prefix_tokens, layers=layers, num_heads=ref["heads"],
                heads=opts["heads"], dtype=opts["dtype"], maps=opts["maps"], chance=chance,
                similarity=opts["similarity"] if opts["maps"] == "charts" else [],
                similarity_styles=_similarity_styles(opts["similarity"]) if opts["maps"] == "charts" else {},
                models=entries, **extra)


def _explorer_html(kind: str, models: Sequence[Tuple[int, nn.Module]], images: Any, masks: Any, opts: dict,
                   kw: dict, extra: dict) -> str:
    """Record every model on the images, embed the arrays and the figure templates, render the page."""
    x, sample_masks = _model_inputs(images)
    masks = sample_masks if masks is None else masks
    size = (int(x.shape[-2]), int(x.shape[-1]))
    ev = _evidence(masks, x.shape[0], size)
    sources = _png_sources(kw.get("display_images"), x)
    data = [(h, model_data(m, x, ev, opts, name=f"models_by_charts[{h}]" if kind == "count" else "model"))
            for h, m in models]
    for h, d in data:
        if kind == "count" and d["charts"] != h:
            raise ValueError(f"models_by_charts[{h}]: the model has {d['charts']} charts, not {h}")
    initial = _initial_state(list(data[0][1]["layers"]), data[0][1]["grid"].grid_size, kw.get("layer"),
                             kw.get("query"))
    payload = _payload(kind, data, x, ev, sources, opts, dict(extra, initial=initial))
    size_bytes = len(_json_script(payload))
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


def chart_explorer_html(model: nn.Module, images: Any, masks: Any = None, *,
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
        class_names, labels (B,): shown in the info line. display_images: (B, 3, H, W) uint8 or [0, 1] pixels
            to draw (default: the inputs, min-max rescaled).
        layers: which layers to record (`mkviz.select_layers` spec; default every manifold layer);
            layer: the one shown first (name or index); query: the first (row, col) on the patch grid.
        heads: "all" (every head; the page averages them for "mean") or "mean" (the head mean only: a
            heads-th of the rows). dtype: "float16" (half the size) or "float32" (the recorded values exactly)
            for the rows; statistics, similarity and atlas are float32.
        similarity: the kinds offered (`mkviz.metrics.SIMILARITY_KINDS`). atlas: include the key atlas.
        plotly_js: "inline" (plotly.js of the installed plotly package inside the page, ~4.6 MB), "shared:<relative
            path>" (a <script src> to a local copy, e.g. one per site) or "none" (the host page loads plotly.js).
        full_page: a whole HTML document, or a fragment to embed (a div, its data and its scripts).
        element_id: the fragment's div id (default: derived from the data). max_bytes: refuse larger data.
    Returns the HTML text; `save_html(path, text)` writes it.
    """
    n = _model_inputs(images)[0].shape[0]
    labels = labels if labels is not None or not hasattr(images, "label") else images.label
    opts = _options(layers, heads, dtype, similarity, "charts", atlas)
    kw = dict(display_images=display_images, layer=layer, query=query, plotly_js=plotly_js, full_page=full_page,
              element_id=element_id, max_bytes=max_bytes, title=title)
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
        extra["accuracy_figure"] = _figure_json(figures.accuracy_vs_charts(acc, baseline=baseline,
                                                                           current=counts[first]))
    opts = _options(layers, heads, dtype, similarity, "charts", atlas)
    kw = dict(display_images=display_images, layer=layer, query=query, plotly_js=plotly_js, full_page=full_page,
              element_id=element_id, max_bytes=max_bytes, title=title)
    models = [(h, models_by_charts[h]) for h in counts]
    return _explorer_html("count", models, images, masks, opts, kw, extra)


def key_atlas_html(model: nn.Module, images: Any, *, display_images: Any = None, layers: Any = None,
                   layer: Union[str, int, None] = None, query: Optional[Tuple[int, int]] = None, heads: str = "all",
                   dtype: str = "float16", plotly_js: str = "inline", full_page: bool = True,
                   element_id: Optional[str] = None, max_bytes: int = MAX_DATA_BYTES,
                   title: str = "mkviz key atlas") -> str:
    """The key atlas (`mkviz.figures.key_atlas`: queries and every chart's keys in one 2-D projection) beside
    the fused map, as self-contained HTML: image, layer and head controls; a click on an atlas point or on
    the map selects that patch as the query (ringed in the atlas). Arguments as in `chart_explorer_html`."""
    opts = _options(layers, heads, dtype, metrics.SIMILARITY_KINDS, "fused", True)
    kw = dict(display_images=display_images, layer=layer, query=query, plotly_js=plotly_js, full_page=full_page,
              element_id=element_id, max_bytes=max_bytes, title=title)
    return _explorer_html("atlas", [(0, model)], images, None, opts, kw, {})


def save_html(path: Union[str, Path], html: str, *, overwrite: bool = False) -> Path:
    """Write an explorer's HTML to path (parent folders created); an existing file is replaced only with
    overwrite=True. Returns the path."""
    if not isinstance(html, str) or "mkvizExplorer" not in html:
        raise ValueError("html: expected the text an mkviz.explorer_html function returned")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"path: {path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def _decode(entry: dict) -> np.ndarray:
    raw = base64.b64decode(entry["data"])
    return np.frombuffer(raw, dtype=np.dtype(entry.get("dtype", "float32")).newbyteorder("<")).reshape(entry["shape"])


def embedded_data(html: str, element_id: Optional[str] = None) -> dict:
    """The data an explorer page embeds (its first explorer, or the one with element_id), arrays decoded:
    payload["models"][m]["layers"][layer] = {"rows": (B, k, G, M, G), "entropy": (B, k, G, M), "evidence",
    "similarity": {kind: (B, k, H, H)}, "atlas": (B, k, (1 + H)·N, 2)} (k: head options, "mean" first;
    rows with heads="all": one per head, no mean)."""
    pattern = r'<script type="application/json" id="(%s)-data">(.*?)</script>' % (
        re.escape(element_id) if element_id else r"[A-Za-z][\w-]*")
    match = re.search(pattern, html, flags=re.S)
    if match is None:
        raise ValueError(f"html: no explorer data found{f' for element_id={element_id!r}' if element_id else ''}")
    payload = json.loads(match.group(2))
    for entry in payload["models"]:
        for arrays in entry["layers"].values():
            for k, v in arrays.items():
                arrays[k] = {s: _decode(m) for s, m in v.items()} if k == "similarity" else _decode(v)
    return payload
