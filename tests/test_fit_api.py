"""``dode.fit``: the Lightning fit from Python, the same code path as ``python -m dode.train``.

On the exact Gaussian-mixture digits model (``gmm-digits``, tiny): ``dode.fit`` gives the λ of
``python -m dode.train`` with the same settings and of the direct closed form
``dode.fit_lambdas``; ``import dode`` stays free of Lightning; it keeps the defaults of the module and data module it
builds (both are the specs').
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dode
from dode.denoisers.loading import load_denoiser
from dode.files.solver_file import FittedSolver
from dode.noise import noise_from_seeds, parse_seeds

ROOT = Path(__file__).resolve().parents[1]

SETTINGS = dict(
    model="gmm-digits", solver="ddim", nfe=4, teacher_factor=4, fit_seeds="0-31",
    val_seeds="100-107", batch_size=16, cache_dir=None,
)  # fmt: skip
QUIET = dict(
    samples={"num_samples": 0}, lambda_plot={"enabled": False}, wandb_mode="disabled",
    trainer={"accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
             "enable_model_summary": False, "enable_checkpointing": False},
)  # fmt: skip


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fit_equals_the_cli_and_fit_lambdas(tmp_path, one_thread):
    fitted = dode.fit(**SETTINGS, **QUIET, run_dir=tmp_path / "api")
    assert isinstance(fitted, FittedSolver)
    on_disk = FittedSolver.load(tmp_path / "api" / "solver.safetensors")
    assert torch.equal(on_disk.lambdas, fitted.lambdas)
    assert fitted.nfe == 4 and fitted.lambdas.abs().max() > 0
    assert fitted.metrics["val/mse_final"] < fitted.metrics["val/mse_base_final"]

    from dode.cli.train import main

    s = SETTINGS
    path = main([
        "--model.model", s["model"], "--model.solver", s["solver"], "--model.nfe", "4",
        "--model.teacher_factor", "4", "--data.fit_seeds", s["fit_seeds"],
        "--data.val_seeds", s["val_seeds"], "--data.batch_size", "16", "--data.cache_dir", "null",
        "--samples.num_samples", "0", "--lambda_plot.enabled", "false",
        "--wandb_mode", "disabled", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
        "--run_dir", str(tmp_path / "cli"),
    ])  # fmt: skip
    cli = FittedSolver.load(path)
    assert torch.equal(cli.lambdas, fitted.lambdas)
    assert torch.equal(cli.sigmas, fitted.sigmas)

    den = load_denoiser("gmm-digits")
    noise = noise_from_seeds(parse_seeds(s["fit_seeds"]), den.sample_shape, torch.float32)
    ref = dode.fit_lambdas(den, "ddim", noise, fitted.sigmas, teacher_factor=4, batch_size=16)
    assert torch.allclose(fitted.lambdas, ref, rtol=1e-4, atol=1e-5), (fitted.lambdas, ref)


def test_fit_kwargs_reads_a_train_config(tmp_path, one_thread):
    from dode.lit import Specs
    from dode.lit.api import fit_kwargs

    kw = fit_kwargs(ROOT / "configs" / "tiny.yaml")
    assert kw["model"] == "gmm-digits" and kw["nfe"] == 4 and kw["fit_seeds"] == "0-127"
    assert kw["trainer"] == {"accelerator": "cpu", "devices": 1}
    assert kw["fid"]["feature"] == "pixels"
    assert set(kw) <= set(Specs.defaults())  # every key is a setting dode.fit takes
    with pytest.raises(ValueError, match="unknown setting model.colour"):
        fit_kwargs({"model": {"colour": "red"}})
    with pytest.raises(ValueError, match="does not exist"):
        fit_kwargs(tmp_path / "nowhere.yaml")


def test_fit_rejects_bad_settings_with_one_message(tmp_path):
    with pytest.raises(ValueError, match="unknown solver 'rk99'"):
        dode.fit("gmm-digits", "rk99", run_dir=tmp_path)
    with pytest.raises(ValueError, match="use_distributed_sampler must stay false"):
        dode.fit(**SETTINGS, wandb_mode="disabled", run_dir=tmp_path,
                 trainer={"use_distributed_sampler": True})  # fmt: skip
    assert not (tmp_path / "solver.safetensors").exists()


def test_fit_keeps_the_defaults_of_the_classes_it_builds():
    """``dode.fit`` and the classes it builds take their defaults from the same specs."""
    from dode.lit import DataSpec, DODEModule, NoiseDataModule, Specs
    from dode.lit.specs import ModuleSpec

    defaults = Specs.defaults()
    assert Specs.from_kwargs().kwargs() == defaults
    module = DODEModule(model="gmm-digits")
    assert dict(module.hparams) == {**ModuleSpec().kwargs(), "model": "gmm-digits"}
    assert dict(NoiseDataModule().hparams) == DataSpec().kwargs()
    for name, value in {**ModuleSpec().kwargs(), **DataSpec().kwargs()}.items():
        if name != "model":
            assert defaults[name] == value, name


def test_import_dode_does_not_import_lightning():
    code = "import sys, dode; assert not any(m.startswith('lightning') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
