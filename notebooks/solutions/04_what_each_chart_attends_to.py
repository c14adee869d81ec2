# %% [markdown]
# # Solutions to the exercises of notebook 04
#
# Each cell replaces the exercise cell of `notebooks/04_what_each_chart_attends_to.py` that starts with the
# same `# ✎ exercise` line (`tests/test_exercises.py` runs them; every check must pass). A figure-reading
# exercise has no code answer; the solution reads the same numbers the figure draws.

# %%
# ✎ exercise 04.read-the-map
# fused: (7, 7), the first panel of the figure
row, col = divmod(int(fused.argmax()), fused.shape[1])
answer = (row, col)

# %%
# ✎ exercise 04.chart-cosine
import torch.nn.functional as F

chart_keys = rec.chart_keys[layer]                          # (B, H, N, C), here B = 1
Hc = chart_keys.shape[1]
cos = F.cosine_similarity(chart_keys[:, :, None], chart_keys[:, None, :], dim=-1)   # (B, H, H, N)
sim = cos.mean(dim=(0, 3))                                  # mean over images and tokens: (H, H)
answer = sim[~torch.eye(Hc, dtype=torch.bool)].mean().item()
