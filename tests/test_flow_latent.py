"""SD3 and FLUX latent flows against their diffusers pipelines (tiny random models, float32).

* SD3: a tiny ``StableDiffusion3Pipeline`` (``SD3Transformer2DModel`` + ``AutoencoderKL`` with
  ``shift_factor``; no text encoders: ``prompt_embeds`` / ``pooled_prompt_embeds`` and their
  negative ones are passed in), ``output_type="latent"``, CFG. dode's Euler after ``start``
  equals ``FlowMatchEulerDiscreteScheduler`` (from t = 1, same latents); DPM-Solver++ and UniPC
  equal ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` with
  ``use_flow_sigmas=True, prediction_type="flow_prediction"`` and the same ``flow_shift``.
  Those two schedulers hand the network ``timesteps`` cast to int64 (the state is at the float
  ``t·T``); the pipeline here runs them with the float ``t·T`` (a subclass that only keeps the
  timesteps float), the time dode evaluates at.
* FLUX: a tiny ``FluxPipeline`` (packed latents, embedded guidance, μ from the image sequence
  length), ``output_type="latent"``, same initial latents: dode's Euler equals
  ``FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)``.

Max abs diff ≤ 1e-4 everywhere.
"""

from __future__ import annotations

import pytest
import torch
from _tiny import float_timesteps, flux_embeds, make_tiny_flux, make_tiny_sd3, sd3_embeds

import dode
from dode.denoisers import FluxDenoiser, GuidedFlowDenoiser, SD3Denoiser
from dode.grids.schedules import flow_sigmas
from dode.solvers import get_solver

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

T = 1000
SHIFT = 3.0


# ---- SD3 ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3")
    pipe = make_tiny_sd3(root, shift=SHIFT)
    den = SD3Denoiser.from_pretrained(str(root))
    emb = sd3_embeds()
    return pipe, den, emb


def _sd3_pipe(pipe, scheduler, emb, latents, n, w):
    pipe.scheduler = scheduler
    with torch.no_grad():
        return pipe(
            **emb,
            latents=latents.clone(),
            height=16,
            width=16,
            num_inference_steps=n,
            guidance_scale=w,
            output_type="latent",
        ).images


def test_sd3_loads(sd3):
    _, den, emb = sd3
    assert den.shift == SHIFT and den.sample_shape == (4, 8, 8) and den.has_unconditional
    assert den.vae is not None and not den.text_encoders
    bound = den.bind(emb, guidance_scale=5.0)
    assert isinstance(bound, GuidedFlowDenoiser) and bound.uncond is not None
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        den.bind({k: emb[k] for k in ("prompt_embeds", "pooled_prompt_embeds")}, guidance_scale=5)
    with pytest.raises(ValueError, match="no text encoders"):
        den.bind(["a cube"] * 3, guidance_scale=5.0)
    with pytest.raises(ValueError, match="bind"):
        den.x0(torch.randn(3, 4, 8, 8), 1.0)
    images = den.decode(torch.zeros(2, 4, 8, 8))
    assert images.shape == (2, 3, 16, 16)


@pytest.mark.parametrize("w", [1.0, 5.0])
@pytest.mark.parametrize("n", [4, 7])
def test_sd3_euler_parity(sd3, n, w):
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe, den, emb = sd3
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(n))
    ref = _sd3_pipe(pipe, FlowMatchEulerDiscreteScheduler(shift=SHIFT), emb, latents, n, w)
    bound = den.bind(emb, guidance_scale=w)
    with torch.no_grad():
        noise, grid = bound.start(latents, flow_sigmas(n, shift=den.shift))
        out = dode.sample(bound, "euler", noise, grid)
    assert out.abs().max() > 0.1
    assert (out - ref).abs().max() <= 1e-4


@pytest.mark.parametrize(
    "name,order,sched",
    [("dpm_solver_pp", 2, "dpm"), ("dpm_solver_pp", 3, "dpm"), ("unipc", 2, "unipc")],
)
def test_sd3_multistep_parity(sd3, name, order, sched):
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    pipe, den, emb = sd3
    n, w = 6, 4.0
    cls = float_timesteps(
        DPMSolverMultistepScheduler if sched == "dpm" else UniPCMultistepScheduler
    )
    scheduler = cls(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=SHIFT,
        solver_order=order,
    )
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(11))
    ref = _sd3_pipe(pipe, scheduler, emb, latents, n, w)
    bound = den.bind(emb, guidance_scale=w)
    spacing = "dpm_solver" if sched == "dpm" else "unipc"
    with torch.no_grad():
        noise, grid = bound.start(latents, flow_sigmas(n, shift=SHIFT, spacing=spacing))
        out = dode.sample(bound, get_solver(name, order=order), noise, grid)
    assert out.abs().max() > 0.1
    assert (out - ref).abs().max() <= 1e-4


# ---- FLUX -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    pipe = make_tiny_flux(root)
    den = FluxDenoiser.from_pretrained(str(root), image_size=(16, 24))
    emb = flux_embeds()
    return pipe, den, emb


def test_flux_loads_and_packs(flux):
    _, den, emb = flux
    assert den.sample_shape == (4, 8, 12) and den.image_seq_len == 4 * 6
    assert den.guidance_embeds and not den.has_unconditional
    x = torch.randn(2, 4, 8, 12)
    assert torch.equal(den.unpack(den.pack(x)), x)
    with pytest.raises(ValueError, match="guidance-distilled"):
        den.bind(emb, negative_prompt=emb)
    with pytest.raises(ValueError, match=r"guidance-distilled.*bind\(cond, guidance=3.5\)"):
        den.bind(emb, guidance_scale=3.5)
    b1, b2 = den.bind(emb, guidance=1.0), den.bind(emb)  # default: den.guidance = 3.5
    assert b2.embedded_guidance == den.guidance == 3.5
    with torch.no_grad():
        assert (b1.x0(x, 2.0) - b2.x0(x, 2.0)).abs().max() > 1e-4  # guidance is an input


@pytest.mark.parametrize("n", [3, 6])
@pytest.mark.parametrize("g", [1.0, 3.5])
def test_flux_euler_parity(flux, n, g):
    pipe, den, emb = flux
    latents = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        ref = pipe(
            **emb,
            latents=den.pack(latents),
            height=16,
            width=24,
            num_inference_steps=n,
            guidance_scale=g,
            output_type="latent",
        ).images
    ref = den.unpack(ref)
    bound = den.bind(emb, guidance=g)
    with torch.no_grad():
        noise, grid = bound.start(latents, flow_sigmas(n, mu=den.mu, spacing="flux"))
        out = dode.sample(bound, "euler", noise, grid)
    assert out.abs().max() > 0.1
    assert (out - ref).abs().max() <= 1e-4


def test_flux_mu_is_the_default_flow_grid(flux):
    from dode.grids.schedules import grid_for_model

    _, den, emb = flux
    s = grid_for_model(den.bind(emb), "flow", 5)
    assert torch.allclose(s, flow_sigmas(5, mu=den.mu, spacing="dpm_solver"))


def test_a_slice_of_a_bound_flux_keeps_every_attribute(flux):
    """Slicing a bound FLUX (a GuidedFlowDenoiser wrapping the model) keeps what was set on it
    after it was made (its embedded guidance, anything else), and each slice computes the rows
    of the whole bound model."""
    _, den, emb = flux
    bound = den.bind(emb, guidance=2.0)
    bound.note = "kept"
    parts = [bound[0], bound[1:], bound[[1]], *bound.split(1)]
    for part in parts:
        assert isinstance(part, GuidedFlowDenoiser) and part.model is den
        assert part.embedded_guidance == 2.0 and part.note == "kept"
        assert len(part) == 1
    x = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = bound.x0(x, 1.5)
        rows = torch.cat([bound[0].x0(x[:1], 1.5), bound[1].x0(x[1:], 1.5)])
    assert torch.allclose(rows, whole, atol=1e-6)
    assert not hasattr(den.bind(emb), "note")  # a new binding starts afresh
