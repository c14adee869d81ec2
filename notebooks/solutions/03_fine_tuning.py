# %% [markdown]
# # Solutions to the exercises of notebook 03
#
# Each cell replaces the exercise cell of `notebooks/03_fine_tuning.py` that starts with the same
# `# ✎ exercise` line (`tests/test_exercises.py` runs them; every check must pass).

# %%
# ✎ exercise 03.steps
def optimiser_steps(num_train: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps of a run with these settings (one GPU or CPU process)."""
    # the last, incomplete batch of each epoch is dropped
    return epochs * (num_train // batch_size)


# %%
# ✎ exercise 03.extra-params
depth, width, charts = len(base_model.blocks), base_model.embed_dim, 8   # fashion preset: 4 × 64
# per block: H·C² (chart maps) + H·C (their biases) + H·C (scales)
answer = depth * (charts * width * width + 2 * charts * width)
