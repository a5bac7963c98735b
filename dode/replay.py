"""The replay engine: run a solver over model outputs received so far, stop at the next call.

Solvers are plain loops over ``model(x, σ)`` (:class:`dode.solvers.Solver`). Two places need to
run a solver *part of the way* without a second implementation of it:

* the closed-form fit (:mod:`dode.lambda_fit`) walks the student up to the input of call
  ``k + 1``, answering calls below ``k`` from a per-batch cache;
* a host that hands out one model call at a time (:class:`dode.hosts.diffusers.DODEScheduler`)
  receives each output from the pipeline and needs the state of the solver's next call.

Both wrap the raw model outputs in a :class:`Replay` (the D-ODE correction, when wanted, wraps
the replay, so the correction code of :mod:`dode.correction` is the one that runs) and call
:func:`run_until_stop`: the solver runs from its first state and returns the state and σ of the
first call the replay cannot answer, or the final sample. The cost is O(NFE²) cheap tensor
updates per sample, nothing next to the network.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from .correction import _check_finite
from .solvers import Solver

__all__ = ["Replay", "ReplayStop", "run_until_stop"]


class ReplayStop(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a :class:`Replay` at the first model call it does not answer."""

    def __init__(self, x: Tensor, sigma: float) -> None:
        super().__init__(sigma)
        self.x, self.sigma = x, sigma


class Replay:
    """A model callable that answers a solver's calls from a list of raw model outputs.

    Call ``j`` returns ``outputs[j]`` when it is there. Otherwise, with ``fn`` given, the model
    is evaluated once (``fn(x, σ)``, checked finite) and the output appended to ``outputs``
    (the list is the caller's cache and survives the replay); without ``fn`` the replay stops.
    Call ``stop_at`` (if given) always stops. Stopping raises :class:`ReplayStop` carrying the
    state and σ the solver asked about; :func:`run_until_stop` turns it into a return value.

    Args:
        outputs: the raw outputs of calls 0, 1, … received so far (appended to with ``fn``).
        fn: the model, for calls not in ``outputs`` (``None``: stop there).
        stop_at: the index of the first call that stops the replay (``None``: no such call).
        check_finite: check the outputs ``fn`` returns (one clear ``ValueError``).
    """

    def __init__(
        self,
        outputs: list[Tensor],
        fn: Callable[[Tensor, float], Tensor] | None = None,
        *,
        stop_at: int | None = None,
        check_finite: bool = True,
    ) -> None:
        self.outputs, self.fn, self.stop_at, self.check_finite = outputs, fn, stop_at, check_finite
        self.calls = 0

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        j = self.calls
        if (self.stop_at is not None and j >= self.stop_at) or (
            self.fn is None and j >= len(self.outputs)
        ):
            raise ReplayStop(x, float(sigma))
        if j == len(self.outputs):
            o = self.fn(x, sigma)
            if self.check_finite:
                _check_finite(o, j, float(sigma))
            self.outputs.append(o)
        self.calls += 1
        return self.outputs[j]


def run_until_stop(
    solver: Solver, model: Callable[[Tensor, float], Tensor], x: Tensor, sigmas: list[float]
) -> tuple[Tensor, float | None]:
    """Run ``solver`` from the state ``x`` (at ``sigmas[0]``) on ``model`` (a :class:`Replay`,
    possibly wrapped in the correction) until the replay stops it.

    Returns:
        The state and σ of the call the replay did not answer, or the final sample and ``None``
        when the solver finished.
    """
    try:
        return solver.solve(model, x, sigmas, None), None
    except ReplayStop as stop:
        return stop.x, stop.sigma
