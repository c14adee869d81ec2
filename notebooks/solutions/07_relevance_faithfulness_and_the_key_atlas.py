# %% [markdown]
# # Solutions to the exercises of notebook 07
#
# Each cell replaces the exercise cell of `notebooks/07_relevance_faithfulness_and_the_key_atlas.py` that starts
# with the same `# ✎ exercise` line (`tests/test_exercises.py` runs them; every check must pass).

# %%
# ✎ exercise 07.identical-charts
# Prediction: 0 up to float rounding. With φ_c = I every chart's map is the fused map, so the
# gradient-weighted
# maps, and the relevances rolled from them, are the same for every chart.
per_chart_identical = mkviz.class_relevance(identical, x, charts=True)   # (B, 8, 49)
fused_identical = mkviz.class_relevance(identical, x)                    # (B, 49)
answer = (per_chart_identical - fused_identical[:, None]).abs().max().item()

# %%
# ✎ exercise 07.deletion-auc
# (S,) the share of patches changed per step
widths = fractions[1:] - fractions[:-1]
# (S,) the mean probability over each step
heights = (curve[1:] + curve[:-1]) / 2
answer = (widths * heights).sum().item()
