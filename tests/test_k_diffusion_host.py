"""dode's k-diffusion-style sampler (:class:`dode.hosts.k_diffusion.KDiffusionSampler`) against k-diffusion.

k-diffusion (PyPI ``k-diffusion``, in the ``dev`` extra) is the reference: its own samplers
(``sample_euler``, ``sample_heun``, ``sample_dpm_2``, ``sample_dpmpp_2m``,
``sample_dpmpp_2m_sde`` at η = 0) and its own model wrapper for ε-prediction DDPMs
(``external.DiscreteEpsDDPMDenoiser``) around the bundled digits UNets. Solver files come from
``python -m dode.train`` (run through ``dode.cli.train.main`` in this process, the same code path).
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
from _tiny import inside_shift_bounds
from torch import nn

from dode.denoisers.loading import load_denoiser
from dode.files.solver_file import FittedSolver
from dode.grids.schedules import karras
from dode.hosts.k_diffusion import KDiffusionSampler
from dode.solvers import get_solver

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def _k_diffusion():
    """``k_diffusion.sampling`` and ``k_diffusion.external``.

    ``import k_diffusion`` runs its package ``__init__``, which imports every submodule,
    among them ``evaluation`` → ``clip`` → ``pkg_resources`` (gone from recent setuptools).
    The two modules needed here do not use those, so when the package import fails they are
    imported under a bare package module instead. Without k-diffusion (a dev dependency: ``make
    test`` installs it) the import fails and so do these tests: a parity check is never skipped.
    """
    try:
        importlib.import_module("k_diffusion")
    except ImportError:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None:  # not installed: pip install -e '.[dev]'
            raise
        for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
            del sys.modules[name]
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
    sampling = importlib.import_module("k_diffusion.sampling")
    return sampling, importlib.import_module("k_diffusion.external")


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

    def __init__(self, inner_model: nn.Module) -> None:
        super().__init__()
        self.inner_model = inner_model

    def forward(self, x, sigma, cond, uncond, cond_scale):
        u, c = self.inner_model(
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
    from dode.cli.train import main

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
    extra_args = {
        "cond": labels,
        "uncond": torch.full_like(labels, den.null_label),
        "cond_scale": 2.0,
    }
    kept = dict(extra_args)
    fn = KDiffusionSampler(guided_file)
    with torch.no_grad():
        ours = fn(
            model, noise * fn.sigmas[0].item(), fn.sigmas, extra_args=extra_args, disable=True
        )
        ref = fs.sample(den.bind(labels, guidance_scale=2.0), noise)
    err = (ours - ref).abs().max().item()
    print(f"digits-cond CFG w=2, {fs.solver}, {dtype}: max |Δ| to dode.sample = {err:.2e}")
    assert err <= (1e-6 if dtype == torch.float64 else 1e-4)
    assert extra_args == kept and all(extra_args[k] is kept[k] for k in kept)  # untouched
    with pytest.warns(UserWarning, match=r"cond_scale 3.*fitted at \(2\)"), torch.no_grad():
        fn(
            model,
            noise * fn.sigmas[0].item(),
            fn.sigmas,
            {**extra_args, "cond_scale": 3.0},
            None,
            True,
        )


# ---- bad input: one clear error each, the model never called ----------------------------------


class _Counting:
    """A host model that counts its calls (an exact x̂0: the data is 0)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x, sigma, **kwargs):
        self.calls += 1
        return torch.zeros_like(x)


def _sampler(solver="dpm_solver_pp", steps=5, **model) -> KDiffusionSampler:
    nfe = get_solver(solver).nfe(steps)
    lam = torch.linspace(0, 0.1, nfe)
    fs = FittedSolver(solver={"name": solver}, sigmas=karras(steps, 0.03, 14.6), lambdas=lam,
                      model=model)  # fmt: skip
    return KDiffusionSampler(fs)


def test_other_sigma_lists_are_refused_naming_the_fitted_one(kd):
    sampling, _ = kd
    fn, model = _sampler(), _Counting()
    x = torch.randn(2, 4, 8, 8) * 14.6
    s = fn.sigmas.float()
    perturbed = s.clone()
    perturbed[2] *= 1.01
    cases = {
        "appended": (torch.cat([s, s.new_zeros(1)]), r"has 7 values \(one σ appended"),
        "dropped": (s[:-1], r"has 5 values \(one σ dropped"),
        "steps": (sampling.get_sigmas_karras(8, 0.03, 14.6), r"has 9 values"),
        "perturbed": (perturbed, r"differs from the fitted grid .* at index 2"),
        "rescaled": (s * 2, r"rescaled by 2"),
        "other rho": (sampling.get_sigmas_karras(5, 0.03, 14.6, rho=3.0), r"at index 1"),
        "ascending": (s.flip(0), r"at index 0"),
        "2-D": (s[None], r"shape \(1, 6\)"),
    }
    for name, (sigmas, match) in cases.items():
        with pytest.raises(ValueError, match=match) as e:
            fn(model, x, sigmas, disable=True)
        msg = str(e.value)
        assert "14.6, " in msg and "NFE 5" in msg and ".sigmas" in msg, (name, msg)
    assert model.calls == 0
    fn(model, x, s, disable=True)  # a float32 copy of the fitted list is the fitted list
    assert model.calls == 5


def test_a_flow_file_in_a_vp_host_is_refused():
    flow = {"family": "flow", "id": "digits-flow", "class": "DiffusersFlowDenoiser"}
    with pytest.raises(ValueError, match=r"fitted on a rectified-flow .*digits-flow.* diffusion"):
        _sampler(**flow)
    with pytest.raises(ValueError, match=r"fitted on a diffusion .* rectified-flow .* host"):
        KDiffusionSampler(_sampler(id="digits").fitted, host_family="flow")
    with pytest.raises(ValueError, match=r"unknown host_family 'edm'"):
        KDiffusionSampler(_sampler().fitted, host_family="edm")


def test_bad_model_output_and_bad_x():
    fn = _sampler()
    x = torch.randn(2, 4, 8, 8) * 14.6
    with pytest.raises(ValueError, match=r"returned \(2, 4, 8\) for x of shape \(2, 4, 8, 8\)"):
        fn(lambda x, s: x[..., 0], x, fn.sigmas, disable=True)
    with pytest.raises(ValueError, match=r"floating-point tensor"):
        fn(_Counting(), x.long(), fn.sigmas, disable=True)
    with pytest.raises(ValueError, match=r"non-finite values at call 0"):
        fn(lambda x, s: x * float("nan"), x, fn.sigmas, disable=True)


# ---- host dtypes, progress bar ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_host_integrates_in_float32(kd, digits64, dtype):
    model32 = _host_model(kd, load_denoiser("digits"), torch.float32)
    seen = []

    def host(x, sigma):  # a half-precision host model: x̂0 in the host's dtype
        seen.append((x.dtype, sigma.dtype))
        return model32(x.float(), sigma.float()).to(x.dtype)

    fn = _sampler("heun", 4)
    x = (torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(4)) * 14.6).to(dtype)
    with torch.no_grad():
        out = fn(host, x, fn.sigmas.to(dtype), disable=True)  # σ in the host's dtype too
        assert out.dtype == dtype
        assert len(seen) == fn.nfe and all(d == dtype for d, _ in seen)
        assert all(s == torch.float32 for _, s in seen)  # σ in the integration's float32
        # the same run with a float32 state whose model inputs/outputs are rounded to the
        # host's dtype: the same numbers, so the state between calls was float32
        ref = fn(lambda x, s: host(x.to(dtype), s).float(), x.float(), fn.sigmas, disable=True)
    assert torch.equal(out, ref.to(dtype))


def test_progress_bar_honours_disable(capsys):
    fn = _sampler()
    x = torch.randn(1, 2, 2, 2) * 14.6
    fn(_Counting(), x, fn.sigmas, disable=True)
    assert "5/5" not in capsys.readouterr().err
    fn(_Counting(), x, fn.sigmas, disable=False)
    assert "5/5" in capsys.readouterr().err


def test_sampler_signature_is_k_diffusions(kd):
    import inspect

    sampling, _ = kd
    ref = list(inspect.signature(sampling.sample_dpmpp_2m).parameters)
    assert list(inspect.signature(_sampler()).parameters) == ref


# ---- a flow host (ComfyUI's convention: x_t = (1 − t) x0 + t n, the model called at σ = t) ------


class _FlowHost(nn.Module):
    """A rectified-flow UNet (v = ε − x0 at timestep 1000·t) as a flow host calls it:
    ``model(x_t, t, **kw) → x̂0 = x_t − t·v``."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x, sigma, class_labels):
        t = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        v = self.unet(x, (sigma * 1000).float(), class_labels=class_labels).sample
        return x - t * v


def test_flow_file_in_a_flow_host_equals_dode_sample(tmp_path):
    from dode.grids.schedules import flow_sigmas

    den = load_denoiser("digits-flow", dtype=torch.float64)
    sigmas = flow_sigmas(5, spacing="dpm_solver")
    assert sigmas[-1] == 0
    labels = torch.arange(4) % 10
    fs = FittedSolver(
        solver={"name": "dpm_solver_pp"},
        sigmas=sigmas,
        lambdas=torch.tensor([0.0, 0.1, -0.2, 0.15, 0.05]),
        model={"family": "flow", "id": "digits-flow", "class": "DiffusersFlowDenoiser"},
    )
    fs.save(tmp_path / "flow.safetensors")
    fn = KDiffusionSampler(tmp_path / "flow.safetensors", host_family="flow")
    t = fn.sigmas
    assert torch.allclose(t, sigmas / (1 + sigmas)) and t[0] < 1
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    calls = []
    with torch.no_grad():
        ours = fn(_FlowHost(den.unet), noise * t[0].item(), t,
                  extra_args={"class_labels": labels}, callback=calls.append, disable=True)  # fmt: skip
        ref = fs.sample(den.bind(labels), noise)
    err = (ours - ref).abs().max().item()
    print(f"digits-flow, flow host: max |Δ| to dode.sample = {err:.2e}")
    assert err <= 1e-6
    assert [float(c["sigma"]) for c in calls] == t[:-1].tolist()
    assert torch.allclose(calls[0]["x"], noise * t[0])  # the host's own x_t
    with pytest.raises(ValueError, match=r"differs from the fitted grid"):
        fn(_FlowHost(den.unet), noise, sigmas, extra_args={"class_labels": labels}, disable=True)


def test_the_host_module_needs_no_host_library():
    """``dode.hosts.k_diffusion`` imports neither k-diffusion nor Lightning (it sits beside the
    core)."""
    import os
    import subprocess

    code = (
        "import sys, dode.hosts.k_diffusion; bad = [m for m in sys.modules if m.split('.')[0] in "
        "('k_diffusion', 'lightning', 'pytorch_lightning', 'comfy')]; assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_host_models_that_show_another_schedule_are_refused(kd, digits_file, digits64):
    """k-diffusion's DiscreteSchedule wrappers expose the model's σ table: a flow file, or a
    file fitted on a model with another ᾱ table, is refused before any model call."""
    _, external = kd
    calls = []
    unet = _EpsUNet(digits64.unet)
    counting = lambda x, t, **kw: calls.append(t) or unet(x, t, **kw)  # noqa: E731
    flow = FittedSolver(
        solver={"name": "euler"},
        sigmas=torch.tensor([10.0, 1.0, 0.1, 0.0]),
        lambdas=torch.zeros(3),
        model={"family": "flow", "id": "digits-flow", "class": "DiffusersFlowDenoiser"},
    )
    fn = KDiffusionSampler(flow, host_family="flow")
    vp_host = external.DiscreteEpsDDPMDenoiser(counting, digits64.alphas_cumprod, quantize=False)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"discrete diffusion \(DDPM/VP\) model \(1000 noise"):
        fn(vp_host, x, fn.sigmas, disable=True)
    other = external.DiscreteEpsDDPMDenoiser(counting, digits64.alphas_cumprod**2, quantize=False)
    fn = KDiffusionSampler(digits_file)
    with pytest.raises(ValueError, match=r"another noise schedule .* than the model .*digits"):
        fn(_HostCFG(other), x * fn.sigmas[0], fn.sigmas, disable=True)
    assert not calls
    fn(vp_host, x * fn.sigmas[0], fn.sigmas, disable=True)  # the file's own table passes
    assert len(calls) == fn.nfe


def test_end_to_end_file_in_a_k_diffusion_host_equals_dode_sample(kd, digits64):
    """An end-to-end solver file (history coefficients C, model-time shift ξ) through the host
    with k-diffusion's own x̂0 wrapper of the digits UNet = ``dode.sample`` with the same C, ξ
    and noise; dropping C or ξ moves the sample far more than the difference."""
    import dode

    solver, steps = get_solver("dpm_solver_pp", order=2), 5
    g = torch.Generator().manual_seed(8)
    lam = 0.2 * torch.randn(steps, generator=g, dtype=torch.float64)
    lam[0] = 0.0
    c = torch.tril(0.15 * torch.randn(steps, steps, generator=g, dtype=torch.float64), -2)
    sigmas = karras(steps, 0.03, 14.6)
    xi = inside_shift_bounds(
        solver, sigmas, 0.2 * torch.randn(steps, generator=g, dtype=torch.float64)
    )
    fs = FittedSolver(solver=solver.config(), sigmas=sigmas, lambdas=lam, coefficients=c,
                      shift=xi, model={})  # fmt: skip
    fn = KDiffusionSampler(fs)
    model = _host_model(kd, digits64)
    noise = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        ours = fn(model, noise * fn.sigmas[0].item(), fn.sigmas, disable=True)
        ref = dode.sample(digits64, solver, noise, sigmas, lam, coefficients=c, shift=xi)
        no_shift = dode.sample(digits64, solver, noise, sigmas, lam, coefficients=c)
        no_hist = dode.sample(digits64, solver, noise, sigmas, lam, shift=xi)
    err = (ours - ref).abs().max().item()
    print(f"digits DDPM, end-to-end {solver.describe()}: max |Δ| to dode.sample = {err:.2e}")
    assert err <= 1e-6
    assert (ours - no_shift).abs().max() > 1e-3 and (ours - no_hist).abs().max() > 1e-3
