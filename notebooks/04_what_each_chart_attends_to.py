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
# # 04 — What each chart attends to
#
# *Part 4 of 8 of the `mkviz` course.* 01 the math of charts and the manifold key ·
# 02 the four variants side by side · 03 fine-tuning · 04 what each chart attends to ·
# 05 attributions · 06 chart count and chart similarity · 07 relevance, faithfulness and the key atlas ·
# 08 beyond classification.
#
# A manifold-key model computes one key per **chart**, $K_c$, and fuses them into the key that
# attention uses. Each chart therefore has an attention map of its own,
# $A_c = \operatorname{softmax}(Q K_c^\top/\sqrt d)$, even though the model only ever *uses* the
# fused one. This notebook looks at those maps on trained models:
#
# 1. the interactive explorer `mkviz.ChartExplorer` (sliders for image, layer, head and query
#    patch; click a patch to make it the query): the fused map beside the $H$ chart maps, the
#    chart-by-chart similarity, and per-chart entropy and attention on the article;
# 2. checks that what the explorer draws is what the model computed: its maps equal
#    `mkviz.record_attention`'s, and the fused map is the normalised geometric mean of the charts';
# 3. static figures of the same things, so the notebook reads without a running kernel;
# 4. how much of a query's attention lands on the **article** (the garment's silhouette), and
#    why that is not the same thing as "attention on the evidence";
# 5. how similar the charts are, for the four variants side by side, and why VanillaK's charts
#    stay close to each other while SimpleK's and KUA's can drift apart.
#
# **Data: Fashion-MNIST** (Zalando Research; Xiao, Rasul and Vollgraf 2017): 28×28 grey images of
# articles of clothing in 10 classes (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt,
# Sneaker, Bag, Ankle boot), read from Debian's package `dataset-fashion-mnist`
# (`/usr/share/datasets/fashion-mnist`, `make install` installs it) by
# `mkviz.data.FashionMNISTDataset`. We use the **official split**: the images shown here come
# from the 10,000-image test set, which no model trained on (validation is 6,000 images held out
# of the 60,000 training images).
#
# **The models** are the shipped Fashion-MNIST checkpoints in
# `data/checkpoints/fashion-mnist/<name>/`, trained from scratch by `make checkpoints` (the exact
# `mkviz train` command is in `data/README.md` and `mkviz.shipped`): a tiny ViT of **4 blocks of
# width 64** (4 heads) on the 28-px images replicated to 3 channels, cut into **7×7 patches of 4 px**
# plus a class token. The main one is **VanillaK-8** (8 charts); section 6 adds SimpleK-8,
# SpatialK-8 and KUA-8, trained with the same recipe.
#
# > **What comes from the paper, and what is ours.** The paper's exact layer equations and tables
# > are *not available* to this project; `mkviz` implements a documented **reconstruction**
# > ([`docs/design.md`](../docs/design.md) §2, notebook 01). The per-chart attention maps and the geometric-mean identity
# > are properties of *our* VanillaK. The models are ours too; nothing here is a number from the
# > paper.

# %% [markdown]
# ## Before you start
#
# **Learning objectives.** After this notebook you can
#
# - use `mkviz.ChartExplorer` to look at the fused and per-chart attention of a trained model, and read its maps;
# - check in code that what a figure draws is what the model computed (`mkviz.record_attention`);
# - verify the geometric-mean identity of notebook 01 on a trained model, head by head;
# - measure how much attention lands on the article against chance and an untrained control, and say
#   why the silhouette is not class evidence;
# - compute and interpret the similarity of the charts, and say what a mean fusion does and does not
#   guarantee about VanillaK's charts.
#
# **Prerequisites.** Notebook 01 (per-chart attention and the geometric mean); notebook 02 helps for
# section 6. Reading a heat map; a ViT's patch grid and class token.
#
# **Time to complete.**
#
# | | |
# |---|---|
# | reading, the code and trying the explorers | about 35 min |
# | the 2 exercises (✎) | about 10 min |
# | Run All at the default scale (10 images, 512 for the statistics), 2-core CPU | 25 s (measured 2026-12-04: one torch thread, 2 cores shared with two training runs) |
# | Run All, `MKVIZ_SMALL=1` | 20 s (measured, likewise) |
# | Run All at GPU scale (`MKVIZ_DEVICE=cuda`) | not measured (nothing is trained; the CPU takes seconds) |
#
# **Exercises** are marked ✎. Write a few lines where a cell says `None  # your code`, then run the check
# cell under it: it prints `✓ PASS`, `✗ FAIL` with what differs and a hint, or `· TODO` while the stub is
# untouched (the notebook still runs top to bottom). The solutions are in `notebooks/solutions/`.

# %% [markdown]
# ## Setup
#
# | variable | default | meaning |
# |---|---|---|
# | `MKVIZ_SMALL` | `0` | `1`: 4 test images in the explorers and 64 for the statistics (what the test suite uses; a few seconds per model) |
# | `MKVIZ_DEVICE` | `cpu` | e.g. `cuda` to run on a GPU |
# | `MKVIZ_SEED` | `0` | random seed (torch's global seed; the images are the official test set's) |
# | `MKVIZ_ROOT` | found | the repository root (holding `data/checkpoints`); by default the first folder upwards from here with a `pyproject.toml` |
#
# Nothing is downloaded: the checkpoints ship with the repository and Fashion-MNIST comes from the
# Debian package. Nothing is trained either.

# %%
import math
import os

import numpy as np
import torch
from plotly.subplots import make_subplots

import mkviz
from mkviz import figures
from mkviz import metrics
from mkviz.checkpoint import shipped_checkpoints_dir
from mkviz.data import build_dataset
from mkviz.maps import patch_grid
from mkviz.shipped import MAIN_MODELS, checkpoint_dir
from mkviz.checkpoint import build_model, load_checkpoint
from mkviz.exercises import check

SMALL = os.environ.get("MKVIZ_SMALL", "0") == "1"
DEVICE = torch.device(os.environ.get("MKVIZ_DEVICE", "cpu"))
SEED = int(os.environ.get("MKVIZ_SEED", "0"))

# data/checkpoints of this repository (MKVIZ_ROOT overrides)
CHECKPOINTS = (shipped_checkpoints_dir())
if SMALL:  # 4 images (4 classes) in the explorers, 64 for the statistics
    N_EXPLORE, N_STATS = 4, 64
    # tensors this small gain nothing from threads, and tests share the CPU
    torch.set_num_threads(1)
else:  # one image per class, 512 for the statistics
    N_EXPLORE, N_STATS = 10, 512
torch.manual_seed(SEED)
print(
    f"mkviz {mkviz.__version__}, torch {torch.__version__}, device {DEVICE}, checkpoints in "
    f"{CHECKPOINTS}"
)

# %% [markdown]
# ## 1. The model and the images
#
# `load_checkpoint` rebuilds the timm model from the saved spec and loads the weights (safetensors
# and JSON only). `build_dataset("fashion-mnist", split="test", model=model)` returns a
# `FashionMNISTDataset` normalised as in training: the grey images are replicated to 3 channels and
# normalised with the mean and std of the model's timm data config (Fashion-MNIST's own statistics,
# 0.286 / 0.353), which the checkpoint records (`timm.data.resolve_model_data_config(model)` reads
# it back). Each `Sample` also carries an **evidence mask**; for Fashion-MNIST that is the article's
# silhouette (pixels brighter than 25 % grey), which section 5 uses.
#
# The explorer gets a handful of test images of **different classes**: the first test image of each
# class, in class order.

# %%
model, config = load_checkpoint(checkpoint_dir("fashion-mnist", "vanillak-8"), map_location=DEVICE)
spec = config["model_spec"]
claimed = config["metrics"]["test"]["acc"]  # measured on all 10,000 test images after training
print(
    f"{spec['variant']} with {spec['num_charts']} charts, {spec['timm_kwargs']}; "
    f"test accuracy {claimed:.4f} (from config.json)"
)

# a FashionMNISTDataset, all 10,000
test = build_dataset("fashion-mnist", split="test", model=model)
grid = patch_grid(model)  # (7, 7) patches of (4, 4) px + 1 class token
G = grid.grid_size
print(test, "| classes:", test.class_names, "| patch grid", G, "patch", grid.patch_size)
first_of_class = {}
for i, y in enumerate(test.labels.tolist()):
    first_of_class.setdefault(y, i)
explore = [first_of_class[y] for y in sorted(first_of_class)][
    :N_EXPLORE
]  # test indices, one per class
print("explorer images:", [(i, test.class_names[int(test.labels[i])]) for i in explore])

# the first test images: image (B, 3, 28, 28), label (B,), evidence (B, 28, 28)
batch = test.batch(range(N_STATS))
with torch.no_grad():
    acc = (model(batch.image.to(DEVICE)).argmax(-1).cpu() == batch.label).float().mean().item()
# N_STATS images are a sample of the 10,000: allow 4 binomial standard errors around the stored
# accuracy
tol = 4 * math.sqrt(claimed * (1 - claimed) / N_STATS) + 1 / N_STATS
print(
    f"accuracy on the first {N_STATS} test images: {acc:.3f} (config.json: {claimed:.3f} on "
    "10,000; "
    f"tolerance ±{tol:.3f})"
)
assert abs(acc - claimed) <= tol, (acc, claimed)

# %% [markdown]
# ## 2. The explorer
#
# `ChartExplorer.from_dataset` takes the model, the dataset and the image indices. It runs the
# model **once per image** (recording fused and per-chart attention of every layer), so moving a
# slider only re-slices cached tensors and sends the new heat maps to the browser.
#
# What you see, top to bottom:
#
# - **controls**: the image (one per class), the layer (`blocks.0.attn` … `blocks.3.attn`), the
#   head (`mean` averages the heads' attention rows), the **query** patch (row, col on the 7×7
#   patch grid; you can also *click* a patch in any panel), the similarity measure, and whether all
#   panels share one colour scale;
# - a line with the label, the prediction and where you are;
# - **the maps**: the *fused* map (the attention the model actually used) and one map per chart,
#   each a 7×7 heat map over the image, with the query patch outlined in cyan. A map is one row of
#   an attention matrix: how much the query patch attends to each patch (the mass on the class
#   token is not drawn, so a map need not sum to 1);
# - **chart similarity** (cosine of the chart keys, Jensen-Shannon divergence of the chart
#   attention, or linear CKA), chart by chart;
# - **per-chart statistics** for the current query: the entropy of each attention row (the dashed
#   line is uniform attention) and the share of attention on the evidence mask, here **the
#   article's silhouette** (the dashed line is what uniform attention would give).
#
# It starts on the last layer (early layers of a ViT attend broadly, later ones select), with the
# query in the centre of the grid, patch (3, 3): Fashion-MNIST articles are centred, so that patch
# lies on the garment.

# %%
ex = mkviz.ChartExplorer.from_dataset(model, test, indices=explore, layer=-1, query=(3, 3))
ex

# %% [markdown]
# The explorer needs this running kernel. `ex.save_html(path)` writes it as one self-contained HTML
# file instead: the maps of every image, layer, head and query are computed once and embedded, with
# plotly.js, so the page opens in any browser with no kernel and no network (a click or a slider
# redraws the maps, as here). Send it to someone, or keep it next to your notes; the course site
# shows these pages in place of the live explorers. It opens on the explorer's current layer and query.

# %%
# overwrite=False (the default) keeps an existing file
page = ex.save_html("chart_explorer.html", overwrite=True)
print(f"{page}: {page.stat().st_size / 2**20:.1f} MiB, opens in any browser")

# %% [markdown]
# Things to try: move the query from the garment to the blank background and back; compare a
# trouser with a bag or a sandal (thin structures, lots of background); compare the layers
# (layer 0 spreads attention broadly over the patches, the last layers concentrate it); switch
# the head from `mean` to single heads; switch the similarity to `js`.
#
# The explorer is plain Python objects, so everything it shows can also be read and checked in
# code. Moving a slider is cheap, since no forward pass is needed:

# %%
latency = ex.update_latency_ms(n=10 if SMALL else 30)
print(f"query-slider update latency (re-slice + figure update, median): {latency:.1f} ms; "
      f"forward passes so far: {ex.cache.forwards} (one per image visited)")

# %% [markdown]
# ## 3. The explorer draws what the model computed
#
# Two checks. **First**, the maps in the explorer's figure equal what
# `mkviz.record_attention` records for the same image, layer, chart, head and query
# (`rec.image_map(layer, query, chart=c, head=h)`, independently of the explorer's cache). We set
# the sliders the way a user would and compare the figure's heat-map arrays.

# %%
image_i, head = min(2, N_EXPLORE - 1), 1
ex.image_slider.value = image_i
ex.head_dropdown.value = head
with torch.no_grad(), mkviz.record_attention(model, to_cpu=True) as rec:
    model(test.batch([explore[image_i]]).image.to(DEVICE))  # the same image, (1, 3, 28, 28)

worst = 0.0
for layer in rec.layers:
    ex.layer_dropdown.value = layer
    for query in ((0, 0), (3, 3), (6, 2)):
        ex.row_slider.value, ex.col_slider.value = query
        drawn = [np.asarray(t.z) for t in ex.heat_traces]  # fused + H charts, each (7, 7)
        expected = [rec.image_map(layer, query, head=head)] + [
            rec.image_map(layer, query, chart=c, head=head) for c in range(ex.cache.num_charts)
        ]
        worst = max(worst, max(float(np.abs(d - e.numpy()).max()) for d, e in zip(drawn, expected)))
print(
    f"{len(rec.layers)} layers x 3 queries x (fused + {ex.cache.num_charts} charts): "
    f"max |figure - record_attention| = {worst:.1e}"
)
assert worst < 1e-5

# %% [markdown]
# **Second**, the fused map is the **normalised geometric mean** of the chart maps (notebook 01,
# section 5): VanillaK's fused key is the mean of the chart keys, so its logits are the mean of
# the chart logits, and per head
#
# $$A = \operatorname{softmax}\Big(\frac1H\sum_c \log A_c\Big) \;\propto\; \prod_c A_c^{1/H}.$$
#
# We check it on every layer, head and query of the recorded image (full attention rows,
# class token included). It holds per head, not for the head *mean* (an arithmetic mean of
# geometric means is not a geometric mean), which is why the check works head by head.

# %%
worst = 0.0
for layer in rec.layers:
    A = rec.attention[layer][0]  # (heads, N, N) fused, N = 1 + 49
    Ac = rec.chart_attention[layer][0]  # (H, heads, N, N) per chart
    geo = Ac.clamp_min(1e-30).log().mean(0).softmax(-1)  # softmax of mean log -> (heads, N, N)
    worst = max(worst, (geo - A).abs().max().item())
print(
    "max |fused - normalised geometric mean of the charts| over all layers, heads and queries: "
    f"{worst:.1e}"
)
assert worst < 1e-5

# %% [markdown]
# ## 4. The same, as static figures
#
# `mkviz.figures.chart_maps_figure` is the figure the explorer updates in place; here it is
# built once for a fixed image, layer and query, so the notebook shows the maps without a running
# kernel. The query is the patch under the **centroid of the article's silhouette** (the mean
# position of its pixels, divided by the patch size): a patch on the garment whatever its shape.

# %%
layer = rec.layers[-1]
s = test.sample(explore[image_i])
ys, xs = torch.nonzero(s.evidence_mask, as_tuple=True)  # the silhouette's pixels (row, col)
ph, pw = grid.patch_size
query = (min(int(ys.float().mean()) // ph, G[0] - 1), min(int(xs.float().mean()) // pw, G[1] - 1))
fused = rec.image_map(layer, query)  # head mean, (7, 7)
charts = rec.chart_maps(layer, query)  # (H, 7, 7), one map per chart
print(
    f"test image {explore[image_i]}: {test.class_names[s.label]}; query {query} (under the "
    "article's centroid); "
    f"{layer}"
)
fig = figures.chart_maps_figure(
    test.images_uint8([explore[image_i]])[0],
    fused,
    charts,
    query=query,
    title=f"{test.class_names[s.label]}, {layer}, query {query} on the article: "
    "fused and chart maps",
)
fig.show()

# %% [markdown]
# ### ✎ Exercise 4.1 — read the map
#
# In the figure above, which patch does the **fused** map (the first panel) give the most attention to?
# Read it off the figure (hover for the values) and write it as `(row, col)` on the 7×7 grid, rows from the
# top, columns from the left, both from 0.

# %%
# ✎ exercise 04.read-the-map
answer = None  # your code: (row, col), read off the fused panel

# %%
check("04.read-the-map", answer, fused=fused)

# %% [markdown]
# The charts' maps look alike: for this model each chart attends where the fused key attends.
# Section 6 comes back to that. Next, the chart-by-chart similarity and the per-chart statistics
# of that query.

# %%
sim = rec.chart_similarity(layer, "cosine")[...]  # (H, H)
figures.similarity_heatmap(
    sim, "cosine", title=f"VanillaK-8: cosine similarity of the chart keys, {layer}"
).show()

ex.layer_dropdown.value, ex.head_dropdown.value = layer, "mean"
ex.row_slider.value, ex.col_slider.value = query
st = ex.current_stats()  # entropy (1+H,), evidence (1+H,), chance
figures.entropy_bars(
    st["entropy"][1:],
    fused=float(st["entropy"][0]),
    max_entropy=st["max_entropy"],
    title=f"entropy of the query's attention, {layer}",
).show()
figures.evidence_bars(
    st["evidence"][1:],
    fused=float(st["evidence"][0]),
    chance=st["chance"],
    title=f"share of the query's attention on the article, {layer}",
).show()

# %% [markdown]
# ### ✎ Exercise 4.2 — predict, then compute, the chart similarity
#
# **Predict first:** from the heat map above, is the mean cosine similarity between *different* charts of this
# layer closer to 0, to 0.5 or to 1? Then compute it yourself from the recorded chart keys
# `rec.chart_keys[layer]`, of shape (B, H, N, C): the cosine of two charts' keys per token (along C), averaged
# over the tokens and images, then the mean over the $H(H-1)$ off-diagonal pairs. Do not call
# `rec.chart_similarity`.

# %%
# ✎ exercise 04.chart-cosine
chart_keys = rec.chart_keys[layer]                          # (B, H, N, C), here B = 1
answer = None  # your code: a float, the mean off-diagonal cosine similarity

# %%
check("04.chart-cosine", answer, chart_keys=chart_keys)

# %% [markdown]
# ## 5. Attention on the article
#
# Does a query's attention land on the garment, or on the blank background around it? For every
# image we take the silhouette (the evidence mask), weight each patch by the fraction of its pixels
# inside it (`metrics.patch_coverage`), and measure the share of each query's attention over
# patches that lands there (`metrics.attention_on_evidence`). Uniform attention would give the
# mean coverage, the **share of patches the article covers** (chance, about 40 % here: the
# articles fill a large part of the 28-px frame). As a control we build the **same architecture
# untrained**: the checkpoint's spec with its training seed, i.e. exactly the weights training
# started from; whatever it does is what the architecture does with no learning.
#
# **Read this with care: the silhouette is not class evidence.** In the shapes task of the first
# version of this notebook the label depended on two objects only, so "attention on the objects"
# meant "attention on what decides the class". Here nothing says the class lives on the garment's
# pixels: much of it is in the *outline*, and the outline is seen just as well from the background
# patches next to it (the gap between a trouser's legs, the space beside a sandal's straps, the
# missing sleeves of a dress are all background). A share above chance says the model looks at
# the garment more than at the frame; a share near chance does not mean it ignores the garment.

# %%
untrained = (
    build_model(spec, seed=config["train"]["seed"]).to(DEVICE).eval()
)  # training's starting point
chance = metrics.patch_coverage(batch.evidence_mask, G).mean().item()


def article_share(m):
    """{layer: share of attention on the article}, averaged over images, heads and patch queries."""
    with torch.no_grad(), mkviz.record_attention(m, charts=False, to_cpu=True) as r:
        m(batch.image.to(DEVICE))
    out = {}
    for name in r.layers:
        rows = r.attention[name][:, :, 1:]  # patch queries: (B, heads, 49, N)
        out[name] = (
            metrics.attention_on_evidence(rows, batch.evidence_mask, G, num_prefix_tokens=1)
            .mean()
            .item()
        )
    return out


trained_share, untrained_share = article_share(model), article_share(untrained)
print(f"share of patches the article covers (uniform attention): {chance:.3f}")
print(f"{'layer':<15} {'trained':>8} {'/ chance':>9} {'untrained':>10}")
for name in trained_share:
    print(
        f"{name:<15} {trained_share[name]:>8.3f} {trained_share[name] / chance:>9.2f} "
        f"{untrained_share[name]:>10.3f}"
    )
# an untrained ViT attends almost uniformly, so its share is the coverage; the trained column is
# what we learn from
assert all(abs(v - chance) < 0.05 for v in untrained_share.values()), untrained_share
assert all(0.0 <= v <= 1.0 for v in trained_share.values())

# %% [markdown]
# The untrained model sits on chance in every layer: random keys give near-uniform attention. The
# trained column is what training changed. Compare it with chance layer by layer; on a task whose
# evidence is the *shape* of one large centred object, expect the trained model's share to stay
# within a modest factor of chance (it cannot exceed $1/0.4 = 2.5\times$ even if every query looked
# only at the garment), and expect some layers to look *at the background* on purpose: that is
# where the outline is. (The share is an average over *all* patch queries, background queries
# included; the explorer's bar chart shows it for one query.)

# %% [markdown]
# ## 6. How different are the charts?
#
# The cosine similarity above is close to 1 everywhere: VanillaK-8's charts are near-copies of each
# other. That is not a bug in the picture, but it is also not forced by VanillaK's structure
# ([`docs/design.md`](../docs/design.md) §3.1, *Chart symmetry*). Its fused key is the *mean* of the charts, so every chart
# receives the **same** gradient with respect to its key, $\partial L/\partial K_c = \frac1H\,\partial L/\partial K$.
# The differences between two charts' maps and scales then follow a linear system with no source
# term: charts that start *identical* stay identical. Small differences are not conserved, though:
# the system couples each chart's map to its scales, and depending on the shared gradient its modes
# grow or shrink (a 2-chart key fitted to a map that must reverse its sign moves its charts apart
# roughly tenfold; `tests/test_chart_dynamics.py`). On Fashion-MNIST the measured differences shrink
# relative to the shared part of the key during training
# ([`docs/chart_specialisation.md`](../docs/chart_specialisation.md)), more than weight decay towards
# the identity (design §7.1) alone explains. Fusions that weigh the charts differently give them different gradients: SimpleK's
# learned fusion $F_c$ and KUA's per-token membership $p(c\mid n)$ each depend on chart $c$'s own
# key, a feedback loop that *can* pull the charts apart. SpatialK is mean-fused like VanillaK, but
# its charts are separate projections from the start, so its cosine is low from initialisation on.
#
# We measure, for the four variants trained with the same recipe, the mean off-diagonal cosine
# similarity of the chart keys in every layer, after training and at initialisation (the same spec
# and seed, untrained), over a batch of test images. The argument in full, with the charts followed
# epoch by epoch over many training runs (every variant, kernel size 3, independent charts, KUA's
# one-hot memberships), is on its own page: [`docs/chart_specialisation.md`](../docs/chart_specialisation.md).

# %%
few = batch.image[:16].to(DEVICE)  # (16, 3, 28, 28)
variants, sims = {}, {}
print(f"{'model':<11} {'':>9} " + " ".join(f"{name:>14}" for name in rec.layers))
for name in MAIN_MODELS[1:]:  # vanillak-8, simplek-8, spatialk-8, kua-8
    m, cfg = load_checkpoint(checkpoint_dir("fashion-mnist", name), map_location=DEVICE)
    start = build_model(cfg["model_spec"], seed=cfg["train"]["seed"]).to(DEVICE).eval()
    # off-diagonal entries of (H, H)
    off = ~torch.eye(cfg["model_spec"]["num_charts"], dtype=torch.bool)
    row = {}
    for when, net in (("trained", m), ("at init", start)):
        with torch.no_grad(), mkviz.record_attention(net, to_cpu=True) as r:
            net(few)
        row[when] = [r.chart_similarity(n)[off].mean().item() for n in r.layers]
        if when == "trained":
            sims[name] = r.chart_similarity(r.layers[-1])  # (H, H), last layer
        print(f"{name:<11} {when:>9} " + " ".join(f"{v:>14.3f}" for v in row[when]))
    variants[name] = m
    if name == "vanillak-8":
        vanilla_cos = row

fig = make_subplots(rows=1, cols=len(sims), subplot_titles=list(sims), horizontal_spacing=0.04)
for c, (name, sim) in enumerate(sims.items()):
    trace = figures.similarity_heatmap(sim, "cosine", annotate=False).data[0]
    trace.update(showscale=c == len(sims) - 1)
    fig.add_trace(trace, 1, c + 1)
fig.update_yaxes(autorange="reversed", scaleanchor="x", showticklabels=False)
fig.update_xaxes(showticklabels=False)
fig.update_layout(
    height=320,
    width=1050,
    margin=dict(l=10, r=10, t=60, b=10),
    title=f"cosine similarity of the chart keys, {rec.layers[-1]} (chart 1 at the top left)",
)
fig.show()
# measured, not guaranteed (design §3.1): on this data VanillaK's charts end at least as alike
# as they started
assert all(
    t > 0.9 and t >= i - 0.02 for t, i in zip(vanilla_cos["trained"], vanilla_cos["at init"])
), vanilla_cos

# %% [markdown]
# VanillaK-8's charts stay where they started (or move closer together): with this model and data the
# shared gradient draws them together, though a mean fusion alone would allow them to drift apart. Whether SimpleK's and KUA's charts *did* drift apart depends on training,
# and the table says how far: their starting similarity is about the same as VanillaK's, so a
# lower trained value than VanillaK's is the feedback loop at work. (SpatialK's low cosine is
# mostly its start, as its "at init" row shows.)
#
# The second explorer opens on whichever of SimpleK-8 and KUA-8 has the less similar charts in the
# last layer, on the same images, so you can look at charts that differ (or see that they do not):

# %%
other = min(
    ("simplek-8", "kua-8"),
    key=lambda n: sims[n][~torch.eye(len(sims[n]), dtype=torch.bool)].mean().item(),
)
print(f"explorer on {other}")
ex2 = mkviz.ChartExplorer.from_dataset(
    variants[other], test, indices=explore, layer=-1, query=(3, 3)
)
ex2

# %% [markdown]
# ## Summary
#
# - `ChartExplorer` shows the fused map beside every chart's map, with sliders and clicks; it runs
#   the model once per image and redraws in milliseconds.
# - What it draws equals `record_attention`'s maps, and VanillaK's fused map is the normalised
#   geometric mean of the charts' maps (checked per layer, head and query).
# - On Fashion-MNIST the evidence mask is the article's silhouette, which covers about 40 % of the
#   patches; the share of attention on it is measured against that, and against the untrained
#   starting point. The silhouette is not the class evidence (the outline is seen from the
#   background too), so this is a description of where attention goes, not a test of the model.
# - VanillaK-8's charts stay near-copies here: a mean fusion keeps identical charts identical and gives
#   every chart the same key gradient, but small differences can grow or shrink (design §3.1); on this
#   data they shrink;
#   SimpleK's and KUA's fusions let charts differ, and the side-by-side similarity shows how far
#   they did. This is our small model on Fashion-MNIST, not a claim about the paper's models.
#
# **Next, 05:** attributions with captum: which pixels and which attention entries the
# prediction depends on, for the baseline and the manifold key.
