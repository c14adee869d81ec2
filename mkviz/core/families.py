"""Manifold-key attention for more timm families: BEiT, EVA / RoPE ViTs, Swin V2, ViT with relative position.

Each class is a drop-in for one timm attention module (same constructor and forward arguments, the family's
math kept as timm computes it) whose key rows of `qkv` are replaced by a `ManifoldKey`, like
`mkviz.core.attention.ManifoldAttention` does for `timm.layers.Attention`:

    ManifoldBeitAttention        timm.models.beit.Attention                  relative position bias (own table
                                                                             and/or the model's shared one),
                                                                             separate q/v biases, no key bias
    ManifoldRopeAttention        timm.layers.AttentionRope                   rotary embedding on q and k
    ManifoldEvaAttention         timm.models.eva.EvaAttention                rotary embedding, q/v biases only
    ManifoldWindowAttentionV2    timm.models.swin_transformer_v2.WindowAttention   cosine attention, learned
                                                                             logit scale, continuous position bias
    ManifoldRelPosAttention      timm.models.vision_transformer_relpos.RelPosAttention   relative position bias

Where the manifold key enters (`docs/design.md` §11): the fused key K = F(K_1..K_H) takes the place of timm's
k, then the family's key path runs on it unchanged (k_norm, rotary embedding, L2 normalisation). Per-chart
maps run the SAME key path on each chart's key (`logit_keys`), so a recording of a converted model shows
A_c = softmax(scale · q · g(K_c) + bias) with g what the layer does to its key.

`FAMILIES` maps each timm class to its manifold class; `mkviz.convert` and `mkviz.fold` use it
(`from_timm`, `to_timm`). Each class checks, on conversion, nothing beyond what `convert` checks for ViT.
"""
from __future__ import annotations

import copy
import math
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from timm.layers import AttentionRope, use_fused_attn
from timm.models.beit import Attention as BeitAttention
from timm.models.eva import EvaAttention
from timm.models.swin_transformer_v2 import WindowAttention as WindowAttentionV2
from timm.models.vision_transformer_relpos import RelPosAttention

from .attention import ContextBroadcast, ManifoldQKV, window_bias
from .family_parts import (Projection, finish_conversion, fused_qkv_parts, load_projections, manifold_options,
                           refuse_context_broadcast, split_qkv)
from .rope_attention import ManifoldEvaAttention, ManifoldRopeAttention

__all__ = ["ManifoldBeitAttention", "ManifoldRopeAttention", "ManifoldEvaAttention", "ManifoldWindowAttentionV2",
           "ManifoldRelPosAttention", "FAMILIES", "load_projections"]


# --------------------------------------------------------------------------- BEiT
class ManifoldBeitAttention(ManifoldQKV, BeitAttention):
    """BEiT attention with a manifold key; drop-in for `timm.models.beit.Attention`.

    Keeps the relative position bias table (`window_size`), `set_window_size` and the model's shared bias
    (`shared_rel_pos_bias`), both added to the logits of the fused key and of every chart alike. BEiT's key
    has no bias (timm keeps a zero `k_bias` buffer; a key bias only adds q·b_k, the same for every key, which
    the softmax removes), so the manifold key has none either; q and v keep theirs in `qv.bias`.

    forward(x (B, N, dim), shared_rel_pos_bias (1, heads, N, N) or None) -> (B, N, dim).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qkv_bias_separate: bool = False,
                 attn_drop: float = 0., proj_drop: float = 0., window_size: Optional[Tuple[int, int]] = None,
                 attn_head_dim: Optional[int] = None, device=None, dtype=None, *,
                 context_broadcast: bool = False, **manifold) -> None:
        dd = {"device": device, "dtype": dtype}
        options = manifold_options(manifold)
        if manifold:
            raise ValueError(f"ManifoldBeitAttention: unknown arguments {sorted(manifold)}")
        BeitAttention.__init__(self, dim, num_heads, qkv_bias=False, attn_drop=attn_drop, proj_drop=proj_drop,
                               window_size=window_size, attn_head_dim=attn_head_dim, **dd)
        del self.qkv
        self.head_dim = attn_head_dim or dim // num_heads
        self.attn_dim = self.head_dim * num_heads
        self.build_manifold(dim, qkv_bias, dd=dd, key_bias=False, **options)
        self.context_broadcast = ContextBroadcast(dim, **dd) if context_broadcast else None

    def forward(self, x: torch.Tensor, shared_rel_pos_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_width(x)
        q, k, v = self.project_qkv(x)  # each (B, heads, N, d)
        bias = self._get_rel_pos_bias() if self.relative_position_bias_table is not None else None  # (1, heads, N, N)
        if shared_rel_pos_bias is not None:
            bias = shared_rel_pos_bias if bias is None else bias + shared_rel_pos_bias
        out = self.attend(x, q, k, v, bias)  # (B, N, A)
        return self.project_out(out)

    @classmethod
    def from_timm(cls, old: BeitAttention, preserve: bool, perturbation: float,
                  generator: Optional[torch.Generator], **options) -> "ManifoldBeitAttention":
        ref = old.qkv.weight
        heads = old.num_heads
        new = cls(old.qkv.in_features, heads, qkv_bias=old.q_bias is not None, attn_drop=old.attn_drop.p,
                  proj_drop=old.proj_drop.p, window_size=old.window_size,
                  attn_head_dim=old.qkv.out_features // 3 // heads, device=ref.device, dtype=ref.dtype, **options)
        if old.relative_position_bias_table is not None:
            with torch.no_grad():
                new.relative_position_bias_table.copy_(old.relative_position_bias_table)
        q, k, v = cls.timm_projections(old)
        load_projections(new, q, k, v, old.proj, preserve, perturbation, generator)
        new.fused_attn = old.fused_attn
        return new

    @staticmethod
    def timm_projections(old: BeitAttention) -> Tuple[Projection, Projection, Projection]:
        (qw, _), (kw, _), (vw, _) = split_qkv(old.qkv.weight, None)
        return (qw, old.q_bias), (kw, None), (vw, old.v_bias)

    def to_timm(self) -> BeitAttention:
        """The folded plain timm layer (same outputs): qkv = [W_q; M; W_v], q_bias and v_bias from `qv`."""
        refuse_context_broadcast(self, "BEiT")
        ref = self.qv.weight
        new = BeitAttention(self.key.in_dim, self.num_heads, qkv_bias=self.qv.bias is not None,
                            attn_drop=self.attn_drop.p, proj_drop=self.proj_drop.p, window_size=self.window_size,
                            attn_head_dim=self.head_dim, device=ref.device, dtype=ref.dtype)
        weight, bias = fused_qkv_parts(self)
        A = self.attn_dim
        with torch.no_grad():
            new.qkv.weight.copy_(weight)
            if new.q_bias is not None:
                new.q_bias.copy_(bias[:A])
                new.v_bias.copy_(bias[2 * A:])
            if new.relative_position_bias_table is not None:
                new.relative_position_bias_table.copy_(self.relative_position_bias_table)
            new.proj.load_state_dict(self.proj.state_dict())
        return finish_conversion(new, self)

# --------------------------------------------------------------------------- Swin V2
class ManifoldWindowAttentionV2(ManifoldQKV, WindowAttentionV2):
    """Swin V2 window attention with a manifold key; drop-in for `timm.models.swin_transformer_v2.WindowAttention`.

    Cosine attention: A = softmax(τ_h · q̂ · k̂ᵀ + 16σ(cpb) + mask), q̂, k̂ the per-head L2-normalised q and k,
    τ_h = exp(min(logit_scale_h, log 100)). The manifold key is fused first and normalised after the fusion,
    K̂ = normalize(F(K_1..K_H)), as timm normalises its k; chart c's map normalises its own key,
    A_c = softmax(τ_h · q̂ · normalize(K_c)ᵀ + 16σ(cpb) + mask) (`logit_keys`; docs/design.md §11.3). The
    normalisation makes the key path nonlinear after the (linear) fusion: the fused map is no longer the
    geometric mean of the chart maps, but the key up to the normalisation still folds.

    `scale` is τ (heads, 1, 1), a tensor: `attend` multiplies it into the queries.

    forward(x (B·num_windows, N, C), mask (num_windows, N, N) of 0/-100 or None) -> same shape as x.
    """

    def __init__(self, dim: int, window_size: Tuple[int, int], num_heads: int, qkv_bias: bool = True,
                 qkv_bias_separate: bool = False, attn_drop: float = 0., proj_drop: float = 0.,
                 pretrained_window_size: Tuple[int, int] = (0, 0), device=None, dtype=None, *,
                 context_broadcast: bool = False, **manifold) -> None:
        dd = {"device": device, "dtype": dtype}
        options = manifold_options(manifold)
        if manifold:
            raise ValueError(f"ManifoldWindowAttentionV2: unknown arguments {sorted(manifold)}")
        WindowAttentionV2.__init__(self, dim, window_size, num_heads, qkv_bias=False, attn_drop=attn_drop,
                                   proj_drop=proj_drop, pretrained_window_size=pretrained_window_size, **dd)
        del self.qkv
        self.head_dim = dim // num_heads
        self.attn_dim = dim
        self.fused_attn = use_fused_attn()
        self.build_manifold(dim, qkv_bias, dd=dd, key_bias=False, **options)
        self.context_broadcast = ContextBroadcast(dim, **dd) if context_broadcast else None

    @property
    def scale(self) -> torch.Tensor:
        """τ = exp(min(logit_scale, log 100)): (heads, 1, 1), multiplies the cosine logits."""
        return torch.clamp(self.logit_scale, max=math.log(1. / 0.01)).exp()

    def logit_keys(self, chart_keys: torch.Tensor) -> torch.Tensor:
        """Chart keys (B, H, N, heads·d) -> (B, H, N, heads, d), each head's key L2-normalised."""
        return F.normalize(chart_keys.unflatten(-1, (self.num_heads, self.head_dim)), dim=-1)

    def position_bias(self) -> torch.Tensor:
        """Swin V2's continuous position bias 16·σ(cpb_mlp(coords)): (1, heads, N, N)."""
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        N = self.window_size[0] * self.window_size[1]
        bias = table[self.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1)  # (heads, N, N)
        return 16 * torch.sigmoid(bias).unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_width(x)
        B_, N, _ = x.shape
        q, k, v = self.project_qkv(x)  # each (B·nW, heads, N, d)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        bias = window_bias(self.position_bias(), mask, B_)  # (B·nW or 1, heads, N, N)
        out = self.attend(x, q, k, v, bias)  # (B·nW, N, C)
        return self.project_out(out)

    @staticmethod
    def timm_projections(old: WindowAttentionV2) -> Tuple[Projection, Projection, Projection]:
        (qw, _), (kw, _), (vw, _) = split_qkv(old.qkv.weight, None)
        return (qw, old.q_bias), (kw, None), (vw, old.v_bias)

    @classmethod
    def from_timm(cls, old: WindowAttentionV2, preserve: bool, perturbation: float,
                  generator: Optional[torch.Generator], **options) -> "ManifoldWindowAttentionV2":
        ref = old.qkv.weight
        new = cls(old.dim, old.window_size, old.num_heads, qkv_bias=old.q_bias is not None, attn_drop=old.attn_drop.p,
                  proj_drop=old.proj_drop.p, pretrained_window_size=old.pretrained_window_size, device=ref.device,
                  dtype=ref.dtype, **options)
        with torch.no_grad():
            new.logit_scale.copy_(old.logit_scale)
            new.cpb_mlp.load_state_dict(old.cpb_mlp.state_dict())
        q, k, v = cls.timm_projections(old)
        load_projections(new, q, k, v, old.proj, preserve, perturbation, generator)
        return new

    def to_timm(self) -> WindowAttentionV2:
        """The folded plain timm layer (same outputs): qkv = [W_q; M; W_v], q_bias/v_bias from `qv`."""
        refuse_context_broadcast(self, "Swin V2")
        ref = self.qv.weight
        new = WindowAttentionV2(self.dim, self.window_size, self.num_heads, qkv_bias=self.qv.bias is not None,
                                attn_drop=self.attn_drop.p, proj_drop=self.proj_drop.p,
                                pretrained_window_size=self.pretrained_window_size, device=ref.device, dtype=ref.dtype)
        weight, bias = fused_qkv_parts(self)
        with torch.no_grad():
            new.qkv.weight.copy_(weight)
            if new.q_bias is not None:
                new.q_bias.copy_(bias[:self.dim])
                new.v_bias.copy_(bias[2 * self.dim:])
            new.logit_scale.copy_(self.logit_scale)
            new.cpb_mlp.load_state_dict(self.cpb_mlp.state_dict())
            new.proj.load_state_dict(self.proj.state_dict())
        new.train(self.training)
        return new

# --------------------------------------------------------------------------- ViT with relative position
class ManifoldRelPosAttention(ManifoldQKV):
    """Attention with relative position bias and a manifold key; drop-in for timm's `RelPosAttention`
    (`vit_relpos_*`, `vit_srelpos_*`).

    The bias comes from the layer's own `rel_pos` module (RelPosBias, RelPosMlp, ...: `get_bias()`, added to
    the logits) or, without one, from the model's shared `shared_rel_pos`; fused key and charts see the same.

    forward(x (B, N, dim), shared_rel_pos (1, heads, N, N) or None) -> (B, N, dim).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 rel_pos_cls=None, attn_drop: float = 0., proj_drop: float = 0., norm_layer=nn.LayerNorm,
                 device=None, dtype=None, *, context_broadcast: bool = False, **manifold) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        options = manifold_options(manifold)
        if manifold:
            raise ValueError(f"ManifoldRelPosAttention: unknown arguments {sorted(manifold)}")
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_dim = dim
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.build_manifold(dim, qkv_bias, dd=dd, **options)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.rel_pos = rel_pos_cls(num_heads=num_heads, **dd) if rel_pos_cls else None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.context_broadcast = ContextBroadcast(dim, **dd) if context_broadcast else None

    def forward(self, x: torch.Tensor, shared_rel_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_width(x)
        q, k, v = self.project_qkv(x)  # each (B, heads, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        bias = self.rel_pos.get_bias() if self.rel_pos is not None else shared_rel_pos  # (1, heads, N, N) or None
        out = self.attend(x, q, k, v, bias)  # (B, N, A)
        return self.project_out(out)

    @staticmethod
    def timm_projections(old: RelPosAttention) -> Tuple[Projection, Projection, Projection]:
        return split_qkv(old.qkv.weight, old.qkv.bias)

    @classmethod
    def from_timm(cls, old: RelPosAttention, preserve: bool, perturbation: float,
                  generator: Optional[torch.Generator], **options) -> "ManifoldRelPosAttention":
        ref = old.qkv.weight
        qk_norm = not isinstance(old.q_norm, nn.Identity)
        new = cls(old.qkv.in_features, old.num_heads, qkv_bias=old.qkv.bias is not None, qk_norm=qk_norm,
                  attn_drop=old.attn_drop.p, proj_drop=old.proj_drop.p, device=ref.device, dtype=ref.dtype,
                  **options)
        new.q_norm, new.k_norm = copy.deepcopy(old.q_norm), copy.deepcopy(old.k_norm)
        new.rel_pos = copy.deepcopy(old.rel_pos)
        q, k, v = cls.timm_projections(old)
        load_projections(new, q, k, v, old.proj, preserve, perturbation, generator)
        new.fused_attn = old.fused_attn
        return new

    def to_timm(self) -> RelPosAttention:
        """The folded plain timm layer (same outputs): qkv = [W_q; M; W_v], the same `rel_pos` module."""
        refuse_context_broadcast(self, "RelPos ViT")
        ref = self.qv.weight
        new = RelPosAttention(self.key.in_dim, self.num_heads, qkv_bias=self.qv.bias is not None,
                              attn_drop=self.attn_drop.p, proj_drop=self.proj_drop.p, device=ref.device,
                              dtype=ref.dtype)
        weight, bias = fused_qkv_parts(self)
        with torch.no_grad():
            new.qkv.weight.copy_(weight)
            if new.qkv.bias is not None:
                new.qkv.bias.copy_(bias)
            new.proj.load_state_dict(self.proj.state_dict())
        new.q_norm, new.k_norm = copy.deepcopy(self.q_norm), copy.deepcopy(self.k_norm)
        new.rel_pos = copy.deepcopy(self.rel_pos)
        return finish_conversion(new, self)

# timm class -> manifold class (exact types: a subclass of a timm class is not assumed to compute the same)
FAMILIES = {
    BeitAttention: ManifoldBeitAttention,
    AttentionRope: ManifoldRopeAttention,
    EvaAttention: ManifoldEvaAttention,
    WindowAttentionV2: ManifoldWindowAttentionV2,
    RelPosAttention: ManifoldRelPosAttention,
}
