"""PNDM (pseudo Runge–Kutta warm start + PLMS) and PLMS (``skip_prk_steps``): parity with
diffusers' ``PNDMScheduler``, convergence order, and its D-solver fit.

Parity follows ``tests/test_diffusers_parity.py``: the diffusers loop and dode's solver with a
:class:`~dode.denoisers.DiffusersDenoiser` (``sigma_to_t="snap"``) on the tiny random UNet, the
same start (``x = x_vp · sqrt(1 + σ_0²)``), the same network timesteps call by call, final
samples within 1e-4 in float32. ``set_alpha_to_one=True``: with the default ``False`` diffusers'
last step goes from t = 0 to ᾱ_0 again, a null step after a wasted network call.

Only the ε-prediction reading: PNDM is an ε method, and for ``prediction_type="v_prediction"``
diffusers' PNDMScheduler converts v to ε *after* combining the outputs, with the ᾱ and the
sample of the step's start (not those each output was computed at), which is not the ODE's ε̂
(it differs from dode's ε-consuming PNDM by O(1) on the tiny UNet).
"""

from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
import torch
from _tiny import make_tiny_unet, scheduler_config
from test_convergence import measured_order, problem  # noqa: F401 - fixture
from torch import nn

import dode
from dode.denoisers import DiffusersDenoiser
from dode.grids.schedules import vp_sigmas
from dode.solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4
BETAS = {k: v for k, v in scheduler_config().items() if k.startswith("beta")}
# The ε reading of test_diffusers_parity.py: a short schedule keeps samples O(1) in float32.
EPS_BETAS = {**BETAS, "beta_end": 0.005}


@pytest.fixture(scope="module")
def unet():
    return make_tiny_unet(seed=0)


class Recorder(nn.Module):
    """Wraps the UNet and records every timestep it is called with."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet, self.config, self.ts = unet, unet.config, []

    def forward(self, x, t):
        self.ts.append(int(torch.as_tensor(t).reshape(-1)[0]))
        return self.unet(x, t)


def _unique_desc(ts: list[int]) -> list[int]:
    out: list[int] = []
    for t in ts:
        if t not in out:
            out.append(t)
    return out


@pytest.mark.parametrize("steps", [5, 10])
@pytest.mark.parametrize("skip_prk_steps", [False, True])
def test_parity_with_diffusers(unet, steps, skip_prk_steps):
    """PNDMScheduler = dode PNDM(stages="grid") (PRK) or PLMS, on the σ of its timesteps."""
    prediction_type = "epsilon"
    sched = diffusers.PNDMScheduler(
        **EPS_BETAS,
        prediction_type=prediction_type,
        skip_prk_steps=skip_prk_steps,
        set_alpha_to_one=True,
    )
    sched.set_timesteps(steps)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x, ts_ref = noise.clone(), []
    with torch.no_grad():
        for t in sched.timesteps:
            ts_ref.append(int(t))
            x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    ref = x

    table = vp_sigmas(sched.alphas_cumprod)
    grid = torch.cat([table[_unique_desc(ts_ref)], torch.zeros(1, dtype=torch.float64)])
    solver = get_solver("pndm", skip_prk_steps=skip_prk_steps, stages="grid")
    assert solver.nfe(len(grid) - 1) == len(ts_ref)
    rec = Recorder(unet)
    den = DiffusersDenoiser(rec, sched.alphas_cumprod, prediction_type, sigma_to_t="snap")
    with torch.no_grad():
        out = solver(den.eps, noise * math.sqrt(1 + grid[0].item() ** 2), grid)
    assert rec.ts == ts_ref, "dode called the network at other timesteps than diffusers"
    assert torch.isfinite(ref).all() and ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() <= TOL


def test_grid_stages_equal_midpoint_stages(problem):  # noqa: F811
    """stages="grid" on a grid with the midpoints of the first three intervals inserted is the
    default PNDM on the plain grid (same calls, same arithmetic)."""
    den, noise = problem
    s = torch.linspace(4.0, 0.5, 9, dtype=torch.float64)
    mids = (s[:3] + s[1:4]) / 2
    fine = torch.cat([torch.stack([s[:3], mids], 1).flatten(), s[3:]])
    plain = dode.sample(den, get_solver("pndm"), noise, s)
    grid = dode.sample(den, get_solver("pndm", stages="grid"), noise, fine)
    torch.testing.assert_close(grid, plain, rtol=0, atol=1e-13)
    assert torch.equal(get_solver("pndm").stage_sigmas(s), mids)


def test_convergence_order_prk(problem):  # noqa: F811
    """PRK warm start (classical RK4 in σ with midpoint stages) + AB4, on a grid uniform in σ:
    order 4 (as shipped; the RK4 start has local error O(h⁵))."""
    slope, errors = measured_order(problem, "pndm", {}, "sigma")
    assert abs(slope - 4) <= 0.3, f"slope {slope:.2f}; errors {errors}"


def test_convergence_order_plms(problem):  # noqa: F811
    """PLMS (skip_prk_steps): Heun's first step and the AB2 step after it have local error
    O(h³), so the global order is capped at 2 asymptotically; their small error constants
    let the measured slope sit between that cap and AB4's 4 on these grids."""
    slope, errors = measured_order(problem, "pndm", {"skip_prk_steps": True}, "sigma")
    assert 2 - 0.3 <= slope <= 4 + 0.3, f"slope {slope:.2f}; errors {errors}"


@pytest.mark.slow
@pytest.mark.parametrize("skip_prk_steps", [False, True])
def test_fitted_d_pndm_beats_base_on_held_out_noise(skip_prk_steps):
    """D-PNDM on the exact Gaussian-mixture denoiser of the sklearn digits: λ fitted in closed
    form on one noise batch lower the error to the teacher on another."""
    from dode.denoisers.loading import load_denoiser

    torch.manual_seed(0)
    den = load_denoiser("gmm-digits")
    solver = get_solver("pndm", skip_prk_steps=skip_prk_steps)
    nfe = 6 if skip_prk_steps else 14  # the few-step regime (PRK needs at least 13 calls)
    steps = solver.steps_for_nfe(nfe)
    sigmas = dode.grids.schedules.karras(steps, den.sigma_min, den.sigma_max)
    shape = den.sample_shape
    g = torch.Generator().manual_seed(0)
    train = torch.randn(256, *shape, generator=g, dtype=torch.float64)
    test = torch.randn(256, *shape, generator=g, dtype=torch.float64)
    lam = dode.fit_lambdas(den, solver, train, sigmas)
    assert lam.shape == (nfe,) and lam[0] == 0 and torch.isfinite(lam).all()
    teacher = dode.teacher_states(den, solver, test, sigmas)[0.0]
    base = (dode.sample(den, solver, test, sigmas) - teacher).pow(2).mean()
    fitted = (dode.sample(den, solver, test, sigmas, lam) - teacher).pow(2).mean()
    assert fitted < 0.9 * base, f"MSE base {base:.3e}, D-PNDM {fitted:.3e}"


def test_nfe_accounting_and_minimum_steps():
    assert [get_solver("pndm").nfe(n) for n in (4, 5, 10)] == [13, 14, 19]
    assert [get_solver("plms").nfe(n) for n in (2, 5)] == [3, 6]
    assert get_solver("pndm", stages="grid").nfe(7) == 13
    with pytest.raises(ValueError, match="at least 4 steps"):
        get_solver("pndm").check_grid([3.0, 2.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="stages must be"):
        get_solver("pndm", stages="log")
    assert np.isclose(get_solver("pndm").stage_sigmas([4.0, 2.0, 1.0, 0.5, 0.0])[0].item(), 3.0)
