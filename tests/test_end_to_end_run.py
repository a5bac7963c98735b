"""``fit_mode: end-to-end`` as a Lightning training run: two processes give the result of one,
SIGTERM then ``--ckpt_path last`` gives the result of an uninterrupted run, references are
cached, bad settings are refused at start-up, and the run is watchable (logged metrics, plots).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import dode
from dode.files.solver_file import FittedSolver
from dode.lit.fit_modes import FitStopped

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["-c", str(ROOT / "configs/default.yaml"), "-c", str(ROOT / "configs/digits-end-to-end.yaml")]  # fmt: skip
SMALL = [
    "--data.fit_seeds", "0-15", "--data.val_seeds", "100-115", "--model.dtype", "float64",
    "--model.end_to_end.steps", "4", "--model.end_to_end.batch_size", "8",
    "--model.end_to_end.select_batch_size", "8", "--model.end_to_end.eval_every", "2",
    "--model.end_to_end.reference_nfe", "10", "--model.end_to_end.reference_batch_size", "4",
    "--wandb_mode", "disabled", "--trainer.accelerator", "cpu",
    "--trainer.enable_progress_bar", "false", "--samples.num_samples", "0",
    "--lambda_plot.enabled", "false",
]  # fmt: skip
FIELDS = ("sigmas", "lambdas", "coefficients", "shift")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a: FittedSolver, b: FittedSolver, rtol: float) -> None:
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None:
            err = float((x - y).norm() / x.norm().clamp_min(1e-30))
            assert err <= rtol, (f, err, x, y)


def test_two_processes_give_the_grid_coefficients_and_shift_of_one(tmp_path):
    from dode.cli.train import main

    cache = ["--data.cache_dir", str(tmp_path / "cache")]
    one = FittedSolver.load(main(CONFIGS + SMALL + cache + ["--run_dir", str(tmp_path / "one")]))
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "dode.train", *CONFIGS, *SMALL, *cache,
         "--trainer.devices", "2", "--trainer.strategy", "ddp",
         "--run_dir", str(tmp_path / "two")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = FittedSolver.load(tmp_path / "two" / "solver.safetensors")
    r1, r2 = one.metrics["end_to_end"], two.metrics["end_to_end"]
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert r1["accepted"] and r2["accepted"] and r1["best_step"] == r2["best_step"]
    _close(one, two, 1e-5)
    assert r1["warm_start_grid"] == r2["warm_start_grid"]
    # the config's objective: L2 + the digits classifier's feature Fréchet term, a statistic of
    # the whole mini-batch, and its quality watch over the gathered selection samples
    assert r1["objective"] == r2["objective"] == "default (l2+0.01*fd)"
    assert r2["quality_level"] == 0.95 and len(r2["quality_curve"]) == len(r2["select_curve"])
    torch.testing.assert_close(torch.tensor(r2["quality_curve"]),
                               torch.tensor(r1["quality_curve"]), rtol=1e-5, atol=1e-9)  # fmt: skip
    torch.testing.assert_close(torch.tensor(r2["losses"]), torch.tensor(r1["losses"]), rtol=1e-6,
                               atol=0)  # fmt: skip
    # the second run read the references the first one cached
    assert "references (" not in proc.stderr


E2E = dict(
    model="gmm-digits", solver="dpm_solver_pp", solver_options={"order": 2}, nfe=4,
    fit_mode="end-to-end", fit_seeds="0-31", val_seeds="100-131",
    end_to_end={"steps": 9, "reference_nfe": 20, "batch_size": 8, "reference_batch_size": 8,
                "select_batch_size": 16},
)  # fmt: skip
TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
           "enable_model_summary": False}  # fmt: skip
QUIET = dict(samples={"num_samples": 0}, lambda_plot={"enabled": False}, wandb_mode="disabled")


class _TermAt(pl.Callback):
    """Send this process SIGTERM after the optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _record(fitted: FittedSolver) -> dict:
    rec = dict(fitted.metrics["end_to_end"])
    rec.pop("seconds")
    return rec


def test_sigterm_then_ckpt_path_last_gives_the_uninterrupted_solver_file(tmp_path, capsys):
    cache = str(tmp_path / "cache")
    full = dode.fit(**E2E, **QUIET, trainer=TRAINER, cache_dir=cache, run_dir=tmp_path / "full")
    run = tmp_path / "run"
    with pytest.raises(FitStopped, match="SIGTERM"):
        dode.fit(**E2E, **QUIET, trainer={**TRAINER, "callbacks": [_TermAt(5)]},
                 cache_dir=cache, run_dir=run)  # fmt: skip
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not (run / "solver.safetensors").exists()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["dode"]["mode"]["curve"][-1][0] == 4
    assert not any(k.startswith("denoiser.") for k in ckpt["state_dict"])
    other = {**E2E, "end_to_end": {**E2E["end_to_end"], "lr": 0.03}}
    with pytest.raises(ValueError, match=r"other end_to_end settings \(lr\)"):
        dode.fit(**other, **QUIET, trainer=TRAINER, cache_dir=cache, run_dir=run,
                 ckpt_path="last")  # fmt: skip
    with pytest.raises(ValueError, match="other val_seeds"):
        dode.fit(**{**E2E, "val_seeds": "100-130"}, **QUIET, trainer=TRAINER, cache_dir=cache,
                 run_dir=run, ckpt_path="last")  # fmt: skip
    resumed = dode.fit(**E2E, **QUIET, trainer=TRAINER, cache_dir=cache, run_dir=run,
                       ckpt_path="last")  # fmt: skip
    on_disk = FittedSolver.load(run / "solver.safetensors")
    for f in FIELDS:
        x, y = getattr(full, f), getattr(on_disk, f)
        assert (x is None and y is None) or torch.equal(x, y), f
    assert _record(resumed) == _record(full)
    assert _record(full)["steps_run"] == 9 and [c[0] for c in _record(full)["select_curve"]] == [
        0, 2, 4, 6, 8, 9]  # fmt: skip

    # the same as the plain loop of fit_end_to_end on the same seeds, references and warm start
    from dode.denoisers.loading import load_denoiser
    from dode.learned_solver import fit_end_to_end
    from dode.noise import noise_from_seeds, parse_seeds
    from dode.solvers import get_solver
    from dode.standard_grids import reference_solution

    den = load_denoiser("gmm-digits")
    z = noise_from_seeds(parse_seeds("0-31"), den.sample_shape)
    zs = noise_from_seeds(parse_seeds("100-131"), den.sample_shape)
    ref, rs = reference_solution(den, z, nfe=20), reference_solution(den, zs, nfe=20)
    core = fit_end_to_end(
        den, get_solver("dpm_solver_pp", order=2),
        _record(full)["init_sigmas"], z, ref, select_noise=zs, select_reference=rs, steps=9,
        batch_size=8, select_batch_size=16,
    )  # fmt: skip
    _close(core, full, 1e-9)
    rc, rf = core.metrics["end_to_end"], _record(full)
    assert rc["losses"] == pytest.approx(rf["losses"], rel=1e-9)
    # the run's quality watch sees what the plain loop's sees (the default objective's spectrum
    # and moments without a feature network), at every evaluation and at the end
    assert rf["objective"] == rc["objective"] == "default (l2)"
    assert [q[0] for q in rf["quality_curve"]] == [q[0] for q in rc["quality_curve"]]
    assert [q[1] for q in rf["quality_curve"]] == pytest.approx([q[1] for q in rc["quality_curve"]],
                                                                rel=1e-9)  # fmt: skip
    for key in ("select_quality_base", "select_quality_limit", "select_quality_fitted"):
        assert rf[key] == pytest.approx(rc[key], rel=1e-9), key

    # a fresh run into the finished folder says it finished; --ckpt_path last redoes the end
    with pytest.raises(ValueError, match="already holds a run that finished"):
        dode.fit(**E2E, **QUIET, trainer=TRAINER, cache_dir=cache, run_dir=run)
    again = dode.fit(**E2E, **QUIET, trainer=TRAINER, cache_dir=cache, run_dir=run,
                     ckpt_path="last")  # fmt: skip
    assert torch.equal(again.sigmas, full.sigmas) and _record(again) == _record(full)


def test_a_bad_end_to_end_setting_is_refused_before_any_reference(tmp_path, capsys):
    from dode.cli.train import main

    run, cache = tmp_path / "run", tmp_path / "cache"
    for key, value, message in (
        ("coefficients", "foo", "unknown coefficients 'foo'"),
        ("reference_batch_size", "0", "reference_batch_size must be a positive integer"),
        ("patience", "-1", "patience must be an integer >= 0"),
        ("features", "feature_hook", "end_to_end.features must be 'package.module:factory'"),
        ("features", "no_such_pkg:f", "cannot import end_to_end.features factory 'no_such_pkg:f'"),
    ):
        with pytest.raises(SystemExit) as e:
            main(CONFIGS + SMALL + ["--data.cache_dir", str(cache), "--run_dir", str(run),
                                    f"--model.end_to_end.{key}", value])  # fmt: skip
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "end_to_end" in err, err[-2000:]
        assert not run.exists() and not cache.exists()


def test_references_are_cached_and_a_damaged_entry_is_recomputed(tmp_path, capsys):
    cache = tmp_path / "cache"
    kw = dict(**E2E, **QUIET, trainer={**TRAINER, "enable_checkpointing": False},
              cache_dir=str(cache))  # fmt: skip
    kw["end_to_end"] = {**kw["end_to_end"], "steps": 2}
    first = dode.fit(**kw, run_dir=tmp_path / "a")
    assert "references (fit_seeds)" in capsys.readouterr().err  # the progress bar
    files = sorted(cache.rglob("*.safetensors"))
    assert len(files) == 8  # 64 seeds in batches of 8: never all seeds at once
    second = dode.fit(**kw, run_dir=tmp_path / "b")
    assert "references (" not in capsys.readouterr().err
    assert _record(second) == _record(first)
    files[0].write_bytes(files[0].read_bytes()[:-8] + b"\0" * 8)
    third = dode.fit(**kw, run_dir=tmp_path / "c")
    err = capsys.readouterr().err
    assert "is not used" in err
    assert _record(third) == _record(first)
    assert len(sorted(cache.rglob("*.safetensors"))) == 8  # recomputed and written again


def test_accumulation_logging_and_plots(tmp_path):
    """Gradient accumulation runs; the loss, learning rates and selection MSE are logged per
    step / validation, and the learned solver's plot and the sample grid reach W&B."""
    from test_train_cli import _wandb_history_keys

    kw = dict(**E2E, trainer={**TRAINER, "accumulate_grad_batches": 2}, cache_dir=None,
              samples={"num_samples": 4}, wandb_mode="offline")  # fmt: skip
    kw["end_to_end"] = {**kw["end_to_end"], "steps": 4}
    fitted = dode.fit(**kw, run_dir=tmp_path / "run")
    rec = _record(fitted)
    assert rec["accumulate_grad_batches"] == 2 and rec["steps_run"] == 4
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "lr/grid", "lr/coefficients", "lr/shift", "e2e/select_mse",
                "val/select_mse"):  # fmt: skip
        assert key in header, header
    assert (tmp_path / "run" / "end_to_end.png").is_file()
    assert (tmp_path / "run" / "samples.png").is_file()
    keys = _wandb_history_keys(tmp_path / "run")
    for key in ("train/loss", "lr/grid", "e2e/select_mse", "val/select_mse",
                "end_to_end/filenames", "samples/filenames"):  # fmt: skip
        assert key in keys, sorted(keys)


def test_too_few_seeds_per_process_is_refused_before_the_run_folder(tmp_path):
    from dode.lit import DODEModule, NoiseDataModule
    from dode.lit.api import run_fit

    module = DODEModule(model="gmm-digits", solver="ddim", nfe=3, fit_mode="end-to-end",
                        end_to_end={"steps": 2, "batch_size": 1, "reference_nfe": 10})  # fmt: skip
    data = NoiseDataModule(fit_seeds="0-7", val_seeds="100-107", cache_dir=None)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         default_root_dir=str(tmp_path / "run"))  # fmt: skip
    with pytest.raises(ValueError, match="over 2 processes needs at least 2 seeds"):
        run_fit(module, data, trainer, solver_file=tmp_path / "run" / "solver.safetensors")
    assert not (tmp_path / "run").exists()
