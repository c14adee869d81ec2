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
# # 07 — Relevance, faithfulness and the key atlas
#
# *Part 7 of 8 of the `mkviz` course.* 01 the math of charts and the manifold key ·
# 02 the four variants side by side · 03 fine-tuning · 04 what each chart attends to ·
# 05 attributions · 06 chart count and chart similarity · 07 relevance, faithfulness and the key atlas ·
# 08 beyond classification.
#
# Notebook 04 showed where each chart's
# attention *looks*; notebook 05 what the score *depends on* through captum. This notebook goes
# one step further and asks four questions:
#
# 1. **Which patches made the model predict this class?** Class relevance (Chefer, Gur and Wolf,
#    ICCV 2021), `mkviz.class_relevance`: attention weighted by its gradient, rolled through the
#    blocks; and a relevance per chart.
# 2. **Which map should we believe?** The deletion and insertion curves, `mkviz.deletion_insertion`:
#    remove the patches a map ranks first and watch the class probability. We rank the fused
#    attention, every chart's map, rollout, class relevance, integrated gradients and a random
#    order, for the baseline and each variant.
# 3. **How do we record large models?** `mkviz.record_attention(lazy=True)` keeps queries and keys
#    instead of the N × N maps and recomputes any row on request, exactly.
# 4. **What do queries and keys look like?** The key atlas, `mkviz.figures.key_atlas`: the queries
#    and every chart's keys of one image in one 2-D picture; in the explorer, a click on a point
#    makes that patch the query.
#
# **Data: Fashion-MNIST** (Zalando Research; Xiao, Rasul and Vollgraf 2017): 28×28 grey images of
# articles of clothing in 10 classes, read from Debian's package `dataset-fashion-mnist` by
# `mkviz.data`. The images here come from the official 10,000-image **test** set.
#
# **The models** are the shipped checkpoints in `data/checkpoints/fashion-mnist/` (the baseline and
# the four variants at 8 charts), trained from scratch by `make checkpoints`: a ViT of 4 blocks of
# width 64 (4 heads) on 7×7 patches of 4 px plus a class token (`data/README.md`).
#
# > **What comes from the paper, and what is ours.** The manifold key is our documented
# > **reconstruction** ([`docs/design.md`](../docs/design.md) §2); the per-chart relevance is our own
# > definition ([`docs/design.md`](../docs/design.md) §2.9). Every number here is measured on our small
# > models, not taken from the paper.

# %% [markdown]
# ## Before you start
#
# **Learning objectives.** After this notebook you can
#
# - compute class relevance (Chefer et al.) with `mkviz.class_relevance`, per image and per chart, and say how
#   it differs from raw attention and rollout;
# - check that a function-preserving conversion keeps the explanation, and predict when the per-chart
#   relevances equal the fused one;
# - run deletion and insertion curves with `mkviz.deletion_insertion`, compute their area by the trapezoid
#   rule, and rank maps by how faithful they are against a random order;
# - record attention lazily (`record_attention(lazy=True)`) and recompute any row exactly;
# - read the key atlas: queries and every chart's keys in one 2-D projection, and what a projection can and
#   cannot show.
#
# **Prerequisites.** Notebook 04 (the models, the data, `record_attention`, the chart maps) and notebook 05
# (integrated gradients); notebook 02 for `mkviz.convert` and its zero-sum perturbation. Gradients and the
# chain rule; an area under a curve as a sum of trapezoids.
#
# **Time to complete.**
#
# | | |
# |---|---|
# | reading, the code and trying the explorer | about 30 min |
# | the 2 exercises (✎) | about 10 min |
# | Run All at the default scale (32 images, 49 steps per curve), 2-core CPU | 3 min 22 s (measured 2026-12-04: one torch thread, 2 cores shared with two training runs) |
# | Run All, `MKVIZ_SMALL=1` | 30 s (measured, likewise) |
# | Run All at GPU scale (`MKVIZ_DEVICE=cuda`) | not measured (nothing is trained; no GPU here) |
#
# **Exercises** are marked ✎. Write a few lines where a cell says `None  # your code`, then run the check
# cell under it: it prints `✓ PASS`, `✗ FAIL` with what differs and a hint, or `· TODO` while the stub is
# untouched (the notebook still runs top to bottom). The solutions are in `notebooks/solutions/`.

# %% [markdown]
# ## Setup
#
# | variable | default | meaning |
# |---|---|---|
# | `MKVIZ_SMALL` | `0` | `1`: 4 test images and coarse curves instead of 32 images and one patch per step (what the test suite uses) |
# | `MKVIZ_DEVICE` | `cpu` | e.g. `cuda` to run on a GPU |
# | `MKVIZ_SEED` | `0` | torch's global seed (the random order of section 2 has its own seed) |
# | `MKVIZ_ROOT` | found | the repository root (holding `data/checkpoints`) |
#
# Nothing is downloaded and nothing is trained.

# %%
import os

import plotly
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

import mkviz
from mkviz.checkpoint import load_checkpoint, shipped_checkpoints_dir
from mkviz.data import build_dataset
from mkviz.exercises import check
from mkviz.faithfulness import compare_saliency, faithfulness_table, saliency_maps
from mkviz.maps import patch_grid
from mkviz.shipped import MAIN_MODELS, checkpoint_dir

SMALL = os.environ.get("MKVIZ_SMALL", "0") == "1"
DEVICE = torch.device(os.environ.get("MKVIZ_DEVICE", "cpu"))
SEED = int(os.environ.get("MKVIZ_SEED", "0"))
# images ranked; points per curve (49 = one patch per step)
N_IMAGES, STEPS = ((4, 7) if SMALL else (32, 49))
# a 0.2 M-parameter model gains little from threads; on a shared CPU they hurt
torch.set_num_threads(1)
torch.manual_seed(SEED)
print(
    f"mkviz {mkviz.__version__}, torch {torch.__version__}, device {DEVICE}, "
    f"checkpoints in {shipped_checkpoints_dir()}"
)

models = {
    name: load_checkpoint(checkpoint_dir("fashion-mnist", name), map_location=DEVICE)[0]
    for name in MAIN_MODELS
}  # baseline, vanillak-8, simplek-8, spatialk-8, kua-8
test = build_dataset("fashion-mnist", split="test", model=models["baseline"])
first_of_class = {}
for i, label in enumerate(test.labels.tolist()):
    first_of_class.setdefault(label, i)
shown = [first_of_class[c] for c in (0, 1, 7, 9)]  # a T-shirt, a trouser, a sneaker, an ankle boot
batch = test.batch(shown)
x, y = batch.image.to(DEVICE), batch.label.to(DEVICE)  # (4, 3, 28, 28), (4,)
pixels = test.images_uint8(shown)  # (4, 3, 28, 28) uint8, for display
print("images:", [test.class_names[int(c)] for c in y])

# %% [markdown]
# ## 1. Class relevance
#
# Attention says where a token looks, for every class at once. Chefer et al. make it
# class-specific: in every block $l$ they weight the attention $A_l$ by the gradient of the target
# class's logit $y_t$, keep the positive part per head and average the heads,
#
# $$\bar A_l = \mathrm{mean}_h\big((\partial y_t/\partial A_l \odot A_l)^+\big),$$
#
# then roll the blocks up from the identity: $R \leftarrow R + \bar A_l R$, first block to last. The
# class token's row of $R$ over the 49 patches is the relevance. The identity stands for the
# residual connection (a token keeps its own information); the gradient weighting removes the
# attention that does not matter for this class.
#
# `mkviz.class_relevance(model, images)` computes it for a batch in one forward and one backward
# (the target is each image's predicted class unless given); `mkviz.relevance_map` lays it on the
# 7×7 grid. Next to it: the last layer's attention from the class token and attention rollout,
# which have no gradient and are the same for every class.

# %%
G = patch_grid(models["baseline"]).grid_size  # (7, 7)
cols = ["image", "last-layer attention", "rollout", "class relevance"]
fig = make_subplots(
    rows=2 * len(shown),
    cols=4,
    horizontal_spacing=0.02,
    vertical_spacing=0.02,
    subplot_titles=cols + [""] * (8 * len(shown) - 4),
)
for k, name in enumerate(("baseline", "vanillak-8")):
    maps = saliency_maps(models[name], x)  # {method: (B, 7, 7)}
    for r in range(len(shown)):
        row = 2 * r + k + 1
        fig.add_trace(go.Image(z=pixels[r].permute(1, 2, 0).numpy()), row, 1)
        fig.update_yaxes(title_text=f"{name}<br>{test.class_names[int(y[r])]}", row=row, col=1)
        for c, method in enumerate(("attention", "rollout", "relevance")):
            fig.add_trace(
                go.Heatmap(z=maps[method][r].numpy(), colorscale="Inferno", showscale=False),
                row,
                c + 2,
            )
fig.update_xaxes(showticklabels=False)
fig.update_yaxes(showticklabels=False, autorange="reversed", scaleanchor="x", scaleratio=1)
fig.update_layout(height=190 * 2 * len(shown), width=820, margin=dict(l=90, r=10, t=40, b=10))
fig.show()

# %% [markdown]
# **A check that conversion keeps the explanation.** `mkviz.convert` preserves the function
# ([`docs/design.md`](../docs/design.md) §5), so a converted baseline at step 0 must give the
# baseline's relevance too: same attention, same gradients.

# %%
converted = mkviz.convert(models["baseline"], "vanillak", num_charts=8)
rel_plain = mkviz.class_relevance(models["baseline"], x)                 # (B, 49)
rel_conv = mkviz.class_relevance(converted, x)
gap = (rel_plain - rel_conv).abs().max().item()
print(f"max |relevance(baseline) - relevance(converted baseline)| = {gap:.1e} "
      f"(relevance values up to {rel_plain.max().item():.2f})")
assert gap < 1e-4 * max(1.0, rel_plain.abs().max().item())

# %% [markdown]
# **Relevance per chart.** The charts' keys are fused before the softmax, so a chart's map has no
# gradient of its own. We define chart $c$'s relevance ([`docs/design.md`](../docs/design.md) §2.9)
# by replacing $\bar A_l$ with $\mathrm{mean}_h((\partial y_t/\partial A_l \odot A_{l,c})^+)$: where
# the class is sensitive to an attention weight, how much does chart $c$ put there? When every
# chart's map equals the fused map the per-chart relevances equal the fused one; they are a reading
# aid, not a decomposition (they do not sum to it).

# %%
per_chart = mkviz.class_relevance(models["vanillak-8"], x, charts=True)  # (B, 8, 49)
grids = mkviz.relevance_map(per_chart, models["vanillak-8"])  # (B, 8, 7, 7)
fig = make_subplots(
    rows=1,
    cols=9,
    horizontal_spacing=0.01,
    subplot_titles=["fused"] + [f"chart {c + 1}" for c in range(8)],
)
fig.add_trace(
    go.Heatmap(
        z=mkviz.relevance_map(
            mkviz.class_relevance(models["vanillak-8"], x[:1]), models["vanillak-8"]
        )[0].numpy(),
        colorscale="Inferno",
        showscale=False,
    ),
    1,
    1,
)
for c in range(8):
    fig.add_trace(
        go.Heatmap(z=grids[0, c].numpy(), colorscale="Inferno", showscale=False), 1, c + 2
    )
fig.update_xaxes(showticklabels=False)
fig.update_yaxes(showticklabels=False, autorange="reversed", scaleanchor="x", scaleratio=1)
fig.update_layout(
    height=200,
    width=1100,
    margin=dict(l=10, r=10, t=40, b=10),
    title=f"VanillaK-8, {test.class_names[int(y[0])]}: relevance, fused and per chart",
)
fig.show()
spread = (per_chart - per_chart.mean(1, keepdim=True)).abs().max().item()
print(f"largest difference between a chart's relevance and the charts' mean: {spread:.3f}")

# %% [markdown]
# ### ✎ Exercise 7.1 — predict, then verify: identical charts
#
# `mkviz.convert(..., perturbation=0.0)` starts every chart map at the identity ($\varphi_c = I$, no zero-sum
# $\delta_c$, notebook 02), so the 8 charts of `identical` below are exact copies of one key. **Predict first:**
# how large is the largest difference between a chart's relevance and the fused relevance of that model?
# Then verify it: compute the per-chart relevances (B, 8, 49) and the fused relevance (B, 49) of `identical`
# on `x`, and write the largest absolute difference over the images, charts and patches.

# %%
identical = mkviz.convert(
    models["baseline"], "vanillak", num_charts=8, perturbation=0.0
)  # 8 copies of the key

# %%
# ✎ exercise 07.identical-charts
answer = None  # your code: a float, max |chart relevance - fused relevance| of `identical`

# %%
check("07.identical-charts", answer, model=identical, x=x)

# %% [markdown]
# ## 2. Which map is faithful? Deletion and insertion
#
# A map is a ranking of the patches. **Deletion** replaces the patches in that order by a
# baseline (here 0, the dataset's mean grey after normalisation) and tracks the softmax
# probability of the predicted class: if the map found what the model uses, the probability falls
# fast and the area under the curve (AUC, over the share of patches removed) is small.
# **Insertion** starts from the blank image and puts the patches back in the same order: a faithful
# map makes it rise fast (large AUC). A random order is the reference every map must beat.
#
# One image first, with its curves:

# %%
res = compare_saliency(models["baseline"], x[:1], steps=STEPS)  # {method: curves and AUCs}
COLORS = plotly.colors.qualitative.Plotly  # one colour per method, both panels
fig = make_subplots(
    rows=1, cols=2, subplot_titles=["deletion (lower is better)", "insertion (higher is better)"]
)
for i, (method, r) in enumerate(res.items()):
    for c, kind in enumerate(("deletion", "insertion")):
        fig.add_trace(
            go.Scatter(
                x=r["fractions"].numpy(),
                y=r[kind][0].numpy(),
                name=method,
                legendgroup=method,
                showlegend=c == 0,
                line=dict(color=COLORS[i % len(COLORS)]),
            ),
            1,
            c + 1,
        )
fig.update_xaxes(title_text="share of patches changed")
fig.update_yaxes(title_text="probability of the predicted class", range=[0, 1])
fig.update_layout(height=360, width=980, title=f"baseline, {test.class_names[int(y[0])]}")
fig.show()

# %% [markdown]
# ### ✎ Exercise 7.2 — the area under a deletion curve
#
# `mkviz.deletion_insertion` reports the area under each curve by the trapezoid rule over the share of
# patches changed. Compute it yourself for the class relevance's deletion curve of the image above: `curve`
# holds the probabilities $p_0, \dots, p_S$ and `fractions` the shares $f_0 = 0, \dots, f_S = 1$; the area is
# $\sum_s (f_{s+1} - f_s)\,(p_s + p_{s+1})/2$. Write it as a float, without `torch.trapezoid`, then compare it
# with the library's `res["relevance"]["deletion_auc"][0]`.

# %%
curve, fractions = (
    res["relevance"]["deletion"][0],
    res["relevance"]["fractions"],
)  # (S + 1,), (S + 1,)

# %%
# ✎ exercise 07.deletion-auc
answer = None  # your code: a float, the trapezoid-rule area under `curve` over `fractions`

# %%
check("07.deletion-auc", answer, curve=curve, fractions=fractions)
print(
    "mkviz.deletion_insertion's deletion AUC for this curve: "
    f"{res['relevance']['deletion_auc'][0].item():.4f}"
)

# %% [markdown]
# Then every model, over more images (each image's predicted class). The table gives the mean
# deletion AUC, insertion AUC and their difference (**gap**: higher is more faithful; random scores
# about 0). For the variants, the charts' rows say whether any single chart's map ranks the patches
# as well as the fused attention the model actually uses.

# %%
images = test.batch(range(N_IMAGES)).image.to(DEVICE)
tables = {}
for name, model in models.items():
    tables[name] = faithfulness_table(compare_saliency(model, images, steps=STEPS))
    print(f"\n{name} ({N_IMAGES} test images, {STEPS} steps)")
    print(f"{'map':<12} {'deletion AUC':>13} {'insertion AUC':>14} {'gap':>7}")
    for r in tables[name]:
        print(
            f"{r['method']:<12} {r['deletion_auc']:>13.3f} {r['insertion_auc']:>14.3f} "
            f"{r['gap']:>7.3f}"
        )

# %%
methods = ["attention", "rollout", "relevance", "ig", "random"]
fig = go.Figure()
for method in methods + ["best chart"]:
    gaps = []
    for name in models:
        rows = {r["method"]: r["gap"] for r in tables[name]}
        charts = [v for k, v in rows.items() if k.startswith("chart ")]
        gaps.append(max(charts) if method == "best chart" and charts else rows.get(method))
    fig.add_trace(go.Bar(x=list(models), y=gaps, name=method))
fig.update_layout(
    barmode="group",
    height=380,
    width=900,
    yaxis_title="insertion AUC − deletion AUC",
    title=f"which map is faithful ({N_IMAGES} test images; higher is better)",
)
fig.show()
for name in models:  # every model: each map ranks patches better than chance on average
    rows = {r["method"]: r["gap"] for r in tables[name]}
    assert max(rows["rollout"], rows["relevance"], rows["ig"]) > rows["random"], name

# %% [markdown]
# How to read it. Gradient-based maps (class relevance, integrated gradients) and rollout usually
# beat the last layer's raw attention: by the last block the tokens have mixed for three blocks, so
# "the patch the class token looks at" is a poor proxy for "the pixels the prediction uses". Each
# chart's map is a map of *attention*, so it inherits that weakness; a chart that ranks patches
# better than the fused attention would be a chart that carries the decision, which is what one
# would hope to find. The random order scores about 0 by construction. Two cautions: the baseline
# (a flat grey patch) is itself out of distribution, and `baseline="blur"` gives another reading;
# and a few dozen images give a ranking, not a significance test.

# %% [markdown]
# ## 3. Recording that scales
#
# `mkviz.record_attention` keeps, per layer, the fused map $(B, h, N, N)$ and, with charts, $H$ more:
# for ViT-B/16 at 384 px with 8 charts that is about 1.6 GB per image. With `lazy=True` it keeps
# what any row needs instead — the attention input $x$, the queries and keys after their norms,
# and the additive bias — and the model stays on its fused attention path. `rec.attention_rows(layer,
# queries, chart=None)` recomputes the rows $(B, h, Q, N)$ on request; they equal the full
# recording's. For a chart the keys need not even be formed:
# $q_i\cdot K_{c,j} = (W_c^\top q_i)\cdot x_j + q_i\cdot\beta_c$. `docs/benchmarks.md` has the memory
# and time measured on ViT-B and ViT-S.

# %%
model, layer = models["vanillak-8"], "blocks.3.attn"
with torch.no_grad(), mkviz.record_attention(model) as full:
    model(x)
with torch.no_grad(), mkviz.record_attention(model, lazy=True) as lazy:
    model(x)
rows = lazy.attention_rows(layer, [0, 10, 24], chart=5)  # (B, heads, 3, N)
diff = (rows - full.chart_attention[layer][:, 5][:, :, [0, 10, 24]]).abs().max().item()
size = lambda rec: sum(
    t.numel() * t.element_size()
    for d in (rec.attention, rec.chart_attention, rec.chart_keys, rec.queries, rec.inputs, rec.keys)
    for t in d.values()
)
print(f"rows {tuple(rows.shape)}, max |lazy - full| = {diff:.1e}")
print(f"kept: full {size(full) / 1e6:.2f} MB, lazy {size(lazy) / 1e6:.2f} MB for {len(x)} images")
assert diff < 1e-5

# %% [markdown]
# ## 4. The key atlas
#
# Attention compares a query $q_i$ with keys $k_j$ through $q_i\cdot k_j$. The key atlas draws the
# 49 + 1 queries and every chart's 49 + 1 keys of one image **in one 2-D projection** (PCA of all
# of them together, `mkviz.metrics.project_2d`), one colour per chart, so one can see whether the
# charts' keys occupy the same region or different ones, and which queries sit near which keys
# (hover a point for its patch). It is a projection: nearby in the picture does not guarantee a
# large dot product, but the two largest directions of the cloud are what it keeps.

# %%
for name in ("vanillak-8", "kua-8"):
    with torch.no_grad(), mkviz.record_attention(models[name], lazy=True) as rec:
        models[name](x[:1])
    mkviz.figures.key_atlas(rec, "blocks.3.attn", head=None, query=1 + 3 * 7 + 3).update_layout(
        title=f"{name}: queries and chart keys, blocks.3.attn (query: the centre patch, ringed)"
    ).show()

# %% [markdown]
# In the explorer of notebook 04 the atlas sits below the maps: it follows the image, layer and
# head chosen, rings the current query, and **a click on any point (a query or a key) makes that
# patch the query**, so you can pick a key that sits apart from the others and see which chart
# attends to it.

# %%
ex = mkviz.ChartExplorer(models["vanillak-8"], x, class_names=test.class_names, labels=y,
                         display_images=pixels, layer="blocks.3.attn", query=(3, 3))
ex

# %% [markdown]
# ## Summary
#
# - `mkviz.class_relevance` gives a class-specific map per patch (Chefer et al.), batched, for
#   plain and converted ViT, DeiT and Swin; `charts=True` gives one per chart (our definition,
#   [`docs/design.md`](../docs/design.md) §2.9). A converted model at step 0 explains itself like
#   the plain one.
# - `mkviz.deletion_insertion` measures whether a map ranks the patches the model uses; on these
#   models gradient-based maps and rollout beat raw last-layer attention, and every map beats a
#   random order.
# - `record_attention(lazy=True)` keeps O(N) per layer and recomputes any row exactly.
# - `mkviz.figures.key_atlas` shows queries and chart keys together; in the explorer a click picks
#   the query.
#
# **Next, 08:** beyond classification: the same backbone under a segmentation head and a Mask R-CNN,
# on scenes of several articles.
