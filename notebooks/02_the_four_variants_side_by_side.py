# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 — The four variants side by side
#
# *Part 2 of 8 of the `mkviz` course.* 01 the math of charts and the manifold key ·
# 02 the four variants side by side · 03 fine-tuning · 04 what each chart attends to ·
# 05 attributions · 06 chart count and chart similarity · 07 relevance, faithfulness and the key atlas ·
# 08 beyond classification.
#
# Notebook 01 built the manifold key on one attention block. Here we put it into a whole timm
# ViT and ask practical questions:
#
# 1. **Cost.** How many parameters and FLOPs does each variant add (`mkviz.count_params`,
#    `mkviz.count_flops`)?
# 2. **Conversion.** Can a (pretrained) ViT be converted without changing what it computes
#    (`mkviz.convert`)?
# 3. **Symmetry.** If all charts start equal, do they ever become different? What breaks the tie?
# 4. **Folding.** Can a trained model be turned back into a plain ViT for inference (`mkviz.fold`)?
# 5. **The parameter-space collapse.** Why training the linear variants costs barely more than
#    the baseline (`mkviz.key_impl`).
# 6. **Re-parameterisation.** What, then, can the manifold key change at all?
#
# > **A reconstruction, not the paper's code.** The paper's exact equations, kernel sizes and
# > tables are not available to this project; `mkviz` implements a documented reconstruction
# > (see notebook 01 for what follows the paper and what is ours). Every number below is
# > measured here, on models with **random weights**; none is the paper's.

# %% [markdown]
# ## Before you start
#
# **Learning objectives.** After this notebook you can
#
# - measure and predict the parameters and FLOPs each variant adds to a timm ViT;
# - convert a (pretrained) ViT to the manifold key without changing its outputs, and explain why the
#   zero-sum perturbation is needed to break the symmetry between charts;
# - fold a trained VanillaK, SimpleK or SpatialK model back into a plain timm ViT, and say why KUA cannot be folded;
# - explain the parameter-space fast path and check that its gradients equal the per-chart computation's;
# - argue why, at kernel size 1, three of the variants are a re-parameterisation of a ViT, and what that
#   means for any comparison.
#
# **Prerequisites.** Notebook 01 (the key path and the four fusions); training a model with an optimiser
# in PyTorch; the chain rule for matrix products (section 6).
#
# **Time to complete.**
#
# | | |
# |---|---|
# | reading, derivations and the code | about 40 min |
# | the 2 exercises (✎) | about 15 min |
# | Run All at the default scale (ViT-Tiny/16, 224 px), 2-core CPU | 1 min 13 s (measured 2026-12-04: one torch thread, 2 cores shared with two training runs) |
# | Run All, `MKVIZ_SMALL=1` | 15 s (measured, likewise) |
# | Run All at GPU scale (`MKVIZ_DEVICE=cuda`) | not measured (no GPU here) |
#
# **Exercises** are marked ✎. Write a few lines where a cell says `None  # your code`, then run the check
# cell under it: it prints `✓ PASS`, `✗ FAIL` with what differs and a hint, or `· TODO` while the stub is
# untouched (the notebook still runs top to bottom). The solutions are in `notebooks/solutions/`.

# %% [markdown]
# ## Setup
#
# | variable | default | meaning |
# |---|---|---|
# | `MKVIZ_SMALL` | `0` | `1`: a 2-block ViT on 32-px images (what the test suite runs; seconds) |
# | `MKVIZ_DEVICE` | `cpu` | e.g. `cuda` |
# | `MKVIZ_MODEL` | `vit_tiny_patch16_224` | any timm ViT/DeiT name, at full scale |
# | `MKVIZ_SEED` | `0` | random seed |
#
# Full scale is a ViT-Tiny/16 at 224 px with 8 charts (the paper's main setting is 8 charts;
# its models are larger), a couple of minutes on a laptop CPU. Nothing is downloaded:
# `pretrained=False` everywhere, and inputs are synthetic (random pixels, random labels). None
# of the properties checked here depend on trained weights or a real task. On a machine with
# internet, `timm.create_model(name, pretrained=True)` is the only change needed to start from
# real ImageNet weights.

# %%
import copy
import math
import os
import time

import plotly.graph_objects as go
import timm
import torch
import torch.nn.functional as F
from timm.layers import Attention

import mkviz
from mkviz.exercises import check

SMALL = os.environ.get("MKVIZ_SMALL", "0") == "1"
DEVICE = torch.device(os.environ.get("MKVIZ_DEVICE", "cpu"))
SEED = int(os.environ.get("MKVIZ_SEED", "0"))
MODEL = os.environ.get("MKVIZ_MODEL", "vit_tiny_patch16_224")

if SMALL:  # 2 blocks, width 64, 4 heads, 32-px images in 8-px patches: 1 + 4x4 tokens
    MODEL_KW = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5)
    H, BATCH, STEPS, TIMING_REPS = 4, 4, 3, 2
    # tensors this small gain nothing from threads, and tests share the CPU
    torch.set_num_threads(1)
else:  # the named model at 224 px (ViT-Tiny: 12 blocks, width 192, 1 + 14x14 tokens)
    MODEL_KW = dict(num_classes=10)
    H, BATCH, STEPS, TIMING_REPS = 8, 8, 5, 3

torch.manual_seed(SEED)
base = timm.create_model(MODEL, pretrained=False, **MODEL_KW).to(DEVICE).eval()  # random weights
IMG = base.patch_embed.img_size[0]
C = base.embed_dim  # token width
DEPTH = len(base.blocks)  # attention blocks
N = base.patch_embed.num_patches + base.num_prefix_tokens  # tokens per image
CLASSES = base.num_classes
print(
    f"{MODEL} (random weights): {DEPTH} blocks, C={C}, N={N} tokens at {IMG} px; H={H} charts; "
    f"device {DEVICE}"
)

gen = torch.Generator().manual_seed(SEED)
# synthetic, already "normalised", (B, 3, IMG, IMG)
images = torch.randn(BATCH, 3, IMG, IMG, generator=gen).to(DEVICE)
labels = torch.randint(0, CLASSES, (BATCH,), generator=gen).to(DEVICE)  # (B,)


def train(model, steps, lr=1e-3, seed=SEED):
    """`steps` AdamW steps on random images and labels (the same batches for every model)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        xb = torch.randn(BATCH, 3, IMG, IMG, generator=g).to(DEVICE)
        yb = torch.randint(0, CLASSES, (BATCH,), generator=g).to(DEVICE)
        loss = F.cross_entropy(model(xb), yb) + mkviz.unbalanced_atlas_loss(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


# %% [markdown]
# ## 1. Cost: parameters and FLOPs
#
# `mkviz.convert(model, variant, num_charts)` replaces every timm `Attention` in the model by a
# manifold-key attention; `mkviz.count_params` counts parameters and `mkviz.count_flops`
# counts the FLOPs of one forward pass (via `torch.utils.flop_counter`; a multiply-add is 2
# FLOPs). By default FLOPs are *nominal*: every chart computed as written. `reference=False`
# counts what the fast path actually executes (section 5).
#
# Per block, with width $C$, $N$ tokens and $H$ charts, the reconstruction adds these
# parameters (weights plus biases and scales) and multiply-adds:
#
# | variant | extra parameters per block | extra multiply-adds per block |
# |---|---|---|
# | VanillaK | $HC^2 + 2HC$ (chart maps, their biases, scales) | $HC^2 N$ |
# | SimpleK | VanillaK $+\, HC^2 + C$ (dense fusion) | $2HC^2 N$ |
# | SpatialK | $(H-1)C^2 + 2HC - C$ (the wide layer replaces the base key) | $(H-1)C^2 N$ |
# | KUA | VanillaK $+\, HC + H$ (membership layer) | $(HC^2 + 2HC) N$ |
#
# The cell below measures all of them and checks the formulas.

# %%
size = (1, 3, IMG, IMG)
p0, f0 = mkviz.count_params(base), mkviz.count_flops(base, size)
converted = {
    v: mkviz.convert(base, v, H).eval() for v in mkviz.VARIANTS
}  # function-preserving (section 2)
rows = [("baseline", p0, f0, f0)]
for v, model in converted.items():
    rows.append(
        (
            v,
            mkviz.count_params(model),
            mkviz.count_flops(model, size),
            mkviz.count_flops(model, size, reference=False),
        )
    )

print(f"{MODEL}, {H} charts, one {IMG}x{IMG} image")
print(
    f"{'variant':<9} {'params (M)':>11} {'× params':>9} {'GFLOPs':>8} {'× FLOPs':>8} "
    f"{'fast-path GFLOPs':>17}"
)
for v, p, f, ff in rows:
    print(
        f"{v:<9} {p / 1e6:>11.3f} {p / p0:>9.2f} {f / 1e9:>8.3f} {f / f0:>8.2f} {ff / 1e9:>17.3f}"
    )

expected_params = {
    "vanillak": H * C * C + 2 * H * C,
    "simplek": 2 * H * C * C + 2 * H * C + C,
    "spatialk": (H - 1) * C * C + 2 * H * C - C,
    "kua": H * C * C + 3 * H * C + H,
}
expected_macs = {
    "vanillak": H * C * C * N,
    "simplek": 2 * H * C * C * N,
    "spatialk": (H - 1) * C * C * N,
    "kua": (H * C * C + 2 * H * C) * N,
}
for v, p, f, _ in rows[1:]:
    assert p - p0 == DEPTH * expected_params[v], v
    assert f - f0 == DEPTH * 2 * expected_macs[v], v
print("parameter and FLOP formulas: all match")

# %%
names = [r[0] for r in rows]
fig = go.Figure([go.Bar(name="× parameters", x=names, y=[r[1] / p0 for r in rows]),
                 go.Bar(name="× FLOPs (nominal)", x=names, y=[r[2] / f0 for r in rows]),
                 go.Bar(name="× FLOPs (fast path)", x=names, y=[r[3] / f0 for r in rows])])
fig.add_hline(y=1, line_dash="dot")
fig.update_layout(barmode="group", title=f"cost relative to the baseline ({MODEL}, {H} charts)",
                  yaxis_title="ratio", height=360, width=760)
fig.show()

# %% [markdown]
# With 8 charts the nominal cost grows by roughly 1.5–2.3×, SimpleK the most (it has chart
# maps *and* a dense fusion), SpatialK the least (its wide layer replaces the base key). The
# whole-model table for ViT-S/B and Swin-T is `python -m mkviz.bench params`. The paper claims
# its gains do not come only from the extra parameters and compute; section 6 explains why
# parameter counts are a poor guide here anyway.

# %% [markdown]
# ## 2. Function-preserving conversion
#
# Converting a *pretrained* model should not throw away what it knows: at step 0 the converted
# model must compute exactly what the original computed. `mkviz.convert` (with the default
# `init="preserve"`) copies $W_q, W_v, W_o$ and the key $W_k$, and initialises
#
# - scales $s_c = 1$,
# - chart maps $\varphi_c = I + \delta_c$ with $\sum_c \delta_c = 0$ (small, random, zero-sum),
# - SimpleK's dense fusion = the mean, KUA's membership logits = 0 (uniform $p(c\mid n) = 1/H$),
# - context broadcasting's gate = 0 (when enabled).
#
# Then for the averaging variants $\frac1H \sum_c (I + \delta_c) K_0 = K_0 + \frac1H\big(\sum_c \delta_c\big) K_0 = K_0$:
# the fused key is the original key, although each chart differs from it by $\delta_c K_0$.
# The same holds for SimpleK (mean fusion) and KUA (uniform weights). `perturbation=0.1`
# (default) sets $\lVert\delta_c z\rVert \approx 0.1\,\lVert z\rVert$.

# %%
with torch.no_grad():
    y0 = base(images)  # (B, classes)
    for v, model in converted.items():
        diff = (model(images) - y0).abs().max().item()
        print(f"{v:<9} max |converted - original| = {diff:.1e}")
        assert diff <= 1e-5, v

key0 = next(mkviz.manifold_modules(converted["vanillak"]))[1].key  # block 0's ManifoldKey
# (H·C, C, 1) -> (H, C, C): δ_c = φ_c - I
delta = key0.chart_maps.weight.view(H, C, C) - torch.eye(C, device=DEVICE)
print(
    "block 0: ‖δ_c‖/‖I‖ per chart = "
    f"{[round(v, 3) for v in (delta.flatten(1).norm(dim=1) / C ** 0.5).tolist()]}"
)
print(f"block 0: max |Σ_c δ_c| = {delta.sum(0).abs().max().item():.1e}  (zero-sum)")
assert delta.sum(0).abs().max() < 1e-5

# %% [markdown]
# The same conversion works on DeiT (including the distilled variant) and Swin
# (`WindowAttention`); the test suite checks exactness for every variant at 1, 3 and 8 charts.
# A from-scratch model (`mkviz.create_model(name, variant, pretrained=False)`) uses ordinary
# trunc-normal initialisation instead.

# %% [markdown]
# ### ✎ Exercise 2.1 — a zero-sum perturbation
#
# Below is a random perturbation `delta_random` of shape $(H, C, C)$, one $C\times C$ matrix per chart. Turn it
# into the zero-sum perturbation **closest** to it (in the sum of squared entries), so that
# $\frac1H\sum_c (I + \delta'_c) = I$ and the fused key is unchanged. One line.

# %%
delta_random = (
    0.1 * C**-0.5 * torch.randn(H, C, C, generator=torch.Generator().manual_seed(SEED))
)  # (H, C, C)

# %%
# ✎ exercise 02.zero-sum
answer = (
    None  # your code: δ' of shape (H, C, C) with Σ_c δ'_c = 0, as close to delta_random as possible
)

# %%
check("02.zero-sum", answer, delta=delta_random)

# %% [markdown]
# ## 3. What breaks the symmetry between charts
#
# Why the $\delta_c$ at all? Suppose every chart started identical ($\delta_c = 0$, $s_c = 1$).
# Every chart then receives the *same* gradient. For VanillaK, with $g_n = \partial L/\partial K_n$
# the gradient at token $n$'s fused key,
#
# $$\frac{\partial L}{\partial \varphi_c} = \frac1H \sum_n g_n\,(s_c \odot K_{0,n})^\top, \qquad
#   \frac{\partial L}{\partial s_c} = \frac1H \sum_n K_{0,n} \odot \big(\varphi_c^\top g_n\big),$$
#
# the same for all $c$ when all $\varphi_c$ and $s_c$ are equal. Identical charts with identical
# updates stay identical forever: $H$ charts would be one chart paid for $H$ times.
#
# With the zero-sum $\delta_c$ the charts differ, and the first thing to feel it is the
# gradient of the scales, which contains $\varphi_c = I + \delta_c$. (The chart maps' own gradients stay equal at
# step 0 while $s_c = 1$, since each chart map sees the same input; they start to differ
# once the scales have moved.)
#
# We train two conversions for a few AdamW steps, `perturbation=0.1` and `perturbation=0.0`,
# and measure the **update spread** of each chart: how far its update differs from the mean
# update over charts, relative to the mean update, $\lVert \Delta_c - \bar\Delta\rVert / \lVert\bar\Delta\rVert$.

# %%
def update_spread(perturbation):
    """Train a VanillaK conversion; per-chart spread of the scale and chart-map updates
    in block 0."""
    model = mkviz.convert(base, "vanillak", H, perturbation=perturbation)
    key = next(mkviz.manifold_modules(model))[1].key
    s_before = key.scale.detach().clone()  # (H, C)
    phi_before = key.chart_maps.weight.detach().clone().view(H, C * C)  # (H·C, C, 1) -> (H, C·C)
    train(model, STEPS)
    spreads = {}
    for name, before, after in (
        ("scale s_c", s_before, key.scale.detach()),
        ("chart map φ_c", phi_before, key.chart_maps.weight.detach().view(H, C * C)),
    ):
        update = (after - before).flatten(1)  # (H, ·): each chart's update
        mean = update.mean(0, keepdim=True)  # (1, ·)
        spreads[name] = ((update - mean).norm(dim=1) / mean.norm()).tolist()  # (H,)
    return model, spreads


trained_vanilla, spread_on = update_spread(0.1)
_, spread_off = update_spread(0.0)
for label, spreads in (("perturbation=0.1", spread_on), ("perturbation=0.0", spread_off)):
    for name, values in spreads.items():
        print(f"{label}  {name:<14} update spread per chart: {[f'{v:.1e}' for v in values]}")
assert max(max(v) for v in spread_off.values()) < 1e-6  # no perturbation: the charts never separate
assert min(spread_on["scale s_c"]) > 1e-3  # zero-sum perturbation: they do

# %%
fig = go.Figure()
for label, spreads in (("perturbation = 0.1", spread_on), ("perturbation = 0.0", spread_off)):
    fig.add_trace(go.Bar(name=label, x=[f"chart {c}" for c in range(H)], y=spreads["scale s_c"]))
fig.update_layout(
    barmode="group",
    height=340,
    width=760,
    yaxis_title="‖Δs_c − mean‖ / ‖mean‖",
    title=f"how differently each chart's scale moved in {STEPS} AdamW steps (block 0)",
)
fig.show()

# %% [markdown]
# Without the perturbation the spread is exactly zero: the charts are clones. With it, the
# scales of different charts move differently from the first step on, and the chart maps
# follow. This is why `convert` uses `perturbation=0.1` by default, and why a test pins down
# both halves (equal outputs at step 0, different charts after a few steps).

# %% [markdown]
# ## 4. Folding for inference
#
# At kernel size 1, VanillaK, SimpleK and SpatialK are **linear** in the tokens: the whole key
# path (base key, scales, chart maps, fusion) is a product of matrices, one $C\times C$ matrix
# in the end:
#
# $$K = X W_k'^\top + b_k', \qquad W_k' = \frac1H\sum_c \varphi_c\,\mathrm{diag}(s_c)\,W_k \quad\text{(VanillaK)} .$$
#
# `key.effective_linear()` returns $(W_k', b_k')$, and `mkviz.fold(model)` writes them into
# the key rows of a plain timm `qkv`: the result is an ordinary timm ViT, with the baseline's
# parameter count and speed and the same outputs. We fold the VanillaK model trained in
# section 3, and SimpleK and SpatialK after two training steps (so the charts are not at
# their initial values).

# %%
trained = {
    "vanillak": trained_vanilla,
    "simplek": train(mkviz.convert(base, "simplek", H), 2),
    "spatialk": train(mkviz.convert(base, "spatialk", H), 2),
}
with torch.no_grad():
    for v, model in trained.items():
        folded = mkviz.fold(model)
        diff = (folded(images) - model(images)).abs().max().item()
        attn = folded.blocks[0].attn
        print(
            f"{v:<9} max |folded - trained| = {diff:.1e}; params {mkviz.count_params(model):,d} -> "
            f"{mkviz.count_params(folded):,d} (baseline {p0:,d}); block 0 is "
            f"{type(attn).__module__}.{type(attn).__name__}"
        )
        assert diff <= 1e-5, v
        assert mkviz.count_params(folded) == p0 and type(attn) is Attention

W_eff, b_eff = next(mkviz.manifold_modules(trained["vanillak"]))[1].key.effective_linear()
print("VanillaK block 0: effective key matrix", tuple(W_eff.shape), "bias", tuple(b_eff.shape))

# %% [markdown]
# ### ✎ Exercise 2.2 — fold a key by hand
#
# `fold` relies on `key.effective_linear()`. Compute it yourself for block 0 of the trained VanillaK model:
# the effective weight $W_k' = \frac1H\sum_c \varphi_c\,\mathrm{diag}(s_c)\,W_k$ and the effective bias
# (work it out: the base key has a bias $b_k$ and each chart map a bias $\beta_c$). Use
# `key.base.weight`, `key.base.bias`, `key.scale`, `key.chart_maps.weight` and `key.chart_maps.bias`.

# %%
# ✎ exercise 02.fold-by-hand
key = trained["vanillak"].blocks[0].attn.key                 # block 0's ManifoldKey
answer = None  # your code: the pair (W_eff (C, C), b_eff (C,))

# %%
check("02.fold-by-hand", answer, key=key)

# %% [markdown]
# KUA cannot be folded: its membership $p(c\mid n)$ is a softmax of the token, so the key is
# not a linear function of $X$. Neither can any variant with `kernel_size > 1` (the chart maps
# then mix neighbouring tokens). `fold` refuses with a message that says why:

# %%
try:
    mkviz.fold(converted["kua"])
    raise AssertionError("KUA should not fold")
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## 5. The parameter-space collapse: cheap training
#
# The same algebra makes *training* cheap. Computing every chart as written costs
# $2HC^2$ FLOPs per token (VanillaK). But the chart maps act the same way on every token, so
# for the linear variants `mkviz` forms the effective matrix $W_k'$ in **parameter space**
# once per forward (a few $C\times C$ products, independent of batch and token count) and
# runs $q$, $k$, $v$ as one matmul, exactly as timm does. Autograd through $W_k'$ gives
# exactly the gradients of the per-chart computation, because it *is* the same function of
# the same parameters.
#
# `mkviz.key_impl(model, "reference")` switches a model to the as-written, per-chart path (a
# context manager); the default is `"fast"`. Outputs and gradients agree; we compare them in
# float64 so that the check is not blurred by float32 rounding (the two paths add the same
# numbers in a different order).

# %%
model = trained["vanillak"]
model64 = copy.deepcopy(model).double()  # a float64 copy for the comparison


def loss_and_grads(model):
    """Loss on the fixed batch (float64) and the gradient of every parameter."""
    model.zero_grad()
    loss = F.cross_entropy(model(images.double()), labels)
    loss.backward()
    return loss.detach(), {
        n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None
    }


loss_fast, grads_fast = loss_and_grads(model64)
with mkviz.key_impl(model64, "reference"):
    loss_ref, grads_ref = loss_and_grads(model64)
del model64
# relative error per tensor; the floor 1e-6 skips the key biases, whose true gradient is 0 (see
# below)
grad_err = max(
    ((grads_fast[n] - g).norm() / g.norm().clamp_min(1e-6)).item() for n, g in grads_ref.items()
)
key_bias_grad = max(
    g.norm().item() for n, g in grads_ref.items() if ".key." in n and n.endswith("bias")
)
print(
    f"loss fast {loss_fast.item():.12f} vs reference {loss_ref.item():.12f}; "
    f"max relative gradient difference over {len(grads_ref)} tensors: {grad_err:.1e}"
)
print(f"largest gradient of any key bias: {key_bias_grad:.1e}")
assert abs(loss_fast - loss_ref).item() < 1e-10 and grad_err < 1e-8

# %% [markdown]
# A side remark the gradients reveal: the **key biases get no gradient** (up to float noise).
# A key bias $b$ adds $q_i \cdot b$ to every logit of query row $i$, the same for every key $j$,
# and a softmax does not change when a constant is added to its row. Both paths agree on that too.
#
# How much does it save? A training step (forward and backward) of the baseline, the fast
# path and the reference path, and the FLOPs of one forward. The break-even: forming
# $W_k'$ costs about $2C^2 C_{in}$ FLOPs per block *per forward*, the per-chart path
# $2HC^2$ *per token*, so the fast path wins as soon as a batch has more than about
# $C_{in}/H$ tokens, which is always the case in practice. FLOPs are the reliable comparison;
# wall times on a shared or tiny machine are noisy (and with `MKVIZ_SMALL=1` they measure
# mostly Python overhead), so they are printed, not asserted.

# %%
def step_seconds(model, impl):
    """Wall time of one forward + backward on the fixed batch, with the key path `impl`."""
    with mkviz.key_impl(model, impl):
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        F.cross_entropy(model(images), labels).backward()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
    model.zero_grad()
    return time.perf_counter() - start


runs = {
    "baseline": (
        copy.deepcopy(base).train(),
        "fast",
    ),  # a plain timm ViT (key_impl changes nothing)
    "fast": (model.train(), "fast"),
    "reference": (model, "reference"),
}
times = {name: [] for name in runs}
for rep in range(TIMING_REPS + 1):  # interleaved, so load changes hit all three
    for name, (m, impl) in runs.items():
        seconds = step_seconds(m, impl)
        if rep:  # rep 0 is a warm-up
            times[name].append(seconds)
# the minimum is least disturbed by other processes
t_base, t_fast, t_ref = (min(times[name]) for name in runs)
model.eval()
flops_ref = mkviz.count_flops(model, (BATCH, 3, IMG, IMG))
flops_fast = mkviz.count_flops(model, (BATCH, 3, IMG, IMG), reference=False)
flops_base = mkviz.count_flops(base, (BATCH, 3, IMG, IMG))
print(f"batch {BATCH}, train step (forward + backward), VanillaK with {H} charts:")
print(f"  baseline   {t_base * 1e3:8.1f} ms   forward GFLOPs {flops_base / 1e9:8.3f}")
print(
    f"  fast       {t_fast * 1e3:8.1f} ms   forward GFLOPs {flops_fast / 1e9:8.3f}   speed vs "
    f"baseline {t_base / t_fast:.2f}×"
)
print(
    f"  reference  {t_ref * 1e3:8.1f} ms   forward GFLOPs {flops_ref / 1e9:8.3f}   speed vs "
    f"baseline {t_base / t_ref:.2f}×"
)
assert flops_base <= flops_fast < flops_ref

# %% [markdown]
# For scale: on 2 CPU cores, a ViT-S/16 train step at batch 8 with 8 charts ran at 0.61× the
# baseline's speed with every chart materialised and 0.91× with the parameter-space form
# (measured by this project, [`docs/design.md`](../docs/design.md) §6). Per-chart keys are still computed when you ask for
# them: `key.chart_keys(x)` always computes them as written, and `mkviz.record_attention`
# (notebooks 01 and 04) records them with the per-chart attention maps.

# %% [markdown]
# ## 6. A re-parameterisation: what can the manifold key change?
#
# Sections 4 and 5 have an uncomfortable consequence. At kernel size 1, a VanillaK, SimpleK or
# SpatialK model computes a function that a **plain ViT** can compute too (fold it and you have
# one), and every plain ViT is such a model (convert it). The set of functions is the same.
# These variants are a *re-parameterisation* of a standard ViT, like RepVGG (train with
# branches, fold them for inference) or ExpandNets (expand a linear layer into a product of
# layers during training).
#
# So any accuracy gain from them cannot come from expressiveness; it must come from **training
# dynamics**: the same gradient, seen through a different parameterisation, moves the
# effective key matrix differently. For VanillaK right after conversion ($s_c = 1$,
# $\varphi_c = I + \delta_c$, $\sum_c\delta_c = 0$, no key bias), one SGD step of size $\eta$
# with $G = \partial L/\partial W_k'$ moves the effective key matrix by, to first order,
#
# $$\Delta W_k' = -\eta\Big[\underbrace{G}_{\text{plain ViT}}
#   + \tfrac1H\, G\, W_k^\top W_k
#   + \tfrac1{H^2} \sum_c \varphi_c\, \mathrm{diag}\big(\varphi_c^\top G W_k^\top\big)\, W_k\Big],$$
#
# (from $\partial L/\partial W_k = G$, $\partial L/\partial \varphi_c = \frac1H G W_k^\top$ and
# $\partial L/\partial s_c = \frac1H\mathrm{diag}(\varphi_c^\top G W_k^\top)$): a *preconditioned*
# gradient step, whose preconditioner depends on the current key weights $W_k$. Adaptive
# optimisers (AdamW normalises each parameter's step) change the picture further.
#
# We check the formula numerically: convert, fold to get the plain "twin" (the same function),
# take one step on each with the same batch, and compare how block 0's effective key matrix
# moved.
#
# **A pretrained-like key, in float64.** Random-init keys are tiny (std 0.02), so the
# preconditioner would be $\approx I$; we draw the key rows at a pretrained-like scale
# ($1/\sqrt C$) first, and work in float64 so the first-order check is clean.

# %%
pre = copy.deepcopy(base).double()
with torch.no_grad():
    for blk in pre.blocks:
        blk.attn.qkv.weight[C:2 * C].normal_(0, C ** -0.5)   # rows [q; k; v]: a pretrained-like W_k
x64 = images.double()

# %% [markdown]
# **The effective key matrix** of block 0: $W_k'$ (`effective_linear`) for a manifold model, the
# key rows of `qkv` for a plain one. It is what the two models share before the step.

# %%
def key_matrix(model):
    """Block 0's effective key matrix (C, C): W_k' (manifold model) or qkv's key rows (plain)."""
    attn = model.blocks[0].attn
    if type(attn) is Attention:
        return attn.qkv.weight[C:2 * C].detach().clone()
    return attn.key.effective_linear()[0].detach().clone()

# %% [markdown]
# **One step on both.** `one_step` converts, folds to the twin, checks they agree, takes one
# optimiser step on each with the same batch and returns how $W_k'$ moved in each, with the
# gradient $G$ and the weights the formula needs.

# %%
def one_step(opt_name, lr):
    """One optimiser step on a VanillaK conversion and on its folded twin; both ΔW_k' and more."""
    mk = mkviz.convert(pre, "vanillak", H).train()
    twin = mkviz.fold(mk).train()
    key = mk.blocks[0].attn.key
    W_k = key.base.weight.detach().clone()  # (C, C)
    phi = key.chart_maps.weight.detach().clone().view(H, C, C)  # (H·C, C, 1) -> (H, C, C)
    with torch.no_grad():
        same = (mk(x64) - twin(x64)).abs().max().item()
    M0 = key_matrix(mk)
    for m in (mk, twin):
        opt = (torch.optim.SGD if opt_name == "SGD" else torch.optim.AdamW)(m.parameters(), lr=lr)
        opt.zero_grad()
        F.cross_entropy(m(x64), labels).backward()
        opt.step()
    G = twin.blocks[0].attn.qkv.weight.grad[
        C : 2 * C
    ]  # ∂L/∂W_k': the twin's key-row gradient (C, C)
    with torch.no_grad():
        after = (mk(x64) - twin(x64)).abs().max().item()
    return dict(
        d_mk=key_matrix(mk) - M0,
        d_twin=key_matrix(twin) - M0,
        G=G,
        W_k=W_k,
        phi=phi,
        same=same,
        after=after,
    )

# %% [markdown]
# **SGD against the formula.** With plain SGD the manifold model's $\Delta W_k'$ must match the
# first-order prediction above: the plain step plus the two preconditioning terms.

# %%
sgd = one_step("SGD", lr=1e-4)
W_k, phi, G = sgd["W_k"], sgd["phi"], sgd["G"]
# φ_c diag(·) W_k: the scale term scales φ_c's columns
scale_term = sum((phi[c] * torch.diagonal(phi[c].T @ G @ W_k.T)) @ W_k for c in range(H))
predicted = -1e-4 * (G + G @ W_k.T @ W_k / H + scale_term / H ** 2)      # (C, C)
rel_err = ((sgd["d_mk"] - predicted).norm() / sgd["d_mk"].norm()).item()
print(f"before the step: max |manifold - plain twin| = {sgd['same']:.1e} (same function)")
print(f"SGD: first-order prediction of ΔW_k' matches to {rel_err:.1e} (relative)")
assert sgd["same"] < 1e-10 and rel_err < 1e-2

# %% [markdown]
# **SGD and AdamW side by side.** How large the manifold model's step on $W_k'$ is against the
# twin's, how aligned the two are (cosine), and how far the outputs are apart after one step.

# %%
adamw = one_step("AdamW", lr=1e-3)
print(f"{'optimiser':<9} {'‖ΔW_k′ manifold‖ / ‖ΔW_k′ plain‖':>32} {'cosine':>8} "
      f"{'outputs after one step differ by':>34}")
for name, r in (("SGD", sgd), ("AdamW", adamw)):
    ratio = (r["d_mk"].norm() / r["d_twin"].norm()).item()
    cos = F.cosine_similarity(r["d_mk"].flatten(), r["d_twin"].flatten(), dim=0).item()
    print(f"{name:<9} {ratio:>32.3f} {cos:>8.4f} {r['after']:>34.1e}")
assert adamw["after"] > 1e-8               # same function before, different after one step

# %% [markdown]
# Same function before the step, different functions after it: the manifold key changes *how*
# the model learns, not *what* it can represent. This is the honest frame for any comparison
# (notebook 03 and the reproduction): a gain has to come from optimisation, so it should be
# checked against baselines with matched training (same epochs, same optimiser and schedule),
# and it may depend on the optimiser, the learning rate and the starting point.
#
# Two exceptions are *not* re-parameterisations: **KUA** (its per-token softmax membership makes
# the key a nonlinear function of the token) and any variant with **kernel size > 1** (chart
# maps that mix neighbouring tokens give a local, CvT-like key that a plain ViT's key cannot
# express). Context broadcasting also adds an operation a plain ViT lacks.

# %% [markdown]
# ## Summary
#
# | | VanillaK | SimpleK | SpatialK | KUA |
# |---|---|---|---|---|
# | fusion | mean | dense learned | mean of a wide layer's charts | per-token softmax membership |
# | extra cost per block | $HC^2$ | $2HC^2$ | $(H-1)C^2$ | $\approx HC^2$ |
# | function-preserving conversion | yes | yes | yes | yes |
# | folds to a plain ViT ($k=1$) | yes | yes | yes | no |
# | fast parameter-space training ($k=1$) | yes | yes | yes | charts in one matmul |
# | a re-parameterisation of a ViT ($k=1$) | yes | yes | yes | no |
#
# - `mkviz.convert` is exact at step 0 and breaks chart symmetry with a zero-sum perturbation;
#   without it the charts stay clones.
# - `mkviz.fold` returns a plain timm model with the baseline's size and the same outputs.
# - `mkviz.key_impl` switches between the per-chart reference and the parameter-space fast path:
#   same outputs and gradients, very different cost.
#
# **Next, 03:** fine-tuning the variants (GPU scale, with a CPU smoke scale) and comparing them
# with a baseline trained the same way.
