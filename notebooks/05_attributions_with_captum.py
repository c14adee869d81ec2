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
# # 05 — Attributions with captum
#
# *Part 5 of 8 of the `mkviz` course.* 01 the math of charts and the manifold key ·
# 02 the four variants side by side · 03 fine-tuning · 04 what each chart attends to ·
# 05 attributions · 06 chart count and chart similarity · 07 relevance, faithfulness and the key atlas ·
# 08 beyond classification.
#
# Attention maps (notebook 04) say where a query *looks*; they do not say what the prediction
# *depends on*. Attributions do: they distribute the class score over the inputs of a chosen
# stage. This notebook compares the **baseline** and the **VanillaK-8** checkpoints on the same
# Fashion-MNIST test images with two methods, both through captum (`mkviz.attribution`):
#
# 1. **integrated gradients on the pixels** (`mkviz.integrated_gradients`), with a check of its
#    *completeness* axiom: the attributions sum to $f(x) - f(x')$;
# 2. **attention attribution** (`mkviz.attention_attribution`, AttAttr, Hao et al. 2021):
#    integrated gradients on the last layer's attention matrix, the image held fixed;
# 3. for both, how much of the attribution lands on the **article** (the garment's silhouette)
#    compared with the share of the image it covers, and why that is not a test of "looking at the
#    evidence".
#
# **Data: Fashion-MNIST** (Zalando Research; Xiao, Rasul and Vollgraf 2017): 28×28 grey images of
# articles of clothing in 10 classes, read from Debian's package `dataset-fashion-mnist`
# (`/usr/share/datasets/fashion-mnist`) by `mkviz.data.FashionMNISTDataset`. We use the **official
# split**: the images here come from the 10,000-image test set, which no model trained on.
#
# **The models** are the shipped checkpoints `data/checkpoints/fashion-mnist/baseline` and
# `.../vanillak-8`, trained from scratch by `make checkpoints` with the same `mkviz train` command
# (only `--variant` differs; `data/README.md`): a tiny ViT of **4 blocks of width 64** (4 heads) on
# the 28-px images replicated to 3 channels, cut into **7×7 patches of 4 px** plus a class token.
#
# > **What comes from the paper, and what is ours.** The paper's exact layer equations and tables
# > are *not available* to this project; `mkviz` implements a documented **reconstruction**
# > ([`docs/design.md`](../docs/design.md) §2, notebook 01). The models are ours (`data/README.md`); nothing
# > here is a number from the paper.

# %% [markdown]
# ## Before you start
#
# **Learning objectives.** After this notebook you can
#
# - compute integrated gradients on the pixels with `mkviz.integrated_gradients` and check its completeness
#   axiom, choosing enough integration steps;
# - compute attention attribution (AttAttr) on a layer's attention matrix with `mkviz.attention_attribution`;
# - compare what a baseline ViT and a manifold-key ViT depend on, on the same images;
# - measure the share of attribution on the article against chance, and say what it does and does not show.
#
# **Prerequisites.** Notebook 04 (the models, the data, the evidence mask); gradients and the chain rule;
# a numerical integral as a sum over points.
#
# **Time to complete.**
#
# | | |
# |---|---|
# | reading and the code | about 20 min |
# | the 2 exercises (✎) | about 10 min |
# | Run All at the default scale (10 images), 2-core CPU | 1 min 4 s (measured 2026-12-04: one torch thread, 2 cores shared with two training runs) |
# | Run All, `MKVIZ_SMALL=1` | 1 min (measured, likewise) |
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
# | `MKVIZ_SMALL` | `0` | `1`: 4 test images instead of 10 (what the test suite uses; well under a minute) |
# | `MKVIZ_DEVICE` | `cpu` | e.g. `cuda` to run on a GPU |
# | `MKVIZ_SEED` | `0` | torch's global seed (the images are the official test set's) |
# | `MKVIZ_ROOT` | found | the repository root (holding `data/checkpoints`); by default the first folder upwards from here with a `pyproject.toml` |
#
# Nothing is downloaded: the checkpoints ship with the repository and Fashion-MNIST comes from the
# Debian package. Nothing is trained either.

# %%
import os

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

import mkviz
from mkviz import metrics
from mkviz.checkpoint import shipped_checkpoints_dir
from mkviz.data import build_dataset
from mkviz.maps import patch_grid
from mkviz.shipped import checkpoint_dir
from mkviz.checkpoint import load_checkpoint
from mkviz.exercises import check

SMALL = os.environ.get("MKVIZ_SMALL", "0") == "1"
DEVICE = torch.device(os.environ.get("MKVIZ_DEVICE", "cpu"))
SEED = int(os.environ.get("MKVIZ_SEED", "0"))

# data/checkpoints of this repository (MKVIZ_ROOT overrides)
CHECKPOINTS = (shipped_checkpoints_dir())
if (
    SMALL
    # a few images (of different classes); the same number of integration steps (completeness needs
    # them)
):
    N_IMAGES, N_SHOW = 4, 2
else:  # one image per class
    N_IMAGES, N_SHOW = 10, 4
# a 0.2 M-parameter model gains little from threads; on a shared CPU they hurt
torch.set_num_threads(1)
N_STEPS = 512  # integration steps of integrated gradients (section 2 shows why so many)
torch.manual_seed(SEED)
print(
    f"mkviz {mkviz.__version__}, torch {torch.__version__}, device {DEVICE}, checkpoints in "
    f"{CHECKPOINTS}"
)

# %% [markdown]
# ## 1. Two models, the same images
#
# Both checkpoints were trained by the same `mkviz train` command; only `--variant` differs. The
# images come from the official **test** set (never trained on): the first test image of each
# class, so the rows below show different garments. `build_dataset(..., model=...)` replicates the
# grey images to 3 channels and normalises them with the model's own timm data config
# (Fashion-MNIST's mean and std), as in training. Each image comes with its evidence mask, which for
# Fashion-MNIST is the article's silhouette (pixels brighter than 25 % grey). We attribute the score
# of the **true** class.

# %%
models, configs = {}, {}
for name in ("baseline", "vanillak-8"):
    models[name], configs[name] = load_checkpoint(
        checkpoint_dir("fashion-mnist", name), map_location=DEVICE
    )
# all 10,000 test images
test = build_dataset("fashion-mnist", split="test", model=models["baseline"])
first_of_class = {}
for i, label in enumerate(test.labels.tolist()):
    first_of_class.setdefault(label, i)
indices = [first_of_class[c] for c in sorted(first_of_class)][
    :N_IMAGES
]  # test indices, one per class
batch = test.batch(indices)  # image (B, 3, 28, 28), label (B,), evidence_mask (B, 28, 28)
x, y = batch.image.to(DEVICE), batch.label.to(DEVICE)
pixels = test.images_uint8(indices)  # (B, 3, 28, 28) uint8, for display
G = patch_grid(models["baseline"]).grid_size  # (7, 7) patches of 4 px
print("test images:", [(i, test.class_names[int(c)]) for i, c in zip(indices, batch.label)])
for name, m in models.items():
    with torch.no_grad():
        pred = m(x).argmax(-1)
    print(
        f"{name:<11} {type(m.blocks[0].attn).__name__:<18} correct on "
        f"{int((pred == y).sum())}/{N_IMAGES} images "
        f"(test accuracy {configs[name]['metrics']['test']['acc']:.4f} on all 10,000, from "
        "config.json)"
    )

# %% [markdown]
# ## 2. Integrated gradients on the pixels, and completeness
#
# For an input $x$, a baseline input $x'$ and the class score $f$, integrated gradients gives
# pixel $i$ the attribution
#
# $$\mathrm{IG}_i(x) = (x_i - x'_i) \int_0^1 \frac{\partial f\big(x' + \alpha(x - x')\big)}{\partial x_i}\, d\alpha ,$$
#
# and by the fundamental theorem of calculus the attributions add up to the score difference,
# $\sum_i \mathrm{IG}_i = f(x) - f(x')$ (**completeness**). The integral is computed with a
# quadrature rule (Gauss-Legendre, `n_steps` points), so the sum matches only as well as the
# quadrature does. Our baseline is the zero input, i.e. a uniform grey image after
# normalisation (the dataset's mean grey, 0.286, on every pixel, background included). captum returns the per-image error, `delta` $= \sum_i \mathrm{IG}_i - (f(x) - f(x'))$.

# %%
def score_gap(m, x=x, y=y):
    """f(x) - f(x') for the true class, with x' = 0 (B,)."""
    with torch.no_grad():
        return (m(x) - m(torch.zeros_like(x))).gather(1, y[:, None])[:, 0]


xs, ys = x[:N_SHOW], y[:N_SHOW]  # the table uses the first few images
print(f"{'model':<11} {'n_steps':>7} {'max |delta|':>12} {'max |delta| / |f(x) - f(x′)|':>30}")
for name, m in models.items():
    gap = score_gap(m, xs, ys)
    for n in (32, 128, N_STEPS):
        _, delta = mkviz.integrated_gradients(m, xs, ys, n_steps=n, return_convergence_delta=True)
        print(
            f"{name:<11} {n:>7} {delta.abs().max().item():>12.2e} "
            f"{(delta.abs() / gap.abs()).max().item():>30.2e}"
        )

# %% [markdown]
# A small ViT's score can change steeply along the path from grey to the image, so a few dozen
# points may not be enough; the table shows how the error shrinks as the points increase. We
# keep the 512-point attributions and check completeness directly: the sum over the pixels (and
# channels) against the score difference.

# %%
ig = {}
for name, m in models.items():
    attr, delta = mkviz.integrated_gradients(
        m, x, y, n_steps=N_STEPS, return_convergence_delta=True
    )
    ig[name] = attr.detach()  # (B, 3, 28, 28)
    total, gap = attr.sum(dim=(1, 2, 3)), score_gap(m)  # (B,), (B,)
    err = ((total - gap).abs() / gap.abs().clamp_min(1.0)).max().item()
    print(
        f"{name:<11} Σ IG: {[round(v, 3) for v in total.tolist()[:4]]}  f(x) − f(x′): "
        f"{[round(v, 3) for v in gap.tolist()[:4]]}  max relative error {err:.1e}"
    )
    assert err < 1e-2, name

# %% [markdown]
# ## 3. Attention attribution
#
# Integrated gradients can also run on an intermediate tensor. `mkviz.attention_attribution`
# integrates along a straight path from a baseline **attention matrix** $A'$ (zeros, as in AttAttr)
# to the attention $A$ the model computed in one layer, with the image and every other layer
# fixed: $\mathrm{Attr} = (A - A') \odot \int_0^1 \partial f(A' + \alpha(A - A'))/\partial A\,d\alpha$.
# It works the same way on the plain timm baseline and on the manifold-key model: both end in a
# softmax attention matrix of shape (B, heads, N, N). We take the last layer and the class
# token's row (what the classifier reads), summed over heads (absolute values) and laid on the
# 7×7 patch grid. Completeness holds here too, against $f(x; A) - f(x; A')$.

# %%
attn_attr = {}
for name, m in models.items():
    a, delta = mkviz.attention_attribution(
        m, x, y, layer=-1, n_steps=64, return_convergence_delta=True
    )
    cls_row = a[:, :, 0, 1:].abs().sum(1)  # cls query -> 49 patches, heads summed: (B, 49)
    attn_attr[name] = cls_row.reshape(-1, *G).detach()  # (B, 49) -> (B, 7, 7) on the patch grid
    print(
        f"{name:<11} attribution {tuple(a.shape)}, max |completeness error| "
        f"{delta.abs().max().item():.1e}"
    )
    assert delta.abs().max().item() < 1e-3

# %% [markdown]
# ## 4. Side by side
#
# One row per image: the image with its label, then the magnitude of the pixel attributions
# (summed over colour channels) of each model, then each model's attention attribution on the
# patch grid. Each panel has its own colour range: the pictures compare *where*, not *how much*.

# %%
def heat(z):
    return go.Heatmap(
        z=z, colorscale="Inferno", showscale=False, hovertemplate="%{z:.3g}<extra></extra>"
    )


cols = [
    "image",
    "IG pixels: baseline",
    "IG pixels: VanillaK-8",
    "attention attr.: baseline",
    "attention attr.: VanillaK-8",
]
fig = make_subplots(
    rows=N_SHOW,
    cols=5,
    horizontal_spacing=0.02,
    vertical_spacing=0.04,
    subplot_titles=[c if r == 0 else "" for r in range(N_SHOW) for c in cols],
)
for r in range(N_SHOW):
    # (3, H, W) -> (H, W, 3)
    fig.add_trace(go.Image(z=pixels[r].permute(1, 2, 0).numpy()), r + 1, 1)
    fig.update_yaxes(title_text=test.class_names[int(y[r])], row=r + 1, col=1)
    for c, name in enumerate(models):
        # (3, H, W) -> (H, W)
        fig.add_trace(heat(ig[name][r].abs().sum(0).cpu().numpy()), r + 1, c + 2)
        fig.add_trace(heat(attn_attr[name][r].cpu().numpy()), r + 1, c + 4)
fig.update_xaxes(showticklabels=False)
fig.update_yaxes(showticklabels=False, autorange="reversed", scaleanchor="x", scaleratio=1)
fig.update_layout(
    height=230 * N_SHOW + 60,
    width=1050,
    margin=dict(l=60, r=10, t=40, b=10),
    title="what the true-class score depends on",
)
fig.show()

# %% [markdown]
# ### ✎ Exercise 5.1 — read an attribution map
#
# In the figure above, first row, last column (VanillaK-8's attention attribution for the first image): on which
# patch is the attribution largest? Write it as `(row, col)` on the 7×7 grid, rows from the top, columns from
# the left, both from 0.

# %%
# ✎ exercise 05.read-attribution
answer = None  # your code: (row, col), read off the figure

# %%
check("05.read-attribution", answer, attribution=attn_attr["vanillak-8"][0])

# %% [markdown]
# ## 5. How much of the attribution lands on the article?
#
# For pixels: the share of $\sum |\mathrm{IG}|$ inside the silhouette, against the share of
# pixels inside it (**chance**: attributions spread uniformly). For attention attribution: the
# share on the patches weighted by how much of each patch the silhouette covers
# (`metrics.patch_coverage`), against the mean coverage.
#
# **The silhouette is not class evidence.** On a task whose label depends on a few marked objects
# the mask says where the answer is; here it only says where the garment is. What tells a trouser
# from a dress or a sandal from a sneaker is largely the *outline*: the gap between the legs, the
# space between straps, the missing sleeves are background pixels. And the integrated-gradients
# baseline is a uniform grey, so background pixels (black) differ from it as much as the garment
# does, and can earn attribution. A share above chance says the score depends on the garment's
# pixels more than on the frame's; a share below it says the model reads the frame around the
# garment; neither says the model is right or wrong.

# %%
mask = batch.evidence_mask.to(DEVICE).float()  # (B, 28, 28)
coverage = metrics.patch_coverage(mask, G)  # (B, 49)
pixel_chance, patch_chance = mask.mean().item(), coverage.mean().item()
print(
    f"{'model':<11} {'IG on article':>14} {'chance':>7} {'attention attr. on article':>27} "
    f"{'chance':>7}"
)
shares = {}
for name in models:
    mag = ig[name].abs().sum(1)  # (B, 28, 28)
    pix = ((mag * mask).sum((1, 2)) / mag.sum((1, 2))).mean().item()
    att = attn_attr[name].flatten(1)  # (B, 7, 7) -> (B, 49)
    pat = ((att * coverage).sum(1) / att.sum(1)).mean().item()
    shares[name] = (pix, pat)
    print(f"{name:<11} {pix:>14.3f} {pixel_chance:>7.3f} {pat:>27.3f} {patch_chance:>7.3f}")
for name, (pix, pat) in shares.items():
    assert 0.0 <= pix <= 1.0 and 0.0 <= pat <= 1.0, name  # shares of a non-negative total

# %% [markdown]
# ### ✎ Exercise 5.2 — one image's share
#
# The table averages over images. For the **first image only** and the **baseline** model, compute the share of
# the pixel attributions' magnitude (summed over the colour channels) that falls inside the silhouette,
# from `ig["baseline"]` (B, 3, 28, 28) and `mask` (B, 28, 28). Is it above or below that image's chance
# (`mask[0].mean()`)?

# %%
# ✎ exercise 05.pixel-share
answer = None  # your code: a float in [0, 1]

# %%
check("05.pixel-share", answer, attribution=ig["baseline"][0], mask=mask[0])

# %% [markdown]
# Read the two columns against their chance lines, and look at the pictures of section 4 next to
# them: where on the garment (collar, sleeves, soles, the gap between legs) the pixel attributions
# gather says more than one share. The attention attribution of the last layer is a looser
# picture: by the last layer the tokens have mixed information from each other for three blocks,
# so "the patch a token came from" is only a proxy for "what the token carries".
#
# The two models' pictures look alike, and their shares differ by little. That matches what we
# know: the VanillaK model is a re-parameterisation of the baseline's function class (notebook 02),
# both were trained by the same recipe, and a few images are far too few to rank them.
# Attributions are a way to *look*; comparing models needs the accuracy of notebook 06 and more
# seeds.
#
# ## Summary
#
# - `mkviz.integrated_gradients` (pixels) and `mkviz.attention_attribution` (an attention matrix)
#   work the same on a plain timm ViT and on a manifold-key model.
# - Completeness holds once the path integral is computed finely enough (here 512 points).
# - On Fashion-MNIST the evidence mask is the garment's silhouette, which covers a large part of
#   the image; how much attribution lands on it is measured against that share, and it is a
#   description of what the score depends on, not a test: the class also lives in the outline,
#   which background pixels show.
#
# **Next, 06:** how many charts? The same model family with 1 to 16 charts, side by side.

# %% [markdown]
# **See also, 07:** class relevance (attention weighted by its gradient), deletion and insertion
# curves that rank these maps by faithfulness, and the key atlas
# (`07_relevance_faithfulness_and_the_key_atlas`).
