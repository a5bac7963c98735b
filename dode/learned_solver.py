"""The end-to-end learned solver: grid, history coefficients and model-time shift fitted jointly.

:func:`fit_end_to_end` starts at a given (solver, grid) cell, the best standard one, and
fits by Adam, backpropagating through the whole trajectory (network, solver, correction), the
distance of the final sample to a converged reference from the same noise, on fit seeds only:

* the **grid** (``learn_grid``): :func:`dode.learned_grid.grid_from_logits` keeps σ_0 (the
  warm start's first σ, the model's σ_max) and the final 0, and the interior strictly
  descending for any logits;
* the **coefficients** (``coefficients``): ``"none"``; ``"lambda"``, D-ODE's one λ per call,
  ``õ_k = o_k + λ_k (o_k − o_{k−1})``; ``"history"``, coefficients on the whole history of raw
  model outputs, ``õ_k = o_k + Σ_{j<k} c_kj (o_k − o_j)`` (λ_k = c_k,k−1 is the one-term case;
  the file keeps λ and the rest, :class:`~dode.correction.DODECorrection`);
* the **model-time shift** (``time_shift``): call k feeds the network ``σ_k · exp(ξ_k)``
  while the solver integrates with σ_k.

Both are bounded by the one definition every host checks (:mod:`dode.correction`): the
coefficients (λ included) are ``C·tanh(raw/C)`` with ``C = COEFFICIENT_BOUND``; the shift is
``ξ_k = u_k·hi_k`` (``u_k > 0``) or ``−u_k·lo_k`` with ``u_k ∈ [−1, 1]`` and ``[lo_k, hi_k]``
from :func:`~dode.correction.shift_bounds` on the *current* grid (at most half the smallest
adjacent step in log σ, never above σ_0, never below the model's σ_min), so a call's model time
stays between its neighbours whatever the optimiser does.

The default objective (:func:`dode.objectives.default_objective`) is L2 plus terms that keep
the batch's statistics (spectrum, moments, and a plugged-in feature network's Fréchet
distance), and early stopping and acceptance also watch its quality on the selection seeds.

Everything starts at zero, so the first iterate is exactly the given cell. The iterate kept is
the one with the smallest MSE on separate selection seeds (early stopping), and it is accepted
only if it improves the selection seeds' MSE over the given cell, through the very sampling
path of :func:`dode.sample`; otherwise the given cell comes back unchanged (λ = 0), and the
record says so. So the result is never worse than the given cell on the selection seeds by
construction.

The pieces are shared by every driver of the fit (this function's plain loop, and the
Lightning training run of ``fit_mode: end-to-end``, :mod:`dode.lit.end_to_end`):
:class:`LearnedSolver` (the parameters, :meth:`~LearnedSolver.current`, the one map from them to
a solver, and the trajectory), :func:`fit_loss`, :func:`minibatch_order`,
:func:`selection_errors` (the selection MSE's per-seed terms) and :func:`conclude` (the
paired-bootstrap acceptance and the record).

The result is a :class:`~dode.files.solver_file.FittedSolver` (grid, λ, coefficients, shift and the
record in ``metrics["end_to_end"]``); :meth:`~dode.files.solver_file.FittedSolver.sample`,
:func:`dode.sample` and :func:`dode.evaluate` run it with the arithmetic the fit optimised.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .correction import (
    COEFFICIENT_BOUND,
    SHIFT_FRACTION,
    DODECorrection,
    bounded_coefficients,
    bounded_shift,
    call_sigmas,
    model_fn,
    shift_bounds,
)
from .denoisers import Denoiser
from .files.solver_file import FittedSolver
from .grids.schedules import explicit
from .learned_grid import grid_from_logits, logits_from_grid
from .metrics import bootstrap_means, check_clip, clipped, per_seed_mse
from .objectives import default_objective
from .sampling import _check_batch, _check_denoiser, rows, sample
from .solvers import Solver, get_solver
from .standard_grids import model_sigma_range

__all__ = [
    "COEFFICIENTS",
    "OBJECTIVES",
    "LearnedSolver",
    "check_options",
    "conclude",
    "fit_end_to_end",
    "fit_loss",
    "history_mask",
    "minibatch_order",
    "paired_improvement",
    "quality_limit",
    "resolve_clip",
    "zero_nonfinite_grads",
    "selection_errors",
    "sigma_floor",
    "warm_start_grid",
]

COEFFICIENTS = ("none", "lambda", "history")
OBJECTIVES = ("default", "l2", "l1")


def history_mask(num_calls: int) -> Tensor:
    """``[K, K]`` float64 mask of the history coefficients the file stores besides λ: 1 where
    ``j < k − 1`` (the sub-diagonal is λ)."""
    return torch.tril(torch.ones(num_calls, num_calls, dtype=torch.float64), diagonal=-2)


def _distance(x: Tensor, ref: Tensor, objective, clip: tuple[float, float] | None) -> Tensor:
    x, ref = clipped(x, clip), clipped(ref, clip)
    if objective == "default":
        objective = default_objective()
    if callable(objective):
        loss = objective(x, ref)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TypeError(
                f"the objective must return a scalar tensor (the batch's loss), got "
                f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}."
            )
        return loss.reshape(())
    d = x - ref
    return (d**2).mean() if objective == "l2" else d.abs().mean()


def _objective_name(objective) -> str:
    return objective if isinstance(objective, str) else getattr(objective, "__name__", "custom")


def paired_improvement(
    base: Tensor, new: Tensor, *, level: float = 0.95, num: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Mean per-seed change ``new − base`` and its one-sided bootstrap upper bound at
    ``level`` (resampling seeds, paired): ``new`` improves on ``base`` with that confidence
    when the bound is below 0."""
    d = (new.to(torch.float64) - base.to(torch.float64)).flatten()
    if d.numel() < 2 or not torch.isfinite(d).all():
        return (float(d.mean()) if d.numel() else math.nan), math.inf
    return float(d.mean()), float(np.quantile(bootstrap_means(d, num=num, seed=seed), level))


def _check_pair(denoiser: Denoiser, noise: Tensor, ref: Tensor, what: str) -> None:
    if not isinstance(noise, Tensor) or not isinstance(ref, Tensor):
        raise ValueError(
            f"{what} noise and reference must be tensors (the reference from "
            "dode.standard_grids.reference_solution(denoiser, noise))."
        )
    denoiser.check_noise(noise)
    _check_batch(noise)
    if ref.shape != noise.shape:
        raise ValueError(
            f"the {what} reference has shape {tuple(ref.shape)} but the {what} noise "
            f"{tuple(noise.shape)}; pass reference_solution(denoiser, noise) of the same noise."
        )
    if not torch.isfinite(ref).all():
        raise ValueError(f"the {what} reference holds non-finite values; recompute it.")


def _per_seed_mse(
    run, denoiser, noise: Tensor, ref: Tensor, batch_size: int | None, clip=None, keep=None
) -> Tensor:
    """Per-seed MSE ``[B]`` (float64) of ``run(denoiser_rows, noise_chunk)`` to ``ref``, both
    clamped to ``clip`` where given, over batches of ``batch_size`` seeds (default: one);
    the samples are appended to the list ``keep`` where given."""
    step = batch_size or noise.shape[0]
    out = []
    for i in range(0, noise.shape[0], step):
        j = min(i + step, noise.shape[0])
        den = denoiser if (i, j) == (0, noise.shape[0]) else rows(denoiser, slice(i, j))
        x = run(den, noise[i:j])
        if keep is not None:
            keep.append(x)
        out.append(per_seed_mse(x, ref[i:j], clip))
    return torch.cat(out)


def quality_limit(watch, x: Tensor, ref: Tensor, level: float, seed: int) -> tuple[float, float]:
    """The warm-start cell's quality ``watch(x, ref)`` on the selection seeds and the upper end
    of its bootstrap interval at ``level`` (seeds resampled, paired; the percentile shifted by
    the bootstrap's bias, as the judge's FD interval): what a kept iterate may not exceed."""
    point = float(watch(x, ref))
    rng = np.random.default_rng(seed)
    n = x.shape[0]
    boots = np.array([watch(x, ref, rng.integers(0, n, n)) for _ in range(100)])
    boots = boots[np.isfinite(boots)]
    if not boots.size:
        return point, point
    hi = float(np.quantile(boots, level)) - (float(boots.mean()) - point)
    return point, max(point, hi)


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The keyword options of :func:`fit_end_to_end` in ``options``, checked (a setting that is
    absent is not checked); ``clip`` normalised. The Lightning fit checks its ``end_to_end``
    settings with this at start-up, before any reference is computed.

    Raises:
        ValueError: a bad value, naming the setting and what it takes.
    """
    o = dict(options)
    if "coefficients" in o and o["coefficients"] not in COEFFICIENTS:
        raise ValueError(
            f"unknown coefficients {o['coefficients']!r}; use one of {', '.join(COEFFICIENTS)}."
        )
    objective = o.get("objective", "default")
    if not callable(objective) and objective not in OBJECTIVES:
        raise ValueError(
            f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)} or a callable "
            "(samples, reference) -> scalar loss."
        )
    ints = (("steps", 0), ("eval_every", 1))
    for name, low in ints:
        v = o.get(name, low)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}.")
    for name in ("lr", "lr_coefficients", "lr_shift"):
        v = o.get(name, 1.0)
        if not (
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        ):
            raise ValueError(f"{name} must be a positive number, got {v!r}.")
    wd = o.get("weight_decay", 0.0)
    if not (
        isinstance(wd, (int, float)) and not isinstance(wd, bool) and math.isfinite(wd) and wd >= 0
    ):
        raise ValueError(f"weight_decay must be a number >= 0, got {wd!r}.")
    for name in ("batch_size", "select_batch_size"):
        v = o.get(name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {v!r}.")
    p = o.get("patience")
    if p is not None and (not isinstance(p, int) or isinstance(p, bool) or p < 0):
        raise ValueError(f"patience must be an integer >= 0 or None, got {p!r}.")
    for name in ("learn_grid", "time_shift", "recompute"):
        if name in o and not isinstance(o[name], bool):
            raise ValueError(f"{name} must be true or false, got {o[name]!r}.")
    if "seed" in o and (not isinstance(o["seed"], int) or isinstance(o["seed"], bool)):
        raise ValueError(f"seed must be an integer, got {o['seed']!r}.")
    if "clip" in o and o["clip"] != "model":
        o["clip"] = check_clip(o["clip"])
    frac = o.get("shift_fraction", SHIFT_FRACTION)
    if not (
        isinstance(frac, (int, float)) and not isinstance(frac, bool) and 0 < frac <= SHIFT_FRACTION
    ):
        raise ValueError(
            f"shift_fraction must be in (0, {SHIFT_FRACTION:g}] (the bound hosts check), got "
            f"{frac!r}; time_shift=False fits no shift."
        )
    if o.get("features") is not None and objective != "default":
        raise ValueError(
            "features= is the default objective's feature network; with another objective "
            "pass it to that objective (dode.objectives.Objective(features=...))."
        )
    q = o.get("quality_level")
    if q is not None and not (
        isinstance(q, (int, float)) and not isinstance(q, bool) and 0.5 <= float(q) < 1
    ):
        raise ValueError(f"quality_level must be None or in [0.5, 1), got {q!r}.")
    level = o.get("accept_level")
    if level is not None and not (
        isinstance(level, (int, float)) and not isinstance(level, bool) and 0.5 <= float(level) < 1
    ):
        raise ValueError(f"accept_level must be None or in [0.5, 1) (e.g. 0.95), got {level!r}.")
    return o


def warm_start_grid(solver: Solver, sigmas: Tensor | Sequence[float]) -> Tensor:
    """The warm-start grid ``sigmas`` checked for ``solver``: descending, ending in 0."""
    raw = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if raw.numel() and float(raw[-1]) != 0.0:
        raise ValueError(
            f"the warm-start grid must end in 0 (the final sample), got σ[-1] = "
            f"{float(raw[-1]):.6g}; append 0 (the NFE counts the step to 0)."
        )
    grid = explicit(raw)
    solver.check_grid(grid)
    return grid


def sigma_floor(denoiser: Denoiser, sigmas: Tensor) -> float:
    """The smallest σ the learned grid's interior may reach: half the smaller of the model's
    σ_min and the warm start's last nonzero σ."""
    lo = model_sigma_range(denoiser)[0]
    return max(0.5 * min(lo, float(sigmas[-2])), 1e-8)


def zero_nonfinite_grads(params: Iterable[Tensor]) -> None:
    """Set the non-finite entries of the parameters' gradients to 0 before an optimiser step (a
    grid point at the edge of its range can give an infinite derivative on one seed)."""
    for p in params:
        if p.grad is not None:
            p.grad.nan_to_num_(0.0, 0.0, 0.0)


def resolve_clip(clip: tuple[float, float] | str | None, denoiser: Denoiser):
    """The data range to clamp to: ``"model"`` is the model's declared ``data_range`` (``None``
    where it declares none, as latent models do); anything else as :func:`check_clip` takes."""
    return check_clip(getattr(denoiser, "data_range", None) if clip == "model" else clip)


class LearnedSolver(nn.Module):
    """The parameters of the end-to-end solver and the trajectory they define.

    Parameters (each ``None`` where not fitted), all zero-initialised except the logits, which
    start at the warm-start grid, so the first iterate is that cell:

    * ``logits`` ``[N]``: the grid (:func:`~dode.learned_grid.grid_from_logits`);
    * ``lambdas`` ``[K]``: D-ODE's λ per call;
    * ``coefficients`` ``[K, K]``: the history coefficients below the sub-diagonal;
    * ``shift`` ``[K]``: the model-time shift ξ_k (call k feeds the network σ_k · exp(ξ_k)).

    :meth:`current` is the one map from parameters to the solver they stand for; the forward
    pass (:meth:`forward`) runs that solver from noise to the final sample, differentiably.

    Args:
        solver: the base solver (instance or name).
        sigmas: the warm-start grid, descending, ending in 0 (its σ_0 stays fixed).
        sigma_floor: the smallest σ of the grid's interior (:func:`sigma_floor`).
        learn_grid: fit the grid (needs at least two steps).
        coefficients: ``"none"``, ``"lambda"`` or ``"history"``.
        time_shift: fit the per-call model-time shift.
        shift_floor: the lowest σ a shifted call may reach (the model's σ_min).
        shift_fraction: the shift's bound, a fraction of the smallest adjacent log-σ step.
        recompute: recompute each network call's activations in the backward pass
            (:func:`dode.correction.recomputed`): a step holds about one call's activations at
            any NFE, for one extra forward per call.

    The coefficients are ``C·tanh(raw/C)`` and the shift ``u·bound`` on the current grid
    (:mod:`dode.correction`), ``u`` kept in ``[−1, 1]`` (:meth:`project_` after each
    optimiser step; :meth:`current` clamps it too), so every iterate lies inside the bounds
    every host checks.
    """

    def __init__(
        self,
        solver: Solver | str,
        sigmas: Tensor | Sequence[float],
        *,
        sigma_floor: float,
        learn_grid: bool = True,
        coefficients: str = "history",
        time_shift: bool = True,
        shift_floor: float | None = None,
        shift_fraction: float = SHIFT_FRACTION,
        recompute: bool = True,
    ) -> None:
        super().__init__()
        self.recompute = bool(recompute)
        check_options({"shift_fraction": shift_fraction})
        self.shift_floor = shift_floor
        self.shift_fraction = float(shift_fraction)
        check_options({"coefficients": coefficients})
        self.solver = get_solver(solver)
        self.init_sigmas = warm_start_grid(self.solver, sigmas)
        self.num_steps = len(self.init_sigmas) - 1
        self.num_calls = k = self.solver.nfe(self.num_steps)
        self.sigma_max = float(self.init_sigmas[0])
        self.sigma_floor = float(sigma_floor)
        self.coefficient_mode = coefficients
        f64 = torch.float64
        fit_grid = learn_grid and self.num_steps >= 2
        self.logits = (
            nn.Parameter(logits_from_grid(self.init_sigmas, self.sigma_floor)) if fit_grid else None
        )
        self.lambdas = nn.Parameter(torch.zeros(k, dtype=f64)) if coefficients != "none" else None
        self.coefficients = (
            nn.Parameter(torch.zeros(k, k, dtype=f64))
            if coefficients == "history" and k >= 3
            else None
        )
        self.shift = nn.Parameter(torch.zeros(k, dtype=f64)) if time_shift else None
        self.register_buffer("mask", history_mask(k), persistent=False)

    NAMES = ("logits", "lambdas", "coefficients", "shift")

    def current(self, params: dict[str, Tensor] | None = None) -> dict[str, Tensor | None]:
        """The solver the parameters (default: this module's; or a :meth:`snapshot`) stand
        for: ``sigmas``, ``lambdas``, ``coefficients`` (masked) and ``shift``."""
        p = {n: getattr(self, n) for n in self.NAMES} if params is None else params
        logits, lam, coef = p.get("logits"), p.get("lambdas"), p.get("coefficients")
        s = (
            grid_from_logits(logits, self.sigma_max, self.sigma_floor)
            if logits is not None
            else self.init_sigmas
        )
        lam = bounded_coefficients(lam) if lam is not None else None
        if lam is None and coef is not None:
            lam = torch.zeros(self.num_calls, dtype=torch.float64, device=coef.device)
        coef = bounded_coefficients(coef) * self.mask.to(coef.device) if coef is not None else None
        u = p.get("shift")
        xi = None
        if u is not None:
            lo, hi = (b.to(u.device) for b in self.shift_room(s))
            xi = bounded_shift(self._inside(u, lo, hi), lo, hi)
        return {"sigmas": s, "lambdas": lam, "coefficients": coef, "shift": xi}

    def shift_room(self, sigmas: Tensor) -> tuple[Tensor, Tensor]:
        """The shift's bounds ``(lo, hi)`` on the grid ``sigmas``
        (:func:`dode.correction.shift_bounds`, floor :attr:`shift_floor`)."""
        g = sigmas.detach().cpu()
        return shift_bounds(
            call_sigmas(self.solver, g), g, floor=self.shift_floor, fraction=self.shift_fraction
        )

    @staticmethod
    def _inside(u: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """``u`` in ``[−1, 1]``, 0 on a side without room (``hi = 0``: not above; ``lo = 0``:
        not below)."""
        u = u.clamp(-1.0, 1.0)
        u = torch.where(hi > 0, u, u.clamp(max=0.0))
        return torch.where(lo < 0, u, u.clamp(min=0.0))

    @torch.no_grad()
    def project_(self) -> None:
        """Keep the shift's ``u`` inside (:meth:`_inside`) after an optimiser step, so a side
        without room does not hold it where its gradient is 0."""
        if self.shift is not None:
            lo, hi = (b.to(self.shift.device) for b in self.shift_room(self.current()["sigmas"]))
            self.shift.copy_(self._inside(self.shift, lo, hi))

    def forward(
        self, denoiser: Denoiser, noise: Tensor, params: dict[str, Tensor] | None = None
    ) -> Tensor:
        """The final sample of ``denoiser`` from standard-normal ``noise`` (scaled by σ_0
        here), differentiable in the parameters."""
        c = self.current(params)
        s = c["sigmas"]
        corr = DODECorrection(
            model_fn(denoiser, self.solver.consumes, self.recompute), c["lambdas"], False,
            coefficients=c["coefficients"], shift=c["shift"],
        )  # fmt: skip
        sig = list(s.unbind()) if s.requires_grad else s.tolist()
        with warnings.catch_warnings():  # float(σ) of a σ that carries a gradient
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            return self.solver.solve(corr, noise * self.sigma_max, sig, None)

    def fitted_names(self) -> list[str]:
        """The names of the parameters this solver fits."""
        return [n for n in self.NAMES if getattr(self, n) is not None]

    def snapshot(self) -> dict[str, Tensor]:
        """A detached copy of the parameters (an iterate to keep)."""
        return {n: getattr(self, n).detach().clone() for n in self.fitted_names()}

    def param_groups(
        self, lr: float, lr_coefficients: float, lr_shift: float, weight_decay: float = 0.0
    ) -> list[dict[str, Any]]:
        """Adam's parameter groups: the grid logits (``lr``, no decay), λ and the history
        coefficients (``lr_coefficients``), the shift (``lr_shift``); decay on the last two."""
        groups = []
        if self.logits is not None:
            groups.append({"params": [self.logits], "lr": lr, "weight_decay": 0.0})
        coef = [p for p in (self.lambdas, self.coefficients) if p is not None]
        if coef:
            groups.append({"params": coef, "lr": lr_coefficients, "weight_decay": weight_decay})
        if self.shift is not None:
            groups.append({"params": [self.shift], "lr": lr_shift, "weight_decay": weight_decay})
        return groups

    @torch.no_grad()
    def solver_file(
        self, params: dict[str, Tensor] | None = None, model: dict | None = None
    ) -> FittedSolver:
        """The fitted-solver file of the parameters (default: the current ones)."""
        c = {k: (None if v is None else v.detach().cpu()) for k, v in self.current(params).items()}
        return FittedSolver(
            solver=self.solver.config(),
            sigmas=explicit(c["sigmas"]),
            lambdas=(
                c["lambdas"].clone()
                if c["lambdas"] is not None
                else torch.zeros(self.num_calls, dtype=torch.float64)
            ),
            coefficients=None if c["coefficients"] is None else c["coefficients"].clone(),
            shift=None if c["shift"] is None else c["shift"].clone(),
            model=model,
        )

    def warm_start_file(self, model: dict | None = None) -> FittedSolver:
        """The warm-start cell as a file: its grid, λ = 0."""
        return FittedSolver(
            solver=self.solver.config(),
            sigmas=self.init_sigmas,
            lambdas=torch.zeros(self.num_calls, dtype=torch.float64),
            model=model,
        )


def fit_loss(
    samples: Tensor,
    reference: Tensor,
    objective: str | Callable[[Tensor, Tensor], Tensor] = "l2",
    clip: tuple[float, float] | None = None,
) -> Tensor:
    """The fit's distance of ``samples`` to ``reference`` (both clamped to ``clip``): the mean
    over the batch (``"l2"``: MSE, ``"l1"``), or the callable ``objective``'s scalar."""
    return _distance(samples, reference, objective, clip)


def minibatch_order(num_seeds: int, batch_size: int | None, seed: int):
    """The fit seeds' indices of each Adam step, in order: a fresh random permutation's first
    ``batch_size`` per step from a generator seeded with ``seed``; ``batch_size=None``: every
    seed, in order, each step. An endless iterator of index tensors."""
    gen = torch.Generator().manual_seed(int(seed))
    while True:
        if batch_size:
            yield torch.randperm(num_seeds, generator=gen)[:batch_size]
        else:
            yield torch.arange(num_seeds)


def selection_errors(
    run: Callable[[Denoiser, Tensor], Tensor],
    denoiser: Denoiser,
    noise: Tensor,
    reference: Tensor,
    batch_size: int | None,
    clip: tuple[float, float] | None = None,
    keep: list[Tensor] | None = None,
) -> Tensor:
    """Per-seed MSE ``[B]`` (float64) of ``run(denoiser_rows, noise_chunk)`` to ``reference``
    (both clamped to ``clip`` where given), over batches of ``batch_size`` seeds (default:
    all at once), without gradients: the selection MSE's terms (the samples appended to
    ``keep`` where given, for the quality watch)."""
    with torch.no_grad():
        return _per_seed_mse(run, denoiser, noise, reference, batch_size, clip, keep)


def conclude(
    learned: LearnedSolver,
    candidate: FittedSolver,
    base_errors: Tensor,
    fit_errors: Tensor | None,
    *,
    best_step: int,
    accept_level: float | None,
    seed: int,
    record: dict[str, Any],
    model: dict | None = None,
    quality: tuple[float, float, float] | None = None,
) -> FittedSolver:
    """The paired-bootstrap acceptance and the result of an end-to-end fit.

    Args:
        learned: the fitted solver's parameters (its warm start is the fallback).
        candidate: the kept iterate's file (:meth:`LearnedSolver.solver_file` of the best
            snapshot).
        base_errors: the warm-start cell's per-seed selection MSE (:func:`dode.sample`).
        fit_errors: the candidate's, through its own sampling path (``None``: it failed).
        best_step: the kept iterate's step (0: the start, never accepted).
        accept_level: see :func:`fit_end_to_end`.
        seed: the bootstrap's seed.
        record: the rest of the record (settings, history).
        model: the solver file's model record.
        quality: ``(base, limit, fitted)`` of the quality watch (:func:`fit_end_to_end`'s
            ``quality_level``): accepted only if ``fitted <= limit``; ``None``: not watched.

    Returns:
        ``candidate`` if accepted, else the warm-start cell; ``metrics["end_to_end"]`` the record.
    """
    base_select = float(base_errors.mean())
    if fit_errors is None:
        fit_select, change, bound = math.inf, math.inf, math.inf
    else:
        fit_select = float(fit_errors.mean())
        change, bound = paired_improvement(
            base_errors, fit_errors, level=accept_level or 0.95, seed=seed
        )
    fit_select = fit_select if math.isfinite(fit_select) else math.inf
    # the start is the given cell (its grid up to rounding in the logits): never "accept" it
    accepted = best_step > 0 and fit_select < base_select
    if accept_level is not None:
        accepted = accepted and bound < 0
    if quality is not None:
        accepted = accepted and quality[2] <= quality[1]
    rec: dict[str, Any] = {
        "method": "end_to_end",
        "accepted": bool(accepted),
        "select_mse_base": base_select,
        "select_mse": fit_select if accepted else base_select,
        "select_mse_fitted": fit_select,
        "select_change": change,
        "select_change_bound": bound,
        "accept_level": accept_level,
        "learn_grid": learned.logits is not None,
        "coefficients": learned.coefficient_mode,
        "time_shift": learned.shift is not None,
        "best_step": best_step,
        "init_sigmas": learned.init_sigmas.tolist(),
        "sigma_floor": learned.sigma_floor,
        "coefficient_bound": COEFFICIENT_BOUND,
        "shift_fraction": learned.shift_fraction,
        "recompute": learned.recompute,
        "select_quality_base": None if quality is None else quality[0],
        "select_quality_limit": None if quality is None else quality[1],
        "select_quality_fitted": None if quality is None else quality[2],
        **record,
    }
    fitted = candidate if accepted else learned.warm_start_file(model)
    fitted.metrics = {"end_to_end": rec}
    return fitted


def fit_end_to_end(
    denoiser: Denoiser,
    solver: Solver | str,
    sigmas: Tensor | Sequence[float],
    noise: Tensor,
    reference: Tensor,
    *,
    select_noise: Tensor,
    select_reference: Tensor,
    select_denoiser: Denoiser | None = None,
    steps: int = 100,
    lr: float = 0.02,
    lr_coefficients: float = 0.02,
    lr_shift: float = 0.005,
    learn_grid: bool = True,
    coefficients: str = "history",
    time_shift: bool = True,
    weight_decay: float = 0.0,
    objective: str | Callable[[Tensor, Tensor], Tensor] = "default",
    eval_every: int = 2,
    patience: int | None = None,
    batch_size: int | None = None,
    select_batch_size: int | None = None,
    clip: tuple[float, float] | str | None = None,
    accept_level: float | None = 0.95,
    seed: int = 0,
    features: Callable[[Tensor], Tensor] | None = None,
    quality_level: float | None = 0.95,
    shift_fraction: float = SHIFT_FRACTION,
    recompute: bool = True,
) -> FittedSolver:
    """Fit the grid, coefficients and model-time shift of ``solver`` end to end.

    Args:
        denoiser: the (frozen) model.
        solver: the base solver (instance or name).
        sigmas: the warm-start grid (the best standard cell's), descending, ending in 0; its
            σ_0 stays fixed (it should be the model's σ_max).
        noise: standard-normal fit noise ``[B, ...]`` (scaled by σ_0 inside, as
            :func:`dode.sample` does).
        reference: the converged final samples from ``noise``
            (:func:`dode.standard_grids.reference_solution`).
        select_noise, select_reference: the same for the selection seeds (seeds used nowhere
            else): they pick the iterate and decide acceptance.
        select_denoiser: the model for the selection seeds where it differs from
            ``denoiser`` (a conditional model bound to the selection seeds' labels); a bound
            model is sliced to each mini-batch's rows.
        steps: Adam iterations.
        lr: learning rate of the grid logits.
        lr_coefficients: learning rate of λ and the history coefficients.
        lr_shift: learning rate of the model-time shift ξ.
        learn_grid: fit the grid (else it stays the warm start's).
        coefficients: ``"none"``, ``"lambda"`` or ``"history"`` (see the module docstring).
        time_shift: fit the per-call model-time shift.
        weight_decay: L2 penalty (Adam's ``weight_decay``) on the coefficients and the shift.
        objective: the fit's distance to the reference: ``"default"``
            (:func:`dode.objectives.default_objective`: L2 plus the batch-statistics terms
            that keep the samples as sharp as the reference's, with ``features``' Fréchet
            distance where given), ``"l2"`` (MSE), ``"l1"``, or a callable ``(samples,
            reference) -> scalar loss`` on the batch (both float64, clamped to ``clip``; a
            :class:`dode.objectives.Objective`; its name goes in the record). Selection and
            acceptance use the MSE, and the objective's ``quality`` where it has one.
        eval_every: evaluate the selection MSE every this many steps (and at the end).
        patience: stop after this many evaluations without a better selection MSE
            (``None``: run all ``steps``).
        batch_size: fit seeds per Adam step (random mini-batches from ``seed``; default: all,
            full batch).
        select_batch_size: seeds per batch of the selection evaluations (no gradients, so
            larger batches than ``batch_size`` fit in memory and run faster); default:
            ``batch_size``.
        clip: the data range ``(low, high)`` (``(-1, 1)`` for pixel images): the objective and
            the selection MSE compare samples and references clamped to it, as an image shows
            them (a converged reference can leave the data range on rare seeds, by a margin
            that then dominates an unclamped mean). ``None``: no clamping (latents).
            ``"model"``: the model's declared ``data_range`` (``None`` where it declares none).
        accept_level: accept the fit only if a paired bootstrap over the selection seeds puts
            the one-sided ``accept_level`` upper bound of the per-seed MSE change below 0
            (:func:`paired_improvement`); ``None``: accept any lower selection MSE.
        seed: the mini-batch order.
        features: the feature-network hook of the default objective, ``fn(samples) -> [B, F]``
            differentiable in the samples (:func:`dode.digits.classifier.feature_hook` for the
            digits models; for images a perceptual network of your own).
        quality_level: with an objective that has a ``quality(samples, reference, idx=None)``
            (:class:`dode.objectives.Objective`), an iterate is kept (early stopping) and the
            fit accepted only if its quality on the selection seeds does not exceed the
            warm-start cell's by more than the upper end of that cell's bootstrap interval at
            this level (:func:`quality_limit`); ``None``: the MSE alone decides.
        shift_fraction: the shift's bound as a fraction of the smallest adjacent log-σ step
            (at most :data:`dode.correction.SHIFT_FRACTION`, the bound every host checks).
        recompute: recompute each network call's activations in the backward pass
            (:func:`dode.correction.recomputed`), so a step's memory is about one call's
            activations at any NFE, for one extra forward per call; ``False`` keeps them all.

    Returns:
        A :class:`~dode.files.solver_file.FittedSolver` whose ``metrics["end_to_end"]`` records
        ``accepted``, ``select_mse_base`` / ``select_mse`` (before/after, the returned solver's),
        ``select_change_bound`` (the paired bound acceptance tested),
        the steps, seconds and what was fitted. Not accepted: the warm-start cell, λ = 0, no
        coefficients or shift.
    """
    t0 = time.perf_counter()
    denoiser = _check_denoiser(denoiser)
    solver = get_solver(solver)
    opts = check_options(
        dict(
            steps=steps, lr=lr, lr_coefficients=lr_coefficients, lr_shift=lr_shift,
            learn_grid=learn_grid, coefficients=coefficients, time_shift=time_shift,
            weight_decay=weight_decay, objective=objective, eval_every=eval_every,
            patience=patience, batch_size=batch_size, select_batch_size=select_batch_size,
            clip=clip, accept_level=accept_level, seed=seed, features=features,
            quality_level=quality_level, shift_fraction=shift_fraction, recompute=recompute,
        )
    )  # fmt: skip
    if objective == "default":
        objective = default_objective(features)
    watch = getattr(objective, "quality", None) if quality_level is not None else None
    clip = resolve_clip(opts["clip"], denoiser)
    eval_batch = select_batch_size or batch_size
    grid = warm_start_grid(solver, sigmas)
    _check_pair(denoiser, noise, reference, "fit")
    sel_den = denoiser if select_denoiser is None else _check_denoiser(select_denoiser)
    _check_pair(sel_den, select_noise, select_reference, "selection")
    learned = LearnedSolver(
        solver, grid, sigma_floor=sigma_floor(denoiser, grid), learn_grid=learn_grid,
        coefficients=coefficients, time_shift=time_shift,
        shift_floor=model_sigma_range(denoiser)[0], shift_fraction=shift_fraction,
        recompute=recompute,
    )  # fmt: skip
    ref = reference.to(torch.float64)
    sel_ref = clipped(select_reference, clip)

    def quality(xs: list[Tensor]) -> float:
        return float(watch(clipped(torch.cat(xs), clip), sel_ref)) if watch else 0.0

    def select_mse(p: dict[str, Tensor] | None = None) -> tuple[float, float]:
        xs: list[Tensor] = []
        v = selection_errors(
            lambda d, z: learned(d, z, p), sel_den, select_noise, select_reference,
            eval_batch, clip, xs,
        )  # fmt: skip
        return float(v.mean()), quality(xs)

    # the warm-start cell through the public sampling path
    base_x: list[Tensor] = []
    base_errors = selection_errors(
        lambda d, z: sample(d, solver, z, grid), sel_den, select_noise, select_reference,
        eval_batch, clip, base_x,
    )  # fmt: skip
    q_base, q_limit = (
        quality_limit(watch, clipped(torch.cat(base_x), clip), sel_ref, quality_level, seed)
        if watch
        else (0.0, math.inf)
    )
    qcurve: list[tuple[int, float]] = []
    losses: list[float] = []
    curve: list[tuple[int, float]] = []
    best = (math.inf, learned.snapshot(), 0)  # (selection MSE, parameters, step)
    stop = "steps"
    if learned.fitted_names() and steps > 0:
        opt = torch.optim.Adam(learned.param_groups(lr, lr_coefficients, lr_shift, weight_decay))
        order = minibatch_order(noise.shape[0], batch_size, seed)
        since = 0
        for step in range(steps + 1):
            if step % eval_every == 0 or step == steps:
                try:
                    v, q = select_mse()
                except ValueError:
                    v, q = math.inf, math.inf
                curve.append((step, v))
                qcurve.append((step, q))
                if v < best[0] and q <= q_limit:
                    best, since = (v, learned.snapshot(), step), 0
                else:
                    since += 1
                if patience is not None and since > patience:
                    stop = "patience"
                    break
            if step == steps:
                break
            idx = next(order) if batch_size else None
            if idx is None:
                d, z, r = denoiser, noise, ref
            else:
                d, z, r = rows(denoiser, idx), noise[idx], ref[idx]
            opt.zero_grad()
            try:
                loss = fit_loss(learned(d, z), r, objective, clip)
            except ValueError:
                stop = "non-finite model output"
                break
            lv = float(loss.detach())
            losses.append(lv)
            if not math.isfinite(lv):
                stop = "non-finite loss"
                break
            loss.backward()
            zero_nonfinite_grads(learned.parameters())
            opt.step()
            learned.project_()
    model = _model_record(denoiser)
    candidate = learned.solver_file(best[1], model=model)
    fit_x: list[Tensor] = []
    try:
        fit_errors = selection_errors(
            lambda d, z: candidate.sample(d, z), sel_den, select_noise, select_reference,
            eval_batch, clip, fit_x,
        )  # fmt: skip
        q_fit = quality(fit_x)
    except ValueError:
        fit_errors, q_fit = None, math.inf
    record = {
        "clip": None if clip is None else list(clip),
        "objective": _objective_name(objective),
        "steps": steps,
        "steps_run": len(losses),
        "stop": stop,
        "lr": lr,
        "lr_coefficients": lr_coefficients,
        "lr_shift": lr_shift,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "select_batch_size": eval_batch,
        "seed": seed,
        "recompute": bool(recompute),
        "num_fit_seeds": int(noise.shape[0]),
        "num_select_seeds": int(select_noise.shape[0]),
        "losses": losses,
        "select_curve": curve,
        "quality_level": quality_level if watch else None,
        "quality_curve": qcurve if watch else [],
    }
    fitted = conclude(
        learned, candidate, base_errors, fit_errors, best_step=best[2],
        accept_level=accept_level, seed=seed, record=record, model=model,
        quality=(q_base, q_limit, q_fit) if watch else None,
    )  # fmt: skip
    fitted.metrics["end_to_end"]["seconds"] = time.perf_counter() - t0
    return fitted


def _model_record(denoiser: Denoiser) -> dict[str, Any]:
    out: dict[str, Any] = {"class": type(denoiser).__name__}
    mid = getattr(denoiser, "model_id", None)
    if mid:
        out["id"] = mid
    return out
