"""dode: Distilled-ODE (D-ODE) solvers for diffusion models.

Public API::

    from dode import sample, fit_lambdas, sample_many, select_scale
    from dode.schedules import karras, refine
    from dode.solvers import get_solver
    from dode.denoisers import CallableDenoiser
"""

from . import denoisers, schedules, solvers
from .correction import DODECorrection
from .lambda_fit import FitInfo, LambdaFit, fit_lambdas, teacher_states
from .sampling import sample, sample_many
from .select import ScaleChoice, select_scale
from .solvers import get_solver

__version__ = "0.1.0"

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
    "__version__",
]
