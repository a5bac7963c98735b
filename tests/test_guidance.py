"""Conditioning and classifier-free guidance on a tiny class-conditional ``UNet2DModel``.

Parity: dode's DDIM, DPM-Solver++(2M) and UniPC on a bound denoiser give the samples of the
diffusers scheduler loop with CFG written out here (one forward of 2B, unconditional rows first,
``o = o_u + w (o_c − o_u)`` in the model's native prediction), from the same initial noise:
diffusers starts at ``x_vp = noise`` and dode at ``x = x_vp · sqrt(1 + σ_0²)`` on the σ of the
scheduler's integer timesteps (see tests/test_diffusers_parity.py).
"""

from __future__ import annotations

import math

import diffusers
import pytest
import torch
from _tiny import make_tiny_unet, scheduler_config
from torch import nn

import dode
from dode.denoisers import (
    Conditioning,
    DiffusersDenoiser,
    GuidedDenoiser,
    rescale_noise_cfg,
)
from dode.grids.schedules import vp_sigmas
from dode.solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-4
NUM_CLASSES = 3  # labels 0..2; index 3 is the null label
BETAS = {k: v for k, v in scheduler_config().items() if k.startswith("beta")}


class Counter(nn.Module):
    """Wraps the UNet and records the batch size of every forward."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.config = unet.config
        self.batches: list[int] = []

    def forward(self, x, t, **kw):
        self.batches.append(x.shape[0])
        return self.unet(x, t, **kw)


@pytest.fixture(scope="module")
def unet():
    return make_tiny_unet(seed=3, num_class_embeds=NUM_CLASSES + 1)


@pytest.fixture(scope="module")
def labels():
    return torch.tensor([0, 2, 1, 2])


@pytest.fixture(scope="module")
def noise():
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))


def make_den(unet, sched, mode="snap", num_classes=NUM_CLASSES):
    return DiffusersDenoiser(
        unet,
        sched.alphas_cumprod,
        prediction_type=sched.config.prediction_type,
        sigma_to_t=mode,
        num_classes=num_classes,
    )


def diffusers_cfg_loop(sched, unet, noise, labels, steps, w, rescale=0.0):
    """diffusers' sampling loop with CFG, as its pipelines write it."""
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    null = torch.full_like(labels, NUM_CLASSES)
    with torch.no_grad():
        for t in sched.timesteps:
            x_in = sched.scale_model_input(torch.cat([x, x]), t)
            out = unet(x_in, t, class_labels=torch.cat([null, labels])).sample
            out_u, out_c = out.chunk(2)
            out = out_u + w * (out_c - out_u)
            if rescale > 0:
                out = rescale_noise_cfg(out, out_c, rescale)
            x = sched.step(out, t, x).prev_sample
    return x


def vp_grid(sched) -> torch.Tensor:
    table = vp_sigmas(sched.alphas_cumprod)
    return torch.cat([table[torch.as_tensor(sched.timesteps).long()], torch.zeros(1).double()])


def dode_run(bound, solver, sched, noise, lambdas=None):
    """dode from the same start as diffusers; returns x_vp at σ = 0 (= x)."""
    sigmas = vp_grid(sched)
    s0 = sigmas[0].item()
    with torch.no_grad():
        return dode.sample(bound, solver, noise * math.sqrt(1 + s0**2) / s0, sigmas, lambdas)


CASES = [
    ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}, "ddim", {}),
    ("DPMSolverMultistepScheduler", {"solver_order": 2}, "dpm_solver_pp", {"order": 2}),
    ("UniPCMultistepScheduler", {"solver_order": 2}, "unipc", {"order": 2}),
]


@pytest.mark.parametrize("cls, kw, name, solver_kw", CASES)
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_class_cfg_parity(unet, noise, labels, cls, kw, name, solver_kw, prediction_type):
    """Class-conditional UNet2DModel with CFG (w = 3): dode = the diffusers loop."""
    betas = BETAS if prediction_type == "v_prediction" else {**BETAS, "beta_end": 0.005}
    sched = getattr(diffusers, cls)(**betas, prediction_type=prediction_type, **kw)
    steps = 5
    ref = diffusers_cfg_loop(sched, unet, noise, labels, steps, w=3.0)
    sched.set_timesteps(steps)
    bound = make_den(unet, sched).bind(labels, guidance_scale=3.0)
    out = dode_run(bound, get_solver(name, **solver_kw), sched, noise)
    assert torch.isfinite(ref).all() and ref.abs().max() > 0.1
    assert (out - ref).abs().max().item() <= TOL


def test_guidance_rescale_parity(unet, noise, labels):
    """guidance_rescale = 0.7 matches diffusers' rescale_noise_cfg in the loop (v-prediction:
    the rescale acts on v, the native output, not on ε)."""
    sched = diffusers.DDIMScheduler(
        **BETAS, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=True
    )
    ref = diffusers_cfg_loop(sched, unet, noise, labels, 4, w=4.0, rescale=0.7)
    plain = diffusers_cfg_loop(sched, unet, noise, labels, 4, w=4.0)
    sched.set_timesteps(4)
    bound = make_den(unet, sched).bind(labels, guidance_scale=4.0, guidance_rescale=0.7)
    out = dode_run(bound, "ddim", sched, noise)
    assert (ref - plain).abs().max() > 1e-3  # the rescale matters here
    assert (out - ref).abs().max().item() <= TOL


def test_one_forward_per_call(unet, noise, labels):
    """w = 1: one forward of B (no unconditional pass); w ≠ 1: one forward of 2B."""
    sched = diffusers.DDPMScheduler(**BETAS, prediction_type="v_prediction")
    rec = Counter(unet)
    den = make_den(rec, sched, mode="interp")
    sigmas = dode.grids.schedules.karras(4, den.sigma_min, den.sigma_max)
    with torch.no_grad():
        a = dode.sample(den.bind(labels, guidance_scale=1.0), "ddim", noise, sigmas)
        assert rec.batches == [4] * 4
        rec.batches.clear()
        b = dode.sample(den.bind(labels, guidance_scale=2.0), "ddim", noise, sigmas)
        assert rec.batches == [8] * 4
    assert (a - b).abs().max() > 1e-3


def test_guidance_equals_manual_combination(unet, noise, labels):
    """The bound output is o_u + w (o_c − o_u) of the conditional and null-label outputs, in
    every prediction dode can consume (x0 and ε), for w = 0 (unconditional), 1 and 2.5."""
    sched = diffusers.DDPMScheduler(**BETAS, prediction_type="v_prediction")
    den = make_den(unet, sched, mode="interp")
    null = torch.full_like(labels, NUM_CLASSES)
    x = noise * 3.0
    sigma = torch.tensor([3.0, 0.5, 10.0, 1.0], dtype=torch.float32)
    with torch.no_grad():
        out_c = den.bind(labels).x0(x, sigma)
        out_u = GuidedDenoiser(den, Conditioning({"class_labels": null}), None).x0(x, sigma)
        for w in (0.0, 1.0, 2.5):
            got = den.bind(labels, guidance_scale=w).x0(x, sigma)
            assert torch.allclose(got, out_u + w * (out_c - out_u), atol=1e-5)
            eps = den.bind(labels, guidance_scale=w).eps(x, sigma)
            assert torch.allclose(eps, (x - got) / sigma.reshape(-1, 1, 1, 1), atol=1e-5)


def test_conditioning_follows_the_batch(unet, noise, labels):
    """Row i conditions sample i: slices of the bound denoiser with slices of the noise give
    the rows of the whole batch; one label broadcasts; a mismatched batch is an error."""
    sched = diffusers.DDPMScheduler(**BETAS, prediction_type="v_prediction")
    den = make_den(unet, sched, mode="interp")
    sigmas = dode.grids.schedules.karras(3, den.sigma_min, den.sigma_max)
    bound = den.bind(labels, guidance_scale=2.0)
    assert len(bound) == 4 and len(bound[1:3]) == 2 and len(bound[[3, 0]]) == 2
    with torch.no_grad():
        whole = dode.sample(bound, "ddim", noise, sigmas)
        parts = torch.cat(
            [dode.sample(b, "ddim", n, sigmas) for b, n in zip(bound.split(3), noise.split(3))]
        )
        one = dode.sample(bound[1], "ddim", noise[1:2], sigmas)
        broadcast = dode.sample(den.bind([2], guidance_scale=2.0), "ddim", noise, sigmas)
        (batched,) = dode.sample_many(bound, "ddim", noise, sigmas, [None], batch_size=3)
    assert torch.allclose(parts, whole, atol=1e-5)
    assert torch.allclose(batched, whole, atol=1e-5)  # sample_many slices the bound rows
    assert torch.allclose(one, whole[1:2], atol=1e-5)
    assert torch.allclose(broadcast[[1, 3]], whole[[1, 3]], atol=1e-5)  # label 2 both
    assert (broadcast[0] - whole[0]).abs().max() > 1e-3  # label 0 → 2 changes the sample
    with pytest.raises(
        ValueError, match="bound to 4 conditionings but was called with a batch of 2"
    ):
        dode.sample(bound, "ddim", noise[:2], sigmas)


def test_zero_lambdas_and_fit_with_guidance(unet, labels):
    """λ = 0 on a bound denoiser equals the base solver bit for bit; λ fitted by
    dode.fit_lambdas on a bound denoiser (w = 2) lower the error to the teacher on held-out
    noise with other labels."""
    sched = diffusers.DDPMScheduler(**BETAS, prediction_type="v_prediction")
    den = make_den(unet, sched, mode="interp")
    sigmas = dode.grids.schedules.karras(5, 0.5, 80.0)
    gen = torch.Generator().manual_seed(11)
    fit_noise = torch.randn(16, 3, 8, 8, generator=gen)
    test_noise = torch.randn(16, 3, 8, 8, generator=gen)
    fit_labels = torch.arange(16) % NUM_CLASSES
    test_labels = torch.randint(0, NUM_CLASSES, (16,), generator=gen)
    solver = get_solver("dpm_solver_pp", order=2)
    fit_bound = den.bind(fit_labels, guidance_scale=2.0)
    test_bound = den.bind(test_labels, guidance_scale=2.0)
    with torch.no_grad():
        base = dode.sample(test_bound, solver, test_noise, sigmas)
        zero = dode.sample(test_bound, solver, test_noise, sigmas, torch.zeros(solver.nfe(5)))
        assert torch.equal(base, zero)
        lam = dode.fit_lambdas(fit_bound, solver, fit_noise, sigmas)
        teacher_grid = dode.grids.schedules.refine(torch.as_tensor(sigmas), 10)
        teacher = dode.sample(test_bound, solver, test_noise, teacher_grid)
        fitted = dode.sample(test_bound, solver, test_noise, sigmas, lam)
    err_base = (base - teacher).pow(2).mean().item()
    err_fit = (fitted - teacher).pow(2).mean().item()
    assert lam.abs().max() > 0
    assert err_fit < 0.7 * err_base, (err_fit, err_base)


def test_bad_conditioning(unet, labels):
    """One clear error each: a prompt for an unconditional model, a label out of range,
    guidance > 1 without an unconditional input, a prompt for a class-conditional model."""
    sched = diffusers.DDPMScheduler(**BETAS)
    plain = DiffusersDenoiser(make_tiny_unet(seed=0), sched.alphas_cumprod)
    assert plain.bind() is plain
    with pytest.raises(ValueError, match="a prompt was given for an unconditional model"):
        plain.bind(["a cat"])
    with pytest.raises(ValueError, match="unconditional; use guidance_scale=1"):
        plain.bind(guidance_scale=3.0)
    den = make_den(unet, sched)
    with pytest.raises(ValueError, match="class label 3 is out of range: the model has 3"):
        den.bind([0, 3], guidance_scale=2.0)
    with pytest.raises(ValueError, match="class label -1 is out of range"):
        den.bind([-1])
    with pytest.raises(ValueError, match="a prompt was given for a class-conditional model"):
        den.bind(["a cat"])
    with pytest.raises(ValueError, match="bind the batch's conditioning first"):
        den.x0(torch.zeros(1, 3, 8, 8), 1.0)
    no_null = make_den(unet, sched, num_classes=None)  # all 4 embeddings are real classes
    assert no_null.num_classes == 4 and no_null.null_label is None
    no_null.bind([3], guidance_scale=1.0)  # fine without guidance
    with pytest.raises(ValueError, match="has no unconditional input"):
        no_null.bind([0], guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_rescale must lie in"):
        den.bind(labels, guidance_scale=2.0, guidance_rescale=2.0)
    with pytest.raises(ValueError, match="num_classes must be num_class_embeds"):
        make_den(unet, sched, num_classes=1)


def test_class_conditional_from_pretrained(tmp_path, unet, labels):
    """A saved class-conditional model loads with its null label (num_classes)."""
    unet.save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler(**BETAS).save_pretrained(tmp_path / "scheduler")
    den = DiffusersDenoiser.from_pretrained(tmp_path, num_classes=NUM_CLASSES)
    assert den.conditional and den.null_label == NUM_CLASSES and den.has_unconditional
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        a = den.bind(labels, guidance_scale=2.0).x0(x, 2.0)
        b = make_den(unet, diffusers.DDPMScheduler(**BETAS), mode="interp")
        b = b.bind(labels, guidance_scale=2.0).x0(x, 2.0)
    assert torch.equal(a, b)
