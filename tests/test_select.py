"""Sampling several λ sets from one noise, choosing the λ scale, Fréchet distance to a reference.

* ``sample_many`` equals separate ``sample`` calls bit for bit and evaluates the shared first
  call once per batch (counted).
* ``select_scale`` keeps the α whose samples score lowest, with scores equal to independently
  computed ones; α = 0 is the base solver; on an exact Gaussian-mixture ODE the fitted λ
  (α = 1) beat the base solver by the error to the converged solution.
* ``FrechetReference`` agrees with the matrix-square-root formula (scipy).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dode import fit_lambdas, sample, sample_many, select_scale
from dode.denoisers import CallableDenoiser, GaussianMixtureDenoiser
from dode.grids.schedules import karras
from dode.metrics import FrechetReference, frechet_distance, mse
from dode.solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gmm() -> GaussianMixtureDenoiser:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 4, dtype=torch.float64, generator=g)
    covs = a @ a.transpose(1, 2) / 4 + 0.05 * torch.eye(4, dtype=torch.float64)
    means = 2 * torch.randn(3, 4, dtype=torch.float64, generator=g)
    return GaussianMixtureDenoiser(means, covs, torch.tensor([0.5, 0.3, 0.2]))


def _noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _counting(den):
    calls = []

    def fn(x, s):
        calls.append(len(x))
        return den.denoise(x, s)  # σ arrives as [B, 1]; the mixture predicts x̂0 natively

    return CallableDenoiser(fn, den.sigma_min, den.sigma_max), calls


@pytest.mark.parametrize("name,opts", [("ddim", {}), ("ipndm", {}), ("heun", {})])
def test_sample_many_equals_separate_runs_and_shares_the_first_call(gmm, name, opts):
    solver = get_solver(name, **opts)
    sigmas = karras(solver.steps_for_nfe(5), 0.02, 40.0)
    lam = torch.tensor([0.0, 0.3, -0.2, 0.5, 0.1], dtype=torch.float64)
    noise = _noise(24, seed=1)
    counting, calls = _counting(gmm)
    base, dode, half = sample_many(counting, solver, noise, sigmas, [None, lam, 0.5 * lam],
                                   batch_size=10)  # fmt: skip
    assert torch.equal(base, sample(gmm, solver, noise, sigmas))
    assert torch.equal(dode, sample(gmm, solver, noise, sigmas, lam))
    assert torch.equal(half, sample(gmm, solver, noise, sigmas, 0.5 * lam))
    # 3 batches (10, 10, 4); per batch 5 calls for the first run and 4 for each other run.
    assert calls == [10] * 13 + [10] * 13 + [4] * 13


def test_sample_many_rejects_a_bare_lambda_tensor(gmm):
    with pytest.raises(ValueError, match="list of λ sets"):
        sample_many(gmm, "ddim", _noise(4, 0), karras(3, 0.02, 40.0), torch.zeros(3))


def test_select_scale_keeps_the_best_scoring_scale(gmm):
    solver = get_solver("ddim")
    sigmas = karras(4, 0.02, 40.0)
    lam = fit_lambdas(gmm, solver, _noise(200, seed=2), sigmas)
    held_out = _noise(300, seed=3)
    exact = sample(gmm, get_solver("heun"), held_out, karras(200, 0.02, 40.0))

    def score(x):
        return mse(x, exact)

    choice = select_scale(gmm, solver, held_out, sigmas, lam, score, [0, 0.25, 0.5, 1])
    independent = {a: mse(sample(gmm, solver, held_out, sigmas, a * lam), exact)
                   for a in (0.25, 0.5, 1.0)}  # fmt: skip
    independent[0.0] = mse(sample(gmm, solver, held_out, sigmas), exact)
    assert choice.scores.keys() == independent.keys()
    for a, v in independent.items():
        assert choice.scores[a] == pytest.approx(v, rel=1e-12)
    assert choice.scale == min(independent, key=independent.get)
    # D-ODE's promise on the exact ODE: the fitted λ land closer to the converged solution.
    assert independent[1.0] < 0.8 * independent[0.0]
    assert torch.equal(choice.lambdas, choice.scale * lam)


def test_select_scale_falls_back_to_the_base_solver(gmm):
    solver = get_solver("ddim")
    sigmas = karras(4, 0.02, 40.0)
    lam = torch.tensor([0.0, 0.5, 0.5, 0.5], dtype=torch.float64)
    noise = _noise(50, seed=4)
    base = sample(gmm, solver, noise, sigmas)
    choice = select_scale(gmm, solver, noise, sigmas, lam, lambda x: mse(x, base))
    assert choice.scale == 0.0 and choice.scores[0.0] == 0.0
    assert torch.equal(choice.lambdas, torch.zeros(4, dtype=torch.float64))


def test_select_scale_ranks_a_non_finite_score_last(gmm):
    solver = get_solver("ddim")
    sigmas = karras(3, 0.02, 40.0)
    lam = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)
    noise = _noise(20, seed=5)
    base = sample(gmm, solver, noise, sigmas)

    def score(x):
        return math.nan if torch.equal(x, base) else float(x.abs().mean())

    choice = select_scale(gmm, solver, noise, sigmas, lam, score, [0, 1])
    assert choice.scale == 1.0 and choice.scores[0.0] == math.inf


@pytest.mark.parametrize("scales", [[], [0, 1, 1], [0, math.inf]])
def test_select_scale_rejects_bad_scales(gmm, scales):
    with pytest.raises(ValueError, match="distinct finite"):
        select_scale(gmm, "ddim", _noise(4, 0), karras(3, 0.02, 40.0), torch.zeros(3),
                     lambda x: 0.0, scales)  # fmt: skip


def test_frechet_reference_matches_the_matrix_square_root_formula():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((400, 32)) @ rng.standard_normal((32, 32)) * 0.3
    fr = FrechetReference.from_features(ref)
    for shift in (0.0, 0.5):
        x = rng.standard_normal((2000, 32)) + shift
        assert fr.distance(x) == pytest.approx(frechet_distance(x, ref), rel=1e-8, abs=1e-9)
    assert fr.distance(ref) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="dimension 31"):
        fr.distance(rng.standard_normal((10, 31)))
