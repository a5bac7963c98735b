"""The standard grid family and grid selection (dode.grids)."""

from __future__ import annotations

import math

import pytest
import torch

from dode.denoisers import CallableDenoiser
from dode.grids.schedules import karras, log_uniform, vp_alphas_cumprod
from dode.standard_grids import GridSpec, select_grid, standard_grids

S2 = 0.25  # data variance of the 1-D Gaussian test problem


def _gauss_denoiser() -> CallableDenoiser:
    """Data N(0, S2): D(x, σ) = x · S2 / (S2 + σ²) exactly."""
    return CallableDenoiser(lambda x, s: x * S2 / (S2 + s**2), 0.002, 80.0, sample_shape=(1,))


def _euler_gain(grid: torch.Tensor) -> float:
    """Euler (x̂0 form) on the Gaussian problem multiplies x by a known factor per step."""
    g = 1.0
    s = grid.tolist()
    for a, b in zip(s[:-1], s[1:]):
        g *= b / a + (1 - b / a) * S2 / (S2 + a**2)
    return g


def test_select_grid_returns_the_lowest_scoring_grid_on_a_known_problem():
    den = _gauss_denoiser()
    n = 4
    cands = [GridSpec("karras", {"sigma_min": 0.002, "sigma_max": 80.0, "rho": r}, False, f"rho{r}")
             for r in (1.0, 3.0, 7.0, 12.0)]  # fmt: skip
    cands.append(GridSpec("log_uniform", {"sigma_min": 0.002, "sigma_max": 80.0}, False, "log"))
    cands.append(GridSpec("explicit", {"sigmas": [80.0, 2.0, 0.6, 0.1]}, False, "hand"))
    exact = math.sqrt(S2) / math.sqrt(S2 + 80.0**2)  # x(0) = x(σ0) · s / sqrt(s² + σ0²)
    errs = {c.label: (80.0 * _euler_gain(c.build(n)) - 80.0 * exact) ** 2 for c in cands}
    noise = torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = noise * 80.0 * exact
    choice = select_grid(den, "euler", n, noise, grids=cands, reference=ref)
    want = min(errs, key=errs.get)
    assert choice.spec.label == want
    # the scores are the analytic errors times E[n²] on this noise
    m2 = float((noise**2).mean())
    for k, v in errs.items():
        assert choice.scores[k] == pytest.approx(v * m2, rel=1e-9)
    assert torch.equal(choice.sigmas, [c for c in cands if c.label == want][0].build(n))


def test_select_grid_with_a_custom_score_and_a_failing_candidate():
    den = _gauss_denoiser()
    cands = [
        GridSpec("karras", {"sigma_min": 0.002, "sigma_max": 80.0}, False, "a"),
        GridSpec("explicit", {"sigmas": [80.0, 1.0]}, False, "wrong-length"),
        GridSpec("karras", {"sigma_min": 0.5, "sigma_max": 80.0}, False, "b"),
    ]
    noise = torch.randn(8, 1, dtype=torch.float64)
    # score: the last non-zero σ of the grid the samples came from is not visible; score by
    # the sample norm, which Euler shrinks more on the grid that stops at the larger σ_min
    choice = select_grid(den, "euler", 3, noise, grids=cands, score=lambda x: -float(x.abs().sum()))
    assert "wrong-length" in choice.errors and choice.scores["wrong-length"] == math.inf
    assert choice.spec.label in ("a", "b")
    assert choice.scores[choice.spec.label] == min(choice.scores.values())


def test_standard_family_covers_the_issue_list():
    den = _gauss_denoiser()
    den.alphas_cumprod = vp_alphas_cumprod()
    den.sigma_min, den.sigma_max = 0.01, 157.0
    specs = standard_grids(den)
    labels = [s.label for s in specs]
    for want in ("leading", "trailing", "linspace", "quadratic", "karras(0.01-157)",
                 "karras(0.002-80)", "karras(0.01-80)", "logsnr(0.01-157)", "karras(0.01-157)+jump"):  # fmt: skip
        assert want in labels, want
    assert "trailing+jump" not in labels
    for spec in specs:
        for n in (3, 5, 10):
            g = spec.build(n)
            assert len(g) == n + 1 and g[-1] == 0 and bool((g[1:] < g[:-1]).all())
    # a jump grid ends at a larger σ than its plain sibling, with the same number of points
    k = specs[labels.index("karras(0.01-157)")].build(4)
    kj = specs[labels.index("karras(0.01-157)+jump")].build(4)
    assert kj[-2] > k[-2] and torch.equal(kj[:-1], karras(5, 0.01, 157.0)[:-2])
    assert torch.allclose(
        specs[labels.index("logsnr(0.002-80)")].build(3), log_uniform(3, 0.002, 80.0)
    )
