"""Stable Diffusion and SDXL: dode against the diffusers pipelines on tiny random components.

A tiny ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` (tests/_tiny.py) is saved
with ``save_pretrained`` and loaded by dode from that folder. The pipeline samples with CFG and
``output_type="latent"`` from given initial latents; dode samples the bound
:class:`~dode.denoisers.LatentDiffusionDenoiser` with the matching solver on the σ of the
scheduler's timesteps. Initial noise: the pipeline starts at ``x_vp = latents`` (its
``init_noise_sigma`` is 1), dode at ``noise · σ_0`` in σ-space, so dode gets
``noise = latents · sqrt(1 + σ_0²) / σ_0``; at σ = 0 both variables coincide.
"""

from __future__ import annotations

import math

import diffusers
import pytest
import torch
import transformers  # noqa: F401, E402
from _tiny import make_tiny_sd

import dode
from dode.denoisers import Conditioning, LatentDiffusionDenoiser
from dode.grids.schedules import vp_sigmas
from dode.solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4
PROMPTS = ["a red cube", "a small dog on grass"]
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {"set_alpha_to_one": True}, "ddim", {}),
    "dpm": ("DPMSolverMultistepScheduler", {"solver_order": 2}, "dpm_solver_pp", {"order": 2}),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2}, "unipc", {"order": 2}),
}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """name → (pipeline, folder) for SD (ε), SD 2.x-style v-prediction and SDXL."""
    out = {}
    for name, kw in {
        "sd": {},
        "sd-v": {"prediction_type": "v_prediction"},
        "sdxl": {"xl": True},
    }.items():
        folder = tmp_path_factory.mktemp(name)
        out[name] = (make_tiny_sd(folder, seed=1, **kw), folder)
    return out


def latents0(seed=7):
    return torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def run_pipeline(pipe, key, latents, steps, w, **kw):
    cls, sched_kw, _, _ = SCHEDULERS[key]
    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config, **sched_kw)
    with torch.no_grad():
        out = pipe(
            prompt=PROMPTS,
            num_inference_steps=steps,
            guidance_scale=w,
            latents=latents.clone(),
            output_type="latent",
            height=16,
            width=16,
            **kw,
        ).images
    return out, pipe.scheduler


def run_dode(den, sched, key, latents, w, **bind_kw):
    _, _, name, solver_kw = SCHEDULERS[key]
    table = vp_sigmas(sched.alphas_cumprod)
    sigmas = torch.cat([table[torch.as_tensor(sched.timesteps).long()], torch.zeros(1).double()])
    s0 = sigmas[0].item()
    bound = den.bind(PROMPTS, guidance_scale=w, **bind_kw)
    noise = latents * math.sqrt(1 + s0**2) / s0
    with torch.no_grad():
        return dode.sample(bound, get_solver(name, **solver_kw), noise, sigmas)


@pytest.mark.parametrize(
    "model, key, steps, w, extra",
    [
        ("sd", "ddim", 5, 5.0, {}),
        ("sd", "dpm", 5, 5.0, {}),
        ("sd", "unipc", 5, 5.0, {}),
        ("sd", "ddim", 4, 7.5, {"negative_prompt": ["blurry"] * 2, "guidance_rescale": 0.5}),
        ("sd-v", "dpm", 5, 5.0, {}),
        ("sdxl", "ddim", 5, 5.0, {}),
        ("sdxl", "dpm", 5, 5.0, {}),
        ("sdxl", "unipc", 5, 5.0, {}),
        ("sdxl", "dpm", 4, 5.0, {"negative_prompt": ["ugly", "dark"]}),
        ("sd", "dpm", 4, 1.0, {}),
    ],
)
def test_pipeline_parity(pipes, model, key, steps, w, extra):
    """dode's DDIM / DPM-Solver++(2M) / UniPC with CFG on the loaded folder give the
    pipeline's latents (same initial latents, prompts, negative prompts, guidance scale and
    rescale); SD with ε and v prediction, SDXL with its pooled embeddings and size ids."""
    pipe, folder = pipes[model]
    latents = latents0()
    ref, sched = run_pipeline(pipe, key, latents, steps, w, **extra)
    den = LatentDiffusionDenoiser.from_pretrained(folder, sigma_to_t="snap")
    assert den.xl == (model == "sdxl") and den.sample_shape == (4, 8, 8)
    out = run_dode(den, sched, key, latents, w, **extra)
    assert torch.isfinite(ref).all() and ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() <= TOL


def test_decode_matches_pipeline(pipes):
    """decode() (scaling factor, batched) gives the pipeline's decoded image in [−1, 1]."""
    pipe, folder = pipes["sd"]
    latents = latents0(3)
    den = LatentDiffusionDenoiser.from_pretrained(folder)
    with torch.no_grad():
        ref = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    out = den.decode(latents, batch_size=1)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32
    assert (out - ref).abs().max().item() <= 1e-5
    assert out.min() >= -1 and out.max() <= 1
    with pytest.raises(ValueError, match="decode takes latents"):
        den.decode(torch.zeros(1, 3, 16, 16))


def test_prompts_encoded_once(pipes):
    """Each distinct prompt is encoded once: repeated prompts and later batches hit the cache;
    the rows equal a fresh encoding."""
    _, folder = pipes["sd"]
    den = LatentDiffusionDenoiser.from_pretrained(folder)
    rows: list[int] = []
    den.text_encoders[0].register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    c, u = den.encode_prompts(["a", "b", "a"], negative_prompt="n")
    assert rows == [2, 1]  # "a", "b"; then the negative "n"
    c2, _ = den.encode_prompts(["b", "a"], negative_prompt="n")
    assert rows == [2, 1]
    den.bind(["a", "b"], guidance_scale=3.0)  # only the default negative "" is new
    den.bind(["b", "b", "a"], guidance_scale=5.0)
    assert rows == [2, 1, 1]
    h, h2 = c.kwargs["encoder_hidden_states"], c2.kwargs["encoder_hidden_states"]
    assert torch.equal(h[0], h[2]) and torch.equal(h[1], h2[0]) and len(u) == 3
    assert not torch.equal(h[0], h[1])


def test_sdxl_conditioning_rows(pipes):
    """SDXL rows: pooled embeddings and size ids per sample, zeros for the unconditional rows
    without a negative prompt (force_zeros_for_empty_prompt); slicing keeps all three."""
    _, folder = pipes["sdxl"]
    den = LatentDiffusionDenoiser.from_pretrained(folder)
    bound = den.bind(PROMPTS, guidance_scale=5.0)
    added = bound.cond.kwargs["added_cond_kwargs"]
    assert added["text_embeds"].shape == (2, 32)
    assert added["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    assert bound.cond.kwargs["encoder_hidden_states"].shape == (2, 77, 64)
    assert bound.uncond.kwargs["encoder_hidden_states"].abs().max() == 0
    one = bound[1]
    assert torch.equal(
        one.cond.kwargs["added_cond_kwargs"]["text_embeds"][0], added["text_embeds"][1]
    )


def test_model_dtype(pipes):
    """model_dtype=bfloat16: the networks run in bfloat16, the solver integrates in float32;
    the latents stay close to the float32 model's."""
    _, folder = pipes["sd"]
    den32 = LatentDiffusionDenoiser.from_pretrained(folder)
    den16 = LatentDiffusionDenoiser.from_pretrained(folder, model_dtype=torch.bfloat16)
    assert next(den16.unet.parameters()).dtype == torch.bfloat16
    sigmas = dode.grids.schedules.karras(4, 0.1, 10.0)
    noise = latents0(2)
    with torch.no_grad():
        a = dode.sample(den32.bind(PROMPTS, guidance_scale=3.0), "dpm_solver_pp", noise, sigmas)
        b = dode.sample(den16.bind(PROMPTS, guidance_scale=3.0), "dpm_solver_pp", noise, sigmas)
    assert b.dtype == torch.float32 and torch.isfinite(b).all()
    assert 0 < (a - b).abs().max() < 0.1 * a.abs().max()


def test_latent_bad_input(pipes):
    """Class labels for a text model, mismatched negative prompts, ready Conditioning with
    guidance but no unconditional rows, an unbound call: one clear error each."""
    _, folder = pipes["sd"]
    den = LatentDiffusionDenoiser.from_pretrained(folder)
    with pytest.raises(ValueError, match="takes prompts"):
        den.bind([0, 1], guidance_scale=2.0)
    with pytest.raises(ValueError, match="3 negative prompts for 2 prompts"):
        den.bind(PROMPTS, guidance_scale=2.0, negative_prompt=["a", "b", "c"])
    c, _ = den.encode_prompts(PROMPTS)
    assert isinstance(c, Conditioning)
    with pytest.raises(ValueError, match="pass the unconditional rows as a Conditioning"):
        den.bind(c, guidance_scale=2.0)
    with pytest.raises(ValueError, match="bind the batch's conditioning first"):
        den.x0(torch.zeros(1, 4, 8, 8), 1.0)
    with pytest.raises(ValueError, match="is not a diffusers pipeline"):
        LatentDiffusionDenoiser.from_pretrained(folder / "unet")
