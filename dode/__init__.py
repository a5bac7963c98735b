"""dode: Distilled-ODE (D-ODE) solvers for diffusion models.

Public API::

    import dode
    from dode import sample, fit_lambdas, sample_many, select_scale
    from dode.grids import karras, refine
    from dode.solvers import get_solver
    from dode.denoisers import CallableDenoiser
    fitted = dode.fit("gmm-digits", "ddim", nfe=4)   # the Lightning fit (dode.lit.api.fit)

``dode.fit`` is the one name of the facade that needs Lightning: it is :func:`dode.lit.api.fit`,
imported when first asked for, so that ``import dode`` does not import Lightning. Its typed
settings (``ModelSpec``, ``SolverSpec``, ``FitSpec``, ``DataSpec``, ``RunSpec``, ``Specs``) are
imported from :mod:`dode.lit`.
"""

from . import denoisers, grids, solvers
from .correction import DODECorrection
from .lambda_fit import FitInfo, LambdaFit, fit_lambdas, teacher_states
from .sampling import sample, sample_many
from .select import ScaleChoice, select_scale
from .solvers import get_solver
from .version import __version__

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
    "__version__",
]


def __getattr__(name: str):
    if name == "fit":  # Lightning only when asked for
        from .lit.api import fit

        return fit
    raise AttributeError(f"module 'dode' has no attribute {name!r}")
