"""``fit_mode: end-to-end``: the grid, history coefficients and model-time shift fitted on the
final sample by :func:`dode.learned_solver.fit_end_to_end`, for a :class:`~dode.lit.DODEModule`'s
problem (model, solver, NFE, conditioning).

It runs in one process on one device, in one go: no ``Trainer`` loop, no multi-GPU, no resume.
The fit seeds fit; the data module's ``val_seeds`` select the warm-start cell and accept or
reject the result.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..files.solver_file import FittedSolver
from ..noise import noise_from_seeds
from .fit_modes import ModeFit

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from .data import NoiseDataModule
    from .module import DODEModule

__all__ = ["EndToEndFit", "check_end_to_end"]

#: ``end_to_end`` settings that are not keywords of :func:`dode.learned_solver.fit_end_to_end`.
OWN_SETTINGS = {"warm_start": "best_standard", "reference_nfe": 100}


def check_end_to_end(options: dict[str, Any] | None) -> dict[str, Any]:
    """The ``end_to_end`` settings, checked against :func:`fit_end_to_end`'s keywords.

    Raises:
        ValueError: an unknown setting, a bad ``warm_start`` or ``reference_nfe``.
    """
    from ..learned_solver import fit_end_to_end

    opts = dict(options or {})
    allowed = {
        p.name
        for p in inspect.signature(fit_end_to_end).parameters.values()
        if p.kind == p.KEYWORD_ONLY
    } - {"select_noise", "select_reference", "select_denoiser"}
    bad = sorted(set(opts) - allowed - set(OWN_SETTINGS))
    if bad:
        raise ValueError(
            f"unknown end_to_end setting {', '.join(bad)}; use {', '.join(sorted(OWN_SETTINGS))} "
            f"or {', '.join(sorted(allowed))}."
        )
    if opts.get("warm_start", "best_standard") not in ("best_standard", "config"):
        raise ValueError(
            f"end_to_end.warm_start must be 'best_standard' or 'config', got "
            f"{opts['warm_start']!r}."
        )
    nfe = opts.get("reference_nfe", 100)
    if not isinstance(nfe, int) or nfe < 10:
        raise ValueError(f"end_to_end.reference_nfe must be an integer >= 10, got {nfe!r}.")
    return opts


class EndToEndFit(ModeFit):
    """The end-to-end fit of a module's problem, and its driver for ``dode.fit``.

    Args:
        options: the checked ``end_to_end`` settings (:func:`check_end_to_end`).
    """

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = dict(options)

    def setup(self, module: DODEModule, stage: str) -> None:
        if stage == "fit":
            raise ValueError(
                "fit_mode end-to-end does not run in a Trainer loop; run it with dode.fit(...) "
                "or python -m dode.train (dode.lit.api.run_fit), or "
                "module.fit_end_to_end(fit_seeds, select_seeds)."
            )

    def fit(
        self, module: DODEModule, fit_seeds: list[int], select_seeds: list[int]
    ) -> FittedSolver:
        """References of both seed sets, the warm-start cell, then
        :func:`dode.learned_solver.fit_end_to_end`; the fitted solver with the module's model
        record. Runs on the module's device, in this process."""
        from ..learned_solver import fit_end_to_end
        from ..standard_grids import reference_solution, select_grid, standard_grids

        opts = {**OWN_SETTINGS, **self.options}
        warm, ref_nfe = opts.pop("warm_start"), opts.pop("reference_nfe")
        t0 = time.perf_counter()
        dev = module.device
        dens, noise, refs = [], [], []
        for seeds in (fit_seeds, select_seeds):
            z = noise_from_seeds(seeds, module.sample_shape, module.integration_dtype, dev)
            den = module.bound(module.condition(seeds))
            dens.append(den)
            noise.append(z)
            refs.append(reference_solution(den, z, nfe=ref_nfe))
        t_ref = time.perf_counter() - t0
        grid, label = module.sigmas, module.grid_record.get("schedule")
        if warm == "best_standard":
            choice = select_grid(
                dens[1], module.solver, module.num_calls, noise[1],
                grids=standard_grids(module.denoiser), reference=refs[1],
            )  # fmt: skip
            grid, label = choice.sigmas, choice.spec.label
        fitted = fit_end_to_end(
            dens[0], module.solver, grid, noise[0], refs[0], select_noise=noise[1],
            select_reference=refs[1], select_denoiser=dens[1], **opts,
        )  # fmt: skip
        record = fitted.metrics["end_to_end"]
        record.update(warm_start=warm, warm_start_grid=label, reference_nfe=ref_nfe)
        module.grid_record = {"schedule": "end-to-end", "warm_start": label}
        module.timings.update(reference_s=t_ref, end_to_end_s=time.perf_counter() - t0)
        metrics = {
            "fit_mode": module.fit_mode,
            "nfe": module.num_calls,
            "end_to_end": record,
            "grid": module.grid_record,
            **{f"time/{k}": v for k, v in module.timings.items()},
        }
        return replace(fitted, model=module.model_record(), metrics=metrics)

    def run(
        self,
        module: DODEModule,
        datamodule: NoiseDataModule,
        trainer: pl.Trainer,
        ckpt_path: str | None,
    ) -> FittedSolver:
        """:meth:`fit` on the data module's fit seeds (fit) and ``val_seeds`` (selection), on
        the trainer's device (its loop, strategies and checkpoints are not used); its record
        goes to the trainer's loggers.

        Raises:
            ValueError: a ``ckpt_path`` (nothing to resume) or more than one device.
        """
        if ckpt_path is not None:
            raise ValueError(
                "fit_mode end-to-end has no checkpoints to resume (it runs in one go); drop "
                "ckpt_path, or start it again."
            )
        if trainer.world_size > 1:
            raise ValueError(
                "fit_mode end-to-end runs on one device; set trainer.devices 1 and num_nodes 1."
            )
        t0 = time.perf_counter()
        module.to(trainer.strategy.root_device)
        fitted = self.fit(module, datamodule.fit_seeds, datamodule.val_seeds)
        module.timings["fit_total_s"] = time.perf_counter() - t0
        rec = fitted.metrics["end_to_end"]
        scalars = {
            "e2e/accepted": float(rec["accepted"]),
            "e2e/select_mse_base": rec["select_mse_base"],
            "e2e/select_mse": rec["select_mse"],
            "e2e/best_step": float(rec["best_step"]),
            "e2e/seconds": rec["seconds"],
        }
        for lg in trainer.loggers:
            lg.log_metrics(scalars, step=0)
            lg.save()
        return fitted
