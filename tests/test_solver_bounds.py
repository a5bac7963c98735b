"""Learned-solver files checked like λ: history coefficients and model-time shifts beyond their
bounds (:mod:`dode.correction`: ``COEFFICIENT_BOUND``, :func:`~dode.correction.shift_bounds`)
are refused by the one check every host goes through (loading a ``FittedSolver``, the
scheduler's own config, ``dode.sample``), naming the entry and the fix; a shift that takes a
call outside the model's σ range is refused where the model is known, naming the call. The
end-to-end fit's parametrisation cannot leave the same bounds."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _tiny import inside_shift_bounds, scheduler_config, tiny_alphas_cumprod
from safetensors import safe_open
from safetensors.torch import save_file

import dode
from dode.cli.sample import main as sample_main
from dode.correction import (
    COEFFICIENT_BOUND,
    SHIFT_FRACTION,
    bounded_coefficients,
    bounded_shift,
    call_sigmas,
    shift_bounds,
)
from dode.denoisers.gmm import gaussian
from dode.files.solver_file import FittedSolver
from dode.grids.schedules import karras
from dode.hosts.diffusers import DODEScheduler
from dode.hosts.export import export
from dode.hosts.k_diffusion import KDiffusionSampler
from dode.learned_solver import fit_end_to_end
from dode.solvers import get_solver

STEPS = 5


def _file(tmp_path, name="dpm_solver_pp", opts=None, *, model=None):
    """A valid end-to-end file (small λ, C, ξ inside the bounds) for the tiny DDPM table."""
    solver = get_solver(name, **(opts or {"order": 2}))
    grid = karras(STEPS, 0.02, 80.0)
    k = solver.nfe(STEPS)
    g = torch.Generator().manual_seed(0)
    lam = 0.2 * torch.randn(k, generator=g, dtype=torch.float64)
    lam[0] = 0.0
    c = torch.tril(0.1 * torch.randn(k, k, generator=g, dtype=torch.float64), diagonal=-2)
    xi = inside_shift_bounds(solver, grid, 0.2 * torch.randn(k, generator=g, dtype=torch.float64))
    table = tiny_alphas_cumprod()
    schedule = {
        "family": "vp",
        "alphas_cumprod": table.tolist(),
        "prediction_type": "epsilon",
        "num_train_timesteps": len(table),
    }
    fs = FittedSolver(
        solver=solver.config(), sigmas=grid, lambdas=lam, coefficients=c, shift=xi,
        model=model or {"class": "DiffusersDenoiser", "schedule": schedule},
    )  # fmt: skip
    return fs.save(tmp_path / "e2e.safetensors"), fs


def _edit(path, out, **change):
    """A copy of the solver file at ``path`` with tensors edited as a user would by hand."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for key, fn in change.items():
        tensors[key] = fn(tensors[key].clone())
    save_file(tensors, str(out), metadata=meta)
    return out


def _set(index, value):
    def fn(t):
        t[index] = value
        return t

    return fn


BAD = [
    ("coefficients", (3, 1), 200.0, r"history coefficient C\[3, 1\] = 200 is beyond the bound"),
    ("coefficients", (4, 0), 1e6, r"history coefficient C\[4, 0\] = 1e\+06 is beyond the bound"),
    ("shift", 2, 5.0, r"model-time shift ξ\[2\] = 5 of call 2 .* outside its bound"),
    ("shift", 1, 20.0, r"model-time shift ξ\[1\] = 20 of call 1 .* outside its bound"),
    ("shift", 3, -20.0, r"model-time shift ξ\[3\] = -20 of call 3 .* outside its bound"),
    ("shift", 0, 0.01, r"ξ\[0\] = 0.01 of call 0 .* never above the grid's first σ"),
    ("lambdas", 2, 50.0, r"λ\[2\] = 50 of a solver with history coefficients is beyond"),
]
IDS = [f"{k}{i}={v:g}" for k, i, v, _ in BAD]


def test_shift_bounds_are_half_the_smallest_adjacent_log_step():
    grid = karras(STEPS, 0.02, 80.0)
    calls = call_sigmas(get_solver("ddim"), grid)
    assert calls == grid[:-1].tolist()
    lo, hi = shift_bounds(calls, grid)
    logs = grid[:-1].log()
    steps = logs[:-1] - logs[1:]  # the log steps between calls
    assert hi[0] == 0 and torch.isclose(lo[0], -SHIFT_FRACTION * steps[0])
    for k in range(1, len(calls) - 1):
        b = SHIFT_FRACTION * min(steps[k - 1], steps[k])
        assert torch.isclose(hi[k], b) and torch.isclose(lo[k], -b)
    assert torch.isclose(hi[-1], SHIFT_FRACTION * steps[-1])
    # with the model's σ_min as the floor, the last call cannot go below it
    lo_f, _ = shift_bounds(calls, grid, floor=0.01)
    assert calls[-1] * math.exp(float(lo_f[-1])) >= 0.01
    assert float(lo_f[-1]) == pytest.approx(-SHIFT_FRACTION * min(steps[-1], math.log(2)))
    # a two-stage solver: its stage σ are points too, so no call passes another
    heun = get_solver("dpm_solver", order=2)
    calls = call_sigmas(heun, grid)
    lo, hi = shift_bounds(calls, grid)
    net_lo = [s * math.exp(v) for s, v in zip(calls, lo.tolist())]
    net_hi = [s * math.exp(v) for s, v in zip(calls, hi.tolist())]
    pts = sorted(set(calls) | set(grid[:-1].tolist()))
    for s, a, b in zip(calls, net_lo, net_hi):
        i = pts.index(s)
        assert a >= (pts[i - 1] if i else 0) and b <= (pts[i + 1] if i + 1 < len(pts) else s)


def test_the_parametrisation_cannot_leave_the_bounds():
    raw = torch.tensor([-1e9, -30.0, 0.0, 0.3, 30.0, 1e9], dtype=torch.float64)
    c = bounded_coefficients(raw)
    assert c.abs().max() <= COEFFICIENT_BOUND and c[2] == 0
    assert c[3] == pytest.approx(0.3, rel=1e-3)  # slope 1 at 0
    lo = torch.tensor([-0.4, -0.2, -0.1], dtype=torch.float64)
    hi = torch.tensor([0.0, 0.2, 0.3], dtype=torch.float64)
    for u in (-1.0, -0.5, 0.0, 0.5, 1.0):
        xi = bounded_shift(torch.full((3,), u, dtype=torch.float64), lo, hi)
        assert ((xi >= lo) & (xi <= hi)).all()
    assert (bounded_shift(torch.zeros(3, dtype=torch.float64), lo, hi) == 0).all()


@pytest.mark.parametrize("key,index,value,match", BAD, ids=IDS)
def test_every_host_refuses_an_edited_file(tmp_path, key, index, value, match):
    path, fs = _file(tmp_path)
    bad = _edit(path, tmp_path / "bad.safetensors", **{key: _set(index, value)})
    with pytest.raises(ValueError, match=match):
        FittedSolver.load(bad)
    with pytest.raises(ValueError, match=match):  # k-diffusion-style hosts
        KDiffusionSampler(bad)
    with pytest.raises(ValueError, match=match):  # diffusers
        DODEScheduler.from_solver_file(bad)
    with pytest.raises(ValueError, match=match):  # python -m dode.export
        export(str(bad), str(tmp_path / "exported"))
    assert not (tmp_path / "exported").exists()
    # python -m dode.sample: one error line, status 2, before any model is loaded
    with pytest.raises(SystemExit) as e:
        sample_main(["--solver_file", str(bad), "--out", str(tmp_path / "s"), "--seeds", "0-1"])
    assert e.value.code == 2
    # dode.sample with the same values
    d = {"lambdas": fs.lambdas.clone(), "coefficients": fs.coefficients.clone(),
         "shift": fs.shift.clone()}  # fmt: skip
    d[key][index] = value
    den = gaussian(torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=match):
        dode.sample(den, fs.build_solver(), torch.zeros(1, 4), fs.sigmas, **d)


def test_an_edited_scheduler_config_is_refused(tmp_path):
    """A ``scheduler_config.json`` edited by hand (past the solver file's check)."""
    path, fs = _file(tmp_path)
    sched = DODEScheduler.from_solver_file(path)
    sched.save_pretrained(tmp_path / "sched")
    cfg_path = tmp_path / "sched" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_time_shift"][2] = 20.0
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"ξ\[2\] = 20 of call 2"):
        DODEScheduler.from_pretrained(tmp_path / "sched")
    cfg["model_time_shift"][2] = 0.0
    cfg["coefficients"][4][1] = 1e6
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"C\[4, 1\] = 1e\+06"):
        DODEScheduler.from_pretrained(tmp_path / "sched")


def test_a_shift_below_the_models_sigma_min_is_refused_naming_the_call(tmp_path):
    """Inside the grid's bounds but below the model's σ range: refused where the model is
    known (the denoiser, the scheduler's ᾱ table, a k-diffusion host's σ table)."""
    solver = get_solver("ddim")
    table = tiny_alphas_cumprod()
    s_min = float(((1 - table) / table).sqrt().min())
    grid = karras(STEPS, 1.2 * s_min, 80.0)
    lam = torch.zeros(STEPS, dtype=torch.float64)
    xi = torch.zeros(STEPS, dtype=torch.float64)
    lo, _ = shift_bounds(call_sigmas(solver, grid), grid)
    xi[-1] = 0.99 * lo[-1]  # the grid allows it; the model's σ_min does not
    assert grid[-2] * math.exp(float(xi[-1])) < s_min
    schedule = {"family": "vp", "alphas_cumprod": table.tolist(), "prediction_type": "epsilon",
                "num_train_timesteps": len(table)}  # fmt: skip
    fs = FittedSolver(solver=solver.config(), sigmas=grid, lambdas=lam, shift=xi,
                      model={"class": "DiffusersDenoiser", "schedule": schedule})  # fmt: skip
    path = fs.save(tmp_path / "low.safetensors")
    match = rf"ξ\[{STEPS - 1}\] = .* takes call {STEPS - 1} .* below the model's σ range"
    den = gaussian(
        torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64), sigma_min=s_min
    )
    with pytest.raises(ValueError, match=match):
        fs.sample(den, torch.zeros(1, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=match):
        DODEScheduler.from_solver_file(path, like=scheduler_config())

    class Discrete(torch.nn.Module):  # a k-diffusion DiscreteSchedule-style host model
        def __init__(self):
            super().__init__()
            self.register_buffer("sigmas", ((1 - table) / table).sqrt().float())
            self.register_buffer("log_sigmas", self.sigmas.log())

        def forward(self, x, sigma):
            return torch.zeros_like(x)

    fn = KDiffusionSampler(path)
    x = torch.zeros(1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        fn(Discrete(), x, fn.sigmas, disable=True)
    # the same file without the shift runs
    ok = FittedSolver(solver=solver.config(), sigmas=grid, lambdas=lam)
    ok.sample(den, torch.zeros(1, 4, dtype=torch.float64))


def test_the_fit_stays_inside_the_bounds_with_wild_learning_rates():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 4, dtype=torch.float64, generator=g)
    cov = a @ a.T / 4 + torch.diag(torch.tensor([0.01, 0.05, 0.3, 1.0], dtype=torch.float64))
    den = gaussian(torch.zeros(4, dtype=torch.float64), cov, sigma_max=80.0)

    def noise(seed, b=24):
        return torch.randn(b, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

    z, zs = noise(0), noise(1)
    ref = den.exact_solution(z * 80.0, 80.0, 0.0)
    rs = den.exact_solution(zs * 80.0, 80.0, 0.0)
    solver = get_solver("dpm_solver_pp", order=2)
    fs = fit_end_to_end(
        den, solver, karras(4, 0.002, 80.0), z, ref, select_noise=zs, select_reference=rs,
        steps=8, eval_every=1, lr_coefficients=50.0, lr_shift=20.0, accept_level=None,
        objective="l2",
    )  # fmt: skip
    rec = fs.metrics["end_to_end"]
    assert rec["coefficient_bound"] == COEFFICIENT_BOUND and rec["shift_fraction"] == SHIFT_FRACTION
    if fs.shift is not None:
        lo, hi = shift_bounds(call_sigmas(solver, fs.sigmas), fs.sigmas, floor=den.sigma_min)
        assert ((fs.shift >= lo - 1e-12) & (fs.shift <= hi + 1e-12)).all()
    if fs.coefficients is not None:
        assert fs.coefficients.abs().max() <= COEFFICIENT_BOUND
        assert fs.lambdas.abs().max() <= COEFFICIENT_BOUND
    FittedSolver(**{k: getattr(fs, k) for k in ("solver", "sigmas", "lambdas", "coefficients",
                                                 "shift", "model")})  # fmt: skip
