"""The closed-form fit's replay: explicit fast path, errors that propagate, one lookup by σ.

* Every registered solver takes the stacked replay (one ``solve`` per call and batch) and the
  model is evaluated exactly once per call and batch.
* A model error inside the fit (a transient one, like CUDA running out of memory) propagates;
  it is not swallowed and retried.
* ``replay_batchable = False`` gives two replays per call and the same λ; a solver that claims
  batchable but returns the wrong shape gets an error naming it and the solver contract.
* The teacher lookup by σ has a relative tolerance; ``FitInfo.record`` is the fit's bookkeeping.
"""

from __future__ import annotations

import math

import pytest
import torch

import dode
from dode.denoisers import CallableDenoiser, GaussianMixtureDenoiser
from dode.grids.schedules import karras
from dode.lambda_fit import FitInfo, LambdaFit, at_sigma, fit_lambdas, teacher_states
from dode.solvers import SOLVERS, get_solver
from dode.solvers.ddim import DDIM

pytestmark = pytest.mark.usefixtures("one_thread")


def _mixture() -> GaussianMixtureDenoiser:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 3, dtype=torch.float64, generator=g)
    covs = a @ a.transpose(1, 2) / 3 + 0.05 * torch.eye(3, dtype=torch.float64)
    means = 2 * torch.randn(2, 3, dtype=torch.float64, generator=g)
    return GaussianMixtureDenoiser(means, covs, torch.tensor([0.6, 0.4]))


class _Counting:
    """``fn(x, sigma)`` of a CallableDenoiser that counts its calls and can fail once."""

    def __init__(self, inner: GaussianMixtureDenoiser, fail_at: int | None = None) -> None:
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.inner.denoise(x, sigma)


def _noises() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, dtype=torch.float64, generator=g) for n in (5, 3)]


def _fit(solver, fn: _Counting, s: torch.Tensor) -> LambdaFit:
    """A LambdaFit over two batches of a counting denoiser (teachers from the plain mixture)."""
    den = CallableDenoiser(fn, 0.002, 80.0)
    teachers = [teacher_states(fn.inner, solver, n, s, 3) for n in _noises()]
    return LambdaFit(den, solver, s, _noises(), teachers)


def _count_solves(solver) -> list[int]:
    calls = [0]
    solve = solver.solve

    def counted(*args, **kwargs):
        calls[0] += 1
        return solve(*args, **kwargs)

    solver.solve = counted
    return calls


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_fast_path_one_model_call_per_call_and_batch(name):
    solver = get_solver(name)
    s = karras(solver.min_steps() + 2)
    fn = _Counting(_mixture())
    fit = _fit(solver, fn, s)
    solves = _count_solves(solver)
    lam = fit.run()
    batches = len(fit.noises)
    assert fn.calls == fit.num_calls * batches
    assert solves[0] == fit.num_calls * batches  # one (stacked) replay per call and batch
    assert torch.isfinite(lam).all() and lam[0] == 0


def test_model_error_inside_the_fit_propagates():
    """A model that fails once (as a transient CUDA OOM would) stops the fit with its error;
    the old code caught it and silently redid the call on a slower path."""
    solver = get_solver("dpm_solver", order=2)
    s = karras(4)
    fn = _Counting(_mixture(), fail_at=4)
    fit = _fit(solver, fn, s)
    with pytest.raises(RuntimeError, match="out of memory"):
        fit.run()
    assert fn.calls == 4  # nothing was retried after the error


class _TwoReplays(DDIM):
    replay_batchable = False


class _NotElementwise(DDIM):
    """Claims a batchable replay but collapses the stacked branches (breaks the contract)."""

    def solve(self, model, x, s, callback):
        return super().solve(
            lambda y, sigma: model(y, sigma).reshape(-1, *y.shape)[0], x, s, callback
        )


def test_not_batchable_solver_replays_twice_with_the_same_lambdas():
    s = karras(4)
    fast = _fit(get_solver("ddim"), _Counting(_mixture()), s)
    slow_solver = _TwoReplays()
    fn = _Counting(_mixture())
    slow = _fit(slow_solver, fn, s)
    solves = _count_solves(slow_solver)
    lam = slow.run()
    torch.testing.assert_close(lam, fast.run(), rtol=1e-12, atol=1e-12)
    assert solves[0] == 2 * slow.num_calls * len(slow.noises)
    assert fn.calls == slow.num_calls * len(slow.noises)  # the cache still serves the 2nd replay


def test_wrong_shape_from_a_batchable_claim_names_the_solver_and_the_contract():
    fit = _fit(_NotElementwise(), _Counting(_mixture()), karras(3))
    with pytest.raises(RuntimeError, match=r"solver ddim \(_NotElementwise\) breaks the solver"):
        fit.run()


def test_teacher_lookup_by_sigma_is_relative():
    states = {20.0: "a", 0.5: "b"}
    assert at_sigma(states, 20.0) == "a"
    assert at_sigma(states, 20.0 * (1 + 5e-13)) == "a"  # 1e-11 apart: within 1e-12 relative
    assert at_sigma(states, 0.5 + 5e-13) == "b"
    with pytest.raises(ValueError, match="no teacher state at σ"):
        at_sigma(states, 20.0 * (1 + 1e-9))
    with pytest.raises(ValueError, match="no teacher state at σ"):
        at_sigma(states, 0.5 + 1e-11)


def test_fit_info_record_matches_the_statistics():
    gr, gg, rr, n = 2.0, 4.0, 10.0, 5.0
    info = FitInfo()
    info.record(3, 1.5, 0.5, torch.tensor([gr, gg, rr, n], dtype=torch.float64), True)
    info.record(4, None, 0.0, torch.tensor([gr, gg, rr, n], dtype=torch.float64))
    assert info.sigmas[0] == 1.5 and math.isnan(info.sigmas[1])
    assert info.lambdas == [0.5, 0.0]
    assert info.mse_before == [rr / n, rr / n]
    # ‖r − λ g‖² / n = (rr − 2λ gr + λ² gg) / n
    assert info.mse_after == pytest.approx([(10 - 2 + 1) / 5, 2.0])
    assert info.degenerate == [3]


def test_the_facade_hands_out_the_fit():
    assert fit_lambdas is dode.fit_lambdas
    assert dode.LambdaFit is LambdaFit
