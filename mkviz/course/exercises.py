"""Checked exercises for the course notebooks.

Every exercise in `notebooks/0*.py` is a stub cell (`answer = None  # your code`) followed by a check cell:

    from mkviz.exercises import check
    check("01.vanillak-params", vanillak_params, C=C, H=H)

`check(name, answer, **given)` prints one line and never raises:

    ✓ PASS 01.vanillak-params: ...               the answer is right
    ✗ FAIL 01.vanillak-params: ... Hint: ...     what differs, and a hint
    · TODO 01.vanillak-params: not attempted yet  the stub still holds None

`given` holds what the notebook computed (a model, a tensor); the reference answer is derived from it here,
so the check cells do not give the solution away. `results()` returns the status of every check run in this
Python process (instructors: `python -m mkviz.grading` runs a notebook and prints them). The solutions live
in `notebooks/solutions/`; `tests/test_exercises.py` runs them and requires every check to pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional
from ..core.cost import count_params
from ..core.key import ManifoldKey
from ..explain.metrics import chart_cosine_similarity
from ..explain.relevance import class_relevance
from ..explain.scene_attention import REGIONS, scene_attention_shares
from ..training.inputs import EpochBatchSampler
import torch
from torchvision.models.detection.image_list import ImageList

__all__ = ["EXERCISES", "CheckResult", "Exercise", "check", "results", "reset"]

PASS, FAIL, TODO = "pass", "fail", "not attempted"
_MARKS = {PASS: "✓ PASS", FAIL: "✗ FAIL", TODO: "· TODO"}


@dataclass(frozen=True)
class Exercise:
    """One exercise: `verify(answer, **given)` returns None when the answer is right, else what is wrong."""

    name: str
    task: str
    hint: str
    verify: Callable[..., Optional[str]]


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str       # "pass", "fail" or "not attempted"
    message: str

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def line(self) -> str:
        return f"{_MARKS[self.status]} {self.name}: {self.message}"


EXERCISES: dict[str, Exercise] = {}
_RESULTS: dict[str, CheckResult] = {}


def _exercise(name: str, task: str, hint: str) -> Callable[[Callable[..., Optional[str]]], Callable[..., Optional[str]]]:
    def register(verify: Callable[..., Optional[str]]) -> Callable[..., Optional[str]]:
        EXERCISES[name] = Exercise(name, task, hint, verify)
        return verify
    return register


def _unanswered(answer: Any) -> bool:
    """The stub's None, or a stub function whose body still returns None."""
    if answer is None:
        return True
    code = getattr(answer, "__code__", None)
    if code is not None and code.co_argcount in _PROBE_ARGS:
        try:
            return answer(*_PROBE_ARGS[code.co_argcount]) is None
        except Exception:  # noqa: BLE001 - a half-written function is an attempt: verify reports its error
            return False
    return False


_PROBE_ARGS = {1: (2,), 2: (8, 2), 3: (128, 16, 2)}   # sample arguments for stub functions of 1, 2, 3 arguments


def check(name: str, answer: Any, **given: Any) -> None:
    """Check `answer` to exercise `name` against what the notebook computed (`given`); print one line."""
    if name not in EXERCISES:
        raise ValueError(f"`name` must be one of {sorted(EXERCISES)}, got {name!r}")
    ex = EXERCISES[name]
    if _unanswered(answer):
        result = CheckResult(name, TODO, f"not attempted yet: replace the None in the cell above ({ex.task}).")
    else:
        try:
            problem = ex.verify(answer, **given)
        except Exception as err:  # noqa: BLE001 - a wrong answer of the wrong type is a failed check, not a crash
            problem = f"checking your answer raised {type(err).__name__}: {err}"
        result = CheckResult(name, PASS, f"correct ({ex.task}).") if problem is None else \
            CheckResult(name, FAIL, f"{problem} Hint: {ex.hint}")
    _RESULTS[name] = result
    print(result.line())


def results() -> dict[str, str]:
    """{exercise name: "pass" | "fail" | "not attempted"} for every check run in this process."""
    return {name: r.status for name, r in _RESULTS.items()}


def reset() -> None:
    """Forget the results recorded so far."""
    _RESULTS.clear()


# --------------------------------------------------------------------------- comparison helpers
def _tensor_problem(answer: Any, expected: Any, what: str, atol: float = 1e-5, rtol: float = 1e-4) -> Optional[str]:
    """None if `answer` is a tensor of `expected`'s shape and values, else what differs."""

    if not isinstance(answer, torch.Tensor):
        return f"{what} should be a torch.Tensor, got {type(answer).__name__}."
    if tuple(answer.shape) != tuple(expected.shape):
        return f"{what} has shape {tuple(answer.shape)}, expected {tuple(expected.shape)}."
    diff = (answer.detach().to(expected.dtype) - expected.detach()).abs().max().item()
    scale = expected.detach().abs().max().item()
    if diff > atol + rtol * scale:
        return f"{what} has the right shape but differs by up to {diff:.2e} (values up to {scale:.2e})."
    return None


def _number_problem(answer: Any, expected: float, what: str, tol: float = 1e-4) -> Optional[str]:
    if isinstance(answer, bool) or not isinstance(answer, (int, float)) and not hasattr(answer, "item"):
        return f"{what} should be a number, got {type(answer).__name__}."
    value = float(answer.item() if hasattr(answer, "item") else answer)
    if not math.isfinite(value) or abs(value - expected) > tol * max(1.0, abs(expected)):
        return f"{what} is {value:.6g}; the notebook's tensors give {expected:.6g}."
    return None


def _cell_problem(answer: Any, grid: Any, what: str, share: float = 0.9) -> Optional[str]:
    """None if `answer` = (row, col) is a cell of the 2-D `grid` holding at least `share` of its maximum."""
    if not (isinstance(answer, (tuple, list)) and len(answer) == 2 and all(isinstance(v, int) for v in answer)):
        return f"{what} should be a (row, col) pair of ints, got {answer!r}."
    rows, cols = grid.shape
    r, c = answer
    if not (0 <= r < rows and 0 <= c < cols):
        return f"{what} {answer} lies outside the {rows}x{cols} grid."
    top = float(grid.max())
    if float(grid[r, c]) < share * top:
        return f"{what} {answer} holds {float(grid[r, c]):.3g}, but the map reaches {top:.3g} elsewhere."
    return None


# --------------------------------------------------------------------------- 01 charts and the manifold key
@_exercise("01.vanillak-params", "the parameter count of a VanillaK key as a formula in C and H",
           "count the base key (a C×C weight and a bias), the H scale vectors s_c, and the H chart maps "
           "φ_c (a C×C weight and a bias each).")
def _vanillak_params(answer: Callable[[int, int], int], C: int, H: int) -> Optional[str]:
    for c, h in ((C, H), (8, 1), (16, 3), (48, 8)):
        expected = count_params(ManifoldKey(c, c, variant="vanillak", num_charts=h))
        got = answer(c, h)
        if got != expected:
            return f"for C={c}, H={h} your formula gives {got!r}; the key has {expected} parameters."
    return None


@_exercise("01.spatialk-one-matmul", "SpatialK's fused key as one matmul of x",
           "the charts are K_c = s_c ⊙ (x W_cᵀ + b_c) and K = mean_c K_c, so K = x W_effᵀ + b_eff with "
           "W_eff = mean_c diag(s_c) W_c and b_eff = mean_c s_c ⊙ b_c; chart_maps.weight (H·C, C, 1) -> (H, C, C).")
def _spatialk_one_matmul(answer: Any, key: Any, x: Any) -> Optional[str]:

    with torch.no_grad():
        expected = key(x)                                         # (B, N, C)
    return _tensor_problem(answer, expected, "your fused key")


# --------------------------------------------------------------------------- 02 the four variants
@_exercise("02.zero-sum", "the zero-sum perturbation closest to δ",
           "subtract the mean over the chart dimension (dim 0): what is left sums to zero over the charts.")
def _zero_sum(answer: Any, delta: Any) -> Optional[str]:

    if not isinstance(answer, torch.Tensor) or answer.shape != delta.shape:
        return _tensor_problem(answer, delta, "your δ'")          # says what is wrong with its type or shape
    residual = answer.detach().sum(0).abs().max().item()
    if residual > 1e-5 * max(1.0, delta.abs().max().item()):
        return f"Σ_c δ'_c is not zero (largest entry {residual:.2e}), so the mean key would change."
    return _tensor_problem(answer, delta - delta.mean(0, keepdim=True), "your δ'")


@_exercise("02.fold-by-hand", "VanillaK's effective key matrix and bias (W_k', b_k')",
           "W_k' = mean_c φ_c diag(s_c) W_k and b_k' = mean_c (φ_c (s_c ⊙ b_k) + β_c), with φ_c = "
           "chart_maps.weight.view(H, C, C)[c] and β_c = chart_maps.bias.view(H, C)[c].")
def _fold_by_hand(answer: Any, key: Any) -> Optional[str]:

    if not (isinstance(answer, (tuple, list)) and len(answer) == 2):
        return f"the answer should be a pair (W, b), got {type(answer).__name__}."
    with torch.no_grad():
        weight, bias = key.effective_linear()
    return _tensor_problem(answer[0], weight, "your W_k'") or _tensor_problem(answer[1], bias, "your b_k'")


# --------------------------------------------------------------------------- 03 fine-tuning
@_exercise("03.steps", "the number of optimiser steps of a run",
           "an epoch is num_train // batch_size full batches (the last, incomplete batch is dropped).")
def _steps(answer: Callable[[int, int, int], int], runs: list) -> Optional[str]:
    cases = [tuple(r) for r in runs] + [(n, b, e, e * len(EpochBatchSampler(n, b, 0, 0, 0, 1, 0)))
                                        for n, b, e in ((4000, 64, 10), (8000, 64, 30), (50, 16, 3))]
    for num_train, batch_size, epochs, expected in cases:
        got = answer(num_train, batch_size, epochs)
        if got != expected:
            return f"for {num_train} images, batch {batch_size}, {epochs} epochs you get {got!r}; it is {expected}."
    return None


@_exercise("03.extra-params", "how many parameters VanillaK-8 adds to the trained baseline",
           "notebook 02 §1: VanillaK adds HC² + 2HC parameters per block (H charts, width C); the cell above "
           "prints the number of blocks and C.")
def _extra_params(answer: Any, baseline: Any, manifold: Any) -> Optional[str]:
    expected = count_params(manifold) - count_params(baseline)
    if answer != expected:
        return f"you say {answer!r} extra parameters; the converted model has {expected} more than the baseline."
    return None


# --------------------------------------------------------------------------- 04 what each chart attends to
@_exercise("04.read-the-map", "the patch the fused map attends to most",
           "rows count from the top and columns from the left, both from 0; hover over the fused panel to read "
           "the values (the query patch is outlined in cyan).")
def _read_fused_map(answer: Any, fused: Any) -> Optional[str]:
    return _cell_problem(answer, fused, "the patch")


@_exercise("04.chart-cosine", "the mean off-diagonal cosine similarity of the chart keys",
           "cosine per token along C (torch.nn.functional.cosine_similarity of (B, H, 1, N, C) against "
           "(B, 1, H, N, C) gives (B, H, H, N)), mean over tokens and images, then the mean of the H·(H−1) "
           "off-diagonal entries.")
def _chart_cosine(answer: Any, chart_keys: Any) -> Optional[str]:


    sim = chart_cosine_similarity(chart_keys)                     # (H, H)
    off = ~torch.eye(sim.shape[0], dtype=torch.bool)
    return _number_problem(answer, sim[off].mean().item(), "your mean cosine")


# --------------------------------------------------------------------------- 05 attributions
@_exercise("05.read-attribution", "the patch where the attention attribution peaks",
           "the last column of the side-by-side figure, first row; rows from the top, columns from the left, "
           "both from 0 (hover to read the values).")
def _read_attribution(answer: Any, attribution: Any) -> Optional[str]:
    return _cell_problem(answer, attribution, "the patch")


@_exercise("05.pixel-share", "the share of |IG| inside the silhouette for one image",
           "sum |IG| over the 3 channels to get a (28, 28) magnitude, then (magnitude · mask).sum() / magnitude.sum().")
def _pixel_share(answer: Any, attribution: Any, mask: Any) -> Optional[str]:
    magnitude = attribution.detach().abs().sum(0)                 # (3, 28, 28) -> (28, 28)
    expected = ((magnitude * mask).sum() / magnitude.sum()).item()
    return _number_problem(answer, expected, "your share")


# --------------------------------------------------------------------------- 06 how many charts
@_exercise("06.params-vs-charts", "the parameter count of VanillaK-H as a function of H",
           "start from the baseline's count; each of the 4 blocks (width C = 64) adds HC² + 2HC (notebook 02 §1).")
def _params_vs_charts(answer: Callable[[int], int], models: dict) -> Optional[str]:
    for h, model in models.items():
        expected = count_params(model)
        if answer(h) != expected:
            return f"for H={h} your function gives {answer(h)!r}; VanillaK-{h} has {expected} parameters."
    return None


@_exercise("06.spread-vs-noise", "whether the accuracy spread over H exceeds two sampling errors",
           "compare `spread` (max − min of the stored accuracies) with 2 × `sampling` printed under the figure.")
def _spread_vs_noise(answer: Any, accuracies: dict, num_images: int = 10_000) -> Optional[str]:
    if type(answer).__name__ not in ("bool", "bool_"):   # Python's or numpy's
        return f"the answer should be True or False, got {answer!r}."
    answer = bool(answer)
    values = list(accuracies.values())
    mean = sum(values) / len(values)
    spread, sampling = max(values) - min(values), math.sqrt(mean * (1 - mean) / num_images)
    if answer != (spread > 2 * sampling):
        return f"the spread is {spread:.4f} and two sampling errors are {2 * sampling:.4f}."
    return None


# --------------------------------------------------------------------------- 07 relevance and faithfulness
@_exercise("07.identical-charts", "the largest difference between a chart's relevance and the fused one, "
           "with identical charts",
           "mkviz.class_relevance(model, x, charts=True) gives (B, H, P) and mkviz.class_relevance(model, x) gives "
           "(B, P); subtract the fused one with a chart axis added ([:, None]), then .abs().max().item().")
def _identical_charts(answer: Any, model: Any, x: Any) -> Optional[str]:
    per_chart = class_relevance(model, x, charts=True)            # (B, H, P)
    fused = class_relevance(model, x)                             # (B, P)
    expected = (per_chart - fused[:, None]).abs().max().item()
    return _number_problem(answer, expected, "your largest difference", tol=1e-5)


@_exercise("07.deletion-auc", "the trapezoid-rule area under a deletion curve",
           "sum (f[s+1] − f[s]) · (p[s] + p[s+1]) / 2 over the S steps: (fractions[1:] - fractions[:-1]) and "
           "(curve[1:] + curve[:-1]) / 2; the plain mean of the curve counts its two end points twice.")
def _deletion_auc(answer: Any, curve: Any, fractions: Any) -> Optional[str]:

    expected = torch.trapezoid(curve.double(), fractions.double()).item()
    return _number_problem(answer, expected, "your area", tol=1e-5)


# --------------------------------------------------------------------------- 08 beyond classification
@_exercise("08.anchor-count", "the number of anchors the region proposal network places on one scene",
           "at every location of every pyramid level there is one anchor per aspect ratio: the sum over the "
           "levels of h·w (levels[name].shape[-2:]) times len(ASPECT_RATIOS).")
def _anchor_count(answer: Any, detector: Any, images: Any) -> Optional[str]:
    if isinstance(answer, bool) or not isinstance(answer, int):
        return f"the answer should be an int, got {answer!r}."
    with torch.no_grad():
        features = list(detector.backbone(images).values())       # [(B, C, h, w)] per level
    sizes = [tuple(images.shape[-2:])] * len(images)
    expected = len(detector.rpn.anchor_generator(ImageList(images, sizes), features)[0])   # (A, 4) for image 0
    if answer != expected:
        return f"you say {answer} anchors; the detector's anchor generator places {expected} on one image."
    return None


@_exercise("08.chance-shares", "the chance shares (same article, other articles, background) of one scene",
           "per article k with (patch_coverage(masks[k], (8, 8)) >= 0.5).any(): the mean over the 64 patches of "
           "the coverage of masks[k], of the other masks' union and of ~masks.any(0); then the mean over those "
           "articles.")
def _chance_shares(answer: Any, model: Any, image: Any, masks: Any, layer: str) -> Optional[str]:
    if isinstance(answer, dict):
        if set(answer) != set(REGIONS):
            return f"the answer should have the keys {list(REGIONS)}, got {sorted(answer)}."
        answer = [answer[region] for region in REGIONS]
    if not isinstance(answer, (list, tuple)) or len(answer) != len(REGIONS):
        return f"the answer should be a dict {{{', '.join(map(repr, REGIONS))}: share}}, got {answer!r}."
    chance = scene_attention_shares(model, image[None], [masks], layer)["chance"]
    for region, value in zip(REGIONS, answer):
        problem = _number_problem(value, chance[region], f"your {region!r} share", tol=1e-5)
        if problem:
            return problem
    return None
