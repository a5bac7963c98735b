"""What a fit mode works on: the problem (:class:`FitProblem`) and the few things of the
Lightning module it touches (:class:`FitHost`).

:class:`~dode.lit.DODEModule` builds its :class:`FitProblem` once, when it is made, and hands it
to its fit mode (:mod:`dode.lit.fit_modes`) and to its validation: the model call, the teacher
lookup by σ, the grid, the solver, the conditioning binder and the dtypes. A mode reads nothing
else of the module but what :class:`FitHost` lists (the trainer, logging, the λ parameter and
the fit's records), so the modes import nothing of :mod:`dode.lit.module`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..correction import DODECorrection, model_fn
from ..denoisers import Denoiser
from ..lambda_fit import FitInfo, at_sigma
from ..solvers import Solver

__all__ = ["FitProblem", "FitHost"]


@dataclass(frozen=True)
class FitProblem:
    """The student's problem: a frozen model, a solver on a σ grid, the teacher's σ.

    Args:
        denoiser: the frozen model in σ-space (unbound: see ``bind``).
        solver: the student's base solver.
        sigmas: the student's σ grid (descending, ending in 0).
        target_sigmas: the σ of the teacher states, in the order of a batch's ``teacher``
            (every σ the student's states sit at, stage points included).
        dtype: the integration dtype (noise, states, teacher).
        check_finite: raise on non-finite model outputs.
        bind: a batch's conditioning (``None``: none) → the denoiser bound to it and to the
            guidance scale, on the module's device.
        condition: seeds → their conditioning (labels or prompts), or ``None``.
        schedule: the name of the schedule ``sigmas`` came from.
    """

    denoiser: Denoiser
    solver: Solver
    sigmas: Tensor
    target_sigmas: tuple[float, ...]
    dtype: torch.dtype
    check_finite: bool
    bind: Callable[[Any], Denoiser]
    condition: Callable[[list[int]], Any]
    schedule: str
    _index: dict[float, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {s: i for i, s in enumerate(self.target_sigmas)})

    @property
    def s_list(self) -> list[float]:
        """The grid as Python floats."""
        return self.sigmas.tolist()

    @property
    def num_steps(self) -> int:
        """Steps of the grid."""
        return len(self.sigmas) - 1

    @property
    def num_calls(self) -> int:
        """Model calls (NFE) of the student, one λ each."""
        return self.solver.nfe(self.num_steps)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample (without the batch)."""
        return tuple(self.denoiser.sample_shape)

    def model_fn(self, cond=None) -> Callable[[Tensor, float], Tensor]:
        """The model call the solver consumes (x̂0 or ε̂), bound to ``cond``."""
        return model_fn(self.bind(cond), self.solver.consumes)

    def target(self, teacher: Tensor) -> Callable[[float], Tensor]:
        """σ → the teacher state at σ, from a batch's ``teacher`` ``[B, M, ...]``."""

        def get(sigma: float) -> Tensor:
            return teacher[:, at_sigma(self._index, sigma)]

        return get

    def trajectory(
        self, noise: Tensor, lambdas: Tensor | None, fn: Callable | None = None, cond=None
    ) -> tuple[list[float], list[Tensor]]:
        """The student's states after each call (the input of call k + 1; the sample last) and
        their σ. ``lambdas=None``: the base solver. ``fn``: the model callable (default:
        :meth:`model_fn` of ``cond``)."""
        s_list = self.s_list
        corr = DODECorrection(self.model_fn(cond) if fn is None else fn, lambdas, self.check_finite)
        sig: list[float] = []
        states: list[Tensor] = []

        def record(x: Tensor, sigma: float) -> Tensor:
            if corr.k > 0:
                sig.append(float(sigma))
                states.append(x)
            return corr(x, sigma)

        out = self.solver.solve(record, noise * s_list[0], s_list, None)
        sig.append(float(s_list[-1]))
        states.append(out)
        return sig, states


class FitHost(Protocol):
    """What a fit mode uses of the Lightning module that runs it (:class:`~dode.lit.DODEModule`):
    Lightning's own members and the fit's records, nothing of the problem."""

    #: the λ, one per model call (float64)
    lambdas: nn.Parameter
    #: λ fitted so far (``lstsq``)
    num_fitted: Tensor
    #: the closed-form fit's record
    fit_info: FitInfo
    #: ``end-to-end``: the solver's parameters, made at the mode's setup
    learned: nn.Module | None
    #: seconds spent, by phase (the solver file's ``time/...``)
    timings: dict[str, float]
    #: how the grid was obtained (the solver file's ``metrics["grid"]``)
    grid_record: dict[str, Any]
    #: the fit mode's name
    fit_mode: str

    @property
    def trainer(self) -> Any: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def current_epoch(self) -> int: ...

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None: ...

    def log_dict(self, metrics: dict, *args: Any, **kwargs: Any) -> None: ...

    def optimizers(self, *args: Any, **kwargs: Any) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...

    def model_record(self) -> dict: ...

    def reference_source(self, nfe: int, batch_size: int) -> Any: ...
