"""Bad input gets one clear ValueError naming the problem; the fitted-solver file round-trips
bit for bit and a failed or corrupt write leaves nothing behind."""

from __future__ import annotations

import os

import pytest
import torch

import dode
from dode.denoisers import CallableDenoiser, gaussian
from dode.files.solver_file import FittedSolver
from dode.files.weights import weights_hash
from dode.files.writes import atomic_write
from dode.grids.schedules import karras, refine
from dode.solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def den():
    return gaussian(torch.zeros(2), torch.tensor([[1.0, 0.2], [0.2, 0.5]], dtype=torch.float64))


@pytest.fixture
def noise():
    return torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_unknown_solver_name(den, noise):
    with pytest.raises(ValueError, match=r"unknown solver 'rk45'; choose one of: .*ddim"):
        get_solver("rk45")
    with pytest.raises(ValueError, match="unknown solver 'rk45'"):
        dode.sample(den, "rk45", noise, karras(3))


def test_unsupported_order_and_arguments():
    with pytest.raises(ValueError, match=r"ipndm supports order 1, 2, 3, 4; got order=5"):
        get_solver("ipndm", order=5)
    with pytest.raises(ValueError, match="bad arguments for solver 'heun'"):
        get_solver("heun", gamma=1.0)


@pytest.mark.parametrize(
    "name,kw,nfe,reachable",
    [
        ("dpm_solver", {"order": 3}, 2, "1, 4, 7"),
        ("heun", {}, 4, "1, 3, 5"),
        ("ddim", {}, 0, "1, 2, 3"),
    ],
)
def test_nfe_not_reachable(name, kw, nfe, reachable):
    solver = get_solver(name, **kw)
    with pytest.raises(
        ValueError, match=rf"cannot use exactly NFE={nfe}; reachable NFE .*{reachable}"
    ):
        solver.steps_for_nfe(nfe)


def test_grid_with_too_few_steps(den, noise):
    with pytest.raises(ValueError, match="the σ grid needs at least two points"):
        dode.sample(den, "heun", noise, [80.0])


def test_unsorted_grid(den, noise):
    with pytest.raises(ValueError, match=r"strictly descending, but σ\[1\] = 1 <= σ\[2\] = 5"):
        dode.sample(den, "ddim", noise, [10.0, 1.0, 5.0, 0.0])
    with pytest.raises(ValueError, match="strictly descending"):
        refine([1.0, 3.0, 0.0], 2)


@pytest.mark.parametrize("factor", [1, 0, 2.5])
def test_refine_factor_below_two(factor):
    with pytest.raises(ValueError, match=r"refine factor must be an integer >= 2"):
        refine(karras(4), factor)


def test_teacher_factor_below_two(den, noise):
    with pytest.raises(ValueError, match=r"teacher_factor must be an integer >= 2, got 1"):
        dode.fit_lambdas(den, "ddim", noise, karras(3), teacher_factor=1)


def test_non_finite_model_output(noise):
    def nan_below_one(x, sigma):  # finite at the start, NaN later: caught at the call itself
        return torch.where(sigma < 1, torch.full_like(x, float("nan")), 0.5 * x)

    bad = CallableDenoiser(nan_below_one, 0.002, 80.0)
    with pytest.raises(ValueError, match=r"non-finite values at call 2 \(σ = 0\.4"):
        dode.sample(bad, "ddim", noise, [8.0, 2.0, 0.4, 0.0])
    with pytest.raises(ValueError, match="non-finite values"):
        dode.fit_lambdas(bad, "ddim", noise, [8.0, 2.0, 0.4, 0.0])


def test_wrong_noise_shape(den):
    with pytest.raises(ValueError, match=r"noise has sample shape \(3,\) but the model expects"):
        dode.sample(den, "ddim", torch.randn(4, 3), karras(3))
    with pytest.raises(ValueError, match="noise must have a batch dimension first"):
        dode.sample(den, "ddim", torch.randn(2), karras(3))
    with pytest.raises(ValueError, match="noise must be a torch.Tensor"):
        dode.sample(den, "ddim", [[0.0, 0.0]], karras(3))


def test_missing_model(noise):
    with pytest.raises(ValueError, match="no model given"):
        dode.sample(None, "ddim", noise, karras(3))
    with pytest.raises(ValueError, match="wrap a plain function"):
        dode.sample(lambda x, s: x, "ddim", noise, karras(3))


@pytest.mark.parametrize("lam", [torch.zeros(4), torch.zeros(2), torch.zeros(3, 1)])
def test_wrong_lambda_length(den, noise, lam):
    with pytest.raises(ValueError, match=r"need one λ per model call: ddim on 3 steps makes 3"):
        dode.sample(den, "ddim", noise, karras(3), lam)


def test_too_many_model_calls_for_lambdas(den, noise):
    """λ fitted for a shorter run used directly with the correction wrapper."""
    wrapped = dode.DODECorrection(den.eps, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"more model calls than there are λ \(2\)"):
        get_solver("ddim")(wrapped, noise * 80.0, karras(3))


# ---- the fitted-solver file ------------------------------------------------------------------


def _fitted(den, noise) -> FittedSolver:
    solver = get_solver("dpm_solver_pp", order=2)
    s = karras(4)
    lam = dode.fit_lambdas(den, solver, noise, s)
    return FittedSolver(
        solver=solver.config(),
        sigmas=s,
        lambdas=lam,
        teacher={"factor": 10, "solver": solver.config()},
        model={"id": "gaussian-2d", "weights_sha256": weights_hash(den)},
        metrics={"mse": 0.5},
    )


def test_artifact_round_trip_same_samples_bit_for_bit(den, noise, tmp_path):
    fitted = _fitted(den, noise)
    path = fitted.save(tmp_path / "fit.safetensors")
    assert os.listdir(tmp_path) == ["fit.safetensors"]  # no temporary left behind
    loaded = FittedSolver.load(path)
    assert loaded.solver == fitted.solver and loaded.teacher == fitted.teacher
    assert loaded.model == fitted.model and loaded.metrics == fitted.metrics
    assert torch.equal(loaded.sigmas, fitted.sigmas) and torch.equal(loaded.lambdas, fitted.lambdas)
    other = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(loaded.sample(den, other), fitted.sample(den, other))
    assert torch.equal(
        loaded.sample(den, other, dode=False), dode.sample(den, "dpmpp", other, fitted.sigmas)
    )
    assert loaded.model["weights_sha256"] == weights_hash(den)


def test_corrupt_artifact_files(den, noise, tmp_path):
    good = _fitted(den, noise).save(tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="is not a readable fitted-solver file"):
        FittedSolver.load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not safetensors" * 8)
    with pytest.raises(ValueError, match="is not a readable fitted-solver file"):
        FittedSolver.load(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"sigmas": karras(3), "lambdas": torch.zeros(3, dtype=torch.float64)}, foreign)
    with pytest.raises(ValueError, match="not a dode fitted solver"):
        FittedSolver.load(foreign)
    with pytest.raises(ValueError, match="does not exist"):
        FittedSolver.load(tmp_path / "missing.safetensors")


def test_artifact_with_wrong_lambda_count():
    with pytest.raises(ValueError, match=r"makes 3 model calls but 4 λ were given"):
        FittedSolver(solver={"name": "ddim"}, sigmas=karras(3), lambdas=torch.zeros(4))


def test_failed_write_leaves_nothing_behind(tmp_path):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "fit.safetensors", write)
    assert os.listdir(tmp_path) == []
