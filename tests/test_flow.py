"""Flow matching (rectified flows) through dode's σ-space mapping.

* The mapping on an exact flow (a Gaussian mixture written as a flow, analytic velocity):
  x̂0 and ε̂ equal the mixture's σ-space denoiser; ``FlowDenoiser.start`` + Euler/DDIM equal the
  flow Euler loop in t from t = 1.
* Convergence orders of every solver on a Gaussian flow (closed-form ODE solution) match the
  theory of ``tests/test_convergence.py`` (same cases, here on a shifted flow grid in σ between
  t = 0.9 and t = 0.4).
* D-solvers (``dode.fit_lambdas``) lower the error to the exact ODE solution at NFE 3–10 on a
  Gaussian-mixture flow.
* Grids: ``flow_sigmas`` equals the σ of diffusers' flow schedulers; bad shifts and times fail.
* Parity with diffusers on a tiny random flow ``UNet2DModel`` (float32, max abs diff ≤ 1e-4):
  base Euler vs ``FlowMatchEulerDiscreteScheduler`` (from t = 1, same latents), DPM-Solver++ and
  UniPC vs ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` with
  ``use_flow_sigmas=True, prediction_type="flow_prediction"`` and the same ``flow_shift``.
  diffusers' multistep schedulers hand the network ``timesteps`` cast to int64; the loops here
  pass ``t·T`` as a float, the time the state is actually at (as FlowMatchEuler does).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _tiny import make_tiny_unet
from test_convergence import CASES, TOL, _with_exact_unipc_start

import dode
from dode.denoisers import (
    DiffusersFlowDenoiser,
    GaussianMixtureDenoiser,
    GaussianMixtureFlow,
    flow_start,
    gaussian,
)
from dode.grids.schedules import flow_sigmas, flux_mu, sigma_to_flow_t
from dode.solvers import get_solver

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

T = 1000


def _cov(d: int, g: torch.Generator, evals) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=g))
    return q @ torch.diag(torch.as_tensor(evals, dtype=torch.float64)) @ q.T


@pytest.fixture(scope="module")
def gauss():
    g = torch.Generator().manual_seed(1234)
    cov = _cov(4, g, [0.1, 0.4, 1.0, 2.5])
    mean = torch.randn(4, dtype=torch.float64, generator=g)
    return GaussianMixtureFlow.gaussian(mean, cov), gaussian(mean, cov)


@pytest.fixture(scope="module")
def mixture():
    g = torch.Generator().manual_seed(7)
    K, d = 3, 6
    means = 2 * torch.randn(K, d, dtype=torch.float64, generator=g)
    covs = torch.stack(
        [_cov(d, g, torch.rand(d, generator=g, dtype=torch.float64) + 0.05) for _ in range(K)]
    )
    return GaussianMixtureFlow(GaussianMixtureDenoiser(means, covs, torch.tensor([0.5, 0.3, 0.2])))


# ---- the mapping --------------------------------------------------------------------------------


def test_mapping_matches_sigma_space_denoiser(gauss):
    flow, den = gauss
    x = 3 * torch.randn(16, 4, dtype=torch.float64)
    for sigma in (0.01, 0.5, 3.0, 200.0):
        assert torch.allclose(flow.x0(x, sigma), den.x0(x, sigma), atol=1e-12)
        assert torch.allclose(flow.eps(x, sigma), den.eps(x, sigma), atol=1e-12)
    # v = ε − x0 in the flow's own variable: x_t = (1 − t) x0 + t ε.
    x0, eps, t = (
        torch.randn(16, 4, dtype=torch.float64),
        torch.randn(16, 4, dtype=torch.float64),
        0.3,
    )
    sigma = t / (1 - t)
    x = (x0 * (1 - t) + t * eps) / (1 - t)
    v = flow.velocity(x * (1 - t), torch.full((16, 1), t, dtype=torch.float64))
    assert torch.allclose(flow.x0(x, sigma), x * (1 - t) - t * v, atol=1e-12)
    # t = 1: the posterior mean is the data mean.
    v1 = flow.velocity(x, torch.ones(16, 1, dtype=torch.float64))
    assert torch.allclose(v1, x - den.means[0], atol=1e-12)


@pytest.mark.parametrize("solver", ["euler", "ddim"])
@pytest.mark.parametrize("spacing", ["euler", "dpm_solver"])
def test_start_then_euler_is_flow_euler(mixture, solver, spacing):
    """From the same latents, dode's Euler (x̂0 or ε form) after ``start`` equals the flow Euler
    loop ``x_{t'} = x_t + (t' − t) v`` from t_0 (= 1 for FlowMatchEuler's grid)."""
    s = flow_sigmas(6, shift=3.0, spacing=spacing)
    assert math.isinf(s[0]) == (spacing == "euler")
    latents = torch.randn(32, 6, dtype=torch.float64)
    noise, grid = mixture.start(latents, s)
    out = dode.sample(mixture, solver, noise, grid)
    t = sigma_to_flow_t(s)
    x = latents
    for i in range(6):
        x = x + (t[i + 1] - t[i]) * mixture.velocity(x, t[i].expand(32, 1))
    assert (out - x).abs().max() < 1e-12


# ---- convergence orders through the mapping ------------------------------------------------------

T_MAX, T_END = 0.9, 0.4
NS = (32, 64, 128)  # the flow interval spans 2.6 in log σ (test_convergence: 0.7): more steps
NS_SIGMA = (
    128,
    256,
    512,
)  # equal steps in σ over σ ∈ [0.67, 9]: iPNDM-4 needs them to be asymptotic


def _flow_grid(kind: str, n: int) -> torch.Tensor:
    lo, hi = T_END / (1 - T_END), T_MAX / (1 - T_MAX)
    if kind == "sigma":  # iPNDM's fixed coefficients assume equal steps in σ
        return torch.linspace(hi, lo, n + 1, dtype=torch.float64)
    # uniform in t between the two flow times, then SD3's shift 3: a smooth non-uniform σ grid
    unshift = [t / (3 - 2 * t) for t in (T_MAX, T_END)]  # the inverse of the shift
    t = torch.linspace(*unshift, n + 1, dtype=torch.float64)
    return flow_sigmas(times=t, shift=3.0)[:-1]


def _order(flow, noise, name, kw, kind, exact_start):
    errors = []
    ns = NS_SIGMA if kind == "sigma" else NS
    for n in ns:
        s = _flow_grid(kind, n)
        assert (
            abs(sigma_to_flow_t(s[0]) - T_MAX) < 1e-12
            and abs(sigma_to_flow_t(s[-1]) - T_END) < 1e-12
        )
        s0 = s[0].item()

        def exact(sig, x0=noise * s0, s0=s0):
            return flow.exact_solution(x0, s0, float(sig))

        solver = get_solver(name, **kw)
        if name == "unipc" and exact_start and solver.corrector:
            solver = _with_exact_unipc_start(solver, exact, exact_start)

        def reset(i, sigma_next, x, exact=exact):
            if i < exact_start:
                x.copy_(exact(sigma_next))

        out = dode.sample(flow, solver, noise, s, callback=reset)
        errors.append(float((out - exact(s[-1])).pow(2).mean().sqrt()))
    assert min(errors) > 1e-12
    return float(-np.polyfit(np.log(ns), np.log(errors), 1)[0]), errors


@pytest.mark.parametrize(
    "name,kw,kind,exact_start,order", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_convergence_order_on_gaussian_flow(gauss, name, kw, kind, exact_start, order):
    flow, _ = gauss
    noise = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    slope, errors = _order(flow, noise, name, kw, kind, exact_start)
    assert abs(slope - order) <= TOL, f"slope {slope:.2f}, theory {order}; errors {errors}"


# ---- D-solvers on a Gaussian-mixture flow ------------------------------------------------------


@pytest.mark.parametrize(
    "name,kw", [("euler", {}), ("ddim", {}), ("dpm_solver_pp", {"order": 2}), ("unipc", {})]
)
def test_d_solver_lowers_error_on_mixture_flow(mixture, name, kw):
    solver = get_solver(name, **kw)
    g = torch.Generator().manual_seed(11)
    fit_latents = torch.randn(256, 6, dtype=torch.float64, generator=g)
    test_latents = torch.randn(256, 6, dtype=torch.float64, generator=g)
    ref_solver = get_solver("dpm_solver_pp", order=2)
    for nfe in (3, 5, 10):
        s = flow_sigmas(solver.steps_for_nfe(nfe) + 1, shift=3.0)  # t = 1 start: one more step
        fit_noise, grid = mixture.start(fit_latents, s)
        lam = dode.fit_lambdas(mixture, solver, fit_noise, grid, space="log")
        noise, grid = mixture.start(test_latents, s)
        fine = dode.grids.schedules.refine(grid, 100, space="log")
        ref = dode.sample(mixture, ref_solver, noise, fine)
        err_base = (dode.sample(mixture, solver, noise, grid) - ref).pow(2).mean().item()
        err_d = (dode.sample(mixture, solver, noise, grid, lam) - ref).pow(2).mean().item()
        assert err_d < 0.9 * err_base, f"NFE {nfe}: D {err_d:.3g} vs base {err_base:.3g}"


# ---- grids ----------------------------------------------------------------------------------------


def _t(sigmas: torch.Tensor) -> np.ndarray:
    return sigma_to_flow_t(sigmas).numpy()


@pytest.mark.parametrize("n", [1, 4, 9])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_grids_match_diffusers(n, shift):
    from diffusers import (
        DPMSolverMultistepScheduler,
        FlowMatchEulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    fm = FlowMatchEulerDiscreteScheduler(shift=shift)
    fm.set_timesteps(n)
    np.testing.assert_allclose(_t(flow_sigmas(n, shift)), fm.sigmas.numpy(), atol=1e-6)
    flow = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": shift}
    dpm = DPMSolverMultistepScheduler(**flow)
    dpm.set_timesteps(n)
    np.testing.assert_allclose(
        _t(flow_sigmas(n, shift, spacing="dpm_solver")), dpm.sigmas.numpy(), atol=1e-6
    )
    uni = UniPCMultistepScheduler(**flow)
    uni.set_timesteps(n)
    np.testing.assert_allclose(
        _t(flow_sigmas(n, shift, spacing="unipc")), uni.sigmas.numpy(), atol=1e-6
    )


@pytest.mark.parametrize("seq_len", [256, 1024, 4096])
def test_flux_grid_matches_diffusers(seq_len):
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    mu = flux_mu(seq_len)
    assert mu == pytest.approx(calculate_shift(seq_len))
    fm = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    n = 7
    fm.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    np.testing.assert_allclose(
        _t(flow_sigmas(n, mu=mu, spacing="flux")), fm.sigmas.numpy(), atol=1e-6
    )
    fm.set_timesteps(n, mu=mu)
    np.testing.assert_allclose(_t(flow_sigmas(n, mu=mu)), fm.sigmas.numpy(), atol=1e-6)


def test_shift_is_a_sigma_scaling():
    """A time shift s is σ' = s·σ: it changes the grid, not the model."""
    base = flow_sigmas(6, spacing="dpm_solver")
    np.testing.assert_allclose(flow_sigmas(6, 3.0, spacing="dpm_solver"), 3.0 * base, rtol=1e-12)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"num_steps": 4, "shift": -1.0}, "non-monotone"),
        ({"num_steps": 4, "shift": 0.0}, "non-monotone"),
        ({"num_steps": 4, "mu": 0.0, "shift_type": "linear"}, "non-monotone"),
        ({"times": [1.2, 0.5]}, r"outside \(0, 1\]"),
        ({"times": [0.5, 0.0]}, r"outside \(0, 1\]"),
        ({"times": [0.5, -0.1]}, r"outside \(0, 1\]"),
    ],
)
def test_bad_flow_grid(kw, match):
    with pytest.raises(ValueError, match=match):
        flow_sigmas(**kw)


def test_bad_start(mixture):
    s = flow_sigmas(4, 3.0)
    with pytest.raises(ValueError, match="FlowDenoiser.start"):
        mixture.x0(torch.randn(2, 6, dtype=torch.float64), math.inf)
    with pytest.raises(ValueError, match="at least two steps"):
        mixture.start(torch.randn(2, 6), flow_sigmas(1, 3.0))
    with pytest.raises(ValueError, match="FlowDenoiser"):
        flow_start(gaussian(torch.zeros(6), torch.eye(6)), torch.randn(2, 6), s)


# ---- parity with diffusers on a tiny random flow UNet2DModel -----------------------------------


@pytest.fixture(scope="module")
def tiny_flow(tmp_path_factory):
    from diffusers import FlowMatchEulerDiscreteScheduler

    root = tmp_path_factory.mktemp("flow_unet")
    unet = make_tiny_unet(num_class_embeds=10)
    unet.save_pretrained(root / "unet")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(root / "scheduler")
    return unet, DiffusersFlowDenoiser.from_pretrained(str(root))


def _diffusers_loop(unet, scheduler, latents, labels, n, **set_kw):
    scheduler.set_timesteps(n, **set_kw)
    x = latents.clone()
    with torch.no_grad():
        for i in range(len(scheduler.sigmas) - 1):
            t = scheduler.sigmas[i] * T  # the float flow time (FlowMatchEuler's own timesteps)
            v = unet(x, t.expand(len(x)), class_labels=labels).sample
            x = scheduler.step(v, scheduler.timesteps[i], x).prev_sample
    return x


def test_from_pretrained_and_labels(tiny_flow):
    unet, den = tiny_flow
    assert den.shift == 3.0 and den.num_train_timesteps == T and den.sample_shape == (3, 8, 8)
    x, t = torch.randn(4, 3, 8, 8), torch.full((4, 1, 1, 1), 0.3, dtype=torch.float64)
    labels = torch.tensor([0, 3, 5, 9])
    with pytest.raises(ValueError, match="set_class_labels"):
        den.set_class_labels(None).velocity(x, t)
    den.set_class_labels(labels)
    with torch.no_grad():
        ref = unet(x, torch.full((4,), 300.0), class_labels=labels).sample
        other = unet(x, torch.full((4,), 300.0), class_labels=labels.flip(0)).sample
        assert torch.allclose(den.velocity(x, t), ref, atol=1e-6)
    assert (ref - other).abs().max() > 1e-3  # the labels matter
    with pytest.raises(ValueError, match=r"class labels must be in \[0, 10\)"):
        den.set_class_labels(10)


@pytest.mark.parametrize("n", [4, 8])
def test_euler_parity_flow_match_euler(tiny_flow, n):
    from diffusers import FlowMatchEulerDiscreteScheduler

    unet, den = tiny_flow
    latents = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([1, 2, 7, 7])
    ref = _diffusers_loop(unet, FlowMatchEulerDiscreteScheduler(shift=3.0), latents, labels, n)
    den.set_class_labels(labels)
    with torch.no_grad():
        noise, grid = den.start(latents, flow_sigmas(n, shift=den.shift))
        out = dode.sample(den, "euler", noise, grid)
    assert out.abs().max() > 0.1
    assert (out - ref).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "name,kw,sched",
    [
        ("dpm_solver_pp", {"order": 2}, "dpm"),
        ("dpm_solver_pp", {"order": 3}, "dpm"),
        ("unipc", {"order": 2}, "unipc"),
        ("unipc", {"order": 3}, "unipc"),
    ],
)
@pytest.mark.parametrize("n", [5, 8])
def test_multistep_parity_use_flow_sigmas(tiny_flow, name, kw, sched, n):
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    unet, den = tiny_flow
    shift = 3.0
    cfg = {
        "use_flow_sigmas": True,
        "prediction_type": "flow_prediction",
        "flow_shift": shift,
        "solver_order": kw["order"],
    }
    cls = DPMSolverMultistepScheduler if sched == "dpm" else UniPCMultistepScheduler
    latents = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    labels = torch.tensor([0, 4, 4, 8])
    ref = _diffusers_loop(unet, cls(**cfg), latents, labels, n)
    den.set_class_labels(labels)
    spacing = "dpm_solver" if sched == "dpm" else "unipc"
    with torch.no_grad():
        noise, grid = den.start(latents, flow_sigmas(n, shift=shift, spacing=spacing))
        out = dode.sample(den, get_solver(name, **kw), noise, grid)
    assert out.abs().max() > 0.1
    assert (out - ref).abs().max() <= 1e-4
