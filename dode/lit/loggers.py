"""What dode adds to a ``lightning.Trainer``: the loggers (a CSV log that survives a resume, W&B
continuing its run), the ``last.ckpt`` checkpoint and the callback that keeps the W&B run id
(:func:`trainer_extras`)."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from ..tracking import wandb_mode as resolve_wandb_mode
from .specs import WandbMode, check_trainer_options

__all__ = ["AppendingCSVLogger", "WandbIdCallback", "trainer_extras"]


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
