"""The package's import paths: the public names of a wing, and the old paths of moved modules.

A *wing* is a folder of ``dode/`` that groups modules by job (``grids/``, ``files/``,
``hosts/``, ``evaluation/``, ``digits/``, …). Its ``__init__`` imports none of its modules
when it runs: importing a foundation module such as :mod:`dode.grids.schedules` must not run
the fit code that sits beside it in :mod:`dode.grids.standard`. A wing's public names
(``from dode.grids import select_grid``) are imported on first use by the ``__getattr__`` that
:func:`wing_exports` makes.

The modules that moved into wings keep their old import path until dode 0.2:
``import dode.schedules`` hands out :mod:`dode.grids.schedules` itself (the same module object)
with a ``DeprecationWarning`` that names the new path, attributed to the line that wrote the
import. :data:`MOVED` is the whole list; the facade installs the finder that serves them
(:func:`install`), and the entry-point shims (``dode/export.py``, ``dode/fid.py``,
``dode/pretrain.py``) hand their old library path on with :func:`redirect`. Names that moved
from one module to another (``dode.train.main`` → ``dode.cli.train.main``) are handed out by
:func:`moved` / :func:`moved_names` with the same kind of warning.

This module imports nothing from dode.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import pkgutil
import sys
import warnings
from collections.abc import Callable
from types import ModuleType

__all__ = [
    "MOVED",
    "REMOVAL_VERSION",
    "redirect",
    "install",
    "moved",
    "moved_names",
    "wing_exports",
]

#: the release that drops the old paths.
REMOVAL_VERSION = "0.2"

#: old module path → the module it moved to.
MOVED: dict[str, str] = {
    "dode.schedules": "dode.grids.schedules",
    "dode.learned_grid": "dode.grids.learned",
    "dode.artifact": "dode.files.solver_file",
    "dode.cache": "dode.files.cache",
    "dode.images": "dode.files.images",
    "dode.loading": "dode.denoisers.loading",
    "dode.metrics": "dode.evaluation.metrics",
    "dode.fid": "dode.evaluation.fid",
    "dode.diffusers": "dode.hosts.diffusers",
    "dode.export": "dode.hosts.export",
    "dode.pretrain": "dode.digits.pretrain",
}


def _importer_level(old: str) -> int:
    """The ``stacklevel`` that points a warning at the code that wrote the import of ``old``:
    past the frames of this module, of importlib, of the facade and of ``old``'s own shim. (The
    frames of importlib's bootstrap are not counted: ``warnings`` passes over them itself.)"""
    skip = {__name__, old, "dode", "importlib"}
    frame = sys._getframe(1)
    level = 1
    while frame is not None:
        file = frame.f_code.co_filename
        if "importlib" in file and "_bootstrap" in file:
            frame = frame.f_back
            continue
        if frame.f_globals.get("__name__") not in skip:
            return level
        frame = frame.f_back
        level += 1
    return 1


def redirect(old: str) -> ModuleType:
    """The module that ``old`` (a key of :data:`MOVED`) moved to, registered under the old name
    too (``import old`` gives the same module object), with a ``DeprecationWarning``."""
    new = MOVED[old]
    warnings.warn(
        f"{old} moved to {new}; the old path is removed in dode {REMOVAL_VERSION}.",
        DeprecationWarning,
        stacklevel=_importer_level(old),
    )
    module = importlib.import_module(new)
    sys.modules[old] = module
    return module


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the paths of :data:`MOVED` that no longer have a file (last on ``sys.meta_path``:
    a real module of that name always wins)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return redirect(spec.name)

    def exec_module(self, module):
        """The module was run under its new name already."""


def install() -> None:
    """Put the finder of the old paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())


def moved(old: str, new: str, name: str, new_name: str | None = None) -> object:
    """``new_name`` (default ``name``) of module ``new``, handed out as ``name`` of its old module
    ``old`` with a ``DeprecationWarning`` (the old name goes in :data:`REMOVAL_VERSION`); called
    from the old module's ``__getattr__``."""
    new_name = new_name or name
    warnings.warn(
        f"{old}.{name} moved to {new}.{new_name}; the old name is removed in dode "
        f"{REMOVAL_VERSION}: import {new_name} from {new}.",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(new), new_name)


def moved_names(old: str, new: str, names: tuple[str, ...]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``old`` that hands out ``names`` of module ``new`` with
    :func:`moved`'s warning."""

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        return moved(old, new, name)

    return __getattr__


def wing_exports(
    package: str, path: list[str], load: Callable[[], tuple[ModuleType, ...]]
) -> Callable[[str], object]:
    """A wing's ``__getattr__``: a name in the ``__all__`` of one of the modules ``load()``
    imports (the wing's ``__init__`` writes those imports, so the layer test sees them), found on
    first use. The names of the wing's own modules (read from the package's ``path``, its
    ``__path__``) are left to the import system, so that ``from dode.grids import schedules``
    imports that module alone (and ``load()`` can import its modules without recursing)."""
    submodules: set[str] = set()

    def __getattr__(name: str) -> object:
        if not submodules:
            submodules.update(m.name for m in pkgutil.iter_modules(path))
        if name not in submodules and not name.startswith("__"):
            for module in load():
                if name in getattr(module, "__all__", ()):
                    return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
