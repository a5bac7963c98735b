"""The shipped digits model and classifier: hashes, loading, accuracy, metric sanity.

Ground truths used here come from outside the project: scikit-learn's digits data and
labels, diffusers' ``DDPMScheduler`` defaults and its own ``DDPMPipeline`` loader.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dode.denoisers import DiffusersDenoiser
from dode.digits.classifier import (
    DIGITS_CLASSIFIER,
    DIGITS_MODEL,
    DigitsClassifier,
    MaxPool2x2,
    digits_features,
    digits_stats,
    fd_digits,
    fd_pixel,
    load_classifier,
    load_digits_split,
    verify_assets,
    write_asset_hashes,
)


def test_shipped_files_match_recorded_hashes():
    assert verify_assets() == []


def test_hash_check_catches_a_changed_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "w.bin").write_bytes(b"weights")
    write_asset_hashes(tmp_path)
    assert verify_assets(tmp_path) == []
    (tmp_path / "a" / "w.bin").write_bytes(b"weightz")
    (tmp_path / "extra.json").write_text("{}")
    problems = verify_assets(tmp_path)
    assert any("a/w.bin" in p and "differs" in p for p in problems)
    assert any("extra.json" in p and "not listed" in p for p in problems)


def test_split_is_fixed_stratified_and_covers_sklearn_digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    split = load_digits_split()
    assert len(split.train_images) == 1437 and len(split.test_images) == 360
    assert tuple(split.test_images.shape[1:]) == (1, 8, 8)
    # Every sklearn image appears exactly once, with its label, scaled as x / 8 - 1.
    raw = np.concatenate([split.train_images, split.test_images]).reshape(-1, 64)
    labels = np.concatenate([split.train_labels, split.test_labels])
    back = np.round((raw + 1) * 8).astype(np.int64)
    ref = {(tuple(r), int(t)) for r, t in zip(data.data.astype(np.int64), data.target)}
    assert {(tuple(r), int(t)) for r, t in zip(back, labels)} == ref
    assert raw.min() == -1.0 and raw.max() == 1.0
    # Stratified: each class holds 20% (± one image) of its members out.
    counts = np.bincount(data.target, minlength=10)
    held = np.bincount(split.test_labels.numpy(), minlength=10)
    assert np.all(np.abs(held - 0.2 * counts) <= 1)


def test_model_loads_through_from_pretrained_as_a_ddpm():
    from diffusers import DDPMScheduler

    den = DiffusersDenoiser.from_pretrained(DIGITS_MODEL)
    assert den.sample_shape == (1, 8, 8) and den.prediction == "eps"
    # The DDPM linear-β schedule of 1000 steps: diffusers' own defaults.
    ref = DDPMScheduler().alphas_cumprod.to(torch.float64)
    torch.testing.assert_close(den.alphas_cumprod, ref, rtol=1e-6, atol=0)
    x = torch.randn(4, 1, 8, 8)
    for sigma in (den.sigma_min, 1.0, 80.0):
        out = den.x0(x * max(sigma, 1.0), sigma)
        assert out.shape == x.shape and torch.isfinite(out).all()
    size = sum(f.stat().st_size for f in DIGITS_MODEL.rglob("*") if f.is_file())
    assert size <= 10 * 2**20


def test_model_denoises_held_out_digits():
    """At moderate noise, D(x, σ) is far closer to the clean held-out digit than x is."""
    den = DiffusersDenoiser.from_pretrained(DIGITS_MODEL)
    y = load_digits_split().test_images
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.3, 1.0):
        x = y + sigma * torch.randn(y.shape, generator=gen)
        with torch.no_grad():
            d = den.x0(x, sigma)
        err_in = float(((x - y) ** 2).mean())
        err_out = float(((d - y) ** 2).mean())
        assert err_out < 0.35 * err_in, (sigma, err_in, err_out)


def test_model_folder_loads_as_a_diffusers_pipeline():
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(str(DIGITS_MODEL))
    assert pipe.unet.config.sample_size == 8
    assert pipe.scheduler.config.prediction_type == "epsilon"


def test_classifier_reaches_95_percent_on_held_out_digits():
    split = load_digits_split()
    clf = load_classifier()
    with torch.no_grad():
        acc = float((clf(split.test_images).argmax(1) == split.test_labels).float().mean())
    assert acc >= 0.95
    meta = json.loads((DIGITS_CLASSIFIER / "config.json").read_text())["metadata"]
    assert abs(meta["test_accuracy"] - acc) < 1e-3
    size = sum(f.stat().st_size for f in DIGITS_CLASSIFIER.rglob("*") if f.is_file())
    assert size <= 1 * 2**20


@pytest.mark.parametrize("shape", [(5, 3, 8, 8), (2, 4, 4, 6), (3, 2, 5, 4)])
def test_classifier_pooling_equals_max_pool(shape):
    x = torch.randn(shape)
    x[0, 0, 0, 0] = float("nan")
    got, want = MaxPool2x2()(x), torch.nn.functional.max_pool2d(x, 2)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=0, atol=0, equal_nan=True)


def test_reference_row_is_far_below_noise():
    split = load_digits_split()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn((1437, 1, 8, 8), generator=gen).clamp(-1, 1)
    ref = fd_digits(split.test_images, split.train_images)
    bad = fd_digits(noise, split.train_images)
    assert np.isfinite(ref) and np.isfinite(bad)
    assert 0 <= ref < 0.05 * bad
    # Precomputed statistics give the same number.
    assert fd_digits(split.test_images, digits_stats(split.train_images)) == pytest.approx(ref)
    ref_px, bad_px = (
        fd_pixel(split.test_images, split.train_images),
        fd_pixel(noise, split.train_images),
    )
    assert 0 <= ref_px < 0.2 * bad_px


def test_fd_digits_is_zero_for_identical_sets_and_rejects_bad_shapes():
    x = load_digits_split().test_images
    assert fd_digits(x, x) == pytest.approx(0.0, abs=1e-6)
    assert digits_features(x[:5]).shape == (5, 128)
    with pytest.raises(ValueError, match=r"\[N, 1, 8, 8\]"):
        fd_digits(torch.zeros(10, 3, 8, 8), x)
    with pytest.raises(ValueError, match="non-finite"):
        fd_pixel(torch.full((10, 1, 8, 8), float("nan")), x)


def test_missing_classifier_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="python -m dode.digits"):
        DigitsClassifier.from_pretrained(tmp_path)


def test_pretrain_cli_writes_a_loadable_model(tmp_path):
    """Two optimizer steps of ``python -m dode.pretrain`` on a tiny UNet, end to end."""
    from dode.cli.pretrain import main

    out = main(
        [
            "-c",
            "configs/pretrain/digits.yaml",
            "--model.block_out_channels=[8, 16]",
            "--model.down_block_types=[DownBlock2D, DownBlock2D]",
            "--model.up_block_types=[UpBlock2D, UpBlock2D]",
            "--model.norm_num_groups=4",
            "--model.attention_head_dim=8",
            "--trainer.max_steps=2",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.steps_per_epoch=2",
            "--data.batch_size=8",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            f"--output={tmp_path / 'model'}",
            f"--results={tmp_path / 'results'}",
        ]
    )
    den = DiffusersDenoiser.from_pretrained(out)
    assert den.sample_shape == (1, 8, 8)
    assert torch.isfinite(den.eps(torch.randn(2, 1, 8, 8), 1.0)).all()
    card = json.loads((out / "training.json").read_text())
    assert card["steps"] == 2 and card["seed"] == 0
    assert (tmp_path / "results" / "pretrain_metrics.csv").is_file()
    assert not list(tmp_path.glob(".tmp-*"))


def test_pretrain_rejects_mismatched_block_lists():
    from dode.digits.pretrain import DDPMPretrain

    with pytest.raises(ValueError, match="one entry per block_out_channels"):
        DDPMPretrain(block_out_channels=(16, 32), down_block_types=("DownBlock2D",))


# ------------------------------------------- class-conditional DDPM and rectified flow (CFG)

COND_MODELS = {"digits_cond_ddpm": "eps", "digits_flow": "flow"}


def _x0_prediction(folder, x0, labels, sigma: float, seed: int = 0):
    """One network call: the model's clean-image estimate of ``x0 + σ ε`` with ``labels``, at
    flow time ``t = σ / (1 + σ)`` (``x_t = (1 − t) x0 + t ε``) or at the DDPM step whose
    ``sqrt((1 − ᾱ) / ᾱ)`` is closest to σ."""
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(folder, subfolder="unet").eval()
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        if COND_MODELS[folder.name] == "flow":
            t = sigma / (1 + sigma)
            xt = (1 - t) * x0 + t * eps
            v = unet(xt, torch.full((len(x0),), t * 1000), class_labels=labels).sample
            return xt - t * v
        ac = DDPMScheduler.from_pretrained(folder, subfolder="scheduler").alphas_cumprod
        t = int(((1 - ac).sqrt() / ac.sqrt() - sigma).abs().argmin())
        a = ac[t]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        e = unet(xt, torch.full((len(x0),), t), class_labels=labels).sample
        return (xt - (1 - a).sqrt() * e) / a.sqrt()


@pytest.mark.parametrize("name", sorted(COND_MODELS))
def test_conditional_models_load_and_record_how_they_were_made(name):
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel

    folder = DIGITS_MODEL.parent / name
    objective = COND_MODELS[name]
    card = json.loads((folder / "training.json").read_text())
    assert card["objective"] == objective and card["seed"] == 0
    assert card["num_classes"] == 10 and card["null_label"] == 10
    assert card["label_dropout"] == 0.1
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet")
    assert unet.config.num_class_embeds == 11 and unet.config.sample_size == 8
    assert tuple(unet.config.block_out_channels) == (8, 16, 32)
    if objective == "flow":
        sched = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
        assert sched.config.shift == 1.0 and sched.config.num_train_timesteps == 1000
    else:
        sched = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        assert sched.config.prediction_type == "epsilon"
        torch.testing.assert_close(sched.alphas_cumprod, DDPMScheduler().alphas_cumprod)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size <= 1 * 2**20


@pytest.mark.parametrize("name", sorted(COND_MODELS))
def test_conditional_models_denoise_held_out_digits(name):
    """At moderate noise, the clean-image estimate with the true label is far closer to the
    held-out digit than the noisy input is."""
    split = load_digits_split()
    y, labels = split.test_images, split.test_labels
    folder = DIGITS_MODEL.parent / name
    for sigma in (0.3, 1.0):
        d = _x0_prediction(folder, y, labels, sigma)
        eps = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
        err_in = float(((sigma * eps) ** 2).mean())
        err_out = float(((d - y) ** 2).mean())
        assert err_out < 0.35 * err_in, (sigma, err_in, err_out)


@pytest.mark.parametrize("name", sorted(COND_MODELS))
def test_conditional_models_follow_the_label_and_the_null_label_does_not(name):
    """From heavy noise, the clean-image estimate for label k is classified as k (the shipped
    classifier), even when the noisy digit is another one; with the null label it is not."""
    split = load_digits_split()
    y = split.test_images
    asked = (split.test_labels + 3) % 10  # every image asked to become another digit
    folder = DIGITS_MODEL.parent / name
    clf = load_classifier()
    with torch.no_grad():
        cond = clf(_x0_prediction(folder, y, asked, 2.0)).argmax(1)
        null = clf(_x0_prediction(folder, y, torch.full_like(asked, 10), 2.0)).argmax(1)
    acc_cond = float((cond == asked).float().mean())
    acc_null = float((null == asked).float().mean())
    assert acc_cond > 0.8 and acc_null < 0.3, (acc_cond, acc_null)
