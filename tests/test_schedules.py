"""σ grids against diffusers' schedulers and the EDM formula; refine() containment."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EDMEulerScheduler

from dode.grids.schedules import (
    explicit,
    karras,
    log_uniform,
    refine,
    time_uniform,
    vp_alphas_cumprod,
    vp_sigmas,
)
from dode.solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("n", [1, 2, 5, 18])
def test_karras_matches_edm_formula_and_diffusers(n):
    s = karras(n)
    assert s.dtype == torch.float64 and len(s) == n + 1
    assert s[0].item() == 80.0 and s[-1].item() == 0.0
    assert (s[1:] < s[:-1]).all()
    if n > 1:
        assert s[-2].item() == pytest.approx(0.002, rel=1e-14)
        # Karras et al. (2022), Eq. 5, written out independently.
        i = torch.arange(n, dtype=torch.float64)
        lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
        torch.testing.assert_close(s[:-1], (hi + i / (n - 1) * (lo - hi)) ** 7, rtol=1e-14, atol=0)
        edm = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0)
        edm.set_timesteps(n)
        torch.testing.assert_close(s.float(), edm.sigmas.float(), rtol=1e-6, atol=0)


def test_log_uniform_endpoints_and_spacing():
    s = log_uniform(6, sigma_min=0.01, sigma_max=10.0)
    assert s[0].item() == pytest.approx(10.0) and s[-2].item() == pytest.approx(0.01)
    assert s[-1].item() == 0.0
    steps = s[:-1].log().diff()
    torch.testing.assert_close(steps, steps[:1].expand_as(steps), rtol=1e-12, atol=0)


@pytest.mark.parametrize("factor", [2, 3, 10])
@pytest.mark.parametrize("space", ["rho", "log", "linear"])
def test_refine_contains_every_original_point_bit_for_bit(factor, space):
    s = time_uniform(7)  # DDPM-table σ: not on any closed-form grid
    fine = refine(s, factor, space=space)
    assert len(fine) == factor * (len(s) - 1) + 1
    assert torch.equal(fine[::factor], s)  # same bits, same positions
    assert (fine[1:] < fine[:-1]).all() and fine[-1] == 0


def test_refine_of_karras_in_rho_space_is_a_karras_grid():
    """Between σ_max and σ_min, refining an N-step Karras grid C× in σ^(1/ρ) gives the Karras
    grid with C·(N−1) intervals there (karras(C·(N−1)+1)); the last interval, σ_min → 0, is
    split uniformly in σ^(1/ρ) too."""
    n, c, rho = 6, 10, 7.0
    fine = refine(karras(n), c, space="rho", rho=rho)
    dense = karras(c * (n - 1) + 1)
    torch.testing.assert_close(fine[: len(dense) - 1], dense[:-1], rtol=1e-13, atol=0)
    tail = fine[len(dense) - 2 :] ** (1 / rho)  # σ_min … 0 in σ^(1/ρ)
    expected = torch.linspace(0.002 ** (1 / rho), 0.0, c + 1, dtype=torch.float64)
    torch.testing.assert_close(tail, expected, rtol=0, atol=1e-15)


def test_refine_include_inserts_stage_points_exactly():
    s = karras(5)
    stages = get_solver("dpm_solver", order=3).stage_sigmas(s)
    plain = refine(s, 4)
    fine = refine(s, 4, include=stages)
    values = set(fine.tolist())
    assert set(stages.tolist()) <= values and set(s.tolist()) <= values
    assert set(plain.tolist()) <= values
    assert len(fine) == len(plain) + len(set(stages.tolist()) - set(plain.tolist()))
    assert (fine[1:] < fine[:-1]).all()


@pytest.mark.parametrize(
    "spacing,offset,n",
    [("leading", 0, 10), ("leading", 1, 50), ("trailing", 0, 7), ("linspace", 0, 25)],
)
def test_time_uniform_equals_diffusers_ddim_timesteps(spacing, offset, n):
    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        timestep_spacing=spacing,
        steps_offset=offset,
    )
    sched.set_timesteps(n)
    s = time_uniform(n, spacing=spacing, steps_offset=offset)
    assert len(s) == n + 1 and s[-1] == 0
    table = vp_sigmas(vp_alphas_cumprod())
    ts = [int((table == v).nonzero()) for v in s[:-1]]  # exact table entries
    assert ts == sched.timesteps.tolist()
    # ᾱ = 1/(1 + σ²), compared in ᾱ: diffusers keeps ᾱ in float32, so 1 − ᾱ near t = 0 has
    # few significant bits.
    a = sched.alphas_cumprod[sched.timesteps].double()
    torch.testing.assert_close(1 / (1 + s[:-1] ** 2), a, rtol=1e-6, atol=0)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_alphas_cumprod_match_diffusers(schedule):
    kw = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
    ours = vp_alphas_cumprod(beta_schedule=schedule, **kw)
    theirs = DDPMScheduler(beta_schedule=schedule, **kw).alphas_cumprod.double()
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=1e-7)


def test_explicit_appends_zero_and_validates():
    assert torch.equal(explicit([3.0, 1.0]), torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="strictly descending"):
        explicit([1.0, 3.0])
