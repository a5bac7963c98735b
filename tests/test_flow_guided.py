"""Class-conditional flow UNet2DModels through the guidance seam (``den.bind``).

A flow ``UNet2DModel`` with ``num_class_embeds = 11`` and ``num_classes = 10`` has the null label
10: ``den.bind(labels, guidance_scale=w)`` runs classifier-free guidance on the velocity from one
forward of 2B. Parity (float32, max abs diff ≤ 1e-4) with a hand-written diffusers loop:
``FlowMatchEulerDiscreteScheduler`` from t = 1 on the same latents, the UNet called on
``[null labels; labels]`` and ``v = v_u + w (v_c − v_u)``.
"""

from __future__ import annotations

import pytest
import torch
from _tiny import make_tiny_unet
from test_flow import T

import dode
from dode.denoisers import DiffusersFlowDenoiser, GuidedFlowDenoiser, flow_start
from dode.grids.schedules import flow_sigmas

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

NULL = 10


@pytest.fixture(scope="module")
def cfg_flow(tmp_path_factory):
    from diffusers import FlowMatchEulerDiscreteScheduler

    root = tmp_path_factory.mktemp("flow_cfg")
    unet = make_tiny_unet(num_class_embeds=11, seed=3)
    unet.save_pretrained(root / "unet")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(root / "scheduler")
    return unet, DiffusersFlowDenoiser.from_pretrained(str(root), num_classes=10)


def _cfg_loop(unet, scheduler, latents, labels, w, n, **set_kw):
    scheduler.set_timesteps(n, **set_kw)
    x = latents.clone()
    both = torch.cat([torch.full_like(labels, NULL), labels])
    with torch.no_grad():
        for i in range(len(scheduler.sigmas) - 1):
            t = scheduler.sigmas[i] * T
            v_u, v_c = unet(
                torch.cat([x, x]), t.expand(2 * len(x)), class_labels=both
            ).sample.chunk(2)
            v = v_u + w * (v_c - v_u)
            x = scheduler.step(v, scheduler.timesteps[i], x).prev_sample
    return x


def test_bind_gives_a_guided_flow(cfg_flow):
    _, den = cfg_flow
    assert den.conditional and den.has_unconditional and den.null_label == NULL
    labels = torch.tensor([0, 3, 5, 9])
    bound = den.bind(labels, guidance_scale=2.0)
    assert isinstance(bound, GuidedFlowDenoiser) and bound.prediction == "x0"
    assert all(isinstance(b, GuidedFlowDenoiser) for b in bound.split(3))
    x = 5 * torch.randn(4, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        x0, eps = bound.x0(x, 2.0), bound.eps(x, 2.0)
        # ε̂ is computed from v directly; it must agree with (x − x̂0)/σ
        assert torch.allclose(eps, (x - x0) / 2.0, atol=1e-5)
        # w = 0 is the unconditional model: the null label alone
        u = den.bind(labels, guidance_scale=0.0).x0(x, 2.0)
        assert torch.allclose(u, den.set_class_labels(NULL).x0(x, 2.0), atol=1e-5)
        den.set_class_labels(None)
        assert (u - x0).abs().max() > 1e-3  # guidance matters
    with pytest.raises(ValueError, match="bind"):
        den.x0(x, 2.0)
    with pytest.raises(ValueError, match="out of range"):
        den.bind(torch.tensor([10]), guidance_scale=2.0)


def test_no_null_label_no_guidance(tmp_path):
    den = DiffusersFlowDenoiser(make_tiny_unet(num_class_embeds=10))
    assert den.conditional and not den.has_unconditional
    den.bind([1, 2])  # w = 1: fine
    with pytest.raises(ValueError, match="no unconditional input"):
        den.bind([1, 2], guidance_scale=3.0)


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("w", [1.0, 4.0])
def test_cfg_euler_parity_flow_match_euler(cfg_flow, n, w):
    from diffusers import FlowMatchEulerDiscreteScheduler

    unet, den = cfg_flow
    latents = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    labels = torch.tensor([1, 2, 7, 7])
    ref = _cfg_loop(unet, FlowMatchEulerDiscreteScheduler(shift=3.0), latents, labels, w, n)
    bound = den.bind(labels, guidance_scale=w)
    with torch.no_grad():
        noise, grid = flow_start(bound, latents, flow_sigmas(n, shift=den.shift))
        out = dode.sample(bound, "euler", noise, grid)
    assert out.abs().max() > 0.1
    assert (out - ref).abs().max() <= 1e-4


def test_cfg_dpm_solver_pp_parity(cfg_flow):
    from diffusers import DPMSolverMultistepScheduler

    unet, den = cfg_flow
    cfg = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}
    latents = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    labels = torch.tensor([0, 0, 6, 9])
    ref = _cfg_loop(unet, DPMSolverMultistepScheduler(**cfg), latents, labels, 3.0, 6)
    bound = den.bind(labels, guidance_scale=3.0)
    with torch.no_grad():
        noise, grid = bound.start(latents, flow_sigmas(6, 3.0, spacing="dpm_solver"))
        out = dode.sample(bound, "dpm_solver_pp", noise, grid)
    assert (out - ref).abs().max() <= 1e-4


# ---- the bundled digits-flow model and the named "flow" schedule ---------------------------------


def test_digits_flow_registered():
    from dode.denoisers.loading import load_denoiser
    from dode.grids.schedules import grid_for_model

    den = load_denoiser("digits-flow")
    assert isinstance(den, DiffusersFlowDenoiser) and den.model_id == "digits-flow"
    assert den.num_classes == 10 and den.null_label == NULL and den.sample_shape == (1, 8, 8)
    bound = den.bind(torch.arange(10), guidance_scale=2.0)
    s = grid_for_model(bound, "flow", 5)
    assert torch.allclose(s, flow_sigmas(5, den.shift, spacing="dpm_solver"))
    noise = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = dode.sample(bound, "dpm_solver_pp", noise, s)
    assert torch.isfinite(x).all() and x.abs().max() < 3


def test_flow_schedule_bad_input(cfg_flow):
    from dode.denoisers import gaussian
    from dode.grids.schedules import grid_for_model

    _, den = cfg_flow
    with pytest.raises(ValueError, match="starts at t = 1"):
        grid_for_model(den, "flow", 4, {"spacing": "euler"})
    with pytest.raises(ValueError, match="rectified-flow grid"):
        grid_for_model(gaussian(torch.zeros(2), torch.eye(2)), "flow", 4)
    # the model's shift is the default; an explicit one wins
    assert torch.allclose(grid_for_model(den, "flow", 4), flow_sigmas(4, 3.0, spacing="dpm_solver"))
    assert torch.allclose(
        grid_for_model(den, "flow", 4, {"shift": 1.0, "spacing": "unipc"}),
        flow_sigmas(4, 1.0, spacing="unipc"),
    )
