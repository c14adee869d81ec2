"""Scenes with their objects drawn on them: boxes, mask outlines and class names (ground truth or a model's
predictions), as one plotly figure with a panel per image.

    scenes_figure(images, targets, class_names=SCENE_CLASSES, cols=4)

Traces: per panel an "image" (``go.Image``), per object a "box <k>" outline (``go.Scatter``) and, when the target has
masks, a "mask <k>" outline (``go.Contour`` at level 0.5); class names (with the score when the target has
``scores``) are annotations at each box's top-left corner. Colours follow the class index.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from ..data.scenes import SCENE_CLASSES
from .figure_base import image_axes, image_trace, plotly_go, to_numpy, to_uint8_image

__all__ = ["scenes_figure", "CLASS_COLORS"]


# one colour per class index 1..10 (index 0, the background, is never drawn)
CLASS_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
                "#7f7f7f")


def _objects(fig: Any, target: Mapping[str, Any], class_names: Sequence[str], row: int, col: int) -> None:
    """Add one panel's boxes, mask outlines and names (the target of one image: boxes (N, 4) xyxy, labels (N,),
    optional masks (N, H, W) and scores (N,))."""
    go = plotly_go()
    boxes, labels = to_numpy(target["boxes"], float).reshape(-1, 4), to_numpy(target["labels"]).reshape(-1)
    masks = to_numpy(target["masks"]) if "masks" in target else None
    scores = to_numpy(target["scores"]).reshape(-1) if "scores" in target else None
    for k, ((x0, y0, x1, y1), label) in enumerate(zip(boxes, labels)):
        color = CLASS_COLORS[(int(label) - 1) % len(CLASS_COLORS)]
        xs, ys = [x0 - 0.5, x1 - 0.5, x1 - 0.5, x0 - 0.5, x0 - 0.5], [y0 - 0.5, y0 - 0.5, y1 - 0.5, y1 - 0.5, y0 - 0.5]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color=color, width=1.5), name=f"box {k}",
                                 showlegend=False, hoverinfo="skip"), row=row, col=col)
        if masks is not None:
            m = masks[k].reshape(masks.shape[-2:]).astype(float)  # (H, W); a (1, H, W) soft mask too
            fig.add_trace(go.Contour(z=m, contours=dict(start=0.5, end=0.5, size=1, coloring="lines"),
                                     colorscale=[[0, color], [1, color]], showscale=False, line=dict(width=1),
                                     name=f"mask {k}", hoverinfo="skip"), row=row, col=col)
        name = class_names[int(label)] if 0 <= int(label) < len(class_names) else str(int(label))
        text = name if scores is None else f"{name} {float(scores[k]):.2f}"
        fig.add_annotation(x=x0 - 0.5, y=y0 - 0.5, text=text, showarrow=False, xanchor="left", yanchor="bottom",
                           font=dict(size=9, color="white"), bgcolor=color, row=row, col=col)


def scenes_figure(images: Any, targets: Sequence[Mapping[str, Any]], class_names: Sequence[str] = SCENE_CLASSES,
                  cols: int = 4, panel_size: int = 220, titles: Optional[Sequence[str]] = None) -> Any:
    """Images ``(B, 3, H, W)`` (uint8, [0, 1] floats, or normalised: min-max rescaled for display) with their
    targets (``FashionScenesDataset`` targets or a torchvision detector's outputs): boxes, mask outlines, names."""
    from plotly.subplots import make_subplots

    images = list(images)
    if len(images) != len(targets) or not images:
        raise ValueError(f"images and targets must be as many and not none; got {len(images)} and {len(targets)}")
    if cols < 1:
        raise ValueError(f"cols must be an int >= 1, got {cols!r}")
    cols = min(cols, len(images))
    rows = -(-len(images) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles) if titles else None,
                        horizontal_spacing=0.02, vertical_spacing=0.06)
    for i, (image, target) in enumerate(zip(images, targets)):
        row, col = i // cols + 1, i % cols + 1
        pixels = to_uint8_image(image)  # (H, W, 3)
        fig.add_trace(image_trace(pixels), row=row, col=col)
        _objects(fig, target, class_names, row, col)
        axis = "" if i == 0 else str(i + 1)
        image_axes(fig, pixels.shape[:2], xaxis=f"xaxis{axis}", yaxis=f"yaxis{axis}", anchor=f"x{axis}")
    fig.update_layout(width=cols * panel_size, height=rows * panel_size + 40, margin=dict(l=10, r=10, t=40, b=10),
                      plot_bgcolor="black")
    return fig
