"""DiffusersDenoiser: loading with from_pretrained, prediction types, σ → t.

References are diffusers' own code: ``DDPMScheduler.add_noise`` / ``get_velocity`` (the
definitions of x_t and v), ``EulerDiscreteScheduler`` (σ-space input scaling and its x̂0 for
each prediction type, its ``_sigma_to_t`` log-σ interpolation).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from _tiny import make_tiny_unet, scheduler_config
from torch import nn

from dode.denoisers import DiffusersDenoiser

pytestmark = pytest.mark.usefixtures("one_thread")

import diffusers  # noqa: E402

PREDICTIONS = ["epsilon", "v_prediction", "sample"]


@pytest.fixture(scope="module")
def unet():
    return make_tiny_unet(seed=0)


def ddpm(prediction_type="epsilon"):
    return diffusers.DDPMScheduler(**scheduler_config(prediction_type))


# ---- loading --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["pipeline", "flat"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_from_pretrained_round_trip(tmp_path, unet, layout, prediction_type):
    """A folder written by save_pretrained (pipeline layout with unet/ + scheduler/, or flat
    as google/ddpm-cifar10-32) loads back to the same network, ᾱ table and prediction type."""
    make_tiny_unet(tmp_path, prediction_type=prediction_type, seed=0, layout=layout)
    expected = ["scheduler", "unet"] if layout == "pipeline" else None
    if expected:
        assert sorted(os.listdir(tmp_path)) == expected
    else:
        assert {"config.json", "scheduler_config.json"} <= set(os.listdir(tmp_path))
    den = DiffusersDenoiser.from_pretrained(tmp_path, sigma_to_t="snap")
    assert den.prediction_type == prediction_type
    assert den.prediction == ("eps" if prediction_type != "sample" else "x0")
    assert den.sigma_to_t_mode == "snap"
    assert den.model_id == str(tmp_path)
    assert den.sample_shape == (3, 8, 8)
    assert torch.equal(den.alphas_cumprod, ddpm().alphas_cumprod.double())
    assert den.sigma_max == pytest.approx(
        math.sqrt((1 - den.alphas_cumprod[-1]) / den.alphas_cumprod[-1])
    )
    x = torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        assert torch.equal(den.unet(x, t).sample, unet(x, t).sample)
    assert not any(p.requires_grad for p in den.unet.parameters())
    assert not den.unet.training


def test_from_pretrained_sample_prediction_and_dtype(tmp_path):
    """prediction_type="sample" and torch_dtype reach the loaded model."""
    make_tiny_unet(tmp_path, prediction_type="sample", seed=3)
    den = DiffusersDenoiser.from_pretrained(str(tmp_path), torch_dtype=torch.float64)
    assert den.prediction == "x0" and next(den.unet.parameters()).dtype == torch.float64
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        out = den.x0(x, 2.0)
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_from_pretrained_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    make_tiny_unet(tmp_path / "model", seed=0)
    den = DiffusersDenoiser.from_pretrained("~/model")
    assert den.model_id == str(tmp_path / "model")


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ValueError, match="no_such_model") as err:
        DiffusersDenoiser.from_pretrained(missing)
    assert "save_pretrained" in str(err.value)
    assert not missing.exists()


def test_folder_without_a_model(tmp_path):
    """An existing folder without a UNet or scheduler config: a ValueError naming the folder."""
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"not": "a unet"}))
    with pytest.raises(ValueError, match="could not load") as err:
        DiffusersDenoiser.from_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_folder_without_scheduler(tmp_path):
    make_tiny_unet(tmp_path, seed=0)
    for name in os.listdir(tmp_path / "scheduler"):
        os.remove(tmp_path / "scheduler" / name)
    with pytest.raises(ValueError, match="scheduler"):
        DiffusersDenoiser.from_pretrained(tmp_path)


def test_bad_arguments(unet):
    ac = ddpm().alphas_cumprod
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusersDenoiser(unet, ac, prediction_type="x0")
    with pytest.raises(ValueError, match="sigma_to_t"):
        DiffusersDenoiser(unet, ac, sigma_to_t="nearest")


# ---- prediction types -------------------------------------------------------------------------


class Oracle(nn.Module):
    """A stand-in network that returns a fixed tensor (the exact ε, v or x0 of a known x_t)."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return diffusers.models.unets.unet_2d.UNet2DOutput(sample=self.out)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_exact_prediction_recovers_x0_and_eps(prediction_type):
    """x_t = add_noise(x0, ε, t) and v = get_velocity(x0, ε, t) from diffusers; a network that
    predicts its target exactly must give back x0 and ε, in σ-space (x = x_t·sqrt(1 + σ²))."""
    sched = ddpm(prediction_type)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 3, 8, 8, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 3, 8, 8, generator=gen, dtype=torch.float64)
    for t in (0, 37, 500, 999):
        tt = torch.full((3,), t, dtype=torch.long)
        x_t = sched.add_noise(x0, eps, tt)
        target = {
            "epsilon": eps,
            "v_prediction": sched.get_velocity(x0, eps, tt),
            "sample": x0,
        }[prediction_type]
        den = DiffusersDenoiser(
            Oracle(target), sched.alphas_cumprod, prediction_type, sigma_to_t="snap"
        )
        sigma = float(den.log_sigmas[t].exp())
        x = x_t * math.sqrt(1 + sigma**2)
        torch.testing.assert_close(den.x0(x, sigma), x0, atol=1e-9 * max(1.0, sigma), rtol=0)
        torch.testing.assert_close(den.eps(x, sigma), eps, atol=1e-9 / min(1.0, sigma), rtol=0)


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
@pytest.mark.parametrize("spacing, mode", [("leading", "snap"), ("karras", "interp")])
def test_matches_euler_discrete_scheduler(unet, prediction_type, spacing, mode):
    """EulerDiscreteScheduler works in σ-space like dode: its scale_model_input, timesteps and
    pred_original_sample (for each prediction type) must equal DiffusersDenoiser's input scaling,
    σ → t and x̂0, at integer timesteps (snap) and at Karras σ (log-σ interpolated t)."""
    karras = spacing == "karras"
    sched = diffusers.EulerDiscreteScheduler(
        **{k: v for k, v in scheduler_config(prediction_type).items() if k != "clip_sample"},
        timestep_spacing="leading" if not karras else "linspace",
        use_karras_sigmas=karras,
    )
    sched.set_timesteps(6)
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet, self.config = unet, unet.config

        def forward(self, x, t):
            seen.append((x.clone(), torch.as_tensor(t).clone()))
            return self.unet(x, t)

    den = DiffusersDenoiser(Spy(), sched.alphas_cumprod, prediction_type, sigma_to_t=mode)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for i, t in enumerate(sched.timesteps):
        sigma = float(sched.sigmas[i])
        xi = x * (1 + 0.1 * i)
        with torch.no_grad():
            model_in = sched.scale_model_input(xi, t)
            out = unet(model_in, t).sample
            ref_x0 = sched.step(out, t, xi).pred_original_sample
            x0 = den.x0(xi, sigma)
            eps = den.eps(xi, sigma)
        x_in, t_in = seen[-1]
        torch.testing.assert_close(x_in, model_in, atol=1e-6, rtol=1e-6)
        assert float(t_in.reshape(-1)[0]) == pytest.approx(float(t), abs=1e-3 if karras else 0)
        torch.testing.assert_close(x0, ref_x0, atol=1e-4 * max(1.0, sigma), rtol=1e-5)
        # ε̂ = (x − x̂0)/σ, whichever of the two the network predicts natively
        torch.testing.assert_close(eps, (xi - ref_x0) / sigma, atol=1e-4, rtol=1e-5)


# ---- σ → t ------------------------------------------------------------------------------------


def test_snap_gives_table_index(unet):
    ac = ddpm().alphas_cumprod
    den = DiffusersDenoiser(unet, ac, sigma_to_t="snap")
    table = ((1 - ac.double()) / ac.double()).sqrt()
    idx = torch.arange(len(table))
    assert torch.equal(den.sigma_to_t(table), idx.double())
    torch.testing.assert_close(den.round_sigma(table), table, rtol=1e-14, atol=0)
    # a σ a little off a table entry snaps to that entry (nearest in log σ)
    wiggle = table * torch.where(idx % 2 == 0, 1 + 1e-4, 1 - 1e-4)
    assert torch.equal(den.sigma_to_t(wiggle), idx.double())
    torch.testing.assert_close(den.round_sigma(wiggle), table, rtol=1e-14, atol=0)
    # the snapped t reaches the network as an integer timestep
    seen = []
    den.unet.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    with torch.no_grad():
        den.eps(torch.randn(2, 3, 8, 8), float(table[321]))
    assert seen[-1].dtype == torch.long and seen[-1].tolist() == [321, 321]


def test_interp_matches_diffusers_sigma_to_t(unet):
    """log-σ interpolation as in EulerDiscreteScheduler / HeunDiscreteScheduler._sigma_to_t,
    inside the table's range and clamped outside it."""
    sched = diffusers.EulerDiscreteScheduler(
        **{k: v for k, v in scheduler_config().items() if k != "clip_sample"}
    )
    ac = sched.alphas_cumprod
    den = DiffusersDenoiser(unet, ac, sigma_to_t="interp")
    a = ac.double().numpy()
    log_sigmas = np.log(((1 - a) / a) ** 0.5)
    rng = np.random.default_rng(0)
    sig = np.concatenate(
        [
            np.exp(rng.uniform(log_sigmas[0], log_sigmas[-1], 200)),
            np.exp(log_sigmas[[0, 1, 500, 998, 999]]),
            [1e-4, 0.005, 200.0, 1e4],  # outside [σ_min, σ_max]
        ]
    )
    ref = np.array([sched._sigma_to_t(s, log_sigmas) for s in sig], dtype=np.float64)
    got = den.sigma_to_t(torch.from_numpy(sig)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-9, rtol=0)
    assert got.min() == 0 and got.max() == len(ac) - 1
    # interp does not move σ; snap does
    s = torch.tensor([0.7], dtype=torch.float64)
    assert den.round_sigma(s).item() == pytest.approx(0.7, rel=1e-12)
