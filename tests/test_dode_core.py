"""The D-ODE correction and its closed-form fit.

* λ = 0 reproduces every base solver bit for bit; gradients reach every λ_k (k >= 1) through
  every solver and agree with finite differences.
* ``fit_lambdas``: λ_0 = 0; each λ_k equals a brute-force 1-D least-squares minimiser
  (scipy) of the student's MSE to the teacher given the earlier λ; teacher targets sit at the
  student's σ (checked against the closed-form Gaussian solution); chunked batches, split
  "ranks" and one batch give the same λ; a degenerate step gives λ = 0 and a warning.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import minimize_scalar
from torch import nn

import dode
from dode import LambdaFit, fit_lambdas, sample, teacher_states
from dode.denoisers import CallableDenoiser, GaussianMixtureDenoiser, gaussian
from dode.grids.schedules import karras, refine
from dode.solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_thread")

SOLVERS = [
    ("ddim", {}),
    ("euler", {}),
    ("heun", {}),
    ("ipndm", {"order": 4}),
    ("dpm_solver", {"order": 2}),
    ("dpm_solver", {"order": 3}),
    ("dpm_solver", {"order": 3, "stages": "grid"}),
    ("dpm_solver_pp", {"order": 2}),
    ("dpm_solver_pp", {"order": 3, "lower_order_final": False}),
    ("deis", {"order": 3, "basis": "t"}),
    ("deis", {"order": 3, "basis": "logrho"}),
    ("deis", {"order": 3, "basis": "rho"}),
    ("unipc", {"order": 2, "variant": "bh1"}),
    ("unipc", {"order": 3, "variant": "bh2", "lower_order_final": False}),
]
IDS = [n + "".join(f"-{v}" for v in kw.values()) for n, kw in SOLVERS]


def _mixture(dim: int = 3, k: int = 3, seed: int = 0) -> GaussianMixtureDenoiser:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(k, dim, dim, dtype=torch.float64, generator=g)
    covs = a @ a.transpose(1, 2) / dim + 0.05 * torch.eye(dim, dtype=torch.float64)
    means = 2 * torch.randn(k, dim, dtype=torch.float64, generator=g)
    return GaussianMixtureDenoiser(means, covs, torch.tensor([0.5, 0.3, 0.2][:k]))


@pytest.fixture(scope="module")
def gmm() -> GaussianMixtureDenoiser:
    return _mixture()


def _noise(n: int, dim: int = 3, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---- λ = 0 and gradients ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kw", SOLVERS, ids=IDS)
def test_zero_lambda_is_base_solver_bit_for_bit(gmm, name, kw, dtype):
    solver = get_solver(name, **kw)
    s = karras(5)
    noise = _noise(6, dtype=dtype)
    base = sample(gmm, solver, noise, s)
    zero = sample(gmm, solver, noise, s, torch.zeros(solver.nfe(5), dtype=torch.float64))
    assert base.dtype == dtype
    assert torch.equal(base, zero)


@pytest.mark.parametrize("name,kw", SOLVERS, ids=IDS)
def test_gradients_reach_every_lambda(gmm, name, kw):
    solver = get_solver(name, **kw)
    s = karras(5)
    noise = _noise(6)
    target = _noise(6, seed=2)
    lam = nn.Parameter(torch.zeros(solver.nfe(5), dtype=torch.float64))
    out = sample(gmm, solver, noise, s, lam)
    ((out - target) ** 2).sum().backward()
    grad = lam.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert grad[0] == 0  # λ_0 multiplies o_0 − o_{−1}, which does not exist
    assert (grad[1:] != 0).all(), grad


def test_gradient_matches_finite_differences(gmm):
    solver = get_solver("unipc", order=3, variant="bh2", lower_order_final=False)
    s = karras(5)
    noise = _noise(3)
    lam = (0.1 * torch.randn(solver.nfe(5), dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda lm: sample(gmm, solver, noise, s, lm), (lam,))


# ---- the closed-form fit -------------------------------------------------------------------


def _state_after_call(den, solver, noise, s, lambdas, k):
    """The student's state right after model call k (the input of call k + 1, or the final
    sample) and its σ, observed from outside the solver."""
    inputs: list[tuple[torch.Tensor, float]] = []

    def fn(x, sigma):
        inputs.append((x.detach().clone(), float(sigma.flatten()[0])))
        return den.denoise(x, sigma)

    out = sample(CallableDenoiser(fn, den.sigma_min, den.sigma_max), solver, noise, s, lambdas)
    return inputs[k + 1] if k + 1 < len(inputs) else (out, float(s[-1]))


@pytest.mark.parametrize(
    "name,kw",
    [("ddim", {}), ("dpm_solver", {"order": 2}), ("unipc", {"order": 2})],
    ids=["ddim", "dpm_solver2", "unipc2"],
)
def test_closed_form_equals_brute_force_least_squares(gmm, name, kw):
    solver = get_solver(name, **kw)
    s = karras(4)
    noise = _noise(16)
    lam, info = fit_lambdas(gmm, solver, noise, s, return_info=True)
    teacher = teacher_states(gmm, solver, noise, s)
    K = solver.nfe(4)
    assert lam.dtype == torch.float64 and lam.shape == (K,) and lam[0] == 0
    for k in range(1, K):

        def mse(t, k=k):
            trial = torch.cat([lam[:k], torch.tensor([t], dtype=torch.float64), lam[k + 1 :]])
            x, sigma = _state_after_call(gmm, solver, noise, s, trial, k)
            return float(((teacher[sigma] - x) ** 2).mean())

        best = minimize_scalar(mse, bracket=(-1.0, 1.0), method="brent", tol=1e-12)
        assert abs(best.x - lam[k].item()) <= 1e-6 * max(1.0, abs(best.x)), (k, best.x, lam)
        assert info.mse_after[k] == pytest.approx(mse(lam[k].item()), rel=1e-9)
        assert info.mse_after[k] <= info.mse_before[k]


def test_teacher_states_are_matched_by_sigma():
    """A DPM-Solver-3 student visits two stage points per step; the teacher's grid contains
    them (bit for bit) and its state there is the exact ODE solution at that σ."""
    den = gaussian(
        torch.tensor([0.5, -1.0]), torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    )
    solver = get_solver("dpm_solver", order=3)
    s = karras(4, sigma_max=10.0)
    noise = _noise(8, dim=2)
    stages = solver.stage_sigmas(s)
    assert len(stages) == 2 * 3  # two stages on each of the three steps with σ_next > 0
    grid = refine(s, 10, include=stages)
    on_grid = set(grid.tolist())
    assert set(s.tolist()) <= on_grid and set(stages.tolist()) <= on_grid
    states = teacher_states(den, solver, noise, s, teacher_factor=10)
    assert set(states) == set(s[1:].tolist()) | set(stages.tolist())
    x0 = noise * s[0].item()
    scale = den.exact_solution(x0, s[0].item(), 0.0).abs().max().item()
    for sigma, x in states.items():
        exact = den.exact_solution(x0, s[0].item(), sigma)
        assert (x - exact).abs().max().item() < 1e-4 * scale, sigma


def test_batch_size_chunking_gives_the_same_lambdas(gmm):
    s = karras(5)
    noise = _noise(24)
    one = fit_lambdas(gmm, "deis", noise, s)
    chunked = fit_lambdas(gmm, "deis", noise, s, batch_size=7)  # uneven chunks 7+7+7+3
    torch.testing.assert_close(chunked, one, rtol=1e-12, atol=1e-10)


def test_statistics_summed_over_two_ranks_equal_the_single_fit(gmm):
    solver = get_solver("dpm_solver", order=2)
    s = karras(4)
    noise = _noise(20)
    single = fit_lambdas(gmm, solver, noise, s)
    halves = noise[:9], noise[9:]
    ranks = [LambdaFit(gmm, solver, s, [h], [teacher_states(gmm, solver, h, s)]) for h in halves]
    for k in range(solver.nfe(4)):
        (st_a, sigma), (st_b, _) = (r.stats(k) for r in ranks)
        total = st_a + st_b  # what an all-reduce(SUM) hands every rank
        lam, degenerate = LambdaFit.solve(total, k)
        for r in ranks:
            r.set(k, lam, total, sigma, degenerate)
    torch.testing.assert_close(ranks[0].lambdas, single, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(ranks[1].lambdas, single, rtol=1e-12, atol=1e-10)


def test_degenerate_step_gives_zero_and_a_warning():
    """x̂0 constant: consecutive outputs are equal, the state does not depend on λ_k."""
    const = CallableDenoiser(lambda x, sigma: torch.full_like(x, 0.25), 0.002, 80.0)
    with pytest.warns(RuntimeWarning, match="degenerate"):
        lam, info = fit_lambdas(const, "euler", _noise(4), karras(4), return_info=True)
    assert torch.equal(lam, torch.zeros(4, dtype=torch.float64))
    assert info.degenerate == [1, 2, 3]
    assert all(math.isfinite(v) for v in info.mse_after)


def test_fit_lambdas_public_api_and_improvement(gmm):
    """``dode.fit_lambdas`` then ``dode.sample``: closer to the teacher's endpoint than the
    base solver, λ_0 = 0."""
    s = karras(4)
    noise = _noise(64, seed=3)
    lam = dode.fit_lambdas(gmm, "ddim", noise, s)
    assert lam[0] == 0
    ref = sample(gmm, "heun", noise, karras(200))
    base = sample(gmm, "ddim", noise, s)
    fitted = sample(gmm, "ddim", noise, s, lam)
    assert ((fitted - ref) ** 2).mean() < 0.7 * ((base - ref) ** 2).mean()
