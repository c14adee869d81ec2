"""Map attention rows back onto the image.

ViT (timm ``VisionTransformer``): tokens are ``N = num_prefix_tokens + gh*gw``
with the prefix tokens (cls, distillation, register tokens) first and the patch
tokens in row-major order over the ``(gh, gw)`` patch grid.

Swin (timm ``SwinTransformer``): each block attends inside windows.  In
``SwinTransformerBlock._attn`` the ``(B, H, W, C)`` stage tokens are

1. cyclically shifted: ``torch.roll(x, shifts=(-s_h, -s_w), dims=(1, 2))``
   (token at original ``(r, c)`` moves to ``((r - s_h) mod H, (c - s_w) mod W)``);
2. zero-padded at the bottom/right to ``Hp = ceil(H/wh)*wh``, ``Wp = ceil(W/ww)*ww``;
3. split by ``window_partition`` into ``B * nWh * nWw`` windows, ordered
   batch-major, then window-row, then window-column; inside a window tokens are
   row-major (``local = lr * ww + lc``).

So the recorded attention is ``(B * nW, heads, Nw, Nw)`` with ``Nw = wh*ww``.
:func:`swin_window_attention_to_image` inverts exactly these steps.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F


__all__ = [
    "to_2tuple", "PatchGrid", "patch_grid", "query_index", "query_position", "upsample_map",
    "vit_attention_to_image", "swin_block_geometry", "swin_token_window", "swin_window_attention_to_image",
]

Size2 = Union[int, Tuple[int, int], Sequence[int]]
_MODES = ("bilinear", "nearest", "bicubic")


# --------------------------------------------------------------------------- ViT helpers
class PatchGrid(NamedTuple):
    """Token layout of a ViT: ``N = num_prefix_tokens + grid_size[0] * grid_size[1]``."""

    grid_size: Tuple[int, int]
    num_prefix_tokens: int
    patch_size: Optional[Tuple[int, int]]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]


def to_2tuple(v, name: str, minimum: int = 1) -> Tuple[int, int]:
    """An int or a pair (h, w) as a pair of ints >= minimum, else a ValueError naming `name`."""
    if isinstance(v, torch.Size):
        v = tuple(v)
    if isinstance(v, int) and not isinstance(v, bool):
        out = (v, v)
    elif isinstance(v, (tuple, list)) and len(v) == 2:
        out = (int(v[0]), int(v[1]))
    else:
        raise ValueError(f"`{name}` must be an int or a pair (h, w), got {v!r}")
    if out[0] < minimum or out[1] < minimum:
        raise ValueError(f"`{name}` must be {'positive' if minimum == 1 else f'>= {minimum}'}, got {out}")
    return out




def patch_grid(model_or_patch_embed, image_size: Optional[Size2] = None) -> PatchGrid:
    """Read the patch grid and prefix-token count from a timm ViT (or its ``patch_embed``).

    * ``grid_size``: ``patch_embed.dynamic_feat_size(image_size)`` when ``image_size``
      is given (respects ``dynamic_img_size`` / ``dynamic_img_pad``: ceil vs floor),
      else ``patch_embed.grid_size`` (the size the model was built for).
    * ``num_prefix_tokens``: ``model.num_prefix_tokens`` (cls + registers (+ dist));
      0 when only a ``patch_embed`` is given or the attribute is missing.
    * ``patch_size``: ``patch_embed.patch_size`` if present.

    Args:
        model_or_patch_embed: ``timm.models.VisionTransformer`` (anything with a
            ``patch_embed`` attribute) or a timm ``PatchEmbed``.
        image_size: ``(H_img, W_img)`` (int for square) of the actual input.

    Returns:
        :class:`PatchGrid` ``(grid_size, num_prefix_tokens, patch_size)``.
    """
    obj = model_or_patch_embed
    pe = getattr(obj, "patch_embed", None)
    if pe is None:
        if hasattr(obj, "grid_size") or hasattr(obj, "patch_size"):
            pe, num_prefix = obj, 0
        else:
            raise ValueError(
                "`model_or_patch_embed` must be a timm VisionTransformer (with `.patch_embed`) "
                f"or a PatchEmbed (with `.grid_size`/`.patch_size`), got {type(obj).__name__}"
            )
    else:
        num_prefix = int(getattr(obj, "num_prefix_tokens", 0) or 0)
    patch_size = getattr(pe, "patch_size", None)
    patch_size = to_2tuple(patch_size, "patch_embed.patch_size") if patch_size is not None else None
    if image_size is not None:
        img = to_2tuple(image_size, "image_size")
        if hasattr(pe, "dynamic_feat_size"):
            gs = tuple(int(v) for v in pe.dynamic_feat_size(img))
        elif patch_size is not None:
            gs = (img[0] // patch_size[0], img[1] // patch_size[1])
        else:
            raise ValueError("cannot derive the grid for `image_size`: patch_embed has no patch_size")
    else:
        gs = getattr(pe, "grid_size", None)
        if gs is None:
            raise ValueError("patch_embed.grid_size is None (model built without img_size); pass `image_size`")
        gs = tuple(int(v) for v in gs)
    return PatchGrid(to_2tuple(gs, "grid_size"), num_prefix, patch_size)


def query_index(row: int, col: int, grid_size: Size2, num_prefix_tokens: int = 0) -> int:
    """Token index of patch ``(row, col)``: ``num_prefix_tokens + row * gw + col``."""
    gh, gw = to_2tuple(grid_size, "grid_size")
    if not (0 <= row < gh and 0 <= col < gw):
        raise ValueError(f"`(row, col)`=({row}, {col}) outside the patch grid {(gh, gw)}")
    if num_prefix_tokens < 0:
        raise ValueError(f"`num_prefix_tokens` must be >= 0, got {num_prefix_tokens}")
    return int(num_prefix_tokens + row * gw + col)


def query_position(index: int, grid_size: Size2, num_prefix_tokens: int = 0) -> Tuple[int, int]:
    """Inverse of :func:`query_index`: ``(row, col)`` of token ``index``.

    Raises ``ValueError`` for prefix tokens (they have no grid position) and
    out-of-range indices.
    """
    gh, gw = to_2tuple(grid_size, "grid_size")
    p = int(index) - num_prefix_tokens
    if int(index) < 0 or p >= gh * gw:
        raise ValueError(
            f"`index`={index} outside [0, {num_prefix_tokens + gh * gw}) for grid {(gh, gw)} "
            f"with {num_prefix_tokens} prefix tokens"
        )
    if p < 0:
        raise ValueError(f"`index`={index} is a prefix token (num_prefix_tokens={num_prefix_tokens})")
    return p // gw, p % gw


def upsample_map(grid_map: torch.Tensor, image_size: Size2, mode: str = "bilinear") -> torch.Tensor:
    """Resize a ``(h, w)`` or ``(B, h, w)`` map to ``image_size``.

    ``"bilinear"``/``"bicubic"`` use ``align_corners=False`` (patch centres sit
    at pixel-centre positions of their patch).  ``"nearest"`` uses
    ``nearest-exact`` so each patch's value fills exactly the pixels of that
    patch when the image size is a multiple of the grid (and the rounding is
    symmetric when it is not).  Values are interpolated, not mass-conserving.
    """
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}")
    if not isinstance(grid_map, torch.Tensor) or grid_map.dim() not in (2, 3):
        raise ValueError(
            f"`grid_map` must be a tensor of shape (h, w) or (B, h, w), "
            f"got {getattr(grid_map, 'shape', type(grid_map).__name__)}"
        )
    size = to_2tuple(image_size, "image_size")
    squeeze = grid_map.dim() == 2
    x = grid_map[None, None] if squeeze else grid_map[:, None]
    if not x.is_floating_point():
        x = x.float()
    if mode == "nearest":
        out = F.interpolate(x, size=size, mode="nearest-exact")
    else:
        out = F.interpolate(x, size=size, mode=mode, align_corners=False)
    return out[0, 0] if squeeze else out[:, 0]


def vit_attention_to_image(
    attn_row: torch.Tensor,
    grid_size: Size2,
    num_prefix_tokens: int = 1,
    image_size: Optional[Size2] = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Project a query's attention row over ViT tokens onto the image.

    Steps: drop the ``num_prefix_tokens`` leading keys, reshape the remaining
    ``gh*gw`` weights row-major to the ``(gh, gw)`` patch grid (non-square grids,
    e.g. from ``dynamic_img_size``, are fine), then upsample to ``image_size``
    with :func:`upsample_map`.  Values are the raw attention weights (not
    renormalised after dropping the prefix tokens).

    Args:
        attn_row: ``(N,)`` or ``(B, N)`` with ``N = num_prefix_tokens + gh*gw``
            (e.g. ``attn[b, h, q]`` or ``attn[:, h, q]``; average heads beforehand
            if wanted).
        grid_size: ``(gh, gw)`` (int for square); see :func:`patch_grid`.
        num_prefix_tokens: leading non-patch tokens (1 for a cls-token ViT).
        image_size: ``(H_img, W_img)``; ``None`` returns the ``(gh, gw)`` grid.
        mode: ``"bilinear"`` (default), ``"nearest"`` or ``"bicubic"``.

    Returns:
        ``(H_img, W_img)`` or ``(B, H_img, W_img)`` (``(gh, gw)``-sized without ``image_size``).
    """
    if not isinstance(attn_row, torch.Tensor) or attn_row.dim() not in (1, 2):
        raise ValueError(
            f"`attn_row` must be a tensor of shape (N,) or (B, N), "
            f"got {getattr(attn_row, 'shape', type(attn_row).__name__)}"
        )
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}")
    gh, gw = to_2tuple(grid_size, "grid_size")
    if num_prefix_tokens < 0:
        raise ValueError(f"`num_prefix_tokens` must be >= 0, got {num_prefix_tokens}")
    n = attn_row.shape[-1]
    if n != num_prefix_tokens + gh * gw:
        raise ValueError(
            f"`attn_row` last dim must be N = num_prefix_tokens + gh*gw = "
            f"{num_prefix_tokens} + {gh}*{gw} = {num_prefix_tokens + gh * gw}, got {n}"
        )
    grid = attn_row[..., num_prefix_tokens:].reshape(*attn_row.shape[:-1], gh, gw)
    if image_size is None:
        return grid
    return upsample_map(grid, image_size, mode)


# --------------------------------------------------------------------------- Swin
def swin_block_geometry(block) -> dict:
    """Window geometry of a timm ``SwinTransformerBlock``.

    Returns ``dict(resolution=(H, W), window_size=(wh, ww), shift_size=(sh, sw))``
    read from ``block.input_resolution``, ``block.window_size`` and
    ``block.shift_size``; these are the *effective* values (timm shrinks the
    window to the resolution and drops the shift when the grid fits in one window).
    With ``dynamic_mask``/runtime resizing, pass the actual stage resolution instead.
    """
    for attr in ("input_resolution", "window_size", "shift_size"):
        if not hasattr(block, attr):
            raise ValueError(f"`block` has no attribute {attr!r}; expected a timm SwinTransformerBlock")
    return dict(
        resolution=to_2tuple(block.input_resolution, "block.input_resolution"),
        window_size=to_2tuple(block.window_size, "block.window_size"),
        shift_size=to_2tuple(block.shift_size, "block.shift_size", minimum=0),
    )


def swin_token_window(
    query: Tuple[int, int],
    resolution: Size2,
    window_size: Size2,
    shift_size: Size2 = 0,
    batch_index: int = 0,
) -> Tuple[int, int]:
    """Locate a token inside Swin's window partition.

    The token at original stage position ``(r, c)`` sits at rolled position
    ``(rr, rc) = ((r - sh) mod H, (c - sw) mod W)`` (roll happens before padding),
    in window ``(rr // wh, rc // ww)`` and at local index ``(rr % wh) * ww + rc % ww``.

    Returns:
        ``(window, local)``: ``window`` indexes the first dim of the
        ``(B * nW, heads, Nw, Nw)`` attention
        (``batch_index * nWh * nWw + (rr // wh) * nWw + rc // ww``), ``local`` the query/key dim.
    """
    H, W = to_2tuple(resolution, "resolution")
    wh, ww = to_2tuple(window_size, "window_size")
    sh, sw = to_2tuple(shift_size, "shift_size", minimum=0)
    r, c = int(query[0]), int(query[1])
    if not (0 <= r < H and 0 <= c < W):
        raise ValueError(f"`query`=({r}, {c}) outside the stage token grid {(H, W)}")
    if batch_index < 0:
        raise ValueError(f"`batch_index` must be >= 0, got {batch_index}")
    n_wh, n_ww = math.ceil(H / wh), math.ceil(W / ww)
    rr, rc = (r - sh) % H, (c - sw) % W
    window = batch_index * n_wh * n_ww + (rr // wh) * n_ww + rc // ww
    local = (rr % wh) * ww + rc % ww
    return window, local


def swin_window_attention_to_image(
    attn: torch.Tensor,
    query: Optional[Tuple[int, int]] = None,
    resolution: Size2 = None,
    window_size: Size2 = 7,
    shift_size: Size2 = 0,
    batch_index: int = 0,
    head: Optional[int] = None,
    *,
    query_pixel: Optional[Tuple[float, float]] = None,
    image_size: Optional[Size2] = None,
    mode: str = "nearest",
) -> torch.Tensor:
    """Scatter one query token's Swin window-attention row back onto the stage grid.

    Exactly inverts timm's ``SwinTransformerBlock._attn`` layout (roll by
    ``(-sh, -sw)``, bottom/right zero padding to multiples of the window,
    ``window_partition``): finds the window holding the query (see
    :func:`swin_token_window`), takes that query's row over the window's
    ``Nw = wh*ww`` keys, places it at the window's location in the padded,
    rolled ``(Hp, Wp)`` grid (zeros elsewhere), crops the padding and undoes the
    roll (``torch.roll(..., shifts=(sh, sw))``).

    The result is zero outside the query's (shifted) window and sums to 1
    unless the window contains padding tokens (their attention mass is dropped
    with the crop).  In shifted windows that straddle the wrap-around, keys from
    the other region are suppressed by timm's -100 mask (weights ~1e-44, not
    always exactly 0).

    Args:
        attn: ``(B * nW, heads, Nw, Nw)`` softmax output of a ``WindowAttention``
            (or head-reduced ``(B * nW, Nw, Nw)``); ``nW = ceil(H/wh) * ceil(W/ww)``.
            For chart attention ``(B*nW, H_charts, heads, Nw, Nw)`` pass ``chart_attn[:, c]``.
        query: ``(r, c)`` of the query token in the stage's (unshifted) token grid.
        resolution: ``(H, W)`` of the stage token grid (the block's input resolution).
        window_size: ``(wh, ww)`` effective window size (see :func:`swin_block_geometry`).
        shift_size: ``(sh, sw)``; 0 for W-MSA blocks, ``window//2`` for SW-MSA blocks.
        batch_index: which image of the batch.
        head: head index, or ``None`` to average over heads.
        query_pixel: alternative to ``query``: ``(y, x)`` pixel in an image of size
            ``image_size``; mapped to ``(floor(y*H/H_img), floor(x*W/W_img))``.
        image_size: if given, the ``(H, W)`` map is upsampled to it with ``mode``.
        mode: upsampling mode (default ``"nearest"`` so tokens stay crisp blocks).

    Returns:
        ``(H, W)`` map on the stage token grid, or ``(H_img, W_img)`` with ``image_size``.
    """
    H, W, wh, ww, sh, sw, n_wh, n_ww = _check_window_attention(attn, resolution, window_size, shift_size,
                                                                 batch_index)
    query = _swin_query(query, query_pixel, image_size, H, W)
    window, local = swin_token_window(query, (H, W), (wh, ww), (sh, sw), batch_index)
    row = _window_query_row(attn[window], local, head, wh, ww)

    n_win = n_wh * n_ww
    rr, rc = (window % n_win) // n_ww, (window % n_win) % n_ww
    grid = row.new_zeros((n_wh * wh, n_ww * ww))
    grid[rr * wh:(rr + 1) * wh, rc * ww:(rc + 1) * ww] = row
    grid = grid[:H, :W]
    if sh or sw:
        grid = torch.roll(grid, shifts=(sh, sw), dims=(0, 1))
    if image_size is not None:
        return upsample_map(grid, image_size, mode)
    return grid


def _check_window_attention(attn, resolution: Size2, window_size: Size2, shift_size: Size2,
                            batch_index: int) -> Tuple[int, int, int, int, int, int, int, int]:
    """Validate a Swin window-attention tensor against its stage geometry.

    Returns ``(H, W, wh, ww, sh, sw, nWh, nWw)``: the stage grid, the window, the
    shift and the number of windows along each axis (padding included)."""
    if not isinstance(attn, torch.Tensor) or attn.dim() not in (3, 4) or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(
            f"`attn` must be a tensor of shape (B*nW, heads, Nw, Nw) or (B*nW, Nw, Nw), "
            f"got {getattr(attn, 'shape', type(attn).__name__)}"
        )
    if resolution is None:
        raise ValueError("`resolution` (H, W) of the stage token grid is required")
    H, W = to_2tuple(resolution, "resolution")
    wh, ww = to_2tuple(window_size, "window_size")
    sh, sw = to_2tuple(shift_size, "shift_size", minimum=0)
    if attn.shape[-1] != wh * ww:
        raise ValueError(
            f"`attn` window dim Nw={attn.shape[-1]} does not match window_size {(wh, ww)} (Nw = {wh * ww})"
        )
    n_wh, n_ww = math.ceil(H / wh), math.ceil(W / ww)
    n_win = n_wh * n_ww
    if attn.shape[0] % n_win != 0:
        raise ValueError(
            f"`attn` first dim {attn.shape[0]} is not a multiple of the number of windows "
            f"nW = ceil({H}/{wh}) * ceil({W}/{ww}) = {n_win}; check resolution/window_size"
        )
    n_batch = attn.shape[0] // n_win
    if not 0 <= batch_index < n_batch:
        raise ValueError(f"`batch_index`={batch_index} out of range for batch size {n_batch}")
    return H, W, wh, ww, sh, sw, n_wh, n_ww


def _swin_query(query: Optional[Tuple[int, int]], query_pixel: Optional[Tuple[float, float]],
                image_size: Optional[Size2], H: int, W: int) -> Tuple[int, int]:
    """The query token ``(r, c)`` on the ``(H, W)`` stage grid: ``query`` itself, or the token under
    ``query_pixel`` ``(y, x)`` of an ``image_size`` image; exactly one of the two must be given."""
    if (query is None) == (query_pixel is None):
        raise ValueError("pass exactly one of `query` (r, c) or `query_pixel` (y, x)")
    if query_pixel is not None:
        if image_size is None:
            raise ValueError("`query_pixel` requires `image_size` (H_img, W_img)")
        ih, iw = to_2tuple(image_size, "image_size")
        y, x = float(query_pixel[0]), float(query_pixel[1])
        if not (0 <= y < ih and 0 <= x < iw):
            raise ValueError(f"`query_pixel`=({y}, {x}) outside image {(ih, iw)}")
        query = (min(int(y * H / ih), H - 1), min(int(x * W / iw), W - 1))
    return query


def _window_query_row(a: torch.Tensor, local: int, head: Optional[int], wh: int, ww: int) -> torch.Tensor:
    """Query ``local``'s attention row over its window's keys as a ``(wh, ww)`` tile; ``a`` is one window's
    ``(heads, Nw, Nw)`` (one head, or their mean with ``head=None``) or head-reduced ``(Nw, Nw)``."""
    if a.dim() == 3:  # (heads, Nw, Nw)
        if head is None:
            a = a.mean(dim=0)
        else:
            if not -a.shape[0] <= head < a.shape[0]:
                raise ValueError(f"`head`={head} out of range for {a.shape[0]} heads")
            a = a[head]
    elif head is not None:
        raise ValueError("`head` given but `attn` has no head dim (shape (B*nW, Nw, Nw))")
    return a[local].reshape(wh, ww)
