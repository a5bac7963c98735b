"""dode's solvers against diffusers' schedulers on a tiny random UNet2DModel.

Each test runs the diffusers loop (``set_timesteps``, ``scale_model_input``, the network,
``step``) from ``noise · init_noise_sigma`` and dode's solver with a
:class:`~dode.denoisers.DiffusersDenoiser` on the σ grid of the scheduler's timesteps, from the
same starting point (``x = x_vp · sqrt(1 + σ_0²)`` for the VP schedulers, whose sample is
``x_vp``; the sample itself for Heun, which already works in σ-space). dode must call the
network at the same timesteps, and the final samples must agree to 1e-4 in float32. At σ = 0 the
VP and σ-space variables coincide; where diffusers ends at σ_min = σ(t=0) (DEIS, noise-prediction
DPM-Solver) the comparison is on ``x_vp = x / sqrt(1 + σ_min²)``.

Two readings of the same random network:

* ``"v"``: a v-prediction model on diffusers' default linear schedule (σ_max ≈ 157). Read as v,
  a random network is a sane denoiser (ε̂ → x_vp as α → 0), so samples stay O(1).
* ``"eps"``: an ε-prediction model on a short linear schedule (β_end = 0.005, σ_max ≈ 3.4). On
  the default schedule a random ε-network drifts samples to |x| ~ 600, where float32 itself
  only resolves ~6e-5; :func:`test_eps_default_schedule` covers that case with a tolerance
  relative to the sample's size.
"""

from __future__ import annotations

import math

import diffusers
import pytest
import torch
from _tiny import make_tiny_unet, scheduler_config
from torch import nn

from dode.denoisers import DiffusersDenoiser
from dode.grids.schedules import time_uniform, vp_sigmas
from dode.solvers import get_solver

# diffusers deprecates algorithm_type="dpmsolver" (the noise-prediction DPM-Solver) with a FutureWarning.
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.usefixtures("one_thread"),
]

TOL = 1e-4  # float32
TOL64 = 1e-8  # float64, on diffusers' own σ values
BETAS = {k: v for k, v in scheduler_config().items() if k.startswith("beta")}
MODELS = {
    "v": ("v_prediction", BETAS),
    "eps": ("epsilon", {**BETAS, "beta_end": 0.005}),
}


class Recorder(nn.Module):
    """Wraps the UNet and records every timestep it is called with."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.config = unet.config
        self.ts: list[float] = []

    def forward(self, x, t):
        t = torch.as_tensor(t)
        self.ts.append(float(t.reshape(-1)[0]))
        return self.unet(x, t)


@pytest.fixture(scope="module")
def unet():
    return make_tiny_unet(seed=0)


@pytest.fixture(scope="module")
def noise():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def make(cls, model: str, **kw):
    """A diffusers scheduler for one of the two model readings."""
    prediction_type, betas = MODELS[model]
    return cls(**betas, prediction_type=prediction_type, **kw)


class Float64Net(nn.Module):
    """Lets a float32 network serve a float64 diffusers loop (input cast down, output up)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        out = self.unet(x.float(), t)
        out.sample = out.sample.double()
        return out


def run_diffusers(sched, unet, noise, steps, dtype=torch.float32):
    """The standard diffusers sampling loop; returns the final sample and the timesteps used.

    With ``dtype=torch.float64`` the scheduler's σ / ᾱ tables are cast to float64 after
    ``set_timesteps`` (their values stay the float32 ones), so diffusers' update formulas run
    in float64.
    """
    sched.set_timesteps(steps)
    if dtype == torch.float64:
        for attr in ("sigmas", "alphas_cumprod", "final_alpha_cumprod"):
            if isinstance(getattr(sched, attr, None), torch.Tensor):
                setattr(sched, attr, getattr(sched, attr).double())
        unet = Float64Net(unet)
    x = noise.to(dtype) * sched.init_noise_sigma
    ts = []
    with torch.no_grad():
        for t in sched.timesteps:
            ts.append(float(t))
            out = unet(sched.scale_model_input(x, t), t).sample
            x = sched.step(out, t, x).prev_sample
    return x, ts


def run_dode(unet, solver, sigmas, x, sched, mode="snap"):
    """dode's solver with a DiffusersDenoiser built from the scheduler's ᾱ table and
    prediction type; ``x`` is the σ-space start at ``sigmas[0]``."""
    rec = Recorder(unet)
    den = DiffusersDenoiser(
        rec, sched.alphas_cumprod, prediction_type=sched.config.prediction_type, sigma_to_t=mode
    )
    fn = den.x0 if solver.consumes == "x0" else den.eps
    with torch.no_grad():
        out = solver(fn, x, sigmas)
    return out, rec.ts


def vp_grid(sched, final: str) -> torch.Tensor:
    """σ at the scheduler's integer timesteps (float64 from its ᾱ table) plus the final σ."""
    table = vp_sigmas(sched.alphas_cumprod)
    ts = torch.as_tensor(sched.timesteps).long()
    last = torch.zeros(1, dtype=torch.float64) if final == "zero" else table[:1]
    return torch.cat([table[ts], last])


def compare_vp(
    sched, unet, noise, steps, solver, final="zero", relative=False, dtype=torch.float32
):
    """Run both on a VP scheduler; return max |Δ| of the final VP samples (divided by
    max(1, max |ref|) if ``relative``). In float64 dode runs on diffusers' own (float32) σ."""
    ref, ts_ref = run_diffusers(sched, unet, noise, steps, dtype)
    sigmas = vp_grid(sched, final)
    if dtype == torch.float64 and hasattr(sched, "sigmas"):
        sigmas = sched.sigmas.double()
    assert len(ts_ref) == steps == solver.nfe(steps)
    x = noise.to(dtype) * math.sqrt(1 + sigmas[0].item() ** 2)
    out, ts = run_dode(unet, solver, sigmas, x, sched)
    out = out / math.sqrt(1 + sigmas[-1].item() ** 2)  # back to the VP variable
    assert ts == ts_ref, "dode called the network at other timesteps than diffusers"
    assert torch.isfinite(ref).all() and ref.abs().max() > 0.1
    err = (out - ref).abs().max().item()
    err = err / max(1.0, ref.abs().max().item()) if relative else err
    return err


# ---- DDIM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["v", "eps"])
@pytest.mark.parametrize(
    "spacing, offset, steps",
    [("leading", 0, 3), ("leading", 0, 10), ("leading", 1, 5), ("trailing", 0, 5)],
)
@pytest.mark.parametrize("name", ["ddim", "euler"])
def test_ddim(unet, noise, name, spacing, offset, steps, model):
    """DDIMScheduler (eta=0, set_alpha_to_one, no clipping) = dode DDIM (ε form) and Euler
    (x̂0 form), on dode's own time_uniform grid, which must equal the scheduler's timesteps.
    Trailing spacing only where T % N == 0: diffusers' DDIM steps to t − T//N, which is off
    the trailing grid otherwise."""
    sched = make(
        diffusers.DDIMScheduler,
        model,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing=spacing,
        steps_offset=offset,
    )
    sched.set_timesteps(steps)
    grid = time_uniform(steps, sched.alphas_cumprod, spacing=spacing, steps_offset=offset)
    assert torch.equal(grid, vp_grid(sched, "zero"))
    assert compare_vp(sched, unet, noise, steps, get_solver(name)) <= TOL


def test_ddim_sample_prediction(unet, noise):
    """The network read as an x0-predictor ("sample"): DDIM in both forms."""
    sched = diffusers.DDIMScheduler(
        **BETAS, clip_sample=False, set_alpha_to_one=True, prediction_type="sample"
    )
    for name in ("ddim", "euler"):
        assert compare_vp(sched, unet, noise, 5, get_solver(name)) <= TOL, name


# ---- DPM-Solver++ multistep ---------------------------------------------------------------


@pytest.mark.parametrize("model", ["v", "eps"])
@pytest.mark.parametrize("order, steps", [(1, 5), (2, 3), (2, 10), (3, 3), (3, 5), (3, 10)])
def test_dpm_solver_pp(unet, noise, order, steps, model):
    """DPMSolverMultistepScheduler (dpmsolver++, midpoint, lower_order_final, final σ = 0):
    DPM-Solver++ 2M / 3M (order 1 = DDIM)."""
    sched = make(diffusers.DPMSolverMultistepScheduler, model, solver_order=order)
    solver = get_solver("dpm_solver_pp", order=order)
    assert compare_vp(sched, unet, noise, steps, solver) <= TOL


@pytest.mark.parametrize("lower_order_final, steps", [(False, 6), (True, 16)])
def test_dpm_solver_pp_final_steps(unet, noise, lower_order_final, steps):
    """3M without lower_order_final, and with 16 steps (where diffusers' lower_order_final
    no longer applies); in both the step to σ = 0 is first order."""
    sched = make(
        diffusers.DPMSolverMultistepScheduler,
        "v",
        solver_order=3,
        lower_order_final=lower_order_final,
    )
    solver = get_solver("dpm_solver_pp", order=3, lower_order_final=lower_order_final)
    assert compare_vp(sched, unet, noise, steps, solver) <= TOL


# ---- DEIS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["v", "eps"])
@pytest.mark.parametrize("order, steps", [(1, 5), (2, 3), (2, 10), (3, 3), (3, 5), (3, 10)])
def test_deis(unet, noise, order, steps, model):
    """DEISMultistepScheduler (the only variant it has: log-ρ AB, "logrho"; lower_order_final;
    it ends at σ_min = σ(t=0), not 0) = dode DEIS with basis="logrho"."""
    sched = make(diffusers.DEISMultistepScheduler, model, solver_order=order)
    solver = get_solver("deis", order=order, basis="logrho")
    assert compare_vp(sched, unet, noise, steps, solver, final="sigma_min") <= TOL


# ---- UniPC --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["v", "eps"])
@pytest.mark.parametrize("order, steps", [(1, 5), (2, 3), (2, 6), (3, 3), (3, 5), (3, 10)])
def test_unipc_bh2(unet, noise, order, steps, model):
    """UniPCMultistepScheduler (bh2, predict_x0, UniC corrector on, lower_order_final,
    final σ = 0)."""
    sched = make(diffusers.UniPCMultistepScheduler, model, solver_order=order, solver_type="bh2")
    solver = get_solver("unipc", order=order, variant="bh2")
    assert compare_vp(sched, unet, noise, steps, solver) <= TOL


@pytest.mark.parametrize("model", ["v", "eps"])
@pytest.mark.parametrize("order, steps", [(1, 5), (2, 3), (2, 6), (3, 3), (3, 10)])
def test_unipc_bh1(unet, noise, order, steps, model):
    """UniPCMultistepScheduler with bh1. With final σ = 0 diffusers returns NaN for bh1
    (its last step multiplies B(h) = −h = −∞ by a zero residual), so both end at
    σ_min = σ(t=0) (final_sigmas_type="sigma_min")."""
    sched = make(
        diffusers.UniPCMultistepScheduler,
        model,
        solver_order=order,
        solver_type="bh1",
        final_sigmas_type="sigma_min",
    )
    solver = get_solver("unipc", order=order, variant="bh1")
    assert compare_vp(sched, unet, noise, steps, solver, final="sigma_min") <= TOL


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_long_grid(unet, noise, variant):
    """16 steps of UniPC-3: diffusers lowers the order of the last steps (min(order, N − i))
    for any N, not only below 15 steps as its DPM-Solver++ does."""
    sched = make(
        diffusers.UniPCMultistepScheduler,
        "v",
        solver_order=3,
        solver_type=variant,
        final_sigmas_type="sigma_min",
    )
    solver = get_solver("unipc", order=3, variant=variant)
    assert compare_vp(sched, unet, noise, 16, solver, final="sigma_min") <= TOL


def test_unipc_without_corrector(unet, noise):
    """disable_corrector on every step = dode UniPC(corrector=False), the plain UniP-2."""
    steps = 5
    sched = make(
        diffusers.UniPCMultistepScheduler, "v", solver_order=2, disable_corrector=list(range(steps))
    )
    solver = get_solver("unipc", order=2, corrector=False)
    assert compare_vp(sched, unet, noise, steps, solver) <= TOL


# ---- DPM-Solver singlestep ----------------------------------------------------------------


@pytest.mark.parametrize("model", ["v", "eps"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize(
    "order, steps, lower_order_final",
    [(2, 4, False), (2, 5, False), (2, 6, True), (3, 6, False), (3, 7, False), (3, 9, True)],
)
def test_dpm_solver_singlestep(unet, noise, order, steps, lower_order_final, solver_type, model):
    """DPMSolverSinglestepScheduler with algorithm_type="dpmsolver" (noise prediction; it only
    allows final_sigmas_type="sigma_min" there) = dode DPMSolver(stages="grid"): the stage
    points are grid points and the order list is diffusers' (N not a multiple of the order
    switches lower_order_final on, as in diffusers). diffusers' default algorithm,
    "dpmsolver++" (data prediction, singlestep), has no counterpart in dode.

    The v-reading runs in float64: there a group's first update jumps from t = 999 with
    α_t/α_s up to ~44, and diffusers' own float32 result is up to 6e-4 away from its float64
    one, so no float32 implementation can match it to 1e-4; in float64 both agree to 1e-8."""
    sched = make(
        diffusers.DPMSolverSinglestepScheduler,
        model,
        solver_order=order,
        algorithm_type="dpmsolver",
        solver_type=solver_type,
        lower_order_final=lower_order_final,
        final_sigmas_type="sigma_min",
    )
    solver = get_solver(
        "dpm_solver",
        order=order,
        stages="grid",
        solver_type=solver_type,
        lower_order_final=lower_order_final,
    )
    dtype = torch.float64 if model == "v" else torch.float32
    err = compare_vp(sched, unet, noise, steps, solver, final="sigma_min", dtype=dtype)
    assert err <= (TOL64 if model == "v" else TOL)
    assert solver.grid_orders(steps, final_zero=False) == sched.order_list


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 6, 7, 9, 12])
@pytest.mark.parametrize("lower_order_final", [False, True])
@pytest.mark.parametrize("final", ["zero", "sigma_min"])
def test_dpm_solver_grid_orders(order, steps, lower_order_final, final):
    """The grid variant's order list is diffusers' for every N (no network needed)."""
    sched = diffusers.DPMSolverSinglestepScheduler(
        **BETAS, solver_order=order, lower_order_final=lower_order_final, final_sigmas_type=final
    )
    sched.set_timesteps(steps)
    solver = get_solver(
        "dpm_solver", order=order, stages="grid", lower_order_final=lower_order_final
    )
    assert solver.grid_orders(steps, final_zero=final == "zero") == sched.order_list
    assert solver.nfe(steps) == steps == len(sched.timesteps)


def _paper_dpm_solver(eps_vp, x_vp, sigmas, order, r1, r2):
    """DPM-Solver-2 / -3 (Lu et al., 2022, Algorithms 1 and 2) in the paper's VP notation:
    α_t = 1/sqrt(1 + σ_t²), σ^VP_t = σ_t α_t, λ_t = log(α_t / σ^VP_t), stage points at
    λ_{t_{i−1}} + r h_i. ``eps_vp(x_vp, sigma)`` is the VP noise-prediction model."""

    def alpha(s):
        return 1 / math.sqrt(1 + s * s)

    def sig_vp(s):
        return s * alpha(s)

    def lam(s):
        return math.log(alpha(s) / sig_vp(s))

    def t_of_lambda(lmb):  # the inverse of λ(σ): σ = e^{−λ}
        return math.exp(-lmb)

    x = x_vp
    for s, t in zip(sigmas[:-1], sigmas[1:]):
        h = lam(t) - lam(s)
        e = eps_vp(x, s)
        if order == 2:
            s1 = t_of_lambda(lam(s) + r1 * h)
            u = (alpha(s1) / alpha(s)) * x - sig_vp(s1) * math.expm1(r1 * h) * e
            x = (
                (alpha(t) / alpha(s)) * x
                - sig_vp(t) * math.expm1(h) * e
                - sig_vp(t) / (2 * r1) * math.expm1(h) * (eps_vp(u, s1) - e)
            )
        else:
            s1 = t_of_lambda(lam(s) + r1 * h)
            s2 = t_of_lambda(lam(s) + r2 * h)
            u1 = (alpha(s1) / alpha(s)) * x - sig_vp(s1) * math.expm1(r1 * h) * e
            d1 = eps_vp(u1, s1) - e
            u2 = (
                (alpha(s2) / alpha(s)) * x
                - sig_vp(s2) * math.expm1(r2 * h) * e
                - sig_vp(s2) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * d1
            )
            d2 = eps_vp(u2, s2) - e
            x = (
                (alpha(t) / alpha(s)) * x
                - sig_vp(t) * math.expm1(h) * e
                - (sig_vp(t) / r2) * (math.expm1(h) / h - 1) * d2
            )
    return x


@pytest.mark.parametrize(
    "order, r1, r2", [(2, None, None), (2, 0.4, None), (3, None, None), (3, 0.25, 0.6)]
)
def test_dpm_solver_lambda_stages_match_paper(unet, noise, order, r1, r2):
    """dode's default DPMSolver (stages at λ_s + r h, σ-space formulas) = the paper's
    Algorithms 1–2 written out in VP notation, on the tiny UNet with log-σ interpolated
    timesteps, on a log-SNR-uniform grid that ends at σ_min (> 0, so every step is full order)."""
    sched = make(diffusers.DDPMScheduler, "v")
    den = DiffusersDenoiser(
        unet, sched.alphas_cumprod, prediction_type="v_prediction", sigma_to_t="interp"
    )
    sigmas = torch.exp(torch.linspace(math.log(80.0), math.log(0.05), 5, dtype=torch.float64))
    solver = get_solver("dpm_solver", order=order, r1=r1, r2=r2)
    x_start = noise.double() * math.sqrt(1 + sigmas[0].item() ** 2)  # x_vp = noise

    def eps_vp(x_vp, s):  # ε is the same in both variables; only the input is rescaled
        return den.eps(x_vp * math.sqrt(1 + s * s), s)

    with torch.no_grad():
        out = solver(den.eps, x_start, sigmas)
        ref = _paper_dpm_solver(
            eps_vp, noise.double(), sigmas.tolist(), order, solver.r1, solver.r2
        )
    out_vp = out / math.sqrt(1 + sigmas[-1].item() ** 2)
    assert ref.abs().max() > 0.1
    assert (out_vp - ref).abs().max().item() <= 1e-6


# ---- Heun ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["v", "eps"])
@pytest.mark.parametrize(
    "steps, karras, mode", [(4, False, "snap"), (5, False, "interp"), (5, True, "interp")]
)
def test_heun(unet, noise, steps, karras, mode, model):
    """HeunDiscreteScheduler (σ-space, 2N − 1 calls, last step Euler) = dode Heun (EDM
    Algorithm 1) on the scheduler's own σ.

    With linspace spacing N = 4 puts every timestep on an integer (snap). N = 5 gives
    fractional timesteps whose σ diffusers interpolates linearly in σ, while dode interpolates
    t linearly in log σ: the same point up to ~1e-3 in t. With Karras σ diffusers maps σ → t by
    log-σ interpolation, exactly dode's ``sigma_to_t="interp"``.

    The v-reading runs in float64: Heun integrates x = x_vp·sqrt(1 + σ²) of size ~157 in
    σ-space, and diffusers' float32 result is itself ~1e-4 away from its float64 one. On
    integer timesteps both then agree to 1e-8; with interpolated ones the small difference in
    t above leaves up to ~8e-5."""
    dtype = torch.float64 if model == "v" else torch.float32
    sched = make(diffusers.HeunDiscreteScheduler, model, use_karras_sigmas=karras)
    ref, ts_ref = run_diffusers(sched, unet, noise, steps, dtype)
    sigmas = torch.cat([sched.sigmas[:1], sched.sigmas[1::2]]).to(torch.float64)
    assert len(sigmas) == steps + 1 and sigmas[-1] == 0
    solver = get_solver("heun")
    x = noise.to(dtype) * sched.init_noise_sigma
    out, ts = run_dode(unet, solver, sigmas, x, sched, mode=mode)
    assert len(ts) == len(ts_ref) == solver.nfe(steps)
    assert max(abs(a - b) for a, b in zip(ts, ts_ref)) <= (1e-3 if mode == "interp" else 0)
    assert torch.isfinite(ref).all() and ref.abs().max() > 0.1
    exact = model == "v" and mode == "snap"  # float64 and the very same timesteps
    assert (out - ref).abs().max().item() <= (TOL64 if exact else TOL)


# ---- ε-prediction on the default schedule --------------------------------------------------


@pytest.mark.parametrize(
    "cls, name, kw, final",
    [
        ("DDIMScheduler", "ddim", {"clip_sample": False}, "zero"),
        ("DPMSolverMultistepScheduler", "dpm_solver_pp_3m", {"solver_order": 3}, "zero"),
        ("UniPCMultistepScheduler", "unipc", {"solver_order": 3}, "zero"),
    ],
)
def test_eps_default_schedule(unet, noise, cls, name, kw, final):
    """A random ε-network on the default schedule (σ_max ≈ 157) drifts the samples to
    |x| ~ 600; agreement is then to float32 resolution relative to that size (2e-6 ≈ 16 ulp)."""
    sched = getattr(diffusers, cls)(**BETAS, **kw)
    solver = get_solver(name, **({"order": 3} if name == "unipc" else {}))
    assert compare_vp(sched, unet, noise, 6, solver, final=final, relative=True) <= 2e-6


# ---- float64: the same formulas, not only the same samples to float32 precision ------------


@pytest.mark.parametrize(
    "cls, name, kw, solver_kw, final",
    [
        ("DDIMScheduler", "ddim", {"clip_sample": False}, {}, "zero"),
        ("DDIMScheduler", "euler", {"clip_sample": False}, {}, "zero"),
        ("DEISMultistepScheduler", "deis", {"solver_order": 3}, {"basis": "logrho"}, "sigma_min"),
        ("UniPCMultistepScheduler", "unipc", {"solver_order": 3}, {"order": 3}, "zero"),
        (
            "UniPCMultistepScheduler",
            "unipc",
            {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
            {"order": 3, "variant": "bh1"},
            "sigma_min",
        ),
    ],
)
def test_float64_agreement(unet, noise, cls, name, kw, solver_kw, final):
    """Both in float64 on the same σ values: agreement to 1e-8 shows that the float32
    differences above are rounding, not a different update rule. (DPMSolverMultistepScheduler
    is left out: its ``step`` casts the sample to float32 whatever the input dtype.)"""
    sched = make(getattr(diffusers, cls), "v", **kw)
    solver = get_solver(name, **solver_kw)
    assert compare_vp(sched, unet, noise, 6, solver, final=final, dtype=torch.float64) <= TOL64
