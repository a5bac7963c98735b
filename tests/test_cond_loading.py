"""Loading conditional models by name/folder, network dtypes, and the chunked fit of a bound
denoiser (one conditioning row per sample, split along with the noise)."""

from __future__ import annotations

import pytest
import torch
from _tiny import make_tiny_sd, make_tiny_unet

import dode
from dode.denoisers import DiffusersDenoiser, LatentDiffusionDenoiser
from dode.denoisers.loading import ASSETS, MODELS, load_denoiser
from dode.noise import noise_from_seeds

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    make_tiny_sd(folder, seed=1)
    return folder


@pytest.fixture(scope="module")
def cond_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cond")
    make_tiny_unet(folder, num_class_embeds=4)
    return folder


def test_pipeline_folder_loads_latent_model(sd_folder):
    den = load_denoiser(str(sd_folder))
    assert isinstance(den, LatentDiffusionDenoiser) and not den.xl
    assert den.model_id == str(sd_folder) and den.sample_shape == (4, 8, 8)
    half = load_denoiser(str(sd_folder), dtype="bfloat16")
    assert next(half.unet.parameters()).dtype == torch.bfloat16
    # The network runs in bfloat16, the integration in the noise's dtype.
    noise = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    x = dode.sample(half.bind(["a", "b"], guidance_scale=2.0), "ddim", noise, [5.0, 1.0, 0.0])
    assert x.dtype == torch.float64 and torch.isfinite(x).all()


def test_unet_folder_with_num_classes(cond_folder):
    den = load_denoiser(str(cond_folder), num_classes=3)
    assert type(den) is DiffusersDenoiser
    assert den.num_classes == 3 and den.null_label == 3 and den.has_unconditional
    plain = load_denoiser(str(cond_folder))
    assert plain.num_classes == 4 and not plain.has_unconditional
    with pytest.raises(ValueError, match="needs the model's unconditional output"):
        plain.bind([0, 1], guidance_scale=2.0)


def test_digits_cond_registered():
    assert "digits-cond" in MODELS
    if not (ASSETS / "digits_cond_ddpm").is_dir():
        with pytest.raises(ValueError, match="digits-cond' model is missing"):
            load_denoiser("digits-cond")
        return
    den = load_denoiser("digits-cond")
    assert den.num_classes == 10 and den.null_label == 10 and den.model_id == "digits-cond"


def test_fit_lambdas_splits_bound_denoiser(cond_folder):
    """fit_lambdas(batch_size=...) on a denoiser bound to one label per sample equals the fit
    over the whole batch (the statistics are sums)."""
    den = load_denoiser(str(cond_folder), num_classes=3, dtype="float64")
    noise = noise_from_seeds(range(7), den.sample_shape, torch.float64)
    labels = torch.arange(7) % 3
    bound = den.bind(labels, guidance_scale=2.0)
    sigmas = dode.grids.schedules.karras(3, 0.01, 80.0)
    whole = dode.fit_lambdas(bound, "ddim", noise, sigmas, teacher_factor=3)
    chunked = dode.fit_lambdas(bound, "ddim", noise, sigmas, teacher_factor=3, batch_size=3)
    assert torch.allclose(whole, chunked, rtol=1e-9, atol=1e-12)
    assert (whole[1:] != 0).all()
    # The labels matter: other labels give other λ.
    other = dode.fit_lambdas(den.bind((labels + 1) % 3, guidance_scale=2.0), "ddim", noise,
                             sigmas, teacher_factor=3)  # fmt: skip
    assert not torch.allclose(whole, other)
