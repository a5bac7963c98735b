"""DODEModule / NoiseDataModule in one process: the closed-form fit as Lightning epochs against
``dode.fit_lambdas``, checkpoints without the network, the teacher cache, sharding, the
gradient fit modes against the closed form, and the Fréchet-distance callback.

The model is an exact Gaussian mixture (its ODE is the true one), so every fit is cheap.
"""

from __future__ import annotations

import logging
import warnings

import lightning as L
import pytest
import torch

import dode
from dode.denoisers import GaussianMixtureDenoiser
from dode.denoisers.loading import MODELS, register_model
from dode.lit import DODEModule, NoiseDataModule
from dode.lit.data import rank_batches
from dode.lit.gradient import GradientFit
from dode.noise import noise_from_seeds, parse_seeds

FIT, VAL = "0-47", "1000-1015"


@pytest.fixture(scope="module", autouse=True)
def _setup():
    """A 3-component mixture in 16 dims (1×4×4 'images'), registered as 'test-gmm'; one thread
    (tiny tensors: threads only add contention)."""
    g = torch.Generator().manual_seed(0)
    d = 16
    a = torch.randn(3, d, d, generator=g, dtype=torch.float64) * 0.3
    means = torch.randn(3, d, generator=g, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) + 0.05 * torch.eye(d, dtype=torch.float64)

    @register_model("test-gmm")
    def _make(**_):
        return GaussianMixtureDenoiser(means, covs, sample_shape=(1, 4, 4))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    yield
    torch.set_num_threads(threads)
    MODELS.pop("test-gmm", None)


def _trainer(tmp_path=None, **kw) -> L.Trainer:
    opts = dict(
        accelerator="cpu",
        devices=1,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    opts.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return L.Trainer(**opts)


def _module(**kw) -> DODEModule:
    opts = dict(model="test-gmm", solver="ddim", nfe=4, dtype="float64")
    opts.update(kw)
    return DODEModule(**opts)


def _fit(module, data, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(**kw).fit(module, data)
    return module


@pytest.fixture(scope="module")
def lstsq_fit(tmp_path_factory):
    """One lstsq fit (3 batches of 16, float64) with a checkpoint, reused by several tests."""
    root = tmp_path_factory.mktemp("lstsq")
    m = _module(schedule_options={"sigma_min": 0.05})
    data = NoiseDataModule(
        fit_seeds=FIT, val_seeds=VAL, batch_size=16, cache_dir=str(root / "cache")
    )
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0)
    _fit(m, data, enable_checkpointing=True, callbacks=[ckpt])
    return m, data, root


def test_lstsq_epochs_match_fit_lambdas(lstsq_fit):
    m, _, _ = lstsq_fit
    noise = noise_from_seeds(parse_seeds(FIT), m.sample_shape, torch.float64)
    ref, info = dode.fit_lambdas(
        m.denoiser, "ddim", noise, m.sigmas, 10, space=m.teacher_space, return_info=True
    )
    assert torch.allclose(m.lambdas.detach(), ref, rtol=0, atol=1e-10)
    assert int(m.num_fitted) == 4 and m.lambdas[0] == 0
    assert m.fit_info.mse_after == pytest.approx(info.mse_after, rel=1e-9)
    # Validation (other seeds): the fitted λ beat the base solver at the end.
    assert m.val_metrics["val/mse_final"] < 0.5 * m.val_metrics["val/mse_base_final"]


def test_checkpoint_holds_lambdas_not_the_network(lstsq_fit):
    m, _, root = lstsq_fit
    ckpt = torch.load(root / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert set(ckpt["state_dict"]) == {"lambdas", "num_fitted"}
    assert torch.equal(ckpt["state_dict"]["lambdas"], m.lambdas.detach())
    assert ckpt["dode"]["problem_key"] == m.problem_key()
    fresh = _module(schedule_options={"sigma_min": 0.05})
    fresh.load_state_dict(ckpt["state_dict"])
    fresh.on_load_checkpoint(ckpt)
    assert torch.equal(fresh.lambdas.detach(), m.lambdas.detach())
    other = _module(schedule_options={"sigma_min": 0.05}, nfe=3)
    with pytest.raises(ValueError, match="another problem"):
        other.on_load_checkpoint(ckpt)


def test_teacher_cache_reused_with_another_batch_size(lstsq_fit, monkeypatch):
    m, data, root = lstsq_fit
    seeds = data.fit_seeds[:20]
    first = data.states_for(seeds, m.teacher_source())
    again = NoiseDataModule(
        fit_seeds=FIT, val_seeds=VAL, batch_size=5, cache_dir=str(root / "cache")
    )

    def boom(noise):
        raise AssertionError("teacher recomputed although cached")

    monkeypatch.setattr(m, "compute_teacher", boom)
    second = again.states_for(seeds, m.teacher_source())
    assert torch.equal(first["teacher"], second["teacher"])
    assert torch.equal(first["noise"], second["noise"])
    # The cached final state is the teacher's sample: a 10x finer solve of the same ODE.
    noise = first["noise"][:4]
    fine = dode.grids.schedules.refine(m.sigmas, 10, space="rho")
    x = dode.sample(m.denoiser, "ddim", noise, fine)
    assert torch.allclose(second["teacher"][:4, -1], x, atol=1e-12)


@pytest.mark.parametrize("n,world,bs", [(11, 2, 3), (64, 3, 8), (7, 4, 2), (100, 1, 30)])
def test_rank_batches_cover_each_seed_once(n, world, bs):
    seeds = list(range(500, 500 + n))
    per_rank = [rank_batches(seeds, r, world, bs) for r in range(world)]
    served = [s for batches in per_rank for b in batches for s in b]
    assert sorted(served) == seeds  # every seed, none twice, no padding
    assert len({len(b) for b in per_rank}) == 1  # same number of batches on every rank
    assert all(0 < len(b) <= bs for batches in per_rank for b in batches)


def test_rank_batches_rejects_too_few_seeds():
    with pytest.raises(ValueError, match="at least one per process"):
        rank_batches([1, 2], 0, 4, 8)
    with pytest.raises(ValueError, match="empty batch"):  # ranks get 2, 2, 2, 1 seeds
        rank_batches(list(range(7)), 3, 4, 1)


def test_datamodule_rejects_overlapping_seeds():
    with pytest.raises(ValueError, match="overlap"):
        NoiseDataModule(fit_seeds="0-10", val_seeds="10-20")


def _final_mse(m: DODEModule, batch: dict, lambdas) -> float:
    out = m.trajectory(batch["noise"], lambdas)[1][-1]
    return float(((out - batch["teacher"][:, -1]) ** 2).mean())


def test_sgd_local_reaches_the_closed_form_error(lstsq_fit):
    ref, data, _ = lstsq_fit
    m = _module(schedule_options={"sigma_min": 0.05}, fit_mode="sgd-local", lr=0.1)
    small = NoiseDataModule(
        fit_seeds=FIT, val_seeds=VAL, batch_size=8, cache_dir=data.hparams.cache_dir
    )
    _fit(m, small, max_epochs=20, limit_val_batches=0)
    batch = small.states_for(small.fit_seeds, ref.teacher_source())
    err_lstsq = _final_mse(ref, batch, ref.lambdas.detach())
    err_sgd = _final_mse(ref, batch, m.lambdas.detach())
    err_base = _final_mse(ref, batch, None)
    assert err_sgd <= 1.05 * err_lstsq
    assert err_lstsq < 0.5 * err_base


def test_sgd_global_backpropagates_through_the_trajectory(lstsq_fit):
    _, data, _ = lstsq_fit
    m = _module(schedule_options={"sigma_min": 0.05}, fit_mode="sgd-global", lr=0.1)
    small = NoiseDataModule(
        fit_seeds=FIT, val_seeds=VAL, batch_size=16, cache_dir=data.hparams.cache_dir
    )
    batch = small.states_for(small.fit_seeds, m.teacher_source())
    # Gradients reach every λ but λ_0 (which multiplies o_0 − o_0 = nothing).
    sig, states = GradientFit(m.fit_problem, "global").global_states(m, batch["noise"])
    target = m.fit_problem.target(batch["teacher"])
    loss = torch.stack([((x - target(s)) ** 2).mean() for s, x in zip(sig, states)]).mean()
    loss.backward()
    g = m.lambdas.grad
    assert g[0] == 0 and (g[1:] != 0).all()
    m.lambdas.grad = None
    before = _final_mse(m, batch, None)
    _fit(m, small, max_epochs=8, limit_val_batches=0)
    assert _final_mse(m, batch, m.lambdas.detach()) < 0.5 * before


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="unknown solver"):
        _module(solver="nope")
    with pytest.raises(ValueError, match="NFE=2"):
        _module(solver="heun", nfe=2)
    with pytest.raises(ValueError, match="no ᾱ table"):
        _module(schedule="time_uniform")
    with pytest.raises(ValueError, match="teacher_factor"):
        _module(teacher_factor=1)


def test_inception_without_weights_says_how_to_get_them(monkeypatch, tmp_path):
    from dode.lit import FrechetCallback

    monkeypatch.delenv("DODE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as e:
        FrechetCallback(feature="inception")
    msg = str(e.value)
    assert "DODE_INCEPTION_WEIGHTS" in msg and "weights-inception-2015-12-05" in msg
    assert "https://github.com/toshas/torch-fidelity/releases" in msg
    monkeypatch.setenv("DODE_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="missing.pth"):
        FrechetCallback(feature="inception")


def test_frechet_callback_features_match_numpy_frechet(lstsq_fit):
    """torchmetrics' Fréchet distance on the pluggable pixel features equals the scipy one."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    from dode.evaluation.fid import PixelFeatures
    from dode.lit.callbacks import _Features, to_uint8_images
    from dode.metrics import frechet_distance

    m, data, _ = lstsq_fit
    batch = data.states_for(list(range(2000, 2064)), m.teacher_source())
    real = to_uint8_images(batch["teacher"][:, -1])
    fake = to_uint8_images(m.sample_final(batch["noise"], dode=False))
    feats = _Features(PixelFeatures(grid=2), m.sample_shape)
    metric = FrechetInceptionDistance(feature=feats, reset_real_features=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    ref = frechet_distance(feats(real), feats(fake))
    assert float(metric.compute()) == pytest.approx(ref, rel=1e-6)


def test_each_fit_mode_delegates_to_its_own_class(lstsq_fit, tmp_path):
    """lstsq, sgd-* and end-to-end each hand their work to one class; end-to-end runs in the
    Trainer loop: its own parameters (``learned``), λ untouched."""
    from dode.lit.end_to_end import EndToEndFit
    from dode.lit.lstsq import LstsqFit

    m, data, _ = lstsq_fit
    assert isinstance(m.mode_fit, LstsqFit) and not m.automatic_optimization
    for mode, scope in (("sgd-local", "local"), ("sgd-global", "global")):
        g = _module(fit_mode=mode)
        assert isinstance(g.mode_fit, GradientFit) and g.mode_fit.scope == scope
        assert g.automatic_optimization
        with pytest.raises(ValueError, match="needs fit_mode end-to-end"):
            g.fit_end_to_end([0, 1], [2, 3])
    e2e = _module(fit_mode="end-to-end", end_to_end={"steps": 1})
    assert isinstance(e2e.mode_fit, EndToEndFit) and e2e.mode_fit.options == {"steps": 1}
    small = NoiseDataModule(
        fit_seeds=FIT, val_seeds=VAL, batch_size=16, cache_dir=data.hparams.cache_dir
    )
    _fit(e2e, small)
    assert float(e2e.lambdas.detach().abs().sum()) == 0
    assert e2e.learned is not None and e2e.mode_fit.curve[-1][0] == 1
    rec = e2e.fitted_solver().metrics["end_to_end"]
    assert rec["steps_run"] == 1 and rec["num_fit_seeds"] == 48
