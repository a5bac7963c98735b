"""``dode.fit``: the Lightning fit of ``python -m dode.train``, called from Python.

::

    import dode
    fitted = dode.fit("gmm-digits", "ddim", nfe=4, fit_seeds="0-255", wandb_mode="disabled")
    x = fitted.sample(denoiser, noise)

:func:`fit` builds the :class:`~dode.lit.DODEModule`, the :class:`~dode.lit.NoiseDataModule`,
the callbacks and the ``Trainer`` from typed keyword arguments (the settings of a
``python -m dode.train`` config, section by section), then runs :func:`run_fit`, the code path
``python -m dode.train`` also takes after parsing its config: fit, write the fitted-solver
file (rank 0), finish the W&B run, return the :class:`~dode.files.solver_file.FittedSolver`.
"""

from __future__ import annotations

import csv
import inspect
import os
import re
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from ..files.solver_file import FittedSolver, ensure_writable
from .callbacks import FrechetCallback, LambdaPlotCallback, SampleGridCallback
from .data import NoiseDataModule
from .fit_modes import FitMode, FitStopped
from .module import DODEModule, check_resume_seeds
from .specs import (
    DataSpec,
    FitSpec,
    ModelSpec,
    RunSpec,
    SolverSpec,
    Specs,
    WandbMode,
    check_trainer_options,
    fit_kwargs,
)
from .tracking import wandb_mode as resolve_wandb_mode

__all__ = [
    "fit",
    "fit_specs",
    "run_paths",
    "run_fit",
    "fit_kwargs",
    "trainer_extras",
    "default_run_dir",
    "TRAINER_DEFAULTS",
    "FitResult",
    "FitStopped",
]

#: ``Trainer`` settings of every dode fit unless overridden (``trainer=`` / ``--trainer.*``).
TRAINER_DEFAULTS: dict[str, Any] = {
    "num_sanity_val_steps": 0,
    "use_distributed_sampler": False,
    "log_every_n_steps": 1,
    "max_epochs": 100,  # the sgd modes; lstsq sets one epoch per model call itself
}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def default_run_dir(model: str, solver: str, nfe: int, fit_mode: str) -> Path:
    """``runs/<model>-<solver>-nfe<N>-<fit_mode>`` (the model's folder name, not its path)."""
    base = Path(str(model).rstrip("/")).name
    return Path("runs") / _slug(f"{base}-{solver}-nfe{nfe}-{fit_mode}")


class WandbIdCallback(Callback):
    """Remember the W&B run id in the run folder, so a resumed fit continues that run."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                if isinstance(lg, WandbLogger) and lg.version:
                    self.run_dir.mkdir(parents=True, exist_ok=True)
                    (self.run_dir / "wandb_id.txt").write_text(str(lg.version))


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is kept and appended to (its
    header read first), so a resumed fit keeps the history of the epochs before the resume."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(next(csv.reader(f), []))


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume (rows are appended)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _loggers(
    run_dir: Path, wandb_mode: WandbMode, wandb_project: str, name: str | None, resume: bool
) -> list:

    loggers: list = [AppendingCSVLogger(save_dir=str(run_dir), name="", version="")]
    if wandb_mode != "disabled":
        id_file = run_dir / "wandb_id.txt"
        run_id = None
        if resume and id_file.is_file():
            run_id = id_file.read_text().strip() or None
        loggers.append(
            WandbLogger(
                save_dir=str(run_dir),
                project=wandb_project,
                name=name or run_dir.name,
                offline=resolve_wandb_mode(wandb_mode) != "online",
                id=run_id,
                resume="allow" if run_id else None,
            )
        )
    return loggers


def trainer_extras(
    run_dir: str | os.PathLike,
    trainer_options: Mapping[str, Any] | None = None,
    *,
    wandb_mode: WandbMode = "auto",
    wandb_project: str = "dode",
    name: str | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """What dode adds to the ``Trainer`` keyword arguments ``trainer_options``: the run folder
    (``default_root_dir``), the loggers (CSV and W&B, unless ``logger`` is given), the
    ``last.ckpt`` checkpoint (unless checkpointing is off or a ``ModelCheckpoint`` is given)
    and the callback that keeps the W&B run id for a resume. ``callbacks`` holds only the
    callbacks to add to the user's."""
    run_dir = Path(run_dir)
    opts = dict(trainer_options or {})
    check_trainer_options(opts)
    out: dict[str, Any] = {"default_root_dir": str(run_dir)}
    if opts.get("logger") is None:
        out["logger"] = _loggers(run_dir, wandb_mode, wandb_project, name, resume)
    callbacks: list[Callback] = []
    given = list(opts.get("callbacks") or [])
    if opts.get("enable_checkpointing", True) is not False and not any(
        isinstance(cb, ModelCheckpoint) for cb in given
    ):
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="last",  # one file, rewritten every epoch; ckpt_path="last" finds it
                save_top_k=1,
                every_n_epochs=1,
                enable_version_counter=False,
            )
        )
    if any(isinstance(lg, WandbLogger) for lg in out.get("logger") or []):
        callbacks.append(WandbIdCallback(run_dir))
    out["callbacks"] = callbacks
    return out


@dataclass
class FitResult:
    """What :func:`run_fit` hands back.

    Attributes:
        fitted: the fitted solver (every rank).
        path: its file (rank 0; ``None`` on the other ranks).
        lambda_scale: the λ scale α the file holds (1 unless a Fréchet callback chose one).
    """

    fitted: FittedSolver
    path: Path | None
    lambda_scale: float


def _chosen_scale_and_metrics(trainer: pl.Trainer) -> tuple[float, dict[str, float]]:
    """The λ scale chosen by a ``FrechetCallback(select=True)`` (1 without one) and the
    numbers the Fréchet callbacks measured."""
    scale, metrics = 1.0, {}
    for cb in trainer.callbacks:
        if isinstance(cb, FrechetCallback):
            metrics.update(cb.results)
            if cb.chosen_scale is not None:
                scale = cb.chosen_scale
    return scale, metrics


LOCK_NAME = ".fit.lock"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def _holds_run(run_dir: Path) -> list[str]:
    """What in ``run_dir`` shows that a fit ran there (its checkpoint, metrics, solver file)."""
    names = ("checkpoints/last.ckpt", "metrics.csv", "solver.safetensors")
    return [n for n in names if (run_dir / n).exists()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _acquire_lock(run_dir: Path) -> Path:
    """Take ``run_dir/.fit.lock`` (pid and host); refuse a live lock of another process.

    A lock of a process that is gone (same host) is taken over; one of another host cannot be
    checked and is refused (the message says which file to delete)."""
    lock = run_dir / LOCK_NAME
    me = f"{os.getpid()} {socket.gethostname()}\n"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid_s, _, host = lock.read_text().strip().partition(" ")
                pid = int(pid_s)
            except (OSError, ValueError):
                pid, host = -1, ""
            here = host == socket.gethostname()
            if pid in (os.getpid(), os.getppid()) and here:
                return lock
            if here and pid > 0 and _pid_alive(pid):
                raise ValueError(
                    f"run folder {str(run_dir)!r} is in use by another fit (pid {pid}; lock "
                    f"{str(lock)!r}); wait for it to finish, or pass another run folder."
                ) from None
            if not here and host:
                raise ValueError(
                    f"run folder {str(run_dir)!r} is locked by a fit on host {host!r} (pid "
                    f"{pid}); wait for it, or delete {str(lock)!r} if that fit is gone."
                ) from None
            print(f"dode: taking over the stale lock {str(lock)!r} (pid {pid} is gone).",
                  file=sys.stderr)  # fmt: skip
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return lock
    raise ValueError(f"could not take the lock {str(lock)!r}; try again.")


def _release_lock(lock: Path | None) -> None:
    if lock is None:
        return
    try:
        if lock.read_text().split(" ")[0] == str(os.getpid()):
            lock.unlink()
    except OSError:
        pass


def _resolve_checkpoint(
    module: DODEModule,
    run_dir: Path,
    ckpt_path: str | None,
    fit_seeds: list[int] | None = None,
    val_seeds: list[int] | None = None,
) -> str | None:
    """The checkpoint to resume from, checked before anything in the run folder is touched.

    ``"last"``: ``run_dir/checkpoints/last.ckpt``; when there is none and the folder holds no
    run, the fit starts fresh with a one-line notice (``ckpt_path="last"`` is safe for a job
    that may or may not have run before). A missing, unreadable (truncated, empty, random) or
    foreign checkpoint, or one of another problem, raises ``ValueError``.
    """
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        path = run_dir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            held = _holds_run(run_dir)
            if held:
                raise ValueError(
                    f"nothing to resume: run folder {str(run_dir)!r} holds {', '.join(held)} "
                    "but no checkpoints/last.ckpt; delete the folder to start over, or pass "
                    "another run folder."
                )
            print(
                f"dode: no checkpoint in {str(run_dir / 'checkpoints')!r} to resume from; "
                "starting a fresh fit.",
                file=sys.stderr,
            )
            return None
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            raise ValueError(
                f"checkpoint {ckpt_path!r} does not exist; pass 'last' (the run folder's last "
                "checkpoint) or the path of a .ckpt file."
            )
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to read it is a damaged file
        raise ValueError(
            f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {_one_line(e)}): it "
            "is truncated, empty or not a checkpoint. Delete it (and the run folder) to start "
            "over, or resume from another checkpoint."
        ) from None
    meta = ckpt.get("dode") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "state_dict" not in ckpt:
        raise ValueError(
            f"{str(path)!r} is not a dode checkpoint (no 'dode' entry); start a new fit."
        )
    if meta.get("problem_key") != module.problem_key() or meta.get("fit_mode") != module.fit_mode:
        raise ValueError(
            f"checkpoint {str(path)!r} was written for another problem (model, solver, grid, "
            "teacher or fit mode differ); resume with the same config, or start a new run folder."
        )
    check_resume_seeds(meta, fit_seeds, f"checkpoint {str(path)!r}")
    if "mode" in meta:
        module.mode_fit.check_state(meta["mode"], val_seeds)
    return str(path)


#: What a dode run folder may hold before its fit wrote checkpoints, metrics or a solver file
#: (a run that stopped early: the saved config, W&B's folder and id, Lightning's hparams).
_RUN_START_NAMES = {
    "config.yaml",
    "hparams.yaml",
    "wandb",
    "wandb_id.txt",
    "checkpoints",
    LOCK_NAME,
}


def _foreign_files(run_dir: Path) -> list[str]:
    """Entries of ``run_dir`` that no dode fit writes before its checkpoints or metrics."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name not in _RUN_START_NAMES)


def _check_solver_file(module: DODEModule, solver_file: Path, resume: bool) -> None:
    """Refuse to replace a solver file this run did not write: any existing file on a fresh
    fit, and on a resume one fitted for another problem (solver, grid or model)."""
    from ..files.solver_file import check_replaceable

    check_replaceable(solver_file, "solver_file")
    if not solver_file.exists():
        return
    same = False
    if resume:
        try:
            old = FittedSolver.load(solver_file)
            model = old.model or {}
            same = (
                old.solver == module.solver.config()
                # an end-to-end fit learns its grid: the file's is not the config's
                and (
                    module.fit_mode == "end-to-end" or old.sigmas.tolist() == module.sigmas.tolist()
                )
                and model.get("id") == module.hparams.model
                and model.get("weights_hash") == module.weights_hash
            )
        except ValueError:
            same = False
    if not same:
        raise ValueError(
            f"solver_file {str(solver_file)!r} already exists (another fit's solver file); "
            "pass a new --solver_file (or leave it out: <run_dir>/solver.safetensors), or move "
            "that file away to replace it."
        )


def _prepare_run(
    module: DODEModule,
    run_dir: Path,
    solver_file: Path,
    ckpt_path: str | None,
    fit_seeds: list[int] | None = None,
    val_seeds: list[int] | None = None,
) -> tuple[str | None, Path | None]:
    """Every check of the run folder, before anything in it is touched: the folders can be
    written, the lock is ours (rank 0), the checkpoint resumes this problem, and a fresh fit
    does not go into a folder holding another run. Returns the checkpoint path and the lock."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if solver_file.is_dir():
        raise ValueError(
            f"solver_file {str(solver_file)!r} is a folder; pass a file name such as "
            f"{str(solver_file / 'solver.safetensors')!r}."
        )
    ensure_writable(run_dir, "run folder", "pass a run folder you can write to")
    ensure_writable(
        solver_file.parent,
        "the fitted-solver file's folder",
        "pass a solver_file in a folder you can write to",
    )
    rank = getattr(rank_zero_only, "rank", 0) or 0
    foreign = _foreign_files(run_dir)
    if foreign and not _holds_run(run_dir):
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise ValueError(
            f"run folder {str(run_dir)!r} is not empty and holds no dode run ({shown}): a fit "
            "would write its samples.png, lambdas.png, metrics and checkpoints among those "
            "files. Pass a new or empty run folder (--run_dir)."
        )
    created = not run_dir.exists()
    lock = None
    try:
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = _acquire_lock(run_dir)
        ckpt = _resolve_checkpoint(module, run_dir, ckpt_path, fit_seeds, val_seeds)
        held = _holds_run(run_dir)
        if ckpt is None and "solver.safetensors" in held and rank == 0:
            raise ValueError(
                f"run folder {str(run_dir)!r} already holds a run that finished "
                f"({', '.join(held)}); pass another run folder, or delete it to start over "
                "(--ckpt_path last resumes a fit that did not finish)."
            )
        if ckpt is None and held and rank == 0:
            raise ValueError(
                f"run folder {str(run_dir)!r} already holds a run ({', '.join(held)}); resume "
                "it with ckpt_path last (--ckpt_path last), pass another run folder, or delete "
                "it to start over."
            )
        if rank == 0:
            if ckpt is None:
                _check_solver_file(module, solver_file, resume=False)
            elif solver_file.exists():
                _check_solver_file(module, solver_file, resume=True)
    except BaseException:
        _release_lock(lock)
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    return ckpt, lock


def run_fit(
    module: DODEModule,
    datamodule: NoiseDataModule,
    trainer: pl.Trainer,
    *,
    solver_file: str | os.PathLike,
    ckpt_path: str | None = None,
) -> FitResult:
    """Fit, then write the fitted-solver file on rank 0 (and save it with the W&B run).

    The code path of both :func:`fit` and ``python -m dode.train`` once their objects exist.
    Raises ``ValueError`` on bad input and ``RuntimeError`` if the fit was interrupted (nothing
    is written then). The run folder is checked before anything in it is touched (see
    :func:`_prepare_run`) and locked for the fit (``.fit.lock``: two fits never share one).
    """
    # Check the conditioning against the model before anything starts (one clear error).
    module.use_conditioning(datamodule.conditioning)
    check_run = getattr(module.mode_fit, "check_run", None)  # end-to-end: seeds per process
    if check_run is not None:
        check_run(list(datamodule.fit_seeds), list(datamodule.val_seeds), trainer.world_size)
    ckpt_path, lock = _prepare_run(
        module,
        Path(trainer.default_root_dir),
        Path(solver_file),
        ckpt_path,
        list(datamodule.fit_seeds),
        list(datamodule.val_seeds),
    )
    try:
        return _run_fit(module, datamodule, trainer, solver_file=solver_file, ckpt_path=ckpt_path)
    finally:
        _release_lock(lock)


def _run_fit(
    module: DODEModule,
    datamodule: NoiseDataModule,
    trainer: pl.Trainer,
    *,
    solver_file: str | os.PathLike,
    ckpt_path: str | None,
) -> FitResult:
    t_wandb = time.perf_counter()
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            _ = lg.experiment  # starts the W&B run (rank 0 only; lazily otherwise)
    module.timings["wandb_start_s"] = time.perf_counter() - t_wandb
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    t_fit = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        raise FitStopped(
            "stopped by SIGTERM; no solver file was written and nothing is half-written (the "
            "teacher states or references computed so far stay in the cache, if one is on). "
            f"Resume with the same run folder ({trainer.default_root_dir}) and "
            "ckpt_path='last' (--ckpt_path last).",
            exit_code=128 + 15,
        ) from None
    module.timings["fit_total_s"] = time.perf_counter() - t_fit
    if trainer.interrupted:
        raise FitStopped(
            f"interrupted; no solver file was written. Resume with the same run folder "
            f"({trainer.default_root_dir}) and ckpt_path='last'."
        )
    scale, metrics = _chosen_scale_and_metrics(trainer)
    fitted = module.fitted_solver(metrics, scale=scale)
    if not trainer.is_global_zero:
        return FitResult(fitted, None, scale)
    path = fitted.save(solver_file)
    t_finish = time.perf_counter()
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.save(str(path), base_path=str(path.parent), policy="now")
            lg.experiment.summary.update({"solver_file": str(path)})
            lg.experiment.finish()
    module.timings["wandb_finish_s"] = time.perf_counter() - t_finish
    return FitResult(fitted, path, scale)


def fit(
    model: str | ModelSpec | Specs = "digits",
    solver: str | SolverSpec = "ddim",
    *,
    nfe: int = 5,
    solver_options: dict[str, Any] | None = None,
    schedule: str = "karras",
    schedule_options: dict[str, Any] | None = None,
    teacher_factor: int = 10,
    teacher_solver: str | None = None,
    teacher_solver_options: dict[str, Any] | None = None,
    teacher_space: Literal["rho", "log", "linear"] | None = None,
    fit_mode: FitMode = "lstsq",
    lr: float = 0.05,
    dtype: Literal["float32", "float64"] = "float32",
    model_dtype: Literal["float16", "bfloat16", "float32", "float64"] | None = None,
    sigma_to_t: Literal["interp", "snap"] = "interp",
    model_options: dict[str, Any] | None = None,
    cache_outputs: bool = True,
    activation_checkpointing: bool = True,
    check_finite: bool = True,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    end_to_end: dict[str, Any] | None = None,
    fit_seeds: str | int | list[int] = "0-1023",
    val_seeds: str | int | list[int] = "1000000-1000255",
    batch_size: int = 128,
    cache_dir: str | None = "auto",
    class_labels: str | list[int] | None = None,
    prompts: str | None = None,
    negative_prompt: str | None = None,
    trainer: dict[str, Any] | None = None,
    samples: dict[str, Any] | None = None,
    lambda_plot: dict[str, Any] | None = None,
    fid: dict[str, Any] | None = None,
    run_dir: str | os.PathLike | None = None,
    solver_file: str | os.PathLike | None = None,
    ckpt_path: str | None = None,
    wandb_mode: WandbMode = "auto",
    wandb_project: str = "dode",
    name: str | None = None,
    seed: int = 0,
    data: DataSpec | None = None,
    fit: FitSpec | None = None,
    run: RunSpec | None = None,
) -> FittedSolver:
    """Fit D-ODE λ with Lightning and return the fitted solver (also written to a file).

    The Python form of ``python -m dode.train``, with the same settings and defaults. They
    come as typed specs (:mod:`dode.lit.specs`) or as flat keywords, which are gathered into
    the same specs (one code path, :func:`fit_specs`)::

        dode.fit(ModelSpec("gmm-digits"), SolverSpec("ddim", nfe=4), data=DataSpec("0-255"),
                 fit=FitSpec("sgd-local"), run=RunSpec(wandb_mode="disabled"))
        dode.fit(Specs.from_config("configs/tiny.yaml"))
        dode.fit("gmm-digits", "ddim", nfe=4, fit_seeds="0-255", wandb_mode="disabled")

    A group given as a spec takes none of its flat keywords (``ValueError`` if one is set).
    The flat keywords from ``model`` to ``end_to_end`` are those of
    :class:`~dode.lit.DODEModule` (``--model.*``: :class:`~dode.lit.ModelSpec`,
    :class:`~dode.lit.SolverSpec`, :class:`~dode.lit.FitSpec`), ``fit_seeds`` to
    ``negative_prompt`` those of :class:`~dode.lit.NoiseDataModule` (``--data.*``:
    :class:`~dode.lit.DataSpec`); ``trainer``, ``samples``, ``lambda_plot`` and ``fid`` are
    the keyword options of ``lightning.Trainer``, :class:`~dode.lit.SampleGridCallback`,
    :class:`~dode.lit.LambdaPlotCallback` and :class:`~dode.lit.FrechetCallback`
    (``--trainer.*``, ``--samples.*``, ...) and, with the settings below, form
    :class:`~dode.lit.RunSpec`.

    Args:
        model: a model name (flat form), a :class:`~dode.lit.ModelSpec`, or a whole
            :class:`~dode.lit.Specs` (then nothing else may be given).
        solver: a solver name (flat form) or a :class:`~dode.lit.SolverSpec`.
        data: the data settings as a :class:`~dode.lit.DataSpec` (instead of ``fit_seeds``...).
        fit: the fit settings as a :class:`~dode.lit.FitSpec` (instead of ``fit_mode``...).
        run: the run settings as a :class:`~dode.lit.RunSpec` (instead of ``run_dir``...).
        run_dir: the run folder (logs, checkpoints, W&B, images); default
            ``runs/<model>-<solver>-nfe<N>-<fit_mode>``.
        solver_file: where the fitted-solver file goes; default ``<run_dir>/solver.safetensors``.
        ckpt_path: resume: ``"last"`` (the run folder's last checkpoint) or a checkpoint path.
        wandb_mode: ``auto`` (online when ``WANDB_API_KEY`` is set and ``WANDB_MODE`` is not
            offline/disabled), ``offline``, ``online`` or ``disabled``.
        wandb_project: the W&B project.
        name: the run name (default: the run folder's name).
        seed: passed to ``lightning.seed_everything`` (noise depends on the data seeds only).

    Returns:
        The :class:`~dode.files.solver_file.FittedSolver` (λ times the scale chosen by
        ``fid={"select": True}``, if any), on every rank; rank 0 has written it to
        ``solver_file``.

    Raises:
        ValueError: bad settings (one message naming the problem).
        RuntimeError: the fit was interrupted (nothing written; resume with ``ckpt_path="last"``).
    """
    flat = {k: v for k, v in locals().items() if k not in ("model", "solver", "data", "fit", "run")}
    if isinstance(model, Specs):  # every group given: a flat keyword set too is refused
        if isinstance(solver, SolverSpec) or data or fit or run:
            raise ValueError(
                "dode.fit(specs) takes no other spec; put it in the Specs "
                "(dataclasses.replace(specs, solver=SolverSpec(...)))."
            )
        groups = {g: getattr(model, g) for g in ("model", "solver", "fit", "data", "run")}
        return fit_specs(Specs.combine(groups, {**flat, "solver": solver}))
    groups = {"data": data, "fit": fit, "run": run}
    if isinstance(model, ModelSpec):
        groups["model"] = model
    else:
        flat["model"] = model
    if isinstance(solver, SolverSpec):
        groups["solver"] = solver
    else:
        flat["solver"] = solver
    return fit_specs(Specs.combine(groups, flat))


def run_paths(specs: Specs) -> tuple[Path, Path]:
    """The run folder and the fitted-solver file of ``specs``: ``run.run_dir`` (default
    :func:`default_run_dir`) and ``run.solver_file`` (default ``<run_dir>/solver.safetensors``)."""
    r = specs.run
    run_dir = (
        Path(r.run_dir)
        if r.run_dir
        else default_run_dir(specs.model.model, specs.solver.solver, specs.solver.nfe,
                             specs.fit.fit_mode)
    )  # fmt: skip
    return run_dir, Path(r.solver_file) if r.solver_file else run_dir / "solver.safetensors"


def fit_specs(specs: Specs) -> FittedSolver:
    """:func:`fit` of :class:`~dode.lit.specs.Specs` (what ``dode.fit(specs)`` runs; the flat
    keywords of :func:`fit` are gathered into specs and come here too)."""
    if not isinstance(specs, Specs):
        raise ValueError(f"fit_specs takes a Specs, got {type(specs).__name__}.")
    r = specs.run
    pl.seed_everything(r.seed, workers=True, verbose=False)
    module = DODEModule.from_specs(specs.model, specs.solver, specs.fit)
    data = NoiseDataModule.from_spec(specs.data)
    module.use_conditioning(data.conditioning)
    callbacks = [
        SampleGridCallback(**(r.samples or {})),
        LambdaPlotCallback(**(r.lambda_plot or {})),
        FrechetCallback(**(r.fid or {})),
    ]
    run_dir, out = run_paths(specs)
    opts = {**TRAINER_DEFAULTS, **(r.trainer or {})}
    extras = trainer_extras(
        run_dir, opts, wandb_mode=r.wandb_mode, wandb_project=r.wandb_project, name=r.name,
        resume=bool(r.ckpt_path),
    )  # fmt: skip
    extras["callbacks"] = [*(opts.get("callbacks") or []), *callbacks, *extras["callbacks"]]
    pl_trainer = pl.Trainer(**{**opts, **extras})
    return run_fit(module, data, pl_trainer, solver_file=out, ckpt_path=r.ckpt_path).fitted


def _init_keys(cls: type) -> tuple[str, ...]:
    """The constructor arguments of ``cls`` (the ``--model.*`` / ``--data.*`` settings)."""
    return tuple(p for p in inspect.signature(cls.__init__).parameters if p != "self")


_MODEL_KEYS = _init_keys(DODEModule)
_DATA_KEYS = _init_keys(NoiseDataModule)
