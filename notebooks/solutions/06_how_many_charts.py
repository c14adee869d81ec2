# %% [markdown]
# # Solutions to the exercises of notebook 06
#
# Each cell replaces the exercise cell of `notebooks/06_how_many_charts.py` that starts with the same
# `# ✎ exercise` line (`tests/test_exercises.py` runs them; every check must pass).

# %%
# ✎ exercise 06.params-vs-charts
def vanillak_model_params(h: int) -> int:
    """Parameters of the shipped VanillaK-h model."""
    depth, C = 4, 64
    # chart maps, their biases, scales
    return mkviz.count_params(baseline) + depth * (h * C * C + 2 * h * C)


# %%
# ✎ exercise 06.spread-vs-noise
# `spread` and `sampling` were printed under the figure
answer = bool(spread > 2 * sampling)
