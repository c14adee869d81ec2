"""What both explorers share: their inputs (images, masks, display images) and their controls (sliders, the
layer and head pickers, the click on the image) as `ExplorerControls`, the base class of both.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.nn import functional as F

from ..explain.metrics import SIMILARITY_KINDS
from . import explorer_html, figures
from .attention_cache import AttentionCache, Head, head_index

__all__ = ["to_images", "to_masks", "as_display_images", "ExplorerControls", "STATIC_HTML_ENV"]

# set (to anything but "" or "0") in a kernel's environment, the explorers' notebook output also carries their
# kernel-free HTML (text/html, plotly.js left to the page): what the course site shows (mkviz.course.book)
STATIC_HTML_ENV = "MKVIZ_STATIC_HTML"


# --------------------------------------------------------------------------- helpers
def to_images(images: Any, image_size) -> torch.Tensor:
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

def to_masks(masks: Any, n: int, size: Tuple[int, int]) -> Optional[torch.Tensor]:
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

def as_display_images(display_images: Any, images: torch.Tensor) -> List[np.ndarray]:
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
        out.append(figures.to_uint8_image(im))
    return out

def _points_xy(points: Any) -> Optional[Tuple[float, float]]:
    xs, ys = list(getattr(points, "xs", []) or []), list(getattr(points, "ys", []) or [])
    if not xs or not ys or xs[0] is None or ys[0] is None:
        return None
    return float(xs[0]), float(ys[0])

class ExplorerControls:
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
        return head_index(self.head_dropdown.value)

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
        ref = figures.similarity_heatmap(sim, kind)
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

    # ---------------------------------------------------------------- display, export and timing
    def to_html(self, **kwargs: Any) -> str:  # pragma: no cover - each explorer defines it
        raise NotImplementedError

    def save_html(self, path: Union[str, Path], overwrite: bool = False, **kwargs: Any) -> Path:
        """Write `to_html(**kwargs)` (a whole page, plotly.js inline unless kwargs say otherwise) to path; an
        existing file is replaced only with overwrite=True. The page opens in any browser, with no kernel and
        no network. Returns the path."""
        return explorer_html.save_html(path, self.to_html(**kwargs), overwrite=overwrite)

    def display(self) -> None:
        from IPython.display import display
        if os.environ.get(STATIC_HTML_ENV, "") in ("", "0"):
            display(self.widget)
        else:
            display(self._repr_mimebundle_(), raw=True)

    def _ipython_display_(self) -> None:
        self.display()

    def _repr_mimebundle_(self, **kwargs):
        """The widget's view; with $MKVIZ_STATIC_HTML set also the kernel-free HTML fragment (`to_html`, plotly.js
        from the page), which a page without a kernel shows instead (Swin, which has none: the view only)."""
        bundle = dict(self.widget._repr_mimebundle_(**kwargs))
        if os.environ.get(STATIC_HTML_ENV, "") not in ("", "0"):
            try:
                bundle["text/html"] = self.to_html(full_page=False, plotly_js="none")
            except ValueError:
                pass
        return bundle

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
        src = figures.image_source(self._display[self.image_index])
        with self.maps_figure.batch_update():
            for im in self.maps_figure.layout.images:
                im.source = src
