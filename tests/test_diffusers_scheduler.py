"""``DODEScheduler`` inside diffusers pipelines against ``dode.sample`` and diffusers' schedulers.

Every pipeline run captures the scheduler's final ``prev_sample`` (the sample before the
pipeline's own post-processing, whose clamping would hide differences). The reference is
``dode.sample`` from the pipeline's noise mapped by the documented convention (``noise =
latents / init_noise_sigma``): a ``DiffusersDenoiser`` on the same tiny UNet for DDPM/DDIM
pipelines, and for Stable Diffusion a ``CallableDenoiser`` that wraps the same conditional
UNet with classifier-free guidance in ε (one batched 2B forward).
"""

from __future__ import annotations

import functools
import json
import math
import warnings

import diffusers
import pytest
import torch
from _tiny import make_tiny_unet, scheduler_config, tiny_alphas_cumprod

import dode
from dode.cli.export import main as export_main  # noqa: E402
from dode.denoisers import CallableDenoiser, DiffusersDenoiser
from dode.files.solver_file import FittedSolver
from dode.grids.schedules import karras, time_uniform, vp_sigmas
from dode.hosts.diffusers import DODEScheduler  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.usefixtures("one_thread"),
]

TOL = 1e-4
STEPS = 5
# Every registered solver (and the option sets that change its call pattern).
SOLVERS = [
    ("ddim", {}),
    ("euler", {}),
    ("heun", {}),
    ("ipndm", {}),
    ("dpm_solver", {"order": 2}),
    ("dpm_solver", {"order": 3}),
    ("dpm_solver", {"order": 3, "stages": "grid"}),
    ("dpm_solver_pp", {"order": 2}),
    ("dpm_solver_pp", {"order": 3}),
    ("deis", {}),
    ("unipc", {"order": 2}),
    ("unipc", {"order": 3, "variant": "bh1"}),
    ("pndm", {}),
    ("pndm", {"skip_prk_steps": True}),
]


def test_every_registered_solver_is_covered():
    assert {name for name, _ in SOLVERS} == set(dode.solvers.SOLVERS)


def random_lambdas(nfe: int, seed: int = 0) -> torch.Tensor:
    lam = 0.3 * torch.randn(nfe, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lam[0] = 0.0
    return lam


def capture(sched):
    """Record the last ``prev_sample`` the scheduler returns (signature kept for pipelines)."""
    orig = sched.step

    @functools.wraps(orig)
    def step(*args, **kwargs):
        out = orig(*args, **kwargs)
        sched.last = out[0] if isinstance(out, tuple) else out.prev_sample
        return out

    sched.step = step
    return sched


@pytest.fixture(scope="module")
def unet():
    return make_tiny_unet(seed=0)


@pytest.fixture(scope="module")
def alphas():
    return tiny_alphas_cumprod()


def vp_scheduler(solver, grid, lambdas, alphas, prediction_type="v_prediction", **kw):
    return DODEScheduler(
        solver=solver.config(),
        sigmas=grid.tolist(),
        lambdas=None if lambdas is None else lambdas.tolist(),
        alphas_cumprod=alphas.tolist(),
        prediction_type=prediction_type,
        **kw,
    )


def run_ddpm(unet, sched, seed=3, batch=2, pipeline="ddpm"):
    cls = diffusers.DDPMPipeline if pipeline == "ddpm" else diffusers.DDIMPipeline
    pipe = cls(unet=unet, scheduler=diffusers.DDPMScheduler(**scheduler_config()))
    pipe.scheduler = capture(sched)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    pipe(batch_size=batch, generator=gen, num_inference_steps=sched.num_steps, output_type="np")
    noise = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return sched.last, noise


# ---- DDPM family: every solver = dode.sample ------------------------------------------------


@pytest.mark.parametrize("with_lambda", [True, False], ids=["lambda", "base"])
@pytest.mark.parametrize("name, kw", SOLVERS, ids=[f"{n}{kw or ''}" for n, kw in SOLVERS])
def test_ddpm_pipeline_equals_dode_sample(unet, alphas, name, kw, with_lambda):
    solver = dode.get_solver(name, **kw)
    # The singlestep grid variant is ill-conditioned in float32 from σ = 80 (its first group
    # jumps by α_t/α_s ~ 40): there dode.sample's own float32 and float64 results differ by
    # 8e-4, and a 1e-7 relative change of the noise moves the sample by 3e-4, so no float32
    # pair can agree to 1e-4. From σ = 20 they differ by 5e-5.
    grid = karras(STEPS, 0.02, 20.0 if kw.get("stages") == "grid" else 80.0)
    lam = random_lambdas(solver.nfe(STEPS)) if with_lambda else None
    sched = vp_scheduler(solver, grid, lam, alphas)
    assert len(sched.timesteps) == solver.nfe(STEPS)
    out, noise = run_ddpm(unet, sched)
    den = DiffusersDenoiser(unet, alphas, prediction_type="v_prediction")
    with torch.no_grad():
        ref = dode.sample(den, solver, sched.dode_noise(noise), grid, lam)
    assert torch.isfinite(ref).all() and ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() <= TOL
    if with_lambda:  # the correction changes the sample: the λ really are applied
        with torch.no_grad():
            base = dode.sample(den, solver, sched.dode_noise(noise), grid, None)
        assert (out - base).abs().max().item() > 1e3 * TOL


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_ddim_pipeline_other_predictions(unet, alphas, prediction_type):
    """DDIMPipeline (passes eta=0, use_clipped_model_output) and the ε / x0 readings."""
    a = torch.as_tensor(
        diffusers.DDPMScheduler(**{**scheduler_config(), "beta_end": 0.005}).alphas_cumprod,
        dtype=torch.float64,
    )
    for name in ("ddim", "dpm_solver_pp"):
        solver = dode.get_solver(name)
        grid = karras(STEPS, 0.05, 3.0)
        lam = random_lambdas(STEPS, seed=1)
        sched = vp_scheduler(solver, grid, lam, a, prediction_type=prediction_type)
        out, noise = run_ddpm(unet, sched, pipeline="ddim")
        den = DiffusersDenoiser(unet, a, prediction_type=prediction_type)
        with torch.no_grad():
            ref = dode.sample(den, solver, sched.dode_noise(noise), grid, lam)
        assert (out - ref).abs().max().item() <= TOL, name


# ---- λ = 0: the matching diffusers scheduler ------------------------------------------------

BETAS = {k: v for k, v in scheduler_config().items() if k.startswith("beta")}
EPS_BETAS = {**BETAS, "beta_end": 0.005}


def diffusers_loop(sched, unet, noise, steps):
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(sched.scale_model_input(x, t), t).sample, t, x).prev_sample
    return x


MATCHES = [
    # (dode solver, options, diffusers class, its options, final σ, model reading)
    ("ddim", {}, "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}, "zero", "v"),
    ("euler", {}, "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}, "zero", "v"),
    (
        "dpm_solver_pp",
        {"order": 2},
        "DPMSolverMultistepScheduler",
        {"solver_order": 2},
        "zero",
        "v",
    ),
    (
        "dpm_solver_pp",
        {"order": 3},
        "DPMSolverMultistepScheduler",
        {"solver_order": 3},
        "zero",
        "v",
    ),
    ("unipc", {"order": 2}, "UniPCMultistepScheduler", {"solver_order": 2}, "zero", "v"),
    ("unipc", {"order": 3}, "UniPCMultistepScheduler", {"solver_order": 3}, "zero", "v"),
    (
        "deis",
        {"order": 3, "basis": "logrho"},
        "DEISMultistepScheduler",
        {"solver_order": 3},
        "sigma_min",
        "v",
    ),
    (
        "dpm_solver",
        {"order": 2, "stages": "grid"},
        "DPMSolverSinglestepScheduler",
        {"solver_order": 2, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
        "sigma_min",
        "eps",
    ),
]


@pytest.mark.parametrize(
    "name, kw, cls, ckw, final, model", MATCHES, ids=[f"{m[0]}{m[1]}" for m in MATCHES]
)
def test_base_equals_diffusers_scheduler(unet, name, kw, cls, ckw, final, model):
    """With λ = 0 the DDPMPipeline with DODEScheduler = diffusers' own scheduler on the same
    timesteps, from the same pipeline noise (both start at x_vp = noise)."""
    prediction_type, betas = ("v_prediction", BETAS) if model == "v" else ("epsilon", EPS_BETAS)
    ref_sched = getattr(diffusers, cls)(**betas, prediction_type=prediction_type, **ckw)
    ref_sched.set_timesteps(STEPS)
    a = ref_sched.alphas_cumprod.to(torch.float64)
    table = vp_sigmas(a)
    ts = torch.as_tensor(ref_sched.timesteps).long()
    last = torch.zeros(1, dtype=torch.float64) if final == "zero" else table[:1]
    grid = torch.cat([table[ts], last])
    solver = dode.get_solver(name, **kw)
    sched = vp_scheduler(solver, grid, None, a, prediction_type, timestep_mode="snap")
    assert torch.equal(sched.timesteps, ts)
    out, noise = run_ddpm(unet, sched)
    ref = diffusers_loop(ref_sched, unet, noise, STEPS)
    assert ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() <= TOL


def test_ddim_time_uniform_grid_matches_ddim_pipeline(unet, alphas):
    """dode's time_uniform grid with snapped timesteps: the DDIMPipeline gives the same image
    with DODEScheduler(λ = 0) as with DDIMScheduler."""
    grid = time_uniform(STEPS, alphas)
    sched = vp_scheduler(dode.get_solver("ddim"), grid, None, alphas, timestep_mode="snap")
    out, _ = run_ddpm(unet, sched, pipeline="ddim")
    ref_sched = capture(
        diffusers.DDIMScheduler(
            **BETAS, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=True
        )
    )
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=ref_sched)
    pipe.scheduler = ref_sched
    pipe.set_progress_bar_config(disable=True)
    pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS)
    assert (out - ref_sched.last).abs().max().item() <= TOL


# ---- Stable Diffusion with classifier-free guidance -------------------------------------------


@pytest.fixture(scope="module")
def sd():
    """A tiny StableDiffusionPipeline (random UNet2DConditionModel and AutoencoderKL; prompts
    passed as embeddings) and its conditioning."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(16, 32),
            norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=4,
        )
        vae = diffusers.AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 16),
            norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
        )
        with torch.no_grad():
            for n, p in unet.named_parameters():
                if n.endswith("bias") or n.startswith("conv_out"):
                    p.add_(0.1 * torch.randn_like(p))
        pos = torch.randn(2, 6, 16)
        neg = torch.randn(2, 6, 16)
    ref = diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=None,
        tokenizer=None,
        unet=unet.eval(),
        scheduler=ref,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, pos, neg, ref.alphas_cumprod.to(torch.float64)


def run_sd(sd, sched, w, latents):
    pipe, pos, neg, _ = sd
    pipe.scheduler = capture(sched)
    out = pipe(
        prompt_embeds=pos,
        negative_prompt_embeds=neg,
        num_inference_steps=sched.num_steps,
        guidance_scale=w,
        latents=latents,
        output_type="latent",
    ).images
    assert torch.equal(out, sched.last)
    return out


def cfg_denoiser(sd, alphas, w):
    """dode's reference for the SD pipeline: CFG in ε from one batched 2B forward."""
    pipe, pos, neg, _ = sd
    unet = pipe.unet
    table = DiffusersDenoiser(unet, alphas)  # only for its σ → t map

    def eps(x, sigma):
        c_in = 1 / (1 + sigma**2).sqrt()
        t = table.sigma_to_t(sigma.reshape(-1)).to(torch.float32)
        x_in = torch.cat([x * c_in] * 2)
        out = unet(x_in, torch.cat([t, t]), encoder_hidden_states=torch.cat([neg, pos])).sample
        o_u, o_c = out.chunk(2)
        return o_u + w * (o_c - o_u)

    s = vp_sigmas(alphas)
    return CallableDenoiser(eps, float(s[0]), float(s[-1]), prediction="eps")


@pytest.mark.parametrize("with_lambda", [True, False], ids=["lambda", "base"])
@pytest.mark.parametrize(
    "name, kw", [("ddim", {}), ("dpm_solver_pp", {}), ("unipc", {}), ("heun", {})]
)
def test_stable_diffusion_cfg_equals_dode_sample(sd, name, kw, with_lambda):
    w = 4.0
    alphas = sd[3]
    solver = dode.get_solver(name, **kw)
    grid = karras(4, 0.03, 14.0)
    lam = random_lambdas(solver.nfe(4), seed=2) if with_lambda else None
    sched = vp_scheduler(solver, grid, lam, alphas, "epsilon", guidance_scale=w)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fitted guidance scale: no warning
        out = run_sd(sd, sched, w, noise)
    with torch.no_grad():
        ref = dode.sample(cfg_denoiser(sd, alphas, w), solver, noise, grid, lam)
    assert ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() <= TOL


def test_stable_diffusion_other_guidance_warns(sd):
    alphas = sd[3]
    solver = dode.get_solver("ddim")
    sched = vp_scheduler(solver, karras(3, 0.03, 14.0), None, alphas, "epsilon", guidance_scale=4.0)
    noise = torch.randn(2, 4, 8, 8)
    with pytest.warns(UserWarning, match=r"guidance_scale=7.*fitted at \(4\)"):
        run_sd(sd, sched, 7.0, noise)


# ---- state, save/load, files ---------------------------------------------------------------


def test_pipeline_twice_and_save_load_identical(unet, alphas, tmp_path):
    solver = dode.get_solver("dpm_solver", order=2)
    grid = karras(STEPS, 0.02, 80.0)
    sched = vp_scheduler(solver, grid, random_lambdas(solver.nfe(STEPS)), alphas)
    first, _ = run_ddpm(unet, sched)
    second, _ = run_ddpm(unet, sched)
    assert torch.equal(first, second)
    sched.save_pretrained(tmp_path / "sched")
    loaded = DODEScheduler.from_pretrained(tmp_path / "sched")
    keys = set(sched.config) - {"_use_default_values"}
    assert {k: loaded.config[k] for k in keys} == {k: sched.config[k] for k in keys}
    assert torch.equal(loaded.lambdas, sched.lambdas) and torch.equal(loaded.grid, sched.grid)
    third, _ = run_ddpm(unet, loaded)
    assert torch.equal(first, third)


def fitted_file(tmp_path, alphas, model=None, name="ddim", **kw):
    solver = dode.get_solver(name, **kw)
    grid = karras(STEPS, 0.02, 80.0)
    fs = FittedSolver(
        solver=solver.config(),
        sigmas=grid,
        lambdas=random_lambdas(solver.nfe(STEPS)),
        model=model or {"id": "tiny", "class": "DiffusersDenoiser", "sigma_to_t": "interp"},
    )
    return fs.save(tmp_path / "solver.safetensors"), fs


def test_from_solver_file_and_export(unet, alphas, tmp_path):
    """The three README lines: from the file with the pipeline's scheduler, from the model
    folder the file names, and through ``python -m dode.export``: all the same images."""
    make_tiny_unet(tmp_path / "model", prediction_type="v_prediction")
    model = {"id": str(tmp_path / "model"), "class": "DiffusersDenoiser", "sigma_to_t": "interp"}
    path, fs = fitted_file(tmp_path, alphas, model, name="heun")
    like = diffusers.DDPMScheduler(**scheduler_config("v_prediction"))
    a = DODEScheduler.from_solver_file(path, like=like)
    b = DODEScheduler.from_solver_file(path)  # the schedule from the model's own folder
    assert export_main(["--solver_file", str(path), "--out", str(tmp_path / "exp")]) == 0
    c = DODEScheduler.from_pretrained(tmp_path / "exp")
    outs = [run_ddpm(unet, s)[0] for s in (a, b, c)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    den = DiffusersDenoiser(unet, alphas, prediction_type="v_prediction")
    noise = run_ddpm(unet, a)[1]
    with torch.no_grad():
        ref = fs.sample(den, a.dode_noise(noise))
    assert (outs[0] - ref).abs().max().item() <= TOL
    base = DODEScheduler.from_solver_file(path, like=like, dode=False)
    assert base.lambdas is None


def test_export_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    assert export_main(["--solver_file", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable fitted-solver file" in err[0]
    assert not (tmp_path / "o").exists()


# ---- errors ----------------------------------------------------------------------------------


def test_wrong_step_count(unet, alphas):
    sched = vp_scheduler(dode.get_solver("heun"), karras(STEPS, 0.02, 80.0), None, alphas)
    sched.set_timesteps(STEPS)  # the fitted number of steps
    sched.set_timesteps(sched.nfe)  # or its NFE
    with pytest.raises(ValueError, match=r"num_inference_steps=7 .* 5 steps \(NFE 9\)"):
        sched.set_timesteps(7)
    with pytest.raises(ValueError, match="custom sigmas requested"):
        sched.set_timesteps(sigmas=karras(STEPS, 0.1, 80.0))
    with pytest.raises(ValueError, match="custom timesteps requested"):
        sched.set_timesteps(timesteps=[999, 500, 1])
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=sched)
    with pytest.raises(ValueError, match="num_inference_steps=1000"):
        pipe(batch_size=1)  # DDPMPipeline's default: 1000 steps


def test_wrong_model_family(alphas, tmp_path):
    path, _ = fitted_file(
        tmp_path, alphas, {"id": "gmm-digits", "class": "GaussianMixtureDenoiser"}
    )
    with pytest.raises(ValueError, match="fitted on a GaussianMixtureDenoiser"):
        DODEScheduler.from_solver_file(path)
    sched = vp_scheduler(dode.get_solver("ddim"), karras(STEPS, 0.02, 80.0), None, alphas)
    with pytest.raises(ValueError, match="flow-matching model"):
        sched.set_timesteps(STEPS, mu=0.8)  # what a FLUX pipeline passes
    with pytest.raises(ValueError, match="needs the model's ᾱ table"):
        DODEScheduler(solver={"name": "ddim"}, sigmas=karras(STEPS, 0.02, 80.0).tolist())
    path, _ = fitted_file(tmp_path, alphas, {"id": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="like=pipe.scheduler"):
        DODEScheduler.from_solver_file(path)


def test_corrupt_config(alphas, tmp_path):
    sched = vp_scheduler(dode.get_solver("ddim"), karras(STEPS, 0.02, 80.0), None, alphas)
    sched.save_pretrained(tmp_path / "ok")
    cfg_file = tmp_path / "ok" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "scheduler_config.json").write_text(
        json.dumps({**cfg, "lambdas": [0.0, 0.1]})
    )
    with pytest.raises(ValueError, match="corrupt DODEScheduler config.*need 5 finite λ"):
        DODEScheduler.from_pretrained(tmp_path / "short")
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="no readable DODEScheduler config"):
        DODEScheduler.from_pretrained(tmp_path / "json")
    diffusers.DDIMScheduler().save_pretrained(tmp_path / "ddim")
    with pytest.raises(ValueError, match="holds a DDIMScheduler config, not a DODEScheduler"):
        DODEScheduler.from_pretrained(tmp_path / "ddim")


def test_step_errors(alphas):
    sched = vp_scheduler(dode.get_solver("ddim"), karras(2, 0.02, 80.0), None, alphas)
    sched.set_timesteps(2)
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="timestep"):
        sched.step(x, 3, x)
    with pytest.raises(ValueError, match="eta"):
        sched.step(x, sched.timesteps[0], x, eta=1.0)
    for t in sched.timesteps:
        x = sched.step(torch.zeros_like(x), t, x).prev_sample
    with pytest.raises(ValueError, match="set_timesteps"):
        sched.step(x, sched.timesteps[0], x)


def test_add_noise_and_init_noise_sigma(alphas):
    sched = vp_scheduler(dode.get_solver("ddim"), karras(3, 0.02, 80.0), None, alphas)
    s0 = 80.0
    assert sched.init_noise_sigma == pytest.approx(s0 / math.sqrt(1 + s0**2))
    x0, n = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a0 = 1 / (1 + s0**2)  # ᾱ at σ_0
    out = sched.add_noise(x0, n, sched.timesteps[:1])
    torch.testing.assert_close(out, math.sqrt(a0) * x0 + math.sqrt(1 - a0) * n)


# ---- flow matching: the conversion, on a hand-written FLUX-style loop --------------------------


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_solver_pp"])
def test_flow_family_equals_dode_sample(unet, name):
    """A flow model (the tiny UNet read as v = ε − x0 at t·1000) in the loop a FLUX/SD3
    pipeline runs (latents = noise, no scale_model_input); the reference converts as DESIGN.md
    says: x_t = x/(1+σ), t = σ/(1+σ), x̂0 = x_t − t v."""
    solver = dode.get_solver(name)
    grid = karras(4, 0.05, 30.0)
    lam = random_lambdas(solver.nfe(4), seed=4)
    sched = DODEScheduler(
        solver=solver.config(),
        sigmas=grid.tolist(),
        lambdas=lam.tolist(),
        family="flow",
        prediction_type="flow",
    )
    assert sched.config.use_flow_sigmas is True
    latents = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    sched.set_timesteps(sigmas=None, mu=None)
    x = latents
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample

    def x0(x, sigma):
        t = sigma / (1 + sigma)
        x_t = x / (1 + sigma)
        return x_t - t * unet(x_t, (t.reshape(-1) * 1000).float()).sample

    den = CallableDenoiser(x0, 0.0, 1e3)
    with torch.no_grad():
        ref = dode.sample(den, solver, sched.dode_noise(latents), grid, lam)
    assert ref.abs().max() > 0.1
    assert (x - ref).abs().max().item() <= TOL
