"""Interactive explorers (ipywidgets + plotly FigureWidget) of what each chart attends to.

    ex = ChartExplorer(model, images, masks=evidence_masks, class_names=names)
    ex                      # in a notebook: controls, fused map beside the H chart maps, similarity, stats
    ex = ChartExplorer.from_dataset(model, shapes_dataset, indices=range(8))
    ChartCountExplorer({1: m1, 2: m2, 4: m4, 8: m8, 16: m16}, images, accuracies={1: .81, ...})

How it stays fast: the model runs ONCE per image (`mkviz.record_attention(lazy=True)`, all manifold
layers, to_cpu=True; an LRU of `cache_size` images), which keeps each layer's x, q and k rather than its
(1 + H) N × N maps; moving a slider computes the query's rows only (`rec.attention_rows`) and writes
the new heat-map arrays into the figure inside `fig.batch_update()` (one message to the browser). Maps are drawn at the model's own resolution (ViT patch grid, Swin stage grid) as heat-map
cells stretched over the image, so nothing is resampled: the heat-map `z` is exactly the (gh, gw) map
`AttentionRecording.image_map(layer, (row, col), chart=c, head=h)` returns.

Everything is plain Python objects, testable without a browser: set `ex.row_slider.value = 3` and read
`ex.maps_figure.data`; `ex.on_image_click(trace, points)` is the FigureWidget click handler.

Supported models: models converted by `mkviz.convert` (or built by `mkviz.create_model`) from timm
VisionTransformer (ViT, DeiT with a distillation token, register tokens) and SwinTransformer. The query
is a (row, col) position on the layer's token grid: the patch grid for ViT, the stage grid for Swin
(which changes between stages; switching layers keeps the query at the same place in the image).
Head "mean" averages the heads' attention rows (what `image_map(head=None)` does).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.attention import ManifoldQKV, ManifoldWindowAttention
from ..explain import metrics as _metrics
from ..explain.maps import patch_grid, query_index, query_position, swin_block_geometry
from ..explain.metrics import SIMILARITY_KINDS
from ..explain.record import record_attention
from . import figures as _fig

__all__ = ["ChartExplorer", "ChartCountExplorer", "AttentionCache", "SIMILARITY_KINDS"]

Head = Optional[int]


def _head(value: Any) -> Head:
    return None if value in (None, "mean") else int(value)


# --------------------------------------------------------------------------- the cached recordings
class AttentionCache:
    """Recordings of one model on a fixed set of images, computed once per image and sliced on demand.

    model: a manifold-key ViT/DeiT/Swin (`mkviz.convert`); images: float (B, 3, H, W) model inputs.
    `entry(i)` runs the forward for image i once (LRU of `cache_size` images); `maps`, `similarity` and
    `stats` slice the cached tensors.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, cache_size: int = 4) -> None:
        self.model = model.eval()
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"images: expected a float tensor (B, 3, H, W); got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        self.images = images if images.is_floating_point() else images.float() / 255.0
        self.cache_size = max(1, int(cache_size))
        self.layers = [n for n, m in model.named_modules() if isinstance(m, ManifoldQKV)]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no manifold-key attention layer: convert it first "
                             "(mkviz.convert(model, variant, num_charts)); plain timm attention has no charts")
        self.image_size = (int(images.shape[-2]), int(images.shape[-1]))
        self.is_swin = any(isinstance(model.get_submodule(n), ManifoldWindowAttention) for n in self.layers)
        self.geometry: Dict[str, dict] = {}
        if self.is_swin:
            for name in self.layers:
                parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else None
                try:
                    geo = swin_block_geometry(parent)
                except ValueError:
                    raise ValueError(f"{type(model).__name__}: window attention {name!r} is not inside a timm "
                                     "SwinTransformerBlock; only timm SwinTransformer layouts are supported") from None
                self.geometry[name] = dict(kind="swin", grid=geo["resolution"], **geo)
        else:
            if not hasattr(model, "patch_embed"):
                raise ValueError(f"unsupported model {type(model).__name__}: the explorers support timm "
                                 "VisionTransformer (ViT, DeiT) and SwinTransformer models")
            grid = patch_grid(model, self.image_size)
            for name in self.layers:
                self.geometry[name] = dict(kind="vit", grid=grid.grid_size, prefix=grid.num_prefix_tokens)
        first = model.get_submodule(self.layers[0])
        self.num_heads = int(first.num_heads)
        self.num_charts = int(first.key.num_charts)
        self.device = next(model.parameters()).device
        self._entries: "OrderedDict[int, dict]" = OrderedDict()
        self._memo: Dict[tuple, Any] = {}
        self.forwards = 0

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def entry(self, i: int) -> dict:
        """{"recording": a lazy `AttentionRecording` of image i (batch dim 1), "probs": (classes,)}.

        Lazy: per layer it keeps x, q and k, not the (1 + H) N × N maps; `maps` reads one query's rows."""
        i = int(i)
        if i in self._entries:
            self._entries.move_to_end(i)
            return self._entries[i]
        with torch.no_grad(), record_attention(self.model, layers=self.layers, charts=True, to_cpu=True,
                                               dtype=torch.float32, lazy=True) as rec:
            logits = self.model(self.images[i:i + 1].to(self.device))
        self.forwards += 1
        e = dict(recording=rec,
                 probs=logits.detach().float().softmax(-1)[0].cpu() if logits.dim() == 2 else None)
        self._entries[i] = e
        while len(self._entries) > self.cache_size:
            old, _ = self._entries.popitem(last=False)
            self._memo = {k: v for k, v in self._memo.items() if k[1] != old}
        return e

    def maps(self, i: int, layer: str, head: Head, query: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor, torch.Tensor]:
        """(fused map (gh, gw), chart maps (H, gh, gw), fused row, chart rows) for one query.

        Maps equal `rec.image_map(layer, query, chart=c, head=head)`. Rows are the attention rows the
        entropy is taken over: (N,) / (H, N) over all keys (prefix tokens included) for ViT; the map itself
        (the query's window, flattened) for Swin. Only this query's rows are computed (`attention_rows`).
        """
        rec, geo = self.entry(i)["recording"], self.geometry[layer]
        with torch.no_grad():
            if geo["kind"] == "vit":
                idx = query_index(int(query[0]), int(query[1]), geo["grid"], geo["prefix"])
                a = rec.attention_rows(layer, [idx])[0, :, 0]  # (heads, N)
                ca = torch.stack([rec.attention_rows(layer, [idx], chart=c)[0, :, 0]
                                  for c in range(self.num_charts)])  # (H, heads, N)
                frow = a.mean(0) if head is None else a[head]
                crow = ca.mean(1) if head is None else ca[:, head]
                gh, gw = geo["grid"]
                p = geo["prefix"]
                return frow[p:].reshape(gh, gw), crow[:, p:].reshape(-1, gh, gw), frow, crow
            q = (int(query[0]), int(query[1]))
            fused = rec.image_map(layer, q, head=head)
            charts = torch.stack([rec.image_map(layer, q, chart=c, head=head) for c in range(self.num_charts)])
        return fused, charts, fused.reshape(-1), charts.flatten(1)

    def similarity(self, i: int, layer: str, head: Head, kind: str) -> torch.Tensor:
        """(H, H) chart similarity of a layer: cosine / CKA of the chart keys (restricted to the head's channels
        when a head is chosen), or JS divergence of the chart attention (of that head; mean over heads)."""
        if kind not in SIMILARITY_KINDS:
            raise ValueError(f"kind: expected one of {SIMILARITY_KINDS}; got {kind!r}")
        key = ("sim", int(i), layer, head, kind)
        if key not in self._memo:
            rec = self.entry(i)["recording"]
            with torch.no_grad():
                if kind == "js":  # every row of every chart: computed once per (image, layer, head), then memoised
                    ca = torch.stack([rec.full_attention(layer, c) for c in range(self.num_charts)], dim=1)
                    out = _metrics.chart_similarity(chart_attn=ca if head is None else ca[:, :, head:head + 1],
                                                    kind="js")
                else:
                    keys = rec.chart_keys_for(layer)
                    if head is not None:
                        d = keys.shape[-1] // self.num_heads
                        keys = keys[..., head * d:(head + 1) * d]
                    out = _metrics.chart_similarity(chart_keys=keys, kind=kind)
            self._memo[key] = out
        return self._memo[key]

    def coverage(self, mask: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """Patch coverage (gh*gw,) of an evidence mask on a token grid (`mkviz.metrics.patch_coverage`)."""
        return _metrics.patch_coverage(mask, grid)


def _share(map_: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Share of a map's mass on the evidence (per map, leading dims kept); 0 where a map has no mass."""
    flat = map_.reshape(*map_.shape[:-2], -1)
    return ((flat * cov).sum(-1) / flat.sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- helpers
def _to_images(images: Any, image_size) -> torch.Tensor:
    x = images.image if hasattr(images, "image") and hasattr(images, "evidence_mask") else images
    x = torch.as_tensor(x)
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images: expected (B, 3, H, W); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float() / 255.0
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def _to_masks(masks: Any, n: int, size: Tuple[int, int]) -> Optional[torch.Tensor]:
    if masks is None:
        return None
    m = torch.as_tensor(masks)
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3 or m.shape[0] != n:
        raise ValueError(f"masks: expected one evidence mask per image, (B={n}, H, W) (e.g. Sample.evidence_mask); "
                         f"got shape {tuple(m.shape)}")
    m = m.float()
    if tuple(m.shape[-2:]) != size:
        m = F.interpolate(m[:, None], size=size, mode="nearest")[:, 0]
    return m


def _display_images(display_images: Any, images: torch.Tensor) -> List[np.ndarray]:
    src = images if display_images is None else torch.as_tensor(display_images)
    if src.dim() == 3:
        src = src[None]
    if src.shape[0] != images.shape[0]:
        raise ValueError(f"display_images: expected {images.shape[0]} images; got {src.shape[0]}")
    out = []
    for im in src:
        if im.is_floating_point() and display_images is not None and tuple(im.shape[-2:]) != tuple(images.shape[-2:]):
            im = F.interpolate(im[None], size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)[0]
        elif not im.is_floating_point() and tuple(im.shape[-2:]) != tuple(images.shape[-2:]):
            im = F.interpolate(im[None].float(), size=tuple(images.shape[-2:]), mode="nearest")[0].to(torch.uint8)
        out.append(_fig.to_uint8_image(im))
    return out


def _points_xy(points: Any) -> Optional[Tuple[float, float]]:
    xs, ys = list(getattr(points, "xs", []) or []), list(getattr(points, "ys", []) or [])
    if not xs or not ys or xs[0] is None or ys[0] is None:
        return None
    return float(xs[0]), float(ys[0])


class _ControlsMixin:
    """Shared controls and click handling of the explorers (ViT patch grid / Swin stage grid queries)."""

    cache: AttentionCache

    def _build_common_controls(self, n_images: int, layers: Sequence[str], num_heads: int, layer, query) -> None:
        import ipywidgets as W

        self._suspended = 0
        self.image_slider = W.IntSlider(value=0, min=0, max=max(0, n_images - 1), description="image",
                                        continuous_update=True)
        self.layer_dropdown = W.Dropdown(options=list(layers), description="layer")
        if layer is not None:
            self.layer_dropdown.value = layers[layer] if isinstance(layer, int) else layer
        self.head_dropdown = W.Dropdown(options=[("mean", "mean")] + [(f"head {h}", h) for h in range(num_heads)],
                                        value="mean", description="head")
        gh, gw = self._grid()
        r, c = query if query is not None else (gh // 2, gw // 2)
        self.row_slider = W.IntSlider(value=min(int(r), gh - 1), min=0, max=gh - 1, description="query row")
        self.col_slider = W.IntSlider(value=min(int(c), gw - 1), min=0, max=gw - 1, description="query col")
        self.similarity_toggle = W.ToggleButtons(options=list(SIMILARITY_KINDS), value="cosine",
                                                 description="similarity",
                                                 tooltips=["cosine of chart keys", "Jensen-Shannon divergence of "
                                                           "chart attention", "linear CKA of chart keys"])
        self.shared_scale_checkbox = W.Checkbox(value=True, description="shared colour scale")
        self.info = W.HTML()

    @contextlib.contextmanager
    def _quiet(self):
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    # ---------------------------------------------------------------- state
    @property
    def image_index(self) -> int:
        return int(self.image_slider.value)

    @property
    def layer(self) -> str:
        return self.layer_dropdown.value

    @property
    def head(self) -> Head:
        return _head(self.head_dropdown.value)

    @property
    def query(self) -> Tuple[int, int]:
        return int(self.row_slider.value), int(self.col_slider.value)

    def _grid(self, layer: Optional[str] = None) -> Tuple[int, int]:
        return tuple(self.cache.geometry[layer or self.layer_dropdown.value]["grid"])

    def _cell(self) -> Tuple[float, float]:
        gh, gw = self._grid()
        H, W = self.cache.image_size
        return H / gh, W / gw

    def _retarget_query(self, old_layer: str, new_layer: str) -> None:
        """Swin stages differ in grid size: keep the query at the same place in the image."""
        (oh, ow), (nh, nw) = self._grid(old_layer), self._grid(new_layer)
        if (oh, ow) == (nh, nw):
            return
        r, c = self.query
        with self._quiet():
            self.row_slider.max, self.col_slider.max = max(self.row_slider.max, nh - 1), max(self.col_slider.max, nw - 1)
            self.row_slider.value = min(nh - 1, (2 * r + 1) * nh // (2 * oh))
            self.col_slider.value = min(nw - 1, (2 * c + 1) * nw // (2 * ow))
            self.row_slider.max, self.col_slider.max = nh - 1, nw - 1

    # ---------------------------------------------------------------- clicks
    def on_image_click(self, trace: Any = None, points: Any = None, state: Any = None) -> Optional[Tuple[int, int]]:
        """FigureWidget click handler: a click at pixel (x, y) on any image or map sets the query sliders to
        the grid cell under it. Returns the new (row, col), or None when the click carried no point."""
        xy = _points_xy(points)
        if xy is None:
            return None
        x, y = xy
        ch, cw = self._cell()
        gh, gw = self._grid()
        r = int(min(max((y + 0.5) // ch, 0), gh - 1))
        c = int(min(max((x + 0.5) // cw, 0), gw - 1))
        return self.select_query(r, c)

    def select_query(self, r: int, c: int) -> Tuple[int, int]:
        """Move the query to grid cell (r, c) with one redraw (the sliders follow). Returns (r, c)."""
        if (r, c) == self.query:
            return r, c
        col_moves = c != self.col_slider.value
        with self._quiet():
            self.row_slider.value = r
        if col_moves:
            self.col_slider.value = c  # one update, through the col slider's observer
        else:
            self._on_query()
        return r, c

    def _update_similarity(self) -> None:
        """Redraw the chart-similarity heat map (its size follows the current model's chart count)."""
        kind = self.similarity_toggle.value
        sim = self.cache.similarity(self.image_index, self.layer, self.head, kind)
        ref = _fig.similarity_heatmap(sim, kind)
        with self.similarity_figure.batch_update():
            self.similarity_figure.data[0].update(z=sim.numpy(), x=ref.data[0].x, y=ref.data[0].y,
                                                  colorscale=ref.data[0].colorscale, zmin=ref.data[0].zmin,
                                                  zmax=ref.data[0].zmax, zmid=ref.data[0].zmid,
                                                  colorbar=ref.data[0].colorbar)
            self.similarity_figure.layout.title.text = f"{ref.layout.title.text} — {self._similarity_context()}" \
                                                       f"{self.layer}, head {self.head_dropdown.value}"

    def _similarity_context(self) -> str:  # ChartCountExplorer adds the chart count
        return ""

    # ---------------------------------------------------------------- observers shared by both explorers
    def _refresh_all(self) -> None:
        self._update_maps()
        self._update_similarity()

    def _on_refresh(self, change=None) -> None:  # head (and, for chart counts, the charts slider)
        if not self._suspended:
            self._refresh_all()

    def _on_image(self, change=None) -> None:
        if not self._suspended:
            self._update_images()
            self._refresh_all()

    def _on_layer(self, change=None) -> None:
        if self._suspended:
            return
        self._retarget_query(self._layer_seen, self.layer)
        self._layer_seen = self.layer
        self._refresh_all()

    def _on_query(self, change=None) -> None:
        if not self._suspended:
            self._update_maps()

    def _on_similarity(self, change=None) -> None:
        if not self._suspended:
            self._update_similarity()

    # ---------------------------------------------------------------- display and timing
    def display(self) -> None:
        from IPython.display import display
        display(self.widget)

    def _ipython_display_(self) -> None:
        self.display()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def update_latency_ms(self, n: int = 20) -> float:
        """Median wall time (ms) of a query-slider move (cached forward: re-slice + figure update), over n moves."""
        self.cache.entry(self.image_index)  # warm
        gh = self._grid()[0]
        start = self.row_slider.value
        times = []
        for k in range(max(1, int(n))):
            target = (start + k + 1) % gh
            if target == self.row_slider.value:
                target = (target + 1) % gh
            t0 = time.perf_counter()
            self.row_slider.value = target
            times.append((time.perf_counter() - t0) * 1000.0)
        self.row_slider.value = start
        return float(statistics.median(times))


    def _update_images(self) -> None:
        """Show the current image under every map panel (the maps figure's layout images, PNG sources)."""
        src = _fig.image_source(self._display[self.image_index])
        with self.maps_figure.batch_update():
            for im in self.maps_figure.layout.images:
                im.source = src


# --------------------------------------------------------------------------- ChartExplorer
class ChartExplorer(_ControlsMixin):
    """What the fused key and each chart attend to, for one model, interactively.

    Args:
        model: a manifold-key ViT / DeiT / Swin (`mkviz.convert`, `mkviz.create_model`, a checkpoint).
        images: float (B, 3, H, W) model inputs (normalised as the model expects), or a batched `Sample`.
        masks: optional evidence masks (B, H, W) (e.g. `Sample.evidence_mask`): enables the
            "attention on evidence" panel.
        image_size: resize images (and masks) to this size (int or (H, W)) before the forward.
        class_names: names of the model's classes (for the prediction shown above the figures).
        labels: optional true labels (B,).
        display_images: what to draw, (B, 3, H, W) uint8 or [0, 1] floats (default: the inputs, min-max
            rescaled per image, since normalised inputs are not displayable pixels).
        layer: initial layer (path or index); query: initial (row, col); cache_size: images kept recorded.

    Attributes: controls `image_slider`, `layer_dropdown`, `head_dropdown` ("mean" or an int), `row_slider`,
    `col_slider`, `similarity_toggle` ("cosine" | "js" | "cka"), `shared_scale_checkbox`, `info`; figures
    `maps_figure` (fused + H chart maps, `figures.chart_maps_figure` layout; `heat_traces`: its heat-map
    traces, fused first, whose `z` is what is drawn), `similarity_figure`,
    `stats_figure` (per-chart entropy and, with masks, share of attention on evidence, for the current
    query), `atlas_figure` (`figures.key_atlas` of the image, layer and head: queries and every chart's keys
    in one 2-D projection, the query ringed; a click on a point selects its patch as the query; None for
    Swin); `widget` (the top-level ipywidgets.VBox); `cache` (the `AttentionCache`).
    """

    def __init__(self, model: nn.Module, images: Any, masks: Any = None, image_size=None,
                 class_names: Optional[Sequence[str]] = None, *, labels: Any = None, display_images: Any = None,
                 layer: Union[str, int, None] = None, query: Optional[Tuple[int, int]] = None,
                 cache_size: int = 4, height_per_row: int = 190) -> None:
        import ipywidgets as W
        import plotly.graph_objects as go

        x = _to_images(images, image_size)
        if masks is None and hasattr(images, "evidence_mask"):
            masks = images.evidence_mask
        if labels is None and hasattr(images, "label") and hasattr(images, "evidence_mask"):
            labels = images.label
        self.cache = AttentionCache(model, x, cache_size=cache_size)
        self.masks = _to_masks(masks, len(self.cache), self.cache.image_size)
        self.class_names = list(class_names) if class_names is not None else None
        self.labels = None if labels is None else [int(v) for v in torch.as_tensor(labels).reshape(-1)]
        self._display = _display_images(display_images, x)
        self._build_common_controls(len(self.cache), self.cache.layers, self.cache.num_heads, layer, query)
        self._layer_seen = self.layer

        H = self.cache.num_charts
        fused, charts, frow, crow = self.cache.maps(self.image_index, self.layer, self.head, self.query)
        fig = _fig.chart_maps_figure(self._display[0], fused, charts, query=self.query, panel_size=height_per_row)
        self.maps_figure = go.FigureWidget(fig)
        self.heat_traces = [self._trace(self.maps_figure, "fused")] + \
            [self._trace(self.maps_figure, f"chart {c + 1}") for c in range(H)]
        self._boxes = [self._trace(self.maps_figure, f"query {p}") for p in range(H + 1)]
        for t in self.heat_traces:  # each heat map covers its panel's image: a click on a panel lands on it
            t.on_click(self.on_image_click)

        self.similarity_figure = go.FigureWidget(_fig.similarity_heatmap(
            self.cache.similarity(self.image_index, self.layer, self.head, "cosine"), "cosine", height=360))
        self.stats_figure = go.FigureWidget(self._stats_layout(H))
        self.atlas_figure = None if self.cache.is_swin else go.FigureWidget(self._atlas())
        if self.atlas_figure is not None:  # a click on a query or key selects its patch as the query
            for t in self.atlas_figure.data[:-1]:
                t.on_click(self.on_atlas_click)
        self._refresh_all()

        for w, fn in ((self.image_slider, self._on_image), (self.layer_dropdown, self._on_layer),
                      (self.head_dropdown, self._on_refresh), (self.row_slider, self._on_query),
                      (self.col_slider, self._on_query), (self.similarity_toggle, self._on_similarity),
                      (self.shared_scale_checkbox, self._on_query)):
            w.observe(fn, names="value")
        controls = W.VBox([W.HBox([self.image_slider, self.layer_dropdown, self.head_dropdown]),
                           W.HBox([self.row_slider, self.col_slider, self.shared_scale_checkbox]),
                           W.HBox([self.similarity_toggle]), self.info])
        bottom = W.HBox([self.similarity_figure, self.stats_figure], layout=W.Layout(flex_flow="row wrap"))
        atlas = [] if self.atlas_figure is None else [self.atlas_figure]
        self.widget = W.VBox([controls, self.maps_figure, bottom, *atlas])  # the bottom row wraps on narrow screens

    @classmethod
    def from_dataset(cls, model: nn.Module, dataset: Any, indices: Sequence[int] = range(8), **kwargs) -> "ChartExplorer":
        """From a `mkviz.data` dataset with `.batch(indices)` (ShapesDataset, DigitsDataset): images, evidence
        masks, labels, class names, and the raw pixels (`images_uint8`, when available) for display."""
        s = dataset.batch(list(indices))
        kwargs.setdefault("class_names", getattr(dataset, "class_names", None))
        if hasattr(dataset, "images_uint8"):
            kwargs.setdefault("display_images", dataset.images_uint8(list(indices)))
        return cls(model, s.image, masks=s.evidence_mask, labels=s.label, **kwargs)

    @staticmethod
    def _trace(fig, name: str):
        for t in fig.data:
            if t.name == name:
                return t
        raise KeyError(name)

    def _stats_layout(self, H: int):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        names = ["fused"] + [f"chart {c + 1}" for c in range(H)]
        colors = ["#444444"] + ["#1f77b4"] * H
        cols = 2 if self.masks is not None else 1
        fig = make_subplots(rows=1, cols=cols, subplot_titles=["entropy of the query's attention (nats)",
                                                               "share of attention on evidence"][:cols])
        fig.add_trace(go.Bar(x=names, y=[0.0] * (H + 1), name="entropy", marker_color=colors), row=1, col=1)
        fig.add_trace(go.Scatter(x=[names[0], names[-1]], y=[0.0, 0.0], mode="lines", name="uniform",
                                 line=dict(dash="dash", color="#7f7f7f")), row=1, col=1)
        fig.update_yaxes(title_text="nats", rangemode="tozero", row=1, col=1)
        if cols == 2:
            fig.add_trace(go.Bar(x=names, y=[0.0] * (H + 1), name="evidence", marker_color=colors), row=1, col=2)
            fig.add_trace(go.Scatter(x=[names[0], names[-1]], y=[0.0, 0.0], mode="lines", name="chance",
                                     line=dict(dash="dash", color="#d62728")), row=1, col=2)
            fig.update_yaxes(title_text="share", range=[0, 1], row=1, col=2)
        fig.update_xaxes(type="category")
        fig.update_layout(height=360, margin=dict(l=10, r=10, t=50, b=10), showlegend=False)
        return fig

    # ---------------------------------------------------------------- computed views (also used by tests)
    def current_maps(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(fused (gh, gw), charts (H, gh, gw)) for the current controls."""
        fused, charts, _, _ = self.cache.maps(self.image_index, self.layer, self.head, self.query)
        return fused, charts

    def current_stats(self) -> Dict[str, torch.Tensor]:
        """{"entropy": (1 + H,) fused then charts, "evidence": (1 + H,) or absent, "chance": float} for the query."""
        fused, charts, frow, crow = self.cache.maps(self.image_index, self.layer, self.head, self.query)
        out = {"entropy": torch.cat([_metrics.attention_entropy(frow)[None], _metrics.attention_entropy(crow)]),
               "max_entropy": float(np.log(frow.shape[-1]))}
        if self.masks is not None:
            cov = self.cache.coverage(self.masks[self.image_index], self._grid())
            out["evidence"] = torch.cat([_share(fused, cov)[None], _share(charts, cov)])
            out["chance"] = float(cov.mean())
        return out

    # ---------------------------------------------------------------- the key atlas (ViT)
    def _query_token(self) -> int:
        geo = self.cache.geometry[self.layer]
        return query_index(self.query[0], self.query[1], geo["grid"], geo["prefix"])

    def _atlas(self):
        rec = self.cache.entry(self.image_index)["recording"]
        with torch.no_grad():
            return _fig.key_atlas(rec, self.layer, head=self.head, query=self._query_token())

    def on_atlas_click(self, trace: Any = None, points: Any = None, state: Any = None) -> Optional[Tuple[int, int]]:
        """Atlas click handler: a click on a query or a chart key selects that token's patch as the query.
        Returns the new (row, col), or None (no point, or a prefix token such as cls)."""
        inds = getattr(points, "point_inds", None) or []
        if not inds or trace is None:
            return None
        geo = self.cache.geometry[self.layer]
        token = int(trace.customdata[inds[0]])
        if token < geo["prefix"]:
            return None
        return self.select_query(*query_position(token, geo["grid"], geo["prefix"]))

    def _update_atlas(self) -> None:
        """Redraw the atlas for the current image, layer and head (its points move; the traces stay)."""
        if self.atlas_figure is None:
            return
        new = self._atlas()
        with self.atlas_figure.batch_update():
            for t, n in zip(self.atlas_figure.data, new.data):
                t.update(x=n.x, y=n.y, text=n.text, customdata=n.customdata)
            self.atlas_figure.layout.title.text = new.layout.title.text

    def _update_atlas_query(self) -> None:
        """Move the atlas's ring to the current query."""
        if self.atlas_figure is None:
            return
        token, queries = self._query_token(), self.atlas_figure.data[0]
        with self.atlas_figure.batch_update():
            self.atlas_figure.data[-1].update(x=[queries.x[token]], y=[queries.y[token]], customdata=[token])

    def _refresh_all(self) -> None:
        super()._refresh_all()
        self._update_atlas()

    # ---------------------------------------------------------------- updates
    def _info_html(self) -> str:
        i = self.image_index
        e = self.cache.entry(i)
        name = lambda k: self.class_names[k] if self.class_names and 0 <= k < len(self.class_names) else str(k)
        parts = [f"<b>image {i}</b>"]
        if self.labels is not None:
            parts.append(f"label: {name(self.labels[i])}")
        if e["probs"] is not None:
            k = int(e["probs"].argmax())
            parts.append(f"predicted: {name(k)} (p = {float(e['probs'][k]):.2f})")
        parts.append(f"layer {self.layer}, head {self.head_dropdown.value}, query (row {self.query[0]}, "
                     f"col {self.query[1]}) on a {self._grid()[0]}×{self._grid()[1]} grid")
        return " · ".join(parts)

    def _update_maps(self) -> None:
        fused, charts, frow, crow = self.cache.maps(self.image_index, self.layer, self.head, self.query)
        zs = [fused.numpy()] + [c.numpy() for c in charts]
        shared = self.shared_scale_checkbox.value
        lo, hi = (float(min(z.min() for z in zs)), float(max(z.max() for z in zs))) if shared else (None, None)
        geo = _fig.heat_geometry(self.cache.image_size, fused.shape)
        xs, ys = _fig.query_box_path(*self.query, self._cell())
        st = self.current_stats()
        with self.maps_figure.batch_update():
            for t, z in zip(self.heat_traces, zs):
                t.update(z=z, zmin=lo if shared else float(z.min()), zmax=hi if shared else float(z.max()))
                if t.dx != geo["dx"] or t.dy != geo["dy"]:  # Swin stages differ in grid size
                    t.update(**geo)
            for b in self._boxes:
                b.update(x=xs, y=ys)
        with self.stats_figure.batch_update():
            d = self.stats_figure.data
            d[0].y = st["entropy"].numpy()
            d[1].y = [st["max_entropy"]] * 2
            if self.masks is not None:
                d[2].y = st["evidence"].numpy()
                d[3].y = [st["chance"]] * 2
        self.info.value = self._info_html()
        if getattr(self, "atlas_figure", None) is not None:
            self._update_atlas_query()


# --------------------------------------------------------------------------- ChartCountExplorer
class ChartCountExplorer(_ControlsMixin):
    """The same images through models with different chart counts: a chart-count slider switches model.

    Args:
        models_by_charts: {H: manifold-key model with H charts}, e.g. VanillaK at 1, 2, 4, 8, 16 charts
            (same architecture otherwise: same layers and grid).
        images, masks, image_size, display_images, layer, query, cache_size: as in `ChartExplorer`.
        accuracies: optional {H: accuracy}, drawn as a line with the current H marked (`accuracy_figure`);
            baseline: the baseline's accuracy (dashed line).

    Attributes: `charts_slider` (SelectionSlider over the sorted chart counts) and the `ChartExplorer`
    controls (image, layer, head, row, col, similarity kind, shared scale); figures `maps_figure` (fused map
    and max(H) chart panels: the panels beyond the current H are hidden), `similarity_figure` (H × H),
    `accuracy_figure` (None without accuracies); `caches` ({H: AttentionCache}); `widget`.
    """

    def __init__(self, models_by_charts: Mapping[int, nn.Module], images: Any, masks: Any = None,
                 image_size=None, *, accuracies: Optional[Mapping[int, float]] = None,
                 baseline: Optional[float] = None, display_images: Any = None,
                 layer: Union[str, int, None] = None, query: Optional[Tuple[int, int]] = None,
                 charts: Optional[int] = None, cache_size: int = 4, height_per_row: int = 170) -> None:
        import ipywidgets as W
        import plotly.graph_objects as go

        if not models_by_charts:
            raise ValueError("models_by_charts: expected at least one {num_charts: model}")
        x = _to_images(images, image_size)
        if masks is None and hasattr(images, "evidence_mask"):
            masks = images.evidence_mask
        self.caches: Dict[int, AttentionCache] = {}
        for h in sorted(int(k) for k in models_by_charts):
            cache = AttentionCache(models_by_charts[h], x, cache_size=cache_size)
            if cache.num_charts != h:
                raise ValueError(f"models_by_charts[{h}] has {cache.num_charts} charts, not {h}")
            self.caches[h] = cache
        counts = list(self.caches)
        ref = self.caches[counts[0]]
        for h, c in self.caches.items():
            if c.layers != ref.layers or c.geometry != ref.geometry or c.num_heads != ref.num_heads:
                raise ValueError(f"models_by_charts: the model with {h} charts has other layers/grids/heads than "
                                 f"the one with {counts[0]}; the explorer compares one architecture")
        self.masks = _to_masks(masks, len(ref), ref.image_size)
        self.accuracies = None if accuracies is None else {int(k): float(v) for k, v in accuracies.items()}
        self._display = _display_images(display_images, x)
        self.charts_slider = W.SelectionSlider(options=counts, value=charts if charts is not None else counts[-1],
                                               description="charts H", continuous_update=True)
        self._build_common_controls(len(ref), ref.layers, ref.num_heads, layer, query)
        self._layer_seen = self.layer

        self.max_charts = max(counts)
        fused, chs = self.cache.maps(self.image_index, self.layer, self.head, self.query)[:2]
        fig = _fig.chart_maps_figure(self._display[0], fused, chs, query=self.query, num_panels=1 + self.max_charts,
                                     panel_size=height_per_row, title="fused map and the charts' maps")
        self.maps_figure = go.FigureWidget(fig)
        self.heat_traces = [ChartExplorer._trace(self.maps_figure, "fused")] + \
            [ChartExplorer._trace(self.maps_figure, f"chart {c + 1}") for c in range(self.max_charts)]
        self._boxes = [ChartExplorer._trace(self.maps_figure, f"query {p}") for p in range(self.max_charts + 1)]
        for t in self.heat_traces:  # each heat map covers its panel's image: a click on a panel lands on it
            t.on_click(self.on_image_click)
        self.similarity_figure = go.FigureWidget(_fig.similarity_heatmap(
            self.cache.similarity(self.image_index, self.layer, self.head, "cosine"), "cosine", height=360))
        self.accuracy_figure = None
        if self.accuracies:
            self.accuracy_figure = go.FigureWidget(_fig.accuracy_vs_charts(
                self.accuracies, baseline=baseline, current=self.num_charts, height=360))
        self._refresh_all()

        for w, fn in ((self.charts_slider, self._on_refresh), (self.image_slider, self._on_image),
                      (self.layer_dropdown, self._on_layer), (self.head_dropdown, self._on_refresh),
                      (self.row_slider, self._on_query), (self.col_slider, self._on_query),
                      (self.similarity_toggle, self._on_similarity), (self.shared_scale_checkbox, self._on_query)):
            w.observe(fn, names="value")
        controls = W.VBox([W.HBox([self.charts_slider, self.image_slider]),
                           W.HBox([self.layer_dropdown, self.head_dropdown, self.shared_scale_checkbox]),
                           W.HBox([self.row_slider, self.col_slider]), W.HBox([self.similarity_toggle]), self.info])
        bottom = [self.similarity_figure] + ([self.accuracy_figure] if self.accuracy_figure is not None else [])
        self.widget = W.VBox([controls, self.maps_figure, W.HBox(bottom, layout=W.Layout(flex_flow="row wrap"))])

    @classmethod
    def from_dataset(cls, models_by_charts: Mapping[int, nn.Module], dataset: Any, indices: Sequence[int] = range(8),
                     **kwargs) -> "ChartCountExplorer":
        """From a `mkviz.data` dataset with `.batch(indices)`: images, evidence masks and raw pixels."""
        s = dataset.batch(list(indices))
        if hasattr(dataset, "images_uint8"):
            kwargs.setdefault("display_images", dataset.images_uint8(list(indices)))
        return cls(models_by_charts, s.image, masks=s.evidence_mask, **kwargs)

    @property
    def num_charts(self) -> int:
        return int(self.charts_slider.value)

    @property
    def cache(self) -> AttentionCache:
        return self.caches[self.num_charts]

    def visible_chart_panels(self) -> int:
        """How many chart panels (not counting the fused one) are visible now."""
        return sum(1 for t in self.heat_traces[1:] if t.visible)

    def current_maps(self) -> Tuple[torch.Tensor, torch.Tensor]:
        fused, charts, _, _ = self.cache.maps(self.image_index, self.layer, self.head, self.query)
        return fused, charts

    def _info_html(self) -> str:
        parts = [f"<b>H = {self.num_charts} charts</b>", f"image {self.image_index}", f"layer {self.layer}",
                 f"head {self.head_dropdown.value}", f"query (row {self.query[0]}, col {self.query[1]})"]
        if self.accuracies and self.num_charts in self.accuracies:
            parts.append(f"accuracy {self.accuracies[self.num_charts]:.3f}")
        if self.masks is not None:
            fused, charts = self.current_maps()
            cov = self.cache.coverage(self.masks[self.image_index], self._grid())
            parts.append(f"fused attention on evidence {float(_share(fused, cov)):.2f} "
                         f"(chance {float(cov.mean()):.2f})")
        return " · ".join(parts)

    def _update_maps(self) -> None:
        fused, charts = self.current_maps()
        H = charts.shape[0]
        zs = [fused.numpy()] + [c.numpy() for c in charts]
        shared = self.shared_scale_checkbox.value
        lo, hi = (float(min(z.min() for z in zs)), float(max(z.max() for z in zs))) if shared else (None, None)
        geo = _fig.heat_geometry(self.cache.image_size, fused.shape)
        xs, ys = _fig.query_box_path(*self.query, self._cell())
        with self.maps_figure.batch_update():
            if self.maps_figure.layout.meta["charts"] != H:  # the grid for 1 + H panels, the rest hidden
                _fig.show_chart_panels(self.maps_figure, 1 + H)
            for z, t in zip(zs, self.heat_traces):
                t.update(z=z, zmin=lo if shared else float(z.min()), zmax=hi if shared else float(z.max()))
                if t.dx != geo["dx"] or t.dy != geo["dy"]:
                    t.update(**geo)
            for b in self._boxes[:1 + H]:
                b.update(x=xs, y=ys)
        self.info.value = self._info_html()

    def _update_accuracy(self) -> None:
        if self.accuracy_figure is None:
            return
        cur = ChartExplorer._trace(self.accuracy_figure, "current")
        h = self.num_charts
        with self.accuracy_figure.batch_update():
            cur.x, cur.y = ([h], [self.accuracies[h]]) if h in self.accuracies else ([], [])

    def _similarity_context(self) -> str:
        return f"H = {self.num_charts}, "

    def _refresh_all(self) -> None:
        super()._refresh_all()
        self._update_accuracy()

