"""Helpers that have one home: images, Fréchet distance, factory import, cache root, W&B mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from dode.evaluation import fid as fidlib
from dode.files.cache import cache_root
from dode.files.images import image_grid, to_uint8, to_uint8_hwc, to_uint8_images
from dode.metrics import FrechetReference, frechet_distance_from_stats


def test_to_uint8_rounds_like_diffusers_and_clips():
    x = torch.cat([torch.linspace(-1.5, 1.5, 10_001), torch.tensor([-1.0, 0.0, 1.0])])
    ref = ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # without clip first
    assert torch.equal(to_uint8(x), ref)
    assert to_uint8(torch.tensor([-1.0, 1.0])).tolist() == [0, 255]
    img = x[:48].reshape(1, 3, 4, 4)
    assert torch.equal(to_uint8_images(img), ref[:48].reshape(1, 3, 4, 4))
    assert to_uint8_hwc(img).shape == (1, 4, 4, 3)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        to_uint8_images(x)


def test_image_grid_layout():
    imgs = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3, 1) + 1
    g = image_grid(imgs, per_row=3, scale=2)
    assert g.shape == (2 * (2 * 3 + 1), 2 * (3 * 4 + 1), 3)  # 2 rows, 3 columns, gray → RGB
    small = image_grid(imgs, per_row=3, scale=1)
    assert (small[1:3, 1:4, 0] == imgs[0, ..., 0]).all()
    assert (small[4:6, 5:8, 1] == imgs[4, ..., 0]).all()  # 5th image: 2nd row, 2nd column
    assert (small[0] == 255).all() and (small[4:6, 9:12] == 255).all()  # gaps, empty slot


def _scipy_frechet(mu1, s1, mu2, s2):
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    d = mu1 - mu2
    return float(d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim", [3, 64])
def test_one_frechet_distance_equals_scipy_and_torch_fidelity(dim):
    rng = np.random.default_rng(dim)
    a = rng.standard_normal((4 * dim, dim)) @ rng.standard_normal((dim, dim))
    b = rng.standard_normal((4 * dim, dim)) @ rng.standard_normal((dim, dim)) + 0.3
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    ref = _scipy_frechet(mu1, s1, mu2, s2)
    got = [
        frechet_distance_from_stats(mu1, s1, mu2, s2),
        frechet_distance_from_stats(mu2, s2, mu1, s1),
        fidlib.fid_from_stats(mu1, s1, mu2, s2),
        FrechetReference(mu2, s2).distance(stats=(mu1, s1)),
    ]
    for g in got:
        assert g == pytest.approx(ref, rel=1e-8)
    import torch_fidelity.metric_fid as tf

    value = tf.fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert got[2] == pytest.approx(value[tf.KEY_METRIC_FID], rel=1e-8)


def test_feature_extractor_factory_uses_the_one_importer():
    with pytest.raises(ValueError, match="cannot import feature extractor 'no_such_mod:f'"):
        fidlib.get_feature_extractor("no_such_mod:f")
    fx = fidlib.get_feature_extractor("dode.evaluation.fid:PixelFeatures")
    assert callable(fx) and fx.name


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("DODE_CACHE", str(tmp_path))
    assert cache_root("teacher") == tmp_path / "teacher"
    assert fidlib.default_cache_dir() == tmp_path / "fid-refs"
    monkeypatch.setenv("DODE_CACHE", "")
    assert cache_root().parts[-2:] == (".cache", "dode")


@pytest.mark.parametrize(
    "requested, env_mode, key, expected",
    [
        ("online", "offline", None, "online"),
        ("disabled", None, "k", "disabled"),
        ("auto", None, None, "offline"),
        ("auto", None, "k", "online"),
        ("auto", "offline", "k", "offline"),
        ("auto", "dryrun", "k", "offline"),
        ("auto", "disabled", "k", "disabled"),
    ],
)
def test_wandb_mode(monkeypatch, requested, env_mode, key, expected):
    from dode.tracking import wandb_mode

    for name, value in (("WANDB_MODE", env_mode), ("WANDB_API_KEY", key)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert wandb_mode(requested) == expected


def test_wandb_mode_rejects_unknown():
    from dode.tracking import wandb_mode

    with pytest.raises(ValueError, match="unknown W&B mode"):
        wandb_mode("sometimes")
