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
# # 01 — Charts and the manifold key
#
# *Part 1 of 8 of the `mkviz` course.* 01 the math of charts and the manifold key ·
# 02 the four variants side by side · 03 fine-tuning · 04 what each chart attends to ·
# 05 attributions · 06 chart count and chart similarity · 07 relevance, faithfulness and the key atlas ·
# 08 beyond classification.
#
# The paper *"A Manifold Representation of the Key in Vision Transformers"* (Meng, Goodwin,
# Yazidi, Engelstad, arXiv 2402.00534, 2024) takes the key out of a ViT block's shared `qkv`
# projection, expands it into several **charts**, processes each chart on its own and fuses
# them back into one key. This notebook builds that idea from the ground up:
#
# 1. what a chart and an atlas are (a short, informal detour through manifolds);
# 2. baseline attention in a timm ViT block, with every shape written out;
# 3. the manifold key: base key → charts → chart maps → fusion, with `mkviz.ManifoldKey`;
# 4. the four fusion variants (VanillaK, SimpleK, SpatialK, KUA), each an equation next to code;
# 5. a derivation: VanillaK's attention is the *normalised geometric mean* of the charts'
#    attention maps, checked numerically.
#
# **Notebooks teach, the library computes.** Everything the model does comes from `mkviz`;
# the few lines of plain `torch` below only re-derive a result to check it.
#
# > **What comes from the paper, and what is ours.** The paper's exact layer equations,
# > kernel sizes and tables are *not available* to this project. `mkviz` implements a
# > documented **reconstruction** (the project's design document, [`docs/design.md`](../docs/design.md) §2). Nothing in this notebook is a
# > number from the paper.
# >
# > | from the paper | this project's reconstruction |
# > |---|---|
# > | the key is disentangled from the shared `qkv` map | the base key $K_0 = XW_k^\top + b_k$ is what gets expanded (the option `expand_from="input"` expands $X$ instead, the other reading) |
# > | the key is expanded into $H$ charts with a trainable scale | $K_c = s_c \odot K_0$ with $s \in \mathbb{R}^{H\times C}$ |
# > | per-chart group-wise 1D convolutions | one `Conv1d(H·C, H·C, k, groups=H)`; kernel size $k=1$ by default (the paper's $k$ is unknown; $k>1$ is an option) |
# > | the charts are fused into one meta-representation; four variants named SpatialK, KUA, SimpleK, VanillaK | the exact fusion equations of section 4 below |
# > | KUA is named after the unbalanced atlas of DIM-UA | a per-token softmax membership over charts |
# > | — | the geometric-mean identity of section 5 is a property of *our* VanillaK |

# %% [markdown]
# ## Before you start
#
# **Learning objectives.** After this notebook you can
#
# - say what a chart and an atlas are, and what the word means (and does not mean) in the paper;
# - write out a timm attention block's forward pass with the shape of every tensor;
# - follow the manifold key step by step (base key, $H$ scaled charts, chart maps, fusion) in `mkviz.ManifoldKey`,
#   and count its parameters;
# - state the four fusions (VanillaK, SimpleK, SpatialK, KUA) as equations and check them against the code;
# - derive why VanillaK's attention is the normalised geometric mean of the charts' attention maps.
#
# **Prerequisites.** PyTorch tensors (`reshape`, `permute`, `einsum`, broadcasting); softmax and
# scaled dot-product attention as in *Attention Is All You Need*; what a ViT does with patches and a class
# token. No manifold theory: section 1 gives all that is used.
#
# **Time to complete.**
#
# | | |
# |---|---|
# | reading, derivations and the code | about 35 min |
# | the 2 exercises (✎) | about 15 min |
# | Run All at the default scale, 2-core CPU | 9 s (measured 2026-12-04: one torch thread, 2 cores shared with two training runs) |
# | Run All, `MKVIZ_SMALL=1` | 15 s (measured, likewise) |
# | Run All at GPU scale (`MKVIZ_DEVICE=cuda`) | not measured (the default scale is already seconds) |
#
# **Exercises** are marked ✎. Write a few lines where a cell says `None  # your code`, then run the check
# cell under it: it prints `✓ PASS`, `✗ FAIL` with what differs and a hint, or `· TODO` while the stub is
# untouched (the notebook still runs top to bottom). The solutions are in `notebooks/solutions/`.

# %% [markdown]
# ## Setup
#
# Scale is chosen by environment variables, so the same notebook runs as a fast test, on a
# laptop CPU and on a GPU:
#
# | variable | default | meaning |
# |---|---|---|
# | `MKVIZ_SMALL` | `0` | `1`: tiny sizes (what the test suite uses; a few seconds) |
# | `MKVIZ_DEVICE` | `cpu` | e.g. `cuda` to run on a GPU |
# | `MKVIZ_SEED` | `0` | random seed |
#
# Nothing is downloaded: every model here has random weights (`pretrained=False`), and the
# inputs are random tokens. The algebra we check does not depend on trained weights.

# %%
import math
import os

import plotly.graph_objects as go
import timm
import torch
from plotly.subplots import make_subplots
from timm.layers import Attention

import mkviz
from mkviz.exercises import check

SMALL = os.environ.get("MKVIZ_SMALL", "0") == "1"
DEVICE = torch.device(os.environ.get("MKVIZ_DEVICE", "cpu"))
SEED = int(os.environ.get("MKVIZ_SEED", "0"))

if SMALL:  # a toy block: 1 cls token + a 4x4 patch grid, width 32, 2 heads, 4 charts
    B, GRID, C, HEADS, H = 2, 4, 32, 2, 4
    # tensors this small gain nothing from threads, and tests share the CPU
    torch.set_num_threads(1)
else:
    # one ViT-Tiny/16 block at 224 px: 1 + 14x14 tokens, width 192, 3 heads, 8 charts (paper's H)
    B, GRID, C, HEADS, H = 2, 14, 192, 3, 8
N = 1 + GRID * GRID  # tokens: cls + patches
D = C // HEADS  # head width d
torch.manual_seed(SEED)
print(
    f"mkviz {mkviz.__version__}, timm {timm.__version__}, torch {torch.__version__}, device "
    f"{DEVICE}"
)
print(f"B={B} images, N={N} tokens, C={C} channels, {HEADS} heads of width d={D}, H={H} charts")

# %% [markdown]
# ## 1. Charts and atlases, in one picture
#
# A **manifold** is a space that looks flat up close: a circle, the surface of a sphere. It
# usually cannot be described by *one* flat coordinate system without tearing it, so we use
# several. A **chart** is a map $\varphi_c : U_c \to \mathbb{R}^n$ from a patch $U_c$ of the
# manifold to flat coordinates; an **atlas** is a set of charts whose patches cover the
# manifold. Where two patches overlap, a point has two coordinate descriptions, related by a
# *transition map* $\varphi_2 \circ \varphi_1^{-1}$.
#
# The circle $S^1$ needs two charts. Chart 1 reads the angle in $(-\pi, \pi)$ and misses the
# point $(-1, 0)$; chart 2 reads it in $(0, 2\pi)$ and misses $(1, 0)$. On the overlap the
# transition map is $\theta \mapsto \theta$ (upper half) or $\theta \mapsto \theta + 2\pi$
# (lower half).

# %%
theta = torch.linspace(-math.pi, math.pi, 361)[1:-1]  # chart 1's domain, (359,)
fig = make_subplots(
    rows=1,
    cols=2,
    subplot_titles=("two charts cover the circle", "chart coordinates of the same points"),
)
for name, lo, hi, color in (
    ("chart 1: θ ∈ (−π, π)", -math.pi, math.pi, "royalblue"),
    ("chart 2: θ ∈ (0, 2π)", 0.0, 2 * math.pi, "darkorange"),
):
    t = torch.linspace(lo, hi, 361)[1:-1]
    r = 1.0 if color == "royalblue" else 1.08  # draw chart 2 slightly outside
    fig.add_trace(
        go.Scatter(x=r * t.cos(), y=r * t.sin(), name=name, line=dict(color=color, width=4)), 1, 1
    )
chart2 = torch.where(theta > 0, theta, theta + 2 * math.pi)  # transition map φ2∘φ1⁻¹
fig.add_trace(
    go.Scatter(
        x=theta,
        y=chart2,
        mode="markers",
        marker=dict(size=3, color="gray"),
        name="transition φ2∘φ1⁻¹",
    ),
    1,
    2,
)
fig.update_xaxes(title_text="chart 1 coordinate", row=1, col=2)
fig.update_yaxes(title_text="chart 2 coordinate", row=1, col=2)
fig.update_yaxes(scaleanchor="x", scaleratio=1, row=1, col=1)
fig.update_layout(height=360, width=820)
fig.show()

# %% [markdown]
# **How the paper uses the idea.** The key vector of a token is treated as a point with
# several coordinate descriptions: the key is *expanded into $H$ charts*, each chart is
# processed by its own map, and the charts are *fused* back into one "meta-representation"
# that attention uses. In DIM-UA (the authors' earlier unbalanced-atlas work, ICLR 2024) each
# chart was its own output head and a softmax *membership* said which chart a sample belongs
# to; KUA below carries that over to tokens.
#
# Keep the analogy loose: in the reconstruction a "chart" is one learned linear view of the
# key. Nothing in the code enforces that the charts cover a manifold or that transition maps
# exist. The word is motivation, not a constraint.

# %% [markdown]
# ## 2. Baseline attention, shape by shape
#
# A timm ViT block's attention (`timm.layers.Attention`) computes, for tokens
# $X \in \mathbb{R}^{B\times N\times C}$ and $h$ heads of width $d = C/h$:
#
# $$[Q, K, V] = X W_{qkv}^\top + b_{qkv}, \qquad
#   A = \operatorname{softmax}\!\Big(\frac{Q K^\top}{\sqrt d}\Big) \text{ per head}, \qquad
#   \text{out} = (A V) W_o^\top + b_o .$$
#
# $Q$, $K$ and $V$ all come from **one** linear map `qkv`, whose weight stacks the rows
# $[W_q; W_k; W_v]$. We build one such layer (random weights) and redo its forward pass by
# hand. By default timm uses `F.scaled_dot_product_attention`, which never materialises the
# $N\times N$ matrix $A$; writing it out is what lets us look at attention at all.

# %%
attn = Attention(C, num_heads=HEADS, qkv_bias=True).to(DEVICE).eval()
x = torch.randn(B, N, C, device=DEVICE)                      # tokens, (B, N, C)

qkv = attn.qkv(x)                                            # (B, N, 3C)
qkv = qkv.reshape(B, N, 3, HEADS, D)                         # (B, N, 3, heads, d)
qkv = qkv.permute(2, 0, 3, 1, 4)                             # (3, B, heads, N, d)
q, k, v = qkv.unbind(0)                                      # each (B, heads, N, d)
logits = (q @ k.transpose(-2, -1)) / math.sqrt(D)            # (B, heads, N, N)
A = logits.softmax(dim=-1)                                   # (B, heads, N, N), rows sum to 1
out = (A @ v).transpose(1, 2)                                # (B, N, heads, d)
out = attn.proj(out.reshape(B, N, C))                        # (B, N, heads·d) -> (B, N, C)

with torch.no_grad():
    diff = (out - attn(x)).abs().max().item()
print("qkv weight", tuple(attn.qkv.weight.shape), "= rows [W_q; W_k; W_v], each", (C, C))
print(f"attention A: {tuple(A.shape)}, row sums in [{A.sum(-1).min():.6f}, {A.sum(-1).max():.6f}]")
print(f"max |by hand - timm| = {diff:.2e}")
assert diff < 1e-5

# %% [markdown]
# ## 3. The manifold key
#
# The manifold key keeps $Q$ and $V$ as they are (the $q$ and $v$ rows of `qkv`) and gives
# the key its own path (the reconstruction, [`docs/design.md`](../docs/design.md) §2):
#
# | step | formula | shape |
# |---|---|---|
# | 1. base key | $K_0 = X W_k^\top + b_k$ | $(B, N, C)$ |
# | 2. expansion | $K_c = s_c \odot K_0,\quad c = 1..H,\quad s \in \mathbb{R}^{H\times C}$ trainable | $(B, H, N, C)$ |
# | 3. chart maps | $K_c \leftarrow \varphi_c(K_c)$, $\varphi_c$ linear, per chart | $(B, H, N, C)$ |
# | 4. fusion | $K = F(K_1, \dots, K_H)$ | $(B, N, C)$ |
#
# `mkviz.ManifoldKey(in_dim, key_dim, variant, num_charts)` is that path as a module.
# `key.chart_keys(x)` returns every chart's key, $(B, H, N, C)$; `key(x)` returns the fused
# key, $(B, N, C)$. Let us look at its parameters.

# %%
key = mkviz.ManifoldKey(C, C, variant="vanillak", num_charts=H).to(DEVICE)
print(key)
for name, p in key.named_parameters():
    print(f"  {name:<20} {str(tuple(p.shape)):<18} {p.numel():>8,d} parameters")
print(f"total {mkviz.count_params(key):,d} vs the plain key rows of qkv: C·C + C = {C * C + C:,d}")

# %% [markdown]
# **The chart maps are one grouped convolution.** $H$ independent $C\times C$ maps
# $\varphi_1..\varphi_H$ are stored as *one* `Conv1d(H·C, H·C, kernel_size=k, groups=H)`: the
# channels are split into $H$ groups of $C$, and group $c$ only sees group $c$. Its weight
# has shape $(H\cdot C,\, C,\, k)$: row block $c$ is $\varphi_c$. With $k = 1$ (the default)
# the convolution acts on each token separately; with $k>1$ it slides along the token
# sequence and each chart's key also mixes neighbouring tokens (an option kept for readings
# of the paper in which "1D convolution" means exactly that).
#
# The model starts from ordinary random initialisation here (s = 1, $\varphi_c$ = identity +
# small noise). To make the charts visibly different, we draw the scales at random. Then we
# recompute steps 1–3 by hand and compare with `key.chart_keys(x)`.

# %%
with torch.no_grad():
    key.scale.uniform_(0.5, 1.5)  # pretend training moved the charts apart

K0 = key.base(x)  # 1. base key, (B, N, C)
# 2. expansion, (B, 1, N, C) * (1, H, 1, C) -> (B, H, N, C)
Kc = K0.unsqueeze(1) * key.scale.view(1, H, 1, C)
# 3. (H·C, C, 1) -> (H, C_out, C_in): one matrix per chart
phi = key.chart_maps.weight.view(H, C, C)
Kc = torch.einsum("hoi,bhni->bhno", phi, Kc)  #    K_c ← φ_c K_c, (B, H, N, C)
Kc = Kc + key.chart_maps.bias.view(1, H, 1, C)  #    plus each chart's bias, (B, H, N, C)

charts = key.chart_keys(x)  # mkviz, (B, H, N, C)
print("chart_keys:", tuple(charts.shape), " fused key:", tuple(key(x).shape))
diff = (charts - Kc).abs().max().item()
print(f"max |by hand - key.chart_keys(x)| = {diff:.2e}")
assert diff < 1e-5

# %% [markdown]
# ### ✎ Exercise 1.1 — count the parameters of a VanillaK key
#
# The cell above printed each parameter of `key` and its shape. Write the total as a **formula** in the width
# $C$ and the number of charts $H$ (a VanillaK key with `in_dim = key_dim = C`, kernel size 1). The check
# evaluates your function at the notebook's $C, H$ and at three other sizes, against `mkviz.count_params`.

# %%
# ✎ exercise 01.vanillak-params
def vanillak_params(C: int, H: int) -> int:
    """Parameters of mkviz.ManifoldKey(C, C, variant="vanillak", num_charts=H)."""
    return None  # your code: a formula in C and H


# %%
check("01.vanillak-params", vanillak_params, C=C, H=H)

# %% [markdown]
# ## 4. Four ways to fuse the charts
#
# The paper names four fusion variants and describes each in a phrase. Here is each as the
# reconstruction writes it, the equation next to the `mkviz` call that computes it, and a
# two-line check against the charts. Notation: $K_c \in \mathbb{R}^{N\times C}$ is chart
# $c$'s key for one image, $n$ indexes tokens.
#
# ### VanillaK — "averages the charts"
#
# $$K = \frac1H \sum_{c=1}^H K_c .$$

# %%
def fusion_check(variant: str) -> mkviz.ManifoldKey:
    """A ManifoldKey of the given variant with randomised scales (so its charts differ)."""
    torch.manual_seed(SEED)
    key = mkviz.ManifoldKey(C, C, variant=variant, num_charts=H).to(DEVICE)
    with torch.no_grad():
        key.scale.uniform_(0.5, 1.5)
    return key


vanilla = fusion_check("vanillak")
charts = vanilla.chart_keys(x)                               # (B, H, N, C)
fused = vanilla(x)                                           # (B, N, C)
diff = (fused - charts.mean(dim=1)).abs().max().item()
print(f"VanillaK: max |key(x) - mean_c K_c| = {diff:.2e}")
assert diff < 1e-5

# %% [markdown]
# ### SimpleK — "standard 1D convolution"
#
# A dense, learned fusion: a standard (ungrouped) `Conv1d(H·C → C, kernel 1)` over the stacked
# charts, i.e. one matrix $W_f \in \mathbb{R}^{C\times HC}$ applied to every token:
#
# $$K_n = W_f \,[K_{1,n}; \dots; K_{H,n}] + b_f .$$
#
# It is initialised to the mean ($W_f = \frac1H[I \cdots I]$) plus noise, so it starts near
# VanillaK and can learn to weight the charts' channels differently.

# %%
simple = fusion_check("simplek")
charts = simple.chart_keys(x)  # (B, H, N, C)
# (B, N, H, C) -> (B, N, H·C): chart c in channels c·C..c·C+C-1
stacked = charts.permute(0, 2, 1, 3).reshape(B, N, H * C)
W_f = simple.fusion.weight.squeeze(-1)  # (C, H·C, 1) -> (C, H·C)
by_hand = stacked @ W_f.T + simple.fusion.bias  # (B, N, C)
diff = (simple(x) - by_hand).abs().max().item()
print(
    f"SimpleK: fusion weight {tuple(simple.fusion.weight.shape)}, max |key(x) - W_f [K_1;…;K_H]| "
    f"= {diff:.2e}"
)
assert diff < 1e-5

# %% [markdown]
# ### SpatialK — "reshapes the linear layer"
#
# Steps 1–3 are replaced by **one wide linear layer** $W \in \mathbb{R}^{HC\times C}$ whose
# output is reshaped into $H$ charts: each chart is its own projection of the tokens, scaled
# by $s_c$; fusion is the mean.
#
# $$[\tilde K_1, \dots, \tilde K_H] = X W^\top + b, \qquad K_c = s_c \odot \tilde K_c, \qquad K = \frac1H\sum_c K_c .$$

# %%
spatial = fusion_check("spatialk")
W = spatial.chart_maps.weight.squeeze(-1)  # (H·C, C, 1) -> (H·C, C): the wide layer
wide = x @ W.T + spatial.chart_maps.bias  # (B, N, H·C)
Kc = wide.view(B, N, H, C).permute(0, 2, 1, 3)  # (B, N, H, C) -> (B, H, N, C)
Kc = Kc * spatial.scale.view(1, H, 1, C)  # K_c = s_c ⊙ K̃_c, (B, H, N, C)
print("SpatialK has no base key:", spatial.base is None, "| wide layer", tuple(W.shape))
diff = max(
    (spatial.chart_keys(x) - Kc).abs().max().item(), (spatial(x) - Kc.mean(1)).abs().max().item()
)
print(f"SpatialK: max |mkviz - by hand| = {diff:.2e}")
assert diff < 1e-5

# %% [markdown]
# ### ✎ Exercise 1.2 — SpatialK in one matmul
#
# SpatialK's charts are $K_c = s_c \odot (X W_c^\top + b_c)$ and its key is their mean. The mean of linear
# maps is a linear map: implement the fused key as **one** matrix product of `x` with an effective
# $C\times C$ weight, plus an effective bias, built from `spatial.chart_maps.weight`, `spatial.chart_maps.bias`
# and `spatial.scale` (do not call `spatial(x)` or `spatial.chart_keys`). This is the algebra behind
# notebook 02's folding and fast path.

# %%
# ✎ exercise 01.spatialk-one-matmul
answer = None  # your code: the fused key (B, N, C) as x @ W_eff.T + b_eff

# %%
check("01.spatialk-one-matmul", answer, key=spatial, x=x)

# %% [markdown]
# ### KUA — key + unbalanced atlas: "captures spatial interactions among charts"
#
# Each token $n$ gets a **membership** distribution over charts, computed from the token
# itself, and its key is the membership-weighted sum of its chart keys:
#
# $$p(c \mid n) = \operatorname{softmax}_c\big(X W_m^\top + b_m\big)_{n}, \qquad
#   K_n = \sum_{c=1}^H p(c\mid n)\, K_{c,n} .$$
#
# Different tokens can lean on different charts, which is the "atlas" reading: each chart
# covers part of the token space. DIM-UA's *unbalanced* regulariser,
# $-\lambda \cdot \operatorname{mean}_n \sum_c \big(p(c\mid n) - \tfrac1H\big)^2$
# (`ua_weight=λ`, read with `mkviz.unbalanced_atlas_loss(model)`), pushes memberships away
# from uniform. Below, the softmax is also computed by hand (exponentiate, normalise) to
# compare with `key.membership_probs(x)`.

# %%
kua = fusion_check("kua")
with torch.no_grad():
    kua.membership.weight.normal_(0, C**-0.5)  # non-uniform memberships (random, for the demo)
m_logits = x @ kua.membership.weight.T + kua.membership.bias  # (B, N, H)
p = m_logits.exp() / m_logits.exp().sum(-1, keepdim=True)  # softmax over charts, (B, N, H)
charts = kua.chart_keys(x)  # (B, H, N, C)
by_hand = torch.einsum("bnh,bhnc->bnc", p, charts)  # Σ_c p(c|n) K_{c,n}, (B, N, C)
diff = max((kua.membership_probs(x) - p).abs().max().item(), (kua(x) - by_hand).abs().max().item())
print(f"KUA: membership {tuple(p.shape)}, e.g. token 0: {[round(v, 3) for v in p[0, 0].tolist()]}")
print(f"KUA: max |mkviz - by hand| = {diff:.2e}")
assert diff < 1e-5

# %% [markdown]
# ### What each variant costs
#
# Per attention block, the plain key is $C^2 + C$ parameters. The charts add roughly
# $H C^2$ (VanillaK, KUA), $2HC^2$ (SimpleK: chart maps *and* a dense fusion) or $(H-1)C^2$
# (SpatialK: its wide layer replaces the base key). Notebook 02 measures parameters and FLOPs
# on whole timm models.

# %%
plain = C * C + C
print(f"{'variant':<9} {'parameters':>11} {'× plain key':>12}")
for variant in mkviz.VARIANTS:
    n = mkviz.count_params(mkviz.ManifoldKey(C, C, variant=variant, num_charts=H))
    print(f"{variant:<9} {n:>11,d} {n / plain:>12.2f}")

# %% [markdown]
# ## 5. VanillaK's attention is a geometric mean of the charts' attention
#
# Each chart defines its own attention map, as if it were the only key:
#
# $$A_c = \operatorname{softmax}\!\Big(\frac{Q K_c^\top}{\sqrt d}\Big), \qquad
#   \ell_c = \frac{Q K_c^\top}{\sqrt d} \text{ (the chart's logits).}$$
#
# **Derivation.** For VanillaK, $K = \frac1H\sum_c K_c$. The logits are linear in the key, so
# the fused logits are the mean of the chart logits:
#
# $$\ell = \frac{Q K^\top}{\sqrt d} = \frac1H \sum_c \frac{Q K_c^\top}{\sqrt d} = \frac1H\sum_c \ell_c .$$
#
# Write each chart's softmax with its row normaliser
# $Z_{c,i} = \sum_j e^{\ell_{c,ij}}$, so $e^{\ell_{c,ij}} = Z_{c,i}\, A_{c,ij}$. Then, for a
# query $i$ and key $j$,
#
# $$A_{ij} = \frac{e^{\ell_{ij}}}{\sum_{j'} e^{\ell_{ij'}}}
#   = \frac{\prod_c \big(e^{\ell_{c,ij}}\big)^{1/H}}{\sum_{j'} \prod_c \big(e^{\ell_{c,ij'}}\big)^{1/H}}
#   = \frac{\prod_c Z_{c,i}^{1/H}\, \prod_c A_{c,ij}^{1/H}}{\prod_c Z_{c,i}^{1/H}\, \sum_{j'} \prod_c A_{c,ij'}^{1/H}}
#   = \frac{\prod_c A_{c,ij}^{1/H}}{\sum_{j'} \prod_c A_{c,ij'}^{1/H}} .$$
#
# The normalisers $Z_{c,i}$ depend on the query row only, so they cancel: **the fused attention
# is the row-normalised geometric mean of the charts' attention maps**, $A \propto \prod_c A_c^{1/H}$.
# A key token gets high fused attention only if *all* charts agree it deserves attention (one
# chart giving it near-zero attention vetoes it); an arithmetic mean of the maps would not do
# that.
#
# The same argument holds for any fusion that *averages* the chart keys, so it also holds for
# SpatialK. It does not hold for SimpleK (its dense fusion mixes channels across charts) nor
# exactly for KUA (the weights $p(c\mid j)$ depend on the key token $j$, so the normalisers
# no longer cancel). It also needs the attention to have no `k_norm` (timm's default).
#
# **Numerical check.** We build a manifold-key attention block, `mkviz.ManifoldAttention`
# (a drop-in for timm's `Attention`: same constructor arguments plus `variant` and
# `num_charts`), and record what it computes with `mkviz.record_attention`, a context manager
# that, for every attention layer of a model, keeps the fused attention the model actually
# used, the queries, the chart keys and the per-chart maps $A_c$ (notebook 04 uses it on whole
# models). While recording, the module takes its eager path (softmax written out) instead of
# `F.scaled_dot_product_attention`. The weights are drawn larger than timm's initialisation so
# that the maps are far from uniform, and the scales at random so that the charts disagree.

# %%
torch.manual_seed(SEED)
mk_attn = (
    mkviz.ManifoldAttention(C, num_heads=HEADS, qkv_bias=True, variant="vanillak", num_charts=H)
    .to(DEVICE)
    .eval()
)
with torch.no_grad():
    mk_attn.qv.weight.normal_(0, 1.5 * C**-0.5)  # sharper attention than a fresh init
    mk_attn.key.base.weight.normal_(0, 1.5 * C**-0.5)
    mk_attn.key.scale.uniform_(0.0, 2.0)  # charts that disagree
    mk_attn.key.chart_maps.weight.add_(
        0.5 * C**-0.5 * torch.randn_like(mk_attn.key.chart_maps.weight)
    )

with torch.no_grad(), mkviz.record_attention(mk_attn) as rec:
    y = mk_attn(x)  # (B, N, C)
layer = rec.layers[0]  # "" : the recorded module is the model itself
A_fused = rec.attention[layer]  # (B, heads, N, N): what the model used
print(
    {
        name: tuple(t[layer].shape)
        for name, t in (
            ("attention", rec.attention),
            ("queries", rec.queries),
            ("chart_keys", rec.chart_keys),
            ("chart_attention", rec.chart_attention),
        )
    }
)

# %% [markdown]
# Per-chart attention by hand, to see what `rec.chart_attention` holds: split each chart key
# into heads, take the logits against the recorded queries, softmax. Then the row-normalised
# geometric mean (in float64, so the product of $H$ small probabilities cannot underflow).

# %%
with torch.no_grad():
    charts = mk_attn.key.chart_keys(x)  # (B, H, N, C)
    # (B, H, N, heads, d) -> (B, H, heads, N, d)
    k_c = charts.view(B, H, N, HEADS, D).transpose(2, 3)
    q = rec.queries[layer].unsqueeze(1)  # (B, heads, N, d) -> (B, 1, heads, N, d)
    logits_c = (q @ k_c.transpose(-2, -1)) * mk_attn.scale  # (B, H, heads, N, N)
    A_c = logits_c.softmax(dim=-1)  # per-chart attention, (B, H, heads, N, N)

    geo = A_c.double().prod(dim=1) ** (1 / H)  # Π_c A_c^{1/H}, (B, heads, N, N)
    geo = geo / geo.sum(dim=-1, keepdim=True)  # row-normalised
    arith = A_c.mean(dim=1)  # the arithmetic mean, for contrast

chart_diff = (A_c - rec.chart_attention[layer]).abs().max().item()
geo_diff = (geo - A_fused.double()).abs().max().item()
arith_diff = (arith - A_fused).abs().max().item()
row_err = max((A_fused.sum(-1) - 1).abs().max().item(), (A_c.sum(-1) - 1).abs().max().item())
print(f"max |A_c by hand - rec.chart_attention| = {chart_diff:.2e}")
print(f"rows sum to 1 (fused and per chart): max error {row_err:.1e}")
print(f"max |geometric mean - fused|  = {geo_diff:.2e}")
print(f"max |arithmetic mean - fused| = {arith_diff:.2e}   (not the identity)")
assert chart_diff < 1e-5 and row_err < 1e-5
assert geo_diff < 1e-5
assert arith_diff > 10 * geo_diff

# %% [markdown]
# One query's attention row makes the veto effect visible: the fused row (black) is high only
# where every chart's row is high. The heat maps show the full $N\times N$ maps of head 0 for
# three charts, the fused map and the geometric mean (identical to the fused map).

# %%
query = 0  # the cls token's row
fig = go.Figure()
for c in range(H):
    fig.add_trace(
        go.Scatter(y=A_c[0, c, 0, query].cpu(), name=f"chart {c}", line=dict(width=1), opacity=0.6)
    )
fig.add_trace(
    go.Scatter(y=arith[0, 0, query].cpu(), name="arithmetic mean", line=dict(width=2, dash="dot"))
)
fig.add_trace(
    go.Scatter(
        y=A_fused[0, 0, query].cpu(), name="fused (VanillaK)", line=dict(width=3, color="black")
    )
)
fig.update_layout(
    title=f"attention of query {query} (head 0) over the {N} key tokens",
    xaxis_title="key token",
    yaxis_title="attention",
    height=380,
    width=820,
)
fig.show()

shown = min(H, 3)
titles = [f"chart {c}" for c in range(shown)] + ["fused", "geometric mean"]
fig = make_subplots(rows=1, cols=shown + 2, subplot_titles=titles, horizontal_spacing=0.02)
maps = [A_c[0, c, 0] for c in range(shown)] + [A_fused[0, 0], geo[0, 0].float()]
for i, a in enumerate(maps):
    fig.add_trace(go.Heatmap(z=a.cpu(), coloraxis="coloraxis"), 1, i + 1)
    fig.update_yaxes(autorange="reversed", showticklabels=i == 0, row=1, col=i + 1)
fig.update_layout(
    coloraxis=dict(colorscale="Viridis"),
    height=300,
    width=1000,
    title="attention maps (head 0; rows = queries, columns = keys)",
)
fig.show()

# %% [markdown]
# ## Summary
#
# - A ViT block makes $Q$, $K$, $V$ with one shared map. The manifold key gives $K$ its own
#   path: base key → $H$ scaled charts → one linear map per chart (a grouped `Conv1d`) → fusion.
# - `mkviz.ManifoldKey` holds that path: `key.chart_keys(x)` gives the charts $(B, H, N, C)$,
#   `key(x)` the fused key $(B, N, C)$; `mkviz.ManifoldAttention` puts it in a timm-shaped block,
#   and `mkviz.record_attention` records its fused and per-chart attention maps.
# - Four fusions: VanillaK (mean), SimpleK (dense learned fusion), SpatialK (one wide layer
#   split into charts, mean), KUA (per-token softmax membership over charts).
# - For VanillaK (and SpatialK) the fused attention is the row-normalised geometric mean of the
#   charts' attention maps, checked above to float precision.
# - All of this is this project's reconstruction of the paper's description, not the authors' code.
#
# **Next, 02:** the four variants on a whole timm ViT: their cost, a conversion that leaves a
# (pretrained) model's outputs unchanged, folding back to a plain ViT for inference, and why
# at kernel size 1 three of the variants are a *re-parameterisation* of an ordinary ViT.
