"""mkviz's registrations with timm and transformers, made as soon as mkviz and the library are both imported.

`import mkviz` loads neither torch nor timm (so that `mkviz --help` answers at once); `install()`, run by it,
registers at once with a library already imported and otherwise when it is first imported:

    timm           mkviz_<architecture> entrypoints (`mkviz.timm_models.register`)
    transformers   the manifold-key configs and model classes with the Auto classes (`mkviz.hf_io.register`)
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any, Optional, Sequence

__all__ = ["REGISTRARS", "install", "register"]

REGISTRARS = {"timm": "mkviz.timm_models", "transformers": "mkviz.hf_io"}


def register(library: str) -> None:
    """Run the registration of `library` (a key of REGISTRARS); a failure is one warning, not a failed import."""
    try:
        importlib.import_module(REGISTRARS[library]).register()
    except Exception as err:  # noqa: BLE001 - the library itself must still import
        warnings.warn(f"mkviz could not register with {library}: {type(err).__name__}: {err}", stacklevel=2)


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, library: str) -> None:
        self.loader, self.library = loader, library

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        register(self.library)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of a pending library so that its registration follows its import."""

    def __init__(self, pending: set[str]) -> None:
        self.pending = pending

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Any = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader, fullname)
        return spec


def install() -> None:
    """Register now with the libraries already imported, and after the import of the others (once)."""
    if any(isinstance(f, _AfterImport) for f in sys.meta_path):
        return
    pending = {lib for lib in REGISTRARS if lib not in sys.modules}
    for library in set(REGISTRARS) - pending:
        register(library)
    if pending:
        sys.meta_path.insert(0, _AfterImport(pending))
