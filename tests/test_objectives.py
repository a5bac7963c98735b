"""The end-to-end fit's objectives (dode.objectives), its quality watch, and the LD3-style peer
(dode.peer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dode.correction import call_sigmas, shift_bounds
from dode.denoisers.gmm import gaussian
from dode.files.solver_file import FittedSolver
from dode.grids.schedules import karras
from dode.learned_solver import fit_end_to_end
from dode.metrics import frechet_distance
from dode.objectives import (
    Objective,
    default_objective,
    frechet_distance_torch,
    moment_distance,
    radial_power,
    spectrum_distance,
)
from dode.peer import fit_peer, perceptual_distance
from dode.solvers import get_solver


def _images(b=32, seed=0):
    return torch.randn(
        b, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )


def _blur(x):
    k = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    x = x.roll(1, -1) * k[0] + x * k[1] + x.roll(-1, -1) * k[2]
    return x.roll(1, -2) * k[0] + x * k[1] + x.roll(-1, -2) * k[2]


@pytest.mark.parametrize("n,m,f", [(40, 30, 5), (6, 9, 16)])
def test_differentiable_frechet_distance_equals_the_judges(n, m, f):
    """Exact also where the batch is smaller than the feature width (singular covariances)."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(n, f, dtype=torch.float64, generator=g)
    b = 0.7 * torch.randn(m, f, dtype=torch.float64, generator=g) + 0.3
    want = frechet_distance(a, b)
    got = frechet_distance_torch(a.requires_grad_(), b)
    assert float(got.detach()) == pytest.approx(want, rel=1e-7, abs=1e-9)
    got.backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert float(frechet_distance_torch(b, b)) == pytest.approx(0.0, abs=1e-9)


def test_batch_statistics_see_a_blur_that_l2_prefers():
    """The mean of two outcomes is L2's optimum against either; its spectrum and spread are not
    the reference's: the statistics terms are larger for the blurred batch."""
    x = _images()
    blurred = _blur(x)
    assert float(spectrum_distance(blurred, x)) > 10 * float(spectrum_distance(x + 0.01, x)) + 1e-9
    assert float(moment_distance(blurred, x)) > float(moment_distance(x, x)) + 1e-3
    p = radial_power(x)
    assert p.shape[0] == 2 and torch.isfinite(p).all()
    # high frequencies lose power under the blur
    assert (radial_power(blurred)[:, -1] < p[:, -1]).all()


def test_objective_weights_terms_and_hook():
    x, ref = _images(16, 1).requires_grad_(), _images(16, 2)
    feats = lambda t: t.flatten(1)[:, :10]  # noqa: E731
    obj = Objective(spectrum=0.1, moments=1.0, fd=0.01, features=feats)
    terms = obj.terms(x, ref)
    assert set(terms) == {"l2", "spectrum", "moments", "fd"}
    total = obj(x, ref)
    want = terms["l2"] + 0.1 * terms["spectrum"] + terms["moments"] + 0.01 * terms["fd"]
    assert float(total.detach()) == pytest.approx(float(want.detach()))
    total.backward()
    assert torch.isfinite(x.grad).all()
    assert obj.__name__ == "l2+0.1*spectrum+1*moments+0.01*fd"
    assert obj.quality(x.detach(), ref) == pytest.approx(float(terms["fd"]))
    assert obj.quality(x.detach(), ref, np.arange(8)) > 0
    with pytest.raises(ValueError, match="fd term needs a feature network"):
        Objective(fd=1.0)
    with pytest.raises(ValueError, match="weight spectrum must be a number >= 0"):
        Objective(spectrum=-1)
    bad = Objective(fd=1.0, features=lambda t: t.flatten()[:3])
    with pytest.raises(ValueError, match=r"feature hook must return \[B, F\]"):
        bad(x.detach(), ref)
    plain = default_objective()
    assert plain.weights == {"l2": 1.0, "spectrum": 0.0, "moments": 0.0, "fd": 0.0}
    assert plain.__name__ == "default (l2)"
    with_features = default_objective(feats)
    assert with_features.features is feats and with_features.weights["fd"] > 0
    assert with_features.__name__ == f"default (l2+{with_features.weights['fd']:g}*fd)"
    assert with_features.quality(x.detach(), ref) == pytest.approx(
        float(frechet_distance_torch(feats(x.detach()), feats(ref)))
    )


def _gauss_problem(fit=32, select=32):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 4, dtype=torch.float64, generator=g)
    cov = a @ a.T / 4 + torch.diag(torch.tensor([0.01, 0.05, 0.3, 1.0], dtype=torch.float64))
    den = gaussian(torch.tensor([0.5, -0.3, 0.1, 0.0], dtype=torch.float64), cov, sigma_max=80.0)

    def noise(seed, b):
        return torch.randn(b, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))

    z, zs = noise(0, fit), noise(1, select)
    return (
        den,
        z,
        den.exact_solution(z * 80.0, 80.0, 0.0),
        zs,
        den.exact_solution(zs * 80.0, 80.0, 0.0),
    )


def test_the_default_fit_watches_quality_and_records_it():
    den, z, ref, zs, rs = _gauss_problem()
    fs = fit_end_to_end(
        den, "unipc", karras(4, 0.002, 80.0), z, ref, select_noise=zs, select_reference=rs,
        steps=10,
    )  # fmt: skip
    rec = fs.metrics["end_to_end"]
    assert rec["objective"] == "default (l2)"  # no feature network: L2, spectrum/moments watched
    assert rec["quality_level"] == 0.95
    assert rec["select_quality_limit"] >= rec["select_quality_base"] >= 0
    assert len(rec["quality_curve"]) == len(rec["select_curve"])
    if rec["accepted"]:
        assert rec["select_quality_fitted"] <= rec["select_quality_limit"]
    # a quality limit nothing can meet: no iterate but the start is kept, nothing accepted
    strict = Objective(spectrum=0.01)
    strict.quality = lambda x, r, idx=None: 0.0 if idx is not None else 1.0  # limit 1, all 1
    fs2 = fit_end_to_end(
        den, "unipc", karras(4, 0.002, 80.0), z, ref, select_noise=zs, select_reference=rs,
        steps=6, objective=strict,
    )  # fmt: skip
    rec2 = fs2.metrics["end_to_end"]
    assert rec2["select_quality_limit"] == 1.0
    # quality_level=None: the MSE alone decides, no quality recorded
    fs3 = fit_end_to_end(
        den, "unipc", karras(4, 0.002, 80.0), z, ref, select_noise=zs, select_reference=rs,
        steps=4, quality_level=None,
    )  # fmt: skip
    assert fs3.metrics["end_to_end"]["select_quality_base"] is None
    with pytest.raises(ValueError, match="features= is the default objective's"):
        fit_end_to_end(
            den, "unipc", karras(4, 0.002, 80.0), z, ref, select_noise=zs, select_reference=rs,
            steps=1, objective="l2", features=lambda t: t,
        )  # fmt: skip
    with pytest.raises(ValueError, match="shift_fraction must be in"):
        fit_end_to_end(
            den, "unipc", karras(4, 0.002, 80.0), z, ref, select_noise=zs, select_reference=rs,
            steps=1, shift_fraction=0.9,
        )  # fmt: skip


def test_the_peer_learns_a_bounded_grid_and_model_times_without_coefficients():
    den, z, ref, zs, rs = _gauss_problem()
    solver = get_solver("dpm_solver_pp", order=2)
    grid = karras(4, 0.002, 80.0)
    fs = fit_peer(den, solver, grid, z, ref, select_noise=zs, select_reference=rs, steps=12,
                  lr=0.05, eval_every=2, patience=1)  # fmt: skip
    rec = fs.metrics["peer"]
    assert rec["method"] == "ld3_style_peer" and rec["optimizer"].startswith("RMSprop")
    assert fs.coefficients is None and (fs.lambdas == 0).all()
    lo, hi = shift_bounds(call_sigmas(solver, fs.sigmas), fs.sigmas, floor=den.sigma_min)
    assert ((fs.shift >= lo - 1e-12) & (fs.shift <= hi + 1e-12)).all()
    assert fs.sigmas[0] == grid[0] and fs.sigmas[-1] == 0
    curve = dict(rec["validation_curve"])
    assert curve[rec["best_step"]] <= curve[0]
    FittedSolver(solver=fs.solver, sigmas=fs.sigmas, lambdas=fs.lambdas, shift=fs.shift)
    # validation-driven decay: a tiny min_lr is reached only through decays
    fs2 = fit_peer(den, solver, grid, z, ref, select_noise=zs, select_reference=rs, steps=30,
                   lr=5.0, eval_every=1, patience=1, min_lr=1.0)  # fmt: skip
    assert fs2.metrics["peer"]["lr_decays_at"]
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(perceptual_distance(x, x), torch.zeros(5, dtype=torch.float64))
    d = perceptual_distance(x, 2 * x, lambda t: t)  # unit-normalised: scale does not count
    assert torch.allclose(d, torch.zeros(5, dtype=torch.float64), atol=1e-12)


def test_the_lightning_run_builds_the_default_objective_with_the_configured_features():
    """The training run's objective is the plain fit's default; ``end_to_end.features`` names
    the feature network's factory (checked at start-up)."""
    from dode.lit.end_to_end import build_objective, end_to_end_settings

    s = end_to_end_settings({})
    assert s["objective"] == "default" and s["features"] is None and s["quality_level"] == 0.95
    assert build_objective(s).__name__ == "default (l2)"
    obj = build_objective(end_to_end_settings({"features": "dode.digits.classifier:feature_hook"}))
    assert obj.weights["fd"] > 0 and obj.features.__name__ == "digits_features"
    assert build_objective(end_to_end_settings({"objective": "l2"})) == "l2"
    with pytest.raises(ValueError, match="features= is the default objective's"):
        end_to_end_settings({"objective": "l2", "features": "dode.digits.classifier:feature_hook"})
