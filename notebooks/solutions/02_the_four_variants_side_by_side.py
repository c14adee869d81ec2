# %% [markdown]
# # Solutions to the exercises of notebook 02
#
# Each cell replaces the exercise cell of `notebooks/02_the_four_variants_side_by_side.py` that starts with
# the same `# ✎ exercise` line (`tests/test_exercises.py` runs them; every check must pass).

# %%
# ✎ exercise 02.zero-sum
# (H, C, C): the projection onto Σ_c δ_c = 0
answer = delta_random - delta_random.mean(0, keepdim=True)

# %%
# ✎ exercise 02.fold-by-hand
key = trained["vanillak"].blocks[0].attn.key                 # block 0's ManifoldKey
phi = key.chart_maps.weight.view(H, C, C)                    # (H·C, C, 1) -> (H, C, C): φ_c
beta = key.chart_maps.bias.view(H, C)                        # (H, C): β_c
s = key.scale                                                # (H, C): s_c
# mean_c φ_c diag(s_c) W_k, (C, C)
W_eff = (phi * s[:, None, :]).matmul(key.base.weight).mean(0)
# mean_c φ_c (s_c ⊙ b_k) + β_c, (C,)
b_eff = (torch.einsum("hoi,hi->ho", phi, s * key.base.bias) + beta).mean(0)
answer = (W_eff, b_eff)
