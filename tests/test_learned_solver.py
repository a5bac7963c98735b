"""The end-to-end learned solver (dode.learned_solver): grid + history coefficients + shift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import dode
from dode.correction import DODECorrection, model_fn
from dode.denoisers.gmm import gaussian
from dode.files.solver_file import FittedSolver
from dode.grids.schedules import karras
from dode.learned_grid import grid_from_logits
from dode.learned_solver import fit_end_to_end, history_mask
from dode.solvers import get_solver

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SOLVERS = [
    ("ddim", {}),
    ("dpm_solver_pp", {"order": 2}),
    ("unipc", {}),
    ("ipndm", {}),
    ("deis", {}),
    ("heun", {}),
]


def _gauss():
    """An anisotropic 4-D Gaussian: exact denoiser, ODE solution in closed form."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 4, dtype=torch.float64, generator=g)
    cov = a @ a.T / 4 + torch.diag(torch.tensor([0.01, 0.05, 0.3, 1.0], dtype=torch.float64))
    return gaussian(torch.tensor([0.5, -0.3, 0.1, 0.0], dtype=torch.float64), cov, sigma_max=80.0)


def _noise(b: int, seed: int) -> torch.Tensor:
    return torch.randn(b, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _exact(den, noise: torch.Tensor) -> torch.Tensor:
    return den.exact_solution(noise * den.sigma_max, den.sigma_max, 0.0)


def _mse(a, b) -> float:
    return float(((a - b) ** 2).mean())


def _problem(fit=48, select=48, seed=0):
    den = _gauss()
    z, zs = _noise(fit, seed), _noise(select, seed + 1)
    return den, z, _exact(den, z), zs, _exact(den, zs)


@pytest.mark.parametrize("name,opts", SOLVERS)
def test_zero_coefficients_and_shift_are_the_base_solver_bit_for_bit(name, opts):
    den = _gauss()
    solver = get_solver(name, **opts)
    grid = karras(4, 0.002, 80.0)
    k = solver.nfe(4)
    z = _noise(8, 0)
    base = dode.sample(den, solver, z, grid)
    zero = torch.zeros(k, dtype=torch.float64)
    out = dode.sample(
        den, solver, z, grid, zero, coefficients=torch.zeros(k, k, dtype=torch.float64),
        shift=zero,
    )  # fmt: skip
    assert torch.equal(out, base)


@pytest.mark.parametrize("name,opts", SOLVERS[:3])
def test_history_coefficients_follow_the_formula_on_raw_outputs(name, opts):
    """õ_k = o_k + Σ_{j<k} c_kj (o_k − o_j), c_k,k−1 = λ_k, model at σ_k·exp(ξ_k), checked
    against a model callable that applies the formula itself."""
    den = _gauss()
    solver = get_solver(name, **opts)
    grid = karras(5, 0.002, 80.0)
    k = solver.nfe(5)
    g = torch.Generator().manual_seed(1)
    full = torch.tril(torch.randn(k, k, dtype=torch.float64, generator=g) * 0.1, diagonal=-1)
    xi = torch.randn(k, dtype=torch.float64, generator=g) * 0.05
    xi[0], xi[-1] = -xi[0].abs(), xi[-1].abs()  # inside [σ_min, σ_max]: the model's range
    lam = torch.cat([torch.zeros(1, dtype=torch.float64), torch.diagonal(full, -1)])
    hist: list[torch.Tensor] = []
    fn = model_fn(den, solver.consumes)

    def by_hand(x, sigma):
        i = len(hist)
        o = fn(x, torch.as_tensor(sigma, dtype=torch.float64) * torch.exp(xi[i]))
        out = o + sum(((full[i, j] * (o - hist[j])) for j in range(i)), torch.zeros_like(o))
        hist.append(o)
        return out

    z = _noise(6, 2)
    want = solver.solve(by_hand, z * 80.0, grid.tolist(), None)
    got = dode.sample(den, solver, z, grid, lam, coefficients=full * history_mask(k), shift=xi)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_sample_refuses_bad_history_shapes():
    den, solver, grid = _gauss(), get_solver("ddim"), karras(4, 0.002, 80.0)
    z, lam = _noise(2, 0), torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"history coefficients must have shape \[4, 4\]"):
        dode.sample(den, solver, z, grid, lam, coefficients=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="sub-diagonal is λ"):
        dode.sample(den, solver, z, grid, lam, coefficients=torch.eye(4).roll(-1, 1).T)
    with pytest.raises(ValueError, match=r"shift must have shape \[4\]"):
        dode.sample(den, solver, z, grid, lam, shift=torch.zeros(5))
    with pytest.raises(ValueError, match="need λ"):
        dode.sample(den, solver, z, grid, coefficients=torch.zeros(4, 4))


def test_lambda_mode_is_d_ode_sampling():
    den, z, ref, zs, rs = _problem()
    solver = get_solver("dpm_solver_pp", order=2)
    fs = fit_end_to_end(
        den, solver, karras(4, 0.002, 80.0), z, ref, select_noise=zs, select_reference=rs,
        steps=15, coefficients="lambda", time_shift=False,
    )  # fmt: skip
    rec = fs.metrics["end_to_end"]
    assert rec["accepted"] and fs.coefficients is None and fs.shift is None
    assert fs.lambdas.abs().max() > 0
    torch.testing.assert_close(fs.lambdas[:1], torch.zeros(1, dtype=torch.float64))
    held = _noise(32, 9)
    want = dode.sample(den, solver, held, fs.sigmas, lambdas=fs.lambdas)
    assert torch.equal(fs.sample(den, held), want)


@pytest.mark.parametrize(
    "name,opts", [("dpm_solver_pp", {"order": 2}), ("unipc", {}), ("heun", {})]
)
def test_gradients_reach_every_parameter(name, opts):
    den = _gauss()
    solver = get_solver(name, **opts)
    n = 4
    k = solver.nfe(n)
    logits = torch.nn.Parameter(torch.zeros(n, dtype=torch.float64))
    lam = torch.nn.Parameter(torch.zeros(k, dtype=torch.float64))
    coef = torch.nn.Parameter(torch.zeros(k, k, dtype=torch.float64))
    xi = torch.nn.Parameter(torch.zeros(k, dtype=torch.float64))
    z = _noise(16, 0)
    s = grid_from_logits(logits, 80.0, 0.001)
    corr = DODECorrection(
        model_fn(den, solver.consumes), lam, False, coefficients=coef * history_mask(k), shift=xi
    )
    x = solver.solve(corr, z * 80.0, list(s.unbind()), None)
    ((x - _exact(den, z)) ** 2).mean().backward()
    assert (logits.grad.abs() > 0).all()
    assert (lam.grad[1:].abs() > 0).all()  # λ_0 multiplies nothing
    used = history_mask(k).bool()
    assert (coef.grad[used].abs() > 0).all() and (coef.grad[~used] == 0).all()
    assert (xi.grad.abs() > 0).all()


def test_the_fitted_grid_is_valid_even_with_a_wild_learning_rate():
    den, z, ref, zs, rs = _problem()
    solver = get_solver("unipc")
    grid = karras(4, 0.002, 80.0)
    fs = fit_end_to_end(
        den, solver, grid, z, ref, select_noise=zs, select_reference=rs, steps=6, lr=20.0,
        lr_coefficients=5.0, lr_shift=5.0,
    )  # fmt: skip
    solver.check_grid(fs.sigmas)
    assert fs.sigmas[0] == grid[0] and fs.sigmas[-1] == 0 and len(fs.sigmas) == 5
    rec = fs.metrics["end_to_end"]
    assert rec["select_mse"] <= rec["select_mse_base"]
    assert _mse(fs.sample(den, zs), rs) == pytest.approx(rec["select_mse"], rel=1e-12)
    for logits in (torch.randn(6, dtype=torch.float64) * 50, torch.full((6,), -1e3)):
        g = grid_from_logits(logits, 14.6, 0.01)
        get_solver("dpm_solver_pp").check_grid(g)
        assert g[0] == 14.6 and g[-1] == 0


def test_a_fit_that_cannot_improve_returns_the_base_cell():
    den, z, _, zs, _ = _problem()
    solver = get_solver("dpm_solver_pp", order=2)
    grid = karras(4, 0.002, 80.0)
    # the base cell's own samples as the target: nothing beats MSE 0 on the selection seeds
    own, own_s = dode.sample(den, solver, z, grid), dode.sample(den, solver, zs, grid)
    fs = fit_end_to_end(den, solver, grid, z, own, select_noise=zs, select_reference=own_s, steps=5)
    rec = fs.metrics["end_to_end"]
    assert rec["accepted"] is False and rec["select_mse"] == rec["select_mse_base"] == 0.0
    assert torch.equal(fs.sigmas, grid) and not fs.lambdas.any()
    assert fs.coefficients is None and fs.shift is None
    assert torch.equal(fs.sample(den, zs), own_s)
    fs0 = fit_end_to_end(  # no steps: the start, which is exactly the base cell
        den, solver, grid, z, _exact(den, z), select_noise=zs, select_reference=_exact(den, zs),
        steps=0,
    )  # fmt: skip
    assert fs0.metrics["end_to_end"]["accepted"] is False and torch.equal(fs0.sigmas, grid)


def test_the_fit_optimises_what_sample_runs():
    """The selection MSE the fit measured on its best iterate (its own differentiable run) is
    the one FittedSolver.sample gives."""
    den, z, ref, zs, rs = _problem()
    fs = fit_end_to_end(
        den, "unipc", karras(4, 0.002, 80.0), z, ref, select_noise=zs, select_reference=rs,
        steps=10,
    )  # fmt: skip
    rec = fs.metrics["end_to_end"]
    assert rec["accepted"]
    in_fit = dict(rec["select_curve"])[rec["best_step"]]
    assert _mse(fs.sample(den, zs), rs) == pytest.approx(in_fit, rel=1e-10)


def test_end_to_end_fit_lowers_held_out_error_on_the_exact_gaussian():
    den, z, ref, zs, rs = _problem(fit=64, select=64)
    held = _noise(256, 7)
    exact = _exact(den, held)
    solver = get_solver("dpm_solver_pp", order=2)
    grid = karras(4, 0.002, 80.0)
    base = _mse(dode.sample(den, solver, held, grid), exact)
    out = {}
    for mode in ("none", "history"):
        fs = fit_end_to_end(
            den, solver, grid, z, ref, select_noise=zs, select_reference=rs, steps=40,
            coefficients=mode, time_shift=mode == "history",
        )  # fmt: skip
        assert fs.metrics["end_to_end"]["accepted"]
        out[mode] = _mse(fs.sample(den, held), exact)
    assert out["none"] < 0.8 * base
    assert out["history"] < out["none"]


def test_save_load_round_trip_and_format(tmp_path):
    den, z, ref, zs, rs = _problem()
    fs = fit_end_to_end(
        den, "dpm_solver_pp", karras(4, 0.002, 80.0), z, ref, select_noise=zs,
        select_reference=rs, steps=8,
    )  # fmt: skip
    assert fs.is_end_to_end and fs.coefficients.abs().max() > 0 and fs.shift.abs().max() > 0
    path = fs.save(tmp_path / "e2e.safetensors")
    meta = json.loads(safe_open(str(path), framework="pt").metadata()["dode"])
    assert meta["format"] == "dode.fitted_solver/2"
    assert meta["metrics"]["end_to_end"]["accepted"] is True
    back = FittedSolver.load(path)
    for key in ("sigmas", "lambdas", "coefficients", "shift"):
        assert torch.equal(getattr(back, key), getattr(fs, key))
    assert torch.equal(back.sample(den, zs), fs.sample(den, zs))
    assert torch.equal(
        back.sample(den, zs, dode=False), dode.sample(den, back.solver["name"], zs, back.sigmas)
    )


def test_format_1_files_still_load_and_a_format_1_file_with_history_is_refused(tmp_path):
    old = FittedSolver.load(DATA / "fitted_solver_format1.safetensors")  # written by format 1
    assert old.coefficients is None and old.shift is None and not old.is_end_to_end
    assert old.lambdas.tolist() == [0.0, 0.1, -0.05, 0.2]
    den = _gauss()
    z = _noise(4, 0)
    want = dode.sample(den, old.build_solver(), z, old.sigmas, old.lambdas)
    assert torch.equal(old.sample(den, z), want)
    path = old.save(tmp_path / "again.safetensors")
    assert json.loads(safe_open(str(path), "pt").metadata()["dode"])["format"].endswith("/2")
    # a file that says format 1 but carries history tensors is corrupt
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["dode"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["shift"] = torch.zeros(4, dtype=torch.float64)
    save_file(tensors, str(tmp_path / "bad.safetensors"),
              metadata={"dode": json.dumps({**meta, "format": "dode.fitted_solver/1"})})  # fmt: skip
    with pytest.raises(ValueError, match="only format 2 has"):
        FittedSolver.load(tmp_path / "bad.safetensors")


def test_bad_input_is_named():
    den, z, ref, zs, rs = _problem(8, 8)
    grid = karras(4, 0.002, 80.0)
    kw = {"select_noise": zs, "select_reference": rs}
    with pytest.raises(ValueError, match="unknown coefficients 'all'"):
        fit_end_to_end(den, "ddim", grid, z, ref, coefficients="all", **kw)
    with pytest.raises(ValueError, match="must end in 0"):
        fit_end_to_end(den, "ddim", grid[:-1], z, ref, **kw)
    with pytest.raises(ValueError, match="fit reference has shape"):
        fit_end_to_end(den, "ddim", grid, z, ref[:3], **kw)
    with pytest.raises(ValueError, match="steps must be an integer"):
        fit_end_to_end(den, "ddim", grid, z, ref, steps=-1, **kw)
    with pytest.raises(ValueError, match="expected a dode.denoisers.Denoiser"):
        fit_end_to_end(lambda x, s: x, "ddim", grid, z, ref, **kw)


# ---- the fit mode: dode.fit / python -m dode.train -----------------------------------------

E2E = dict(
    model="gmm-digits", solver="dpm_solver_pp", solver_options={"order": 2}, nfe=4,
    fit_mode="end-to-end", fit_seeds="0-31", val_seeds="100-131", cache_dir=None,
    end_to_end={"steps": 6, "reference_nfe": 20},
)  # fmt: skip
QUIET = dict(
    samples={"num_samples": 0}, lambda_plot={"enabled": False}, wandb_mode="disabled",
    trainer={"accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
             "enable_model_summary": False, "enable_checkpointing": False},
)  # fmt: skip


def test_fit_mode_end_to_end_from_dode_fit_and_dode_train(tmp_path):
    from dode.denoisers.loading import load_denoiser
    from dode.noise import noise_from_seeds, parse_seeds
    from dode.standard_grids import reference_solution, select_grid, standard_grids

    fitted = dode.fit(**E2E, **QUIET, run_dir=tmp_path / "api")
    rec = fitted.metrics["end_to_end"]
    assert fitted.metrics["fit_mode"] == "end-to-end" and rec["warm_start"] == "best_standard"
    assert fitted.model["id"] == "gmm-digits" and fitted.model["weights_hash"]
    on_disk = FittedSolver.load(tmp_path / "api" / "solver.safetensors")
    assert torch.equal(on_disk.sigmas, fitted.sigmas)
    # the same as calling the core directly with the same seeds, references and warm start
    den = load_denoiser("gmm-digits")
    z = noise_from_seeds(parse_seeds("0-31"), den.sample_shape)
    zs = noise_from_seeds(parse_seeds("100-131"), den.sample_shape)
    ref, rs = reference_solution(den, z, nfe=20), reference_solution(den, zs, nfe=20)
    solver = get_solver("dpm_solver_pp", order=2)
    warm = select_grid(den, solver, 4, zs, grids=standard_grids(den), reference=rs)
    assert rec["warm_start_grid"] == warm.spec.label
    core = fit_end_to_end(
        den, solver, warm.sigmas, z, ref, select_noise=zs, select_reference=rs, steps=6,
    )  # fmt: skip
    assert rec["accepted"] == core.metrics["end_to_end"]["accepted"]
    torch.testing.assert_close(fitted.sigmas, core.sigmas, rtol=1e-6, atol=0)
    assert rec["select_mse"] <= rec["select_mse_base"]

    from dode.cli.train import main

    path = main([
        "-c", str(ROOT / "configs/default.yaml"), "-c", str(ROOT / "configs/digits-end-to-end.yaml"),
        # the mixture has no ᾱ table: the default config's time-uniform grid does not apply
        "--model.model", "gmm-digits", "--model.schedule", "karras",
        "--model.schedule_options", "null", "--model.solver", "dpm_solver_pp",
        "--model.solver_options", "{order: 2}", "--model.nfe", "4",
        "--model.end_to_end", "{steps: 6, reference_nfe: 20}",
        "--data.fit_seeds", "0-31", "--data.val_seeds", "100-131", "--data.cache_dir", "null",
        "--wandb_mode", "disabled", "--trainer.enable_progress_bar", "false",
        "--lambda_plot.enabled", "false", "--trainer.accelerator", "cpu",
        "--run_dir", str(tmp_path / "cli"),
    ])  # fmt: skip
    cli = FittedSolver.load(path)
    assert torch.equal(cli.sigmas, on_disk.sigmas) and torch.equal(cli.lambdas, on_disk.lambdas)


def test_fit_mode_end_to_end_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="unknown end_to_end setting stepz"):
        dode.fit(**{**E2E, "end_to_end": {"stepz": 3}}, **QUIET, run_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="apply only to fit_mode end-to-end"):
        dode.fit(**{**E2E, "fit_mode": "lstsq"}, **QUIET, run_dir=tmp_path / "b")


def test_dode_evaluate_and_dode_sample_run_the_end_to_end_solver(tmp_path):
    import numpy as np

    from dode.cli.sample import main as sample_main
    from dode.denoisers.loading import load_denoiser
    from dode.evaluation.config import EvalConfig
    from dode.evaluation.run import evaluate
    from dode.evaluation.store import SampleStore
    from dode.files.images import to_uint8
    from dode.files.weights import weights_hash
    from dode.noise import noise_from_seeds

    gmm = load_denoiser("gmm-digits")
    k = 4
    fs = FittedSolver(
        solver=get_solver("dpm_solver_pp", order=2).config(),
        sigmas=karras(4, 0.01, 80.0),
        lambdas=torch.tensor([0.0, 0.1, 0.2, -0.1], dtype=torch.float64),
        coefficients=torch.full((k, k), 0.3, dtype=torch.float64) * history_mask(k),
        shift=torch.tensor([0.0, 0.2, -0.2, 0.3], dtype=torch.float64),
        model={"id": "gmm-digits", "weights_hash": weights_hash(gmm), "dtype": "float32"},
    )
    path = fs.save(tmp_path / "e2e.safetensors")
    seeds = list(range(8))
    z = noise_from_seeds(seeds, gmm.sample_shape)
    want = fs.sample(gmm, z)
    only_lambda = dode.sample(gmm, fs.build_solver(), z, fs.sigmas, fs.lambdas)
    assert not torch.equal(to_uint8(want), to_uint8(only_lambda))  # the test can tell them apart

    cfg = EvalConfig(
        solver_file=str(path), seeds="0-7", batch_size=8, out=str(tmp_path / "ev"), fid=False,
        log=None, wandb=False, progress=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    record = evaluate(cfg)
    assert record["coefficients"] == fs.coefficients.tolist()
    (images,) = SampleStore(tmp_path / "ev").iter_images(seeds)
    assert torch.equal(images, to_uint8(want))

    sample_main(["--solver_file", str(path), "--seeds", "0-7", "--out", str(tmp_path / "s")])
    with np.load(tmp_path / "s" / "samples.npz") as f:
        got = torch.from_numpy(f["samples"])
    assert torch.equal(got, want.float())


# ---- acceptance by a paired bootstrap, and the data-range clamp ------------------------------


def test_paired_improvement_separates_a_real_gain_from_noise():
    from dode.learned_solver import paired_improvement

    g = torch.Generator().manual_seed(0)
    base = torch.rand(400, dtype=torch.float64, generator=g) + 1.0
    better = base - 0.05 + 0.01 * torch.randn(400, dtype=torch.float64, generator=g)
    change, bound = paired_improvement(base, better)
    assert change == pytest.approx(-0.05, abs=3e-3) and change < bound < 0
    # mean-zero noise on every seed: no paired gain, the means agree
    noisy = base + 0.5 * torch.randn(400, dtype=torch.float64, generator=g)
    change, bound = paired_improvement(base, noisy - float((noisy - base).mean()))
    assert abs(change) < 1e-12 and bound > 0
    # a single seed or a non-finite change cannot be trusted
    assert paired_improvement(base[:1], better[:1])[1] == float("inf")
    assert paired_improvement(base, better.clone().fill_(float("nan")))[1] == float("inf")


def test_acceptance_needs_a_significant_gain_on_the_selection_seeds():
    den, z, ref, zs, rs = _problem(fit=48, select=48)
    grid = karras(4, 0.002, 80.0)
    kw = dict(select_noise=zs, select_reference=rs, steps=10)
    fs = fit_end_to_end(den, "unipc", grid, z, ref, **kw)
    rec = fs.metrics["end_to_end"]
    assert rec["accepted"] and rec["select_change_bound"] < 0 and rec["accept_level"] == 0.95
    assert rec["select_change"] == pytest.approx(rec["select_mse"] - rec["select_mse_base"])
    # two selection seeds: a bootstrap over them bounds nothing useful, the fit is refused
    # unless acceptance is left to the mean alone (accept_level=None)
    two = dict(select_noise=zs[:2], select_reference=rs[:2], steps=10)
    strict = fit_end_to_end(den, "unipc", grid, z, ref, **two).metrics["end_to_end"]
    loose = fit_end_to_end(den, "unipc", grid, z, ref, accept_level=None, **two)
    assert loose.metrics["end_to_end"]["accepted"]
    assert strict["select_change_bound"] >= strict["select_change"]
    if not strict["accepted"]:
        assert strict["select_mse"] == strict["select_mse_base"]


def test_clip_compares_samples_as_images_show_them():
    den, z, ref, zs, rs = _problem(fit=16, select=16)
    grid = karras(4, 0.002, 80.0)
    fs = fit_end_to_end(
        den, "ddim", grid, z, ref, select_noise=zs, select_reference=rs, steps=4,
        clip=(-0.25, 0.25), accept_level=None,
    )  # fmt: skip
    rec = fs.metrics["end_to_end"]
    assert rec["clip"] == [-0.25, 0.25]
    base = dode.sample(den, get_solver("ddim"), zs, grid)
    clamped = _mse(base.clamp(-0.25, 0.25), rs.clamp(-0.25, 0.25))
    assert rec["select_mse_base"] == pytest.approx(clamped, rel=1e-10)
    assert clamped < _mse(base, rs)
    kw = dict(select_noise=zs, select_reference=rs, steps=1)
    for bad in ((1, -1), (0, float("inf")), (1,), "wide"):
        with pytest.raises(ValueError, match="clip must be None or"):
            fit_end_to_end(den, "ddim", grid, z, ref, clip=bad, **kw)
    for bad in (0.3, 1.0):
        with pytest.raises(ValueError, match="accept_level must be None or in"):
            fit_end_to_end(den, "ddim", grid, z, ref, accept_level=bad, **kw)


def test_a_callable_objective_is_fitted_and_named():
    den, z, ref, zs, rs = _problem(fit=16, select=16)
    grid = karras(4, 0.002, 80.0)
    kw = dict(select_noise=zs, select_reference=rs, steps=6, accept_level=None)

    def squared_error(x, r):
        return ((x - r) ** 2).mean()

    a = fit_end_to_end(den, "unipc", grid, z, ref, objective="l2", **kw)
    b = fit_end_to_end(den, "unipc", grid, z, ref, objective=squared_error, **kw)
    assert b.metrics["end_to_end"]["objective"] == "squared_error"
    assert torch.equal(a.sigmas, b.sigmas) and torch.equal(a.coefficients, b.coefficients)
    # a distance that ignores the first coordinate leaves a different fit
    c = fit_end_to_end(
        den, "unipc", grid, z, ref, objective=lambda x, r: ((x - r)[:, 1:] ** 2).mean(), **kw
    )
    assert not torch.equal(a.sigmas, c.sigmas)
    with pytest.raises(TypeError, match="must return a scalar tensor"):
        fit_end_to_end(den, "unipc", grid, z, ref, objective=lambda x, r: (x - r) ** 2, **kw)


def test_selection_batches_change_the_cost_not_the_fit():
    den, z, ref, zs, rs = _problem(fit=32, select=32)
    grid = karras(4, 0.002, 80.0)
    kw = dict(select_noise=zs, select_reference=rs, steps=8, batch_size=8, eval_every=2)
    a = fit_end_to_end(den, "unipc", grid, z, ref, **kw)
    b = fit_end_to_end(den, "unipc", grid, z, ref, select_batch_size=32, **kw)
    ra, rb = a.metrics["end_to_end"], b.metrics["end_to_end"]
    assert ra["select_batch_size"] == 8 and rb["select_batch_size"] == 32
    assert ra["best_step"] == rb["best_step"]
    torch.testing.assert_close(a.sigmas, b.sigmas, rtol=1e-12, atol=0)
    assert rb["select_mse"] == pytest.approx(ra["select_mse"], rel=1e-12)
    with pytest.raises(ValueError, match="select_batch_size must be a positive integer"):
        fit_end_to_end(den, "unipc", grid, z, ref, select_batch_size=0, **kw)
