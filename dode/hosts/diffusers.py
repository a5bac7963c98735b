"""A fitted D-ODE solver as a diffusers scheduler: ``DODEScheduler``.

Usage::

    from dode.hosts.diffusers import DODEScheduler
    pipe.scheduler = DODEScheduler.from_solver_file("solver.safetensors", like=pipe)
    images = pipe(prompt, num_inference_steps=N, guidance_scale=W).images

``step()`` is one model call, and a thin adapter over the core: it converts the network's
native output to the quantity the solver consumes with the denoisers' own conversion
(:func:`dode.denoisers.vp.vp_from_native`, :func:`dode.denoisers.flow.flow_from_native`), keeps
it, and *replays the dode solver itself* (:mod:`dode.replay`) over the outputs received so far,
through :class:`dode.correction.DODECorrection` (so ``õ_k = o_k + λ_k (o_k − o_{k−1})`` is the
correction :func:`dode.sample` applies, by construction): the solver runs from the first state,
is answered from the buffer, and stops where it asks for the next model call; that state goes
back to the pipeline. Every solver, one- or multi-stage, so runs with the same arithmetic as
:func:`dode.sample` without a second implementation (the replay costs O(NFE²) cheap tensor
updates, nothing next to the network).
Multi-stage solvers (Heun, DPM-Solver's stage points) get one ``step()`` per model call, their
stage timesteps listed in :attr:`DODEScheduler.timesteps` as diffusers' Heun scheduler does.
End-to-end solver files (:mod:`dode.learned_solver`) run the same way: their history
coefficients and model-time shift ξ go to the same ``DODECorrection``. Solver call k then runs
the network at ``σ_net = σ_k · exp(ξ_k)``: its entry of :attr:`DODEScheduler.timesteps` is
``t(σ_net)``, its input is ``x`` at ``σ_net`` (VP ``x / sqrt(1 + σ_net²)``, flow
``x / (1 + σ_net)``) and its output is read at ``σ_net``, exactly what the core does when it
calls ``D(x, σ_net)``; the solver integrates on σ_k. The latents ``step()`` hands back already
are that input (DDPM, DDIM, SD3 and FLUX pipelines never call ``scale_model_input``). The
pipeline's own first latents keep the noise convention below (at the grid's σ_0, so the same
noise gives the same image); with a shift ξ_0 ≠ 0 ``scale_model_input`` takes them to σ_net,0,
and a pipeline that skips it is refused at its first ``step()`` with one clear error (a flow
grid from t = 1 has no such call: its first call is the exact step at t = 1).

Conventions (σ-space ``x = y + σ·n``, see DESIGN.md):

* **VP models** (DDPM, Stable Diffusion): the pipeline's latents are ``x_vp = x / sqrt(1 + σ²)``
  and the network is called at ``t(σ)`` (log-σ interpolation over the ᾱ table, or snapped to
  the nearest integer timestep with ``timestep_mode="snap"``). ``scale_model_input`` is the
  identity. ``init_noise_sigma = σ_0 / sqrt(1 + σ_0²)``, so a pipeline that multiplies its
  noise by it (Stable Diffusion, SDXL) starts at ``x_vp`` of dode's ``noise · σ_0``: *the same
  noise gives the same image as* ``dode.sample(denoiser, solver, noise, sigmas, lambdas)``.
  DDPMPipeline and DDIMPipeline do not apply ``init_noise_sigma``: their noise ``n`` is the
  first latent itself, which is dode's noise ``n / init_noise_sigma``
  (:meth:`DODEScheduler.dode_noise`). (diffusers' own VP schedulers use
  ``init_noise_sigma = 1``; at SD's σ_0 ≈ 14.6 the two starts differ by 0.2 %.)
* **Flow models** (SD3, FLUX; ``family="flow"``): latents ``x_t = x / (1 + σ)`` with
  ``t = σ / (1 + σ)``, the network sees ``t · num_train_timesteps`` (FLUX pipelines divide by
  1000 themselves) and predicts ``v ≈ ε − x0``, so ``x̂0 = x_t − t v``. The pipelines pass
  their standard-normal latents unscaled. A grid below t = 1 (DPM-Solver / UniPC flow grids):
  ``init_noise_sigma = t_0`` and dode's noise is ``latents / t_0``. A grid from t = 1
  (``sigmas[0] = inf``, as ``FlowMatchEulerDiscreteScheduler``): the first model call, at
  timestep T, takes :func:`dode.denoisers.flow_start`'s exact step (``x̂0 = latents − v``, then
  dode's noise ``latents + x̂0 / σ_1`` on the rest of the grid) and the λ belong to the solver's
  calls after it. Either way the same latents give ``dode.sample(den, solver,
  *flow_start(den, latents, sigmas), lambdas)``. Shifts are part of the fitted grid;
  ``use_flow_sigmas`` is set so FLUX pipelines do not impose their own σ list, and the μ a FLUX
  pipeline passes is checked against the fitted ``mu``. FLUX's ``guidance_scale`` is its
  embedded guidance, checked against ``embedded_guidance``.
* Build the pipeline first, then assign the scheduler: ``DDIMPipeline(unet, scheduler)``
  rebuilds whatever scheduler it is given as a ``DDIMScheduler``, which a DODEScheduler refuses
  (see ``beta_schedule``); ``pipe = DDIMPipeline(unet, DDPMScheduler(...))`` then
  ``pipe.scheduler = DODEScheduler.from_solver_file(path, like=pipe)`` works.
* A pipeline of the other family (a VP solver in an SD3/FLUX pipeline, a flow solver in a
  DDPM/DDIM/Stable Diffusion pipeline) is refused in ``set_timesteps`` with one clear error.

The scheduler integrates in float32 (float64 if the latents are float64) whatever the network's
dtype, and ignores the ``sample`` the pipeline passes back after the first step (it is the
latent this scheduler returned; edits made to it between steps are not seen).
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
import weakref
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from torch import Tensor

from ..correction import DODECorrection, call_sigmas, check_history
from ..denoisers.base import FAMILIES, as_prediction, as_sigma
from ..denoisers.flow import flow_from_native, flow_scale
from ..denoisers.vp import vp_from_native, vp_prediction, vp_scale, vp_sigma_to_t
from ..grids.schedules import vp_sigmas
from ..replay import Replay, run_until_stop
from ..solvers import Solver, get_solver

__all__ = ["DODEScheduler"]

VP_PREDICTIONS = ("epsilon", "v_prediction", "sample")


# pipelines by class-name prefix (most specific first); others are not checked
PIPELINE_FAMILIES = (
    ("StableDiffusion3", "flow"),
    ("Flux", "flow"),
    ("StableDiffusion", "vp"),
    ("DDPM", "vp"),
    ("DDIM", "vp"),
    ("LatentDiffusion", "vp"),
)


def pipeline_family(name: str) -> str | None:
    """``"flow"`` / ``"vp"`` for a known diffusers pipeline class name, else ``None``."""
    return next((fam for prefix, fam in PIPELINE_FAMILIES if name.startswith(prefix)), None)


# solver-file model classes whose weights hash covers the pipeline's ``unet`` alone
_PIXEL_CLASSES = ("DiffusersDenoiser", "DiffusersFlowDenoiser")


def _is_pipeline(obj: Any) -> bool:
    """Whether ``obj`` is a diffusers pipeline."""
    from diffusers import DiffusionPipeline

    return isinstance(obj, DiffusionPipeline)


def read_scheduler_config(path: str, errors: list[str]) -> dict | None:
    """The scheduler config of a pipeline folder (``scheduler/``) or of a scheduler folder (or
    hub id); ``None`` if neither reads, with the first line of each failure added to ``errors``."""
    from diffusers import DDPMScheduler

    for sub in ("scheduler", None):
        try:
            return DDPMScheduler.load_config(path, subfolder=sub)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            errors.append(str(e).splitlines()[0])
    return None


#: The value of ``beta_schedule`` in every DODEScheduler config. A DODEScheduler has no β
#: schedule; diffusers' VP schedulers raise ``NotImplementedError("<value> is not implemented
#: for <class>")`` on an unknown one, so ``DDIMScheduler.from_config(dode_scheduler.config)`` --
#: what ``DDIMPipeline(unet, scheduler)`` does to any scheduler it is given -- fails with this
#: text instead of silently dropping the fitted solver.
NOT_CONVERTIBLE = (
    "DODEScheduler (a fitted D-ODE solver) cannot be rebuilt as another scheduler class, which "
    "would drop the fit; DDIMPipeline(unet, scheduler=...) does that to any scheduler it is "
    "given. Build the pipeline with a diffusers scheduler, then assign pipe.scheduler = "
    "DODEScheduler.from_solver_file(path, like=pipe). Converting it"
)


class DODEScheduler(SchedulerMixin, ConfigMixin):
    """A fitted D-ODE solver (solver, σ grid, λ) that runs inside diffusers pipelines.

    Args:
        solver: the solver config (``{"name": ..., **options}``, as ``Solver.config()``) or name.
        sigmas: the fitted σ grid (descending, usually ending in 0). A flow grid may start at
            σ = ∞ (t = 1, as ``FlowMatchEulerDiscreteScheduler``): the first model call then
            takes :func:`dode.denoisers.flow_start`'s exact step and the solver runs on the rest.
        lambdas: one λ per solver call (not for that exact first step); ``None`` runs the base
            solver.
        coefficients: an end-to-end solver's history coefficients ``[K, K]`` (one row per
            solver call, zero on and above the sub-diagonal; needs ``lambdas``), applied by
            :class:`~dode.correction.DODECorrection` as in :func:`dode.sample`.
        model_time_shift: an end-to-end solver's model-time shift ξ ``[K]``: solver call k runs
            the network at ``σ_net = σ_k · exp(ξ_k)`` (its timestep is ``t(σ_net)``, the latents
            handed to the pipeline are the network input at ``σ_net``, and its output is read
            at ``σ_net``) while the solver integrates on σ_k.
        family: ``"vp"`` (DDPM, Stable Diffusion) or ``"flow"`` (SD3, FLUX).
        alphas_cumprod: the VP model's discrete ᾱ table (ascending in t); VP only.
        prediction_type: VP: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``; flow:
            ``"flow"`` (v = ε − x0).
        timestep_mode: VP: ``"interp"`` (continuous t by log-σ interpolation, as dode's
            ``DiffusersDenoiser`` default) or ``"snap"`` (nearest integer timestep).
        num_train_timesteps: flow: the network sees ``t · num_train_timesteps``.
        shift: flow: the shift (SD3) the grid was built with; recorded, informative.
        mu: flow: FLUX's dynamic-shift μ the grid was built with; a pipeline passing another μ
            gets a warning.
        guidance_scale: the classifier-free guidance scale the λ were fitted at (``None``: not
            recorded / unguided); another scale in the pipeline warns.
        model: metadata of the fitted model (id, weights hash), recorded only.
        use_flow_sigmas: set automatically for ``family="flow"`` (read by FLUX pipelines).
        embedded_guidance: FLUX: the embedded guidance (FluxPipeline's ``guidance_scale``) the λ
            were fitted at; another value in a FLUX pipeline warns.
        base_shift, max_shift, base_image_seq_len, max_image_seq_len: FLUX: the model
            scheduler's dynamic-shift settings; FluxPipeline reads them from this scheduler to
            compute the μ it passes, which is checked against ``mu``.
        beta_schedule: not a setting: always :data:`NOT_CONVERTIBLE`, so that rebuilding this
            scheduler as a diffusers VP scheduler (``DDIMScheduler.from_config(config)``, as
            ``DDIMPipeline(unet, scheduler)`` does) fails loudly instead of dropping the fit.
            Use DDIMPipeline as ``pipe = DDIMPipeline(unet, DDPMScheduler(...))`` and then
            ``pipe.scheduler = DODEScheduler.from_solver_file(path, like=pipe)``.

    Raises:
        ValueError: unknown solver or family, λ of the wrong length, a grid the solver cannot
            run, a VP family without an ᾱ table.
    """

    config_name = "scheduler_config.json"
    _compatibles: list = []
    order = 1

    @register_to_config
    def __init__(
        self,
        solver: dict | str | None = None,
        sigmas: list[float] | None = None,
        lambdas: list[float] | None = None,
        family: Literal["vp", "flow"] = "vp",
        alphas_cumprod: list[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_mode: Literal["interp", "snap"] = "interp",
        num_train_timesteps: int = 1000,
        shift: float | None = None,
        mu: float | None = None,
        guidance_scale: float | None = None,
        model: dict | None = None,
        use_flow_sigmas: bool | None = None,
        embedded_guidance: float | None = None,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        beta_schedule: str | None = None,
        coefficients: list[list[float]] | None = None,
        model_time_shift: list[float] | None = None,
    ) -> None:
        if solver is None or sigmas is None:
            raise ValueError(
                "DODEScheduler needs a solver and its fitted σ grid; build it with "
                "DODEScheduler.from_solver_file(path) or pass solver=..., sigmas=..., lambdas=...."
            )
        self._set_solver_and_grid(solver, family, sigmas)
        self._set_correction(lambdas, coefficients, model_time_shift)
        self._set_model_schedule(alphas_cumprod, prediction_type, timestep_mode, use_flow_sigmas)
        self._plan_calls()
        self._guard_conversion(beta_schedule)
        self._checked_nets: weakref.WeakSet = weakref.WeakSet()
        self._reset()

    def _set_solver_and_grid(self, solver: dict | str, family: str, sigmas: list[float]) -> None:
        """The solver, the model family and the grid: :attr:`solver_grid` (what the solver
        integrates on, checked by it), :attr:`grid` (with σ = ∞ in front for a flow grid from
        t = 1, whose first call is :func:`~dode.denoisers.flow_start`'s exact step),
        :attr:`num_steps` and :attr:`nfe`."""
        self.solver: Solver = (
            get_solver(**solver) if isinstance(solver, dict) else get_solver(solver)
        )
        if family not in FAMILIES:
            raise ValueError(f"unknown model family {family!r}; use 'vp' or 'flow'.")
        self.family = family
        grid = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
        # flow grids from t = 1 (σ = ∞): the first call is flow_start's exact step
        self.flow_start = family == "flow" and grid.numel() > 0 and bool(torch.isposinf(grid[0]))
        if self.flow_start and grid.numel() < 3:
            raise ValueError(
                "a flow grid from t = 1 (σ = ∞) needs at least two steps: the exact first step "
                "and one solver step."
            )
        self.solver_grid = torch.tensor(
            self.solver.check_grid(grid[1:] if self.flow_start else grid), dtype=torch.float64
        )
        inf = torch.tensor([math.inf], dtype=torch.float64)
        self.grid = torch.cat([inf, self.solver_grid]) if self.flow_start else self.solver_grid
        self.num_steps = len(self.grid) - 1
        self.nfe = self.solver.nfe(len(self.solver_grid) - 1) + int(self.flow_start)

    def _set_correction(self, lambdas: Any, coefficients: Any, model_time_shift: Any) -> None:
        """λ (one per solver call, finite; ``None``: the base solver) and an end-to-end
        solver's history coefficients and model-time shift (:meth:`_history`)."""
        solver_nfe = self.nfe - int(self.flow_start)
        self.lambdas: Tensor | None = None
        if lambdas is not None:
            lam = torch.as_tensor(lambdas, dtype=torch.float64).flatten()
            if len(lam) != solver_nfe or not torch.isfinite(lam).all():
                start = " after the exact step from t = 1" if self.flow_start else ""
                raise ValueError(
                    f"{self.solver.describe()} on {len(self.solver_grid) - 1} steps{start} makes "
                    f"{solver_nfe} model calls; need {solver_nfe} finite λ, got {len(lam)}. "
                    "Re-export the solver file."
                )
            self.lambdas = lam
        self.coefficients, self.model_time_shift = self._history(
            coefficients, model_time_shift, solver_nfe
        )

    def _set_model_schedule(
        self, alphas_cumprod: Any, prediction_type: str, timestep_mode: str, use_flow_sigmas: Any
    ) -> None:
        """The model's side: VP, its ᾱ table (:attr:`log_table`, log σ per timestep), what the
        network predicts and how σ maps to its timestep; flow, velocity prediction (and
        ``use_flow_sigmas`` in the config, which FLUX pipelines read)."""
        if self.family == "vp":
            if alphas_cumprod is None or len(alphas_cumprod) < 2:
                raise ValueError(
                    "a VP DODEScheduler needs the model's ᾱ table (alphas_cumprod); pass "
                    "like=pipe.scheduler to from_solver_file, or alphas_cumprod=...."
                )
            a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
            if not ((a > 0) & (a <= 1)).all() or not (a[1:] <= a[:-1]).all():
                raise ValueError("alphas_cumprod must lie in (0, 1] and not increase with t.")
            self.log_table = vp_sigmas(a).log()
            if prediction_type not in VP_PREDICTIONS:
                raise ValueError(
                    f"unknown VP prediction_type {prediction_type!r}; use one of {VP_PREDICTIONS}."
                )
            if timestep_mode not in ("interp", "snap"):
                raise ValueError(
                    f"timestep_mode must be 'interp' or 'snap', got {timestep_mode!r}."
                )
        else:
            if prediction_type != "flow":
                raise ValueError(
                    f"a flow DODEScheduler predicts v (prediction_type='flow'), got {prediction_type!r}."
                )
            if not use_flow_sigmas:
                self.register_to_config(use_flow_sigmas=True)
        self.prediction_type = prediction_type

    def _plan_calls(self) -> None:
        """Where each model call runs, found by a dry run of the solver: :attr:`call_sigmas`
        (σ on the solver's grid), :attr:`net_sigmas` (σ the network runs at: σ · exp(ξ) with a
        model-time shift), the pipeline's :attr:`timesteps`, :attr:`sigmas` and ``order``, the σ
        of the latents handed out (:attr:`latent_sigmas`) and :attr:`init_noise_sigma`."""
        start = [math.inf] * int(self.flow_start)
        #: σ of every model call on the solver's grid (what it integrates on) and the σ the
        #: network is called at (σ · exp(ξ) with a model-time shift, else the same)
        self.call_sigmas = start + self._dry_run()
        self.net_sigmas = start + self._dry_run(self.model_time_shift)
        if self.model_time_shift is not None and self.family == "vp":
            # the ᾱ table is the model's σ range: no shifted call outside it (naming the call)
            table = self.log_table.exp()
            check_history(
                None, self.model_time_shift, self.nfe - int(self.flow_start),
                f"{self.solver.describe()} on {len(self.solver_grid) - 1} steps: ",
                calls=self.call_sigmas[len(start):], sigmas=self.solver_grid,
                model_range=(float(table.min()), float(table.max())),
            )  # fmt: skip
        self.order = max(1, round(self.nfe / self.num_steps))
        self.timesteps = self._timesteps_for(self.net_sigmas)
        self.sigmas = self.grid.to(torch.float32)
        self.num_inference_steps = self.num_steps
        #: σ the latents of each call are scaled at: the pipeline's first latents at the grid's
        #: σ_0 (the noise convention below), those step() hands out at σ_net
        self.latent_sigmas = self.call_sigmas[:1] + self.net_sigmas[1:]
        s0 = float(self.grid[0])
        if self.family == "vp":
            self.init_noise_sigma = s0 / math.sqrt(1 + s0 * s0)
        else:  # t_0 (1 from t = 1)
            self.init_noise_sigma = 1.0 if self.flow_start else s0 / (1 + s0)

    def _guard_conversion(self, beta_schedule: str | None) -> None:
        """Register ``beta_schedule`` as :data:`NOT_CONVERTIBLE` (see the class's Args), as a
        value given, never as a default."""
        if beta_schedule != NOT_CONVERTIBLE:
            self.register_to_config(beta_schedule=NOT_CONVERTIBLE)
        defaults = [k for k in self.config.get("_use_default_values", []) if k != "beta_schedule"]
        self.register_to_config(_use_default_values=defaults)

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_solver_file(
        cls,
        path: str | os.PathLike,
        like: Any = None,
        *,
        dode: bool = True,
        ignore_model_hash: bool = False,
        **overrides: Any,
    ) -> DODEScheduler:
        """Build the scheduler from a fitted-solver file (``dode.files.solver_file.FittedSolver``).

        The model's schedule comes from, in this order: ``overrides`` (``alphas_cumprod``,
        ``prediction_type``, ``family``, ...), the file's ``model["schedule"]`` if it records
        one, the scheduler ``like`` (the pipeline's own, e.g. ``like=pipe.scheduler``: its ᾱ
        table and prediction type, or its flow shift), the scheduler config saved with the model
        the file names (``model["id"]``, a local folder or a cached hub id).

        Args:
            path: the ``.safetensors`` file written by ``python -m dode.train``.
            like: a diffusers scheduler (or its config) of the model's family, or the pipeline
                itself (``like=pipe``: its scheduler gives the schedule, and the pipeline is
                checked against what the file records, see :meth:`check_pipeline`).
            dode: ``False`` runs the base solver (no λ, history coefficients or model-time
                shift) on the fitted grid.
            ignore_model_hash: do not compare the pipeline's weights with the recorded hash
                (e.g. the same model in another dtype); the scheduler's config then records no
                hash.
            overrides: constructor arguments that win over what the file and ``like`` give.
        """
        from ..files.solver_file import FittedSolver

        fitted = FittedSolver.load(path)
        pipe = like if _is_pipeline(like) else None
        if pipe is not None:
            like = pipe.scheduler
        model = dict(fitted.model or {})
        cls_name = model.get("class")
        diffusers_model = cls_name is None or any(
            k in cls_name for k in ("Diffusers", "Flow", "LatentDiffusion", "SD3", "Flux")
        )
        if not diffusers_model and model.get("schedule") is None:
            if "family" not in overrides and like is None:
                raise ValueError(
                    f"{str(path)!r} was fitted on a {cls_name}, not a diffusers model; a diffusers "
                    "pipeline cannot run it. Fit on the pipeline's model (model: a diffusers "
                    "folder or hub id)."
                )
        kw: dict[str, Any] = {}
        if model.get("sigma_to_t") in ("interp", "snap"):
            kw["timestep_mode"] = model["sigma_to_t"]
        options = model.get("options") or {}
        guidance = model.get("guidance_scale", options.get("guidance_scale"))
        if guidance is not None:
            kw["guidance_scale"] = float(guidance)
        embedded = model.get("guidance", options.get("guidance"))
        if embedded is not None:  # FLUX's embedded guidance (FluxPipeline's guidance_scale)
            kw["embedded_guidance"] = float(embedded)
        schedule = model.get("schedule")
        if schedule is None and like is None and "alphas_cumprod" not in overrides:
            like = cls._scheduler_from_model_id(model.get("id"), path)
        if schedule is not None:
            kw.update(schedule)
        elif like is not None:
            kw.update(cls._schedule_of(like))
        if dode and fitted.coefficients is not None:
            kw["coefficients"] = fitted.coefficients.tolist()
        if dode and fitted.shift is not None:
            kw["model_time_shift"] = fitted.shift.tolist()
        kw.update(overrides)
        recorded = model.get("family")
        family = kw.get("family", "vp")
        if recorded in FAMILIES and family != recorded:
            names = {"vp": "a diffusion (DDPM/VP)", "flow": "a rectified-flow"}
            where = "the given scheduler (like=)" if like is not None else "the overrides"
            raise ValueError(
                f"{str(path)!r} was fitted on {names[recorded]} model "
                f"({model.get('id') or cls_name}) but {where} belongs to {names[family]} "
                "model: its σ grid and λ do not apply. Use a solver fitted on this pipeline's "
                "model."
            )
        sched = cls(
            solver=fitted.solver,
            sigmas=fitted.sigmas.tolist(),
            lambdas=fitted.lambdas.tolist() if dode else None,
            model={
                k: v
                for k, v in model.items()
                if k != "schedule" and not (ignore_model_hash and k == "weights_hash")
            },
            **kw,
        )
        if pipe is not None:
            sched.check_pipeline(pipe)
        return sched

    @staticmethod
    def _schedule_of(like: Any) -> dict:
        """The model family's schedule from a diffusers scheduler or its config."""
        cfg = dict(getattr(like, "config", like) or {})
        name = cfg.get("_class_name", type(like).__name__)
        if name == "DODEScheduler":
            keys = ("family", "alphas_cumprod", "prediction_type", "num_train_timesteps")
            return {k: cfg[k] for k in keys if k in cfg}
        if "FlowMatch" in str(name) or cfg.get("use_flow_sigmas") or "shift" in cfg:
            out = {"family": "flow", "prediction_type": "flow"}
            out["num_train_timesteps"] = int(cfg.get("num_train_timesteps", 1000))
            if cfg.get("shift") is not None:
                out["shift"] = float(cfg["shift"])
            for k in ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len"):
                if cfg.get(k) is not None:
                    out[k] = cfg[k]
            return out
        if "beta_start" not in cfg and "trained_betas" not in cfg:
            raise ValueError(
                f"cannot read a model schedule from {name}; pass the pipeline's own scheduler "
                "(like=pipe.scheduler) or alphas_cumprod=... and prediction_type=...."
            )
        from diffusers import DDPMScheduler

        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
        ddpm = DDPMScheduler(**{k: cfg[k] for k in keys if cfg.get(k) is not None})
        if cfg.get("rescale_betas_zero_snr"):
            raise ValueError(
                "zero-terminal-SNR schedules (rescale_betas_zero_snr) have σ = ∞ at t = T; fit and "
                "export with a grid that starts at a finite σ and pass alphas_cumprod=...."
            )
        return {
            "family": "vp",
            "alphas_cumprod": ddpm.alphas_cumprod.to(torch.float64).tolist(),
            "prediction_type": cfg.get("prediction_type", "epsilon"),
        }

    @staticmethod
    def _scheduler_from_model_id(model_id: str | None, path) -> Any:
        errors: list[str] = []
        if model_id:
            config = read_scheduler_config(model_id, errors)
            if config is not None:
                return config
        raise ValueError(
            f"{str(path)!r} does not record the model's noise schedule and its model "
            f"{model_id!r} has no readable scheduler config; pass the pipeline's scheduler: "
            "DODEScheduler.from_solver_file(path, like=pipe.scheduler)."
            + (f" ({'; '.join(errors)})" if errors else "")
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder=None, **kwargs):
        """Load a folder written by :meth:`save_pretrained` (or ``python -m dode.export``);
        anything else raises one ``ValueError``."""
        where = os.path.join(str(pretrained_model_name_or_path), subfolder or "")
        try:
            config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        except Exception as e:  # noqa: BLE001 - unreadable / missing / bad JSON
            raise ValueError(
                f"{where!r} holds no readable DODEScheduler config ({str(e).splitlines()[0]}); "
                "write one with `python -m dode.export --solver_file F --out DIR`."
            ) from None
        if not isinstance(config, dict) or config.get("_class_name") != cls.__name__:
            found = config.get("_class_name") if isinstance(config, dict) else None
            raise ValueError(
                f"{where!r} holds a {found or 'non-scheduler'} config, not a DODEScheduler; "
                "export a fitted solver with `python -m dode.export --solver_file F --out DIR`."
            )
        try:
            return cls.from_config(config)
        except ValueError as e:
            raise ValueError(f"{where!r}: corrupt DODEScheduler config: {e}") from None
        except Exception as e:  # noqa: BLE001 - wrong types in the JSON
            raise ValueError(
                f"{where!r}: corrupt DODEScheduler config ({type(e).__name__}: {e}); re-export it."
            ) from None

    # ---- the schedule -----------------------------------------------------------------------
    def _history(
        self, coefficients: Any, shift: Any, num_calls: int
    ) -> tuple[Tensor | None, Tensor | None]:
        """The end-to-end solver's history coefficients and model-time shift as float64
        tensors, checked by the core's own rule (:func:`dode.correction.check_history`)."""
        what = f"{self.solver.describe()} on {len(self.solver_grid) - 1} steps: "
        c = xi = None
        try:
            if coefficients is not None:
                c = torch.as_tensor(coefficients, dtype=torch.float64)
            if shift is not None:
                xi = torch.as_tensor(shift, dtype=torch.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{what}coefficients must be a [K, K] list of numbers and model_time_shift a "
                f"[K] list ({e}); re-export the solver file."
            ) from None
        check_history(
            c, xi, num_calls, what, lambdas=self.lambdas,
            calls=call_sigmas(self.solver, self.solver_grid) if xi is not None else None,
            sigmas=self.solver_grid,
        )  # fmt: skip
        if c is not None and self.lambdas is None:
            raise ValueError(
                "history coefficients need λ (the one-term part; zeros for none): pass lambdas "
                "too, or neither (DODEScheduler.from_solver_file(path, dode=False) for the base "
                "solver)."
            )
        return c, xi

    def _dry_run(self, shift: Tensor | None = None) -> list[float]:
        """σ of every model call, in order (the solver run on a dummy state); with ``shift``,
        the σ the core's correction calls the model at (σ_k · exp(ξ_k))."""
        calls: list[float] = []

        def record(x, sigma):
            calls.append(float(sigma))
            return torch.zeros_like(x)

        model = record if shift is None else DODECorrection(record, None, False, shift=shift)
        grid = self.solver_grid.tolist()
        self.solver.solve(model, torch.zeros(1, dtype=torch.float64), grid, None)
        if len(calls) != self.solver.nfe(len(grid) - 1):  # pragma: no cover - broken contract
            raise RuntimeError(f"{self.solver.describe()} made {len(calls)} calls.")
        return calls

    def _timesteps_for(self, sigmas: list[float]) -> Tensor:
        """The timestep the network sees at each model call (float32 σ, as dode's float32 run)."""
        s = torch.tensor(sigmas, dtype=torch.float32)
        if self.family == "flow":
            sd = s.to(torch.float64)
            t = torch.where(torch.isinf(sd), torch.ones_like(sd), sd / (1 + sd))
            return (t * self.config.num_train_timesteps).to(torch.float32)
        t = vp_sigma_to_t(s, self.log_table, self.config.timestep_mode)
        return t.round().long() if self.config.timestep_mode == "snap" else t.to(torch.float32)

    def dode_noise(self, latents: Tensor) -> Tensor:
        """dode's ``noise`` for a pipeline's first latents (``latents / init_noise_sigma``; for
        a flow grid from t = 1 that is the latents, to map with ``flow_start``)."""
        return latents / self.init_noise_sigma

    def _reset(self) -> None:
        self._k = 0
        self._x_init: Tensor | None = None
        self._outs: list[Tensor] = []  # the raw (uncorrected) outputs of the solver's calls
        self._first_scaled = False  # scale_model_input ran on the first latents
        self._dtype: torch.dtype | None = None

    @property
    def step_index(self) -> int:
        """The number of model calls consumed since :meth:`set_timesteps`."""
        return self._k

    @property
    def begin_index(self) -> int:
        return 0

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Only 0: the fitted solver starts at its first σ (img2img truncation is not supported)."""
        if begin_index != 0:
            raise ValueError(
                f"a fitted DODE solver runs its whole grid; begin_index={begin_index} (img2img "
                "strength < 1) is not supported. Fit a solver for the shorter grid instead."
            )

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list | Tensor | None = None,
        sigmas: list | Tensor | None = None,
        mu: float | None = None,
        guidance_scale: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Reset the state and place the timesteps on ``device``.

        Only the fitted schedule runs: ``num_inference_steps`` must be the fitted number of
        steps (or NFE), and explicit ``timesteps`` / ``sigmas`` must be the fitted ones; anything
        else raises a ``ValueError`` naming the fitted schedule (λ belong to their grid).
        A guidance scale other than the fitted one (given here, or read from the calling
        pipeline's ``guidance_scale``) warns.
        """
        pipe = self._calling_pipeline()
        if pipe is not None:
            self.check_pipeline(pipe)
        fitted = (
            f"this DODEScheduler runs the fitted {self.solver.describe()} schedule: "
            f"{self.num_steps} steps (NFE {self.nfe})"
        )
        if num_inference_steps is not None and int(num_inference_steps) not in (
            self.num_steps,
            self.nfe,
        ):
            raise ValueError(
                f"num_inference_steps={num_inference_steps} requested but {fitted}; call the "
                f"pipeline with num_inference_steps={self.num_steps}, or fit a solver for "
                f"{num_inference_steps} steps."
            )
        if timesteps is not None:
            ts = torch.as_tensor(timesteps).to(self.timesteps.dtype).cpu()
            if ts.shape != self.timesteps.shape or not torch.allclose(
                ts.double(), self.timesteps.double(), atol=1e-3
            ):
                raise ValueError(
                    f"custom timesteps requested but {fitted} at timesteps "
                    f"{[round(float(t), 3) for t in self.timesteps]}; pass none."
                )
        if sigmas is not None:
            self._check_sigmas(sigmas, fitted)
        if mu is not None:
            if self.family == "vp":
                raise ValueError(
                    "the pipeline passes a flow shift (mu): it runs a flow-matching model, but "
                    "this DODEScheduler was fitted on a VP (DDPM-type) model. Use a solver "
                    "fitted on this pipeline's model."
                )
            if self.config.mu is not None and abs(float(mu) - self.config.mu) > 1e-6:
                warnings.warn(
                    f"the pipeline's shift mu={float(mu):.6g} differs from the fitted "
                    f"mu={self.config.mu:.6g}; the fitted grid is used as is.",
                    stacklevel=2,
                )
        if kwargs.get("shift") is not None and self.family == "vp":
            raise ValueError("a flow shift was passed to a DODEScheduler fitted on a VP model.")
        self._check_guidance(guidance_scale, pipe)
        self.timesteps = self._timesteps_for(self.net_sigmas).to(device)
        self._reset()

    def _check_sigmas(self, sigmas, fitted: str) -> None:
        s = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
        grid = self.grid
        cands = [grid, grid[:-1]]
        if self.family == "flow":  # FLUX-style lists are in t, without the final 0
            t = torch.where(torch.isinf(grid), torch.ones_like(grid), grid / (1 + grid))
            cands += [t, t[:-1]]
        if not any(c.shape == s.shape and torch.allclose(c, s, rtol=1e-5) for c in cands):
            raise ValueError(
                f"custom sigmas requested but {fitted} on σ = "
                f"{[round(float(v), 4) for v in grid]}; pass none."
            )

    def _calling_pipeline(self) -> Any:
        """The diffusers pipeline calling :meth:`set_timesteps` (found on the stack), or None.

        Why a stack walk: no explicit path from a pipeline to its scheduler exists in
        diffusers. Pipelines call ``self.scheduler.set_timesteps(...)`` (directly or through
        ``retrieve_timesteps(self.scheduler, ...)``) without passing themselves, and assigning
        ``pipe.scheduler = s`` or ``register_modules`` calls nothing on the scheduler. The
        explicit checks run where a pipeline is named: ``from_solver_file(path, like=pipe)``
        and :meth:`check_pipeline`; this walk applies the same checks to a scheduler built
        without its pipeline (``like=pipe.scheduler``, a saved config). It reads only frames
        of the current call (at most 8 up) and keeps no reference to them.
        """
        frame = inspect.currentframe()
        try:
            for _ in range(8):
                frame = frame.f_back if frame is not None else None
                if frame is None:
                    return None
                obj = frame.f_locals.get("self")
                if _is_pipeline(obj):
                    return obj
            return None
        finally:
            del frame

    def check_pipeline(self, pipe: Any) -> None:
        """Check a diffusers pipeline against what the solver file records: ``ValueError`` for
        a pipeline of the other model family (flow vs VP), a network without the class labels
        the fitted model was conditioned on, and other weights than the fitted ones (the recorded weights hash, compared for
        pixel-space diffusers models, whose hash covers the network alone; latent pipelines'
        hashes cover the VAE and text encoders too and are not compared here).

        Runs in :meth:`from_solver_file` with ``like=pipe`` and in :meth:`set_timesteps` for
        the calling pipeline (each network is hashed once per scheduler).
        """
        self._check_family(pipe)
        net = getattr(pipe, "unet", None)
        if not isinstance(net, torch.nn.Module) or net in self._checked_nets:
            return
        model = dict(self.config.model or {})
        name = model.get("id") or model.get("class") or "see its config"
        cond = model.get("conditioning")
        fitted_labels = isinstance(cond, dict) and cond.get("kind") == "class_labels"
        has_labels = getattr(getattr(net, "config", None), "num_class_embeds", None) is not None
        if fitted_labels and not has_labels:
            raise ValueError(
                f"this DODEScheduler was fitted on a class-conditional model ({name}, guidance "
                f"scale {model.get('guidance_scale')}) but the pipeline's network has no class "
                "embedding: its λ do not apply. Use a solver fitted on this pipeline's model."
            )
        recorded = model.get("weights_hash")
        if model.get("class") in _PIXEL_CLASSES and recorded:
            from ..files.weights import weights_hash

            holder = torch.nn.Module()
            holder.unet = net  # the fitted denoiser's state dict: the network under "unet."
            have = weights_hash(holder, cache=False)
            if have != recorded:
                raise ValueError(
                    f"the pipeline's network has other weights than the model this "
                    f"DODEScheduler was fitted on ({name}; weights hash {have[:12]}… vs "
                    f"{recorded[:12]}…): its λ do not apply. Use the fitted model's weights "
                    "(and dtype), fit a solver for this model, or pass ignore_model_hash=True "
                    "to from_solver_file to use them anyway."
                )
        self._checked_nets.add(net)

    def _check_family(self, pipe: Any) -> None:
        """A pipeline of the other model family (flow vs VP) gets one clear error."""
        name = type(pipe).__name__
        family = pipeline_family(name)
        if family is None or family == self.family:
            return
        names = {"vp": "a diffusion (DDPM/VP)", "flow": "a rectified-flow"}
        raise ValueError(
            f"{name} runs {names[family]} model, but this DODEScheduler was fitted on "
            f"{names[self.family]} model ({(self.config.model or {}).get('id') or 'see its config'})"
            ": its σ grid and λ do not apply. Use a solver fitted on this pipeline's model."
        )

    def _check_guidance(self, guidance_scale: float | None, pipe: Any = None) -> None:
        # FLUX's guidance_scale is its embedded guidance (a network input), not CFG
        embedded = pipe is not None and type(pipe).__name__.startswith("Flux")
        w_fit = self.config.embedded_guidance if embedded else self.config.guidance_scale
        if w_fit is None:
            return
        w = guidance_scale
        if w is None and pipe is not None:  # best effort: the calling pipeline's scale
            w = getattr(pipe, "_guidance_scale", None)
        if w is not None and abs(float(w) - float(w_fit)) > 1e-6:
            what = "embedded guidance" if embedded else "scale"
            warnings.warn(
                f"guidance_scale={float(w):g} differs from the {what} the λ were fitted at "
                f"({float(w_fit):g}); the correction may not help. Sample with "
                f"guidance_scale={float(w_fit):g} or fit for {float(w):g}.",
                stacklevel=3,
            )

    # ---- the pipeline interface ---------------------------------------------------------------
    def _first_rescale(self) -> float | None:
        """The factor that takes the pipeline's first latents (at the grid's σ_0) to the
        network's input at σ_net,0; ``None`` when they are the same (no model-time shift at the
        first solver call, or a flow grid from t = 1, whose first call is the exact step)."""
        s0, n0 = self.call_sigmas[0], self.net_sigmas[0]
        if s0 == n0:
            return None
        if self.family == "flow":
            return (1 + s0) / (1 + n0)
        return math.sqrt((1 + s0 * s0) / (1 + n0 * n0))

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        """The network's input for the current call: the latents themselves (they already are
        ``x_vp`` or ``x_t`` at the σ the network runs at), except for the pipeline's own first
        latents under a model-time shift ξ_0 ≠ 0: those are at the grid's σ_0 and go to the
        network at ``σ_net,0 = σ_0 · exp(ξ_0)`` (VP ``x / sqrt(1 + σ_net²)``, flow
        ``x / (1 + σ_net)``)."""
        factor = self._first_rescale() if self._k == 0 else None
        if factor is None:
            return sample
        self._first_scaled = True
        return sample * factor

    def _scale(self, sigma: float | Tensor, x: Tensor) -> Tensor:
        """The pipeline's latents at σ-space state ``x``: ``x · _scale`` (``x_vp`` or ``x_t``),
        as the denoisers scale their network input."""
        if self.family == "flow":
            return flow_scale(sigma, x)
        return vp_scale(as_sigma(sigma, x), x)

    def _consumed(self, out: Tensor, x: Tensor, sigma: float) -> Tensor:
        """The network's native output at ``x`` (σ-space) → what the solver consumes, by the
        denoisers' own conversion (:func:`~dode.denoisers.vp.vp_from_native`,
        :func:`~dode.denoisers.flow.flow_from_native`)."""
        out = out.to(x.dtype)
        if self.family == "flow":
            return flow_from_native(out, x, sigma, self.solver.consumes)
        s = as_sigma(sigma, x)
        native = vp_from_native(out, x, s, self.prediction_type)
        return as_prediction(
            native, x, s, vp_prediction(self.prediction_type), self.solver.consumes
        )

    def _replay(self) -> tuple[Tensor, float | None]:
        """Run the solver over the raw outputs received so far, through the core's correction
        (:class:`~dode.correction.DODECorrection` around a :class:`~dode.replay.Replay`): the
        next call's (x, σ), or the final sample and ``None``."""
        # outputs are checked as they arrive (step), the state once per step: no O(NFE²) checks
        model = DODECorrection(
            Replay(self._outs),
            self.lambdas,
            check_finite=False,
            coefficients=self.coefficients,
            shift=self.model_time_shift,
        )
        x, sigma = run_until_stop(self.solver, model, self._x_init, self.solver_grid.tolist())
        if not torch.isfinite(x).all():
            lam = "" if self.lambdas is None else " or λ too large (check the solver file)"
            raise ValueError(
                f"the solver made non-finite values after call {self._k - 1} from finite model "
                f"outputs: a grid the model cannot take{lam}."
            )
        return x, sigma

    def step(
        self,
        model_output: Tensor,
        timestep: Any,
        sample: Tensor,
        eta: float = 0.0,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> SchedulerOutput | tuple[Tensor]:
        """One model call: correct its output, advance the solver to its next model call.

        Args:
            model_output: the network's native output at ``sample`` and ``timestep``
                (guidance already combined).
            timestep: the current entry of :attr:`timesteps` (checked).
            sample: the current latents (used on the first step only, see the module notes).
            eta: must be 0 (the solver is deterministic).

        Returns:
            ``SchedulerOutput(prev_sample)``: the latents for the next model call, or the
            final sample after the last call.
        """
        self._check_step(model_output, timestep, sample, eta)
        if self._k == 0:
            self._begin(sample)
            if self.flow_start:
                prev = self._exact_flow_start(model_output, sample).to(sample.dtype)
                return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)
        self._receive(model_output)
        prev = self._advance().to(sample.dtype)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def _check_step(self, model_output: Tensor, timestep: Any, sample: Tensor, eta: float) -> None:
        """A call is left, ``eta`` is 0, the output has the latents' shape, the batch is the
        run's and ``timestep`` is this call's."""
        k = self._k
        if k >= self.nfe:
            raise ValueError(
                f"all {self.nfe} model calls of the fitted schedule are done; call "
                "set_timesteps() before sampling again."
            )
        if eta:
            raise ValueError(f"DODEScheduler is a deterministic ODE solver; got eta={eta}, use 0.")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model output has shape {tuple(model_output.shape)} but the latents "
                f"{tuple(sample.shape)}; a model with learned variance must be split first."
            )
        if k > 0 and sample.shape != self._shape:
            raise ValueError(
                f"step() got latents of shape {tuple(sample.shape)} at call {k}, but this run "
                f"started with {tuple(self._shape)}: the batch (or sample) size cannot change "
                "mid-run. Call set_timesteps() and start again with the new batch."
            )
        self._check_timestep(timestep, k, sample.shape[0])

    def _begin(self, sample: Tensor) -> None:
        """The first call: the run's shape and dtype, and (except for a flow grid from t = 1,
        see :meth:`_exact_flow_start`) dode's initial state ``noise · σ_0`` from the
        pipeline's first latents (``noise = latents / init_noise_sigma``, as ``dode.sample``)."""
        if self._first_rescale() is not None and not self._first_scaled:
            xi = math.log(self.net_sigmas[0] / self.call_sigmas[0])
            raise ValueError(
                f"this solver file's first model call runs the network at a shifted σ "
                f"(model-time shift ξ_0 = {xi:.4g}), but the pipeline gave the network its "
                "first latents without scheduler.scale_model_input(), so that call cannot "
                "be applied (DDPMPipeline, DDIMPipeline, SD3 and FLUX pipelines do not call "
                "it). Use a pipeline or loop that calls scale_model_input (Stable "
                "Diffusion, SDXL), a flow grid from t = 1 (its first call is exact), or a "
                "solver fitted without a model-time shift."
            )
        self._shape = sample.shape
        self._dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        if not self.flow_start:
            self._x_init = self.dode_noise(sample.to(self._dtype)) * float(self.grid[0])
            self._x_cur = self._x_init

    def _exact_flow_start(self, model_output: Tensor, sample: Tensor) -> Tensor:
        """A flow grid from t = 1: the first call is ``flow_start``'s exact step (x̂0 = latents
        − v(latents, 1), then the noise), uncorrected; returns the latents of the next call."""
        latents = sample.to(self._dtype)
        x0 = latents - model_output.to(self._dtype)
        if not torch.isfinite(x0).all():
            raise ValueError(
                "the model returned non-finite values at t = 1; check the model weights and dtype."
            )
        s1 = float(self.solver_grid[0])
        self._x_init = (latents + x0 / s1) * s1
        self._x_cur = self._x_init
        self._k += 1
        return self._x_init * self._scale(self.net_sigmas[1], self._x_init)

    def _receive(self, model_output: Tensor) -> None:
        """This call's output, read at σ_net as the denoisers do when the core calls
        ``D(x, σ_net)``, converted to what the solver consumes and kept raw (the correction runs
        in the replay)."""
        k = self._k
        sigma = self.net_sigmas[k]  # where the network ran (σ_k · exp(ξ_k), else σ_k)
        o = self._consumed(model_output, self._x_cur, sigma)
        if not torch.isfinite(o).all():
            raise ValueError(
                f"the model returned non-finite values at call {k} (σ = {sigma:.6g}); check the "
                "model weights and dtype."
            )
        self._outs.append(o)
        self._k += 1

    def _advance(self) -> Tensor:
        """Replay the solver to its next model call: the latents for that call (at σ_net), or
        the final sample after the last one."""
        x_next, sigma_next = self._replay()
        if sigma_next is None:
            s_last = float(self.grid[-1])
            self._outs = []
            return x_next if s_last == 0 else x_next * self._scale(s_last, x_next)
        # the replay stops where the correction calls the model: at σ_net
        if sigma_next != self.net_sigmas[self._k]:  # pragma: no cover - contract guard
            raise RuntimeError("the solver's replay diverged from its call schedule.")
        self._x_cur = x_next
        return x_next * self._scale(sigma_next, x_next)

    def _check_timestep(self, timestep: Any, k: int, batch: int) -> None:
        """``timestep`` must be call ``k``'s entry of :attr:`timesteps`: a number, a one-element
        tensor, or one per sample (all equal to it: the fitted solver runs every sample on the
        same grid)."""
        expected = float(self.timesteps[k])
        if torch.is_tensor(timestep):
            t = timestep.detach().reshape(-1).double().cpu()
            if t.numel() not in (1, batch):
                raise ValueError(
                    f"step() got {t.numel()} timesteps for a batch of {batch}; pass the current "
                    "entry of scheduler.timesteps (one number, or one per sample)."
                )
        elif isinstance(timestep, float | int):
            t = torch.tensor([float(timestep)], dtype=torch.float64)
        else:
            return
        off = (t - expected).abs()
        if (off > 1e-3).any():
            bad = float(t[int(off.argmax())])
            which = "" if t.numel() == 1 else f" (sample {int(off.argmax())})"
            raise ValueError(
                f"step() got timestep {bad:.4g}{which} but call {k} of the fitted schedule is at "
                f"{expected:.4g} for every sample; iterate over scheduler.timesteps after "
                "set_timesteps()."
            )

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """Noise clean latents to the given timesteps (entries of :attr:`timesteps`) in the
        pipeline's convention: VP ``α (x0 + σ n)``, flow ``(1 − t) x0 + t n`` (with a model-time
        shift, ``x0 + σ n`` scaled as the latents of that call are, see :attr:`latent_sigmas`)."""
        ts = torch.as_tensor(timesteps).reshape(-1).cpu().double()
        table = self.timesteps.cpu().double()
        idx = (ts[:, None] - table[None, :]).abs().argmin(dim=1)
        if ((table[idx] - ts).abs() > 1e-3).any():
            raise ValueError("add_noise: timesteps must be entries of scheduler.timesteps.")
        shape = (-1, *([1] * (original_samples.ndim - 1)))
        pick = idx.tolist()
        s, s_net = (
            torch.tensor([sig[i] for i in pick], dtype=torch.float64)
            .to(original_samples.device, original_samples.dtype)
            .reshape(shape)
            for sig in (self.call_sigmas, self.latent_sigmas)
        )
        if self.family == "flow":  # (x0 + σ n) / (1 + σ_net); n at t = 1 (σ = ∞)
            noisy = (original_samples + s * noise) / (1 + s_net)
            return torch.where(torch.isinf(s), noise, noisy)
        return (original_samples + s * noise) * vp_scale(s_net, original_samples)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ---- writing ------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write ``scheduler_config.json`` (everything needed to rebuild this scheduler)."""
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        super().save_pretrained(save_directory, **kwargs)
