"""``DODEModule``: a frozen denoiser and the D-ODE λ as a LightningModule.

The module defines the problem (model, solver, σ grid, teacher) and fits one λ per model call
(Kim, Tang & Yu, CVPR 2024, Eq. 6: ``õ_k = o_k + λ_k (o_k − o_{k−1})``). It keeps what
Lightning needs (hooks, logging, the optimizer, checkpoints) and hands each fit mode's work to
a small class (:mod:`dode.lit.fit_modes`): ``lstsq`` (the paper's closed form, **epoch k fits
λ_k**: :class:`~dode.lit.lstsq.LstsqFit`), ``sgd-local`` / ``sgd-global`` (Adam on the MSE to
the teacher: :class:`~dode.lit.gradient.GradientFit`) and ``end-to-end`` (grid, history
coefficients and model-time shift on the final sample, a training run through the whole
trajectory: :class:`~dode.lit.end_to_end.EndToEndFit`). Validation (MSE to the teacher per state) is
:class:`~dode.lit.validation.TeacherMSE`.

Conditional models (class-conditional UNets, Stable Diffusion): the data module's
per-seed conditioning (``--data.class_labels`` / ``--data.prompts``) comes with each batch and
is bound into the denoiser (``den.bind(cond, guidance_scale=w)``) for the teacher, the fit and
validation; the guidance scale and the conditioning rule are part of the problem (the teacher
cache key, the checkpoint key and the fitted-solver file).

The denoiser is never part of a checkpoint: ``state_dict`` holds only ``lambdas`` and
``num_fitted`` (and, for ``end-to-end``, the ``learned`` solver's parameters); the extra ``dode`` entry holds the fit record and a key of the problem, checked
on resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from ..conditioning import SeedConditioning
from ..denoisers import check_guidance
from ..denoisers.loading import load_denoiser, resolve_dtype
from ..files.solver_file import FittedSolver, model_schedule
from ..files.weights import weights_hash
from ..grids.schedules import grid_for_model, refine_space
from ..lambda_fit import FitInfo, teacher_states
from ..learned_grid import LEARNED_SCHEDULES, learned_schedule
from ..noise import format_seeds
from ..solvers import Solver
from ..version import __version__
from .data import NoiseDataModule, ReferenceSource, TeacherSource, problem_digest
from .end_to_end import EndToEndFit
from .fit_modes import FIT_MODES, FitMode, FitStopped, ModeFit
from .gradient import GradientFit
from .lstsq import LstsqFit
from .problem import FitProblem
from .specs import FitSpec, ModelSpec, ModuleSpec, SolverSpec
from .validation import TeacherMSE

__all__ = ["DODEModule", "FitMode", "FitStopped", "check_resume_seeds"]


def check_resume_seeds(meta: dict, seeds: list[int] | None, where: str) -> None:
    """``ValueError`` if a checkpoint's ``dode`` record was written for other fit seeds than
    ``seeds`` (a resumed fit would mix the statistics of two seed sets). Checkpoints that
    record no seeds (older dode) and ``seeds=None`` are not checked."""
    want = meta.get("fit_seeds_digest")
    if want is None or seeds is None or problem_digest(list(seeds))[:24] == want:
        return
    raise ValueError(
        f"{where} was fitted on other fit seeds ({meta.get('num_fit_seeds')} seeds) than this "
        f"run's ({len(seeds)} seeds): resuming would mix λ statistics of both. Resume with the "
        "same --data.fit_seeds, or start a new run folder."
    )


def make_fit_mode(
    fit_mode: str,
    problem: FitProblem,
    *,
    cache_outputs: bool = True,
    activation_checkpointing: bool = True,
    end_to_end: dict[str, Any] | None = None,
) -> ModeFit:
    """The object that does ``fit_mode``'s work on ``problem`` for a :class:`DODEModule`."""
    if fit_mode == "lstsq":
        return LstsqFit(problem, cache_outputs)
    if fit_mode in ("sgd-local", "sgd-global"):
        return GradientFit(problem, fit_mode[4:], activation_checkpointing)
    if fit_mode == "end-to-end":
        return EndToEndFit(problem, end_to_end or {})
    raise ValueError(f"unknown fit_mode {fit_mode!r}; use one of {', '.join(FIT_MODES)}.")


class DODEModule(pl.LightningModule):
    """Fit D-ODE λ for a frozen diffusion model.

    Args:
        **settings: the fields of :class:`~dode.lit.specs.ModelSpec` (the model and how it is
            evaluated), :class:`~dode.lit.specs.SolverSpec` (solver, NFE, σ grid, teacher) and
            :class:`~dode.lit.specs.FitSpec` (how λ are fitted), as keywords: the settings of
            :class:`~dode.lit.specs.ModuleSpec`, declared and defaulted there (and shown by
            ``python -m dode.train --help`` as ``--model.*``). Any left out keeps its default.

    Raises:
        TypeError: a keyword that is no setting.
        ValueError: a bad value (the spec's message).
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        # The settings, checked by their specs (dode.lit.specs: one place for every check).
        spec = ModuleSpec(**settings)
        self.model_spec, self.solver_spec, self.fit_spec = spec.parts
        self.save_hyperparameters(spec.kwargs())
        m, sv, f = spec.parts
        model, dtype, model_dtype = m.model, m.dtype, m.model_dtype
        schedule, schedule_options = sv.schedule, sv.schedule_options
        self.end_to_end = dict(f.end_to_end or {})
        self.fit_mode = f.fit_mode
        self.lr = float(f.lr)
        self.integration_dtype = resolve_dtype(dtype)
        self.solver: Solver = self.solver_spec.build()
        self.num_steps = self.solver.steps_for_nfe(sv.nfe)
        self.teacher: Solver | None = self.solver_spec.build_teacher()
        t_load = time.perf_counter()
        self.denoiser = load_denoiser(
            model, sigma_to_t=m.sigma_to_t, dtype=model_dtype or dtype, **(m.model_options or {})
        )
        t_load = time.perf_counter() - t_load
        self.guidance_scale, self.guidance_rescale = check_guidance(
            m.guidance_scale, m.guidance_rescale
        )
        if self.guidance_scale != 1.0 and not getattr(self.denoiser, "has_unconditional", False):
            what = (
                "conditional" if getattr(self.denoiser, "conditional", False) else "unconditional"
            )
            raise ValueError(
                f"guidance_scale {self.guidance_scale:g} needs the model's unconditional output, "
                f"but {model!r} is {what} with no unconditional input (no null label / not "
                "trained with condition dropout); use guidance_scale 1."
            )
        self.conditioning: SeedConditioning | None = None
        if self.denoiser.sample_shape is None:
            raise ValueError(
                f"model {model!r} does not declare its sample shape; set sample_shape on the "
                "Denoiser your factory returns."
            )
        # how the grid was obtained (the file's metrics["grid"]); learned grids: dode.learned_grid
        self.grid_record: dict[str, Any] = {"schedule": schedule}
        if schedule in LEARNED_SCHEDULES:
            self.sigmas, rec = learned_schedule(
                self.denoiser, self.solver, schedule, self.num_steps, schedule_options,
                self.integration_dtype,
            )  # fmt: skip
            self.grid_record.update(rec)
        else:
            self.sigmas = grid_for_model(self.denoiser, schedule, self.num_steps, schedule_options)
        self.solver.check_grid(self.sigmas)
        self.s_list: list[float] = self.sigmas.tolist()
        self.num_calls = self.solver.nfe(self.num_steps)
        self.teacher_space = sv.teacher_space or refine_space(schedule)
        self.teacher_rho = float((schedule_options or {}).get("rho", 7.0))
        stages = self.solver.stage_sigmas(self.sigmas).tolist()
        self.target_sigmas: list[float] = sorted(set(self.s_list[1:]) | set(stages), reverse=True)
        self.weights_hash = weights_hash(self.denoiser)
        self.lambdas = nn.Parameter(torch.zeros(self.num_calls, dtype=torch.float64))
        self.register_buffer("num_fitted", torch.zeros((), dtype=torch.long))
        self.fit_info = FitInfo()
        self.cache_outputs = f.cache_outputs
        self.activation_checkpointing = f.activation_checkpointing
        self.check_finite = f.check_finite
        #: what the fit mode and the validation work on (:mod:`dode.lit.problem`)
        self.fit_problem = FitProblem(
            denoiser=self.denoiser,
            solver=self.solver,
            sigmas=self.sigmas,
            target_sigmas=tuple(self.target_sigmas),
            dtype=self.integration_dtype,
            check_finite=f.check_finite,
            bind=self.bound,
            condition=self.condition,
            schedule=schedule,
        )
        #: the fit mode's work (:mod:`dode.lit.fit_modes`); this module delegates to it
        self.mode_fit: ModeFit = make_fit_mode(
            f.fit_mode,
            self.fit_problem,
            cache_outputs=f.cache_outputs,
            activation_checkpointing=f.activation_checkpointing,
            end_to_end=self.end_to_end,
        )
        self.automatic_optimization = self.mode_fit.automatic_optimization
        self.timings: dict[str, float] = {"model_load_s": t_load}
        self.val_metrics: dict[str, float] = {}
        self.validation = TeacherMSE(self.fit_problem)
        #: ``end-to-end``: the solver's parameters (:class:`dode.learned_solver.LearnedSolver`),
        #: made at setup from the warm-start cell
        self.learned: nn.Module | None = None

    @classmethod
    def from_specs(
        cls, model: ModelSpec, solver: SolverSpec, fit: FitSpec | None = None
    ) -> DODEModule:
        """The module of these specs (:mod:`dode.lit.specs`): the same as the constructor with
        their fields as keywords.

        Args:
            model: the model and how it is evaluated.
            solver: solver, NFE, σ grid, teacher.
            fit: how λ are fitted (default: ``FitSpec()``, the closed form).
        """
        fit = FitSpec() if fit is None else fit
        for name, spec, want in (("model", model, ModelSpec), ("solver", solver, SolverSpec),
                                 ("fit", fit, FitSpec)):  # fmt: skip
            if not isinstance(spec, want):
                raise ValueError(
                    f"DODEModule.from_specs: {name} must be a {want.__name__}, got "
                    f"{type(spec).__name__}."
                )
        return cls(**model.kwargs(), **solver.kwargs(), **fit.kwargs())

    # ---- the problem -------------------------------------------------------------------------
    def teacher_config(self) -> dict:
        """The teacher settings (recorded in the fitted-solver file and the cache key)."""
        return {
            "factor": self.hparams.teacher_factor,
            "solver": (self.teacher or self.solver).config(),
            "space": self.teacher_space,
            "rho": self.teacher_rho,
        }

    def use_conditioning(self, conditioning: SeedConditioning | None) -> None:
        """Fit with this per-seed conditioning (the data module's); checked against the model.

        Raises:
            ValueError: conditioning for an unconditional model, the wrong kind for the model,
                a label out of range, or a conditional model without conditioning.
        """
        if conditioning is None:
            if getattr(self.denoiser, "conditional", False):
                kind = "prompts" if self.denoiser.text_conditional else "class_labels"
                hint = "--data.prompts FILE" if kind == "prompts" else "--data.class_labels all"
                raise ValueError(
                    f"model {self.hparams.model!r} is conditional "
                    f"{self.denoiser.describe_conditioning()}: give the fit's conditioning "
                    f"({hint})."
                )
        else:
            conditioning.check(self.denoiser, self.guidance_scale)
        self.conditioning = conditioning

    def condition(self, seeds: list[int]):
        """The conditioning of ``seeds`` (labels ``[B]`` or prompts), or ``None``."""
        if self.conditioning is None:
            return None
        return self.conditioning.for_seeds(seeds, getattr(self.denoiser, "num_classes", None))

    def bound(self, cond=None):
        """The denoiser bound to a batch's conditioning and the guidance scale."""
        if cond is None:
            if getattr(self.denoiser, "conditional", False):
                raise ValueError(
                    f"model {self.hparams.model!r} is conditional: pass the batch's conditioning "
                    "(batch['cond'], from a NoiseDataModule with class_labels or prompts)."
                )
            return self.denoiser
        if isinstance(cond, Tensor):
            cond = cond.to(self.device)
        neg = self.conditioning.negative_prompt if self.conditioning is not None else None
        return self.denoiser.bind(
            cond,
            guidance_scale=self.guidance_scale,
            guidance_rescale=self.guidance_rescale,
            negative_prompt=neg,
        )

    def decoded(self, x: Tensor) -> Tensor:
        """Samples as images: latents decoded by the model's VAE (latent models), else ``x``."""
        decode = getattr(self.denoiser, "decode", None)
        return decode(x) if decode is not None else x

    def model_config(self) -> dict:
        """Model id, weights hash and how it is evaluated (with the guidance scale and the
        conditioning rule for a conditional model)."""
        extra = {}
        if getattr(self.denoiser, "conditional", False) or self.conditioning is not None:
            extra = {
                "guidance_scale": self.guidance_scale,
                "guidance_rescale": self.guidance_rescale,
                "conditioning": (
                    self.conditioning.describe() if self.conditioning is not None else None
                ),
            }
        return {
            "id": self.hparams.model,
            "class": type(self.denoiser).__name__,
            "weights_hash": self.weights_hash,
            "dtype": self.hparams.model_dtype or self.hparams.dtype,
            "integration_dtype": self.hparams.dtype,
            "sigma_to_t": self.hparams.sigma_to_t,
            "options": dict(self.hparams.model_options or {}),
            **extra,
        }

    def problem(self) -> dict:
        """Everything the teacher states depend on."""
        return {
            "model": self.model_config(),
            "solver": self.solver.config(),
            "sigmas": [float.hex(s) for s in self.s_list],
            "targets": [float.hex(s) for s in self.target_sigmas],
            "teacher": self.teacher_config(),
            "sample_shape": list(self.denoiser.sample_shape),
            "format": 1,
        }

    def problem_key(self) -> str:
        return problem_digest(self.problem())[:24]

    def teacher_source(self) -> TeacherSource:
        """What :class:`~dode.lit.NoiseDataModule` needs to serve batches of this problem: its
        key, the sample shape, the integration dtype and the teacher function."""
        return TeacherSource(
            problem=self.problem(),
            sample_shape=self.sample_shape,
            dtype=self.integration_dtype,
            compute=self.compute_teacher,
            description=f"{self.hparams.teacher_factor}x refined grid",
            condition=self.condition if self.conditioning is not None else None,
        )

    def reference_source(self, nfe: int, batch_size: int) -> ReferenceSource:
        """What :class:`~dode.lit.NoiseDataModule` needs to compute and cache the converged
        references of an end-to-end fit: :func:`dode.standard_grids.reference_solution` with
        ``nfe`` model calls, ``batch_size`` seeds per batch."""
        from ..solvers import get_solver
        from ..standard_grids import reference_solution

        problem = {
            "kind": "end_to_end_reference",
            "model": self.model_config(),
            "reference": {"solver": get_solver("dpm_solver_pp", order=3).config(), "nfe": nfe},
            "sample_shape": list(self.denoiser.sample_shape),
            "format": 1,
        }

        @torch.no_grad()
        def compute(noise: Tensor, cond=None) -> Tensor:
            t0 = time.perf_counter()
            z = noise.to(device=self.device, dtype=self.integration_dtype)
            out = reference_solution(self.bound(cond), z, nfe=nfe).cpu()
            self.timings["reference_compute_s"] = (
                self.timings.get("reference_compute_s", 0.0) + time.perf_counter() - t0
            )
            return out

        return ReferenceSource(
            problem=problem,
            sample_shape=self.sample_shape,
            dtype=self.integration_dtype,
            compute=compute,
            batch_size=batch_size,
            description=f"DPM-Solver++(3M), {nfe} NFE",
            condition=self.condition if self.conditioning is not None else None,
        )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.denoiser.sample_shape)

    @torch.no_grad()
    def compute_teacher(self, noise: Tensor, cond=None) -> Tensor:
        """Teacher states at every student σ (``target_sigmas`` order): ``[B, M, ...]``, CPU.
        ``noise`` is standard normal, ``cond`` its conditioning (conditional models); the time
        taken is added to ``timings["teacher_s"]``."""
        t0 = time.perf_counter()
        noise = noise.to(device=self.device, dtype=self.integration_dtype)
        states = teacher_states(
            self.bound(cond),
            self.solver,
            noise,
            self.sigmas,
            self.hparams.teacher_factor,
            teacher_solver=self.teacher,
            space=self.teacher_space,
            rho=self.teacher_rho,
        )
        out = torch.stack([states[s] for s in self.target_sigmas], 1).cpu()
        self.timings["teacher_s"] = self.timings.get("teacher_s", 0.0) + time.perf_counter() - t0
        return out

    # ---- sampling ----------------------------------------------------------------------------
    def trajectory(
        self, noise: Tensor, lambdas: Tensor | None, fn: Callable | None = None, cond=None
    ) -> tuple[list[float], list[Tensor]]:
        """The student's states after each call (the input of call k + 1; the sample last) and
        their σ. ``lambdas=None``: the base solver. ``fn``: the model callable (default: the
        denoiser, bound to ``cond``, its consumed output)."""
        return self.fit_problem.trajectory(noise, lambdas, fn, cond)

    @torch.no_grad()
    def sample_final(
        self, noise: Tensor, dode: bool = True, scale: float = 1.0, cond=None
    ) -> Tensor:
        """Samples from standard-normal ``noise`` (conditioned on ``cond``, conditional models)
        with the fitted λ times ``scale`` (or, with ``dode=False`` or ``scale=0``, the base
        solver)."""
        noise = noise.to(device=self.device, dtype=self.integration_dtype)
        lam = self.lambdas.detach() * scale if dode and scale != 0 else None
        return self.trajectory(noise, lam, cond=cond)[1][-1]

    # ---- checkpoints: λ and progress only ----------------------------------------------------
    def state_dict(self, *args, **kwargs):
        sd = super().state_dict(*args, **kwargs)
        for key in [k for k in sd if k.startswith("denoiser.")]:
            del sd[key]
        return sd

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        res = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in res.missing_keys if not k.startswith("denoiser.")]
        if strict and (missing or res.unexpected_keys):
            raise RuntimeError(
                f"checkpoint does not match DODEModule: missing {missing}, unexpected "
                f"{res.unexpected_keys}."
            )
        return res

    def fit_seeds(self) -> list[int] | None:
        """The seeds λ are fitted on (the data module's), or ``None`` outside a fit."""
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        seeds = getattr(datamodule, "fit_seeds", None)
        return list(seeds) if seeds is not None else None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        seeds = self.fit_seeds()
        checkpoint["dode"] = {
            "fit_seeds_digest": None if seeds is None else problem_digest(seeds)[:24],
            "num_fit_seeds": None if seeds is None else len(seeds),
            "problem_key": self.problem_key(),
            "problem": self.problem(),
            "fit_info": asdict(self.fit_info),
            "fit_mode": self.fit_mode,
            "version": __version__,
        }
        state = self.mode_fit.state_dict()
        if state is not None:
            checkpoint["dode"]["mode"] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("dode")
        if meta is None:
            raise ValueError("not a dode checkpoint (no 'dode' entry); start a new fit.")
        if meta["problem_key"] != self.problem_key() or meta.get("fit_mode") != self.fit_mode:
            raise ValueError(
                "the checkpoint was written for another problem (model, solver, grid, teacher "
                "or fit mode differ); resume with the same config, or start a new run folder."
            )
        self.fit_info = FitInfo(**meta["fit_info"])
        check_resume_seeds(meta, self.fit_seeds(), "the checkpoint")
        if "mode" in meta:
            self.mode_fit.load_state_dict(meta["mode"])

    # ---- fit: Lightning's hooks, the work delegated to the fit mode -------------------------
    def configure_optimizers(self):
        # lstsq sets λ in closed form (manual optimization; its steps see no gradient).
        own = self.mode_fit.optimizers(self)
        return own if own is not None else torch.optim.Adam([self.lambdas], lr=self.lr)

    def setup(self, stage: str) -> None:
        if self._trainer is None:
            return
        # The data module serves this problem's noise and teacher states.
        datamodule = getattr(self.trainer, "datamodule", None)
        if isinstance(datamodule, NoiseDataModule):
            self.use_conditioning(datamodule.conditioning)
            datamodule.attach(self.teacher_source())
        self.mode_fit.setup(self, stage)

    def on_train_start(self) -> None:
        self._t_train = time.perf_counter()
        self.timings.setdefault("validation_s", 0.0)
        self.mode_fit.on_train_start(self)

    def on_before_optimizer_step(self, optimizer) -> None:
        self.mode_fit.on_before_optimizer_step(self, optimizer)

    def on_train_epoch_start(self) -> None:
        self.mode_fit.on_train_epoch_start(self)

    def training_step(self, batch: dict, batch_idx: int):
        return self.mode_fit.training_step(self, batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        self.mode_fit.on_train_epoch_end(self)

    def on_train_end(self) -> None:
        self.timings["train_loop_s"] = time.perf_counter() - getattr(self, "_t_train", 0.0)
        self.mode_fit.on_train_end(self)
        if self.trainer.world_size > 1:
            every = self.all_gather(self.lambdas.detach())
            if not bool((every == every[0]).all()):
                raise RuntimeError(f"λ differ across ranks: {every.tolist()}")

    # ---- validation: MSE to the teacher, per state and final --------------------------------
    def _fitted(self) -> bool:
        return self.mode_fit.fitted(self)

    def on_validation_epoch_start(self) -> None:
        self.validation.reset()
        self._t_val = time.perf_counter()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if self.mode_fit.owns_validation:
            return self.mode_fit.validation_step(self, batch, batch_idx)
        if self._fitted():
            self.validation.add(self, batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.timings["validation_s"] = self.timings.get("validation_s", 0.0) + (
            time.perf_counter() - getattr(self, "_t_val", time.perf_counter())
        )
        if self.mode_fit.owns_validation:
            return self.mode_fit.on_validation_epoch_end(self)
        if not self._fitted() or self.trainer.sanity_checking:
            return
        metrics = self.validation.metrics(self)
        if metrics is None:
            return
        self.val_metrics = metrics
        self.log_dict(metrics)

    # ---- the end-to-end mode -----------------------------------------------------------------
    def fit_end_to_end(self, fit_seeds: list[int], select_seeds: list[int]) -> FittedSolver:
        """``fit_mode: end-to-end``: :meth:`dode.lit.end_to_end.EndToEndFit.fit` of this
        problem (references, warm-start cell, :func:`dode.learned_solver.fit_end_to_end`); the
        fitted solver with this run's model record. Runs on this module's device."""
        if not isinstance(self.mode_fit, EndToEndFit):
            raise ValueError(
                f"fit_end_to_end needs fit_mode end-to-end (this module's is {self.fit_mode!r})."
            )
        return self.mode_fit.fit(self, fit_seeds, select_seeds)

    # ---- the artifact ------------------------------------------------------------------------
    def fitted_solver(self, metrics: dict | None = None, scale: float = 1.0) -> FittedSolver:
        """The fitted solver (solver, σ grid, λ, teacher, model, metrics) as a file object.

        Args:
            metrics: extra numbers for the file (e.g. the Fréchet callback's results).
            scale: the λ scale α: the file holds α·λ, and records α and the fitted λ.
        """
        if isinstance(self.mode_fit, EndToEndFit):
            return self.mode_fit.solver_file(self, metrics)
        info = asdict(self.fit_info)
        lam = self.lambdas.detach().cpu()
        scaled = {}
        if scale != 1.0:
            scaled = {"lambda_scale": scale, "lambdas_fitted": lam.tolist()}
            lam = lam * scale
        seeds = self.fit_seeds()
        data = (
            {} if seeds is None else {"fit_seeds": format_seeds(seeds), "num_fit_seeds": len(seeds)}
        )
        m = {
            "fit_mode": self.fit_mode,
            "nfe": self.num_calls,
            **data,
            "fit": info if self.fit_mode == "lstsq" else {},
            "grid": self.grid_record,
            **self.val_metrics,
            **{f"time/{k}": v for k, v in self.timings.items()},
            **scaled,
            **(metrics or {}),
        }
        return FittedSolver(
            solver=self.solver.config(),
            sigmas=self.sigmas,
            lambdas=lam,
            teacher=self.teacher_config(),
            model=self.model_record(),
            metrics=m,
        )

    def model_record(self) -> dict:
        """:meth:`model_config` with the model's noise schedule (the solver file's ``model``)."""
        model = self.model_config()
        schedule = model_schedule(self.denoiser)
        if schedule is not None:
            model["schedule"] = schedule
        return model
