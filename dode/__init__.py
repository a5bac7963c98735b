"""dode: Distilled-ODE (D-ODE) solvers for diffusion models.

Public API::

    from dode import sample, fit_lambdas, sample_many, select_scale
    from dode.schedules import karras, refine
    from dode.solvers import get_solver
    from dode.denoisers import CallableDenoiser
    fitted = dode.fit("gmm-digits", "ddim", nfe=4)   # the Lightning fit (dode.lit.api.fit)
    fitted = dode.fit(dode.ModelSpec("gmm-digits"), dode.SolverSpec("ddim", nfe=4))

``dode.fit`` and its specs (``ModelSpec``, ``SolverSpec``, ``FitSpec``, ``DataSpec``,
``RunSpec``, ``Specs``: :mod:`dode.lit.specs`) are imported on first use: ``import dode`` does
not import Lightning.
"""

from . import denoisers, schedules, solvers
from .correction import DODECorrection
from .lambda_fit import FitInfo, LambdaFit, fit_lambdas, teacher_states
from .sampling import sample, sample_many
from .select import ScaleChoice, select_scale
from .solvers import get_solver
from .version import __version__

__all__ = [
    "denoisers",
    "schedules",
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
    raise AttributeError(f"module 'dode' has no attribute {name!r}")
