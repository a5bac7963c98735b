"""``dode.grids.schedules.grid_for_model``: a model's σ grid, rounded to the σ the model evaluates at.

A DDPM model with ``sigma_to_t="snap"`` runs its network at the nearest table timestep. On a grid
whose σ are off the table (Karras) the solver would scale the input (``c_in``) and convert ε → x̂0
with the unsnapped σ while the network sees the snapped timestep; the grid is therefore rounded
to the table, as EDM rounds its steps (``net.round_sigma``).
"""

from __future__ import annotations

import math

import pytest
import torch
from _tiny import make_tiny_unet, scheduler_config

import dode
from dode.denoisers import DiffusersDenoiser
from dode.grids.schedules import grid_for_model, karras, time_uniform, vp_sigmas
from dode.solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_thread")

import diffusers  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    return make_tiny_unet(seed=0)


def table():
    ac = diffusers.DDPMScheduler(**scheduler_config()).alphas_cumprod
    return ac, vp_sigmas(ac)


def test_snap_model_karras_grid_is_on_the_table(unet):
    """Every σ the network is called at is a table σ, and the network's timestep is the index
    of that very σ: c_in and the ε → x̂0 conversion use the σ the network runs at."""
    ac, tab = table()
    den = DiffusersDenoiser(unet, ac, sigma_to_t="snap")
    plain = karras(6, max(0.002, den.sigma_min), min(80.0, den.sigma_max))
    assert not all(torch.isclose(tab, s, rtol=1e-12, atol=0).any() for s in plain[:-1])
    grid = grid_for_model(den, "karras", 6)
    assert len(grid) == 7 and grid[-1] == 0 and (grid[1:] < grid[:-1]).all()
    # each point is the table σ nearest to the Karras point (in log σ)
    near = (plain[:-1, None].log() - tab[None].log()).abs().argmin(1)
    torch.testing.assert_close(grid[:-1], tab[near], rtol=1e-12, atol=0)

    called, steps = [], []
    inner = den.denoise
    den.denoise = lambda x, s: (called.append(s.reshape(-1)[0].item()), inner(x, s))[1]
    hook = den.unet.register_forward_pre_hook(lambda m, a: steps.append(int(a[1].reshape(-1)[0])))
    try:
        with torch.no_grad():
            dode.sample(den, "ddim", torch.randn(2, 3, 8, 8), grid)
    finally:
        hook.remove()
    assert len(called) == len(steps) == 6
    for s, t in zip(called, steps):
        assert s == tab[t].float().item(), (s, t)  # σ arrives in the sample's float32


def test_interp_model_grid_unchanged(unet):
    ac, _ = table()
    den = DiffusersDenoiser(unet, ac, sigma_to_t="interp")
    expected = karras(6, max(0.002, den.sigma_min), min(80.0, den.sigma_max))
    assert torch.equal(grid_for_model(den, "karras", 6), expected)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_snap_parity_holds(unet, spacing):
    """A table grid is kept bit for bit, and DDIM on it still equals diffusers' DDIMScheduler."""
    ac, _ = table()
    den = DiffusersDenoiser(unet, ac, prediction_type="v_prediction", sigma_to_t="snap")
    steps = 5
    grid = grid_for_model(den, "time_uniform", steps, {"spacing": spacing})
    assert torch.equal(grid, time_uniform(steps, ac, spacing=spacing))

    sched = diffusers.DDIMScheduler(
        **{**scheduler_config("v_prediction"), "clip_sample": False},
        set_alpha_to_one=True,
        timestep_spacing=spacing,
    )
    sched.set_timesteps(steps)
    assert torch.equal(grid[:-1], vp_sigmas(ac)[sched.timesteps.long()])
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x_vp = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x_vp = sched.step(unet(x_vp, t).sample, t, x_vp).prev_sample
        x = noise * math.sqrt(1 + grid[0].item() ** 2)
        out = get_solver("ddim")(den.eps, x, grid)
    torch.testing.assert_close(out, x_vp, atol=1e-4, rtol=0)


def test_rounding_that_merges_points_is_refused(unet):
    ac, _ = table()
    den = DiffusersDenoiser(unet, ac, sigma_to_t="snap")
    with pytest.raises(ValueError, match="same table σ"):
        grid_for_model(den, "karras", 400)
    # the same grid is fine for a model that does not snap
    interp = DiffusersDenoiser(unet, ac, sigma_to_t="interp")
    assert len(grid_for_model(interp, "karras", 400)) == 401


def test_snap_model_teacher_runs_at_table_sigmas(unet):
    """The teacher's refined grid is rounded to the table too (the student's points kept), so
    every σ the teacher calls the network at is the σ of the timestep the network receives."""
    ac, tab = table()
    den = DiffusersDenoiser(unet, ac, sigma_to_t="snap")
    grid = grid_for_model(den, "karras", 4)
    called, steps = [], []
    inner = den.denoise
    den.denoise = lambda x, s: (called.append(s.reshape(-1)[0].item()), inner(x, s))[1]
    hook = den.unet.register_forward_pre_hook(lambda m, a: steps.append(int(a[1].reshape(-1)[0])))
    try:
        states = dode.teacher_states(den, "ddim", torch.randn(2, 3, 8, 8), grid, 10)
    finally:
        hook.remove()
    assert set(states) == set(grid[1:].tolist())
    assert len(called) == len(steps) > 4 * 5  # refined: several teacher steps per student step
    for s, t in zip(called, steps):
        assert s == tab[t].float().item(), (s, t)


def test_round_refined_identity_keeps_the_grid():
    from dode.grids.schedules import refine, round_refined

    g = refine(karras(4, 0.01, 80.0), 10)
    assert torch.equal(round_refined(g, lambda s: s, keep=g[1:4].tolist()), g)
