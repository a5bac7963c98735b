"""dode's k-diffusion-style sampler (:class:`dode.hosts.KDiffusionSampler`) against k-diffusion.

k-diffusion (PyPI ``k-diffusion``, in the ``dev`` extra) is the reference: its own samplers
(``sample_euler``, ``sample_heun``, ``sample_dpm_2``, ``sample_dpmpp_2m``,
``sample_dpmpp_2m_sde`` at η = 0) and its own model wrapper for ε-prediction DDPMs
(``external.DiscreteEpsDDPMDenoiser``) around the bundled digits UNets. Solver files come from
``python -m dode.train`` (run through ``dode.train.main`` in this process, the same code path).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from dode.artifact import FittedSolver
from dode.hosts import KDiffusionSampler
from dode.loading import load_denoiser
from dode.schedules import karras
from dode.solvers import get_solver

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _k_diffusion():
    """``k_diffusion.sampling`` and ``k_diffusion.external``.

    ``import k_diffusion`` runs its package ``__init__``, which imports every submodule,
    among them ``evaluation`` → ``clip`` → ``pkg_resources`` (gone from recent setuptools).
    The two modules needed here do not use those, so when the package import fails they are
    imported under a bare package module instead.
    """
    if importlib.util.find_spec("k_diffusion") is None:  # only a guard: it is in the dev extra
        pytest.skip("k-diffusion is not installed (pip install -e '.[dev]')")
    try:
        import k_diffusion.external
        import k_diffusion.sampling
    except ImportError:
        spec = importlib.util.find_spec("k_diffusion")
        for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
            del sys.modules[name]
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
        importlib.import_module("k_diffusion.sampling")
        importlib.import_module("k_diffusion.external")
    return sys.modules["k_diffusion.sampling"], sys.modules["k_diffusion.external"]


@pytest.fixture(scope="module")
def kd():
    return _k_diffusion()


class _EpsUNet(nn.Module):
    """A diffusers UNet2DModel as the ``inner_model(x, t, **kw) → ε`` k-diffusion wraps."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x, t, **kwargs):
        return self.unet(x, t, **kwargs).sample


def _host_model(kd, den, dtype=torch.float64):
    """k-diffusion's DiscreteEpsDDPMDenoiser around the UNet of a dode DiffusersDenoiser,
    continuous timesteps (quantize=False: dode's default ``sigma_to_t="interp"``)."""
    _, external = kd
    unet = den.unet if next(den.unet.parameters()).dtype == dtype else copy.deepcopy(den.unet)
    unet = unet.to(dtype)
    return external.DiscreteEpsDDPMDenoiser(
        _EpsUNet(unet), den.alphas_cumprod.to(dtype), quantize=False
    )


class _HostCFG(nn.Module):
    """A host-style classifier-free guidance wrapper (as k-diffusion's and A1111's
    ``CFGDenoiser``): one batched call of 2B, x̂0 = u + (c − u)·cond_scale."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x, sigma, cond, uncond, cond_scale):
        u, c = self.inner(
            torch.cat([x, x]), torch.cat([sigma, sigma]), class_labels=torch.cat([uncond, cond])
        ).chunk(2)
        return u + (c - u) * cond_scale


@pytest.fixture(scope="module")
def digits64():
    return load_denoiser("digits", dtype=torch.float64)


def _zero_file(solver: dict, sigmas) -> FittedSolver:
    nfe = get_solver(**solver).nfe(len(sigmas) - 1)
    return FittedSolver(solver=solver, sigmas=sigmas, lambdas=torch.zeros(nfe), model={})


# ---- λ = 0: k-diffusion's own samplers ----------------------------------------------------------

PAIRS = [
    ({"name": "euler"}, "sample_euler", {}),
    ({"name": "ddim"}, "sample_euler", {}),  # the same map, consuming ε̂ = (x − x̂0)/σ
    ({"name": "heun"}, "sample_heun", {}),
    ({"name": "dpm_solver", "order": 2}, "sample_dpm_2", {}),
    ({"name": "dpm_solver_pp", "order": 2}, "sample_dpmpp_2m", {}),
    ({"name": "dpm_solver_pp", "order": 2}, "sample_dpmpp_2m_sde", {"eta": 0.0}),
]


@pytest.mark.parametrize(("solver", "kd_name", "kd_kwargs"), PAIRS, ids=lambda p: str(p))
def test_lambda_zero_equals_k_diffusion_sampler(kd, digits64, solver, kd_name, kd_kwargs):
    sampling, _ = kd
    model = _host_model(kd, digits64)
    sigmas = karras(6, 0.02, digits64.sigma_max)
    fn = KDiffusionSampler(_zero_file(solver, sigmas))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64) * fn.sigmas[0]
    ref_calls, our_calls = [], []
    ref = getattr(sampling, kd_name)(
        model, x, fn.sigmas, callback=ref_calls.append, disable=True, **kd_kwargs
    )
    with torch.no_grad():
        ours = fn(model, x, fn.sigmas, callback=our_calls.append, disable=True)
    err = (ours - ref).abs().max().item()
    print(f"{solver} vs k_diffusion.sampling.{kd_name}: max |Δ| = {err:.2e}")
    assert ours.dtype == torch.float64
    assert err <= 1e-6
    # the callback: k-diffusion's keys, one call per step, the same states and x̂0
    assert [c["i"] for c in our_calls] == [c["i"] for c in ref_calls] == list(range(6))
    for ours_c, ref_c in zip(our_calls, ref_calls):
        assert set(ours_c) == set(ref_c) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert float(ours_c["sigma"]) == float(ref_c["sigma"])
        assert float(ours_c["sigma_hat"]) == float(ref_c["sigma_hat"])
        assert (ours_c["x"] - ref_c["x"]).abs().max() <= 1e-6
        assert (ours_c["denoised"] - ref_c["denoised"]).abs().max() <= 1e-6


# ---- solver files fitted by `python -m dode.train` ---------------------------------------------


def _train(tmp: Path, *extra: str) -> Path:
    """``python -m dode.train`` (its ``main``, in this process) at tiny settings."""
    from dode.train import main

    args = [
        "-c", str(ROOT / "configs" / "tiny.yaml"),
        "--model.nfe", "4",
        "--model.teacher_factor", "4",
        "--data.fit_seeds", "0-15",
        "--data.val_seeds", "100-107",
        "--data.batch_size", "8",
        "--data.cache_dir", str(tmp / "cache"),
        "--run_dir", str(tmp / "run"),
        "--wandb_mode", "disabled",
        "--fid.feature", "null",
        "--samples.num_samples", "0",
        "--trainer.enable_progress_bar", "false",
        *extra,
    ]  # fmt: skip
    path = main(args)
    assert path is not None and Path(path).is_file()
    return Path(path)


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory) -> Path:
    """iPNDM (consumes ε̂: the host's x̂0 goes through dode's conversion) on the digits DDPM."""
    tmp = tmp_path_factory.mktemp("kd-digits")
    return _train(tmp, "--model.model", "digits", "--model.solver", "ipndm")


@pytest.fixture(scope="module")
def guided_file(tmp_path_factory) -> Path:
    """DPM-Solver++(2M) on digits-cond with classifier-free guidance w = 2."""
    tmp = tmp_path_factory.mktemp("kd-guided")
    return _train(
        tmp,
        "--model.model", "digits-cond",
        "--model.solver", "dpm_solver_pp",
        "--model.guidance_scale", "2.0",
        "--data.class_labels", "all",
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_digits_ddpm_in_k_diffusion_wrapper_equals_dode_sample(kd, digits_file, dtype):
    fs = FittedSolver.load(digits_file)
    assert fs.lambdas.abs().max() > 1e-3  # a real fit, not the base solver
    den = load_denoiser("digits", dtype=dtype)
    model = _host_model(kd, den, dtype)
    fn = KDiffusionSampler(digits_file)
    assert torch.equal(fn.sigmas, fs.sigmas)
    noise = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=dtype)
    with torch.no_grad():
        ours = fn(model, noise * fn.sigmas[0].item(), fn.sigmas.to(dtype), disable=True)
        ref = fs.sample(den, noise)
        base = fs.sample(den, noise, dode=False)
    err = (ours - ref).abs().max().item()
    print(f"digits DDPM, {fs.solver}, {dtype}: max |Δ| to dode.sample = {err:.2e}")
    assert ours.dtype == dtype
    assert err <= (1e-6 if dtype == torch.float64 else 1e-4)
    assert (ref - base).abs().max() > 100 * max(err, 1e-6)  # λ move the sample; parity is real


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_host_cfg_reproduces_dode_guided_sampling(kd, guided_file, dtype):
    fs = FittedSolver.load(guided_file)
    assert fs.model["guidance_scale"] == 2.0 and fs.lambdas.abs().max() > 1e-3
    den = load_denoiser("digits-cond", dtype=dtype)
    labels = torch.arange(10) % 10
    noise = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=dtype)
    model = _HostCFG(_host_model(kd, den, dtype))
    extra_args = {"cond": labels, "uncond": torch.full_like(labels, den.null_label), "cond_scale": 2.0}
    kept = dict(extra_args)
    fn = KDiffusionSampler(guided_file)
    with torch.no_grad():
        ours = fn(model, noise * fn.sigmas[0].item(), fn.sigmas, extra_args=extra_args, disable=True)
        ref = fs.sample(den.bind(labels, guidance_scale=2.0), noise)
    err = (ours - ref).abs().max().item()
    print(f"digits-cond CFG w=2, {fs.solver}, {dtype}: max |Δ| to dode.sample = {err:.2e}")
    assert err <= (1e-6 if dtype == torch.float64 else 1e-4)
    assert extra_args == kept and all(extra_args[k] is kept[k] for k in kept)  # untouched
    with pytest.warns(UserWarning, match=r"cond_scale 3.*fitted at \(2\)"), torch.no_grad():
        fn(model, noise * fn.sigmas[0].item(), fn.sigmas, {**extra_args, "cond_scale": 3.0}, None, True)
