"""dode: Distilled-ODE (D-ODE) solvers for diffusion models.

Public API::

    from dode import sample, fit_lambdas, sample_many, select_scale
    from dode.grids.schedules import karras, refine
    from dode.solvers import get_solver
    from dode.denoisers import CallableDenoiser
    fitted = dode.fit("gmm-digits", "ddim", nfe=4)   # the Lightning fit (dode.lit.api.fit)
    fitted = dode.fit(dode.ModelSpec("gmm-digits"), dode.SolverSpec("ddim", nfe=4))

``dode.fit`` and its specs (``ModelSpec``, ``SolverSpec``, ``FitSpec``, ``DataSpec``,
``RunSpec``, ``Specs``: :mod:`dode.lit.specs`) are imported on first use: ``import dode`` does
not import Lightning.

The modules live in wings by job (``grids/``, ``files/``, ``hosts/``, ``evaluation/``,
``digits/``, …: the README's Architecture section is the map). Modules that moved into a wing
keep their old path, with a ``DeprecationWarning``, until dode 0.2
(:data:`dode.import_paths.MOVED`).
"""

from . import denoisers, grids, import_paths, solvers
from .correction import DODECorrection
from .lambda_fit import FitInfo, LambdaFit, fit_lambdas, teacher_states
from .sampling import sample, sample_many
from .select import ScaleChoice, select_scale
from .solvers import get_solver
from .version import __version__

import_paths.install()  # the old paths of moved modules (dode.schedules, ...) resolve, warned

__all__ = [
    "denoisers",
    "grids",
    "solvers",
    "sample",
    "fit_lambdas",
    "sample_many",
    "select_scale",
    "ScaleChoice",
    "teacher_states",
    "get_solver",
    "DODECorrection",
    "LambdaFit",
    "FitInfo",
    "fit",
    "ModelSpec",
    "SolverSpec",
    "FitSpec",
    "DataSpec",
    "RunSpec",
    "Specs",
    "__version__",
]

_SPECS = ("ModelSpec", "SolverSpec", "FitSpec", "DataSpec", "RunSpec", "Specs")


def __getattr__(name: str):
    if name == "fit":  # Lightning only when asked for
        from .lit.api import fit

        return fit
    if name in _SPECS:
        from .lit import specs

        return getattr(specs, name)
    if f"dode.{name}" in import_paths.MOVED:  # dode.schedules, ...: the old path, with a warning
        return import_paths.redirect(f"dode.{name}")
    raise AttributeError(f"module 'dode' has no attribute {name!r}")
