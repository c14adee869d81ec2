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

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..explain import metrics
from ..explain.maps import query_index, query_position
from ..explain.metrics import SIMILARITY_KINDS
from ..explain.scene_attention import query_regions
from . import figures
from .attention_cache import AttentionCache, evidence_share
from .explorer_html import chart_count_explorer_html, chart_explorer_html
from .explorer_controls import ExplorerControls, as_display_images, to_images, to_masks
from .scene_view import instance_masks_list, scene_region_bars, scene_shares_by_head

__all__ = ["ChartExplorer", "ChartCountExplorer", "AttentionCache", "SIMILARITY_KINDS"]


# --------------------------------------------------------------------------- ChartExplorer
class ChartExplorer(ExplorerControls):
    """What the fused key and each chart attend to, for one model, interactively.

    Args:
        model: a manifold-key ViT / DeiT / Swin (`mkviz.convert`, `mkviz.create_model`, a checkpoint).
        images: float (B, 3, H, W) model inputs (normalised as the model expects), or a batched `Sample`.
        masks: optional evidence masks (B, H, W) (e.g. `Sample.evidence_mask`): enables the
            "attention on evidence" panel.
        instance_masks: instead of masks, B tensors (K_b, H, W) of each scene's instance silhouettes (ViT / DeiT):
            `scene_figure` shows, for the current query, the share of the fused map and of each chart on the
            same object (the instance covering the query's patch for at least half its pixels), the other
            objects and the background, with chance (uniform attention) dashed per region; a query on no object
            has no "same" bar and the title says "query on the background" (`mkviz.viz.scene_view`).
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
    Swin); `scene_figure` (with instance_masks: `scene_view.scene_region_bars` for the query, updated with it;
    else None); `widget` (the top-level ipywidgets.VBox); `cache` (the `AttentionCache`).
    """

    def __init__(self, model: nn.Module, images: Any, masks: Any = None, image_size=None,
                 class_names: Optional[Sequence[str]] = None, *, labels: Any = None, display_images: Any = None,
                 layer: Union[str, int, None] = None, query: Optional[Tuple[int, int]] = None,
                 cache_size: int = 4, height_per_row: int = 190, instance_masks: Any = None) -> None:
        import ipywidgets as W
        import plotly.graph_objects as go

        x = to_images(images, image_size)
        scenes = instance_masks_list(instance_masks, masks, x.shape[0], tuple(x.shape[-2:]), image_size is not None)
        if masks is None and scenes is None and hasattr(images, "evidence_mask"):
            masks = images.evidence_mask
        if labels is None and hasattr(images, "label") and hasattr(images, "evidence_mask"):
            labels = images.label
        self.cache = AttentionCache(model, x, cache_size=cache_size)
        self.masks = to_masks(masks, len(self.cache), self.cache.image_size)
        if scenes is not None and self.cache.is_swin:
            raise ValueError("instance_masks: the scene panel is for ViT / DeiT; Swin's window attention has none")
        self.instance_masks, self._regions = scenes, {}
        self.class_names = list(class_names) if class_names is not None else None
        self.labels = None if labels is None else [int(v) for v in torch.as_tensor(labels).reshape(-1)]
        self._display = as_display_images(display_images, x)
        self._build_common_controls(len(self.cache), self.cache.layers, self.cache.num_heads, layer, query)
        self._layer_seen = self.layer

        H = self.cache.num_charts
        fused, charts, frow, crow = self.cache.maps(self.image_index, self.layer, self.head, self.query)
        fig = figures.chart_maps_figure(self._display[0], fused, charts, query=self.query, panel_size=height_per_row)
        self.maps_figure = go.FigureWidget(fig)
        self.heat_traces = [self._trace(self.maps_figure, "fused")] + \
            [self._trace(self.maps_figure, f"chart {c + 1}") for c in range(H)]
        self._boxes = [self._trace(self.maps_figure, f"query {p}") for p in range(H + 1)]
        for t in self.heat_traces:  # each heat map covers its panel's image: a click on a panel lands on it
            t.on_click(self.on_image_click)

        self.similarity_figure = go.FigureWidget(figures.similarity_heatmap(
            self.cache.similarity(self.image_index, self.layer, self.head, "cosine"), "cosine", height=360))
        self.stats_figure = go.FigureWidget(self._stats_layout(H))
        self.scene_figure = None if scenes is None else go.FigureWidget(scene_region_bars(**self.current_scene()))
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
        scene = [] if self.scene_figure is None else [self.scene_figure]
        bottom = W.HBox([self.similarity_figure, self.stats_figure, *scene], layout=W.Layout(flex_flow="row wrap"))
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

    def to_html(self, **kwargs: Any) -> str:
        """This explorer as self-contained HTML that needs no kernel (`mkviz.chart_explorer_html`): its model,
        images, evidence masks, class names, labels and display images, opening on its current layer and query.
        kwargs add or override that function's options (full_page, plotly_js, heads, dtype, layers, ...)."""
        state = dict(masks=self.masks, instance_masks=self.instance_masks, class_names=self.class_names, labels=self.labels,
                     display_images=np.stack(self._display), layer=self.layer,
                     query=(int(self.query[0]), int(self.query[1])))
        return chart_explorer_html(self.cache.model, self.cache.images, **{**state, **kwargs})

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
        out = {"entropy": torch.cat([metrics.attention_entropy(frow)[None], metrics.attention_entropy(crow)]),
               "max_entropy": float(np.log(frow.shape[-1]))}
        if self.masks is not None:
            cov = self.cache.coverage(self.masks[self.image_index], self._grid())
            out["evidence"] = torch.cat([evidence_share(fused, cov)[None], evidence_share(charts, cov)])
            out["chance"] = float(cov.mean())
        return out

    def current_scene(self) -> Dict[str, Any]:
        """{"shares": (1 + H, 3) fused then charts on same / other / background (NaN same: a query on no object),
        "chance": (3,)} for the current image, layer, head and query (`mkviz.viz.scene_view`)."""
        i, geo = self.image_index, self.cache.geometry[self.layer]
        if i not in self._regions:
            self._regions[i] = query_regions(self.instance_masks[i], geo["grid"])[1]  # (G, 3, G)
        q = self.query[0] * geo["grid"][1] + self.query[1]
        rows = self.cache.query_rows(i, self.layer, self.query)[:, :, None, geo["prefix"]:]  # (M, heads, 1, G)
        shares = scene_shares_by_head(rows, self._regions[i][q:q + 1])[:, 0 if self.head is None else 1 + self.head]
        return {"shares": shares[:, 0], "chance": self._regions[i][q].mean(-1)}

    def _update_scene(self) -> None:
        """Redraw the scene bars for the current query (the figure `scene_region_bars` builds, copied in)."""
        if self.scene_figure is None:
            return
        new = scene_region_bars(**self.current_scene())
        with self.scene_figure.batch_update():
            for t, n in zip(self.scene_figure.data, new.data):
                t.y = n.y
            self.scene_figure.layout.title.text = new.layout.title.text

    # ---------------------------------------------------------------- the key atlas (ViT)
    def _query_token(self) -> int:
        geo = self.cache.geometry[self.layer]
        return query_index(self.query[0], self.query[1], geo["grid"], geo["prefix"])

    def _atlas(self):
        rec = self.cache.entry(self.image_index)["recording"]
        with torch.no_grad():
            return figures.key_atlas(rec, self.layer, head=self.head, query=self._query_token())

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
        geo = figures.heat_geometry(self.cache.image_size, fused.shape)
        xs, ys = figures.query_box_path(*self.query, self._cell())
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
        if getattr(self, "scene_figure", None) is not None:
            self._update_scene()
        if getattr(self, "atlas_figure", None) is not None:
            self._update_atlas_query()

# --------------------------------------------------------------------------- ChartCountExplorer
class ChartCountExplorer(ExplorerControls):
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
        x = to_images(images, image_size)
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
        self.masks = to_masks(masks, len(ref), ref.image_size)
        self.accuracies = None if accuracies is None else {int(k): float(v) for k, v in accuracies.items()}
        self.baseline = baseline
        self._display = as_display_images(display_images, x)
        self.charts_slider = W.SelectionSlider(options=counts, value=charts if charts is not None else counts[-1],
                                               description="charts H", continuous_update=True)
        self._build_common_controls(len(ref), ref.layers, ref.num_heads, layer, query)
        self._layer_seen = self.layer

        self.max_charts = max(counts)
        fused, chs = self.cache.maps(self.image_index, self.layer, self.head, self.query)[:2]
        fig = figures.chart_maps_figure(self._display[0], fused, chs, query=self.query, num_panels=1 + self.max_charts,
                                     panel_size=height_per_row, title="fused map and the charts' maps")
        self.maps_figure = go.FigureWidget(fig)
        self.heat_traces = [ChartExplorer._trace(self.maps_figure, "fused")] + \
            [ChartExplorer._trace(self.maps_figure, f"chart {c + 1}") for c in range(self.max_charts)]
        self._boxes = [ChartExplorer._trace(self.maps_figure, f"query {p}") for p in range(self.max_charts + 1)]
        for t in self.heat_traces:  # each heat map covers its panel's image: a click on a panel lands on it
            t.on_click(self.on_image_click)
        self.similarity_figure = go.FigureWidget(figures.similarity_heatmap(
            self.cache.similarity(self.image_index, self.layer, self.head, "cosine"), "cosine", height=360))
        self.accuracy_figure = None
        if self.accuracies:
            self.accuracy_figure = go.FigureWidget(figures.accuracy_vs_charts(
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

    def to_html(self, **kwargs: Any) -> str:
        """This explorer as self-contained HTML that needs no kernel (`mkviz.chart_count_explorer_html`): its
        models, images, evidence masks, display images, accuracies and baseline, opening on its current chart
        count, layer and query. kwargs add or override that function's options (full_page, plotly_js, ...)."""
        state = dict(masks=self.masks, accuracies=self.accuracies, baseline=self.baseline, charts=self.num_charts,
                     display_images=np.stack(self._display), layer=self.layer,
                     query=(int(self.query[0]), int(self.query[1])))
        return chart_count_explorer_html({h: c.model for h, c in self.caches.items()}, self.cache.images,
                                         **{**state, **kwargs})

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
            parts.append(f"fused attention on evidence {float(evidence_share(fused, cov)):.2f} "
                         f"(chance {float(cov.mean()):.2f})")
        return " · ".join(parts)

    def _update_maps(self) -> None:
        fused, charts = self.current_maps()
        H = charts.shape[0]
        zs = [fused.numpy()] + [c.numpy() for c in charts]
        shared = self.shared_scale_checkbox.value
        lo, hi = (float(min(z.min() for z in zs)), float(max(z.max() for z in zs))) if shared else (None, None)
        geo = figures.heat_geometry(self.cache.image_size, fused.shape)
        xs, ys = figures.query_box_path(*self.query, self._cell())
        with self.maps_figure.batch_update():
            if self.maps_figure.layout.meta["charts"] != H:  # the grid for 1 + H panels, the rest hidden
                figures.show_chart_panels(self.maps_figure, 1 + H)
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
