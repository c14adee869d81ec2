# %% [markdown]
# # Solutions to the exercises of notebook 01
#
# Each cell replaces the exercise cell of `notebooks/01_charts_and_the_manifold_key.py` that starts with the
# same `# ✎ exercise` line. `tests/test_exercises.py` runs the notebook with these cells in place and requires
# every check to pass; `python -m mkviz.grading --solutions notebooks/01_charts_and_the_manifold_key.ipynb`
# does the same by hand.

# %%
# ✎ exercise 01.vanillak-params
def vanillak_params(C: int, H: int) -> int:
    """Parameters of mkviz.ManifoldKey(C, C, variant="vanillak", num_charts=H)."""
    base = C * C + C                 # the base key: W_k (C, C) and b_k (C,)
    scales = H * C                   # s (H, C)
    # Conv1d(H·C, H·C, 1, groups=H): weight (H·C, C, 1), bias (H·C,)
    chart_maps = H * C * C + H * C
    return base + scales + chart_maps


# %%
# ✎ exercise 01.spatialk-one-matmul
W = spatial.chart_maps.weight.view(H, C, C)                  # (H·C, C, 1) -> (H, C_out, C_in): W_c
s = spatial.scale                                            # (H, C)
W_eff = (s[:, :, None] * W).mean(0)                          # mean_c diag(s_c) W_c, (C, C)
b_eff = (s * spatial.chart_maps.bias.view(H, C)).mean(0)     # mean_c s_c ⊙ b_c, (C,)
answer = x @ W_eff.T + b_eff                                 # (B, N, C)
