"""Turn timm models into manifold-key models and back.

    convert(model, variant, num_charts)   timm ViT/DeiT/Swin -> manifold key, outputs unchanged
    create_model(name, variant, ...)      timm.create_model, then convert (or a from-scratch init)
    fold(model)                           linear manifold keys -> plain timm attention, outputs unchanged
"""
from __future__ import annotations

import copy
import math
from typing import Iterator, Optional, Sequence, Union

import timm
import torch
from torch import nn
from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention

from . import hf
from .attention import ContextBroadcast, ManifoldAttention, ManifoldQKV, ManifoldWindowAttention
from .checks import check_choice
from .families import FAMILIES
from .hf_io import to_manifold_class, to_plain_class
from .key import INITS, ManifoldKey, check_perturbation, resolve_variant
from .preservation import check_preserves_key

__all__ = ["convert", "create_model", "fold", "manifold_modules", "unbalanced_atlas_loss", "class_logits"]


SUPPORTED = ("timm.layers.Attention (ViT, DeiT, CLIP, DINOv2, ...), timm.models.swin_transformer.WindowAttention "
             "(Swin), timm.models.beit.Attention (BEiT), timm.models.eva.EvaAttention and timm.layers.AttentionRope "
             "(EVA-02, RoPE ViTs), timm.models.swin_transformer_v2.WindowAttention (Swin V2) and "
             "timm.models.vision_transformer_relpos.RelPosAttention (ViT with relative position); Hugging Face "
             "transformers ViT, DeiT, Swin and DINOv2 attention (mkviz/core/hf.py)")

# attention classes refused on purpose, with the reason (README's support table repeats them)
REFUSALS = {
    "timm.models.cait.TalkingHeadAttn": "CaiT: not implemented. Its talking heads mix the heads' logits before the "
    "softmax and the heads' maps after it, so a per-chart map would be a mix of all heads' maps rather than one "
    "chart's attention, and CaiT's class-attention layers (ClassAttn, a query from the class token only) need "
    "their own key path; a partial conversion would leave a model that is half plain",
    "timm.models.cait.ClassAttn": "CaiT's class attention: not implemented (see TalkingHeadAttn)",
    "timm.layers.attention_pool.AttentionPoolLatent": "attention pooling with learned latent queries is a pooling "
    "head, not self-attention over the tokens; use a model with global_pool='avg' or 'token'",
}


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, name, module)


def _looks_like_attention(module: nn.Module) -> bool:
    return "attention" in type(module).__name__.lower() or hasattr(module, "qkv")


def class_logits(output: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
    """A classifier's output as one (B, classes) tensor: a distilled DeiT in training mode returns its two heads'
    logits, averaged here as the model averages them in eval mode."""
    return sum(output) / len(output) if isinstance(output, (tuple, list)) else output


def manifold_modules(model: nn.Module) -> Iterator[tuple[str, ManifoldQKV]]:
    """Yield (path, module) for every manifold-key attention module in `model`."""
    for path, module in model.named_modules():
        if isinstance(module, ManifoldQKV):
            yield path, module


def _copy_common(old: nn.Module, new: nn.Module, preserve: bool, std: float,
                 generator: Optional[torch.Generator]) -> None:
    """Copy q/v/k/proj (and norms) from a timm attention into a manifold one."""
    A = new.attn_dim
    with torch.no_grad():
        w = old.qkv.weight  # (3A, C): rows [q; k; v]
        b = old.qkv.bias
        new.qv.weight.copy_(torch.cat([w[:A], w[2 * A:]]))
        if b is not None:
            new.qv.bias.copy_(torch.cat([b[:A], b[2 * A:]]))
        if preserve:
            new.key.load_base_key(w[A:2 * A], b[A:2 * A] if b is not None else None, perturbation=std,
                                  generator=generator)
        else:
            new.key.reset_parameters("scratch", generator=generator)
        new.proj.load_state_dict(old.proj.state_dict())
        if new.context_broadcast is not None and preserve:
            new.context_broadcast.scale.zero_()


def _convert_vit_attention(old: Attention, preserve: bool, std: float,
                           generator: Optional[torch.Generator], **options) -> ManifoldAttention:
    ref = old.qkv.weight
    qk_norm = not isinstance(old.q_norm, nn.Identity)
    scale_norm = not isinstance(old.norm, nn.Identity)
    gate = getattr(old, "gate", None)
    new = ManifoldAttention(
        old.qkv.in_features, num_heads=old.num_heads, attn_head_dim=old.head_dim,
        dim_out=old.proj.out_features, qkv_bias=old.qkv.bias is not None,
        qk_norm=qk_norm, scale_norm=scale_norm, proj_bias=old.proj.bias is not None,
        gated=gate is not None, attn_drop=old.attn_drop.p, proj_drop=old.proj_drop.p,
        norm_layer=(lambda *a, **k: nn.Identity()) if (qk_norm or scale_norm) else None,
        device=ref.device, dtype=ref.dtype, **options,
    )
    # reuse the pretrained norm modules themselves (whatever their class)
    new.q_norm, new.k_norm, new.norm = copy.deepcopy(old.q_norm), copy.deepcopy(old.k_norm), copy.deepcopy(old.norm)
    if gate is not None:
        new.gate.load_state_dict(gate.state_dict())
    new.fused_attn = old.fused_attn
    _copy_common(old, new, preserve, std, generator)
    return new


def _convert_window_attention(old: WindowAttention, preserve: bool, std: float,
                              generator: Optional[torch.Generator], **options) -> ManifoldWindowAttention:
    ref = old.qkv.weight
    new = ManifoldWindowAttention(
        old.qkv.in_features, old.num_heads, head_dim=old.qkv.out_features // 3 // old.num_heads,
        window_size=old.window_size, qkv_bias=old.qkv.bias is not None,
        attn_drop=old.attn_drop.p, proj_drop=old.proj_drop.p, device=ref.device, dtype=ref.dtype, **options,
    )
    with torch.no_grad():
        new.relative_position_bias_table.copy_(old.relative_position_bias_table)
    new.fused_attn = old.fused_attn
    _copy_common(old, new, preserve, std, generator)
    return new


def _timm_key(old: nn.Module, new: ManifoldQKV) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The key projection of a timm attention: weight (A, C_in), bias (A,) or None."""
    if type(old) in FAMILIES:
        return FAMILIES[type(old)].timm_projections(old)[1]
    A = new.attn_dim
    return old.qkv.weight[A:2 * A], (old.qkv.bias[A:2 * A] if old.qkv.bias is not None else None)


def convert(
        model: nn.Module,
        variant: str = "vanillak",
        num_charts: int = 8,
        context_broadcast: bool = False,
        inplace: bool = False,
        *,
        kernel_size: int = 1,
        expand_from: str = "key",
        ua_weight: float = 0.0,
        init: str = "preserve",
        perturbation: float = 0.1,
        seed: Optional[int] = 0,
) -> nn.Module:
    """Replace every timm attention of a supported family by a manifold-key module: ViT/DeiT `Attention`, Swin
    `WindowAttention`, and (`mkviz/core/families.py`) BEiT, EVA / RoPE, Swin V2 and RelPos ViT attention; in Hugging
    Face ViT, DeiT, Swin and DINOv2 models, the `k_proj` of every attention (`mkviz/core/hf.py`, `docs/design.md` §11.6).

    With init="preserve" (default) the converted model computes exactly what `model` computed
    (q, v, proj and the key copied; s_c = 1, φ_c = I + δ_c with Σ_c δ_c = 0 and relative size
    `perturbation` (‖δ_c k‖ ≈ perturbation·‖k‖), fusion = mean, KUA memberships uniform, CB gate 0), while the zero-sum δ_c
    breaks the symmetry between charts so that they can specialise during training.
    init="scratch" keeps q/v/proj and gives the key path a fresh from-scratch initialisation.

    Raises ValueError naming the module path and class of any attention it cannot convert.
    """
    variant = resolve_variant(variant)
    check_choice("init", init, INITS)
    check_perturbation(perturbation)
    if isinstance(ua_weight, bool) or not isinstance(ua_weight, (int, float)) or not math.isfinite(ua_weight) \
            or ua_weight < 0:
        raise ValueError(f"ua_weight must be a finite float >= 0; got {ua_weight!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    options = dict(variant=variant, num_charts=num_charts, kernel_size=kernel_size, expand_from=expand_from,
                   context_broadcast=context_broadcast, ua_weight=ua_weight)
    found = 0
    for path, module in list(model.named_modules()):
        if isinstance(module, ManifoldQKV):
            raise ValueError(f"{path}: {type(module).__name__} is already a manifold-key attention; "
                             "convert a plain timm model")
        if type(module) is Attention:
            new = _convert_vit_attention(module, init == "preserve", perturbation, generator, **options)
        elif type(module) is WindowAttention:
            new = _convert_window_attention(module, init == "preserve", perturbation, generator, **options)
        elif type(module) in FAMILIES:  # BEiT, EVA / RoPE, Swin V2, RelPos ViT (mkviz/core/families.py)
            new = FAMILIES[type(module)].from_timm(module, init == "preserve", perturbation, generator, **options)
        elif hf.is_hf_attention(module):  # Hugging Face ViT, DeiT, Swin, DINOv2: k_proj becomes the manifold key
            hf.convert_attention(path or "<model>", module, init == "preserve", perturbation, generator, **options)
            found += 1
            continue
        elif _looks_like_attention(module) and not any(True for _ in module.children() if _looks_like_attention(_)):
            name = f"{type(module).__module__}.{type(module).__qualname__}"
            reason = REFUSALS.get(name) or hf.unsupported_reason(module)
            why = f" ({reason})" if reason else ""
            raise ValueError(f"{path or '<model>'}: cannot convert attention of class {name}{why}; supported: "
                             f"{SUPPORTED}")
        else:
            continue
        if init == "preserve":
            check_preserves_key(path or "<model>", new.key, *_timm_key(module, new), perturbation)
        new.train(module.training)
        _set_submodule(model, path, new)
        found += 1
    if not found:
        raise ValueError(f"model ({type(model).__name__}) has no timm Attention (or other supported attention) to convert; supported: {SUPPORTED}")
    model.mkviz_config = dict(options)
    if any(True for _ in hf.manifold_keys(model)):  # save_pretrained / from_pretrained keep the key
        to_manifold_class(model, options)
    return model


def create_model(
        name: str,
        variant: Optional[str] = "vanillak",
        num_charts: int = 8,
        pretrained: bool = False,
        context_broadcast: bool = False,
        *,
        kernel_size: int = 1,
        expand_from: str = "key",
        ua_weight: float = 0.0,
        seed: Optional[int] = 0,
        **timm_kwargs,
) -> nn.Module:
    """`timm.create_model(name, pretrained, **timm_kwargs)`, then `convert` (variant=None: the plain baseline).

    A pretrained model is converted function-preservingly; a from-scratch one (pretrained=False)
    gets the from-scratch key initialisation (`docs/design.md` §7.2).
    """
    if variant is not None:
        variant = resolve_variant(variant)
    try:
        model = timm.create_model(name, pretrained=pretrained, **timm_kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"name: unknown timm model {name!r}; see timm.list_models()") from None
        raise
    if variant is None:
        return model
    return convert(model, variant, num_charts, context_broadcast, inplace=True, kernel_size=kernel_size,
                   expand_from=expand_from, ua_weight=ua_weight,
                   init="preserve" if pretrained else "scratch", seed=seed)


class FoldedAttention(Attention):
    """A timm `Attention` followed by context broadcasting (what a folded CB model needs)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.context_broadcast = ContextBroadcast(self.proj.out_features)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.context_broadcast(super().forward(x, *args, **kwargs))


class FoldedWindowAttention(WindowAttention):
    """A timm Swin `WindowAttention` followed by context broadcasting."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.context_broadcast = ContextBroadcast(self.proj.out_features)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.context_broadcast(super().forward(x, mask))


def _fold_module(path: str, module: ManifoldQKV) -> nn.Module:
    if not module.key.foldable:
        why = ("its per-token softmax membership makes the key nonlinear in x" if not module.key.is_linear
               else f"kernel_size={module.key.kernel_size} mixes neighbouring tokens")
        raise ValueError(f"fold(): {path} uses variant {module.key.variant!r} and cannot be folded into a "
                         f"plain linear key: {why}. Keep the unfolded model for inference.")
    if hasattr(module, "to_timm"):  # the families of mkviz/core/families.py fold themselves
        try:
            return module.to_timm()
        except ValueError as err:
            raise ValueError(f"{err} ({path})") from None
    ref = module.qv.weight
    dd = dict(device=ref.device, dtype=ref.dtype)
    cb = module.context_broadcast is not None
    has_bias = module.qv.bias is not None
    if isinstance(module, ManifoldWindowAttention):
        cls = FoldedWindowAttention if cb else WindowAttention
        new = cls(module.key.in_dim, module.num_heads, head_dim=module.head_dim, window_size=module.window_size,
                  qkv_bias=has_bias, attn_drop=module.attn_drop.p, proj_drop=module.proj_drop.p, **dd)
        with torch.no_grad():
            new.relative_position_bias_table.copy_(module.relative_position_bias_table)
    else:
        cls = FoldedAttention if cb else Attention
        qk_norm = not isinstance(module.q_norm, nn.Identity)
        scale_norm = not isinstance(module.norm, nn.Identity)
        new = cls(module.key.in_dim, num_heads=module.num_heads, attn_head_dim=module.head_dim,
                  dim_out=module.proj.out_features, qkv_bias=has_bias, qk_norm=qk_norm, scale_norm=scale_norm,
                  proj_bias=module.proj.bias is not None, attn_drop=module.attn_drop.p,
                  proj_drop=module.proj_drop.p,
                  norm_layer=(lambda *a, **k: nn.Identity()) if (qk_norm or scale_norm) else None,
                  **({"gated": True} if module.gate is not None else {}), **dd)
        new.q_norm, new.k_norm, new.norm = (copy.deepcopy(module.q_norm), copy.deepcopy(module.k_norm),
                                            copy.deepcopy(module.norm))
        if module.gate is not None:
            new.gate.load_state_dict(module.gate.state_dict())
    with torch.no_grad():
        weight, bias = module.qkv_linear()  # (3A, C_in), rows [q; k; v]
        new.qkv.weight.copy_(weight)
        if has_bias:
            new.qkv.bias.copy_(bias)
        new.proj.load_state_dict(module.proj.state_dict())
        if cb:
            new.context_broadcast.load_state_dict(module.context_broadcast.state_dict())
    new.fused_attn = module.fused_attn
    new.train(module.training)
    return new


def fold(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Collapse every linear manifold key (VanillaK, SimpleK, SpatialK with kernel_size 1) into a plain
    timm attention whose `qkv` holds the effective key matrix: same outputs, baseline cost and size.

    Raises ValueError for KUA or kernel_size > 1 (not a single linear map), naming the layer.
    Hugging Face models: every manifold `k_proj` becomes an `nn.Linear` again (`mkviz/core/hf.py`).
    """
    if any(True for _ in hf.manifold_keys(model)):
        return to_plain_class(hf.fold(model, inplace))
    modules = list(manifold_modules(model))
    if not modules:
        raise ValueError(f"model ({type(model).__name__}) has no manifold-key attention to fold")
    for path, module in modules:  # check everything before changing anything
        if not module.key.foldable or hasattr(module, "to_timm") and module.context_broadcast is not None:
            _fold_module(path, module)
    if not inplace:
        model = copy.deepcopy(model)
    for path, module in list(manifold_modules(model)):
        _set_submodule(model, path, _fold_module(path, module))
    if hasattr(model, "mkviz_config"):
        model.mkviz_config = {**model.mkviz_config, "folded": True}
    return model


def unbalanced_atlas_loss(model: nn.Module) -> torch.Tensor:
    """Sum of KUA's unbalanced-atlas terms −λ·mean_n Σ_c (p(c|n) − 1/H)² from the last training forward.

    Add it to the task loss: `loss = criterion(out, y) + mkviz.unbalanced_atlas_loss(model)`.
    Returns a zero tensor when no layer has ua_weight > 0.
    """
    total: Optional[torch.Tensor] = None
    device = None
    for key in model.modules():  # every manifold key: timm families and Hugging Face k_proj alike
        if not isinstance(key, ManifoldKey):
            continue
        device = key.scale.device
        if key.ua_loss is not None:
            total = key.ua_loss if total is None else total + key.ua_loss
            key.ua_loss = None
    return total if total is not None else torch.zeros((), device=device)
