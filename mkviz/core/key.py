"""The manifold key: one base key expanded into H charts and fused back into one key.

This module holds the key path only; `mkviz.core.attention` puts it inside timm-shaped attention.
The math (a documented reconstruction of arXiv 2402.00534, see `docs/design.md` §2), for tokens
x of shape (B, N, C_in) and H charts of width C:

    base key      K0  = x W_kᵀ + b_k                                   (B, N, C)
    expansion     K_c = s_c ⊙ K0,  s ∈ R^{H×C} trainable               (B, H, N, C)
    chart maps    K_c ← φ_c(K_c)   one group-wise Conv1d(H·C, H·C, k, groups=H)
    fusion        K   = F(K_1, …, K_H)                                  (B, N, C)

Fusion variants:
    vanillak  K = mean_c K_c
    simplek   K = Conv1d(H·C → C, kernel 1)(K_1..K_H)            (dense learned fusion)
    spatialk  K_c = s_c ⊙ W_c(x): one wide Conv1d(C_in → H·C) split into H charts; K = mean_c K_c
    kua       K_n = Σ_c p(c|n) K_{c,n},  p(·|n) = softmax(x_n W_mᵀ + b_m)  (per-token membership)

With `expand_from="input"` there is no base projection: K_c = φ_c(s_c ⊙ x).

Two ways to compute the same key:
    * reference: materialise every chart K_c (B, H, N, C) exactly as written above;
    * fast: for the linear variants (vanillak, simplek, spatialk) the whole key path is one
      linear map (one convolution when kernel_size > 1) whose weight is formed in parameter
      space once per forward; KUA computes all charts with one matmul.
Both give the same outputs and gradients (tests/test_key.py).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Literal, Optional

import torch
from torch import nn
from torch.nn import functional as F

from .checks import check_choice
from .modes import temporarily
from .tracing import SCRIPT_REFUSAL, check_tokens, is_symbolic

torch.fx.wrap("check_tokens")  # an FX leaf in this module (torch.fx.wrap patches the name where it is called)

__all__ = [
    "VARIANTS", "ManifoldKey", "resolve_variant", "check_num_charts", "check_kernel_size", "max_charts", "key_impl",
    "membership_mode", "MEMBERSHIP_MODES",
]

VARIANTS: tuple[str, ...] = ("vanillak", "simplek", "spatialk", "kua")
LINEAR_VARIANTS: tuple[str, ...] = ("vanillak", "simplek", "spatialk")
EXPAND_FROM: tuple[str, ...] = ("key", "input")
INITS: tuple[str, ...] = ("preserve", "scratch")
MEMBERSHIP_MODES: tuple[str, ...] = ("soft", "one_hot")


def resolve_variant(variant: str) -> str:
    """Normalise a variant name (case-insensitive, e.g. "VanillaK") or raise a clear ValueError."""
    if not isinstance(variant, str) or variant.lower() not in VARIANTS:
        raise ValueError(
            f"variant must be one of {', '.join(VARIANTS)} (case-insensitive); got {variant!r}"
        )
    return variant.lower()


def max_charts(dim: int) -> int:
    """Largest `num_charts` accepted for a key of width `dim`: the charts' maps cost H·dim² parameters."""
    return max(1, min(256, dim))


def check_num_charts(num_charts: int, dim: int) -> int:
    """Validate `num_charts` (an integer in [1, max_charts(dim)]) and return it."""
    limit = max_charts(dim)
    if isinstance(num_charts, bool) or not isinstance(num_charts, int) or not 1 <= num_charts <= limit:
        raise ValueError(
            f"num_charts must be an integer in [1, {limit}] for a key of width {dim}; got {num_charts!r}"
        )
    return num_charts


def check_kernel_size(kernel_size: int) -> int:
    """Validate the chart-map `kernel_size` (odd integer >= 1, so the token sequence keeps its length)."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 1 (1, 3, 5, ...); got {kernel_size!r}")
    return kernel_size


def check_perturbation(perturbation: float) -> float:
    """`perturbation` (the charts' relative zero-sum perturbation) or a ValueError: a finite float >= 0."""
    if isinstance(perturbation, bool) or not isinstance(perturbation, (int, float)) \
            or not math.isfinite(perturbation) or perturbation < 0:
        raise ValueError(f"perturbation must be a finite float >= 0 (default 0.1); got {perturbation!r}")
    return float(perturbation)


def zero_sum_perturbation(num_charts: int, rows: int, cols: int, size: float,
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random δ of shape (H, rows, cols) with Σ_c δ_c = 0: keeps the fused key exact, breaks chart symmetry.

    Entries have std size/√cols, so that ‖δ_c z‖ ≈ size·‖z‖: `size` is the relative perturbation.
    """
    check_perturbation(size)
    delta = torch.randn(num_charts, rows, cols, generator=generator) * (size / math.sqrt(cols))
    return delta - delta.mean(dim=0, keepdim=True)


class ManifoldKey(nn.Module):
    """Key path of manifold-key attention: (B, N, in_dim) -> fused key (B, N, key_dim).

    Args:
        in_dim: width C_in of the tokens.
        key_dim: width C of the key (num_heads · head_dim).
        variant: "vanillak", "simplek", "spatialk" or "kua" (case-insensitive).
        num_charts: number of charts H >= 1.
        kernel_size: chart-map kernel size k (odd); k > 1 also mixes neighbouring tokens.
        expand_from: "key" (expand the projected base key K0) or "input" (expand x itself).
        bias: whether the key path has biases (timm's `qkv_bias`).
        ua_weight: λ of KUA's unbalanced-atlas regulariser −λ·mean_n Σ_c (p(c|n) − 1/H)²;
            0 turns it off. Read it with `mkviz.unbalanced_atlas_loss(model)` after a forward.
    """

    def __init__(
            self,
            in_dim: int,
            key_dim: int,
            variant: str = "vanillak",
            num_charts: int = 8,
            kernel_size: int = 1,
            expand_from: Literal["key", "input"] = "key",
            bias: bool = True,
            ua_weight: float = 0.0,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.variant = resolve_variant(variant)
        self.num_charts = check_num_charts(num_charts, key_dim)
        self.kernel_size = check_kernel_size(kernel_size)
        self.expand_from = check_choice("expand_from", expand_from, EXPAND_FROM)
        if not isinstance(ua_weight, (int, float)) or not math.isfinite(ua_weight) or ua_weight < 0:
            raise ValueError(f"ua_weight must be a finite float >= 0; got {ua_weight!r}")
        if ua_weight and self.variant != "kua":
            raise ValueError(f"ua_weight applies to variant 'kua' only; got variant {self.variant!r}")
        self.in_dim, self.key_dim = in_dim, key_dim
        self.ua_weight = float(ua_weight)
        self.impl: Literal["fast", "reference"] = "fast"
        self.membership_mode: Literal["soft", "one_hot"] = "soft"  # KUA at inference; see `membership_mode`
        self.ua_loss: Optional[torch.Tensor] = None  # set by forward when ua_weight > 0 and training
        H, C, k = self.num_charts, key_dim, self.kernel_size

        # SpatialK has no base key; expand_from="input" expands x itself
        has_base = self.expand_from == "key" and self.variant != "spatialk"
        self.base = nn.Linear(in_dim, C, bias=bias, **dd) if has_base else None
        chart_in = C if has_base else in_dim  # the width the chart expansion sees
        self.scale = nn.Parameter(torch.ones(H, C if self.variant == "spatialk" else chart_in, **dd))
        if self.variant == "spatialk":
            # one wide layer reshaped into H charts (k > 1: it slides over the tokens)
            self.chart_maps = nn.Conv1d(in_dim, H * C, k, padding=k // 2, bias=bias, **dd)
        else:
            self.chart_maps = nn.Conv1d(H * chart_in, H * C, k, padding=k // 2, groups=H, bias=bias, **dd)
        self.fusion = nn.Conv1d(H * C, C, 1, bias=bias, **dd) if self.variant == "simplek" else None
        self.membership = nn.Linear(in_dim, H, **dd) if self.variant == "kua" else None
        self.reset_parameters("scratch")

    def __prepare_scriptable__(self) -> nn.Module:
        """torch.jit.script calls this first: refuse in one line (README's support table)."""
        raise RuntimeError(SCRIPT_REFUSAL)

    # ------------------------------------------------------------------ properties
    @property
    def chart_in_dim(self) -> int:
        """Width of each chart map's input (key_dim, or in_dim for expand_from="input"/spatialk)."""
        return self.chart_maps.in_channels // (1 if self.variant == "spatialk" else self.num_charts)

    @property
    def is_linear(self) -> bool:
        """True when the fused key is a linear (affine) function of x (every variant but KUA)."""
        return self.variant in LINEAR_VARIANTS

    @property
    def foldable(self) -> bool:
        """True when the key path collapses to one plain (C_in -> C) linear layer."""
        return self.is_linear and self.kernel_size == 1

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, num_charts={self.num_charts}, kernel_size={self.kernel_size}, "
                f"expand_from={self.expand_from!r}, impl={self.impl!r}")

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def reset_parameters(self, init: str = "scratch", perturbation: float = 0.1,
                         generator: Optional[torch.Generator] = None) -> None:
        """Initialise the chart parameters.

        "scratch": timm's trunc-normal(0.02) for the base key and KUA's membership; where the chart
        maps are the key projection itself (SpatialK's wide layer, expand_from="input") trunc-normal
        (0.02·√H) per chart, so that the mean of H independent charts has a plain ViT key's std 0.02;
        chart maps on a base key start at the identity plus independent trunc-normal(0.02) noise (so
        the composed key keeps a plain ViT's scale), SimpleK's fusion at the mean plus noise.
        "preserve": s_c = 1, φ_c = I + δ_c with Σ_c δ_c = 0 (‖δ_c z‖ ≈ perturbation·‖z‖), fusion = mean,
        membership logits 0; the fused key equals the base key exactly. Call `load_base_key` to
        copy a pretrained key.
        """
        check_choice("init", init, INITS)
        H, C, k, cin = self.num_charts, self.key_dim, self.kernel_size, self.chart_in_dim
        self.scale.fill_(1.0)
        if self.base is not None:
            nn.init.trunc_normal_(self.base.weight, std=0.02)
            if self.base.bias is not None:
                self.base.bias.zero_()
        w = self.chart_maps.weight  # (H·C, cin, k) grouped, or (H·C, in_dim, k) for spatialk
        w.zero_()
        if self.base is None:  # the chart maps are the key projection itself
            # the fusion averages H independent projections: std 0.02·√H gives the fused key a plain ViT's std 0.02
            nn.init.trunc_normal_(w, std=0.02 * math.sqrt(H))
        else:
            eye = torch.eye(C, dtype=w.dtype, device=w.device)
            if init == "scratch":
                noise = torch.empty(H, C, C, k, dtype=w.dtype, device=w.device)
                nn.init.trunc_normal_(noise, std=0.02)
                w.copy_(noise.reshape(H * C, C, k))
            else:
                delta = zero_sum_perturbation(H, C, C, perturbation, generator).to(w)
                w[:, :, k // 2] = delta.reshape(H * C, C)
            w[:, :, k // 2] += eye.repeat(H, 1)
        if self.chart_maps.bias is not None:
            self.chart_maps.bias.zero_()
        if self.fusion is not None:
            fw = self.fusion.weight  # (C, H·C, 1)
            fw.copy_(torch.eye(C, dtype=fw.dtype, device=fw.device).repeat(1, H).unsqueeze(-1) / H)
            if init == "scratch":
                fw.add_(torch.empty_like(fw).normal_(0, 0.02 / math.sqrt(H)))
            if self.fusion.bias is not None:
                self.fusion.bias.zero_()
        if self.membership is not None:
            if init == "scratch":
                nn.init.trunc_normal_(self.membership.weight, std=0.02)
            else:
                self.membership.weight.zero_()
            self.membership.bias.zero_()

    @torch.no_grad()
    def load_base_key(self, weight: torch.Tensor, bias: Optional[torch.Tensor], perturbation: float = 0.1,
                      generator: Optional[torch.Generator] = None) -> None:
        """Function-preserving initialisation from a pretrained key projection.

        weight: (C, C_in) rows of timm's `qkv` that make the key; bias: (C,) or None.
        Afterwards the fused key equals x Wᵀ + b exactly, while the charts differ by a zero-sum δ_c.
        """
        self.reset_parameters("preserve", perturbation=perturbation, generator=generator)
        H, C, k = self.num_charts, self.key_dim, self.kernel_size
        if tuple(weight.shape) != (C, self.in_dim):
            raise ValueError(f"weight: expected shape ({C}, {self.in_dim}); got {tuple(weight.shape)}")
        weight = weight.to(self.scale)
        if self.base is not None:
            self.base.weight.copy_(weight)
            if bias is not None and self.base.bias is not None:
                self.base.bias.copy_(bias)
            return
        # no base projection (expand_from="input" or spatialk): chart c = (I + δ_c) W
        delta = zero_sum_perturbation(H, C, C, perturbation, generator).to(weight)
        charts = (torch.eye(C).to(weight) + delta) @ weight  # (H, C, C_in)
        w = self.chart_maps.weight
        w.zero_()
        w[:, :, k // 2] = charts.reshape(H * C, -1)
        if bias is not None and self.chart_maps.bias is not None:
            self.chart_maps.bias.copy_(((torch.eye(C).to(weight) + delta) @ bias.to(weight)).reshape(-1))

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C_in) -> fused key (B, N, C).

        impl "reference": every chart, then the fusion, as written (`chart_keys`, `fuse`); impl "fast" (the
        default): the same key in the order `plan` picks (`_fast`). Both give the same outputs and gradients.
        """
        self._check_input(x)
        if self.impl == "reference":
            return self.fuse(self.chart_keys(x), x)
        return self._fast(x)

    # ------------------------------------------------------------------ reference computation (docs/design.md §2)
    def _check_input(self, x: torch.Tensor) -> None:
        check_tokens(x, self.in_dim, "a key")

    def chart_keys(self, x: torch.Tensor) -> torch.Tensor:
        """Every chart's key K_c: x (B, N, C_in) -> (B, H, N, C).

        impl "reference": computed as written (the grouped convolution); impl "fast" with kernel_size 1:
        all charts in one matmul with the stacked chart operators (same values, faster on CPU).
        """
        self._check_input(x)
        if self.impl == "fast" and self.kernel_size == 1:
            return self._stacked_charts(x).permute(0, 2, 1, 3)  # (B, H, N, C)
        B, N, _ = x.shape
        H, C = self.num_charts, self.key_dim
        if self.variant == "spatialk":
            charts = self.chart_maps(x.transpose(1, 2))  # (B, H·C, N)
            charts = charts.view(B, H, C, N) * self.scale.view(1, H, C, 1)  # (B, H, C, N)
            return charts.transpose(2, 3)  # (B, H, N, C)
        base = self.base(x) if self.base is not None else x  # (B, N, cin)
        expanded = base.unsqueeze(1) * self.scale.view(1, H, 1, -1)  # (B, H, N, cin)
        expanded = expanded.transpose(2, 3).reshape(B, -1, N)  # (B, H·cin, N)
        charts = self.chart_maps(expanded)  # (B, H·C, N)
        return charts.view(B, H, C, N).transpose(2, 3)  # (B, H, N, C)

    def membership_probs(self, x: torch.Tensor) -> torch.Tensor:
        """KUA's chart membership p(c|n): (B, N, C_in) -> (B, N, H), rows sum to 1."""
        if self.membership is None:
            raise ValueError(f"membership exists for variant 'kua' only; this key is {self.variant!r}")
        probs = self.membership(x).softmax(dim=-1)
        if self.membership_mode == "one_hot" and not self.training:  # the chart of highest membership alone
            return F.one_hot(probs.argmax(dim=-1), self.num_charts).to(probs.dtype)
        return probs

    def fuse(self, charts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Fuse chart keys (B, H, N, C) into the key (B, N, C); x (B, N, C_in) feeds KUA's membership."""
        B, H, N, C = charts.shape
        if self.variant in ("vanillak", "spatialk"):
            return charts.mean(dim=1)
        if self.variant == "simplek":
            stacked = charts.transpose(2, 3).reshape(B, H * C, N)  # (B, H·C, N)
            return self.fusion(stacked).transpose(1, 2)  # (B, N, C)
        probs = self.membership_probs(x)  # (B, N, H)
        self._update_ua_loss(probs)
        return torch.einsum("bnh,bhnc->bnc", probs, charts)

    def _update_ua_loss(self, probs: torch.Tensor) -> None:
        if self.ua_weight > 0 and self.training and not is_symbolic(probs):  # FX graphs do not carry the term
            uniform = 1.0 / self.num_charts
            self.ua_loss = -self.ua_weight * (probs - uniform).pow(2).sum(-1).mean()

    # ------------------------------------------------------------------ fast computation (docs/design.md §6)
    # The key of the reference path above, computed in another order. Invariants:
    #   * same outputs and same gradients (of every parameter and of x) as the reference path, for every
    #     variant, kernel_size, expand_from and bias setting; tested in float64 by tests/test_key.py
    #     (test_fast_path_equals_reference; chart_keys: test_chart_keys_fast_equals_reference). It is the
    #     same composition of linear maps, associated differently: the chart maps, scales and fusion are
    #     multiplied together in parameter space (chart_operators -> fused_operator -> effective_linear,
    #     §6's table) before they meet the tokens, so autograd through those products gives exactly the
    #     per-chart gradients.
    #   * products of parameters alone run with autocast off, in the parameters' dtype (_parameter_space);
    #   * everything is formed from the current parameters on every call: nothing is cached here (the one
    #     cache, of the fused qkv without autograd, is ManifoldQKV.qkv_linear's in mkviz/core/attention.py).
    # When it applies: impl == "fast" (the default; "reference" or mkviz.key_impl(model, "reference")
    # switches it off). forward then asks plan(B·N) for the order:
    #   "weight"  linear variant, kernel_size 1: the whole key path is one (C, C_in) matrix (effective_linear),
    #             one matmul per token; ManifoldQKV.project_qkv runs it in the same matmul as q and v, like timm;
    #   "token"   linear variant, kernel_size > 1: the fused map (fused_operator, (C, cin, k)) as one dense
    #             convolution over the base keys;
    #   "chart"   SimpleK on so few tokens that forming its fused map (H·C²·cin·k multiply-adds, whatever the
    #             tokens) and applying it costs more multiply-adds than the per-token charts and fusion: the
    #             reference order (chart_keys, fuse);
    #   "kua"     KUA, not linear in x: the base key, all charts in one matmul (_stacked_charts), the
    #             membership-weighted sum; with kernel_size > 1 KUA takes the reference order.
    # chart_keys itself (impl "fast", kernel_size 1) also stacks the chart operators into one matmul.
    def _parameter_space(self) -> contextlib.AbstractContextManager:
        """Products of parameters run outside autocast, in the parameters' dtype: they are tiny (no batch or
        token dimension) and their rounding would otherwise be multiplied into every token's key. Nothing to
        leave where autocast is off, on the meta device (no autocast there) or while torch.fx traces."""
        scale = self.scale
        if is_symbolic(scale) or scale.is_meta or not torch.is_autocast_enabled(scale.device.type):
            return contextlib.nullcontext()
        return torch.autocast(scale.device.type, enabled=False)

    def chart_operators(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Each chart's linear operator on its input, folded with the scale s_c.

        Returns L (H, C, cin, k) with K_c = conv(L_c, input) + a_c, and a (H, C) or None.
        For spatialk the scale multiplies the output (K_c = s_c ⊙ W_c x), else the input.
        """
        H, C, k = self.num_charts, self.key_dim, self.kernel_size
        w = self.chart_maps.weight.view(H, C, -1, k)  # (H, C, cin, k)
        b = self.chart_maps.bias.view(H, C) if self.chart_maps.bias is not None else None
        with self._parameter_space():
            if self.variant == "spatialk":
                s = self.scale.view(H, C, 1, 1)
                return w * s, (b * self.scale if b is not None else None)
            return w * self.scale.view(H, 1, -1, 1), b

    def fused_operator(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The linear variants' fused key map on the chart input: W (C, cin, k), b (C,) or None."""
        if not self.is_linear:
            raise ValueError(f"variant {self.variant!r} has no single linear key map (membership is per token)")
        H, C, k = self.num_charts, self.key_dim, self.kernel_size
        with self._parameter_space():
            if self.variant == "simplek":
                ops, bias = self.chart_operators()  # (H, C, cin, k), (H, C)
                # one GEMM (C, H·C) @ (H·C, cin·k): the O(H·C²·cin) product, independent of batch and tokens
                fw = self.fusion.weight.view(C, H * C)
                weight = (fw @ ops.reshape(H * C, -1)).view(C, -1, k)
                fb = self.fusion.bias
                if bias is not None:
                    fb = fw @ bias.reshape(H * C) + (fb if fb is not None else 0)
                return weight, fb
            w = self.chart_maps.weight.view(H, C, -1, k)  # (H, C, cin, k)
            b = self.chart_maps.bias.view(H, C) if self.chart_maps.bias is not None else None
            if self.variant == "spatialk":  # mean_c s_c ⊙ W_c: scale the output rows
                weight = (w * self.scale.view(H, C, 1, 1)).mean(dim=0)
                return weight, ((b * self.scale).mean(dim=0) if b is not None else None)
            # vanillak: mean_c W_c diag(s_c) (elementwise + mean: faster than einsum's small batched matmuls)
            weight = (w * self.scale.view(H, 1, -1, 1)).mean(dim=0)
            return weight, (b.mean(dim=0) if b is not None else None)

    def effective_linear(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """For foldable keys: the single linear layer x -> K, weight (C, C_in) and bias (C,) or None."""
        if not self.foldable:
            why = "its membership is a per-token softmax" if not self.is_linear else \
                f"kernel_size={self.kernel_size} mixes neighbouring tokens"
            raise ValueError(f"this {self.variant!r} key cannot be folded into one linear layer: {why}")
        with self._parameter_space():
            weight, bias = self.fused_operator()
            weight = weight[..., 0]  # (C, cin)
            if self.base is None:
                return weight, bias
            w_total = weight @ self.base.weight  # (C, C_in)
            b_total = bias
            if self.base.bias is not None:
                b_total = weight @ self.base.bias + (bias if bias is not None else 0)
            return w_total, b_total

    def plan(self, tokens: int) -> str:
        """The fast path's evaluation order for `tokens` = batch · tokens rows (same outputs and gradients).

            "weight": the whole key path folded into one (C, C_in) matrix in parameter space, then one
                      matmul per token, run together with q and v (kernel_size 1);
            "token":  the fused map formed in parameter space, applied to each token's base key as one
                      dense convolution (kernel_size > 1);
            "chart":  every chart per token as written (one grouped convolution), then the fusion;
            "kua":    KUA: the base key, all charts in one matmul, the per-token membership.
        VanillaK and SpatialK always fold: forming their matrix costs C²·cin multiply-adds, independent of
        the tokens. SimpleK's dense fusion makes its parameter-space product H·C²·cin (+ C²·C_in to fold
        the base key) against 2H·C·cin·T per-token work for the charts and the fusion: for few tokens
        (T ≲ C/2, e.g. one small image) the charts are cheaper and are used.
        """
        if not self.is_linear:
            return "kua"
        order = "weight" if self.foldable else "token"
        if self.variant != "simplek" or not isinstance(tokens, int):  # torch.fx traces: a proxy, not a count
            return order
        H, C, cin, cx, k = self.num_charts, self.key_dim, self.chart_in_dim, self.in_dim, self.kernel_size
        base = C * cx * tokens if self.base is not None else 0  # every token's base key
        fuse = H * C * C * cin * k  # the fused map, (C, H·C) @ (H·C, cin·k)
        if self.foldable:
            fast = fuse + (C * cin * cx if self.base is not None else 0) + C * cx * tokens
        else:
            fast = fuse + base + C * cin * k * tokens
        chart = base + H * C * cin * k * tokens + H * C * C * tokens
        return "chart" if chart < fast else order

    def _fast(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path: x (B, N, C_in) -> fused key (B, N, C) in the order `plan(B·N)` picks."""
        B, N, _ = x.shape
        order = self.plan(B * N)
        if order == "weight":
            weight, bias = self.effective_linear()
            return F.linear(x, weight, bias)  # (B, N, C)
        if order == "chart" or self.kernel_size > 1 and not self.is_linear:
            # as written: every chart (one grouped conv), then the fusion
            return self.fuse(self.chart_keys(x), x)
        base = self.base(x) if self.base is not None else x  # (B, N, cin)
        if order == "token":
            weight, bias = self.fused_operator()  # (C, cin, k)
            if self.kernel_size == 1:
                return F.linear(base, weight[..., 0], bias)
            # kernel_size > 1: one dense convolution over the tokens
            return F.conv1d(base.transpose(1, 2), weight, bias, padding=self.kernel_size // 2).transpose(1, 2)
        charts = self._stacked_charts(x, base)  # KUA: (B, N, H, C)
        probs = self.membership_probs(x)  # (B, N, H)
        self._update_ua_loss(probs)
        return (probs.unsqueeze(-2) @ charts).squeeze(-2)  # (B, N, C)

    def _stacked_charts(self, x: torch.Tensor, base: Optional[torch.Tensor] = None) -> torch.Tensor:
        """kernel_size 1: all charts in ONE matmul with the stacked chart operators. -> (B, N, H, C)."""
        B, N, _ = x.shape
        if base is None:
            base = self.base(x) if self.base is not None else x  # (B, N, cin); spatialk: x
        ops, bias = self.chart_operators()  # (H, C, cin, 1), (H, C) or None
        H, C = self.num_charts, self.key_dim
        charts = F.linear(base, ops.reshape(H * C, -1), bias.reshape(-1) if bias is not None else None)
        return charts.view(B, N, H, C)  # (B, N, H, C)


@contextlib.contextmanager
def membership_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Temporarily fuse every KUA key of `model` at inference (eval mode) with memberships "soft" (p(c|n), the
    default) or "one_hot" (each token takes the key of its most probable chart alone, as the unbalanced-atlas
    authors' code does at inference). Training always uses the soft memberships."""
    check_choice("mode", mode, MEMBERSHIP_MODES)
    with temporarily([m for m in model.modules() if isinstance(m, ManifoldKey)], "membership_mode", mode):
        yield model


@contextlib.contextmanager
def key_impl(model: nn.Module, impl: str) -> Iterator[nn.Module]:
    """Temporarily run every `ManifoldKey` in `model` with impl "fast" or "reference"."""
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl must be 'fast' or 'reference'; got {impl!r}")
    with temporarily([m for m in model.modules() if isinstance(m, ManifoldKey)], "impl", impl):
        yield model
