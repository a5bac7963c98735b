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

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

from ..files.solver_file import FittedSolver
from ..files.writes import release_lock
from .callbacks import FrechetCallback, LambdaPlotCallback, SampleGridCallback
from .data import NoiseDataModule
from .fit_modes import FitStopped
from .loggers import trainer_extras
from .module import DODEModule
from .run_folder import default_run_dir, prepare_run
from .specs import (
    DataSpec,
    FitSpec,
    ModelSpec,
    RunSpec,
    SolverSpec,
    Specs,
    fit_kwargs,
)

__all__ = [
    "fit",
    "fit_specs",
    "run_paths",
    "run_fit",
    "fit_kwargs",
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
    :func:`~dode.lit.run_folder.prepare_run`) and locked for the fit (``.fit.lock``: two fits never share one).
    """
    # Check the conditioning against the model before anything starts (one clear error).
    module.use_conditioning(datamodule.conditioning)
    check_run = getattr(module.mode_fit, "check_run", None)  # end-to-end: seeds per process
    if check_run is not None:
        check_run(list(datamodule.fit_seeds), list(datamodule.val_seeds), trainer.world_size)
    ckpt_path, lock = prepare_run(
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
        release_lock(lock)


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
    model: str | ModelSpec | Specs | None = None,
    solver: str | SolverSpec | None = None,
    *,
    data: DataSpec | None = None,
    fit: FitSpec | None = None,
    run: RunSpec | None = None,
    **settings: Any,
) -> FittedSolver:
    """Fit D-ODE λ with Lightning and return the fitted solver (also written to a file).

    The Python form of ``python -m dode.train``, with the same settings and defaults: those of
    the specs (:mod:`dode.lit.specs`), where each is declared, defaulted and documented once.
    They come as typed specs or as flat keywords (any field of a spec), which are gathered into
    the same specs (one code path, :func:`fit_specs`)::

        dode.fit(ModelSpec("gmm-digits"), SolverSpec("ddim", nfe=4), data=DataSpec("0-255"),
                 fit=FitSpec("sgd-local"), run=RunSpec(wandb_mode="disabled"))
        dode.fit(Specs.from_config("configs/tiny.yaml"))
        dode.fit("gmm-digits", "ddim", nfe=4, fit_seeds="0-255", wandb_mode="disabled")

    A group given as a spec takes none of its flat keywords (``ValueError`` if one is passed,
    even with its default value).

    Args:
        model: the model (:attr:`ModelSpec.model <dode.lit.specs.ModelSpec>`, flat form), a
            :class:`~dode.lit.ModelSpec`, or a whole :class:`~dode.lit.Specs` (then nothing
            else may be given); left out: the default model.
        solver: the solver (:attr:`SolverSpec.solver <dode.lit.specs.SolverSpec>`, flat form)
            or a :class:`~dode.lit.SolverSpec`; left out: the default solver.
        data: the data settings as a :class:`~dode.lit.DataSpec` (instead of ``fit_seeds``...).
        fit: the fit settings as a :class:`~dode.lit.FitSpec` (instead of ``fit_mode``...).
        run: the run settings as a :class:`~dode.lit.RunSpec` (instead of ``run_dir``...).
        **settings: flat keywords: the fields of :class:`~dode.lit.ModelSpec`,
            :class:`~dode.lit.SolverSpec` and :class:`~dode.lit.FitSpec` (``--model.*``),
            :class:`~dode.lit.DataSpec` (``--data.*``) and :class:`~dode.lit.RunSpec` (the
            run folder, resume, W&B, the seed, and the ``trainer``, ``samples``,
            ``lambda_plot`` and ``fid`` sections).

    Returns:
        The :class:`~dode.files.solver_file.FittedSolver` (λ times the scale chosen by
        ``fid={"select": True}``, if any), on every rank; rank 0 has written it to
        ``solver_file``.

    Raises:
        TypeError: a keyword that is no setting.
        ValueError: bad settings (one message naming the problem).
        RuntimeError: the fit was interrupted (nothing written; resume with ``ckpt_path="last"``).
    """
    unknown = sorted(set(settings) - set(Specs.defaults()))
    if unknown:
        raise TypeError(
            f"dode.fit() got an unexpected keyword argument {unknown[0]!r}; the settings are "
            f"the fields of ModelSpec, SolverSpec, FitSpec, DataSpec and RunSpec: "
            f"{', '.join(Specs.defaults())}."
        )
    # only what the caller passed: a keyword equal to its default still counts
    given = {k: v for k, v in (("model", model), ("solver", solver)) if v is not None}
    given.update(settings)
    if isinstance(given.get("model"), Specs):  # every group given: a flat keyword is refused
        specs = given.pop("model")
        if isinstance(given.get("solver"), SolverSpec) or data or fit or run:
            raise ValueError(
                "dode.fit(specs) takes no other spec; put it in the Specs "
                "(dataclasses.replace(specs, solver=SolverSpec(...)))."
            )
        groups = {g: getattr(specs, g) for g in ("model", "solver", "fit", "data", "run")}
        return fit_specs(Specs.combine(groups, given))
    groups = {"data": data, "fit": fit, "run": run}
    for name, spec_cls in (("model", ModelSpec), ("solver", SolverSpec)):
        if isinstance(given.get(name), spec_cls):
            groups[name] = given.pop(name)
    return fit_specs(Specs.combine(groups, given))


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
