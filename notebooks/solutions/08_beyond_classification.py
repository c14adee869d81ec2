# %% [markdown]
# # Solutions to the exercises of notebook 08
#
# Each cell replaces the exercise cell of `notebooks/08_beyond_classification.py` that starts with the same
# `# ✎ exercise` line (`tests/test_exercises.py` runs them; every check must pass).

# %%
# ✎ exercise 08.anchor-count
# one anchor per aspect ratio at every location of every level:
# 16x16 + 8x8 + 4x4 + 2x2 = 340 locations
locations = sum(m.shape[-2] * m.shape[-1] for m in levels.values())
answer = locations * len(ASPECT_RATIOS)  # 1,020 (most of them on p2, 16 px anchors)

# %%
# ✎ exercise 08.chance-shares
scene_masks = masks[0]  # (K, 64, 64) uint8: the first scene's instance masks
articles = scene_masks.bool()
per_article = []
for k in range(len(articles)):
    same = articles[k]  # (64, 64)
    other = articles[torch.arange(len(articles)) != k].any(0)  # the masks are disjoint
    background = ~articles.any(0)
    # (3, 64): each region's coverage of each of the 8x8 patches
    coverage = torch.stack([metrics.patch_coverage(m, (8, 8)) for m in (same, other, background)])
    if (coverage[0] >= 0.5).any():  # the article has a query patch
        per_article.append(coverage.mean(1))  # uniform attention over the 64 patches: (3,)
mean = torch.stack(per_article).mean(0)  # (3,)
answer = dict(zip(REGIONS, mean.tolist()))
