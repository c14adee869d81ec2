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
# # 03 — Fine-tuning: the baseline into a manifold key
#
# *Part 3 of 8 of the `mkviz` course.* 01 the math of charts and the manifold key ·
# 02 the four variants side by side · 03 fine-tuning · 04 what each chart attends to ·
# 05 attributions · 06 chart count and chart similarity · 07 relevance, faithfulness and the key atlas ·
# 08 beyond classification.
#
# Notebook 02 ended on a warning: at kernel size 1 the manifold key is a re-parameterisation of
# a plain ViT, so any gain must come from *training*. This notebook trains, on the data of
# notebooks 04–07 (Fashion-MNIST), starting from the shipped baseline checkpoint:
#
# 1. converts the baseline **function-preservingly** into VanillaK-8 (`mkviz.convert`) and checks
#    that both give the same outputs at step 0;
# 2. takes **one training step by hand**: forward, loss, backward, and the optimiser with the
#    parameter groups `mkviz` builds (chart scales undecayed, chart maps decayed towards the
#    identity; `docs/design.md` §7.1), then `optimizer.step()`;
# 3. hands over to `mkviz.training.train(TrainConfig(...))`, which repeats that step, for two
#    **matched** runs from the same baseline with the same schedule: the baseline continued, and
#    the baseline converted to VanillaK-8 (`init_from`);
# 4. compares their curves and results.
#
# > **What comes from the paper, and what is ours.** The paper's exact layer equations and tables
# > are *not available* to this project; `mkviz` implements a documented **reconstruction**
# > ([`docs/design.md`](../docs/design.md) §2, notebook 01). Every number below is produced here,
# > by our code; none is the paper's.

# %% [markdown]
# ## Before you start
#
# **Learning objectives.** After this notebook you can
#
# - convert a trained baseline into a manifold-key model and check that it computes the same function;
# - write one training step of a manifold-key model and say which parameters are decayed, towards
#   what, and why (`build_optimizer`);
# - set up a **matched** comparison (same start, data, optimiser, schedule and seed; only the key
#   differs) with `TrainConfig` and `train`;
# - read training curves and a results table, and say what one short single-seed run can and cannot show;
# - predict a run's number of optimiser steps and a converted model's parameter count.
#
# **Prerequisites.** Notebooks 01 and 02 (especially function-preserving conversion); a training loop with
# AdamW, warm-up and cosine decay; train / validation / test splits.
#
# **Time to complete.**
#
# | | |
# |---|---|
# | reading and the code | about 25 min |
# | the 2 exercises (✎) | about 10 min |
# | Run All at the default (CPU) scale, 2-core CPU | 2 min 5 s (measured 2026-12-04: one torch thread, 2 cores shared with two training runs) |
# | Run All, `MKVIZ_SMALL=1` | 41 s (measured, likewise) |
# | Run All at GPU scale (`MKVIZ_DEVICE=cuda`, ViT-S/16 at 224 px) | 2 min 30 s (measured 2026-12-04 on an H200, the 3-epoch baseline's training included; results: `docs/notebook03_gpu.md`) |
#
# **Exercises** are marked ✎. Write a few lines where a cell says `None  # your code`, then run the check
# cell under it: it prints `✓ PASS`, `✗ FAIL` with what differs and a hint, or `· TODO` while the stub is
# untouched (the notebook still runs top to bottom). The solutions are in `notebooks/solutions/`.

# %% [markdown]
# ## Setup
#
# **Data: Fashion-MNIST**, read from Debian's package `dataset-fashion-mnist`
# (`/usr/share/datasets/fashion-mnist`) through `mkviz`'s dataset registry, with the official split
# as in notebooks 04–07: training images from the 54,000 of the official training set, validation on
# the 6,000 held out of it, test on the official 10,000 (the first `num_eval` of each at the small
# scales, to save time).
#
# | scale | when | start from | data | each of the two runs |
# |---|---|---|---|---|
# | **test** | `MKVIZ_SMALL=1` | the shipped baseline (`fashion` preset: 4 blocks of width 64, 28 px) | 1,024 training images; 128 val / test | 1 epoch, batch 64 (16 steps) |
# | **CPU** | default | the shipped baseline | 8,192 training images; 1,000 val / test | 2 epochs, batch 128 (128 steps) |
# | **GPU** | `MKVIZ_DEVICE=cuda` | a ViT-S/16 baseline trained here first for 3 epochs (timm's pretrained weights with `MKVIZ_PRETRAINED=1`) | Fashion-MNIST upsampled to 224 px, or your ImageFolder | 1 epoch, batch 128, all images |
#
# | variable | default | meaning |
# |---|---|---|
# | `MKVIZ_SMALL` | `0` | `1`: the test scale (what the test suite uses) |
# | `MKVIZ_DEVICE` | `cpu` | `cuda` for the GPU scale |
# | `MKVIZ_SEED` | `0` | seed of the runs (conversion and data order) |
# | `MKVIZ_DATASET` | `fashion-mnist` | GPU scale only: `fashion-mnist` or `imagefolder` |
# | `MKVIZ_DATA_ROOT` | — | the ImageFolder root (`<class>/<image>` or `train/`, `val/`, `test/`) |
# | `MKVIZ_PRETRAINED` | `0` | GPU scale: `1` starts the baseline from timm's ViT-S/16 weights (needs internet once) |
# | `MKVIZ_OUT` | a new temporary folder | where the runs and the results table (`results_table.json`) are written; an existing run there is never overwritten |
# | `MKVIZ_WORKERS` | `8` | GPU scale: data-loading processes (`num_workers`) |
#
# At the test and CPU scales nothing is downloaded and the baseline is not trained again: it is
# the checkpoint in `data/checkpoints/fashion-mnist/baseline`. A GPU run, for example:
#
# ```bash
# MKVIZ_DEVICE=cuda MKVIZ_PRETRAINED=1 MKVIZ_OUT=outputs/notebooks/03 \
#     jupyter nbconvert --execute --to notebook notebooks/03_fine_tuning.ipynb
# ```

# %%
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import mkviz
from mkviz import figures
from mkviz.apps.shipped import checkpoint_dir
from mkviz.core.cost import machine_description
from mkviz.course.exercises import check
from mkviz.data import build_dataset
from mkviz.training import TrainConfig, load_checkpoint, train
from mkviz.training.optim import build_optimizer, decay_anchors

# %% [markdown]
# The environment variables of the table above:

# %%
SMALL = os.environ.get("MKVIZ_SMALL", "0") == "1"
DEVICE = torch.device(os.environ.get("MKVIZ_DEVICE", "cpu"))
SEED = int(os.environ.get("MKVIZ_SEED", "0"))
DATASET = os.environ.get("MKVIZ_DATASET", "fashion-mnist").lower()
DATA_ROOT = os.environ.get("MKVIZ_DATA_ROOT") or None
PRETRAINED = os.environ.get("MKVIZ_PRETRAINED", "0") == "1"
OUT = Path(os.environ.get("MKVIZ_OUT") or tempfile.mkdtemp(prefix="mkviz-03-"))
WORKERS = int(os.environ.get("MKVIZ_WORKERS", "8"))
torch.manual_seed(SEED)
print(f"mkviz {mkviz.__version__}, torch {torch.__version__}, device {DEVICE}; runs go to {OUT}")

# %% [markdown]
# The settings both runs share. Fine-tuning continues from a trained model, so the learning rate
# is a tenth of the baseline's own (3e-3), with the same warm-up, cosine decay, weight decay 0.05
# and label smoothing 0.1 as `make checkpoints`.

# %%
common = dict(seed=SEED, device=str(DEVICE), quiet=True, log_every=1,
              label_smoothing=0.1, weight_decay=0.05, lr=3e-4)

# %% [markdown]
# The scale. At the test and CPU scales the model is the shipped baseline's, and one thread is
# enough: a 0.2 M-parameter model gains little from more, and on a shared CPU they hurt.

# %%
if SMALL:
    SCALE = "test"
    common.update(dataset="fashion-mnist", preset="fashion", num_train=1024, num_eval=128,
                  epochs=1, batch_size=64)
elif DEVICE.type != "cuda":
    SCALE = "CPU"
    common.update(dataset="fashion-mnist", preset="fashion", num_train=8192, num_eval=1000,
                  epochs=2, batch_size=128)
if DEVICE.type != "cuda":
    torch.set_num_threads(1)
    BASELINE = checkpoint_dir("fashion-mnist", "baseline")   # data/checkpoints/fashion-mnist/...
print(f"scale: {SCALE if DEVICE.type != 'cuda' else 'GPU'}")

# %% [markdown]
# The GPU scale (not run by the test suite): a ViT-S/16 at 224 px, on Fashion-MNIST upsampled from
# 28 px (`image_size=224`: the registry resizes it bilinearly, in `WORKERS` loader processes) or on an
# ImageFolder, with bf16 autocast. No shipped checkpoint has this size, so the baseline is trained
# first, by the same `train`, for 3 epochs: short, so that Run All stays a few minutes.

# %%
if DEVICE.type == "cuda":
    SCALE = "GPU"
    common.update(dataset=DATASET, data_root=DATA_ROOT, model="vit_small_patch16_224",
                  image_size=224, epochs=1, batch_size=128, amp=True, num_workers=WORKERS)
    base_cfg = TrainConfig(**{**common, "epochs": 3, "lr": 1e-4 if PRETRAINED else 5e-4},
                           pretrained=PRETRAINED, variant="baseline", out=str(OUT / "baseline"))
    BASELINE = Path(train(base_cfg)["final"])
print(f"starting point: {BASELINE}")

# %% [markdown]
# ## 1. The starting point, converted
#
# `load_checkpoint` rebuilds the timm model from the checkpoint's spec (safetensors and JSON).
# `build_dataset("fashion-mnist", model=model)` normalises the images as the model was trained
# (the timm data config the checkpoint records) and resizes them to the model's input size.

# %%
base_model, base_config = load_checkpoint(BASELINE, map_location=DEVICE)
train_set = build_dataset(DATASET, DATA_ROOT, split="train", model=base_model, seed=SEED)
x, y = next(iter(DataLoader(train_set, batch_size=common["batch_size"], shuffle=True)))
x, y = x.to(DEVICE), y.to(DEVICE)           # x (B, 3, H, W), y (B,)
print(f"baseline test acc {base_config['metrics']['test']['acc']:.4f}; a batch {tuple(x.shape)}")

# %% [markdown]
# `mkviz.convert` replaces each block's key by VanillaK with 8 charts: scales 1, chart maps the
# identity plus a small zero-sum perturbation, fusion the mean. So the converted model computes
# **the same function** (notebook 02): same logits, up to float rounding, on real images.

# %%
model = mkviz.convert(base_model, "vanillak", 8).to(DEVICE)
with torch.no_grad():
    same = (model(x) - base_model(x)).abs().max().item()     # logits (B, 10)
    agree = (model(x).argmax(-1) == base_model(x).argmax(-1)).float().mean().item()
print(f"step 0: max |VanillaK-8 - baseline| = {same:.1e}, same prediction for {agree:.0%}")
assert same < 1e-4 and agree == 1.0

# %% [markdown]
# ## 2. One training step, by hand
#
# **Forward and loss.** Cross-entropy with label smoothing 0.1, as `train` does.

# %%
model.train()
logits = model(x)                                               # (B, 10)
loss = F.cross_entropy(logits, y, label_smoothing=common["label_smoothing"])
print(f"loss before the step: {loss.item():.4f}")

# %% [markdown]
# **Backward.** Every parameter gets a gradient, the new ones of the key included: the chart
# scales `key.scale` $(H, C)$ and the chart maps `key.chart_maps.weight` $(H \cdot C, C, 1)$.

# %%
model.zero_grad(set_to_none=True)
loss.backward()
key = model.blocks[0].attn.key
print("block 0 key:", {n: tuple(p.grad.shape) for n, p in key.named_parameters()})
grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)   # train's grad_clip
print(f"global gradient norm {grad_norm:.3f} (clipped to 1.0)")

# %% [markdown]
# **The optimiser's parameter groups.** `mkviz.training.optim.build_optimizer` is what `train`
# calls. It returns AdamW with three groups and `AnchoredDecay`, the decay of group 2 towards its
# anchors (`docs/design.md` §7.1):
#
# - group 0, decayed towards 0 by AdamW itself: matrices such as `qkv`, `proj`, the MLP;
# - group 1, not decayed: biases, norms, 1-D parameters and the **chart scales**, which start at 1
#   and multiply whole channels (decaying them would shrink the key);
# - group 2, decayed **towards the identity**: the chart maps $\varphi_c = I + \delta_c$, so the
#   decay shrinks the deviation $\delta_c$ from the function-preserving point, not the map.

# %%
lr, wd = common["lr"], common["weight_decay"]
optimizer, anchored = build_optimizer(model, lr=lr, weight_decay=wd)
names = {id(p): n for n, p in model.named_parameters()}
anchor_of = {"0": "0 (AdamW's own decay)", "1": "none", "2": "the identity (AnchoredDecay)"}
for i, group in enumerate(optimizer.param_groups):
    params = group["params"]
    decay = anchored.weight_decay if i == 2 else group["weight_decay"]
    example = sorted({names[id(p)].split(".", 2)[-1] for p in params})[:4]
    print(f"group {i}: {len(params):2d} tensors, {sum(p.numel() for p in params):7d} values, "
          f"weight decay {decay}, anchor {anchor_of[str(i)]}; e.g. {example}")

# %% [markdown]
# The anchor of a chart map is the identity at the kernel's centre tap, chart by chart
# (`decay_anchors`):

# %%
anchor = decay_anchors(model)["blocks.0.attn.key.chart_maps.weight"]   # (H·C, C, 1)
H, C = key.num_charts, key.key_dim
per_chart = anchor.reshape(H, C, C)                    # (H·C, C, 1) -> (H, C, C)
print(f"anchor {tuple(anchor.shape)}: every chart's is I_{C}:",
      bool((per_chart == torch.eye(C, device=per_chart.device)).all()))

# %% [markdown]
# **The step.** `anchored.apply(lr)` moves group 2 by $-\eta\lambda(\varphi_c - I)$ right before
# `optimizer.step()`, where AdamW applies its own decay to group 0 and the Adam update to all.
# The loss on the same batch goes down.

# %%
def deviation(block_key):
    """‖φ − I‖ over all charts, and ‖s − 1‖ of the scales, of one block's key."""
    phi = block_key.chart_maps.weight.detach().reshape(H, C, C)   # (H·C, C, 1) -> (H, C, C)
    eye = torch.eye(C, device=phi.device)                         # on the model's device
    return (phi - eye).norm().item(), (block_key.scale.detach() - 1).norm().item()


before = deviation(key)
anchored.apply(lr)
optimizer.step()
with torch.no_grad():
    after_loss = F.cross_entropy(model(x), y, label_smoothing=common["label_smoothing"]).item()
print(f"loss {loss.item():.4f} -> {after_loss:.4f}")
print("block 0: ‖φ − I‖ {:.4f} -> {:.4f}, ‖s − 1‖ {:.4f} -> {:.4f}".format(
    before[0], deviation(key)[0], before[1], deviation(key)[1]))

# %% [markdown]
# That is the whole of a training step; `train` adds the learning-rate schedule (linear warm-up,
# then cosine), a data order fixed by the seed, evaluation, checkpoints and resuming.

# %% [markdown]
# ## 3. Two matched runs with `train`
#
# Both runs start from the same baseline checkpoint (`init_from`) with the same `TrainConfig`;
# only `variant` differs. With `variant="baseline"` the baseline simply continues; with
# `variant="vanillak"` it is converted as in section 1 before the first step. `train` returns the
# per-epoch `history`, the final `val`/`test` metrics and the trained `model`, and writes
# checkpoints (`safetensors` + JSON) into `out`; with `log_every=1` it also logs every step's loss
# to `steps.jsonl`.

# %%
runs = {"baseline, continued": dict(variant="baseline"),
        "baseline → VanillaK-8": dict(variant="vanillak", num_charts=8)}
results = {}
for name, extra in runs.items():
    out = OUT / name.replace(" ", "").replace(",", "-").replace("→", "-to-")
    cfg = TrainConfig(**common, **extra, init_from=str(BASELINE), out=str(out))
    start = time.perf_counter()
    results[name] = r = train(cfg)
    r["wall"] = time.perf_counter() - start
    print(f"{name:<22} {r['step']:>4} steps in {r['wall']:5.1f} s: "
          f"val acc {r['val']['acc']:.3f}, test acc {r['test']['acc']:.3f}")

# %% [markdown]
# ## 4. Curves and results
#
# The loss of every step, from `steps.jsonl`: `figures.training_curves` draws one line per run.

# %%
step_losses = {name: [json.loads(line)["loss"]
                      for line in Path(r["out"], "steps.jsonl").read_text().splitlines()]
               for name, r in results.items()}
figures.training_curves({name: {"train_loss": losses} for name, losses in step_losses.items()},
                        title=f"fine-tuning from the baseline, per step ({SCALE} scale)").show()

# %%
start_acc = base_config["metrics"]["test"]["acc"]   # on all 10,000 test images
rows = []
for name, r in results.items():
    losses = step_losses[name]
    k = max(1, len(losses) // 4)
    rows.append({"run": name, "params": mkviz.count_params(r["model"]), "steps": r["step"],
                 "loss, first ¼": sum(losses[:k]) / k, "loss, last ¼": sum(losses[-k:]) / k,
                 "val acc": r["val"]["acc"], "test acc": r["test"]["acc"], "time (s)": r["wall"]})
    assert r["test"]["acc"] > start_acc - 0.1, f"{name}: fine-tuning lost the baseline's accuracy"
    for f in ("final/model.safetensors", "final/config.json", "metrics.jsonl", "results.json"):
        assert Path(r["out"], f).is_file(), f"{name}: {f} was not written"
figures.cost_table_figure(rows, title=f"results ({SCALE} scale, seed {SEED}, one run each)").show()
for row in rows:
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})

# %% [markdown]
# The table is also saved beside the runs, with what it was measured on, so that a report can be
# made from it without re-running (`python -m mkviz.course.notebook_runs` turns it into a page).

# %%
table = {"notebook": "03_fine_tuning", "scale": SCALE, "seed": SEED, "settings": common,
         "start_test_acc": start_acc, "machine": machine_description(), "rows": rows}
(OUT / "results_table.json").write_text(json.dumps(table, indent=1, default=str) + "\n")
print(f"wrote {OUT / 'results_table.json'}")

# %% [markdown]
# **How to read this.** Both runs start at the baseline's accuracy and loss; neither starts from
# scratch. One seed per run, and at the test and CPU scales a short run evaluated on a subset, so
# the difference between the rows includes noise of unknown size: it says how fine-tuning
# *starts*, not which key is better. For a comparison worth reporting, run several seeds
# (`MKVIZ_SEED`) longer and compare means with their spread (notebook 06 does this for the chart
# count). Also compare cost: VanillaK-8 has more parameters while training (notebook 02), but
# folds back to the baseline's size for inference (`mkviz.fold`).

# %% [markdown]
# ### ✎ Exercise 3.1 — how many steps?
#
# Each run above reports its number of optimiser steps. Write the rule that gives it from the number of
# training images, the batch size and the number of epochs (the scale table at the top: 1,024 images
# at batch 64 for 1 epoch make 16 steps). The check compares your function with the runs of this
# notebook and with other settings.

# %%
# ✎ exercise 03.steps
def optimiser_steps(num_train: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps of a run with these settings (one GPU or CPU process)."""
    return None  # your code


# %%
n, b, e = common.get("num_train"), common["batch_size"], common["epochs"]
observed = (
    [(n, b, e, r["step"]) for r in results.values()] if n else []
)  # (images, batch, epochs, steps)
check("03.steps", optimiser_steps, runs=observed)

# %% [markdown]
# ### ✎ Exercise 3.2 — what does the conversion cost?
#
# The second run is the baseline converted to VanillaK with 8 charts. Without counting parameters in
# code, derive how many parameters the conversion added (notebook 02, section 1 has the per-block formula;
# the cell below prints the depth and width), and write the number.

# %%
vk8 = results["baseline → VanillaK-8"]["model"]
print(f"baseline: {len(base_model.blocks)} blocks of width C = {base_model.embed_dim}")

# %%
# ✎ exercise 03.extra-params
answer = None  # your code: an int, the parameters VanillaK-8 adds to this baseline

# %%
check("03.extra-params", answer, baseline=base_model, manifold=vk8)

# %% [markdown]
# The fine-tuned model's checkpoint (`final/`) loads with `mkviz.load_checkpoint` into a
# manifold-key model that notebooks 04–07 can explore, and `mkviz.fold` turns it back into a plain
# timm ViT for deployment.
#
# ## Summary
#
# - `mkviz.convert` (and `init_from` in `TrainConfig`) turns a trained baseline into a manifold key
#   that computes the same function at step 0.
# - A training step of a manifold-key model is an ordinary one, except for the optimiser's groups:
#   chart scales undecayed, chart maps decayed towards the identity (`build_optimizer`).
# - `train(TrainConfig(...))` runs matched comparisons and writes resumable, pickle-free checkpoints;
#   the same notebook runs at test, CPU and GPU scale.
# - Short single-seed runs show fine-tuning working, not which key is better.
#
# **Next, 04:** what each chart attends to, on the shipped VanillaK-8 checkpoint.
