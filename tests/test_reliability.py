"""Reliability (issue 10): no silent wrong result, no lost history, one clear error for every bad
file and path. One section per case of docs/reliability.md; each test fails on the code before
the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import dode
from dode.cli.evaluate import main as evaluate_main
from dode.cli.sample import main as sample_main
from dode.denoisers import CallableDenoiser, gaussian
from dode.denoisers.loading import load_denoiser
from dode.evaluation.config import EvalConfig
from dode.evaluation.run import evaluate
from dode.files.solver_file import FittedSolver
from dode.files.weights import weights_hash
from dode.grids.schedules import karras
from dode.lit.data import TeacherCache
from dode.solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def den():
    return gaussian(torch.zeros(2), torch.tensor([[1.0, 0.2], [0.2, 0.5]], dtype=torch.float64))


@pytest.fixture
def noise():
    return torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def gmm():
    return load_denoiser("gmm-digits")


def _fitted(gmm, lambdas=(0.0, 0.1, 0.2), **model) -> FittedSolver:
    return FittedSolver(
        solver=get_solver("ddim").config(),
        sigmas=karras(3, 0.01, 80.0),
        lambdas=torch.tensor(lambdas, dtype=torch.float64),
        teacher={"factor": 4},
        model={"id": "gmm-digits", "weights_hash": weights_hash(gmm), "dtype": "float32", **model},
    )


def _rewrite(path: Path, out: Path, *, tensors=None, meta=None) -> Path:
    """Copy a fitted-solver file with other tensors or metadata (no validation)."""
    with safe_open(str(path), framework="pt") as f:
        old_meta = json.loads(f.metadata()["dode"])
        old = {k: f.get_tensor(k) for k in f.keys()}
    save_file({**old, **(tensors or {})}, out, metadata={"dode": json.dumps(meta or old_meta)})
    return out


def _one_error_line(err: str, match: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert len(errors) == 1 and match in errors[0], err
    assert "Traceback" not in err


def _sample_cli_error(argv: list[str], capsys, match: str) -> None:
    with pytest.raises(SystemExit) as e:
        sample_main(argv)
    assert e.value.code == 2
    _one_error_line(capsys.readouterr().err, match)


# ---- 1. non-finite λ and σ -------------------------------------------------------------------


def test_non_finite_lambda_is_refused_by_the_file_and_by_sampling(gmm, den, noise, tmp_path):
    with pytest.raises(ValueError, match=r"λ\[2\] = nan is not finite"):
        _fitted(gmm, lambdas=(0.0, 0.1, float("nan")))
    with pytest.raises(ValueError, match=r"σ\[0\] = inf is not finite"):
        FittedSolver(
            solver={"name": "ddim"}, sigmas=[float("inf"), 1.0, 0.0], lambdas=torch.zeros(2)
        )
    good = _fitted(gmm)
    path = good.save(tmp_path / "good.safetensors")
    good.lambdas[1] = float("inf")  # changed after construction: save refuses, writes nothing
    with pytest.raises(ValueError, match=r"λ\[1\] = inf is not finite"):
        good.save(tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    nan_file = _rewrite(
        path,
        tmp_path / "nan.safetensors",
        tensors={"lambdas": torch.tensor([0.0, 0.1, float("nan")], dtype=torch.float64)},
    )
    with pytest.raises(ValueError, match=r"nan.safetensors.*λ\[2\] = nan is not finite"):
        FittedSolver.load(nan_file)
    # dode.sample names λ (before: NaN samples from the last λ, a "model returned
    # non-finite values" error from a middle one)
    for lam in ([0.0, 0.0, float("nan")], [0.0, float("nan"), 0.0]):
        with pytest.raises(ValueError, match=r"λ\[\d\] = nan is not finite"):
            dode.sample(den, "ddim", noise, karras(3), lam)


def test_correction_overflow_is_caught_at_the_corrected_output(noise):
    # finite λ, finite model outputs, but õ = o + λ (o − o_prev) overflows
    calls = []

    def fn(x, s):
        calls.append(1)
        return torch.full_like(x, 10.0 * (-1) ** len(calls))

    model = CallableDenoiser(fn, 0.01, 80.0)
    lam = torch.tensor([0.0, 0.0, 1e308], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"D-ODE correction made non-finite values at call 2"):
        dode.sample(model, "ddim", noise, karras(3), lam)


def test_non_finite_final_state_is_caught(noise):
    # a model whose finite outputs drive the final state to inf (float32 overflow in the update)
    big = CallableDenoiser(lambda x, s: torch.full_like(x, 3e38), 0.01, 80.0, prediction="eps")
    with pytest.raises(ValueError, match="final state .* is not finite"):
        dode.sample(big, "ddim", noise.float(), karras(3))


# ---- 2. the teacher cache is verified ------------------------------------------------------------


def _cache_file(cache: TeacherCache) -> Path:
    return next(cache.dir.glob("*.safetensors"))


def test_teacher_cache_entries_are_verified_and_recomputed(tmp_path, capsys):
    problem = {"model": {"id": "m", "weights_hash": "a" * 64}, "x": 1}
    states = torch.randn(3, 2, 4, dtype=torch.float32)
    TeacherCache(tmp_path, problem).put([0, 1, 2], states)
    cache = TeacherCache(tmp_path, problem)
    got = cache.get([0, 1, 2])
    assert torch.equal(torch.stack([got[s] for s in (0, 1, 2)]), states)

    # overwritten bytes behind an intact header: silently different states before
    f = _cache_file(cache)
    raw = bytearray(f.read_bytes())
    raw[-8:] = b"\x00\x00\x80\x3f" * 2  # two floats become 1.0
    f.write_bytes(bytes(raw))
    cache = TeacherCache(tmp_path, problem)
    assert cache.get([0, 1, 2]) == {} and 0 not in cache.index and not f.exists()
    err = capsys.readouterr().err
    assert "checksum does not match" in err and "recomputing" in err and len(err.splitlines()) == 1

    # NaN states (with a matching checksum) and an entry without a checksum: not used either
    from dode.lit.data import _checksum

    seeds = torch.tensor([0, 1, 2])
    bad = states.clone()
    bad[1, 0, 0] = float("nan")
    save_file({"seeds": seeds, "states": bad}, f, metadata={"sha256": _checksum(seeds, bad)})
    assert TeacherCache(tmp_path, problem).get([0, 1, 2]) == {}
    assert "NaN or inf" in capsys.readouterr().err
    save_file({"seeds": seeds, "states": states}, f)
    assert TeacherCache(tmp_path, problem).get([0]) == {}
    assert "no checksum" in capsys.readouterr().err


# ---- 3. weights hash of models without their own weights ----------------------------------------

FACTORIES = """
import torch
from dode.denoisers import CallableDenoiser


def closure(seed=0):
    w = torch.randn(2, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return CallableDenoiser(lambda x, s: x @ w / (1 + s**2), 0.01, 80.0, sample_shape=(2,))


def analytic(scale=1.0):
    return CallableDenoiser(lambda x, s: scale * x / (1 + s**2), 0.01, 80.0, sample_shape=(2,))
"""


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "rel_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("rel_factories", None)
    yield "rel_factories"
    sys.modules.pop("rel_factories", None)


def test_weightless_models_are_told_apart_or_not_vouched_for(factories, tmp_path, capsys):
    a0 = weights_hash(load_denoiser(f"{factories}:closure", seed=0))
    a1 = weights_hash(load_denoiser(f"{factories}:closure", seed=1))
    assert a0 and a1 and a0 != a1  # tensors in the closure (before: sha256 of nothing, equal)
    assert a0 == weights_hash(load_denoiser(f"{factories}:closure", seed=0))
    s1 = weights_hash(load_denoiser(f"{factories}:analytic", scale=1.0))
    s2 = weights_hash(load_denoiser(f"{factories}:analytic", scale=2.0))
    assert s1 and s2 and s1 != s2  # no tensors: the factory and its arguments
    net = torch.nn.Linear(2, 2)
    bound = CallableDenoiser(net.forward, 0.01, 80.0)
    h = weights_hash(bound)
    with torch.no_grad():
        net.weight.add_(1.0)
    assert h and weights_hash(bound) != h  # a bound method's module
    anon = CallableDenoiser(lambda x, s: x / (1 + s**2), 0.01, 80.0, sample_shape=(2,))
    assert weights_hash(anon) is None
    # the teacher cache is off for such a model, with one notice
    cache = TeacherCache(tmp_path / "c", {"model": {"id": "anon", "weights_hash": None}})
    cache.put([0], torch.zeros(1, 2, 2))
    assert cache.dir is None and not (tmp_path / "c").exists()
    assert "not cached" in capsys.readouterr().err


def test_sample_refuses_to_vouch_for_unidentified_weights(gmm, tmp_path, capsys):
    path = _fitted(gmm, weights_hash=None).save(tmp_path / "f.safetensors")
    args = ["--solver_file", str(path), "--seeds", "0-1", "--no_png"]
    _sample_cli_error(args + ["--out", str(tmp_path / "a")], capsys, "--ignore_model_hash")
    assert not (tmp_path / "a").exists()
    sample_main(args + ["--out", str(tmp_path / "b"), "--ignore_model_hash"])
    assert (tmp_path / "b" / "samples.npz").is_file()


# ---- 4. dode.evaluate refuses another model's solver file like dode.sample ----------------------


def _eval_cfg(out: Path, **kw) -> EvalConfig:
    base = dict(seeds="0-3", batch_size=4, out=str(out), fid=False, log=None, wandb=False)
    base.update(progress=False, accelerator="cpu", devices=1)
    base.update(kw)
    return EvalConfig(**base)


def test_evaluate_refuses_a_file_fitted_on_other_weights(gmm, tmp_path, capsys):
    path = _fitted(gmm, weights_hash="0" * 64).save(tmp_path / "other.safetensors")
    code = evaluate_main(
        ["--solver_file", str(path), "--seeds", "0-3", "--out", str(tmp_path / "e"),
         "--fid", "false", "--log", "null", "--wandb", "false", "--accelerator", "cpu",
         "--devices", "1", "--progress", "false"]
    )  # fmt: skip
    assert code == 2
    _one_error_line(capsys.readouterr().err, "--ignore_model_hash")
    assert not (tmp_path / "e").exists()
    log = tmp_path / "log.jsonl"
    rec = evaluate(
        _eval_cfg(tmp_path / "f", solver_file=str(path), ignore_model_hash=True, log=str(log))
    )
    assert rec["model_check"] == "ignored"
    assert json.loads(log.read_text())["model_check"] == "ignored"
    _sample_cli_error(
        ["--solver_file", str(path), "--out", str(tmp_path / "s")], capsys, "--ignore_model_hash"
    )


# ---- 5. output folders ---------------------------------------------------------------------------


def test_evaluate_out_refuses_foreign_files_and_names_a_junk_png(gmm, tmp_path):
    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    foreign = tmp_path / "foreign"
    (foreign / "samples" / "000000").mkdir(parents=True)
    (foreign / "samples" / "000000" / "000001.png").write_bytes(b"not mine")
    with pytest.raises(ValueError, match="holds no run record"):
        evaluate(_eval_cfg(foreign, solver_file=str(path)))
    out = tmp_path / "mine"
    evaluate(_eval_cfg(out, solver_file=str(path)))
    junk = out / "samples" / "000000" / "000002.png"
    junk.write_bytes(b"\x89PNG junk")
    with pytest.raises(ValueError, match=r"000002.png' is not a readable PNG.*delete it"):
        evaluate(_eval_cfg(out, solver_file=str(path), save="npz"))


def test_sample_out_refuses_another_solvers_folder(gmm, tmp_path, capsys):
    a = _fitted(gmm).save(tmp_path / "a.safetensors")
    b = _fitted(gmm, lambdas=(0.0, 0.3, 0.1)).save(tmp_path / "b.safetensors")
    out = tmp_path / "out"
    sample_main(["--solver_file", str(a), "--seeds", "0-1", "--out", str(out)])
    record = json.loads((out / "run.json").read_text())
    assert record["tool"] == "dode.sample" and record["lambdas"] == [0.0, 0.1, 0.2]
    sample_main(["--solver_file", str(a), "--seeds", "0-1", "--out", str(out)])  # same: fine
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _sample_cli_error(
        ["--solver_file", str(b), "--seeds", "0-1", "--out", str(out)], capsys, "different"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "seed_000000.png").write_bytes(b"x")
    _sample_cli_error(["--solver_file", str(a), "--out", str(other)], capsys, "no run record")


# ---- 6. run folders of dode.fit / dode.train -----------------------------------------------------

FIT = dict(
    model="gmm-digits", solver="ddim", nfe=3, teacher_factor=2, fit_seeds="0-7",
    val_seeds="100-103", batch_size=8, cache_dir=None, samples={"num_samples": 0},
    lambda_plot={"enabled": False}, wandb_mode="disabled",
)  # fmt: skip
TRAINER = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
           "enable_model_summary": False}  # fmt: skip


class _Killed(Exception):
    pass


class _StopAt:
    """A callback that interrupts the fit at the end of an epoch (before its checkpoint)."""

    def __new__(cls, epoch: int):
        import lightning.pytorch as pl

        class Stop(pl.Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                if trainer.current_epoch == epoch:
                    raise _Killed(f"killed at epoch {epoch}")

        return Stop()


def _epochs(run: Path) -> set[int]:
    import csv

    with open(run / "metrics.csv", newline="") as f:
        return {int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("epoch")}


def test_resume_keeps_the_metrics_history(tmp_path):
    run = tmp_path / "run"
    trainer = {**TRAINER, "callbacks": [_StopAt(1)]}
    with pytest.raises(_Killed):
        dode.fit(**FIT, trainer=trainer, run_dir=run)
    assert not (run / ".fit.lock").exists()  # released on the way out
    assert 0 in _epochs(run)
    dode.fit(**FIT, trainer=TRAINER, run_dir=run, ckpt_path="last")
    assert {0, 1, 2} <= _epochs(run)  # before: only the epochs after the resume
    assert not (run / ".fit.lock").exists()


def test_refused_resume_or_fresh_run_touches_nothing(tmp_path, capsys):
    from dode.cli.train import main

    run = tmp_path / "run"
    args = ["--model.model", "gmm-digits", "--model.nfe", "3", "--model.teacher_factor", "2",
            "--data.fit_seeds", "0-7", "--data.val_seeds", "100-103", "--data.batch_size", "8",
            "--data.cache_dir", "null", "--samples.num_samples", "0", "--lambda_plot.enabled",
            "false", "--wandb_mode", "disabled", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--run_dir", str(run)]  # fmt: skip
    main(args)
    files = ("config.yaml", "metrics.csv", "solver.safetensors", "checkpoints/last.ckpt")
    before = {n: (run / n).read_bytes() for n in files}
    capsys.readouterr()
    for extra, message in [
        (["--model.nfe", "4", "--ckpt_path", "last"], "another problem"),
        ([], "already holds a run"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(args + extra)
        assert e.value.code == 2
        _one_error_line(capsys.readouterr().err, message)
        assert {n: (run / n).read_bytes() for n in files} == before


def test_a_live_lock_refuses_a_second_fit_and_a_stale_one_is_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    import socket

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".fit.lock").write_text(f"{live.pid} {socket.gethostname()}\n")
        with pytest.raises(ValueError, match=f"in use by another fit \\(pid {live.pid}"):
            dode.fit(**FIT, trainer=TRAINER, run_dir=run)
        assert sorted(p.name for p in run.iterdir()) == [".fit.lock"]
    finally:
        live.kill()
        live.wait()
    dode.fit(**FIT, trainer=TRAINER, run_dir=run)  # the lock's process is gone
    assert "stale lock" in capsys.readouterr().err
    assert (run / "solver.safetensors").is_file() and not (run / ".fit.lock").exists()


# ---- 7. bad checkpoints ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt") / "run"
    dode.fit(**FIT, trainer=TRAINER, run_dir=run)
    return run


@pytest.mark.parametrize("kind", ["empty", "truncated", "random"])
def test_damaged_last_checkpoint_is_one_clear_error(finished_run, tmp_path, kind):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    ckpt = run / "checkpoints" / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"empty": b"", "truncated": data[: len(data) // 2],
                      "random": os.urandom(4096)}[kind])  # fmt: skip
    metrics = (run / "metrics.csv").read_bytes()
    with pytest.raises(ValueError, match=r"last.ckpt' cannot be read .* truncated, empty"):
        dode.fit(**FIT, trainer=TRAINER, run_dir=run, ckpt_path="last")
    assert (run / "metrics.csv").read_bytes() == metrics


def test_missing_checkpoint_and_last_without_one(tmp_path, capsys):
    with pytest.raises(ValueError, match="checkpoint '.*nope.ckpt' does not exist"):
        dode.fit(
            **FIT, trainer=TRAINER, run_dir=tmp_path / "a", ckpt_path=str(tmp_path / "nope.ckpt")
        )
    assert not (tmp_path / "a").exists()
    dode.fit(**FIT, trainer=TRAINER, run_dir=tmp_path / "b", ckpt_path="last")
    assert "no checkpoint in" in capsys.readouterr().err  # said so, then fitted from scratch
    assert (tmp_path / "b" / "solver.safetensors").is_file()


# ---- 8. folders that cannot be written ---------------------------------------------------------


def test_unwritable_solver_file_path_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    bad = blocker / "sub" / "solver.safetensors"
    with pytest.raises(ValueError, match=r"file.txt' is a file, not a folder"):
        dode.fit(**FIT, trainer=TRAINER, run_dir=tmp_path / "run", solver_file=bad)
    assert not (tmp_path / "run").exists()  # no teacher, no log, no checkpoint
    with pytest.raises(ValueError, match="is a file, not a folder"):
        dode.fit(**FIT, trainer=TRAINER, run_dir=blocker / "run")
    fs = FittedSolver(solver={"name": "ddim"}, sigmas=karras(3), lambdas=torch.zeros(3))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        fs.save(bad)


def test_unwritable_cache_and_output_folders(gmm, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    cache = TeacherCache(blocker / "cache", {"model": {"weights_hash": "a" * 64}})
    cache.put([0], torch.zeros(1, 2))  # the cache goes off with a notice; the fit goes on
    assert cache.dir is None and "cannot be written" in capsys.readouterr().err
    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    _sample_cli_error(
        ["--solver_file", str(path), "--out", str(blocker / "out")], capsys, "not a folder"
    )
    with pytest.raises(ValueError, match="not a folder"):
        evaluate(_eval_cfg(blocker / "out", solver_file=str(path)))


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_read_only_folders(gmm, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(ValueError, match="not writable"):
            dode.fit(**FIT, trainer=TRAINER, run_dir=ro / "run")
        path = _fitted(gmm).save(tmp_path / "f.safetensors")
        _sample_cli_error(["--solver_file", str(path), "--out", str(ro)], capsys, "not writable")
    finally:
        ro.chmod(0o755)


# ---- 9. solver files of a newer version --------------------------------------------------------


def test_newer_solver_file_loads_or_names_the_version(gmm, tmp_path):
    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    meta = json.loads(safe_open(str(path), framework="pt").metadata()["dode"])
    newer = _rewrite(
        path,
        tmp_path / "newer.safetensors",
        meta={**meta, "format": "dode.fitted_solver/1.3", "conditioning": {"labels": 10}},
    )
    with pytest.warns(UserWarning, match="does not know: conditioning"):
        fs = FittedSolver.load(newer)
    assert torch.equal(fs.lambdas, _fitted(gmm).lambdas)
    fs.save(tmp_path / "copy.safetensors")  # unknown keys are written back as they were
    copy = json.loads(safe_open(str(tmp_path / "copy.safetensors"), "pt").metadata()["dode"])
    assert copy["conditioning"] == {"labels": 10}
    major = _rewrite(
        path, tmp_path / "v3.safetensors", meta={**meta, "format": "dode.fitted_solver/3"}
    )
    with pytest.raises(ValueError, match=r"format 'dode.fitted_solver/3'.*Upgrade dode"):
        FittedSolver.load(major)


# ---- 10. None, empty batches, reversed grids --------------------------------------------------


def test_load_none_empty_batch_and_reversed_grid(den):
    with pytest.raises(ValueError, match="needs the path of a fitted-solver file, got None"):
        FittedSolver.load(None)
    empty = torch.zeros(0, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="noise batch is empty"):
        dode.sample(den, "ddim", empty, karras(3))
    with pytest.raises(ValueError, match="noise batch is empty"):
        dode.fit_lambdas(den, "ddim", empty, karras(3))
    noise = torch.randn(2, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"σ grid is reversed.*reverse it"):
        dode.sample(den, "ddim", noise, karras(3).flip(0))


# ---- 11. duplicate seeds ----------------------------------------------------------------------


def test_sample_refuses_duplicate_seeds(gmm, tmp_path, capsys):
    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    out = tmp_path / "out"
    _sample_cli_error(
        ["--solver_file", str(path), "--seeds", "0-9,5", "--out", str(out)],
        capsys,
        "seed 5 more than once",
    )
    assert not out.exists()


# ---- 12. meaningless results -------------------------------------------------------------------


def test_float16_integration_one_sample_and_one_call(gmm, den, tmp_path, capsys):
    path = _fitted(gmm, integration_dtype="float16").save(tmp_path / "f.safetensors")
    _sample_cli_error(
        ["--solver_file", str(path), "--out", str(tmp_path / "o")], capsys, "--dtype float32"
    )
    sample_main(["--solver_file", str(path), "--out", str(tmp_path / "o"), "--dtype", "float32",
                 "--seeds", "0-1"])  # fmt: skip
    one = torch.randn(1, 2, dtype=torch.float64)
    with pytest.warns(UserWarning, match="one sample"):
        dode.fit_lambdas(den, "ddim", one, karras(3), teacher_factor=2)
    with pytest.warns(UserWarning, match="one model call"):
        dode.fit_lambdas(den, "ddim", torch.randn(8, 2, dtype=torch.float64), karras(1), 2)
    with pytest.raises(ValueError, match="nfe 1 leaves nothing to fit"):
        dode.fit(**{**FIT, "nfe": 1}, trainer=TRAINER, run_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_train_cli_nfe_1_is_one_line(capsys, tmp_path):
    from dode.cli.train import main

    with pytest.raises(SystemExit) as e:
        main(["--model.model", "gmm-digits", "--model.nfe", "1", "--wandb_mode", "disabled",
              "--run_dir", str(tmp_path / "r")])  # fmt: skip
    assert e.value.code == 2
    _one_error_line(capsys.readouterr().err, "nfe 1 leaves nothing to fit")
    assert not (tmp_path / "r").exists()


# ==== Round two (issue 19) =======================================================================
# ---- 13. dode.export writes only the scheduler's file ------------------------------------------


def _exportable(tmp_path: Path) -> Path:
    from _tiny import tiny_alphas_cumprod

    alphas = tiny_alphas_cumprod()
    schedule = {"family": "vp", "alphas_cumprod": alphas.tolist(), "prediction_type": "epsilon",
                "num_train_timesteps": len(alphas)}  # fmt: skip
    fs = FittedSolver(
        solver=get_solver("ddim").config(),
        sigmas=karras(3, 0.02, 10.0),
        lambdas=torch.tensor([0.0, 0.1, 0.2], dtype=torch.float64),
        model={"id": "tiny", "class": "DiffusersDenoiser", "schedule": schedule},
    )
    run = tmp_path / "run"
    return fs.save(run / "solver.safetensors")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_export_writes_only_its_file_and_removes_nothing(tmp_path, capsys, monkeypatch):
    import diffusers  # noqa: F401

    from dode.cli.export import main as export_main

    solver_file = _exportable(tmp_path)
    pipe = tmp_path / "pipe"
    (pipe / "unet").mkdir(parents=True)
    (pipe / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    (pipe / "unet" / "model.safetensors").write_bytes(b"weights")
    (pipe / "scheduler").mkdir()
    ddpm = '{"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}'
    (pipe / "scheduler" / "scheduler_config.json").write_text(ddpm)
    before = _tree(pipe)
    # a pipeline folder, the run folder holding the file itself, the current folder: kept
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "notes.txt").write_text("mine")
    monkeypatch.chdir(cwd)
    for out in (pipe, solver_file.parent, Path(".")):
        kept = _tree(out.resolve())
        assert export_main(["--solver_file", str(solver_file), "--out", str(out)]) == 0
        after = _tree(out.resolve())
        assert {k: v for k, v in after.items() if k in kept} == kept
        assert set(after) - set(kept) == {"scheduler_config.json"}
    assert {k: v for k, v in _tree(pipe).items() if k in before} == before
    # again into the same folder: its own earlier export is replaced
    assert export_main(["--solver_file", str(solver_file), "--out", str(pipe)]) == 0
    capsys.readouterr()
    # another scheduler's config, and a file as --out: refused, untouched
    assert export_main(["--solver_file", str(solver_file), "--out", str(pipe / "scheduler")]) == 2
    _one_error_line(capsys.readouterr().err, "DDPMScheduler")
    assert (pipe / "scheduler" / "scheduler_config.json").read_text() == ddpm
    assert export_main(["--solver_file", str(solver_file), "--out", str(cwd / "notes.txt")]) == 2
    _one_error_line(capsys.readouterr().err, "is a file")
    assert (cwd / "notes.txt").read_text() == "mine"


# ---- 14, 15. dode.train: another run's solver file, a folder that is not a run -----------------


def test_fit_refuses_another_runs_solver_file_and_a_foreign_folder(gmm, tmp_path):
    other = _fitted(gmm).save(tmp_path / "other" / "solver.safetensors")
    data = other.read_bytes()
    with pytest.raises(ValueError, match="solver_file .* already exists"):
        dode.fit(**FIT, trainer=TRAINER, run_dir=tmp_path / "new1", solver_file=other)
    assert other.read_bytes() == data and not (tmp_path / "new1").exists()
    results = tmp_path / "results"
    results.mkdir()
    for name in ("samples.png", "lambdas.png", "table.md"):
        (results / name).write_bytes(name.encode())
    before = _tree(results)
    with pytest.raises(ValueError, match="holds no dode run .*lambdas.png"):
        dode.fit(**FIT, trainer=TRAINER, run_dir=results)
    assert _tree(results) == before and not (results / ".fit.lock").exists()


# ---- 16. samples of two runs into one folder are merged by seed -------------------------------


def test_sample_runs_into_one_folder_merge_by_seed(gmm, tmp_path):
    import numpy as np

    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    out = tmp_path / "o"
    sample_main(["--solver_file", str(path), "--seeds", "0-3", "--out", str(out)])
    with np.load(out / "samples.npz") as z:
        first = {k: z[k] for k in z.files}
    sample_main(["--solver_file", str(path), "--seeds", "6-7,2", "--out", str(out)])
    with np.load(out / "samples.npz") as z:
        both = {k: z[k] for k in z.files}
    assert both["seeds"].tolist() == [0, 1, 3, 6, 7, 2]
    assert len(both["images"]) == 6 and len(both["samples"]) == 6
    for i, s in enumerate(both["seeds"].tolist()):
        if s < 4:  # the same seed gives the same sample, whichever run made it (to float32
            # rounding: a batch of other seeds may take other BLAS kernels)
            j = first["seeds"].tolist().index(s)
            np.testing.assert_allclose(both["samples"][i], first["samples"][j], rtol=0, atol=1e-5)
    assert len(list(out.glob("seed_*.png"))) == 6


def test_evaluate_save_npz_twice_and_save_none_keep_earlier_samples(gmm, tmp_path):
    import numpy as np

    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    out = tmp_path / "e"
    evaluate(_eval_cfg(out, solver_file=str(path), seeds="0-3", save="npz"))
    evaluate(_eval_cfg(out, solver_file=str(path), seeds="4-5", save="npz"))
    with np.load(out / "samples.npz") as z:
        assert sorted(z["seeds"].tolist()) == [0, 1, 2, 3, 4, 5]
        assert z["arr_0"].shape[0] == 6
    evaluate(_eval_cfg(out, solver_file=str(path), seeds="6-7", save="png"))
    evaluate(_eval_cfg(out, solver_file=str(path), seeds="8-9", save="none"))
    with np.load(out / "samples.npz") as z:  # the earlier runs' samples all stay
        assert sorted(z["seeds"].tolist()) == [0, 1, 2, 3, 4, 5]
    from dode.evaluation.store import SampleStore

    store = SampleStore(out)
    assert store.png_seeds() == {6, 7}
    evaluate(_eval_cfg(out, solver_file=str(path), seeds="10", save="npz"))  # packs the PNGs too
    with np.load(out / "samples.npz") as z:
        assert sorted(z["seeds"].tolist()) == [0, 1, 2, 3, 4, 5, 6, 7, 10]


# ---- 17. the atomic writer: non-regular targets, the umask --------------------------------------


def test_atomic_writer_refuses_devices_fifos_and_links(gmm, tmp_path):
    fs = _fitted(gmm)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "target.safetensors"
    target.write_bytes(b"someone else's file")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(fifo)
    for path, kind in [(fifo, "named pipe"), (link, "symbolic link"), (dangling, "symbolic link")]:
        with pytest.raises(ValueError, match=kind):
            fs.save(path)
    import stat as st

    assert st.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink() and dangling.is_symlink()
    assert target.read_bytes() == b"someone else's file"
    with pytest.raises(ValueError, match="named pipe"):  # dode.fit: before any work
        dode.fit(**FIT, trainer=TRAINER, run_dir=tmp_path / "run", solver_file=fifo)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atomic_writes_honour_the_umask(gmm, tmp_path, mask):
    old = os.umask(mask)
    try:
        path = _fitted(gmm).save(tmp_path / "f.safetensors")
        out = tmp_path / "s"
        sample_main(["--solver_file", str(path), "--seeds", "0", "--out", str(out)])
    finally:
        os.umask(old)
    for p in (path, out / "samples.npz", out / "run.json", out / "seed_000000.png"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p


# ---- 18. SIGTERM during the teacher phase -------------------------------------------------------


def test_sigterm_during_the_teacher_phase_stops_between_batches(tmp_path, monkeypatch, capsys):
    import signal

    from dode.cli.train import main
    from dode.lit.module import DODEModule

    calls = []
    compute = DODEModule.compute_teacher

    def teacher(self, noise, cond=None):
        calls.append(len(noise))
        if len(calls) == 1:
            handler = signal.getsignal(signal.SIGTERM)
            assert handler not in (signal.SIG_DFL, None), "no SIGTERM handler installed"
            os.kill(os.getpid(), signal.SIGTERM)
        return compute(self, noise, cond)

    monkeypatch.setattr(DODEModule, "compute_teacher", teacher)
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = ["--model.model", "gmm-digits", "--model.nfe", "3", "--model.teacher_factor", "2",
            "--data.fit_seeds", "0-7", "--data.val_seeds", "100-103", "--data.batch_size", "2",
            "--data.cache_dir", str(cache), "--samples.num_samples", "0",
            "--lambda_plot.enabled", "false", "--wandb_mode", "disabled",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--run_dir", str(run)]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 143
    _one_error_line(capsys.readouterr().err, "stopped by SIGTERM")
    assert calls == [2]  # stopped after the first of four teacher batches
    assert not (run / "solver.safetensors").exists() and not (run / "checkpoints").exists()
    assert not (run / ".fit.lock").exists()
    entries = list(cache.rglob("*.safetensors"))
    assert len(entries) == 1 and not list(cache.rglob(".*"))  # one whole entry, no temp file
    monkeypatch.setattr(DODEModule, "compute_teacher", compute)
    assert main(args + ["--ckpt_path", "last"]).is_file()  # the retry goes on from the cache


# ---- 19. duplicate seeds are found in linear time ------------------------------------------------


def test_duplicate_seed_search_is_linear(gmm, tmp_path, capsys, monkeypatch):
    import dode.evaluation.sample_folder as cli

    class Seeds(list):
        def count(self, value):  # the quadratic search: one scan per seed
            raise AssertionError("seeds.count() called: a quadratic duplicate search")

    real = cli.parse_seeds
    monkeypatch.setattr(cli, "parse_seeds", lambda spec: Seeds(real(spec)))
    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    _sample_cli_error(
        ["--solver_file", str(path), "--seeds", "0-49999,7", "--out", str(tmp_path / "o")],
        capsys,
        "seed 7 more than once",
    )
    assert not (tmp_path / "o").exists()


# ---- 20. resuming with other fit seeds; lstsq stopped by a limit ------------------------------


def test_resume_with_other_fit_seeds_is_refused_and_the_file_records_them(tmp_path):
    from dode.lit.module import FitStopped

    run = tmp_path / "run"
    with pytest.raises(FitStopped, match=r"after 1 of 3 λ .*no solver file was written; the last"):
        dode.fit(**FIT, trainer={**TRAINER, "max_steps": 1}, run_dir=run)
    with pytest.raises(ValueError, match="other fit seeds"):
        dode.fit(**{**FIT, "fit_seeds": "500-507"}, trainer=TRAINER, run_dir=run,
                 ckpt_path="last")  # fmt: skip
    fitted = dode.fit(**FIT, trainer=TRAINER, run_dir=run, ckpt_path="last")
    assert fitted.metrics["fit_seeds"] == "0-7" and fitted.metrics["num_fit_seeds"] == 8
    assert FittedSolver.load(run / "solver.safetensors").metrics["fit_seeds"] == "0-7"


# ---- 21. grid options outside the model's range or meaning --------------------------------------


def test_grid_options_outside_the_model_are_refused(gmm):
    from dode.grids.schedules import grid_for_model

    with pytest.raises(ValueError, match=r"sigma_max = 1e\+06 .* above the largest σ of the model"):
        grid_for_model(gmm, "karras", 3, {"sigma_max": 1e6})
    with pytest.raises(ValueError, match="rho = -7"):
        grid_for_model(gmm, "karras", 3, {"rho": -7})
    with pytest.raises(ValueError, match="above the largest σ"):
        grid_for_model(gmm, "explicit", 3, {"sigmas": [500.0, 10.0, 1.0]})
    assert len(grid_for_model(gmm, "karras", 3, {"sigma_max": 80.0})) == 4  # the model's own


# ---- 22. what a file records, checked against the model ----------------------------------------


def test_file_is_checked_against_the_model(gmm, tmp_path):
    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    grid = karras(3, 0.01, 80.0)
    grid[-1] = 0.5
    bad = _rewrite(path, tmp_path / "g.safetensors", tensors={"sigmas": grid})
    with pytest.raises(ValueError, match="ends at σ = 0.5, not at 0"):
        FittedSolver.load(bad)
    huge = _rewrite(path, tmp_path / "h.safetensors",
                    tensors={"lambdas": torch.tensor([0.0, 1e6, -1e6], dtype=torch.float64)})  # fmt: skip
    with pytest.warns(UserWarning, match=r"λ\[1\] = 1e\+06 is far outside"):
        FittedSolver.load(huge)
    noise = torch.randn(2, 1, 8, 8)
    high = FittedSolver(solver=get_solver("ddim").config(), sigmas=karras(3, 0.01, 5000.0),
                        lambdas=[0.0, 0.1, 0.2])  # fmt: skip
    with pytest.raises(ValueError, match="starts at σ = 5000, above the largest σ"):
        high.sample(gmm, noise)
    cond = _fitted(gmm, conditioning={"kind": "class_labels", "labels": "all"}, guidance_scale=-3)
    with pytest.raises(ValueError, match="fitted on the conditional model .* unconditional"):
        cond.sample(gmm, noise)


# ---- 23. half-precision noise in the Python API --------------------------------------------------


def test_half_precision_noise_is_refused_by_the_api(gmm, den, noise):
    fs = _fitted(gmm)
    for dtype in (torch.bfloat16, torch.float16):
        with pytest.raises(ValueError, match=r"Pass noise.float\(\)"):
            fs.sample(gmm, torch.randn(2, 1, 8, 8).to(dtype))
        with pytest.raises(ValueError, match="too coarse"):
            dode.sample(den, "ddim", noise.to(dtype), karras(3, 0.01, 10.0))


# ---- 24. one clear line for the noisy cases ------------------------------------------------------


def test_damaged_or_odd_solver_paths_are_one_clear_line(gmm, tmp_path, capsys):
    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["dode"])
    stringy = _rewrite(path, tmp_path / "s.safetensors", meta={**meta, "model": "gmm-digits"})
    with pytest.raises(ValueError, match="metadata 'model' is a str"):
        FittedSolver.load(stringy)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link.safetensors"
    link.symlink_to(fifo)
    with pytest.raises(ValueError, match="is not a regular file"):
        FittedSolver.load(link)
    with pytest.raises(ValueError, match="is a folder"):
        FittedSolver.load(tmp_path)
    out = tmp_path / "o"
    _sample_cli_error(["--solver_file", str(path), "--seeds", "99999999999999999999999",
                       "--out", str(out)], capsys, "outside 0")  # fmt: skip
    assert not out.exists()


def test_failed_sample_leaves_no_run_record(gmm, tmp_path, capsys, monkeypatch):
    import dode.evaluation.sample_folder as sample_folder

    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    out = tmp_path / "o"

    def fail(*args, **kwargs):
        raise ValueError("the model output is not finite")

    monkeypatch.setattr(sample_folder, "generate", fail)
    _sample_cli_error(["--solver_file", str(path), "--seeds", "0", "--out", str(out)], capsys,
                      "not finite")  # fmt: skip
    assert not out.exists()
    monkeypatch.undo()
    sample_main(["--solver_file", str(path), "--seeds", "0", "--out", str(out), "--base"])
    assert (out / "samples.npz").is_file()


def test_full_disk_while_writing_the_cache_or_the_solver_file(gmm, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    cache = TeacherCache(tmp_path / "cache", {"problem": 1})
    cache.put([0, 1], torch.zeros(2, 3))  # the cache turns itself off, as documented
    assert "cannot be written (Error while serializing" in capsys.readouterr().err
    assert cache.dir is None
    with pytest.raises(ValueError, match="could not be written .*No space left"):
        _fitted(gmm).save(tmp_path / "f.safetensors")
    assert list(tmp_path.glob("*f.safetensors*")) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_asked_for_on_a_machine_without_one(gmm, tmp_path, capsys):
    from dode.cli.train import main

    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    _sample_cli_error(["--solver_file", str(path), "--device", "cuda", "--out",
                       str(tmp_path / "o")], capsys, "no CUDA device")  # fmt: skip
    assert not (tmp_path / "o").exists()
    code = evaluate_main(
        ["--solver_file", str(path), "--seeds", "0-1", "--out", str(tmp_path / "e"),
         "--fid", "false", "--log", "null", "--wandb", "false", "--accelerator", "gpu",
         "--devices", "1", "--progress", "false"]
    )  # fmt: skip
    assert code == 2
    _one_error_line(capsys.readouterr().err, "no usable GPU")
    with pytest.raises(SystemExit) as e:
        main(["--model.model", "gmm-digits", "--model.nfe", "3", "--trainer.accelerator", "gpu",
              "--wandb_mode", "disabled", "--run_dir", str(tmp_path / "r")])  # fmt: skip
    assert e.value.code == 2
    _one_error_line(capsys.readouterr().err, "no usable GPU")
    assert not (tmp_path / "r").exists()


def test_evaluate_checks_its_log_and_flags_before_the_work(gmm, tmp_path):
    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    out = tmp_path / "e"
    with pytest.raises(ValueError, match="--log .* is a folder"):
        evaluate(_eval_cfg(out, solver_file=str(path), log=str(tmp_path)))
    assert not out.exists()  # refused before any sample was made
    with pytest.raises(ValueError, match="--solver, --nfe would be ignored"):
        evaluate(_eval_cfg(out, solver_file=str(path), solver="ipndm", nfe=10))
    assert not out.exists()


def test_two_evaluations_into_one_out_say_so(tmp_path):
    from dode.evaluation.store import SampleStore

    store = SampleStore(tmp_path)
    images = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    store.write([3], images)
    with pytest.raises(ValueError, match="another evaluation is writing into the same --out"):
        store.write([3], images)


def test_fit_lambdas_bad_batch_size(den, noise):
    for bad in (-1, 0, 2.5):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            dode.fit_lambdas(den, "ddim", noise, karras(3, 0.01, 10.0), batch_size=bad)


def test_digits_flow_config_runs_as_the_readme_shows():
    from dode.lit import DODEModule, NoiseDataModule
    from dode.lit.api import fit_kwargs
    from dode.lit.specs import DATA_SECTION, MODEL_SECTION

    kw = fit_kwargs(ROOT / "configs" / "digits-flow.yaml")
    data = NoiseDataModule(**{k: v for k, v in kw.items() if k in DATA_SECTION})
    module = DODEModule(**{k: v for k, v in kw.items() if k in MODEL_SECTION})
    module.use_conditioning(data.conditioning)  # before: "model 'digits-flow' is conditional"
    assert module.condition([0, 1, 12]).tolist() == [0, 1, 2]
