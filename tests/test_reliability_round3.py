"""Reliability, round three (issue 32): concurrent runs into one folder, signals, a full disk,
meaningless arguments. One section per case of docs/reliability.md (rows 30-44); each test
fails on the code before the fix."""

from __future__ import annotations

import errno
import importlib.util
import math
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

# imported here, not inside a test: Lightning's log handler keeps the stderr of the moment, and
# a test's captured stderr is closed after that test
import lightning.pytorch  # noqa: F401
import numpy as np
import pytest
import torch

import dode
from dode.cli.evaluate import main as evaluate_main
from dode.cli.sample import main as sample_main
from dode.denoisers import gaussian
from dode.denoisers.loading import load_denoiser
from dode.evaluation.fidelity import FidelityJudge
from dode.files.solver_file import FittedSolver
from dode.files.weights import weights_hash
from dode.grids.schedules import karras
from dode.solvers import get_solver

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def gmm():
    return load_denoiser("gmm-digits")


def _fitted(gmm, lambdas=(0.0, 0.1, 0.2)) -> FittedSolver:
    return FittedSolver(
        solver=get_solver("ddim").config(),
        sigmas=karras(3, 0.01, 80.0),
        lambdas=torch.tensor(lambdas, dtype=torch.float64),
        teacher={"factor": 4},
        model={"id": "gmm-digits", "weights_hash": weights_hash(gmm), "dtype": "float32"},
    )


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def _one_line(err: str, match: str) -> str:
    """stderr holds one line of dode's, containing ``match``, and no traceback (Lightning's log
    lines and progress bars aside: "INFO: GPU available ...", "Detected KeyboardInterrupt,
    attempting ...", "teacher (fit_seeds):   0%| ...")."""
    lightning = ("INFO:", "Detected KeyboardInterrupt")
    lines = [
        line
        for line in _lines(err)
        if not line.startswith(lightning) and not re.search(r"\| \d+/\d+ \[", line)
    ]
    assert len(lines) == 1 and match in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def _one_error_line(err: str, match: str) -> None:
    errors = [line for line in _lines(err) if "error" in line.lower()]
    assert len(errors) == 1 and match in errors[0], err
    assert "Traceback" not in err


def _sample_error(argv: list[str], capsys, match: str) -> None:
    with pytest.raises(SystemExit) as e:
        sample_main(argv)
    assert e.value.code == 2
    _one_error_line(capsys.readouterr().err, match)


def _eval_args(path: Path, out: Path, seeds: str | None = "0-7", *more: str) -> list[str]:
    return ["--solver_file", str(path), *(["--seeds", seeds] if seeds else []), "--batch_size",
            "2", "--out", str(out), "--fid", "false", "--log", "null", "--wandb", "false",
            "--accelerator", "cpu", "--devices", "1", "--progress", "false", *more]  # fmt: skip


def _no_temp_files(root: Path) -> None:
    temp = [p for p in root.rglob("*") if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert temp == [], temp


@pytest.fixture
def live_pid():
    """The pid of a process that stays alive for the test (then is ended)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


# ---- 30. two dode.sample runs into one --out ----------------------------------------------------


def test_a_second_sample_run_into_a_busy_out_is_refused(
    gmm, tmp_path, capsys, monkeypatch, live_pid
):
    import dode.evaluation.sample_folder as cli

    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    out = tmp_path / "o"
    # the run holds <out>/.sample.lock (its pid) while it samples and writes
    seen = []
    real = cli.generate

    def generate(*args, **kwargs):
        seen.append((out / ".sample.lock").read_text().split()[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "generate", generate)
    sample_main(["--solver_file", str(path), "--seeds", "0-3", "--out", str(out)])
    assert seen == [str(os.getpid())] and not (out / ".sample.lock").exists()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # another live run holds the folder: refused before any work, nothing touched
    (out / ".sample.lock").write_text(f"{live_pid} {socket.gethostname()}\n")
    _sample_error(["--solver_file", str(path), "--seeds", "5000-5003", "--out", str(out)],
                  capsys, f"in use by another dode.sample run (pid {live_pid}")  # fmt: skip
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".sample.lock"} == before
    assert len(seen) == 1
    # a lock whose process is gone (a killed run) is taken over: both seed sets are kept
    (out / ".sample.lock").write_text(f"999999999 {socket.gethostname()}\n")
    sample_main(["--solver_file", str(path), "--seeds", "5000-5003", "--out", str(out)])
    assert "stale lock" in capsys.readouterr().err
    with np.load(out / "samples.npz") as z:
        assert z["seeds"].tolist() == [0, 1, 2, 3, 5000, 5001, 5002, 5003]
    assert not (out / ".sample.lock").exists()


# ---- 31. SIGTERM during dode.evaluate ----------------------------------------------------------


def test_sigterm_during_evaluate_stops_between_batches(gmm, tmp_path, capsys, monkeypatch):
    import dode.evaluation.predict as predict
    from dode.evaluation.store import SampleStore

    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    out = tmp_path / "e"
    calls = []
    real = predict.sample

    def sample(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            handler = signal.getsignal(signal.SIGTERM)
            assert handler not in (signal.SIG_DFL, None), "no SIGTERM handler installed"
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(predict, "sample", sample)
    assert evaluate_main(_eval_args(path, out)) == 143
    _one_line(capsys.readouterr().err, "stopped by SIGTERM")
    assert len(calls) == 1  # stopped before the second of four batches
    store = SampleStore(out)
    assert store.png_seeds() == {0, 1}  # the batch made before the signal is kept, whole
    assert next(store.iter_images([0, 1])).shape == (2, 1, 8, 8)
    _no_temp_files(out)
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)  # handler given back
    monkeypatch.setattr(predict, "sample", real)
    assert evaluate_main(_eval_args(path, out)) == 0  # the same command finishes the run
    assert store.png_seeds() == set(range(8))


# ---- 32. a flat keyword beside its spec, equal to its default -----------------------------------


def test_a_flat_keyword_beside_its_spec_is_refused_even_at_its_default(tmp_path):
    from dode.lit import FitSpec, SolverSpec, Specs

    with pytest.raises(ValueError, match="fit_mode is given both as a keyword and in the FitSpec"):
        dode.fit("gmm-digits", fit=FitSpec("end-to-end"), fit_mode="lstsq", run_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="nfe is given both"):
        dode.fit("gmm-digits", SolverSpec(nfe=4), nfe=5, run_dir=tmp_path / "b")  # 5: default
    with pytest.raises(ValueError, match="solver is given both"):
        dode.fit(Specs(), "ddim")  # the default solver, passed
    with pytest.raises(TypeError):
        dode.fit("gmm-digits", nfee=4)  # a misspelt keyword is Python's TypeError, as before
    assert not any(tmp_path.iterdir())


# ---- 33/34. the fidelity judge: repeated seeds, non-finite samples -------------------------------


def _gauss():
    return gaussian(torch.zeros(2), torch.eye(2, dtype=torch.float64), sample_shape=(2,))


def test_fidelity_judge_refuses_repeated_seeds():
    with pytest.raises(ValueError, match="repeat seed 1 .*give each seed once"):
        FidelityJudge(_gauss(), [1, 1, 2], check_reference=False)
    with pytest.raises(ValueError, match="seed set is empty"):
        FidelityJudge(_gauss(), [], check_reference=False)


def test_fidelity_judge_names_the_seeds_of_non_finite_samples():
    judge = FidelityJudge(_gauss(), [10, 11, 12, 13], check_reference=False, bootstrap=50)
    x = judge.reference.samples.clone()
    x[1, 0] = math.nan
    x[3, 1] = math.inf
    with pytest.raises(ValueError, match=r"2 of 4 samples hold NaN or inf \(seeds 11, 13\)"):
        judge.score(x)
    assert judge.score(judge.reference.samples).mse == 0  # finite samples are scored as before


# ---- 35. W&B offline files: tests/test_evaluate.py::test_evaluate_scores_logs_jsonl_and_wandb ----
# ---- 36. make test installs what the tests import; parity tests fail without k-diffusion --------


def test_make_test_installs_what_the_tests_import():
    make = (ROOT / "Makefile").read_text()
    m = re.search(r"DEV_IMPORTS := ((?:.*\\\n)*.*)", make)
    assert m, "the Makefile's dev-deps check lists its imports in DEV_IMPORTS"
    checked = {n.strip() for n in m.group(1).replace("\\\n", " ").split(",")}
    assert "find_spec('k_diffusion')" in make
    stdlib = set(sys.stdlib_module_names)
    local = {p.stem for p in (ROOT / "tests").glob("*.py")} | {"experiments", "digits_demo",
             "digits_guided_demo", "digits_flow_demo", "tables", "the"}  # fmt: skip
    imported = set()
    for path in (ROOT / "tests").glob("*.py"):
        for line in path.read_text().splitlines():
            m = re.match(r"\s*(?:import|from) ([A-Za-z_]\w*)", line)
            if m:
                imported.add(m.group(1))
    needed = imported - stdlib - local - {"__future__", "dode", "k_diffusion"}
    assert needed <= checked, sorted(needed - checked)


def test_parity_tests_fail_rather_than_skip_without_k_diffusion(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "kd_host_tests", ROOT / "tests" / "test_k_diffusion_host.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "k_diffusion", None)  # import k_diffusion fails
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "k_diffusion" else real(n, *a)
    )
    with pytest.raises(ImportError):  # not pytest's Skipped
        mod._k_diffusion()


# ---- 37. Ctrl-C: one line, status 130 -----------------------------------------------------------


def _interrupted(run, capsys, match: str) -> None:
    with pytest.raises(SystemExit) as e:
        run()
    assert e.value.code == 130
    _one_line(capsys.readouterr().err, match)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_is_one_line_and_status_130(gmm, tmp_path, capsys, monkeypatch):
    import dode.evaluation.predict as predict
    import dode.evaluation.sample_folder as cli_sample
    import dode.hosts.export as host_export
    from dode.cli.export import main as export_main
    from dode.cli.train import main as train_main
    from dode.lit.module import DODEModule

    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    # dode.sample: the claimed folder is given back
    monkeypatch.setattr(cli_sample, "generate", _ctrl_c)
    out = tmp_path / "s"
    _interrupted(lambda: sample_main(["--solver_file", str(path), "--out", str(out)]), capsys,
                 "dode.sample: stopped by Ctrl-C")  # fmt: skip
    assert not out.exists()
    # dode.evaluate: inside Lightning's predict loop (Lightning turns it into sys.exit(1))
    calls = []

    def sample(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = predict.sample
    monkeypatch.setattr(predict, "sample", sample)
    out = tmp_path / "e"
    _interrupted(lambda: evaluate_main(_eval_args(path, out)), capsys,
                 "dode.evaluate: stopped by Ctrl-C")  # fmt: skip
    assert len(list(out.glob("samples/*/*.png"))) == 2  # the first batch, whole
    _no_temp_files(out)
    # dode.train: inside Lightning's fit (the teacher phase); the lock is released
    monkeypatch.setattr(DODEModule, "compute_teacher", _ctrl_c)
    run = tmp_path / "run"
    args = ["--model.model", "gmm-digits", "--model.nfe", "3", "--model.teacher_factor", "2",
            "--data.fit_seeds", "0-7", "--data.val_seeds", "100-103", "--data.batch_size", "4",
            "--data.cache_dir", "null", "--samples.num_samples", "0",
            "--lambda_plot.enabled", "false", "--wandb_mode", "disabled",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--run_dir", str(run)]  # fmt: skip
    _interrupted(lambda: train_main(args), capsys, "dode.train: stopped by Ctrl-C")
    assert not (run / "solver.safetensors").exists() and not (run / ".fit.lock").exists()
    # dode.export
    monkeypatch.setattr(host_export, "export", _ctrl_c)
    _interrupted(lambda: export_main(["--solver_file", str(path), "--out", str(tmp_path / "x")]),
                 capsys, "dode.export: stopped by Ctrl-C")  # fmt: skip


# ---- 38. a folder holding only run.json (a run killed before its first sample) ---------------------


def test_a_folder_holding_only_run_json_takes_a_new_run(gmm, tmp_path, capsys):
    a = _fitted(gmm).save(tmp_path / "a.safetensors")
    b = _fitted(gmm, lambdas=(0.0, 0.3, 0.1)).save(tmp_path / "b.safetensors")
    out = tmp_path / "o"
    sample_main(["--solver_file", str(a), "--seeds", "0-1", "--out", str(out)])
    for p in out.iterdir():  # what SIGTERM (no handler: the process ends) leaves: run.json
        if p.name != "run.json":
            p.unlink()
    sample_main(["--solver_file", str(b), "--seeds", "0-1", "--out", str(out)])
    with np.load(out / "samples.npz") as z:
        assert z["lambdas"].tolist() == [0.0, 0.3, 0.1]
    # with samples in it, another solver's run is still refused
    _sample_error(["--solver_file", str(a), "--seeds", "0-1", "--out", str(out)], capsys,
                  "already holds samples made with a different lambdas")  # fmt: skip


# ---- 39. dode.evaluate --base and --ignore_model_hash are switches --------------------------------


def test_evaluate_base_is_a_switch_as_in_sample(gmm, tmp_path, capsys):
    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    out = tmp_path / "e"
    assert evaluate_main(_eval_args(path, out, "0-1", "--base", "--ignore_model_hash")) == 0
    run = (out / "run.json").read_text()
    assert '"lambdas": null' in run  # the base solver
    with pytest.raises(SystemExit) as e:  # the old spelling is refused, as by dode.sample
        evaluate_main(_eval_args(path, tmp_path / "e2", "0-1", "--base", "true"))
    assert e.value.code == 2
    assert "unrecognized arguments: true" in capsys.readouterr().err


# ---- 40. digits_fidelity.py checks its arguments before any work ----------------------------------


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--solvers", "ddmi"], "unknown solver 'ddmi'; pick from DDIM, iPNDM"),
        (["--nfes", "0"], "NFE 0 is not a positive number"),
        (["--held", "-5"], "--held -5: a seed count must lie in 1"),
        (["--steps", "-1"], "--steps -1: the learned fit needs at least one Adam step"),
        (["--fit", "0"], "--fit 0: a seed count must lie in 1"),
        (["--out", "FILE"], "is a file; pass a folder"),
    ],
)
def test_digits_fidelity_checks_its_arguments_first(argv, match, tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "digits_fidelity_args", ROOT / "experiments" / "digits_fidelity.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "run", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "FILE").write_text("mine")
    argv = [str(tmp_path / "FILE") if a == "FILE" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        mod.main(argv)
    assert e.value.code == 2
    _one_error_line(capsys.readouterr().err, match)
    assert (tmp_path / "FILE").read_text() == "mine"
    # the labels in any case; --fit N means N
    got = {}
    monkeypatch.setattr(mod, "run", lambda *a, **k: got.update(k))
    mod.main(["--solvers", "ddim", "UNIPC", "--fit", "3", "--out", str(tmp_path / "r")])
    assert got["solvers"] == ["DDIM", "UniPC"] and got["fit"] == 3


# ---- 41. a full disk: dode.sample's PNGs, dode.export -----------------------------------------


def _full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_in_sample_and_export_is_one_line(gmm, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from dode.cli.export import main as export_main

    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    out = tmp_path / "o"
    sample_main(["--solver_file", str(path), "--seeds", "0-1", "--out", str(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(Image.Image, "save", _full)
    _sample_error(["--solver_file", str(path), "--seeds", "2-3", "--out", str(out)], capsys,
                  "could not be written (No space left on device)")  # fmt: skip
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # earlier samples intact
    _no_temp_files(out)
    monkeypatch.undo()

    import shutil

    solver_file = _exportable(tmp_path)
    monkeypatch.setattr(shutil, "copyfile", _full)
    x = tmp_path / "x"
    x.mkdir()
    assert export_main(["--solver_file", str(solver_file), "--out", str(x)]) == 2
    _one_error_line(capsys.readouterr().err, "No space left on device")
    assert list(x.iterdir()) == []


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
    return fs.save(tmp_path / "run" / "solver.safetensors")


# ---- 42. a seed range that cannot fit -------------------------------------------------------------


def test_a_seed_range_that_cannot_fit_is_refused_up_front(gmm, tmp_path, capsys):
    from dode.noise import MAX_SEEDS, parse_seeds

    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    huge = "0-99999999999"
    _sample_error(["--solver_file", str(path), "--seeds", huge, "--out", str(tmp_path / "o")],
                  capsys, "asks for 100,000,000,000 samples; one run takes at most 10,000,000")  # fmt: skip
    assert evaluate_main(_eval_args(path, tmp_path / "e", huge)) == 2
    _one_error_line(capsys.readouterr().err, "asks for 100,000,000,000 samples")
    too_many = ["--num_samples", str(MAX_SEEDS + 1)]
    assert evaluate_main(_eval_args(path, tmp_path / "e", None, *too_many)) == 2
    _one_error_line(capsys.readouterr().err, "--num_samples")
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()
    with pytest.raises(ValueError, match="asks for"):  # a range split in parts counts whole
        parse_seeds(f"0-{MAX_SEEDS // 2},{MAX_SEEDS}-{2 * MAX_SEEDS}")
    assert len(parse_seeds("0-9,20")) == 11


# ---- 43. read-only output folders (skipped as root, who writes anyway) -------------------------


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders (os.geteuid() == 0)")
def test_read_only_output_folders_of_evaluate_export_and_sample(gmm, tmp_path, capsys):
    from dode.cli.export import main as export_main

    path = _fitted(gmm).save(tmp_path / "f.safetensors")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert evaluate_main(_eval_args(path, ro / "e", "0-1")) == 2
        _one_error_line(capsys.readouterr().err, "not writable")
        assert export_main(["--solver_file", str(_exportable(tmp_path)), "--out", str(ro)]) == 2
        _one_error_line(capsys.readouterr().err, "not writable")
        _sample_error(["--solver_file", str(path), "--out", str(ro / "s")], capsys, "not writable")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# ---- 44. two end-to-end fits into one run folder at once -----------------------------------------


def test_two_end_to_end_fits_into_one_run_folder(tmp_path, live_pid):
    # the first fit holds <run>/.fit.lock (its pid, a live process; a real second process costs
    # a Lightning import, 15-30 s on a busy machine): the second end-to-end fit is refused
    # before any work and leaves the folder as it was
    run = tmp_path / "run"
    run.mkdir()
    lock = f"{live_pid} {socket.gethostname()}\n"
    (run / ".fit.lock").write_text(lock)
    with pytest.raises(ValueError, match=f"in use by another fit \\(pid {live_pid}; .*another run"):
        dode.fit("gmm-digits", "dpm_solver_pp", solver_options={"order": 2}, nfe=4,
                 fit_mode="end-to-end", fit_seeds="0-31", val_seeds="100-131", cache_dir=None,
                 wandb_mode="disabled", run_dir=run, trainer={"accelerator": "cpu", "devices": 1})  # fmt: skip
    assert [p.name for p in run.iterdir()] == [".fit.lock"]
    assert (run / ".fit.lock").read_text() == lock  # still the first fit's
