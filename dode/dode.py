"""Backward-compatible alias of the modules that were once ``dode/dode.py``.

The code lives in modules named by their job: :mod:`dode.correction` (the D-ODE wrapper),
:mod:`dode.sampling` (``sample``, ``sample_many``), :mod:`dode.select` (λ-scale selection) and
:mod:`dode.lambda_fit` (the teacher and the closed-form fit). ``from dode.dode import ...`` keeps
working; new code imports from those modules (or from ``dode``).
"""

from __future__ import annotations

import warnings

# The private helpers come along for code that reached for them under the old path.
from .correction import DODECorrection, _check_finite, _correct, model_fn  # noqa: F401
from .lambda_fit import (  # noqa: F401
    FitInfo,
    LambdaFit,
    _branch_tangent,
    _Replay,
    _Stop,
    at_sigma,
    batch_stats,
    branch,
    default_teacher,
    fit_lambdas,
    teacher_states,
)
from .lambda_fit import at_sigma as _lookup  # noqa: F401
from .sampling import _check_denoiser, _prepare, _SharedFirstCall, sample, sample_many  # noqa: F401
from .select import ScaleChoice, best_scale, check_scales, select_scale

warnings.warn(
    "dode.dode is deprecated and will be removed in dode 0.2: import from dode (sample, "
    "fit_lambdas, select_scale, ...) or from dode.correction, dode.sampling, dode.select and "
    "dode.lambda_fit.",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "DODECorrection",
    "model_fn",
    "sample",
    "sample_many",
    "select_scale",
    "ScaleChoice",
    "check_scales",
    "best_scale",
    "teacher_states",
    "LambdaFit",
    "FitInfo",
    "fit_lambdas",
    "branch",
    "batch_stats",
]
