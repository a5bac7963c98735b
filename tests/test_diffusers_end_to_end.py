"""End-to-end solver files (history coefficients C and model-time shift ξ) in ``DODEScheduler``.

The reference is the core: ``FittedSolver.sample`` / ``dode.sample(..., coefficients=C,
shift=ξ)`` on dode's own model adapters (``DiffusersDenoiser``, ``LatentDiffusionDenoiser``,
``SD3Denoiser``) from the same noise, on the tiny models of tests/_tiny.py. The scheduler runs
inside real diffusers pipelines (DDPMPipeline, which never calls ``scale_model_input``; Stable
Diffusion with CFG; SD3 from t = 1 and below it) and in a hand-written FLUX-style loop, with
the scheduler assigned after building the pipeline. The files carry random non-zero λ, C and ξ
(the arithmetic is what is checked, not a fit); dropping C or ξ from the reference must move
the sample far outside the tolerance, so the parity shows both are applied.
"""

from __future__ import annotations

import functools
import json

import diffusers
import numpy as np
import pytest
import torch
from _tiny import (
    inside_shift_bounds,
    make_tiny_sd,
    make_tiny_sd3,
    make_tiny_unet,
    scheduler_config,
    sd3_embeds,
    tiny_alphas_cumprod,
)

import dode
from dode.denoisers import (
    CallableDenoiser,
    DiffusersDenoiser,
    LatentDiffusionDenoiser,
    SD3Denoiser,
    flow_start,
)
from dode.files.solver_file import FittedSolver
from dode.grids.schedules import flow_sigmas, karras, vp_sigmas
from dode.hosts.diffusers import DODEScheduler  # noqa: E402
from dode.hosts.export import export  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.usefixtures("one_thread"),
]

TOL = 1e-4
STEPS = 5
W = 4.0
SHIFT = 3.0
PROMPTS = ["a red cube", "a small dog on grass"]
# DDIM, DPM-Solver++(2M), UniPC and two multi-stage solvers (Heun, DPM-Solver-2)
SOLVERS = [
    ("ddim", {}),
    ("dpm_solver_pp", {"order": 2}),
    ("unipc", {"order": 2}),
    ("heun", {}),
    ("dpm_solver", {"order": 2}),
]
IDS = [f"{n}{kw or ''}" for n, kw in SOLVERS]


def end_to_end(nfe: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random λ (λ_0 = 0), history coefficients (zero on and above the sub-diagonal) and
    model-time shift ξ for ``nfe`` calls."""
    g = torch.Generator().manual_seed(seed)
    lam = 0.3 * torch.randn(nfe, generator=g, dtype=torch.float64)
    lam[0] = 0.0
    c = torch.tril(0.15 * torch.randn(nfe, nfe, generator=g, dtype=torch.float64), diagonal=-2)
    xi = 0.2 * torch.randn(nfe, generator=g, dtype=torch.float64)
    return lam, c, xi


def fitted(solver, grid, seed=0, model=None, first_shift=True) -> FittedSolver:
    """An end-to-end file with random λ, C, ξ; ``first_shift=False``: ξ_0 = 0 (the first call
    at the grid's σ_0, which pipelines that skip ``scale_model_input`` need)."""
    lam, c, xi = end_to_end(solver.nfe(len(grid) - 1), seed)
    xi = inside_shift_bounds(solver, grid, xi)
    if not first_shift:
        xi[0] = 0.0
    fs = FittedSolver(
        solver=solver.config(), sigmas=grid, lambdas=lam, coefficients=c, shift=xi,
        model=model or {},
    )  # fmt: skip
    assert fs.is_end_to_end and fs.coefficients.abs().max() > 0.05
    assert fs.shift[1:].abs().min() > 0 and (fs.shift[0] != 0) == first_shift
    return fs


def capture(sched):
    """Record the last ``prev_sample`` the scheduler returns (the sample before the pipeline's
    post-processing)."""
    orig = sched.step

    @functools.wraps(orig)
    def step(*args, **kwargs):
        out = orig(*args, **kwargs)
        sched.last = out[0] if isinstance(out, tuple) else out.prev_sample
        return out

    sched.step = step
    return sched


def check(out, ref, den_sample, fs, noise, what: str) -> float:
    """``out`` = ``ref`` to TOL, and dropping C or ξ from the core's run moves the sample by
    far more (so the scheduler really applies both). Returns the max abs difference."""
    err = (out - ref).abs().max().item()
    print(f"{what}: max |Δ| to the core = {err:.2e}")
    assert ref.abs().max() > 0.1
    assert err <= TOL
    no_shift = den_sample(noise, fs.lambdas, fs.coefficients, None)
    no_hist = den_sample(noise, fs.lambdas, None, fs.shift)
    assert (out - no_shift).abs().max().item() > 1e2 * TOL, "the shift changes nothing"
    assert (out - no_hist).abs().max().item() > 1e2 * TOL, "the coefficients change nothing"
    return err


def vp_t(sigmas: list[float], alphas: torch.Tensor) -> np.ndarray:
    """Continuous timesteps of σ by log-σ interpolation over the ᾱ table (numpy, written here
    from the DDPM definition σ_t = sqrt((1 − ᾱ_t)/ᾱ_t))."""
    a = alphas.numpy()
    log_table = np.log(np.sqrt((1 - a) / a))
    return np.interp(np.log(np.asarray(sigmas)), log_table, np.arange(len(a)))


# ---- VP: DDPMPipeline (pixel) --------------------------------------------------------------


@pytest.fixture(scope="module")
def unet():
    return make_tiny_unet(seed=0)


@pytest.fixture(scope="module")
def alphas():
    return tiny_alphas_cumprod()


def ddpm_pipe(unet):
    pipe = diffusers.DDPMPipeline(
        unet=unet, scheduler=diffusers.DDPMScheduler(**scheduler_config("v_prediction"))
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_ddpm(pipe, sched, seed=3, batch=2):
    pipe.scheduler = capture(sched)
    gen = torch.Generator().manual_seed(seed)
    pipe(batch_size=batch, generator=gen, num_inference_steps=sched.num_steps, output_type="np")
    return sched.last, torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name, kw", SOLVERS, ids=IDS)
def test_vp_loop_runs_end_to_end_file(unet, alphas, tmp_path, name, kw):
    """The scheduler driven step by step as diffusers' own schedulers are (noise ·
    init_noise_sigma, scale_model_input, step), the file read by from_solver_file."""
    solver = dode.get_solver(name, **kw)
    grid = karras(STEPS, 0.02, 80.0)
    fs = fitted(solver, grid, seed=len(name))
    path = fs.save(tmp_path / "e2e.safetensors")
    like = diffusers.DDPMScheduler(**scheduler_config("v_prediction"))
    sched = DODEScheduler.from_solver_file(path, like=like)
    assert torch.equal(sched.coefficients, fs.coefficients)
    assert torch.equal(sched.model_time_shift, fs.shift)
    # call k is advertised at t(σ_k · exp(ξ_k)): the network's time, not the grid's
    net = [s * float(np.exp(x)) for s, x in zip(sched.call_sigmas, fs.shift.tolist())]
    sched.set_timesteps(sched.num_steps)
    np.testing.assert_allclose(sched.timesteps.numpy(), vp_t(net, alphas), atol=2e-3)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    x = noise * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    den = DiffusersDenoiser(unet, alphas, prediction_type="v_prediction")

    def core(n, lam, c, xi):
        with torch.no_grad():
            return dode.sample(den, solver, n, grid, lam, coefficients=c, shift=xi)

    with torch.no_grad():
        ref = fs.sample(den, noise)
    assert torch.equal(ref, core(noise, fs.lambdas, fs.coefficients, fs.shift))
    check(x, ref, core, fs, noise, f"VP loop {solver.describe()}")


@pytest.mark.parametrize("name, kw", SOLVERS, ids=IDS)
def test_ddpm_pipeline_runs_end_to_end_file(unet, alphas, tmp_path, name, kw):
    """DDPMPipeline never calls scale_model_input: with ξ_0 = 0 every shifted call after the
    first runs in it (the latents step() hands out are the network's input); with ξ_0 ≠ 0 it is
    refused at the first step."""
    solver = dode.get_solver(name, **kw)
    grid = karras(STEPS, 0.02, 80.0)
    fs = fitted(solver, grid, seed=len(name), first_shift=False)
    pipe = ddpm_pipe(unet)
    sched = DODEScheduler.from_solver_file(fs.save(tmp_path / "e2e.safetensors"), like=pipe)
    out, noise = run_ddpm(pipe, sched)
    den = DiffusersDenoiser(unet, alphas, prediction_type="v_prediction")

    def core(n, lam, c, xi):
        with torch.no_grad():
            return dode.sample(den, solver, n, grid, lam, coefficients=c, shift=xi)

    with torch.no_grad():
        ref = fs.sample(den, sched.dode_noise(noise))
    check(out, ref, core, fs, sched.dode_noise(noise), f"DDPMPipeline {solver.describe()}")

    shifted = fitted(solver, grid, seed=len(name))
    sched = DODEScheduler.from_solver_file(shifted.save(tmp_path / "e2e0.safetensors"), like=pipe)
    with pytest.raises(ValueError, match=r"ξ_0 = .* without scheduler.scale_model_input"):
        run_ddpm(pipe, sched)


def test_ddpm_save_load_and_zero_history(unet, alphas, tmp_path):
    """save_pretrained → from_pretrained keeps C and ξ (same latents bit for bit); C = 0 and
    ξ = 0 give the plain λ scheduler's latents bit for bit; dode=False drops all three."""
    solver = dode.get_solver("dpm_solver_pp", order=2)
    grid = karras(STEPS, 0.02, 80.0)
    fs = fitted(solver, grid, seed=7, first_shift=False)
    path = fs.save(tmp_path / "e2e.safetensors")
    pipe = ddpm_pipe(unet)
    sched = DODEScheduler.from_solver_file(path, like=pipe)
    first, noise = run_ddpm(pipe, sched)
    sched.save_pretrained(tmp_path / "sched")
    config = json.loads((tmp_path / "sched" / "scheduler_config.json").read_text())
    assert torch.equal(torch.tensor(config["coefficients"], dtype=torch.float64), fs.coefficients)
    assert torch.equal(torch.tensor(config["model_time_shift"], dtype=torch.float64), fs.shift)
    loaded = DODEScheduler.from_pretrained(tmp_path / "sched")
    assert torch.equal(loaded.coefficients, fs.coefficients)
    assert torch.equal(loaded.model_time_shift, fs.shift)
    assert torch.equal(loaded.timesteps, sched.timesteps)
    assert torch.equal(run_ddpm(pipe, loaded)[0], first)
    # python -m dode.export writes the same config (C and ξ included)
    like = tmp_path / "ddpm"
    diffusers.DDPMScheduler(**scheduler_config("v_prediction")).save_pretrained(like)
    export(str(path), str(tmp_path / "exported"), str(like))
    exported = DODEScheduler.from_pretrained(tmp_path / "exported")
    assert torch.equal(exported.coefficients, fs.coefficients)
    assert torch.equal(exported.model_time_shift, fs.shift)
    assert torch.equal(run_ddpm(pipe, exported)[0], first)

    plain = DODEScheduler.from_solver_file(
        path, like=pipe, coefficients=None, model_time_shift=None
    )
    zero = DODEScheduler.from_solver_file(
        path,
        like=pipe,
        coefficients=torch.zeros(STEPS, STEPS).tolist(),
        model_time_shift=[0.0] * STEPS,
    )
    assert torch.equal(run_ddpm(pipe, zero)[0], run_ddpm(pipe, plain)[0])
    assert (first - run_ddpm(pipe, plain)[0]).abs().max() > 1e2 * TOL

    base = DODEScheduler.from_solver_file(path, like=pipe, dode=False)
    assert base.lambdas is None and base.coefficients is None and base.model_time_shift is None
    den = DiffusersDenoiser(unet, alphas, prediction_type="v_prediction")
    out, noise = run_ddpm(pipe, base)
    with torch.no_grad():
        ref = fs.sample(den, base.dode_noise(noise), dode=False)
    assert (out - ref).abs().max().item() <= TOL


def test_bad_history_is_refused(alphas):
    solver = dode.get_solver("ddim")
    grid = karras(STEPS, 0.02, 80.0)
    lam, c, xi = end_to_end(STEPS)

    def make(**kw):
        args = {
            "solver": solver.config(),
            "sigmas": grid.tolist(),
            "lambdas": lam.tolist(),
            "alphas_cumprod": alphas.tolist(),
            **kw,
        }
        return DODEScheduler(**args)

    with pytest.raises(ValueError, match=r"shape \[5, 5\]"):
        make(coefficients=c[:4, :4].tolist())
    bad = c.clone()
    bad[3, 2] = 0.5  # the sub-diagonal is λ
    with pytest.raises(ValueError, match=r"must be 0 for j >= k − 1"):
        make(coefficients=bad.tolist())
    with pytest.raises(ValueError, match=r"shift must have shape \[5\]"):
        make(model_time_shift=xi[:3].tolist())
    with pytest.raises(ValueError, match="non-finite"):
        make(model_time_shift=[0.0, float("nan"), 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="history coefficients need λ"):
        make(lambdas=None, coefficients=c.tolist())
    make(lambdas=None, model_time_shift=xi.tolist())  # a shift alone is a valid solver


# ---- VP: Stable Diffusion (latent, CFG, scale_model_input) ------------------------------------


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    import transformers  # noqa: F401

    folder = tmp_path_factory.mktemp("sd")
    pipe = make_tiny_sd(folder, seed=1)
    den = LatentDiffusionDenoiser.from_pretrained(str(folder))
    return pipe, den, pipe.scheduler


@pytest.mark.parametrize("name, kw", [("unipc", {"order": 2}), ("heun", {})], ids=["unipc", "heun"])
def test_stable_diffusion_runs_end_to_end_file(sd, tmp_path, name, kw):
    pipe, den, original = sd
    solver = dode.get_solver(name, **kw)
    s = vp_sigmas(original.alphas_cumprod.to(torch.float64))
    grid = karras(STEPS, float(s.min()), float(s.max()))
    fs = fitted(solver, grid, seed=11)
    path = fs.save(tmp_path / "sd.safetensors")
    sched = DODEScheduler.from_solver_file(path, like=original)
    latents = torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(7))
    pipe.scheduler = sched
    with torch.no_grad():
        out = pipe(
            prompt=PROMPTS,
            negative_prompt=["blurry"] * len(PROMPTS),
            num_inference_steps=sched.num_steps,
            guidance_scale=W,
            latents=latents.clone(),
            output_type="latent",
            height=16,
            width=16,
        ).images
    bound = den.bind(PROMPTS, guidance_scale=W, negative_prompt="blurry")

    def core(n, lam, c, xi):
        with torch.no_grad():
            return dode.sample(bound, solver, n, grid, lam, coefficients=c, shift=xi)

    # SD multiplies its latents by init_noise_sigma: dode's noise is the latents passed in
    check(out, core(latents, fs.lambdas, fs.coefficients, fs.shift), core, fs, latents,
          f"Stable Diffusion {solver.describe()}")  # fmt: skip


# ---- flow: a FLUX-style loop on the tiny UNet, and SD3 ---------------------------------------


@pytest.mark.parametrize("name, kw", SOLVERS, ids=IDS)
def test_flow_loop_runs_end_to_end_file(unet, name, kw):
    """The loop a FLUX/SD3 pipeline runs (latents = noise, no scale_model_input), the tiny UNet
    read as v = ε − x0 at t·1000; the reference converts as DESIGN.md says."""
    solver = dode.get_solver(name, **kw)
    grid = karras(4, 0.05, 30.0)
    fs = fitted(solver, grid, seed=5)
    sched = DODEScheduler(
        solver=solver.config(), sigmas=grid.tolist(), lambdas=fs.lambdas.tolist(),
        coefficients=fs.coefficients.tolist(), model_time_shift=fs.shift.tolist(),
        family="flow", prediction_type="flow",
    )  # fmt: skip
    net = torch.tensor(sched.call_sigmas, dtype=torch.float64) * fs.shift.exp()
    torch.testing.assert_close(sched.timesteps.double(), 1000 * net / (1 + net), atol=1e-3, rtol=0)
    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    sched.set_timesteps(sigmas=None, mu=None)
    x = latents
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample

    def x0(x, sigma):
        t = sigma / (1 + sigma)
        x_t = x / (1 + sigma)
        return x_t - t * unet(x_t, (t.reshape(-1) * 1000).float()).sample

    den = CallableDenoiser(x0, 0.0, 1e3)

    def core(n, lam, c, xi):
        with torch.no_grad():
            return dode.sample(den, solver, n, grid, lam, coefficients=c, shift=xi)

    noise = sched.dode_noise(latents)
    with torch.no_grad():
        ref = fs.sample(den, noise)
    check(x, ref, core, fs, noise, f"flow loop {solver.describe()}")


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    import transformers  # noqa: F401

    folder = tmp_path_factory.mktemp("sd3")
    pipe = make_tiny_sd3(folder, shift=SHIFT)
    return pipe, SD3Denoiser.from_pretrained(str(folder)), sd3_embeds()


def run_sd3(pipe, emb, sched, latents):
    pipe.scheduler = sched
    with torch.no_grad():
        return pipe(
            **emb, latents=latents.clone(), height=16, width=16,
            num_inference_steps=sched.num_steps, guidance_scale=W, output_type="latent",
        ).images  # fmt: skip


# (solver, options, spacing): "euler" starts at t = 1 (flow_start's exact first call)
SD3_CASES = [
    ("euler", {}, "euler"),
    ("heun", {}, "euler"),
    ("dpm_solver_pp", {"order": 2}, "dpm_solver"),
    ("unipc", {"order": 2}, "unipc"),
]


@pytest.mark.parametrize(
    "name, kw, spacing", SD3_CASES, ids=[f"{n}{kw or ''}-{s}" for n, kw, s in SD3_CASES]
)
def test_sd3_runs_end_to_end_file(sd3, tmp_path, name, kw, spacing):
    pipe, den, emb = sd3
    solver = dode.get_solver(name, **kw)
    grid = flow_sigmas(5, shift=SHIFT, spacing=spacing)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    bound = den.bind(emb, guidance_scale=W)
    with torch.no_grad():
        noise, g = flow_start(bound, latents, grid)
    # SD3 never calls scale_model_input: a grid below t = 1 needs ξ_0 = 0 (else refused, below)
    start = bool(torch.isinf(grid[0]))
    fs = fitted(solver, g, seed=13, model={"guidance_scale": W}, first_shift=start)
    if start:  # the file holds the finite grid; the scheduler takes t = 1 first
        sched = DODEScheduler(
            solver=solver.config(), sigmas=grid.tolist(), lambdas=fs.lambdas.tolist(),
            coefficients=fs.coefficients.tolist(), model_time_shift=fs.shift.tolist(),
            family="flow", prediction_type="flow", guidance_scale=W,
        )  # fmt: skip
        assert sched.flow_start and sched.timesteps[0] == 1000
    else:
        sched = DODEScheduler.from_solver_file(fs.save(tmp_path / "sd3.safetensors"), like=pipe)
    out = run_sd3(pipe, emb, sched, latents)

    def core(n, lam, c, xi):
        with torch.no_grad():
            return dode.sample(bound, solver, n, g, lam, coefficients=c, shift=xi)

    with torch.no_grad():
        ref = fs.sample(bound, noise)
    check(out, ref, core, fs, noise, f"SD3 {solver.describe()} ({spacing} grid)")
    if sched.flow_start:  # save/load keeps σ = ∞, C and ξ: the same latents bit for bit
        sched.save_pretrained(tmp_path / "sched")
        loaded = DODEScheduler.from_pretrained(tmp_path / "sched")
        assert torch.equal(loaded.model_time_shift, fs.shift)
        assert torch.equal(run_sd3(pipe, emb, loaded, latents), out)
    else:
        shifted = fitted(solver, g, seed=13, model={"guidance_scale": W})
        sched = DODEScheduler.from_solver_file(shifted.save(tmp_path / "s.safetensors"), like=pipe)
        with pytest.raises(ValueError, match=r"ξ_0 = .* without scheduler.scale_model_input"):
            run_sd3(pipe, emb, sched, latents)
