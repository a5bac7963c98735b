"""The end-to-end configs for the models users run (``configs/{sd15,sdxl,sd3,flux}-end-to-end.yaml``
over ``configs/{sd15,sdxl,sd3,flux}.yaml``, and the generic ``configs/end-to-end.yaml``) through
``python -m dode.train`` (``dode.cli.train.main``, the same code path) on tiny pipelines the
tests build and save, with text encoders so the configs' string prompts work: the model id
points at the folder, seed counts and steps are shrunk on the command line (the config's other
``end_to_end`` settings kept), the networks run in bfloat16 (half precision on the CPU). The
solver file then runs in ``DODEScheduler`` inside the diffusers pipeline and in the k-diffusion
host (``KDiffusionSampler``), both equal to ``FittedSolver.sample`` on dode's own adapter.

Also: the data range the clamp comes from (``clip: model``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from _tiny import make_tiny_flux, make_tiny_sd, make_tiny_sd3, make_tiny_unet

import dode
from dode.denoisers import (
    DiffusersDenoiser,
    FluxDenoiser,
    LatentDiffusionDenoiser,
    SD3Denoiser,
    flow_start,
)
from dode.denoisers.loading import load_denoiser
from dode.files.solver_file import FittedSolver
from dode.grids.schedules import karras
from dode.hosts.diffusers import DODEScheduler  # noqa: E402
from dode.hosts.k_diffusion import KDiffusionSampler
from dode.learned_solver import fit_end_to_end
from dode.standard_grids import reference_solution

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PROMPTS = ["a red cube", "a small dog on grass", "two birds"]
TOL = 1e-4
#: the command line's shrinking of the configs' end_to_end settings (the rest is the config's)
SMALL = {"steps": 2, "reference_nfe": 10, "batch_size": 2, "select_batch_size": 4,
         "eval_every": 1, "accept_level": None}  # fmt: skip

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]


def _settings(overlay: str) -> dict:
    with open(CONFIGS / overlay) as f:
        return yaml.safe_load(f)["model"]["end_to_end"]


def _train(tmp_path: Path, model_config: str, overlay: str, *args: str) -> FittedSolver:
    """``python -m dode.train -c <model config> -c <overlay> ...`` on the CPU, shrunk."""
    from dode.cli.train import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    e2e = {**_settings(overlay), **SMALL}
    path = main([
        "-c", str(CONFIGS / model_config), "-c", str(CONFIGS / overlay), *args,
        "--model.end_to_end", json.dumps(e2e),
        "--data.prompts", str(prompts), "--data.fit_seeds", "0-3",
        "--data.val_seeds", "100-103", "--data.batch_size", "4", "--data.cache_dir", "null",
        "--trainer.accelerator", "cpu", "--wandb_mode", "disabled",
        "--trainer.enable_progress_bar", "false", "--lambda_plot.enabled", "false",
        "--samples.num_samples", "0", "--run_dir", str(tmp_path / "run"),
    ])  # fmt: skip
    fs = FittedSolver.load(path)
    rec = fs.metrics["end_to_end"]
    want = _settings(overlay)
    assert rec["recompute"] is True and want["recompute"] is True
    assert rec["clip"] is None  # latents: the model declares no data range
    assert rec["steps_run"] == 2 and rec["coefficients"] == want["coefficients"]
    assert (
        rec["reference_nfe"] == 10
        and fs.nfe == yaml.safe_load((CONFIGS / model_config).read_text())["model"]["nfe"]
    )
    return fs


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """``out`` = ``ref`` to :data:`TOL` relative to the sample's scale (VP latents from a
    random network reach tens)."""
    assert ref.abs().max() > 0.1
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= TOL * max(1.0, ref.abs().max().item()), err


def _end_to_end_ish(fs: FittedSolver) -> FittedSolver:
    """The fitted file with non-zero λ, history coefficients and shift (ξ_0 = 0, which
    pipelines that never call ``scale_model_input`` need), so the hosts' parity checks every
    ingredient whether or not the two-step fit was accepted."""
    k = fs.nfe
    g = torch.Generator().manual_seed(k)
    lam = 0.2 * torch.randn(k, generator=g, dtype=torch.float64)
    lam[0] = 0
    c = torch.tril(0.1 * torch.randn(k, k, generator=g, dtype=torch.float64), diagonal=-2)
    xi = 0.1 * torch.randn(k, generator=g, dtype=torch.float64)
    xi[0] = 0
    return FittedSolver(
        solver=fs.solver, sigmas=fs.sigmas, lambdas=lam, coefficients=c, shift=xi,
        model=fs.model, metrics=fs.metrics,
    )  # fmt: skip


def _k_diffusion(fs: FittedSolver, model, noise: torch.Tensor, family: str = "vp"):
    fn = KDiffusionSampler(fs, host_family=family)
    x = noise.to(torch.float64) * fn.sigmas[0]
    with torch.no_grad():
        return fn(model, x, fn.sigmas, disable=True)


# ---- Stable Diffusion 1.5 and SDXL ----------------------------------------------------------


@pytest.mark.parametrize("xl", [False, True], ids=["sd15", "sdxl"])
def test_sd_end_to_end_config_runs_and_its_file_runs_in_both_hosts(tmp_path, xl):
    name = "sdxl" if xl else "sd15"
    folder = tmp_path / "pipe"
    pipe = make_tiny_sd(folder, xl=xl, seed=1)
    fs = _train(
        tmp_path, f"{name}.yaml", f"{name}-end-to-end.yaml", "--model.model", str(folder),
        "--model.model_dtype", "bfloat16",
        *(["--model.model_options", "null"] if xl else []),  # no fp16 variant saved
    )  # fmt: skip
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]
    w = cfg["guidance_scale"]
    assert fs.model["id"] == str(folder)

    fs = _end_to_end_ish(fs)
    path = fs.save(tmp_path / "e2e.safetensors")
    den = LatentDiffusionDenoiser.from_pretrained(str(folder))
    bound = den.bind(PROMPTS[:2], guidance_scale=w)
    latents = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = fs.sample(bound, latents)
        base = dode.sample(bound, fs.build_solver(), latents, fs.sigmas)
    assert (ref - base).abs().max() > 1e2 * TOL  # the coefficients and shift act

    sched = DODEScheduler.from_solver_file(path, like=pipe.scheduler)
    pipe.scheduler = sched
    with torch.no_grad():
        out = pipe(
            prompt=PROMPTS[:2], num_inference_steps=sched.num_steps, guidance_scale=w,
            latents=latents.clone(), output_type="latent", height=16, width=16,
        ).images  # fmt: skip
    _close(out, ref)

    kd = _k_diffusion(fs, lambda x, s: bound.x0(x.float(), s.float()).double(), latents)
    _close(kd, ref)


# ---- SD3 and FLUX ---------------------------------------------------------------------------


def test_sd3_end_to_end_config_runs_and_its_file_runs_in_both_hosts(tmp_path):
    folder = tmp_path / "pipe"
    pipe = make_tiny_sd3(folder, text_encoders=True)
    opts = {"path_or_id": str(folder), "model_dtype": "bfloat16"}
    fs = _train(
        tmp_path, "sd3.yaml", "sd3-end-to-end.yaml", "--model.model_options", json.dumps(opts)
    )
    w = yaml.safe_load((CONFIGS / "sd3.yaml").read_text())["model"]["guidance_scale"]
    fs = _end_to_end_ish(fs)
    path = fs.save(tmp_path / "e2e.safetensors")
    den = SD3Denoiser.from_pretrained(str(folder))
    bound = den.bind(PROMPTS[:2], guidance_scale=w)
    latents = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        noise = flow_start(bound, latents, fs.sigmas)[0]
        ref = fs.sample(bound, noise)
    sched = DODEScheduler.from_solver_file(path, like=pipe)
    pipe.scheduler = sched
    with torch.no_grad():
        out = pipe(
            prompt=PROMPTS[:2], latents=latents.clone(), height=16, width=16,
            num_inference_steps=sched.num_steps, guidance_scale=w, output_type="latent",
        ).images  # fmt: skip
    _close(out, ref)
    _flow_host_parity(fs, bound, den, noise, ref)


def _flow_host_parity(fs, bound, den, noise, ref):
    """The k-diffusion host in the flow convention (σ_host = t, ComfyUI's): the host's model
    is ``x̂0 = x_t − t·v`` from the network's velocity, guidance applied by the host."""

    def model(x_t, t):
        t = t.float().reshape(-1, *[1] * (x_t.ndim - 1))
        x = x_t.float() / (1 - t)  # σ-space: x = x_t / (1 − t)
        return bound.x0(x, (t / (1 - t)).reshape(-1)).double()

    _close(_k_diffusion(fs, model, noise, family="flow"), ref)


def test_flux_end_to_end_config_runs_and_its_file_runs_in_both_hosts(tmp_path):
    folder = tmp_path / "pipe"
    pipe = make_tiny_flux(folder, text_encoders=True)
    opts = {"path_or_id": str(folder), "model_dtype": "bfloat16", "image_size": [16, 24],
            "guidance": 3.5}  # fmt: skip
    fs = _train(
        tmp_path, "flux.yaml", "flux-end-to-end.yaml", "--model.model_options", json.dumps(opts)
    )
    assert fs.model["options"]["guidance"] == 3.5
    fs = _end_to_end_ish(fs)
    path = fs.save(tmp_path / "e2e.safetensors")
    den = FluxDenoiser.from_pretrained(str(folder), image_size=(16, 24))
    bound = den.bind(PROMPTS[:2], guidance=3.5)
    latents = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        noise = flow_start(bound, latents, fs.sigmas)[0]
        ref = fs.sample(bound, noise)
    sched = DODEScheduler.from_solver_file(path, like=pipe, mu=den.mu)
    pipe.scheduler = sched
    with torch.no_grad():
        out = pipe(
            prompt=PROMPTS[:2], latents=den.pack(latents), height=16, width=24,
            num_inference_steps=sched.num_steps, guidance_scale=3.5, output_type="latent",
        ).images  # fmt: skip
    _close(den.unpack(out), ref)
    _flow_host_parity(fs, bound, den, noise, ref)


# ---- the data range ---------------------------------------------------------------------------


def test_models_declare_their_data_range(tmp_path):
    for name in ("digits", "digits-cond", "digits-flow", "gmm-digits"):
        assert load_denoiser(name).data_range == (-1.0, 1.0), name
    assert load_denoiser("digits-cond").bind([1, 2], guidance_scale=2.0).data_range == (-1, 1)
    make_tiny_unet(tmp_path / "px")  # clip_sample: false
    assert DiffusersDenoiser.from_pretrained(str(tmp_path / "px")).data_range is None
    cfg = tmp_path / "px" / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "clip_sample": True,
                               "clip_sample_range": 2.0}))  # fmt: skip
    assert DiffusersDenoiser.from_pretrained(str(tmp_path / "px")).data_range == (-2.0, 2.0)
    make_tiny_sd(tmp_path / "sd")  # latents: none, whatever the scheduler config says
    assert LatentDiffusionDenoiser.from_pretrained(str(tmp_path / "sd")).data_range is None


def test_clip_model_clamps_to_the_declared_range():
    den = load_denoiser("gmm-digits")
    g = torch.Generator().manual_seed(0)
    z, zs = (torch.randn(8, *den.sample_shape, generator=g) for _ in range(2))
    grid = karras(3, 0.01, 80.0)
    ref, rs = reference_solution(den, z, nfe=10), reference_solution(den, zs, nfe=10)
    kw = dict(select_noise=zs, select_reference=rs, steps=0, accept_level=None)
    assert fit_end_to_end(den, "ddim", grid, z, ref, clip="model", **kw).metrics["end_to_end"][
        "clip"
    ] == [-1.0, 1.0]
    den.data_range = None
    rec = fit_end_to_end(den, "ddim", grid, z, ref, clip="model", **kw).metrics["end_to_end"]
    assert rec["clip"] is None


def test_the_generic_overlay_composes_with_any_model_config(capsys):
    from dode.cli.train import main

    for base in ("default.yaml", "sd15.yaml", "flux.yaml", "tiny.yaml"):
        with pytest.raises(SystemExit):
            main(["-c", str(CONFIGS / base), "-c", str(CONFIGS / "end-to-end.yaml"),
                  "--print_config"])  # fmt: skip
        out = yaml.safe_load(capsys.readouterr().out)
        assert out["model"]["fit_mode"] == "end-to-end"
        assert out["model"]["end_to_end"]["clip"] == "model"
        assert out["model"]["end_to_end"]["recompute"] is True


def test_the_generic_overlay_clamps_a_pixel_model_to_its_data_range(tmp_path):
    """``-c configs/tiny.yaml -c configs/end-to-end.yaml`` (the digits mixture, data in
    [-1, 1]): the fit compares samples in the model's data range."""
    from dode.cli.train import main

    e2e = {**_settings("end-to-end.yaml"), **SMALL}
    path = main([
        "-c", str(CONFIGS / "tiny.yaml"), "-c", str(CONFIGS / "end-to-end.yaml"),
        "--model.end_to_end", json.dumps(e2e), "--data.fit_seeds", "0-7",
        "--data.val_seeds", "100-107", "--data.cache_dir", "null", "--wandb_mode", "disabled",
        "--trainer.enable_progress_bar", "false", "--lambda_plot.enabled", "false",
        "--samples.num_samples", "0", "--fid.feature", "null", "--run_dir", str(tmp_path / "run"),
    ])  # fmt: skip
    rec = FittedSolver.load(path).metrics["end_to_end"]
    assert rec["clip"] == [-1.0, 1.0] and rec["recompute"] is True and rec["steps_run"] == 2
