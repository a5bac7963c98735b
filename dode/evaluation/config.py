"""What an evaluation samples with: its settings, the model, the σ grid, the solver and λ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from ..denoisers import Denoiser
from ..denoisers.loading import load_denoiser
from ..files.solver_file import FittedSolver
from ..files.weights import check_model_weights
from ..grids.schedules import grid_for_model
from ..noise import check_seed_count, parse_seeds
from ..solvers import Solver, get_solver

__all__ = ["EvalConfig", "load_model", "build_grid", "resolve_solver", "seed_list"]

Schedule = Literal["karras", "log_uniform", "time_uniform", "quadratic", "explicit"]


@dataclass
class EvalConfig:
    """Settings of one evaluation (every field is a ``--flag`` of ``python -m dode.evaluate``).

    Args:
        model: hub id or local folder of a diffusers UNet2DModel + DDPM scheduler; may be
            left out with ``solver_file`` when the file records the model id.
        solver: base solver name (``ddim``, ``ipndm``, ``dpm_solver``, ``deis``, ``heun``, ...).
        solver_options: extra constructor arguments of the solver (``{order: 3}``, ...).
        nfe: number of network evaluations; the grid gets the steps that give exactly this.
        schedule: σ-grid: ``karras``, ``log_uniform`` (log-SNR), ``time_uniform`` (DDIM's
            uniform timestep skip on the model's table), ``quadratic`` or ``explicit``; the
            same grids as ``python -m dode.train``.
        schedule_options: options of the schedule, e.g. ``{sigma_min: 0.002, sigma_max: 80}``
            or ``{spacing: trailing}``.
        solver_file: a fitted-solver file (``python -m dode.train`` writes one); overrides
            solver/schedule/nfe.
        base: with ``solver_file``: sample with its base solver (λ = 0) on the same grid.
        ignore_model_hash: with ``solver_file``: evaluate even if the model's weights are not
            the ones the file was fitted on, or cannot be identified (the JSON-lines record
            says so: ``model_check: ignored``); the same flag as ``python -m dode.sample``'s.
        num_samples: how many samples (seeds ``seed_start`` ... ``seed_start + N − 1``).
        seed_start: the first seed.
        seeds: an explicit seed list such as ``"0-9999"`` (overrides num_samples/seed_start).
        batch_size: samples per device per batch.
        out: output folder (on a filesystem every node sees).
        save: what to keep: ``png`` (the per-seed folder), ``npz`` (``samples.npz``, holding
            every sample of the folder, earlier runs' too; the PNG folder is then removed),
            ``both``, or ``none`` (scores only: the PNGs this run made are removed, earlier
            runs' samples stay).
        fid: compute the Fréchet distance after generating.
        ref: reference statistics: an ``.npz`` with ``mu``/``sigma``, a folder of real images
            (statistics cached), or a torch-fidelity dataset name (``cifar10-train``).
        features: ``inception`` (FID), ``pixels`` (a stand-in, reported as ``fd_pixels``), or
            ``package.module:factory``.
        inception_weights: path of torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
            (default: ``$DODE_INCEPTION_WEIGHTS``, then torch hub's cache).
        devices: devices per node (``auto``: every GPU, or 1 CPU process).
        num_nodes: number of nodes (DDP).
        accelerator: ``auto``, ``gpu``, ``cpu``.
        model_dtype: dtype of the network (integration stays float32).
        sigma_to_t: how σ maps to the model's timestep: ``interp`` or ``snap``.
        log: JSON-lines file the result is appended to (``null``: none).
        wandb: log the result and a sample grid to Weights & Biases.
        wandb_project: W&B project.
        name: a name for the run (W&B and the log).
        progress: show progress bars (with ETA).
        model_options: extra options of the model loader (``{num_classes: 10}``, ...).
        prompt: text models: one prompt for every seed (as ``python -m dode.sample`` takes it).
        prompts_file: text models: a file of prompts, one per line (seed ``s`` gets line
            ``s % n``).
        negative_prompt: text models: the negative prompt.
        class_labels: class-conditional models: ``0,1,2`` (seed ``s`` gets ``labels[s % n]``),
            ``all`` or ``uniform``; a solver file fitted with a label rule reuses it.
        guidance_scale: CFG scale (default: the solver file's, else 1).
        guidance_rescale: CFG rescale φ (default: the solver file's, else 0).
        clip_model: a local folder with a CLIP model and processor (``save_pretrained``):
            also report the CLIP score (torchmetrics) of the samples against their prompts.
    """

    model: str | None = None
    solver: str | None = None
    solver_options: dict | None = None
    nfe: int | None = None
    schedule: Schedule = "karras"
    schedule_options: dict | None = None
    solver_file: str | None = None
    base: bool = False
    ignore_model_hash: bool = False
    num_samples: int = 50_000
    seed_start: int = 0
    seeds: str | None = None
    batch_size: int = 256
    out: str = "runs/evaluate"
    save: Literal["png", "npz", "both", "none"] = "png"
    fid: bool = True
    ref: str | None = None
    features: str = "inception"
    inception_weights: str | None = None
    devices: int | str = "auto"
    num_nodes: int = 1
    accelerator: str = "auto"
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    sigma_to_t: Literal["interp", "snap"] = "interp"
    log: str | None = "runs/evaluate.jsonl"
    wandb: bool = True
    wandb_project: str = "dode"
    name: str | None = None
    progress: bool = True
    model_options: dict | None = None
    prompt: str | None = None
    prompts_file: str | None = None
    negative_prompt: str | None = None
    class_labels: str | None = None
    guidance_scale: float | None = None
    guidance_rescale: float | None = None
    clip_model: str | None = None


def seed_list(cfg: EvalConfig) -> list[int]:
    """The seeds of the samples: ``cfg.seeds``, or ``num_samples`` seeds from ``seed_start``."""
    if cfg.seeds is not None:
        seeds = parse_seeds(cfg.seeds)
    else:
        if cfg.num_samples < 1 or cfg.seed_start < 0:
            raise ValueError("num_samples must be >= 1 and seed_start >= 0.")
        check_seed_count(cfg.num_samples, f"--num_samples {cfg.num_samples}")
        seeds = list(range(cfg.seed_start, cfg.seed_start + cfg.num_samples))
    if not seeds:
        raise ValueError("the seed list is empty.")
    return seeds


def load_model(
    model: str | None,
    sigma_to_t: Literal["interp", "snap"] = "interp",
    model_dtype: str = "float32",
    **options,
) -> Denoiser:
    """Load a model (hub id, diffusers folder, or a name ``dode.denoisers.loading`` knows) as a denoiser.

    A hub id that cannot be fetched (offline, no cache) raises ``ValueError`` naming the
    ``huggingface-cli download`` command and the folder to pass instead.
    """
    if not model:
        raise ValueError(
            "no model given; pass --model (a hub id such as google/ddpm-cifar10-32 or a folder "
            "written by save_pretrained), or a --solver_file that records its model."
        )
    return load_denoiser(model, sigma_to_t=sigma_to_t, dtype=model_dtype, **options)


def build_grid(
    denoiser: Denoiser,
    solver: Solver | str,
    nfe: int,
    schedule: str = "karras",
    options: dict | None = None,
) -> Tensor:
    """The σ-grid on which ``solver`` makes exactly ``nfe`` model calls.

    The same grids as ``python -m dode.train`` builds (:func:`dode.grids.schedules.grid_for_model`):
    ``karras`` and ``log_uniform`` span ``[max(0.002, σ_min), min(80, σ_max)]`` of the model
    unless ``options`` say otherwise (``sigma_min``, ``sigma_max``, ``rho``); ``time_uniform``
    and ``quadratic`` pick timesteps of the model's discrete table (``spacing``, ...).
    """
    solver = get_solver(solver)
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}.")
    return grid_for_model(denoiser, schedule, solver.steps_for_nfe(nfe), options)


def resolve_solver(cfg: EvalConfig, denoiser: Denoiser | None):
    """What ``cfg`` samples with: ``(denoiser, solver config, σ grid, λ or None, label, model id)``.

    A fitted-solver file gives its solver, grid and λ (λ = None with ``cfg.base``) and names its
    model unless ``cfg.model`` does; a model whose weights are not the ones the file was fitted
    on (or cannot be identified) is refused unless ``cfg.ignore_model_hash``. Otherwise ``cfg.solver`` on a grid built for ``cfg.nfe``.
    """
    if cfg.solver_file:
        given = [
            f"--{k}"
            for k in ("solver", "nfe", "solver_options", "schedule_options")
            if getattr(cfg, k) is not None
        ]
        if given:
            raise ValueError(
                f"--solver_file gives the solver, grid and λ, so {', '.join(given)} would be "
                "ignored: leave them out (--base samples the file's base solver on its grid), "
                "or drop --solver_file to evaluate a base solver by name."
            )
        fitted = FittedSolver.load(cfg.solver_file)
        meta = fitted.model or {}
        model = cfg.model or meta.get("id")
        if denoiser is None:
            options = {**(meta.get("options") or {}), **(cfg.model_options or {})}
            denoiser = load_model(model, cfg.sigma_to_t, cfg.model_dtype, **options)
        fitted.check_model(denoiser)  # the family first: no override makes its λ apply
        check_model_weights(
            meta.get("weights_hash"),
            denoiser,
            str(model),
            source=str(cfg.solver_file),
            ignore=cfg.ignore_model_hash,
        )
        lambdas = None if cfg.base else fitted.lambdas
        solver = fitted.build_solver()
        label = ("" if cfg.base else "D-") + solver.describe()
        return denoiser, fitted.solver, fitted.sigmas, lambdas, label, model
    if not cfg.solver or cfg.nfe is None:
        raise ValueError(
            "say what to sample with: --solver NAME --nfe N (a base solver), or --solver_file "
            "FILE (a fitted D-solver)."
        )
    if denoiser is None:
        denoiser = load_model(
            cfg.model, cfg.sigma_to_t, cfg.model_dtype, **(cfg.model_options or {})
        )
    solver = get_solver(cfg.solver, **(cfg.solver_options or {}))
    sigmas = build_grid(denoiser, solver, cfg.nfe, cfg.schedule, cfg.schedule_options)
    return denoiser, solver.config(), sigmas, None, solver.describe(), cfg.model
