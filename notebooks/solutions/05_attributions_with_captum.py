# %% [markdown]
# # Solutions to the exercises of notebook 05
#
# Each cell replaces the exercise cell of `notebooks/05_attributions_with_captum.py` that starts with the
# same `# ✎ exercise` line (`tests/test_exercises.py` runs them; every check must pass).

# %%
# ✎ exercise 05.read-attribution
# (7, 7), the figure's first row, last column
grid = attn_attr["vanillak-8"][0]
answer = divmod(int(grid.argmax()), grid.shape[1])           # (row, col)

# %%
# ✎ exercise 05.pixel-share
magnitude = ig["baseline"][0].abs().sum(0)                   # (3, 28, 28) -> (28, 28)
answer = ((magnitude * mask[0]).sum() / magnitude.sum()).item()
print(f"share {answer:.3f} against chance {mask[0].mean().item():.3f}")
