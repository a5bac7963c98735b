"""Typed settings of a Lightning fit: what ``python -m dode.train``'s configs, :func:`dode.fit`
and the CLI share.

A fit's settings fall into five groups, each a frozen dataclass that checks its fields when it
is made (one ``ValueError`` naming the field and the fix):

* :class:`ModelSpec`: the frozen model and how it is evaluated (dtypes, σ → t, loader
  options, guidance); config section ``model:``.
* :class:`SolverSpec`: the problem: solver, NFE, σ grid, teacher; ``model:``.
* :class:`FitSpec`: how λ are fitted (mode, learning rate, memory switches, end-to-end
  settings); ``model:``.
* :class:`DataSpec`: seeds, batch size, teacher cache, conditioning; ``data:``.
* :class:`RunSpec`: run folder, solver file, resume, W&B, seed (top level) and the options of
  the ``Trainer`` and the callbacks (``trainer:``, ``samples:``, ``lambda_plot:``, ``fid:``).

:class:`Specs` holds one of each. ``Specs.from_config("configs/tiny.yaml")`` reads a
``python -m dode.train`` config as it is (the ``model:`` section holds the fields of the first
three specs, :class:`ModuleSpec`); ``Specs.from_kwargs(**flat)`` reads :func:`dode.fit`'s flat
keywords; :meth:`Specs.kwargs` gives them back.

Each setting is declared, defaulted and documented here only. :class:`~dode.lit.DODEModule`
takes ``**settings`` and makes a :class:`ModuleSpec` of them, :class:`~dode.lit.NoiseDataModule`
a :class:`DataSpec`, and :func:`dode.fit` gathers its flat keywords into the specs; LightningCLI
follows those ``**settings`` into the spec (jsonargparse resolves the keywords a constructor
passes on), so ``--model.*`` and ``--data.*`` are the specs' fields with their types, defaults
and help. :meth:`dode.lit.DODEModule.from_specs` and
:meth:`dode.lit.NoiseDataModule.from_spec` build the Lightning objects from specs.

::

    from dode.lit import DataSpec, ModelSpec, SolverSpec
    fitted = dode.fit(ModelSpec("gmm-digits"), SolverSpec("ddim", nfe=4),
                      data=DataSpec(fit_seeds="0-255"))
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from ..conditioning import SeedConditioning
from ..denoisers import check_guidance
from ..denoisers.loading import resolve_dtype
from ..noise import parse_seeds
from ..solvers import get_solver
from .end_to_end import check_end_to_end
from .fit_modes import FIT_MODES, FitMode

__all__ = [
    "ModelSpec",
    "SolverSpec",
    "FitSpec",
    "DataSpec",
    "RunSpec",
    "ModuleSpec",
    "Specs",
    "WandbMode",
    "fit_kwargs",
    "check_trainer_options",
    "check_seeds",
]

WandbMode = Literal["auto", "offline", "online", "disabled"]
WANDB_MODES: tuple[str, ...] = ("auto", "offline", "online", "disabled")


def _options(value: Any, name: str, example: str) -> dict[str, Any] | None:
    """A keyword-options field: ``None`` or a mapping (copied into a dict)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping of keyword options such as {example}, "
                         f"got {value!r}.")  # fmt: skip
    return dict(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Spec:
    """What every spec shares: its fields as keyword arguments."""

    def kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments (values as given, dicts not copied deeply)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}  # type: ignore[arg-type]

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names (the keywords this spec takes)."""
        return tuple(f.name for f in fields(cls) if f.init)  # type: ignore[arg-type]

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)


@dataclass(frozen=True)
class ModelSpec(_Spec):
    """The frozen model and how it is evaluated (``--model.*`` of ``python -m dode.train``).

    Args:
        model: a registered name (``digits``, ``gmm-digits``), a local diffusers folder, a hub id
            (``org/name``) or ``package.module:function``.
        dtype: integration dtype (noise, states, teacher).
        model_dtype: dtype of the network weights (default: ``dtype``).
        sigma_to_t: σ → timestep for diffusers models: ``interp`` or ``snap``.
        model_options: extra keyword options for the model loader.
        guidance_scale: classifier-free guidance scale w of a conditional model (1: none).
        guidance_rescale: φ in [0, 1] of diffusers' guidance rescale (0: off).
    """

    model: str = "digits"
    dtype: Literal["float32", "float64"] = "float32"
    model_dtype: Literal["float16", "bfloat16", "float32", "float64"] | None = None
    sigma_to_t: Literal["interp", "snap"] = "interp"
    model_options: dict[str, Any] | None = None
    guidance_scale: float = 1.0
    guidance_rescale: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(
                f"model must be a registered name (digits, gmm-digits), a diffusers folder, a "
                f"hub id or package.module:function, got {self.model!r}."
            )
        resolve_dtype(self.dtype)
        resolve_dtype(self.model_dtype)
        self._set(
            "model_options", _options(self.model_options, "model_options", "{num_classes: 10}")
        )
        check_guidance(self.guidance_scale, self.guidance_rescale)


@dataclass(frozen=True)
class SolverSpec(_Spec):
    """The problem: the base solver, its NFE, its σ grid and its teacher (``--model.*``).

    Args:
        solver: the base solver (``ddim``, ``euler``, ``heun``, ``ipndm``, ``dpm_solver``,
            ``dpm_solver_pp``, ``deis``, ``unipc`` and aliases such as ``dpmpp_2m``).
        nfe: number of model calls (NFE) of the student; sets the number of grid steps.
        solver_options: keyword options of the solver, e.g. ``{order: 3}``.
        schedule: σ grid: ``karras``, ``log_uniform``, ``time_uniform``, ``quadratic``,
            ``explicit``, ``flow``, or a grid learned on ``schedule_options.seeds`` (default
            0-99) before the λ fit: ``learned_dp`` (dynamic programme over a fine teacher grid)
            or ``learned_sgd`` (gradient fit of grid and λ; λ are then refitted on that grid by
            ``fit_mode``); see :mod:`dode.learned_grid` for their options.
        schedule_options: options of the schedule, e.g. ``{sigma_min: 0.002, sigma_max: 80,
            rho: 7}`` for ``karras`` or ``{sigmas: [...]}`` for ``explicit``.
        teacher_factor: C, the teacher's refinement of the student grid (the paper uses 10).
        teacher_solver: the teacher's solver (default: the student's own).
        teacher_solver_options: keyword options of the teacher's solver.
        teacher_space: parameterisation in which the teacher grid is refined (``rho``, ``log``,
            ``linear``; default: ``rho`` for ``karras`` grids, ``log`` otherwise).
    """

    solver: str = "ddim"
    nfe: int = 5
    solver_options: dict[str, Any] | None = None
    schedule: str = "karras"
    schedule_options: dict[str, Any] | None = None
    teacher_factor: int = 10
    teacher_solver: str | None = None
    teacher_solver_options: dict[str, Any] | None = None
    teacher_space: Literal["rho", "log", "linear"] | None = None

    def __post_init__(self) -> None:
        nfe = self.nfe
        if not _is_int(nfe) or nfe < 1:
            raise ValueError(f"nfe must be a positive integer, got {nfe!r}.")
        if nfe == 1:
            raise ValueError(
                "nfe 1 leaves nothing to fit: the one model call's λ_0 is 0 by definition (no "
                "previous output), so the D-solver would be the base solver; use nfe >= 2."
            )
        if not _is_int(self.teacher_factor) or self.teacher_factor < 2:
            raise ValueError(
                "teacher_factor must be an integer >= 2 (the paper uses 10), got "
                f"{self.teacher_factor!r}."
            )
        for name, example in (
            ("solver_options", "{order: 3}"),
            ("schedule_options", "{sigma_min: 0.002, sigma_max: 80, rho: 7}"),
            ("teacher_solver_options", "{order: 3}"),
        ):
            self._set(name, _options(getattr(self, name), name, example))
        if not isinstance(self.schedule, str):
            raise ValueError(f"schedule must be a name such as karras, got {self.schedule!r}.")
        # The solver's own checks: its name, its options, and an NFE its order can reach.
        self.build().steps_for_nfe(nfe)
        self.build_teacher()

    def build(self):
        """The student's :class:`~dode.solvers.Solver`."""
        return get_solver(self.solver, **(self.solver_options or {}))

    def build_teacher(self):
        """The teacher's solver, or ``None`` (the student's own)."""
        if self.teacher_solver is None:
            return None
        return get_solver(self.teacher_solver, **(self.teacher_solver_options or {}))


@dataclass(frozen=True)
class FitSpec(_Spec):
    """How λ are fitted (``--model.*``).

    Args:
        fit_mode: ``lstsq`` (closed form, one epoch per model call), ``sgd-local`` or
            ``sgd-global`` (Adam; set ``trainer.max_epochs``), or ``end-to-end``: the grid,
            history coefficients and model-time shift fitted on the final sample by
            :mod:`dode.learned_solver`'s pieces (the fit seeds fit, ``val_seeds`` select and
            accept; see ``end_to_end``), as a Lightning training run: one step is one
            mini-batch through the whole trajectory; DDP, resume, gradient accumulation and
            precision as in any run; ``trainer.max_epochs`` is set from ``steps``.
        lr: Adam learning rate for the sgd modes.
        cache_outputs: ``lstsq``: keep each batch's model outputs between epochs (K outputs per
            sample in memory) instead of re-evaluating calls < k (K²/2 calls).
        activation_checkpointing: ``sgd-global``: recompute network activations in backward.
        check_finite: raise on non-finite model outputs.
        end_to_end: ``fit_mode: end-to-end`` settings: ``warm_start`` (``best_standard``,
            default: the best of :func:`dode.standard_grids.standard_grids` for this solver on
            the selection seeds; ``config``: the ``schedule``), ``reference_nfe`` (the
            converged reference's model calls, default 100), ``reference_batch_size`` (seeds
            per reference batch, default 64; references are cached with the teacher states)
            and the keyword options of :func:`dode.learned_solver.fit_end_to_end` (``steps``,
            ``coefficients``, ``time_shift``, ``learn_grid``, ``lr``, ``lr_coefficients``,
            ...; ``lr`` above is not used by this mode); checked by
            :func:`dode.lit.end_to_end.check_end_to_end`.
    """

    fit_mode: FitMode = "lstsq"
    lr: float = 0.05
    cache_outputs: bool = True
    activation_checkpointing: bool = True
    check_finite: bool = True
    end_to_end: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.fit_mode not in FIT_MODES:
            raise ValueError(
                f"unknown fit_mode {self.fit_mode!r}; use one of {', '.join(FIT_MODES)}."
            )
        if self.end_to_end and self.fit_mode != "end-to-end":
            raise ValueError(
                f"end_to_end settings apply only to fit_mode end-to-end (fit_mode is "
                f"{self.fit_mode!r})."
            )
        self._set("end_to_end", _options(self.end_to_end, "end_to_end", "{steps: 100}"))
        check_end_to_end(self.end_to_end)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}.")


#: the specs whose fields :class:`ModuleSpec` holds, in its field order
MODULE_SPECS: tuple[type[_Spec], ...] = (ModelSpec, SolverSpec, FitSpec)


@dataclass(frozen=True)
class ModuleSpec(FitSpec, SolverSpec, ModelSpec):
    """The settings of :class:`~dode.lit.DODEModule` (its keywords, the ``model:`` section of a
    ``python -m dode.train`` config): the fields of :class:`ModelSpec`, :class:`SolverSpec` and
    :class:`FitSpec`, each checked by its own spec.

    Attributes:
        parts: the three specs of these fields.
    """

    parts: tuple[ModelSpec, SolverSpec, FitSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # checked in the order fit, solver, model (the first bad setting is the one named)
        made = {
            cls: cls(**{n: getattr(self, n) for n in cls.names()}) for cls in MODULE_SPECS[::-1]
        }
        parts = tuple(made[cls] for cls in MODULE_SPECS)
        for part in parts:  # the checked (normalised) values
            for name, value in part.kwargs().items():
                self._set(name, value)
        self._set("parts", parts)

    @classmethod
    def of(cls, model: ModelSpec, solver: SolverSpec, fit: FitSpec) -> ModuleSpec:
        """The settings of these three specs."""
        return cls(**model.kwargs(), **solver.kwargs(), **fit.kwargs())


def check_seeds(spec: Any, what: str) -> list[int]:
    """The seeds of ``spec`` (see :func:`dode.noise.parse_seeds`): not empty, none twice.

    Raises:
        ValueError: unparsable, empty, or a seed twice; ``what`` names the setting.
    """
    try:
        seeds = parse_seeds(spec)
    except (ValueError, TypeError) as e:
        raise ValueError(f"bad {what}: {e}") from None
    if not seeds:
        raise ValueError(f"{what} is empty; give seeds such as '0-255'.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{what} lists a seed twice; every sample needs its own seed.")
    return seeds


@dataclass(frozen=True)
class DataSpec(_Spec):
    """Seeds, batch size, teacher cache and conditioning (``--data.*``; the arguments of
    :class:`~dode.lit.NoiseDataModule`).

    Args:
        fit_seeds: seeds of the samples λ are fitted on: ``"0-1023"``, ``"0-9,20"``, an int N
            (= 0..N−1) or a list.
        val_seeds: seeds of the validation samples (must not overlap ``fit_seeds``).
        batch_size: samples per batch (per process).
        cache_dir: where teacher states are cached; ``"auto"``: ``$DODE_CACHE/teacher`` or
            ``~/.cache/dode/teacher``; ``null``: no cache (recomputed every run).
        class_labels: class-conditional models: ``all`` (seed ``s`` → label ``s % num_classes``),
            ``uniform`` (drawn from the seed) or a list (seed ``s`` → ``labels[s % n]``).
        prompts: text models: a file with one prompt per line (seed ``s`` → line ``s % n``;
            read when the data module is made, not here).
        negative_prompt: text models: the unconditional prompt for every sample.

    Attributes:
        fit_seed_list: ``fit_seeds`` parsed.
        val_seed_list: ``val_seeds`` parsed.
    """

    fit_seeds: str | int | list[int] = "0-1023"
    val_seeds: str | int | list[int] = "1000000-1000255"
    batch_size: int = 128
    cache_dir: str | None = "auto"
    class_labels: str | list[int] | None = None
    prompts: str | None = None
    negative_prompt: str | None = None
    fit_seed_list: tuple[int, ...] = field(init=False, repr=False, compare=False)
    val_seed_list: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        fit, val = (
            check_seeds(self.fit_seeds, "fit_seeds"),
            check_seeds(self.val_seeds, "val_seeds"),
        )
        both = set(fit) & set(val)
        if both:
            raise ValueError(
                f"fit_seeds and val_seeds overlap ({len(both)} seeds, e.g. {min(both)}); "
                "validation must use other samples than the fit."
            )
        self._set("fit_seed_list", tuple(fit))
        self._set("val_seed_list", tuple(val))
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise ValueError(
                f"cache_dir must be a folder, 'auto' or None (no cache), got {self.cache_dir!r}."
            )
        if self.prompts is not None and not isinstance(self.prompts, (str, os.PathLike)):
            raise ValueError(
                f"prompts must be the path of a text file (one prompt per line), got "
                f"{self.prompts!r}."
            )
        SeedConditioning.check_options(
            class_labels=self.class_labels,
            prompts_file=self.prompts,
            negative_prompt=self.negative_prompt,
        )


def check_trainer_options(options: Mapping[str, Any] | None) -> None:
    """``ValueError`` for ``Trainer`` options a dode fit cannot take."""
    if (options or {}).get("use_distributed_sampler"):
        raise ValueError(
            "trainer.use_distributed_sampler must stay false: NoiseDataModule shards the "
            "seeds over ranks itself (no padding, no seed served twice)."
        )


def _check_section(name: str, options: Any, target: Any) -> dict[str, Any] | None:
    """A ``trainer:`` / callback section: a mapping whose keys ``target`` takes."""
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise ValueError(f"{name} must be a mapping of keyword options, got {options!r}.")
    params = inspect.signature(target).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        allowed = [p for p in params if p != "self"]
        bad = sorted(set(options) - set(allowed))
        if bad:
            raise ValueError(f"unknown setting {name}.{bad[0]}; {name} takes {', '.join(allowed)}.")
    return dict(options)


@dataclass(frozen=True)
class RunSpec(_Spec):
    """The run around the fit: folders, resume, W&B, the ``Trainer`` and the callbacks (the
    top-level settings of a ``python -m dode.train`` config and its ``trainer:``,
    ``samples:``, ``lambda_plot:``, ``fid:`` sections).

    Args:
        trainer: keyword options of ``lightning.Trainer`` (over
            :data:`dode.lit.api.TRAINER_DEFAULTS`).
        samples: options of :class:`~dode.lit.SampleGridCallback`.
        lambda_plot: options of :class:`~dode.lit.LambdaPlotCallback`.
        fid: options of :class:`~dode.lit.FrechetCallback`.
        run_dir: the run folder (logs, checkpoints, W&B, images, solver file); default
            ``runs/<model>-<solver>-nfe<N>-<fit_mode>``.
        solver_file: where the fitted-solver file goes; default ``<run_dir>/solver.safetensors``.
        ckpt_path: resume: ``last`` (the run folder's last checkpoint) or a checkpoint path.
        wandb_mode: ``auto`` (online when ``WANDB_API_KEY`` is set and ``WANDB_MODE`` is not
            offline/disabled, offline otherwise), ``offline``, ``online`` or ``disabled``.
        wandb_project: the W&B project.
        name: the run name (default: the run folder's name).
        seed: passed to ``lightning.seed_everything`` (``seed_everything`` in a config).
    """

    trainer: dict[str, Any] | None = None
    samples: dict[str, Any] | None = None
    lambda_plot: dict[str, Any] | None = None
    fid: dict[str, Any] | None = None
    run_dir: str | os.PathLike | None = None
    solver_file: str | os.PathLike | None = None
    ckpt_path: str | None = None
    wandb_mode: WandbMode = "auto"
    wandb_project: str = "dode"
    name: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        import lightning.pytorch as pl

        from .callbacks import FrechetCallback, LambdaPlotCallback, SampleGridCallback

        for name, target in (
            ("trainer", pl.Trainer.__init__),
            ("samples", SampleGridCallback.__init__),
            ("lambda_plot", LambdaPlotCallback.__init__),
            ("fid", FrechetCallback.__init__),
        ):
            self._set(name, _check_section(name, getattr(self, name), target))
        check_trainer_options(self.trainer)
        if self.wandb_mode not in WANDB_MODES:
            raise ValueError(
                f"unknown wandb_mode {self.wandb_mode!r}; use one of {', '.join(WANDB_MODES)}."
            )
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}.")
        if self.ckpt_path is not None and not isinstance(self.ckpt_path, (str, os.PathLike)):
            raise ValueError(
                f"ckpt_path must be 'last' or a checkpoint path, got {self.ckpt_path!r}."
            )


#: ``model:`` holds the fields of :class:`ModuleSpec` (the keywords of DODEModule), ``data:``
#: those of DataSpec (the keywords of NoiseDataModule).
MODEL_SECTION: tuple[str, ...] = ModuleSpec.names()
DATA_SECTION: tuple[str, ...] = DataSpec.names()
_SECTIONS = ("trainer", "samples", "lambda_plot", "fid")
#: the top-level settings of a ``python -m dode.train`` config (:class:`RunSpec`'s fields outside
#: its sections and ``seed_everything``)
RUN_TOP: tuple[str, ...] = ("run_dir", "solver_file", "ckpt_path", "wandb_mode", "wandb_project",
                            "name")  # fmt: skip


def fit_kwargs(config: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A ``python -m dode.train`` YAML config (or its parsed dict) as :func:`dode.fit` keyword
    arguments: the ``model:`` and ``data:`` sections are flattened, ``trainer:``,
    ``samples:``, ``lambda_plot:`` and ``fid:`` stay dicts, ``seed_everything`` becomes
    ``seed``. Only the settings the config holds are returned. Raises ``ValueError`` for a key
    :func:`dode.fit` does not take."""
    if not isinstance(config, Mapping):
        import yaml

        path = Path(config)
        if not path.is_file():
            raise ValueError(f"config {str(path)!r} does not exist; pass a dode.train YAML file.")
        config = yaml.safe_load(path.read_text()) or {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("model", "data") and isinstance(value, Mapping):
            allowed = MODEL_SECTION if key == "model" else DATA_SECTION
            for k, v in value.items():
                if k not in allowed:
                    raise ValueError(
                        f"unknown setting {key}.{k} in the fit config; {key}: takes "
                        f"{', '.join(allowed)}."
                    )
                out[k] = v
        elif key in _SECTIONS:
            out[key] = dict(value or {})
        elif key == "seed_everything":
            out["seed"] = value
        elif key in RUN_TOP:
            out[key] = value
        else:
            raise ValueError(
                f"unknown setting {key!r} in the fit config; use the sections model, data, "
                f"{', '.join(_SECTIONS)} or {', '.join(RUN_TOP)}."
            )
    return out


_GROUPS: dict[str, type[_Spec]] = {
    "model": ModelSpec,
    "solver": SolverSpec,
    "fit": FitSpec,
    "data": DataSpec,
    "run": RunSpec,
}


@dataclass(frozen=True)
class Specs:
    """Every setting of a fit: one spec of each group (defaults where not given).

    ``dode.fit(specs)`` runs it; ``Specs.from_config(path)`` reads a ``python -m dode.train``
    config; ``Specs.from_kwargs(**kw)`` reads :func:`dode.fit`'s flat keywords.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    solver: SolverSpec = field(default_factory=SolverSpec)
    fit: FitSpec = field(default_factory=FitSpec)
    data: DataSpec = field(default_factory=DataSpec)
    run: RunSpec = field(default_factory=RunSpec)

    def __post_init__(self) -> None:
        for name, cls in _GROUPS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(
                    f"Specs.{name} must be a {cls.__name__}, got "
                    f"{type(getattr(self, name)).__name__}; build it with {cls.__name__}(...)."
                )

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> Specs:
        """From :func:`dode.fit`'s flat keywords (any subset; the rest at their defaults).

        Raises:
            ValueError: an unknown keyword, or a bad value (the spec's own message).
        """
        return cls.combine({}, kwargs)

    @classmethod
    def from_config(cls, config: str | os.PathLike | Mapping[str, Any]) -> Specs:
        """From a ``python -m dode.train`` YAML config (a path or its parsed dict), read as it
        is: the settings it does not hold keep their defaults (for an overlay such as
        ``configs/sgd-local.yaml``, those of the classes, not of ``configs/default.yaml``)."""
        return cls.from_kwargs(**fit_kwargs(config))

    @classmethod
    def combine(cls, groups: Mapping[str, _Spec | None], flat: Mapping[str, Any]) -> Specs:
        """Specs from given spec objects (``groups``: ``{"model": ModelSpec(...), ...}``) and
        flat keywords for the groups not given.

        ``flat`` holds only the keywords the caller passed: one of a group given as a spec is
        refused, whatever its value (it would be ignored).

        Raises:
            ValueError: an unknown keyword, a setting given twice, or a bad value.
        """
        owner = {n: g for g, c in _GROUPS.items() for n in c.names()}
        unknown = sorted(set(flat) - set(owner))
        if unknown:
            raise ValueError(
                f"unknown fit setting {unknown[0]!r}; the settings are {', '.join(owner)}."
            )
        made = {}
        for group, spec_cls in _GROUPS.items():
            spec = groups.get(group)
            own = {n: v for n, v in flat.items() if owner[n] == group}
            if spec is None:
                made[group] = spec_cls(**own)
                continue
            if not isinstance(spec, spec_cls):
                raise ValueError(
                    f"{group} must be a {spec_cls.__name__}, got {type(spec).__name__}."
                )
            twice = list(own)
            if twice:
                raise ValueError(
                    f"{twice[0]} is given both as a keyword and in the {spec_cls.__name__}; "
                    f"set it in one place (dataclasses.replace(spec, {twice[0]}=...))."
                )
            made[group] = spec
        return cls(**made)

    @staticmethod
    def defaults() -> dict[str, Any]:
        """Every setting's default, as :func:`dode.fit`'s flat keywords."""
        return {f.name: f.default for c in _GROUPS.values() for f in fields(c) if f.init}  # type: ignore[arg-type]

    def kwargs(self) -> dict[str, Any]:
        """Every setting as :func:`dode.fit`'s flat keywords."""
        out: dict[str, Any] = {}
        for group in _GROUPS:
            out.update(getattr(self, group).kwargs())
        return out
