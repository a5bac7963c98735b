"""``DODEScheduler`` used carelessly (issue 19, items 6, 9 and 11; docs/reliability.md, round two).

Each case failed silently before: DDIMPipeline turned the scheduler into a DDIMScheduler (the
fitted solver gone), ``step()`` broadcast a changed batch and skipped per-sample timesteps, and
a solver file fitted on a class-conditional model (or on other weights) ran in any pipeline.
The references are diffusers' own pipelines and :func:`dode.sample` on the same tiny UNet.
"""

from __future__ import annotations

import diffusers
import pytest
import torch
from _tiny import make_tiny_unet, scheduler_config, tiny_alphas_cumprod

import dode
from dode.denoisers import DiffusersDenoiser
from dode.files.solver_file import FittedSolver
from dode.files.weights import weights_hash
from dode.grids.schedules import karras
from dode.hosts.diffusers import DODEScheduler  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.usefixtures("one_thread"),
]

STEPS = 3


@pytest.fixture(scope="module")
def tiny():
    """The tiny UNet (seed 0) and its DDPM ᾱ table."""
    return make_tiny_unet(seed=0), tiny_alphas_cumprod()


def solver_file(tmp_path, model: dict, name: str = "ddim"):
    solver = dode.get_solver(name)
    lam = torch.tensor([0.0, 0.25, -0.2], dtype=torch.float64)
    fs = FittedSolver(
        solver=solver.config(), sigmas=karras(STEPS, 0.05, 60.0), lambdas=lam, model=model
    )
    return fs.save(tmp_path / "solver.safetensors"), fs


def ddpm_pipe(unet, cls="DDPMPipeline"):
    pipe = getattr(diffusers, cls)(
        unet=unet, scheduler=diffusers.DDPMScheduler(**scheduler_config())
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, seed=3, batch=2):
    gen = torch.Generator().manual_seed(seed)
    out = pipe(
        batch_size=batch,
        generator=gen,
        num_inference_steps=pipe.scheduler.num_steps,
        output_type="np",
    )
    return out.images


# ---- item 6: DDIMPipeline must not silently replace the fitted solver ------------------------


def test_ddim_pipeline_refuses_to_rebuild_the_scheduler_and_the_working_form_runs(tiny, tmp_path):
    unet, alphas = tiny
    path, fs = solver_file(tmp_path, {"id": "tiny", "class": "DiffusersDenoiser"})
    like = diffusers.DDPMScheduler(**scheduler_config())
    sched = DODEScheduler.from_solver_file(path, like=like)
    with pytest.raises(NotImplementedError, match="cannot be rebuilt as another scheduler"):
        diffusers.DDIMPipeline(unet=unet, scheduler=sched)
    with pytest.raises(NotImplementedError, match=r"pipe\.scheduler = DODEScheduler"):
        diffusers.DDIMScheduler.from_config(sched.config)
    # the guard survives save/load, and the scheduler still rebuilds itself from its config
    sched.save_pretrained(tmp_path / "sched")
    loaded = DODEScheduler.from_pretrained(tmp_path / "sched")
    assert torch.equal(loaded.lambdas, sched.lambdas)
    assert DODEScheduler.from_config(loaded.config).nfe == sched.nfe
    with pytest.raises(NotImplementedError, match="cannot be rebuilt"):
        diffusers.DDIMScheduler.from_config(loaded.config)
    # the documented form: build the pipeline first, then assign the scheduler
    pipe = ddpm_pipe(unet, "DDIMPipeline")
    pipe.scheduler = DODEScheduler.from_solver_file(path, like=pipe)
    assert isinstance(pipe.scheduler, DODEScheduler)
    captured = []
    step = pipe.scheduler.step
    pipe.scheduler.step = lambda *a, **k: captured.append(step(*a, **k)) or captured[-1]
    run(pipe, batch=2)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    den = DiffusersDenoiser(unet, alphas)
    with torch.no_grad():
        ref = fs.sample(den, pipe.scheduler.dode_noise(noise))
    assert (captured[-1].prev_sample - ref).abs().max().item() <= 1e-4


# ---- item 11: step() refuses a batch change mid-run and checks per-sample timesteps ----------


def test_step_refuses_batch_change_and_checks_per_sample_timesteps(tiny):
    alphas = tiny[1]
    sched = DODEScheduler(
        solver={"name": "ddim"},
        sigmas=karras(STEPS, 0.05, 60.0).tolist(),
        lambdas=[0.0, 0.3, 0.1],
        alphas_cumprod=alphas.tolist(),
    )
    x = torch.randn(2, 3, 4, 4)
    t0, t1 = sched.timesteps[0], sched.timesteps[1]
    out = sched.step(torch.randn_like(x), t0, x).prev_sample
    with pytest.raises(ValueError, match=r"batch \(or sample\) size cannot change mid-run"):
        sched.step(torch.randn(1, 3, 4, 4), t1, out[:1])
    with pytest.raises(ValueError, match=r"\(sample 1\) but call 1 .* for every sample"):
        sched.step(torch.randn_like(out), torch.stack([t1, t1 - 50]), out)
    with pytest.raises(ValueError, match="3 timesteps for a batch of 2"):
        sched.step(torch.randn_like(out), t1.repeat(3), out)
    # nothing was consumed by the refused calls: one per-sample timestep each goes on
    assert sched.step_index == 1
    out2 = sched.step(torch.zeros_like(out), t1.repeat(2), out).prev_sample
    assert out2.shape == x.shape and sched.step_index == 2


# ---- item 9: what the file records against the pipeline's model -----------------------------


def test_file_of_a_class_conditional_model_refused_in_an_unconditional_pipeline(tiny, tmp_path):
    unet, alphas = tiny
    cond_unet = make_tiny_unet(seed=1, num_class_embeds=11)
    cond_den = DiffusersDenoiser(cond_unet, alphas, num_classes=10)
    model = {
        "id": "digits-cond",
        "class": "DiffusersDenoiser",
        "weights_hash": weights_hash(cond_den),
        "guidance_scale": -3.0,
        "conditioning": {"kind": "class_labels", "labels": "uniform"},
    }
    path, _ = solver_file(tmp_path, model)
    pipe = ddpm_pipe(unet)
    pipe.scheduler = DODEScheduler.from_solver_file(path, like=pipe.scheduler)
    with pytest.raises(
        ValueError, match="fitted on a class-conditional model .*no class embedding"
    ):
        run(pipe)
    with pytest.raises(ValueError, match="fitted on a class-conditional model"):
        DODEScheduler.from_solver_file(path, like=pipe)


def test_file_of_other_weights_refused_and_the_fitted_weights_run(tiny, tmp_path):
    unet, alphas = tiny
    model = {
        "id": "tiny",
        "class": "DiffusersDenoiser",
        "weights_hash": weights_hash(DiffusersDenoiser(unet, alphas)),
    }
    path, _ = solver_file(tmp_path, model)
    other = ddpm_pipe(make_tiny_unet(seed=5))
    other.scheduler = DODEScheduler.from_solver_file(path, like=other.scheduler)
    with pytest.raises(ValueError, match="other weights than the model this DODEScheduler"):
        run(other)
    with pytest.raises(ValueError, match="other weights"):
        DODEScheduler.from_solver_file(path, like=other)
    forced = DODEScheduler.from_solver_file(path, like=other, ignore_model_hash=True)
    assert "weights_hash" not in forced.config.model
    same = ddpm_pipe(unet)
    same.scheduler = DODEScheduler.from_solver_file(path, like=same)
    images = run(same)
    assert images.shape == (2, 8, 8, 3)
