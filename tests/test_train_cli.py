"""``python -m dode.train`` end to end on a tiny diffusers UNet saved by the test: the
fitted-solver file, the W&B offline run (metrics and images), the CSV log, checkpoints without
the network; resume after a kill; bad configs.

One subprocess fit is shared by the tests (module fixture); the kill runs in a second one; the
resume and the bad configs run ``dode.cli.train.main`` in this process (same code path).
"""

from __future__ import annotations

import glob
import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _tiny import make_tiny_unet

import dode
from dode.denoisers.loading import load_denoiser
from dode.files.solver_file import FittedSolver
from dode.files.weights import weights_hash
from dode.noise import noise_from_seeds

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


def _args(model: Path, tmp: Path, run: str) -> list[str]:
    """configs/tiny.yaml on the tiny UNet, shrunk to a few seconds of compute."""
    return [
        "-c", TINY,
        "--model.model", str(model),
        "--model.nfe", "3",
        "--model.teacher_factor", "4",
        "--data.fit_seeds", "0-15",
        "--data.val_seeds", "100-107",
        "--data.batch_size", "8",
        "--data.cache_dir", str(tmp / "cache"),
        "--run_dir", str(tmp / run),
    ]  # fmt: skip


def _env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(OMP_NUM_THREADS="1", WANDB_SILENT="true", PYTHONPATH=f"{tmp}{os.pathsep}{ROOT}")
    env.pop("WANDB_MODE", None)  # "auto" must choose offline by itself (no API key)
    return env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "unet"
    make_tiny_unet(path)
    return path


@pytest.fixture(scope="module")
def fitted(tiny, tmp_path_factory):
    """The uninterrupted run: W&B offline (auto), sample grid, λ plot, pixel FD."""
    tmp = tmp_path_factory.mktemp("train")
    args = _args(tiny, tmp, "run") + [
        "--samples.num_samples", "4",
        "--fid.num_samples", "16",
        "--fid.batch_size", "16",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "dode.train", *args],
        cwd=tmp,
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return tmp, proc


def _wandb_history_keys(run_dir: Path) -> set[str]:
    """Keys of the history records in an offline ``.wandb`` file (LevelDB-style log of
    protobuf records: 7-byte header, 32 KiB blocks, each chunk ``crc32, length, type``)."""
    import wandb
    from wandb.proto import wandb_internal_pb2 as pb

    # run.finish() returns before W&B's service has written out the offline file on a busy
    # machine; wandb.teardown() (what a process runs at exit) waits for it. A run in a
    # subprocess has been torn down already; one in this process (dode.fit) has not.
    wandb.teardown()
    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    keys: set[str] = set()
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        chunk, pos = data[pos : pos + length], pos + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            if rec.WhichOneof("record_type") == "history":
                keys |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
    return keys


def test_train_end_to_end(fitted, tiny):
    tmp, proc = fitted
    run = tmp / "run"
    m = re.search(r"fitted solver: (\S+)", proc.stdout)
    assert m, proc.stdout[-2000:]
    fs = FittedSolver.load(m.group(1))
    assert Path(m.group(1)) == run / "solver.safetensors"

    # The file: solver, grid, λ, teacher, model id and weights hash, metrics.
    den = load_denoiser(str(tiny))
    assert fs.solver == {"name": "ddim", "order": 1} and fs.nfe == 3
    assert fs.model["id"] == str(tiny) and fs.model["weights_hash"] == weights_hash(den)
    assert fs.teacher["factor"] == 4
    assert fs.metrics["val/mse_final"] > 0 and "val/fd_pixels_dode" in fs.metrics
    assert fs.metrics["time/teacher_s"] > 0

    # λ are those of the direct closed-form fit on the same seeds (float32 integration).
    noise = noise_from_seeds(range(16), den.sample_shape, torch.float32)
    ref = dode.fit_lambdas(den, "ddim", noise, fs.sigmas, teacher_factor=4, batch_size=8)
    assert torch.allclose(fs.lambdas, ref, rtol=1e-4, atol=1e-5), (fs.lambdas, ref)

    # W&B offline run: metrics and both images; the solver file saved with the run.
    keys = _wandb_history_keys(run)
    for k in ("train/lambda_1", "train/mse_after_2", "val/mse_final", "val/mse_base_final",
              "val/fd_pixels_dode", "samples/filenames", "lambdas/filenames"):  # fmt: skip
        assert k in keys, sorted(keys)
    files = run.glob("wandb/offline-run-*/files")
    (files,) = list(files)
    assert list(files.glob("media/images/samples_*.png"))
    assert list(files.glob("media/images/lambdas_*.png"))
    assert (files / "solver.safetensors").is_file()

    # CSV log, config, images, checkpoint without the network.
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/lambda_2", "val/mse_final"} <= set(header)
    assert (run / "config.yaml").is_file()
    assert (run / "samples.png").is_file() and (run / "lambdas.png").is_file()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert set(ckpt["state_dict"]) == {"lambdas", "num_fitted"}


KILLER = textwrap.dedent(
    """
    import os, signal
    import lightning as L

    class KillAtEpoch(L.Callback):
        def __init__(self, epoch: int = 2):
            self.epoch = epoch

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == self.epoch:
                os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_resume_after_kill_gives_the_uninterrupted_lambdas(fitted, tiny):
    tmp, _ = fitted
    (tmp / "killer.py").write_text(KILLER)
    (tmp / "kill.yaml").write_text(
        "trainer:\n  callbacks:\n    - class_path: killer.KillAtEpoch\n"
        "      init_args: {epoch: 2}\n"
    )
    quiet = ["--wandb_mode", "disabled", "--fid.feature", "null", "--samples.num_samples", "0"]
    args = _args(tiny, tmp, "killed") + quiet
    proc = subprocess.run(
        [sys.executable, "-m", "dode.train", *args, "-c", str(tmp / "kill.yaml")],
        cwd=tmp,
        env=_env(tmp),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    killed = tmp / "killed"
    assert not (killed / "solver.safetensors").exists()
    ckpt = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)
    assert int(ckpt["state_dict"]["num_fitted"]) == 2

    from dode.cli.train import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess runs (OMP_NUM_THREADS=1): same arithmetic
    try:
        path = main(args + ["--ckpt_path", "last", "--trainer.enable_progress_bar", "false"])
    finally:
        torch.set_num_threads(threads)
    resumed = FittedSolver.load(path)
    uninterrupted = FittedSolver.load(tmp / "run" / "solver.safetensors")
    assert torch.equal(resumed.lambdas, uninterrupted.lambdas)
    assert resumed.metrics["fit"]["mse_after"] == uninterrupted.metrics["fit"]["mse_after"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["-c", "{bad_yaml}"], "colour"),
        (["--model.nfe", "three"], "model.nfe"),
        (["--model.solver", "rk99"], "unknown solver 'rk99'"),
        (["--model.model", "/nonexistent/unet"], "'/nonexistent/unet' does not exist"),
        (["--model.solver", "heun", "--model.nfe", "2"], "cannot use exactly NFE=2"),
        (["--model.nfe", "0"], "nfe must be a positive integer"),
        (["--fid.feature", "null", "--fid.select", "true"], "fid.select chooses the λ scale"),
        (["--fid.scales", "[0, 1, 1]"], "fid.scales must be distinct finite numbers"),
    ],
)
def test_bad_config_exits_with_one_message(tiny, tmp_path, capsys, extra, message):
    from dode.cli.train import main

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  nfe: 3\n  colour: red\n")
    extra = [a.replace("{bad_yaml}", str(bad_yaml)) for a in extra]
    args = _args(tiny, tmp_path, "run") + extra
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written


def test_fid_select_writes_the_best_scoring_lambda_scale(tiny, tmp_path):
    """``--fid.select``: the file holds α·λ for the α with the lowest Fréchet distance; the
    module's checkpoint keeps the fitted λ."""
    from dode.cli.train import main

    args = _args(tiny, tmp_path, "sel") + [
        "--wandb_mode", "disabled", "--samples.num_samples", "0",
        "--fid.feature", "pixels", "--fid.num_samples", "16", "--fid.batch_size", "8",
        "--fid.scales", "[0, 0.5]", "--fid.select", "true",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fs = FittedSolver.load(main(args))
    finally:
        torch.set_num_threads(threads)
    scores = {0.0: fs.metrics["val/fd_pixels_base"], 0.5: fs.metrics["val/fd_pixels_alpha0.5"]}
    assert "val/fd_pixels_dode" not in fs.metrics  # α = 1 was not among the scales
    alpha = fs.metrics["val/lambda_scale"]
    assert alpha == min(scores, key=scores.get) and fs.metrics["lambda_scale"] == alpha
    fitted = torch.tensor(fs.metrics["lambdas_fitted"], dtype=torch.float64)
    assert fitted.abs().max() > 0
    assert torch.equal(fs.lambdas, alpha * fitted)
    ckpt = torch.load(tmp_path / "sel" / "checkpoints" / "last.ckpt", weights_only=False)
    assert torch.equal(ckpt["state_dict"]["lambdas"], fitted)


def test_configs_compose_and_print(capsys):
    from dode.cli.train import main

    sgd = str(ROOT / "configs" / "sgd-local.yaml")
    with pytest.raises(SystemExit) as e:
        main(["-c", TINY, "-c", sgd, "--model.nfe", "6", "--print_config"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for line in ("model: gmm-digits", "fit_mode: sgd-local", "nfe: 6", "max_epochs: 100",
                 "feature: pixels"):  # fmt: skip
        assert line in out, out


def test_wandb_online_only_with_a_key(monkeypatch):
    from dode.cli.train import _wandb_online

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert not _wandb_online("auto") and _wandb_online("online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert _wandb_online("auto") and not _wandb_online("offline")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert not _wandb_online("auto")


def test_default_config_restates_no_default(capsys):
    """``python -m dode.train`` and ``python -m dode.train -c configs/default.yaml`` fit the
    same: the file states no setting the code does not default to the same value."""
    from dode.cli.train import main

    printed = []
    for args in ([], ["-c", str(ROOT / "configs" / "default.yaml")]):
        with pytest.raises(SystemExit) as e:
            main([*args, "--print_config"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        printed.append([line for line in out.splitlines() if not line.startswith("config:")])
    assert printed[0] == printed[1]
    assert "  schedule: karras" in printed[0]


@pytest.mark.parametrize(
    "args, reset",
    [
        (["-c", "{sched}", "--model.schedule", "karras"], True),
        (["-c", "{sched}", "--model.schedule=karras"], True),
        (["-c", "{sched}", "--model.schedule", "time_uniform"], False),  # the same schedule
        (["-c", "{sched}", "-c", "{karras}"], True),  # a later file chooses another schedule
        (["-c", "{karras}", "-c", "{sched}"], False),  # the file's own options
        # options given on the command line are the user's own, wherever they stand (the
        # reset after --model.schedule comes before them, so they win)
        (["-c", "{sched}", "--model.schedule", "karras", "--model.schedule_options",
          "{rho: 5}"], True),
        (["--model.schedule_options", "{rho: 5}", "--model.schedule", "log_uniform"], False),
        (["--model.nfe", "4"], False),
    ],
)  # fmt: skip
def test_another_schedule_starts_from_its_own_options(tmp_path, args, reset):
    from dode.cli.train import reset_stale_options

    sched = tmp_path / "sched.yaml"
    sched.write_text("model:\n  schedule: time_uniform\n  schedule_options: {spacing: trailing}\n")
    karras = tmp_path / "karras.yaml"
    karras.write_text("model:\n  schedule: karras\n")
    args = [a.replace("{sched}", str(sched)).replace("{karras}", str(karras)) for a in args]
    out = reset_stale_options(args, {"schedule": "karras"}, (("schedule", "schedule_options"),))
    assert [a for a in out if a != "--model.schedule_options=null"] == args
    assert out.count("--model.schedule_options=null") == int(reset)
    if reset:  # right after the source that chose the other schedule
        at = out.index("--model.schedule_options=null")
        assert "karras" in out[at - 1]


def test_switching_the_schedule_on_the_command_line_fits_on_that_grid(tiny, tmp_path):
    """A config's time-uniform grid with ``{spacing: trailing}``, then ``--model.schedule
    karras``: the fit runs on the model's Karras grid (the trailing spacing is not handed to
    ``karras``)."""
    from dode.cli.train import main
    from dode.grids.schedules import grid_for_model

    overlay = tmp_path / "trailing.yaml"
    overlay.write_text(
        "model:\n  schedule: time_uniform\n  schedule_options: {spacing: trailing}\n"
    )
    args = _args(tiny, tmp_path, "sw") + [
        "-c", str(overlay), "--model.schedule", "karras",
        "--wandb_mode", "disabled", "--samples.num_samples", "0", "--fid.feature", "null",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fs = FittedSolver.load(main(args))
    finally:
        torch.set_num_threads(threads)
    den = load_denoiser(str(tiny))
    steps = dode.get_solver("ddim").steps_for_nfe(3)
    assert torch.equal(fs.sigmas, grid_for_model(den, "karras", steps).to(fs.sigmas.dtype))
    assert not torch.equal(
        fs.sigmas, grid_for_model(den, "time_uniform", steps, {"spacing": "trailing"})
    )


def test_another_fit_mode_or_model_starts_from_its_own_options(tmp_path):
    """``fit_mode`` and ``end_to_end``, ``model`` and ``model_options`` follow the rule of the
    schedule and its options: a config's options of the old choice are dropped when a later
    source makes another choice; options given as flags stay."""
    from dode.cli.train import CHOICE_OPTIONS, reset_stale_options

    assert ("fit_mode", "end_to_end") in CHOICE_OPTIONS
    assert ("model", "model_options") in CHOICE_OPTIONS
    e2e = tmp_path / "e2e.yaml"
    e2e.write_text("model:\n  fit_mode: end-to-end\n  end_to_end: {steps: 3}\n")
    args = ["-c", str(e2e), "--model.fit_mode", "lstsq"]
    assert reset_stale_options(args, {"fit_mode": "lstsq"}, (("fit_mode", "end_to_end"),)) == [
        *args,
        "--model.end_to_end=null",
    ]
    kept = ["--model.end_to_end", "{steps: 3}", "--model.fit_mode", "sgd-local"]
    assert reset_stale_options(kept, {"fit_mode": "lstsq"}, (("fit_mode", "end_to_end"),)) == kept
    same = ["-c", str(e2e), "--model.fit_mode", "end-to-end"]
    assert reset_stale_options(same, {"fit_mode": "lstsq"}, (("fit_mode", "end_to_end"),)) == same
    cond = tmp_path / "cond.yaml"
    cond.write_text("model:\n  model: some/model\n  model_options: {num_classes: 10}\n")
    args = ["-c", str(cond), "--model.model", "gmm-digits"]
    assert reset_stale_options(args, {"model": "digits"}, (("model", "model_options"),)) == [
        *args,
        "--model.model_options=null",
    ]


def test_switching_the_fit_mode_on_the_command_line_parses(tmp_path):
    """``-c configs/default.yaml -c configs/digits-end-to-end.yaml --model.fit_mode lstsq`` is a
    closed-form fit (the overlay's end_to_end settings are dropped, not refused)."""
    proc = subprocess.run(
        [sys.executable, "-m", "dode.train", "-c", str(ROOT / "configs" / "default.yaml"),
         "-c", str(ROOT / "configs" / "digits-end-to-end.yaml"), "--model.fit_mode", "lstsq",
         "--print_config"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=_env(tmp_path),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "fit_mode: lstsq" in proc.stdout and "end_to_end: null" in proc.stdout
