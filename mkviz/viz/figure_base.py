"""What every figure of `mkviz.viz.figures` is drawn with: arrays and images converted for plotly, an image as a
layout image with its axes (pixel (0, 0) at the top left), and the geometry of a heat map stretched over an
image (cells, the query box).
"""
from __future__ import annotations

import base64
import io
from typing import Any, List, Optional, Tuple

import numpy as np

__all__ = [
    "to_numpy", "to_uint8_image", "image_source", "query_box_path", "heat_geometry", "go", "image_trace",
    "panel_image", "cell", "image_axes", "as_map",
]


# --------------------------------------------------------------------------- conversions
def plotly_go() -> Any:
    """The module plotly.graph_objects (plotly is optional: imported on first use)."""
    import plotly.graph_objects as go
    return go

def to_numpy(x: Any, dtype=None) -> np.ndarray:
    """torch tensor / numpy array / nested list -> numpy array (detached, on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.float16", "torch.bfloat16"):
            x = x.float()
        x = x.numpy()
    a = np.asarray(x)
    return a.astype(dtype, copy=False) if dtype is not None else a

def to_uint8_image(image: Any) -> np.ndarray:
    """An image as uint8 (H, W, 3) for display.

    Accepts (3, H, W) or (H, W, 3) (channels first whenever the first dim is 1 or 3; also (H, W)
    greyscale): uint8 as is; float in [0, 1]
    scaled by 255; any other float range (e.g. ImageNet-normalised model input) min-max rescaled to
    [0, 255] (a display approximation: pass the raw pixels when you have them).
    """
    a = to_numpy(image)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"image: expected (3, H, W), (H, W, 3) or (H, W); got shape {a.shape}")
    if a.shape[0] in (1, 3):
        a = np.transpose(a, (1, 2, 0))  # channels first (torch) whenever the first dim is 1 or 3
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.shape[-1] != 3:
        raise ValueError(f"image: expected 1 or 3 channels; got shape {a.shape}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    a = a.astype(np.float64)
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.ascontiguousarray(np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8))

def image_source(image: Any) -> Optional[str]:
    """A PNG data URI of the image (for `go.Image(source=...)`: far smaller than a z array); None without PIL."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow comes with torchvision
        return None
    buf = io.BytesIO()
    Image.fromarray(to_uint8_image(image)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")

def image_trace(image: np.ndarray):
    """attention_overlay's "image" trace: a PNG source, or raw pixels as z without pillow."""
    go = plotly_go()
    src = image_source(image)
    if src is not None:
        return go.Image(source=src, name="image", hoverinfo="x+y")
    return go.Image(z=image, name="image", hoverinfo="x+y")

def panel_image(source: str, image_hw: Tuple[int, int], axis: str = "") -> dict:
    """A layout image (not a trace) filling axes x{axis}/y{axis} as `image_axes` sets them up: pixel
    (0, 0) at the top left. A go.Image trace with a `source` would do the same, but in a FigureWidget
    that is updated before its first render has loaded that source, plotly never wires the widget's
    click/hover callbacks (plotly 6–7); layout images do not hold the first render up."""
    H, W = image_hw
    return dict(source=source, xref="x" + axis, yref="y" + axis, x=-0.5, y=-0.5, sizex=W, sizey=H,
                xanchor="left", yanchor="top", sizing="stretch", layer="below")

def heat_cell(image_hw: Tuple[int, int], map_hw: Tuple[int, int]) -> Tuple[float, float]:
    return image_hw[0] / map_hw[0], image_hw[1] / map_hw[1]

def heat_geometry(image_hw: Tuple[int, int], map_hw: Tuple[int, int]) -> dict:
    """x0/dx/y0/dy putting a (h, w) map's cell centres on the pixel coordinates of the cells' centres."""
    ch, cw = heat_cell(image_hw, map_hw)
    return dict(x0=(cw - 1) / 2, dx=cw, y0=(ch - 1) / 2, dy=ch)

def query_box_path(row: int, col: int, cell: Tuple[float, float]) -> Tuple[List[float], List[float]]:
    """Closed outline (xs, ys) in pixel coordinates of grid cell (row, col) with cell size (ch, cw)."""
    ch, cw = cell
    x0, x1 = col * cw - 0.5, (col + 1) * cw - 0.5
    y0, y1 = row * ch - 0.5, (row + 1) * ch - 0.5
    return [x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0]

def image_axes(fig, image_hw: Tuple[int, int], xaxis: str = "xaxis", yaxis: str = "yaxis",
                anchor: str = "x") -> None:
    H, W = image_hw
    fig.layout[xaxis].update(range=[-0.5, W - 0.5], showticklabels=False, showgrid=False, zeroline=False,
                             constrain="domain")
    fig.layout[yaxis].update(range=[H - 0.5, -0.5], autorange=False, showticklabels=False, showgrid=False,
                             zeroline=False, scaleanchor=anchor, scaleratio=1, constrain="domain")

def as_map(x: Any, name: str) -> np.ndarray:
    a = to_numpy(x)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D map (h, w); got shape {a.shape}")
    return a
