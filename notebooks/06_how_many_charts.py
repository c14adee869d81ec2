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
# # 06 — How many charts?
#
# *Part 6 of 8 of the `mkviz` course.* 01 the math of charts and the manifold key ·
# 02 the four variants side by side · 03 fine-tuning · 04 what each chart attends to ·
# 05 attributions · 06 chart count and chart similarity · 07 relevance, faithfulness and the key atlas ·
# 08 beyond classification.
#
# The paper's main experiments use $H = 8$ charts. What changes with the number of charts? This
# notebook takes five VanillaK models that differ **only** in $H$ (1, 2, 4, 8 and 16 charts;
# same tiny ViT, same data, same schedule, same seed) and a baseline trained the same way, and
#
# 1. measures their accuracy on the held-out test set, here in the notebook, and checks it against
#    the accuracy each checkpoint stored at the end of training;
# 2. shows them side by side in `mkviz.ChartCountExplorer`: a **chart-count slider** switches the
#    model and redraws the fused map, the $H$ chart maps and the $H\times H$ chart similarity;
# 3. measures how similar the charts are as $H$ grows;
# 4. discusses, honestly, what one training run per model can and cannot say.
#
# **Data: Fashion-MNIST** (Zalando Research; Xiao, Rasul and Vollgraf 2017): 28×28 grey images of
# articles of clothing in 10 classes (chance 10 %), read from Debian's package
# `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`) by `mkviz.data.FashionMNISTDataset`.
# We use the **official split**: the models trained on 54,000 of the 60,000 training images
# (6,000 held out for validation) and are scored on the official 10,000-image test set.
#
# **The models** are the shipped checkpoints `data/checkpoints/fashion-mnist/vanillak-{1,2,4,8,16}`
# and `.../baseline`, trained from scratch by `make checkpoints` (the exact `mkviz train` command
# is in `data/README.md` and `mkviz.shipped`): a tiny ViT of **4 blocks of width 64** (4 heads) on
# the 28-px images replicated to 3 channels, cut into **7×7 patches of 4 px** plus a class token.
#
# > **What comes from the paper, and what is ours.** The paper's exact layer equations and tables
# > are *not available* to this project; `mkviz` implements a documented **reconstruction**
# > ([`docs/design.md`](../docs/design.md) §2, notebook 01). The models here are ours (a 4-block ViT of width 64 on
# > Fashion-MNIST, `data/README.md`); their accuracies are **not the paper's numbers** and say
# > nothing about ImageNet.

# %% [markdown]
# ## Before you start
#
# **Learning objectives.** After this notebook you can
#
# - evaluate several checkpoints on the official test set and check the numbers against what each stored;
# - say how large a difference in accuracy must be to mean something, given the sampling error and one seed
#   per model;
# - use `mkviz.ChartCountExplorer` to compare models with 1 to 16 charts;
# - measure how chart similarity changes with the number of charts, and explain the result.
#
# **Prerequisites.** Notebooks 02 (parameter counts) and 04 (chart maps, chart similarity); the binomial
# standard error of an accuracy.
#
# **Time to complete.**
#
# | | |
# |---|---|
# | reading, the code and trying the explorer | about 25 min |
# | the 2 exercises (✎) | about 10 min |
# | Run All at the default scale (all 10,000 test images), 2-core CPU | 1 min 13 s (measured 2026-12-04: one torch thread, 2 cores shared with two training runs) |
# | Run All, `MKVIZ_SMALL=1` | 45 s (measured, likewise) |
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
# | `MKVIZ_SMALL` | `0` | `1`: the first 500 test images instead of all 10,000, 4 in the explorer (what the test suite uses; well under a minute) |
# | `MKVIZ_DEVICE` | `cpu` | e.g. `cuda` to run on a GPU |
# | `MKVIZ_SEED` | `0` | torch's global seed (the images are the official test set's) |
# | `MKVIZ_ROOT` | found | the repository root (holding `data/checkpoints`); by default the first folder upwards from here with a `pyproject.toml` |
#
# Nothing is downloaded: the checkpoints ship with the repository and Fashion-MNIST comes from the
# Debian package. Nothing is trained either.

# %%
import math
import os

import numpy as np
import torch
from torch.utils.data import DataLoader

import mkviz
from mkviz import figures
from mkviz.checkpoint import shipped_checkpoints_dir
from mkviz.data import build_dataset
from mkviz.shipped import CHART_SWEEP, checkpoint_dir
from mkviz.checkpoint import load_checkpoint
from mkviz.exercises import check
from mkviz.train import evaluate

SMALL = os.environ.get("MKVIZ_SMALL", "0") == "1"
DEVICE = torch.device(os.environ.get("MKVIZ_DEVICE", "cpu"))
SEED = int(os.environ.get("MKVIZ_SEED", "0"))

# data/checkpoints of this repository (MKVIZ_ROOT overrides)
CHECKPOINTS = (shipped_checkpoints_dir())
COUNTS = tuple(int(name.split("-")[1]) for name in CHART_SWEEP)  # (1, 2, 4, 8, 16)
if SMALL:  # the first 500 test images; the explorer on 4 images (4 classes)
    N_TEST, N_EXPLORE = 500, 4
    # tensors this small gain nothing from threads, and tests share the CPU
    torch.set_num_threads(1)
else:  # the whole official test set the checkpoints were scored on; one image per class
    N_TEST, N_EXPLORE = 10_000, 10
torch.manual_seed(SEED)
print(
    f"mkviz {mkviz.__version__}, torch {torch.__version__}, device {DEVICE}, checkpoints in "
    f"{CHECKPOINTS}"
)

# %% [markdown]
# ## 1. Six models, one recipe
#
# `vanillak-1` … `vanillak-16` and `baseline` were trained by the same `mkviz train` command
# (`mkviz.shipped.train_args("fashion-mnist", name)`: 10 epochs with random flips and 2-px shifts,
# batch 128, AdamW, seed 0; only `--variant` and `--num-charts` differ). Their parameter counts grow
# with $H$: VanillaK adds $H$ chart maps of $C\times C$ per block (notebook 02).

# %%
models, configs = {}, {}
for h in COUNTS:
    models[h], configs[h] = load_checkpoint(
        checkpoint_dir("fashion-mnist", f"vanillak-{h}"), map_location=DEVICE
    )
baseline, base_config = load_checkpoint(
    checkpoint_dir("fashion-mnist", "baseline"), map_location=DEVICE
)
for h, cfg in configs.items():
    assert cfg["model_spec"]["num_charts"] == h and cfg["model_spec"]["variant"] == "vanillak"
print(f"{'model':<12} {'params':>9}")
print(f"{'baseline':<12} {mkviz.count_params(baseline):>9,d}")
for h, m in models.items():
    print(f"{'VanillaK-' + str(h):<12} {mkviz.count_params(m):>9,d}")

# %% [markdown]
# ### ✎ Exercise 6.1 — parameters against charts
#
# The table above grows with $H$. Write the parameter count of VanillaK-$H$ as a function of $H$, starting
# from the baseline's count (`mkviz.count_params(baseline)` is allowed; counting the VanillaK models is not).
# The models have 4 blocks of width $C = 64$.

# %%
# ✎ exercise 06.params-vs-charts
def vanillak_model_params(h: int) -> int:
    """Parameters of the shipped VanillaK-h model."""
    return None  # your code


# %%
check("06.params-vs-charts", vanillak_model_params, models=models)

# %% [markdown]
# ## 2. Accuracy on held-out images
#
# The official **test** set shares no image with the training or validation images.
# `build_dataset("fashion-mnist", split="test", model=...)` replicates the grey images to 3
# channels and normalises them with the model's own timm data config, as in training;
# `mkviz.train.evaluate` returns the mean loss and the accuracy. Each checkpoint's `config.json`
# stores the accuracy it reached on all 10,000 test images at the end of training
# (`metrics.test.acc`). In default mode we measure on the same 10,000 images, so the numbers must
# match; in small mode on the first 500, which must agree within the sampling error of 500 images.

# %%
test = build_dataset(
    "fashion-mnist", split="test", model=baseline, num_samples=N_TEST
)  # the first N_TEST
loader = DataLoader(test, batch_size=500)


def accuracy(model):
    return evaluate(model, loader, DEVICE)["acc"]


accuracies = {h: accuracy(m) for h, m in models.items()}
base_acc = accuracy(baseline)
stored = {
    h: cfg["metrics"]["test"]["acc"] for h, cfg in configs.items()
}  # on all 10,000 test images
base_stored = base_config["metrics"]["test"]["acc"]
print(f"{N_TEST} test images, chance 0.10")
print(f"{'model':<12} {'accuracy':>9} {'errors':>7} {'config.json (10,000 images)':>28}")
print(
    f"{'baseline':<12} {base_acc:>9.4f} {round((1 - base_acc) * N_TEST):>7d} {base_stored:>28.4f}"
)
for h, a in accuracies.items():
    print(f"{'VanillaK-' + str(h):<12} {a:>9.4f} {round((1 - a) * N_TEST):>7d} {stored[h]:>28.4f}")
pairs = [(base_acc, base_stored)] + [(accuracies[h], stored[h]) for h in COUNTS]
if N_TEST == 10_000:  # all of the official test set: the images the checkpoints were scored on
    assert all(abs(a - c) <= 1e-3 for a, c in pairs), pairs
else:  # a sample of them: within 4 binomial standard errors (plus one image)
    assert all(
        abs(a - c) <= 4 * math.sqrt(c * (1 - c) / N_TEST) + 1 / N_TEST for a, c in pairs
    ), pairs

# %% [markdown]
# The figure uses the **stored full-test accuracies** (10,000 images, whatever the mode), so it is
# the same figure in small and default mode.

# %%
figures.accuracy_vs_charts(
    stored,
    baseline=base_stored,
    title="VanillaK: test accuracy against the number of charts (10,000 test images)",
).show()
spread = max(stored.values()) - min(stored.values())
p_mid = sum(stored.values()) / len(stored)
sampling = math.sqrt(p_mid * (1 - p_mid) / 10_000)
print(
    f"spread over H (max - min): {spread:.4f}; baseline minus best VanillaK: "
    f"{base_stored - max(stored.values()):+.4f}; "
    f"sampling error of one accuracy on 10,000 images: ±{sampling:.4f}"
)

# %% [markdown]
# ### ✎ Exercise 6.2 — a difference, or noise?
#
# Read the figure and the line printed under it: is the spread of the VanillaK accuracies over $H$ (max − min)
# **larger than two sampling errors** of one accuracy on 10,000 images? Answer `True` or `False`, then read the
# paragraph below.

# %%
# ✎ exercise 06.spread-vs-noise
answer = None  # your code: True or False

# %%
check("06.spread-vs-noise", answer, accuracies=stored)

# %% [markdown]
# **Reading this honestly.** The sampling error printed above is how much an accuracy on 10,000
# images would move on another 10,000 images of the same kind: differences within two or three of
# it are not differences. Larger ones are real *for these particular runs*, but there is **one
# training seed per model**, so the seed-to-seed spread is unmeasured, and for models this small
# it is commonly as large as the sampling error or larger. Look at the curve for a **trend** in
# $H$ before believing any single step, and compare it with the dashed baseline. Nothing here tests
# the paper's claim (+0.87 top-1 on ImageNet for ViT-B with 8 charts). It also fits notebook 02:
# at kernel size 1, VanillaK is a re-parameterisation of the plain ViT, so any difference comes
# from training dynamics (and from the extra parameters' weight decay and initial scale,
# [`docs/design.md`](../docs/design.md) §7), not from a larger function class. A real comparison
# needs several seeds and matched budgets (notebook 03 shows how to run one on a GPU).

# %% [markdown]
# ## 3. The chart-count explorer
#
# `ChartCountExplorer.from_dataset({H: model_H}, dataset, indices, accuracies=..., baseline=...)`
# records each model once per image. The **charts H** slider switches between the models; the
# other controls are those of notebook 04 (image, layer, head, query patch, similarity measure,
# shared colour scale; or click a patch in any panel). The maps panel shows the fused map and the
# model's $H$ charts on a grid sized for them; the similarity matrix is $H\times H$; the accuracy
# plot (the stored full-test accuracies) marks the current $H$. The images are the first test
# image of each class; it starts at $H = 8$ on the last layer, with the query on the centre
# patch (3, 3), which lies on the garment (Fashion-MNIST articles are centred).

# %%
first_of_class = {}
for i, label in enumerate(test.labels.tolist()):
    first_of_class.setdefault(label, i)
explore = [first_of_class[c] for c in sorted(first_of_class)][
    :N_EXPLORE
]  # test indices, one per class
print("explorer images:", [(i, test.class_names[int(test.labels[i])]) for i in explore])
ex = mkviz.ChartCountExplorer.from_dataset(
    models,
    test,
    indices=explore,
    accuracies=stored,
    baseline=base_stored,
    charts=8,
    layer=-1,
    query=(3, 3),
)
ex

# %% [markdown]
# To look at it without a kernel, `ex.save_html(path)` writes the explorer as one self-contained HTML
# file (every model's maps embedded, with plotly.js): it opens in any browser, with no kernel and no
# network, and its chart-count slider switches models there too.

# %%
page = ex.save_html("chart_count_explorer.html", overwrite=True)
print(f"{page}: {page.stat().st_size / 2**20:.1f} MiB, opens in any browser")

# %% [markdown]
# Move the slider and the panels follow: with $H = 1$ the single chart *is* the fused key; with
# more charts, the charts of these VanillaK models look very much like the fused map and like
# each other. We check, in code, that the slider really switches model: for every $H$, the
# number of visible chart panels, the size of the similarity matrix, and the drawn maps against
# `mkviz.record_attention` on that model.

# %%
image_i = min(1, N_EXPLORE - 1)
ex.image_slider.value = image_i
layer, query = ex.layer, (3, 2)
ex.row_slider.value, ex.col_slider.value = query
worst = 0.0
for h, m in models.items():
    ex.charts_slider.value = h
    with torch.no_grad(), mkviz.record_attention(m, layers=[layer], to_cpu=True) as rec:
        m(test.batch([explore[image_i]]).image.to(DEVICE))  # (1, 3, 28, 28)
    drawn = [np.asarray(t.z) for t in ex.heat_traces[: h + 1]]  # fused + h charts, each (7, 7)
    expected = [rec.image_map(layer, query)] + [
        rec.image_map(layer, query, chart=c) for c in range(h)
    ]
    worst = max(worst, max(float(np.abs(d - e.numpy()).max()) for d, e in zip(drawn, expected)))
    assert ex.visible_chart_panels() == h
    assert np.asarray(ex.similarity_figure.data[0].z).shape == (h, h)
print(
    f"H in {COUNTS}: visible panels and similarity size follow the slider; "
    f"max |figure - record_attention| = {worst:.1e}"
)
assert worst < 1e-5
ex.charts_slider.value = 8
print(f"query-slider update latency at H = 8: {ex.update_latency_ms(n=10):.1f} ms")

# %% [markdown]
# ## 4. Chart similarity against the number of charts
#
# How alike are the charts of each model? For every layer we take the chart keys of a batch of
# test images and average the off-diagonal **cosine similarity** of the $H\times H$ matrix (1:
# the charts are copies; 0: unrelated). $H = 1$ has no pair of charts to compare. A static
# figure of the $H = 16$ matrix shows the pattern in one picture.

# %%
imgs = test.batch(range(32)).image.to(DEVICE)  # (32, 3, 28, 28)
mean_cos = {}
for h, m in models.items():
    if h == 1:
        continue
    with torch.no_grad(), mkviz.record_attention(m, to_cpu=True) as rec:
        m(imgs)
    off = ~torch.eye(h, dtype=torch.bool)  # off-diagonal of (h, h)
    mean_cos[h] = {
        name: rec.chart_similarity(name, "cosine")[off].mean().item() for name in rec.layers
    }
    last_sim = rec.chart_similarity(rec.layers[-1], "cosine")
print(f"{'H':>3} " + " ".join(f"{name:>14}" for name in rec.layers))
for h, row in mean_cos.items():
    print(f"{h:>3} " + " ".join(f"{v:>14.3f}" for v in row.values()))
figures.similarity_heatmap(
    last_sim,
    "cosine",
    annotate=False,
    title=f"VanillaK-16: cosine similarity of the chart keys, {rec.layers[-1]}",
).show()
assert all(0.9 < v <= 1.0 + 1e-6 for row in mean_cos.values() for v in row.values())

# %% [markdown]
# At every $H$ the charts stay near-copies (mean cosine well above 0.9 in every layer). Notebook 04
# discusses why ([`docs/design.md`](../docs/design.md) §3.1): under VanillaK's mean fusion every
# chart receives the same gradient with respect to its key, so identical charts stay identical; small
# differences can grow or shrink with that shared gradient, and on Fashion-MNIST they shrink relative to
# the shared part of the key. More charts therefore mostly mean more parameters
# doing the same thing, on Fashion-MNIST and with this training. Variants whose fusion treats
# charts differently (SimpleK's learned fusion, KUA's per-token membership; notebook 04 shows them
# side by side) may behave otherwise: point the explorer at your own checkpoints
# (`mkviz train ... --variant kua --num-charts H`, notebook 03) to find out.
#
# ## Summary
#
# - Accuracy on the official Fashion-MNIST test set, measured here and checked against each
#   checkpoint's stored full-test accuracy, is plotted against $H$ with the baseline; with one
#   training seed per model, differences of a few times the sampling error cannot be told from
#   seed-to-seed noise, and none of these are the paper's numbers.
# - `ChartCountExplorer` switches models with a slider and redraws the fused map, the $H$ chart
#   maps and the $H\times H$ similarity (checked against `record_attention` for every $H$).
# - VanillaK's charts stay near-copies at every $H$ (mean off-diagonal cosine well above 0.9): under a
#   mean fusion every chart gets the same key gradient, so identical charts stay identical, while small
#   differences can grow or shrink; on this data they shrink.
#   [`docs/chart_specialisation.md`](../docs/chart_specialisation.md) argues this and measures, over
#   training, how far charts of each variant moved apart or together.
#
# **Next, 07:** relevance, faithfulness and the key atlas: which patches made the model predict
# its class, and which map to believe.
