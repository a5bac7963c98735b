"""``DODEScheduler`` in real diffusers pipelines against dode's own model adapters.

Tiny random pipelines (tests/_tiny.py), ``output_type="latent"``, float32:

* Stable Diffusion (CFG, prompts through the pipeline's CLIP) and SDXL (CFG, zero negative
  rows) against :class:`~dode.denoisers.LatentDiffusionDenoiser` bound with ``bind(prompts,
  guidance_scale=w)``; the pipeline multiplies its latents by ``init_noise_sigma``, so dode's
  noise is the latents passed in.
* SD3 (CFG) and FLUX (embedded guidance, packed latents, ``mu`` and ``timestep / 1000``) via
  ``prompt_embeds`` against :class:`~dode.denoisers.SD3Denoiser` / :class:`~dode.denoisers.
  FluxDenoiser` bound the same way and started with ``flow_start`` (grids from t = 1 take its
  exact first step inside the scheduler).

Each: the pipeline with ``DODEScheduler`` = ``dode.sample`` from the same noise and
conditioning (max abs diff ≤ 1e-4) with random nonzero λ, fitted λ (SD3, through a solver file)
and λ = 0; with λ = 0 also = the pipeline with the matching diffusers scheduler.
"""

from __future__ import annotations

import json
import warnings

import diffusers
import pytest
import torch
import transformers  # noqa: F401, E402
from _tiny import (
    float_timesteps,
    flux_embeds,
    make_tiny_flux,
    make_tiny_sd,
    make_tiny_sd3,
    sd3_embeds,
)

import dode
from dode.denoisers import FluxDenoiser, LatentDiffusionDenoiser, SD3Denoiser, flow_start
from dode.files.solver_file import FittedSolver
from dode.grids.schedules import flow_sigmas, karras, vp_sigmas
from dode.hosts.diffusers import DODEScheduler  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.usefixtures("one_thread"),
]

TOL = 1e-4
PROMPTS = ["a red cube", "a small dog on grass"]
NEG = "blurry"
W = 4.0  # CFG scale (SD, SDXL, SD3)
G = 3.5  # FLUX's embedded guidance
SHIFT = 3.0


def random_lambdas(nfe: int, seed: int = 0) -> torch.Tensor:
    lam = 0.3 * torch.randn(nfe, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lam[0] = 0.0
    return lam


def solver_nfe(solver, grid) -> int:
    """Model calls of the solver on ``grid`` (without flow_start's exact step from t = 1)."""
    finite = grid[1:] if torch.isinf(grid[0]) else grid
    return solver.nfe(len(finite) - 1)


def lambdas(with_lambda: bool, solver, grid, seed=0):
    return random_lambdas(solver_nfe(solver, grid), seed) if with_lambda else None


def scheduler(solver, grid, lam, **kw) -> DODEScheduler:
    return DODEScheduler(
        solver=solver.config(),
        sigmas=grid.tolist(),
        lambdas=None if lam is None else lam.tolist(),
        **kw,
    )


def check(out, ref, base=None):
    """``out`` = ``ref`` to TOL; the sample is not trivial; with ``base`` (the λ = 0 sample)
    the λ visibly change it."""
    assert ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() <= TOL
    if base is not None:
        assert (out - base).abs().max().item() > 1e2 * TOL


# ---- Stable Diffusion and SDXL ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """name → (pipeline, LatentDiffusionDenoiser, ᾱ table) for SD (ε) and SDXL."""
    out = {}
    for name, kw in {"sd": {}, "sdxl": {"xl": True}}.items():
        folder = tmp_path_factory.mktemp(name)
        pipe = make_tiny_sd(folder, seed=1, **kw)
        den = LatentDiffusionDenoiser.from_pretrained(str(folder))
        out[name] = (pipe, den, pipe.scheduler.alphas_cumprod.to(torch.float64), folder)
        pipe.original_scheduler = pipe.scheduler  # tests swap pipe.scheduler
    return out


def sd_latents(seed=7):
    return torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def run_sd(pipe, sched, latents, w=W, steps=None, xl=False):
    pipe.scheduler = sched
    neg = {} if xl else {"negative_prompt": [NEG] * len(PROMPTS)}  # SDXL: zero negative rows
    with torch.no_grad():
        return pipe(
            prompt=PROMPTS,
            num_inference_steps=steps or sched.num_steps,
            guidance_scale=w,
            latents=latents.clone(),
            output_type="latent",
            height=16,
            width=16,
            **neg,
        ).images


def sd_reference(den, solver, latents, grid, lam, xl=False):
    bound = den.bind(PROMPTS, guidance_scale=W, negative_prompt=None if xl else NEG)
    with torch.no_grad():
        return dode.sample(bound, solver, latents, grid, lam)


SD_SOLVERS = [
    ("ddim", {}),
    ("dpm_solver_pp", {}),
    ("unipc", {}),
    ("heun", {}),
    ("pndm", {}),
    ("pndm", {"skip_prk_steps": True}),
]


@pytest.mark.parametrize("with_lambda", [True, False], ids=["lambda", "base"])
@pytest.mark.parametrize("name, kw", SD_SOLVERS, ids=[f"{n}{kw or ''}" for n, kw in SD_SOLVERS])
def test_stable_diffusion_equals_dode_sample(sd, name, kw, with_lambda):
    pipe, den, alphas, _ = sd["sd"]
    solver = dode.get_solver(name, **kw)
    grid = karras(5, 0.05, 14.0)
    lam = lambdas(with_lambda, solver, grid, seed=2)
    sched = scheduler(solver, grid, lam, alphas_cumprod=alphas.tolist(), guidance_scale=W)
    latents = sd_latents()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the fitted guidance scale: no warning
        out = run_sd(pipe, sched, latents)
    base = sd_reference(den, solver, latents, grid, None) if with_lambda else None
    check(out, sd_reference(den, solver, latents, grid, lam), base)


@pytest.mark.parametrize("with_lambda", [True, False], ids=["lambda", "base"])
@pytest.mark.parametrize("name", ["dpm_solver_pp", "heun"])
def test_sdxl_equals_dode_sample(sd, name, with_lambda):
    pipe, den, alphas, _ = sd["sdxl"]
    solver = dode.get_solver(name)
    grid = karras(4, 0.05, 14.0)
    lam = lambdas(with_lambda, solver, grid, seed=3)
    sched = scheduler(solver, grid, lam, alphas_cumprod=alphas.tolist(), guidance_scale=W)
    latents = sd_latents(8)
    out = run_sd(pipe, sched, latents, xl=True)
    base = sd_reference(den, solver, latents, grid, None, xl=True) if with_lambda else None
    check(out, sd_reference(den, solver, latents, grid, lam, xl=True), base)


SD_MATCHES = {
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": True}, {}),
    "dpm_solver_pp": ("DPMSolverMultistepScheduler", {"solver_order": 2}, {"order": 2}),
}


@pytest.mark.parametrize("model", ["sd", "sdxl"])
@pytest.mark.parametrize("name", list(SD_MATCHES))
def test_stable_diffusion_base_equals_diffusers_scheduler(sd, model, name):
    """λ = 0 on the diffusers scheduler's own timesteps (snapped): the same latents as with the
    diffusers scheduler. Both start at x_vp = latents: the DODE pipeline gets
    ``latents / init_noise_sigma`` (diffusers' VP schedulers have init_noise_sigma = 1)."""
    pipe, _, alphas, _ = sd[model]
    cls, ckw, skw = SD_MATCHES[name]
    ref_sched = getattr(diffusers, cls).from_config(pipe.original_scheduler.config, **ckw)
    ref_sched.set_timesteps(5)
    ts = torch.as_tensor(ref_sched.timesteps).long()
    grid = torch.cat([vp_sigmas(alphas)[ts], torch.zeros(1, dtype=torch.float64)])
    solver = dode.get_solver(name, **skw)
    sched = scheduler(solver, grid, None, alphas_cumprod=alphas.tolist(), timestep_mode="snap")
    assert torch.equal(sched.timesteps, ts)
    latents = sd_latents(9)
    xl = model == "sdxl"
    out = run_sd(pipe, sched, latents / sched.init_noise_sigma, xl=xl)
    ref = run_sd(pipe, ref_sched, latents, steps=5, xl=xl)
    check(out, ref)


# ---- SD3 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3")
    pipe = make_tiny_sd3(folder, shift=SHIFT)
    pipe.original_scheduler = pipe.scheduler
    den = SD3Denoiser.from_pretrained(str(folder))
    emb = sd3_embeds()
    return pipe, den, emb, folder


def sd3_latents(seed=11):
    return torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def run_sd3(sd3, sched, latents, steps=None, w=W):
    pipe, _, emb, _ = sd3
    pipe.scheduler = sched
    with torch.no_grad():
        return pipe(
            **emb,
            latents=latents.clone(),
            height=16,
            width=16,
            num_inference_steps=steps or sched.num_steps,
            guidance_scale=w,
            output_type="latent",
        ).images


def flow_reference(bound, solver, latents, grid, lam):
    with torch.no_grad():
        noise, g = flow_start(bound, latents, grid)
        return dode.sample(bound, solver, noise, g, lam)


def flow_scheduler(solver, grid, lam, **kw):
    return scheduler(solver, grid, lam, family="flow", prediction_type="flow", **kw)


# (solver, options, grid spacing: "euler" starts at t = 1, the others below it)
SD3_CASES = [
    ("euler", {}, "euler"),
    ("dpm_solver_pp", {"order": 2}, "dpm_solver"),
    ("unipc", {"order": 2}, "unipc"),
    ("dpm_solver_pp", {"order": 3}, "euler"),
]


@pytest.mark.parametrize("with_lambda", [True, False], ids=["lambda", "base"])
@pytest.mark.parametrize(
    "name, kw, spacing", SD3_CASES, ids=[f"{n}{kw or ''}-{s}" for n, kw, s in SD3_CASES]
)
def test_sd3_equals_dode_sample(sd3, name, kw, spacing, with_lambda):
    _, den, emb, _ = sd3
    solver = dode.get_solver(name, **kw)
    grid = flow_sigmas(6, shift=SHIFT, spacing=spacing)
    assert torch.isinf(grid[0]) == (spacing == "euler")
    lam = lambdas(with_lambda, solver, grid, seed=4)
    sched = flow_scheduler(solver, grid, lam, shift=SHIFT, guidance_scale=W)
    assert len(sched.timesteps) == solver_nfe(solver, grid) + int(spacing == "euler")
    latents = sd3_latents()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = run_sd3(sd3, sched, latents)
    bound = den.bind(emb, guidance_scale=W)
    base = flow_reference(bound, solver, latents, grid, None) if with_lambda else None
    check(out, flow_reference(bound, solver, latents, grid, lam), base)


@pytest.mark.parametrize("name", ["euler", "dpm_solver_pp", "unipc"])
def test_sd3_base_equals_diffusers_scheduler(sd3, name):
    n = 6
    if name == "euler":
        ref_sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT)
        grid = flow_sigmas(n, shift=SHIFT)
    else:
        cls = (
            "DPMSolverMultistepScheduler" if name == "dpm_solver_pp" else "UniPCMultistepScheduler"
        )
        ref_sched = float_timesteps(getattr(diffusers, cls))(
            use_flow_sigmas=True,
            prediction_type="flow_prediction",
            flow_shift=SHIFT,
            solver_order=2,
        )
        grid = flow_sigmas(n, shift=SHIFT, spacing="dpm_solver" if name != "unipc" else "unipc")
    solver = dode.get_solver(name) if name == "euler" else dode.get_solver(name, order=2)
    latents = sd3_latents(12)
    out = run_sd3(sd3, flow_scheduler(solver, grid, None), latents)
    ref = run_sd3(sd3, ref_sched, latents, steps=n)
    check(out, ref)


def test_sd3_fitted_solver_file(sd3, tmp_path):
    """λ fitted by dode.fit_lambdas on the SD3 model, through a solver file: the pipeline with
    ``DODEScheduler.from_solver_file`` (schedule read from the model folder the file names) =
    ``FittedSolver.sample``; the fit changes the sample."""
    _, den, emb, folder = sd3
    solver = dode.get_solver("dpm_solver_pp", order=2)
    grid = flow_sigmas(4, shift=SHIFT, spacing="dpm_solver")
    bound = den.bind(emb, guidance_scale=W)
    latents = sd3_latents(13)
    noise, g = flow_start(bound, latents, grid)
    with torch.no_grad():
        lam = dode.fit_lambdas(bound, solver, noise, g, teacher_factor=4)
    assert lam[1:].abs().max() > 1e-3
    fs = FittedSolver(
        solver=solver.config(),
        sigmas=g,
        lambdas=lam,
        model={"id": str(folder), "class": "SD3Denoiser", "guidance_scale": W},
    )
    path = fs.save(tmp_path / "sd3.safetensors")
    sched = DODEScheduler.from_solver_file(path)
    assert sched.family == "flow" and sched.config.shift == SHIFT
    out = run_sd3(sd3, sched, latents)
    with torch.no_grad():
        ref = fs.sample(bound, noise)
        base = fs.sample(bound, noise, dode=False)
    check(out, ref, base)


def test_sd3_twice_and_save_load_identical(sd3, tmp_path):
    """A flow scheduler from t = 1: calling the pipeline twice, and after save_pretrained →
    from_pretrained (σ = ∞ in the JSON config), gives identical latents."""
    solver = dode.get_solver("unipc", order=2)
    grid = flow_sigmas(5, shift=SHIFT)
    sched = flow_scheduler(solver, grid, random_lambdas(solver_nfe(solver, grid), 5), shift=SHIFT)
    latents = sd3_latents(14)
    first = run_sd3(sd3, sched, latents)
    second = run_sd3(sd3, sched, latents)
    assert torch.equal(first, second)
    sched.save_pretrained(tmp_path / "sched")
    loaded = DODEScheduler.from_pretrained(tmp_path / "sched")
    assert loaded.flow_start and torch.equal(loaded.grid, sched.grid)
    assert torch.equal(loaded.lambdas, sched.lambdas)
    assert torch.equal(run_sd3(sd3, loaded, latents), first)


# ---- FLUX ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux")
    pipe = make_tiny_flux(folder)
    pipe.original_scheduler = pipe.scheduler
    den = FluxDenoiser.from_pretrained(str(folder), image_size=(16, 24))
    emb = flux_embeds()
    return pipe, den, emb, folder


def run_flux(flux, sched, latents, steps=None, g=G):
    pipe, den, emb, _ = flux
    pipe.scheduler = sched
    with torch.no_grad():
        out = pipe(
            **emb,
            latents=den.pack(latents),
            height=16,
            width=24,
            num_inference_steps=steps or sched.num_steps,
            guidance_scale=g,
            output_type="latent",
        ).images
    return den.unpack(out)


def flux_shift_config(flux) -> dict:
    """The FLUX scheduler's dynamic-shift settings (FluxPipeline computes μ from them)."""
    keys = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")
    return {k: flux[0].original_scheduler.config[k] for k in keys}


FLUX_CASES = [("euler", {}, "flux"), ("dpm_solver_pp", {"order": 2}, "dpm_solver")]


@pytest.mark.parametrize("with_lambda", [True, False], ids=["lambda", "base"])
@pytest.mark.parametrize("name, kw, spacing", FLUX_CASES, ids=[c[0] for c in FLUX_CASES])
def test_flux_equals_dode_sample(flux, name, kw, spacing, with_lambda):
    _, den, emb, _ = flux
    solver = dode.get_solver(name, **kw)
    grid = flow_sigmas(5, mu=den.mu, spacing=spacing)
    lam = lambdas(with_lambda, solver, grid, seed=6)
    sched = flow_scheduler(
        solver,
        grid,
        lam,
        mu=den.mu,
        guidance_scale=1.0,
        embedded_guidance=G,
        **flux_shift_config(flux),
    )
    latents = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(15))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # FLUX's μ and guidance as fitted
        out = run_flux(flux, sched, latents)
    bound = den.bind(emb, guidance=G)
    base = flow_reference(bound, solver, latents, grid, None) if with_lambda else None
    check(out, flow_reference(bound, solver, latents, grid, lam), base)


def test_flux_base_euler_equals_flow_match_euler(flux):
    pipe, den, _, _ = flux
    ref_sched = diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        pipe.original_scheduler.config
    )
    grid = flow_sigmas(5, mu=den.mu, spacing="flux")
    latents = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(16))
    out = run_flux(flux, flow_scheduler(dode.get_solver("euler"), grid, None), latents)
    check(out, run_flux(flux, ref_sched, latents, steps=5))


def test_flux_solver_file(flux, tmp_path):
    """A FLUX solver file (μ grid, embedded guidance in the model options): the schedule and
    FLUX's dynamic-shift settings come from the model folder it names; the pipeline at the
    fitted guidance runs without a warning and equals ``FittedSolver.sample``."""
    _, den, emb, folder = flux
    solver = dode.get_solver("unipc", order=2)
    grid = flow_sigmas(4, mu=den.mu, spacing="dpm_solver")
    fs = FittedSolver(
        solver=solver.config(),
        sigmas=grid,
        lambdas=random_lambdas(solver.nfe(4), 7),
        model={"id": str(folder), "class": "FluxDenoiser", "options": {"guidance": G}},
    )
    sched = DODEScheduler.from_solver_file(fs.save(tmp_path / "flux.safetensors"), mu=den.mu)
    assert sched.config.embedded_guidance == G and sched.config.base_image_seq_len == 4
    latents = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(17))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        out = run_flux(flux, sched, latents)
    bound = den.bind(emb, guidance=G)
    with torch.no_grad():
        ref = fs.sample(bound, flow_start(bound, latents, grid)[0])
    check(out, ref)


def test_flux_other_guidance_warns(flux):
    _, den, _, _ = flux
    grid = flow_sigmas(3, mu=den.mu, spacing="flux")
    sched = flow_scheduler(dode.get_solver("euler"), grid, None, embedded_guidance=G)
    latents = torch.randn(2, *den.sample_shape)
    with pytest.warns(UserWarning, match=r"guidance_scale=5 differs from the embedded guidance"):
        run_flux(flux, sched, latents, g=5.0)


# ---- wrong family, wrong steps, corrupt config ----------------------------------------------


def test_vp_solver_in_sd3_pipeline_and_flow_solver_in_sd_pipeline(sd, sd3, tmp_path):
    _, _, alphas, sd_folder = sd["sd"]
    vp = scheduler(dode.get_solver("ddim"), karras(4, 0.05, 14.0), None, alphas_cumprod=alphas)
    with pytest.raises(ValueError, match="StableDiffusion3Pipeline runs a rectified-flow model"):
        run_sd3(sd3, vp, sd3_latents())
    flow = flow_scheduler(dode.get_solver("euler"), flow_sigmas(4, shift=SHIFT), None)
    with pytest.raises(
        ValueError, match="StableDiffusionPipeline runs a diffusion .* fitted on a rectified-flow"
    ):
        run_sd(sd["sd"][0], flow, sd_latents())
    # solver files: the recorded family against the pipeline's scheduler (like=)
    grid = karras(4, 0.05, 14.0)
    vp_file = FittedSolver(
        solver={"name": "ddim"},
        sigmas=grid,
        lambdas=random_lambdas(4),
        model={"id": str(sd_folder), "class": "LatentDiffusionDenoiser"},
    ).save(tmp_path / "vp.safetensors")
    with pytest.raises(ValueError, match="fitted on a diffusion .* belongs to a rectified-flow"):
        DODEScheduler.from_solver_file(vp_file, like=sd3[0].original_scheduler)
    flow_file = FittedSolver(
        solver={"name": "ddim"},
        sigmas=flow_sigmas(4, shift=SHIFT, spacing="dpm_solver"),
        lambdas=random_lambdas(4),
        model={"id": str(sd3[3]), "class": "SD3Denoiser"},
    ).save(tmp_path / "flow.safetensors")
    with pytest.raises(ValueError, match="fitted on a rectified-flow .* belongs to a diffusion"):
        DODEScheduler.from_solver_file(flow_file, like=sd["sd"][0].original_scheduler)


def test_flow_wrong_step_count(sd3, flux):
    grid = flow_sigmas(4, shift=SHIFT)
    sched = flow_scheduler(dode.get_solver("heun"), grid, None)
    assert sched.num_steps == 4 and sched.nfe == 1 + 2 * 3 - 1
    with pytest.raises(ValueError, match=r"num_inference_steps=28 .* 4 steps \(NFE 6\)"):
        run_sd3(sd3, sched, sd3_latents(), steps=28)
    _, den, _, _ = flux
    flux_sched = flow_scheduler(dode.get_solver("euler"), flow_sigmas(4, mu=den.mu), None)
    with pytest.raises(ValueError, match=r"num_inference_steps=5 .* 4 steps"):
        run_flux(flux, flux_sched, torch.randn(2, *den.sample_shape), steps=5)
    with pytest.raises(ValueError, match="custom sigmas requested"):
        sched.set_timesteps(sigmas=[1.0, 0.5, 0.2])


def test_flow_corrupt_config(tmp_path):
    solver = dode.get_solver("euler")
    sched = flow_scheduler(solver, flow_sigmas(4, shift=SHIFT), None)
    sched.save_pretrained(tmp_path / "ok")
    cfg = json.loads((tmp_path / "ok" / "scheduler_config.json").read_text())
    s = cfg["sigmas"]
    for name, bad, msg in [
        ("pred", {"prediction_type": "epsilon"}, "predicts v"),
        ("grid", {"sigmas": [s[0], s[2], s[1], *s[3:]]}, "strictly descending"),
        ("short", {"sigmas": [float("inf"), 0.0]}, "at least two steps"),
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "scheduler_config.json").write_text(json.dumps({**cfg, **bad}))
        with pytest.raises(ValueError, match=f"corrupt DODEScheduler config.*{msg}"):
            DODEScheduler.from_pretrained(tmp_path / name)
