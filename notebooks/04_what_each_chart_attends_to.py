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
# *Part 4 of 6 of the `mkviz` course.* 01 the math of charts and the manifold key ·
# 02 the four variants side by side · 03 fine-tuning · 04 what each chart attends to ·
# 05 attributions · 06 chart count and chart similarity.
#
# A manifold-key model computes one key per **chart**, $K_c$, and fuses them into the key that
# attention uses. Each chart therefore has an attention map of its own,
# $A_c = \operatorname{softmax}(Q K_c^\top/\sqrt d)$, even though the model only ever *uses* the
# fused one. This notebook looks at those maps on a trained model:
#
# 1. the interactive explorer `mkviz.ChartExplorer` (sliders for image, layer, head and query
#    patch; click a patch to make it the query): the fused map beside the $H$ chart maps, the
#    chart-by-chart similarity, and per-chart entropy and attention on the evidence;
# 2. checks that what the explorer draws is what the model computed: its maps equal
#    `mkviz.record_attention`'s, and the fused map is the normalised geometric mean of the charts';
# 3. static figures of the same things, so the notebook reads without a running kernel;
# 4. does attention land on the **evidence** (the two objects whose relation is the label)?
# 5. how similar are the charts, and why VanillaK's charts stay close to each other.
#
# The model is the shipped **VanillaK-8** checkpoint (`data/checkpoints/vanillak-8`, trained by
# `mkviz train`; `data/README.md` has the exact command): a tiny ViT (32-px images, 4×4 patches of
# 8 px plus a class token, 4 blocks of width 64, 4 heads) with 8 charts, trained on the
# procedural shapes task: *is the red object left of, right of, above or below the blue one?*
#
# > **What comes from the paper, and what is ours.** The paper's exact layer equations and tables
# > are *not available* to this project; `mkviz` implements a documented **reconstruction**
# > ([`docs/design.md`](../docs/design.md) §2, notebook 01). The per-chart attention maps and the geometric-mean identity
# > are properties of *our* VanillaK. The model and the task are ours too; nothing here is a
# > number from the paper.

# %% [markdown]
# ## Setup
#
# | variable | default | meaning |
# |---|---|---|
# | `MKVIZ_SMALL` | `0` | `1`: fewer images (what the test suite uses; a few seconds) |
# | `MKVIZ_DEVICE` | `cpu` | e.g. `cuda` to run on a GPU |
# | `MKVIZ_SEED` | `0` | random seed (the dataset's scenes and the untrained control model) |
# | `MKVIZ_ROOT` | found | the repository root (holding `data/checkpoints`); by default the first folder upwards from here with a `pyproject.toml` |
#
# Nothing is downloaded: the checkpoint ships with the repository and the shapes are generated.

# %%
import os

import numpy as np
import torch

import mkviz
from mkviz import figures
from mkviz import metrics
from mkviz.checkpoint import shipped_checkpoints_dir
from mkviz.data import build_dataset
from mkviz.train import build_model, load_checkpoint

SMALL = os.environ.get("MKVIZ_SMALL", "0") == "1"
DEVICE = torch.device(os.environ.get("MKVIZ_DEVICE", "cpu"))
SEED = int(os.environ.get("MKVIZ_SEED", "0"))

CHECKPOINTS = shipped_checkpoints_dir()  # data/checkpoints of this repository (MKVIZ_ROOT overrides)
if SMALL:   # a handful of images in the explorer, 64 for the statistics
    N_EXPLORE, N_STATS = 4, 64
    torch.set_num_threads(1)  # tensors this small gain nothing from threads, and tests share the CPU
else:
    N_EXPLORE, N_STATS = 8, 512
torch.manual_seed(SEED)
print(f"mkviz {mkviz.__version__}, torch {torch.__version__}, device {DEVICE}, checkpoints in {CHECKPOINTS}")

# %% [markdown]
# ## 1. The model and the images
#
# `load_checkpoint` rebuilds the timm model from the saved spec and loads the weights (safetensors
# and JSON only). The images come from the shapes dataset's **validation** split, which the model
# never trained on; `split="val"` with the same seed and size gives exactly the scenes its
# validation accuracy was measured on. `build_dataset(..., model=model)` returns a `ShapesDataset`
# normalised with the model's own mean and std (this timm ViT uses 0.5 / 0.5, not ImageNet's
# statistics), as in training.

# %%
model, config = load_checkpoint(CHECKPOINTS / "vanillak-8", map_location=DEVICE)
spec = config["model_spec"]
print(f"{spec['variant']} with {spec['num_charts']} charts, {spec['timm_kwargs']}; "
      f"validation accuracy {config['metrics']['val']['acc']:.3f} (from config.json)")

val = build_dataset("shapes", split="val", model=model, num_samples=N_STATS, seed=SEED)   # a ShapesDataset
print(val, "| classes:", val.class_names)
batch = val.batch(range(N_STATS))          # images (B, 3, 32, 32), labels (B,), evidence masks (B, 32, 32)
with torch.no_grad():
    acc = (model(batch.image.to(DEVICE)).argmax(-1).cpu() == batch.label).float().mean().item()
print(f"accuracy on these {N_STATS} validation images: {acc:.3f}")
assert acc > 0.9

# %% [markdown]
# ## 2. The explorer
#
# `ChartExplorer.from_dataset` takes the model, the dataset and the image indices. It runs the
# model **once per image** (recording fused and per-chart attention of every layer), so moving a
# slider only re-slices cached tensors and sends the new heat maps to the browser.
#
# What you see, top to bottom:
#
# - **controls**: the image, the layer (`blocks.0.attn` … `blocks.3.attn`), the head (`mean`
#   averages the heads' attention rows), the **query** patch (row, col on the 4×4 patch grid; you
#   can also *click* a patch in any panel), the similarity measure, and whether all panels share
#   one colour scale;
# - a line with the label, the prediction and where you are;
# - **the maps**: the *fused* map (the attention the model actually used) and one map per chart,
#   each a 4×4 heat map over the image, with the query patch outlined in cyan. A map is one row of
#   an attention matrix: how much the query patch attends to each patch (the mass on the class
#   token is not drawn, so a map need not sum to 1);
# - **chart similarity** (cosine of the chart keys, Jensen-Shannon divergence of the chart
#   attention, or linear CKA), chart by chart;
# - **per-chart statistics** for the current query: the entropy of each attention row (the dashed
#   line is uniform attention) and the share of attention on the evidence (the red and blue
#   objects; the dashed line is what uniform attention would give).
#
# It starts on the last layer: early layers of a ViT attend broadly, later ones select.

# %%
ex = mkviz.ChartExplorer.from_dataset(model, val, indices=range(N_EXPLORE), layer=-1, query=(1, 1))
ex

# %% [markdown]
# Things to try: pick a query patch on the red object and look for the blue one in the maps
# (and the other way round); compare the layers (layer 0 spreads attention almost uniformly
# over the patches, the last layers concentrate it); switch the head from `mean` to single
# heads; switch the similarity to `js`.
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
    model(batch.image[image_i:image_i + 1].to(DEVICE))          # the same image, (1, 3, 32, 32)

worst = 0.0
for layer in rec.layers:
    ex.layer_dropdown.value = layer
    for query in ((0, 0), (1, 2), (3, 3)):
        ex.row_slider.value, ex.col_slider.value = query
        drawn = [np.asarray(t.z) for t in ex._heat]                # fused + H charts, each (4, 4)
        expected = [rec.image_map(layer, query, head=head)] + \
                   [rec.image_map(layer, query, chart=c, head=head) for c in range(ex.cache.num_charts)]
        worst = max(worst, max(float(np.abs(d - e.numpy()).max()) for d, e in zip(drawn, expected)))
print(f"{len(rec.layers)} layers x 3 queries x (fused + {ex.cache.num_charts} charts): "
      f"max |figure - record_attention| = {worst:.1e}")
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
    A = rec.attention[layer][0]                                   # (heads, N, N) fused
    Ac = rec.chart_attention[layer][0]                            # (H, heads, N, N) per chart
    geo = Ac.clamp_min(1e-30).log().mean(0).softmax(-1)           # softmax of mean log -> (heads, N, N)
    worst = max(worst, (geo - A).abs().max().item())
print(f"max |fused - normalised geometric mean of the charts| over all layers, heads and queries: {worst:.1e}")
assert worst < 1e-5

# %% [markdown]
# ## 4. The same, as static figures
#
# `mkviz.figures.chart_maps_figure` is the figure the explorer updates in place; here it is
# built once for a fixed image, layer and query (the query patch sits on the red object), so the
# notebook shows the maps without a running kernel.

# %%
layer = rec.layers[-1]
s = val.sample(image_i)
cov = metrics.patch_coverage(s.masks[0].float(), (4, 4)).reshape(4, 4)   # red object's coverage per patch
query = tuple(int(v) for v in divmod(int(cov.flatten().argmax()), 4))    # the patch most covered by red
fused = rec.image_map(layer, query)                                      # head mean, (4, 4)
charts = torch.stack([rec.image_map(layer, query, chart=c) for c in range(ex.cache.num_charts)])  # (H, 4, 4)
print(f"image {image_i}: {val.class_names[s.label]}; query {query} (on the red object); {layer}")
fig = figures.chart_maps_figure(val.images_uint8([image_i])[0], fused, charts, query=query,
                                title=f"image {image_i}, {layer}, query {query} on the red object: fused and chart maps")
fig.show()

# %% [markdown]
# The charts' maps look alike: for this model each chart attends where the fused key attends.
# Section 6 comes back to that. Next, the chart-by-chart similarity and the per-chart statistics
# of that query.

# %%
sim = rec.chart_similarity(layer, "cosine")[...]                         # (H, H)
figures.similarity_heatmap(sim, "cosine", title=f"cosine similarity of the chart keys, {layer}").show()

ex.layer_dropdown.value, ex.head_dropdown.value = layer, "mean"
ex.row_slider.value, ex.col_slider.value = query
st = ex.current_stats()                                                  # entropy (1+H,), evidence (1+H,), chance
figures.entropy_bars(st["entropy"][1:], fused=float(st["entropy"][0]), max_entropy=st["max_entropy"],
                     title=f"entropy of the query's attention, {layer}").show()
figures.evidence_bars(st["evidence"][1:], fused=float(st["evidence"][0]), chance=st["chance"],
                      title=f"share of the query's attention on the evidence, {layer}").show()

# %% [markdown]
# ## 5. Does attention land on the evidence?
#
# The label depends on two objects only, so a model that solved the task should attend to
# them. For every image we take the evidence mask (red ∪ blue), weight each patch by the
# fraction of its pixels inside it (`metrics.patch_coverage`), and measure the share of each
# query's attention over patches that lands there (`metrics.attention_on_evidence`). Uniform
# attention would give the mean coverage (**chance**, about 8 % here: two small objects on a
# 32-px image). As a control we build the **same architecture untrained** (random weights, the
# checkpoint's spec): whatever it does is what the architecture does with no learning.

# %%
untrained = build_model(spec, seed=SEED).to(DEVICE).eval()
chance = metrics.patch_coverage(batch.evidence_mask, (4, 4)).mean().item()


def evidence_share(m):
    """{layer: share of attention on the evidence}, averaged over images, heads and patch queries."""
    with torch.no_grad(), mkviz.record_attention(m, charts=False, to_cpu=True) as r:
        m(batch.image.to(DEVICE))
    out = {}
    for name in r.layers:
        rows = r.attention[name][:, :, 1:]                                # patch queries: (B, heads, 16, N)
        out[name] = metrics.attention_on_evidence(rows, batch.evidence_mask, (4, 4), num_prefix_tokens=1).mean().item()
    return out


trained_share, untrained_share = evidence_share(model), evidence_share(untrained)
print(f"chance (uniform attention): {chance:.3f}")
print(f"{'layer':<15} {'trained':>8} {'untrained':>10}")
for name in trained_share:
    print(f"{name:<15} {trained_share[name]:>8.3f} {untrained_share[name]:>10.3f}")
assert min(trained_share.values()) > 1.3 * chance                  # every trained layer is well above chance
assert max(trained_share.values()) > 1.3 * max(untrained_share.values())

# %% [markdown]
# Every layer of the trained model puts roughly twice as much attention on the two objects as
# uniform attention would; the untrained model sits near chance. (The share is an average over
# *all* patch queries; queries on the objects themselves are more selective.)

# %% [markdown]
# ## 6. How different are the charts?
#
# The cosine similarity above is close to 1 everywhere: after training, VanillaK-8's charts are
# still near-copies of each other. That is not a bug in the picture; the structure of VanillaK
# explains it. Its fused key is the *mean* of the charts, so every chart receives the **same**
# gradient with respect to its key, $\partial L/\partial K_c = \frac1H\,\partial L/\partial K$;
# charts can only drift apart through their own parameters ($s_c$, $\varphi_c$), which start
# close to each other. Fusions that weigh the charts differently give them different gradients.
# KUA weighs them per token with a softmax membership. The shipped **KUA-8** checkpoint (same
# data and schedule) shows what that does to the similarity:

# %%
kua, _ = load_checkpoint(CHECKPOINTS / "kua-8", map_location=DEVICE)
few = batch.image[:16].to(DEVICE)                                          # (16, 3, 32, 32)
with torch.no_grad(), mkviz.record_attention(model, to_cpu=True) as rv, \
        mkviz.record_attention(kua, to_cpu=True) as rk:
    model(few)
    kua(few)
off = ~torch.eye(spec["num_charts"], dtype=torch.bool)                     # off-diagonal entries of (H, H)
print(f"{'layer':<15} {'VanillaK-8 mean cos':>20} {'KUA-8 mean cos':>15}")
mean_cos = {}
for name in rv.layers:
    mean_cos[name] = (rv.chart_similarity(name)[off].mean().item(), rk.chart_similarity(name)[off].mean().item())
    print(f"{name:<15} {mean_cos[name][0]:>20.3f} {mean_cos[name][1]:>15.3f}")
figures.similarity_heatmap(rk.chart_similarity(rv.layers[-1]), "cosine",
                           title=f"KUA-8: cosine similarity of the chart keys, {rv.layers[-1]}").show()
assert all(v > k for v, k in mean_cos.values())                            # KUA's charts differ more

# %% [markdown]
# Feed `kua` to `mkviz.ChartExplorer` to see charts that attend differently.
#
# ## Summary
#
# - `ChartExplorer` shows the fused map beside every chart's map, with sliders and clicks; it runs
#   the model once per image and redraws in milliseconds.
# - What it draws equals `record_attention`'s maps, and VanillaK's fused map is the normalised
#   geometric mean of the charts' maps (checked per layer, head and query).
# - The trained model attends to the evidence (the red and blue objects) at about twice chance in
#   every layer; the untrained one does not.
# - VanillaK-8's charts stay near-copies (equal key gradients under a mean fusion); KUA's differ.
#   This is our small model on our task, not a claim about the paper's models.
#
# **Next, 05:** attributions with captum: which pixels and which attention entries the
# prediction depends on, for the baseline and the manifold key.
