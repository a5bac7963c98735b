"""Learned σ grids fitted with λ (dode.learned_grid)."""

from __future__ import annotations

import pytest
import torch

import dode
from dode.denoisers import CallableDenoiser
from dode.files.solver_file import FittedSolver
from dode.grids.schedules import karras
from dode.learned_grid import (
    dp_brute_force,
    dp_search,
    grid_from_logits,
    learned_dp,
    learned_sgd,
    logits_from_grid,
)
from dode.solvers import get_solver

S2 = 0.25


def _gauss() -> CallableDenoiser:
    """Data N(m, S2) per pixel, m = 0.3: D(x, σ) = m + (x − m) · S2 / (S2 + σ²) exactly."""
    return CallableDenoiser(
        lambda x, s: 0.3 + (x - 0.3) * S2 / (S2 + s**2), 0.01, 80.0, sample_shape=(4,)
    )


def _noise(b: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("free_start", [False, True])
def test_dp_search_finds_the_brute_force_optimum(seed, free_start):
    g = torch.Generator().manual_seed(seed)
    m = 8
    cost = torch.rand(m + 1, m + 1, generator=g, dtype=torch.float64)
    start = torch.rand(m + 1, generator=g, dtype=torch.float64) if free_start else None
    for n in (1, 2, 3, 5):
        path, total = dp_search(cost, n, start)
        want, best = dp_brute_force(cost, n, start)
        assert total == pytest.approx(best, rel=1e-12)
        assert path == want and len(path) == n + 1 and path[-1] == m
        assert all(a < b for a, b in zip(path[:-1], path[1:]))
        if start is None:
            assert path[0] == 0


def test_grid_from_logits_is_always_a_valid_grid():
    g = torch.Generator().manual_seed(1)
    for n in (2, 3, 7):
        for scale in (0.1, 3.0, 30.0):
            w = torch.randn(n, generator=g, dtype=torch.float64) * scale
            s = grid_from_logits(w, 80.0, 0.005)
            assert len(s) == n + 1 and s[0] == 80.0 and s[-1] == 0
            assert bool((s[1:] < s[:-1]).all()) and bool((s[:-1] > 0.005).all())
    k = karras(5, 0.01, 80.0)
    assert torch.allclose(grid_from_logits(logits_from_grid(k, 0.005), 80.0, 0.005), k, rtol=1e-12)


SOLVERS = [
    ("ddim", {}),
    ("euler", {}),
    ("heun", {}),
    ("ipndm", {}),
    ("dpm_solver", {"order": 2}),
    ("dpm_solver", {"order": 3}),
    ("dpm_solver", {"order": 2, "stages": "grid"}),
    ("dpm_solver", {"order": 3, "stages": "grid"}),
    ("dpm_solver_pp", {"order": 2}),
    ("dpm_solver_pp", {"order": 3}),
    ("deis", {"order": 3}),
    ("deis", {"order": 3, "basis": "logrho"}),
    ("deis", {"order": 2, "basis": "rho"}),
    ("unipc", {"order": 2}),
    ("unipc", {"order": 3}),
    ("unipc", {"order": 3, "variant": "bh1"}),
]


@pytest.mark.parametrize("name,opts", SOLVERS)
def test_gradients_reach_the_grid_parameters_through_every_solver(name, opts):
    den = _gauss()
    solver = get_solver(name, **opts)
    n = 4 if name != "heun" else 3
    logits = torch.nn.Parameter(logits_from_grid(karras(n, 0.02, 80.0), 0.01))
    s = grid_from_logits(logits, 80.0, 0.01)
    noise = _noise()
    x = solver.solve(den.x0 if solver.consumes == "x0" else den.eps, noise * 80.0,
                     [s[0].item(), *s[1:].unbind()], None)  # fmt: skip
    # the same numbers as the float grid
    ref = dode.sample(den, solver, noise, s.detach())
    assert torch.allclose(x.detach(), ref, rtol=1e-9, atol=1e-12)
    ((x - 0.3) ** 2).mean().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert float(logits.grad.abs().sum()) > 0


def test_learned_sgd_grid_is_valid_beats_its_start_and_round_trips(tmp_path):
    den = _gauss()
    noise = _noise(32)
    fs = learned_sgd(den, "dpm_solver_pp", 4, noise, init="karras", steps=25, lr=0.1)
    s = fs.sigmas
    assert len(s) == 5 and s[-1] == 0 and bool((s[1:] < s[:-1]).all())
    rec = fs.metrics["grid"]
    assert rec["method"] == "learned_sgd" and rec["loss_best"] < rec["loss_init"]
    path = fs.save(tmp_path / "sgd.safetensors")
    back = FittedSolver.load(path)
    assert torch.equal(back.sigmas, s) and torch.equal(back.lambdas, fs.lambdas)
    assert back.metrics["grid"]["method"] == "learned_sgd"
    held = _noise(8, seed=5)
    assert torch.equal(
        back.sample(den, held), dode.sample(den, back.build_solver(), held, s, fs.lambdas)
    )


def test_learned_dp_grid_is_valid_and_round_trips(tmp_path):
    den = _gauss()
    noise = _noise(32)
    for free_start in (False, True):
        fs = learned_dp(den, "ipndm", 4, noise, fine_steps=30, free_start=free_start)
        s = fs.sigmas
        assert len(s) == 5 and s[-1] == 0 and bool((s[1:] < s[:-1]).all())
        fine = karras(30, 0.01, 80.0)
        assert set(s.tolist()) <= set(fine.tolist())  # every step is a fine-grid point
        if not free_start:
            assert s[0] == 80.0
        back = FittedSolver.load(fs.save(tmp_path / f"dp{free_start}.safetensors"))
        assert (
            torch.equal(back.sigmas, s)
            and back.metrics["grid"]["indices"] == fs.metrics["grid"]["indices"]
        )


@pytest.mark.parametrize("schedule", ["learned_dp", "learned_sgd"])
def test_config_schedule_option_builds_a_learned_grid_and_records_it(schedule):
    from dode.denoisers import GaussianMixtureDenoiser
    from dode.denoisers.loading import MODELS, register_model
    from dode.lit import DODEModule

    g = torch.Generator().manual_seed(0)
    means = torch.randn(2, 4, generator=g, dtype=torch.float64)

    @register_model("test-learned-grid")
    def _make(**_):
        covs = 0.1 * torch.eye(4, dtype=torch.float64).expand(2, 4, 4)
        return GaussianMixtureDenoiser(means, covs, sample_shape=(1, 2, 2))

    try:
        opts = {"seeds": "0-15", "fine_steps": 20} if schedule == "learned_dp" else {
            "seeds": "0-15", "steps": 3, "init": "karras"}  # fmt: skip
        m = DODEModule(model="test-learned-grid", solver="ipndm", nfe=4, dtype="float64",
                       schedule=schedule, schedule_options=opts)  # fmt: skip
        s = m.sigmas
        assert len(s) == 5 and s[-1] == 0 and bool((s[1:] < s[:-1]).all())
        rec = m.fitted_solver().metrics["grid"]
        assert rec["schedule"] == schedule and rec["method"] == schedule and rec["seeds"] == "0-15"
        assert torch.equal(m.fitted_solver().sigmas, s)
        with pytest.raises(ValueError, match="bad schedule_options"):
            DODEModule(model="test-learned-grid", solver="ipndm", nfe=4, schedule=schedule,
                       schedule_options={"nonsense": 1})  # fmt: skip
    finally:
        MODELS.pop("test-learned-grid", None)


def test_learned_dp_refinement_uses_the_student_and_never_ends_worse():
    """The refinement starts from the DP's path and only accepts improvements of the student's
    own final MSE (with λ) to the teacher, within its evaluation budget."""
    den = _gauss()
    noise = _noise(32)
    plain = learned_dp(den, "dpm_solver_pp", 4, noise, fine_steps=30, refine_budget=0.0)
    ref = learned_dp(den, "dpm_solver_pp", 4, noise, fine_steps=30, refine_budget=3.0,
                     refine_seeds=None)  # fmt: skip
    rec = ref.metrics["grid"]["refine"]
    assert "refine" not in plain.metrics["grid"]
    assert rec["indices_dp"] == plain.metrics["grid"]["indices"]
    assert 2 <= rec["evaluations"] <= int(3.0 * 30 / (3 * 4))
    teacher = dode.sample(den, get_solver("dpm_solver_pp", order=3), noise, karras(30, 0.01, 80.0))

    def err(fs):
        x = dode.sample(den, fs.build_solver(), noise, fs.sigmas, fs.lambdas)
        return float(((x - teacher) ** 2).mean())

    assert err(ref) <= err(plain) * (1 + 1e-9)
    assert rec["value"] == pytest.approx(err(ref), rel=1e-6)


def test_learned_sgd_warm_starts_from_the_dp_grid():
    den = _gauss()
    noise = _noise(32)
    fs = learned_sgd(den, "unipc", 4, noise, steps=3, dp_options={"fine_steps": 30})
    rec = fs.metrics["grid"]
    assert rec["init"] == "dp" and rec["dp"]["method"] == "learned_dp"
    dp = learned_dp(den, "unipc", 4, noise, fine_steps=30)
    assert rec["init_sigmas"] == dp.sigmas.tolist()
    assert rec["loss_best"] <= rec["loss_init"]
    s = fs.sigmas
    assert len(s) == 5 and s[-1] == 0 and bool((s[1:] < s[:-1]).all())
    with pytest.raises(ValueError, match="dp_options"):
        learned_sgd(den, "unipc", 4, noise, init="karras", dp_options={"fine_steps": 30})


def test_learned_dp_on_a_flow_model_beats_the_best_standard_flow_grid():
    """A rectified flow (σ_max = ∞): the standard family holds shifted-uniform flow grids, and
    the learned grid + λ lands closer to the converged ODE solution than the best of them."""
    from dode.denoisers import GaussianMixtureDenoiser, GaussianMixtureFlow
    from dode.standard_grids import reference_solution, select_grid, standard_grids

    g = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(3, 6, generator=g, dtype=torch.float64)
    covs = 0.05 * torch.eye(6, dtype=torch.float64).expand(3, 6, 6)
    den = GaussianMixtureFlow(GaussianMixtureDenoiser(means, covs, sample_shape=(6,)))
    grids = standard_grids(den)
    assert {"flow(shift=1)", "flow(shift=3)", "flow(shift=3)+jump"} <= {s.label for s in grids}
    for spec in grids:
        s = spec.build(4)
        assert len(s) == 5 and s[-1] == 0 and bool((s[1:] < s[:-1]).all()) and s[0] < 1e4
    fit = torch.randn(64, 6, generator=g, dtype=torch.float64)
    held = torch.randn(128, 6, generator=g, dtype=torch.float64)
    ref_fit = reference_solution(den, fit, nfe=60)
    ref_held = reference_solution(den, held, nfe=60)
    solver = get_solver("dpm_solver_pp", order=2)
    best = select_grid(den, solver, 4, fit, grids=grids, reference=ref_fit)
    fs = learned_dp(den, solver, 4, fit)
    assert fs.sigmas[0] <= 999.0 and fs.sigmas[-1] == 0

    def err(s, lam=None):
        return float(((dode.sample(den, solver, held, s, lam) - ref_held) ** 2).mean())

    base = err(best.sigmas)
    learned = err(fs.sigmas, fs.lambdas)
    assert learned < base
