"""Manifold-key attention with a rotary embedding: `ManifoldRopeAttention` (timm.layers.AttentionRope) and
`ManifoldEvaAttention` (timm.models.eva.EvaAttention, q/v biases only). The rotary embedding runs on the fused
key as timm runs it on k, and on each chart's key for the per-chart maps (`logit_keys`).
"""
from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
from torch import nn
from timm.layers import AttentionRope, apply_rot_embed_cat, use_fused_attn
from timm.layers.attention import resolve_self_attn_mask
from timm.models.eva import EvaAttention

from .attention import ContextBroadcast, ManifoldQKV
from .family_parts import (Projection, finish_conversion, fused_qkv_parts, load_projections, manifold_options,
                           refuse_context_broadcast, split_qkv)

torch.fx.wrap("resolve_self_attn_mask")  # timm's FX leaf, here too (torch.fx.wrap patches this module's name)

__all__ = ["ManifoldRopeAttention", "ManifoldEvaAttention"]


# --------------------------------------------------------------------------- RoPE (AttentionRope, EVA)
class ManifoldRopeAttention(ManifoldQKV):
    """Attention with rotary position embedding and a manifold key; drop-in for `timm.layers.AttentionRope`.

    The key path after the fusion is timm's: k_norm, then the rotary embedding R_n on the non-prefix tokens.
    R_n is linear per token, so for the linear fusions (VanillaK, SpatialK, SimpleK) without qk_norm
    R_n(F(K_1..K_H)) = F(R_n K_1, .., R_n K_H): rotating the fused key is rotating each chart's key and fusing
    (KUA too: its memberships are scalars per token). Per-chart maps rotate each chart's key with the
    layer's rope (`logit_keys`), so VanillaK's geometric mean holds (docs/design.md §11.2).
    Grouped-query attention (num_kv_heads < num_heads) is refused.

    forward(x (B, N, dim), rope (N - prefix, 2·d) or as timm gives it, attn_mask=None, is_causal=False)
        -> (B, N, dim_out).
    """

    def __init__(self, dim: int, num_heads: int = 8, dim_out: Optional[int] = None, qkv_bias: bool = True,
                 qkv_fused: bool = True, num_prefix_tokens: int = 1, attn_drop: float = 0., proj_drop: float = 0.,
                 attn_head_dim: Optional[int] = None, norm_layer=None, qk_norm: bool = False,
                 scale_norm: bool = False, proj_bias: bool = True, rotate_half: bool = False, gated: bool = False,
                 num_kv_heads: Optional[int] = None, device=None, dtype=None, *, context_broadcast: bool = False,
                 key_bias: Optional[bool] = None, **manifold) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        options = manifold_options(manifold)
        if manifold:
            raise ValueError(f"{type(self).__name__}: unknown arguments {sorted(manifold)}")
        if num_kv_heads not in (None, num_heads):
            raise ValueError(f"num_kv_heads: grouped-query attention ({num_kv_heads} key heads for {num_heads} "
                             "query heads) is not supported by the manifold key; use num_kv_heads=None")
        if (qk_norm or scale_norm) and norm_layer is None:
            raise ValueError("norm_layer must be given when qk_norm or scale_norm is True")
        self.num_heads = num_heads
        self.head_dim = attn_head_dim or dim // num_heads
        self.attn_dim = self.head_dim * num_heads
        self.scale = self.head_dim ** -0.5
        self.num_prefix_tokens = num_prefix_tokens
        self.rotate_half = rotate_half
        self.fused_attn = use_fused_attn()
        self.qkv_fused = qkv_fused  # kept for `to_timm`; the manifold module has qv + key either way
        self.build_manifold(dim, qkv_bias, dd=dd, key_bias=key_bias, **options)
        self.q_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim, **dd) if qk_norm else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm_layer(self.attn_dim, **dd) if scale_norm else nn.Identity()
        self.gate = nn.Linear(dim, self.attn_dim, bias=qkv_bias, **dd) if gated else None
        self.proj = nn.Linear(self.attn_dim, dim_out or dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.context_broadcast = ContextBroadcast(dim_out or dim, **dd) if context_broadcast else None
        self._rope: Optional[torch.Tensor] = None  # the current forward's rope, while a recorder is attached

    def rotate(self, t: torch.Tensor, rope: Optional[torch.Tensor]) -> torch.Tensor:
        """timm's rotary embedding on the non-prefix tokens: t (B, heads, N, d) -> (B, heads, N, d)."""
        if rope is None:
            return t
        npt = self.num_prefix_tokens
        return torch.cat([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], rope, half=self.rotate_half)], dim=2)

    def logit_keys(self, chart_keys: torch.Tensor) -> torch.Tensor:
        """Chart keys (B, H, N, heads·d) -> (B, H, N, heads, d) after k_norm and the current forward's rotary
        embedding: each chart's key through the same function as the fused key (one chart at a time, so the
        rope broadcasts exactly as on the fused key)."""
        B, H, N, _ = chart_keys.shape
        k = chart_keys.view(B, H, N, self.num_heads, self.head_dim)
        rotated = [self.rotate(self.k_norm(k[:, c].transpose(1, 2)), self._rope).type_as(k) for c in range(H)]
        return torch.stack(rotated, dim=1).transpose(2, 3)  # (B, H, N, heads, d)

    def forward(self, x: torch.Tensor, rope: Optional[torch.Tensor] = None, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        self.check_width(x)
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.project_qkv(x)  # each (B, heads, N, d)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotate(q, rope).type_as(v), self.rotate(k, rope).type_as(v)
        bias = resolve_self_attn_mask(N, q, attn_mask, is_causal)  # timm's FX leaf: no branch on the mask
        self._rope = rope if self.recorder is not None else None
        try:
            out = self.attend(x, q, k, v, bias)  # (B, N, A)
        finally:
            self._rope = None
        out = self.norm(out)
        if gate is not None:
            out = out * gate
        return self.project_out(out)

    @staticmethod
    def timm_projections(old: nn.Module) -> Tuple[Projection, Projection, Projection]:
        """q, k, v of a timm AttentionRope / EvaAttention, fused (`qkv`, EVA's q_bias/v_bias) or separate."""
        if old.qkv is None:
            return tuple((p.weight, p.bias) for p in (old.q_proj, old.k_proj, old.v_proj))  # type: ignore
        q, k, v = split_qkv(old.qkv.weight, old.qkv.bias)
        if getattr(old, "q_bias", None) is not None:  # EVA: separate q/v biases, a zero k_bias buffer
            return (q[0], old.q_bias), (k[0], None), (v[0], old.v_bias)
        return q, k, v

    @classmethod
    def _timm_arguments(cls, old: nn.Module) -> dict:
        q, k, _ = cls.timm_projections(old)
        ref = q[0]
        qk_norm = not isinstance(old.q_norm, nn.Identity)
        scale_norm = not isinstance(old.norm, nn.Identity)
        return dict(num_heads=old.num_heads, qkv_bias=q[1] is not None, qkv_fused=old.qkv is not None,
                    num_prefix_tokens=old.num_prefix_tokens, attn_drop=old.attn_drop.p, proj_drop=old.proj_drop.p,
                    attn_head_dim=old.head_dim, qk_norm=qk_norm, scale_norm=scale_norm,
                    norm_layer=(lambda *a, **kw: nn.Identity()) if (qk_norm or scale_norm) else None,
                    rotate_half=getattr(old, "rotate_half", False), gated=old.gate is not None,
                    key_bias=k[1] is not None, device=ref.device, dtype=ref.dtype)

    @classmethod
    def from_timm(cls, old: nn.Module, preserve: bool, perturbation: float, generator: Optional[torch.Generator],
                  **options) -> "ManifoldRopeAttention":
        if getattr(old, "num_kv_groups", 1) != 1:
            raise ValueError(f"cannot convert {type(old).__name__} with grouped-query attention (num_kv_heads="
                             f"{old.num_kv_heads} < num_heads={old.num_heads}): the manifold key needs one key head "
                             "per query head")
        args = cls._timm_arguments(old)
        if cls is ManifoldRopeAttention:
            args.update(dim_out=old.proj.out_features, proj_bias=old.proj.bias is not None)
        q, k, v = cls.timm_projections(old)
        new = cls(q[0].shape[1], **args, **options)
        # reuse the pretrained norm modules themselves (whatever their class)
        new.q_norm, new.k_norm, new.norm = (copy.deepcopy(old.q_norm), copy.deepcopy(old.k_norm),
                                            copy.deepcopy(old.norm))
        if old.gate is not None:
            new.gate.load_state_dict(old.gate.state_dict())
        load_projections(new, q, k, v, old.proj, preserve, perturbation, generator)
        new.fused_attn = old.fused_attn
        return new

    def _timm_layer(self, dd: dict) -> nn.Module:
        qk_norm = not isinstance(self.q_norm, nn.Identity)
        scale_norm = not isinstance(self.norm, nn.Identity)
        return AttentionRope(
            self.key.in_dim, self.num_heads, dim_out=self.proj.out_features,
            qkv_bias=self.qv.bias is not None, qkv_fused=True,
            num_prefix_tokens=self.num_prefix_tokens, attn_drop=self.attn_drop.p, proj_drop=self.proj_drop.p,
            attn_head_dim=self.head_dim, qk_norm=qk_norm, scale_norm=scale_norm,
            norm_layer=(lambda *a, **kw: nn.Identity()) if (qk_norm or scale_norm) else None,
            proj_bias=self.proj.bias is not None, rotate_half=self.rotate_half, gated=self.gate is not None, **dd)

    def to_timm(self) -> nn.Module:
        """The folded plain timm layer (same outputs), with a fused `qkv` = [W_q; M; W_v] whatever the layout
        the original had (`qkv_fused`)."""
        refuse_context_broadcast(self, type(self).__name__)
        ref = self.qv.weight
        new = self._timm_layer(dict(device=ref.device, dtype=ref.dtype))
        weight, bias = fused_qkv_parts(self)
        A = self.attn_dim
        with torch.no_grad():
            new.qkv.weight.copy_(weight)
            if getattr(new, "q_bias", None) is not None:  # EVA
                new.q_bias.copy_(bias[:A])
                new.v_bias.copy_(bias[2 * A:])
            elif new.qkv.bias is not None:
                new.qkv.bias.copy_(bias if bias is not None else torch.zeros_like(new.qkv.bias))
            new.proj.load_state_dict(self.proj.state_dict())
        new.q_norm, new.k_norm, new.norm = copy.deepcopy(self.q_norm), copy.deepcopy(self.k_norm), copy.deepcopy(self.norm)
        if self.gate is not None:
            new.gate.load_state_dict(self.gate.state_dict())
        return finish_conversion(new, self)

class ManifoldEvaAttention(ManifoldRopeAttention):
    """EVA attention with a manifold key; drop-in for `timm.models.eva.EvaAttention` (EVA-02, RoPE ViTs).

    As `ManifoldRopeAttention`; EVA's key has no bias (a zero `k_bias` buffer, or `k_proj` without bias), so
    the manifold key has none. Folds back into an `EvaAttention` with a fused `qkv`.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, qkv_fused: bool = True,
                 qkv_bias_separate: bool = False, num_prefix_tokens: int = 1, attn_drop: float = 0.,
                 proj_drop: float = 0., attn_head_dim: Optional[int] = None, norm_layer=None, qk_norm: bool = False,
                 scale_norm: bool = True, rotate_half: bool = False, gated: bool = False, device=None, dtype=None,
                 **manifold) -> None:
        manifold.setdefault("key_bias", False)
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, qkv_fused=qkv_fused, num_prefix_tokens=num_prefix_tokens,
                         attn_drop=attn_drop, proj_drop=proj_drop, attn_head_dim=attn_head_dim,
                         norm_layer=norm_layer, qk_norm=qk_norm, scale_norm=scale_norm, rotate_half=rotate_half,
                         gated=gated, device=device, dtype=dtype, **manifold)

    def _timm_layer(self, dd: dict) -> nn.Module:
        qk_norm = not isinstance(self.q_norm, nn.Identity)
        scale_norm = not isinstance(self.norm, nn.Identity)
        return EvaAttention(
            self.key.in_dim, self.num_heads, qkv_bias=self.qv.bias is not None, qkv_fused=True,
            num_prefix_tokens=self.num_prefix_tokens, attn_drop=self.attn_drop.p, proj_drop=self.proj_drop.p,
            attn_head_dim=self.head_dim, qk_norm=qk_norm, scale_norm=scale_norm,
            norm_layer=(lambda *a, **kw: nn.Identity()) if (qk_norm or scale_norm) else None,
            rotate_half=self.rotate_half, gated=self.gate is not None, **dd)
