"""mkviz: the manifold key of arXiv 2402.00534 (a documented reconstruction) for timm models.

    convert / create_model / fold      models (mkviz.core.models)
    ManifoldKey                        the key path (mkviz.core.key)
    ManifoldAttention, ...             drop-in attention modules (mkviz.core.attention)
    count_params / count_flops         cost (mkviz.core.cost)
    record_attention                   fused and per-chart attention, chart keys (mkviz.explain.record)
    integrated_gradients, ...          captum attributions: pixels, patches, attention (mkviz.explain.attribution)
    class_relevance, relevance_map     Chefer et al.'s class relevance per patch, per chart (mkviz.explain.relevance)
    deletion_insertion                 deletion / insertion curves of a saliency map (mkviz.explain.faithfulness)
    ChartExplorer, ChartCountExplorer  interactive explorers, ipywidgets + plotly (mkviz.viz.explorers)
    chart_explorer_html, ...           the explorers as self-contained HTML, no kernel (mkviz.viz.explorer_html)
    mkviz.figures                      plain plotly figures (overlays, chart maps, similarity, curves, tables)
    TrainConfig, load_checkpoint       training and checkpoints (mkviz.training; `mkviz train` on the command line)

The layers, bottom to top; a module imports only from its own layer and the layers listed before it
(tests/test_layers.py enforces it, and that no import forms a circle):

    core      the model: manifold key, attention modules, model families, conversion, cost; shared checks
    data      datasets: one module per dataset, and the registry that builds them by name
    explain   what a model attends to: attention maps, recording, metrics, relevance, attributions, faithfulness
    training  a training run: configuration, loop, optimiser, checkpoint files, models built from a spec
    viz       pictures: plotly figures, the notebook explorers, the HTML report
    studies   sweeps of training runs: the sweep file, the runner, statistics, analysis, the generated page
    course    the notebooks' exercises, their grading, the course book
    apps      what the `mkviz` command runs: demo, bench, the shipped checkpoints, the command line itself

Imports between mkviz modules sit at the top of each module, and so do torch, timm and the standard library.
The one exception, made here once for all modules: optional or heavy third-party packages (captum, plotly,
ipywidgets/IPython, scipy, scikit-learn, yaml, torchvision's datasets and transforms, Pillow, umap,
transformers, torchmetrics, nbformat/nbclient/jupytext, sphinx) are imported inside the functions that need them, so that
`import mkviz` and `mkviz --help` stay fast and a missing optional package fails only the function that
needs it.

This file is the package's face: the public names above, loaded on first use (so that `mkviz --version`
answers without loading torch), the old flat module paths (`mkviz.figures`, `mkviz.train`, ...), each
kept as a name for its new module (`MOVED`; CHANGELOG.md, 2026-12-04), and mkviz's registrations with timm
and transformers (`REGISTRARS`), run as soon as mkviz and the library are both imported.

A wheel also carries the repository's data/checkpoints as `mkviz/_data/checkpoints` (pyproject.toml's
package-dir; not a module, absent from a clone), found by `mkviz.training.shipped_checkpoints_dir`.
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it; imported on first use
_EXPORTS = {
    "ContextBroadcast": "core.attention", "ManifoldQKV": "core.attention", "ManifoldAttention": "core.attention",
    "ManifoldWindowAttention": "core.attention",
    "attn_layer": "core.attention",
    "convert": "core.models", "create_model": "core.models", "fold": "core.models",
    "manifold_modules": "core.models", "unbalanced_atlas_loss": "core.models",
    "count_flops": "core.cost", "count_params": "core.cost",
    "VARIANTS": "core.key", "ManifoldKey": "core.key", "key_impl": "core.key",
    "attention_layers": "core.switches", "eager_attention": "core.switches", "eval_mode": "core.switches",
    "select_layers": "core.switches",
    "AttentionRecording": "explain.record", "record_attention": "explain.record",
    "attention_attribution": "explain.attribution", "attention_replaced": "explain.attribution",
    "integrated_gradients": "explain.attribution", "layer_integrated_gradients": "explain.attribution",
    "class_relevance": "explain.relevance", "relevance_map": "explain.relevance",
    "deletion_insertion": "explain.faithfulness",
    "ChartCountExplorer": "viz.explorers", "ChartExplorer": "viz.explorers",
    "chart_explorer_html": "viz.explorer_html", "chart_count_explorer_html": "viz.explorer_html",
    "key_atlas_html": "viz.explorer_html", "save_html": "viz.explorer_html",
    "TrainConfig": "training.config", "load_checkpoint": "training.build",
}

# an old flat module path -> its module now (the same module object: `mkviz.figures is mkviz.viz.figures`)
MOVED = {
    "key": "core.key", "attention": "core.attention", "families": "core.families", "hf": "core.hf",
    "overparam": "core.overparam", "cost": "core.cost", "modes": "core.modes",
    "maps": "explain.maps", "metrics": "explain.metrics", "record": "explain.record",
    "relevance": "explain.relevance", "attribution": "explain.attribution", "faithfulness": "explain.faithfulness",
    "specialisation": "explain.specialisation",
    "train": "training", "optim": "training.optim", "checkpoint": "training",
    "figures": "viz.figures", "explorers": "viz.explorers", "report": "viz.report",
    "sweep": "studies.sweep", "sweep_report": "studies.sweep_report", "sweep_analysis": "studies.sweep_analysis",
    "stats": "studies.stats",
    "exercises": "course.exercises", "grading": "course.grading", "book": "course.book",
    "cli": "apps.cli", "demo": "apps.demo", "demo_pretrained": "apps.demo_pretrained", "bench": "apps.bench",
    "bench_record": "apps.bench_record", "shipped": "apps.shipped",
}

__all__ = ["__version__", "figures", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif name in MOVED:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'mkviz' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `mkviz.<old>` as the module `mkviz.<MOVED[old]>` itself; `python -m mkviz.<old>` runs the new
    module as __main__ (`python -m mkviz.book`, `python -m mkviz.shipped`, `python -m mkviz.bench` in the
    Makefile and the docs)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=f"{__name__}.{MOVED[name]}")

    def create_module(self, spec: Any) -> Any:
        module = importlib.import_module(spec.origin)
        spec.loader_state = module.__spec__  # the import system sets __spec__ to the old path's: exec_module restores
        return module

    def exec_module(self, module: Any) -> None:
        module.__spec__ = module.__spec__.loader_state  # nothing to run: the new module ran when it was imported

    def get_code(self, fullname: str) -> Any:  # `python -m mkviz.<old>` (runpy)
        new = f"{__name__}.{MOVED[fullname.rpartition('.')[2]]}"
        return compile(f"import runpy\nrunpy.run_module({new!r}, run_name='__main__', alter_sys=True)\n",
                       f"<{fullname}: {new}>", "exec")


sys.meta_path.append(MovedModuleFinder())


# a library -> the module whose `register()` registers mkviz with it (timm's `mkviz_<arch>` entrypoints;
# transformers' Auto classes), run as soon as mkviz and the library are both imported
REGISTRARS = {"timm": "core.timm_models", "transformers": "core.hf_io"}


def register(library: str) -> None:
    """Run the registration of `library` (a key of REGISTRARS); a failure is one warning, not a failed import."""
    try:
        importlib.import_module(f"{__name__}.{REGISTRARS[library]}").register()
    except Exception as err:  # noqa: BLE001 - the library itself must still import
        warnings.warn(f"mkviz could not register with {library}: {type(err).__name__}: {err}", stacklevel=2)


class RegisteringLoader(importlib.abc.Loader):
    """A library's own loader, followed by mkviz's registration with it."""

    def __init__(self, loader: Any, library: str) -> None:
        self.loader, self.library = loader, library

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        register(self.library)


class AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: gives a library of REGISTRARS not yet imported a loader that registers after it."""

    def __init__(self, pending: set[str]) -> None:
        self.pending = pending

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = RegisteringLoader(spec.loader, fullname)
        return spec


def install_registrations() -> None:
    """Register now with the libraries already imported, and after the import of the others (once)."""
    if any(isinstance(f, AfterImportFinder) for f in sys.meta_path):
        return
    pending = {library for library in REGISTRARS if library not in sys.modules}
    for library in sorted(set(REGISTRARS) - pending):
        register(library)
    if pending:
        sys.meta_path.insert(0, AfterImportFinder(pending))


install_registrations()
