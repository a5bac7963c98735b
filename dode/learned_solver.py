"""The end-to-end learned solver: grid, history coefficients and model-time shift fitted jointly.

:func:`fit_end_to_end` starts at a given (solver, grid) cell, the best standard one, and
fits by Adam, backpropagating through the whole trajectory (network, solver, correction), the
distance of the final sample to a converged reference from the same noise, on fit seeds only:

* the **grid** (``learn_grid``): :func:`dode.grids.learned.grid_from_logits` keeps σ_0 (the
  warm start's first σ, the model's σ_max) and the final 0, and the interior strictly
  descending for any logits;
* the **coefficients** (``coefficients``): ``"none"``; ``"lambda"``, D-ODE's one λ per call,
  ``õ_k = o_k + λ_k (o_k − o_{k−1})``; ``"history"``, coefficients on the whole history of raw
  model outputs, ``õ_k = o_k + Σ_{j<k} c_kj (o_k − o_j)`` (λ_k = c_k,k−1 is the one-term case;
  the file keeps λ and the rest, :class:`~dode.correction.DODECorrection`);
* the **model-time shift** (``time_shift``): call k feeds the network ``σ_k · exp(ξ_k)``
  while the solver integrates with σ_k.

Everything starts at zero, so the first iterate is exactly the given cell. The iterate kept is
the one with the smallest MSE on separate selection seeds (early stopping), and it is accepted
only if it improves the selection seeds' MSE over the given cell, through the very sampling
path of :func:`dode.sample`; otherwise the given cell comes back unchanged (λ = 0), and the
record says so. So the result is never worse than the given cell on the selection seeds by
construction.

The result is a :class:`~dode.files.solver_file.FittedSolver` (grid, λ, coefficients, shift and the
record in ``metrics["end_to_end"]``); :meth:`~dode.files.solver_file.FittedSolver.sample`,
:func:`dode.sample` and :func:`dode.evaluate` run it with the arithmetic the fit optimised.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .correction import DODECorrection, model_fn
from .denoisers import Denoiser
from .evaluation.metrics import bootstrap_means, check_clip, clipped, per_seed_mse
from .files.solver_file import FittedSolver
from .grids.learned import grid_from_logits, logits_from_grid
from .grids.schedules import explicit
from .grids.standard import model_sigma_range
from .sampling import _check_batch, _check_denoiser, sample
from .solvers import Solver, get_solver

__all__ = ["COEFFICIENTS", "OBJECTIVES", "fit_end_to_end", "history_mask", "paired_improvement"]

COEFFICIENTS = ("none", "lambda", "history")
OBJECTIVES = ("l2", "l1")


def history_mask(num_calls: int) -> Tensor:
    """``[K, K]`` float64 mask of the history coefficients the file stores besides λ: 1 where
    ``j < k − 1`` (the sub-diagonal is λ)."""
    return torch.tril(torch.ones(num_calls, num_calls, dtype=torch.float64), diagonal=-2)


def _distance(x: Tensor, ref: Tensor, objective, clip: tuple[float, float] | None) -> Tensor:
    x, ref = clipped(x, clip), clipped(ref, clip)
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
            "dode.grids.reference_solution(denoiser, noise))."
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


def _rows(denoiser: Denoiser, index) -> Denoiser:
    """The denoiser for those rows of the batch: a bound (conditional) denoiser sliced
    (``bound[index]``), any other as it is."""
    return denoiser[index] if callable(getattr(denoiser, "__getitem__", None)) else denoiser


def _per_seed_mse(
    run, denoiser, noise: Tensor, ref: Tensor, batch_size: int | None, clip=None
) -> Tensor:
    """Per-seed MSE ``[B]`` (float64) of ``run(denoiser_rows, noise_chunk)`` to ``ref``, both
    clamped to ``clip`` where given, over batches of ``batch_size`` seeds (default: one)."""
    step = batch_size or noise.shape[0]
    out = []
    for i in range(0, noise.shape[0], step):
        j = min(i + step, noise.shape[0])
        den = denoiser if (i, j) == (0, noise.shape[0]) else _rows(denoiser, slice(i, j))
        out.append(per_seed_mse(run(den, noise[i:j]), ref[i:j], clip))
    return torch.cat(out)


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
    objective: str | Callable[[Tensor, Tensor], Tensor] = "l2",
    eval_every: int = 2,
    patience: int | None = None,
    batch_size: int | None = None,
    select_batch_size: int | None = None,
    clip: tuple[float, float] | str | None = None,
    accept_level: float | None = 0.95,
    seed: int = 0,
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
            (:func:`dode.grids.reference_solution`).
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
        objective: the fit's distance to the reference: ``"l2"`` (MSE), ``"l1"``, or a
            callable ``(samples, reference) -> scalar loss`` on the batch (both float64, clamped
            to ``clip``; e.g. MSE plus a feature distance; its name goes in the record).
            Selection and acceptance always use the MSE.
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
    if coefficients not in COEFFICIENTS:
        raise ValueError(
            f"unknown coefficients {coefficients!r}; use one of {', '.join(COEFFICIENTS)}."
        )
    if not callable(objective) and objective not in OBJECTIVES:
        raise ValueError(
            f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)} or a callable "
            "(samples, reference) -> scalar loss."
        )
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}.")
    if not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be an integer >= 1, got {eval_every!r}.")
    for name, v in (("lr", lr), ("lr_coefficients", lr_coefficients), ("lr_shift", lr_shift)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}.")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
    if select_batch_size is not None and (
        not isinstance(select_batch_size, int) or select_batch_size < 1
    ):
        raise ValueError(
            f"select_batch_size must be a positive integer or None, got {select_batch_size!r}."
        )
    eval_batch = select_batch_size or batch_size
    clip = check_clip(getattr(denoiser, "data_range", None) if clip == "model" else clip)
    if accept_level is not None and not (0.5 <= float(accept_level) < 1):
        raise ValueError(
            f"accept_level must be None or in [0.5, 1) (e.g. 0.95), got {accept_level!r}."
        )
    raw = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if raw.numel() and float(raw[-1]) != 0.0:
        raise ValueError(
            f"the warm-start grid must end in 0 (the final sample), got σ[-1] = "
            f"{float(raw[-1]):.6g}; append 0 (the NFE counts the step to 0)."
        )
    grid = explicit(raw)
    solver.check_grid(grid)
    _check_pair(denoiser, noise, reference, "fit")
    sel_den = denoiser if select_denoiser is None else _check_denoiser(select_denoiser)
    _check_pair(sel_den, select_noise, select_reference, "selection")
    num_steps = len(grid) - 1
    k_calls = solver.nfe(num_steps)
    sigma_max = float(grid[0])
    lo = model_sigma_range(denoiser)[0]
    floor = max(0.5 * min(lo, float(grid[-2])), 1e-8)
    ref = reference.to(torch.float64)

    params: dict[str, nn.Parameter] = {}
    if learn_grid and num_steps >= 2:
        params["logits"] = nn.Parameter(logits_from_grid(grid, floor))
    if coefficients in ("lambda", "history"):
        params["lambdas"] = nn.Parameter(torch.zeros(k_calls, dtype=torch.float64))
    mask = history_mask(k_calls)
    if coefficients == "history" and k_calls >= 3:
        params["coefficients"] = nn.Parameter(torch.zeros(k_calls, k_calls, dtype=torch.float64))
    if time_shift:
        params["shift"] = nn.Parameter(torch.zeros(k_calls, dtype=torch.float64))

    def current(p: dict[str, Tensor]) -> dict[str, Any]:
        """The solver the parameters ``p`` stand for: grid, λ, coefficients, shift."""
        s = grid_from_logits(p["logits"], sigma_max, floor) if "logits" in p else grid
        lam = p.get("lambdas")
        if lam is None and "coefficients" in p:
            lam = torch.zeros(k_calls, dtype=torch.float64)
        coef = p["coefficients"] * mask if "coefficients" in p else None
        return {"sigmas": s, "lambdas": lam, "coefficients": coef, "shift": p.get("shift")}

    def run(p: dict[str, Tensor], den: Denoiser, z: Tensor) -> Tensor:
        """The final sample of ``den`` from noise ``z`` (differentiable in ``p``)."""
        c = current(p)
        s = c["sigmas"]
        corr = DODECorrection(
            model_fn(den, solver.consumes, recompute), c["lambdas"], False,
            coefficients=c["coefficients"], shift=c["shift"],
        )  # fmt: skip
        sig = list(s.unbind()) if s.requires_grad else s.tolist()
        return solver.solve(corr, z * sigma_max, sig, None)

    @torch.no_grad()
    def select_mse(p: dict[str, Tensor]) -> float:
        return float(
            _per_seed_mse(
                lambda d, z: run(p, d, z), sel_den, select_noise, select_reference,
                eval_batch, clip,
            ).mean()
        )  # fmt: skip

    def snapshot() -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in params.items()}

    # the warm-start cell through the public sampling path
    with torch.no_grad():
        base_per_seed = _per_seed_mse(
            lambda d, z: sample(d, solver, z, grid), sel_den, select_noise, select_reference,
            eval_batch, clip,
        )  # fmt: skip
    base_select = float(base_per_seed.mean())
    losses: list[float] = []
    curve: list[tuple[int, float]] = []
    best = (math.inf, snapshot(), 0)  # (selection MSE, parameters, step)
    stop = "steps"
    if params and steps > 0:
        groups = []
        if "logits" in params:
            groups.append({"params": [params["logits"]], "lr": lr, "weight_decay": 0.0})
        coef = [params[k] for k in ("lambdas", "coefficients") if k in params]
        if coef:
            groups.append({"params": coef, "lr": lr_coefficients, "weight_decay": weight_decay})
        if "shift" in params:
            groups.append(
                {"params": [params["shift"]], "lr": lr_shift, "weight_decay": weight_decay}
            )
        opt = torch.optim.Adam(groups)
        gen = torch.Generator().manual_seed(int(seed))
        n = noise.shape[0]
        since = 0
        with warnings.catch_warnings():  # float(σ) of a σ that carries a gradient
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            for step in range(steps + 1):
                if step % eval_every == 0 or step == steps:
                    try:
                        v = select_mse(params)
                    except ValueError:
                        v = math.inf
                    curve.append((step, v))
                    if v < best[0]:
                        best, since = (v, snapshot(), step), 0
                    else:
                        since += 1
                    if patience is not None and since > patience:
                        stop = "patience"
                        break
                if step == steps:
                    break
                idx = torch.randperm(n, generator=gen)[:batch_size] if batch_size else None
                if idx is None:
                    d, z, r = denoiser, noise, ref
                else:
                    d, z, r = _rows(denoiser, idx), noise[idx], ref[idx]
                opt.zero_grad()
                try:
                    loss = _distance(run(params, d, z), r, objective, clip)
                except ValueError:
                    stop = "non-finite model output"
                    break
                lv = float(loss)
                losses.append(lv)
                if not math.isfinite(lv):
                    stop = "non-finite loss"
                    break
                loss.backward()
                for prm in params.values():
                    if prm.grad is not None:
                        prm.grad.nan_to_num_(0.0, 0.0, 0.0)
                opt.step()
    with torch.no_grad():
        c = current(best[1])
        fitted = FittedSolver(
            solver=solver.config(),
            sigmas=explicit(c["sigmas"]),
            lambdas=(
                c["lambdas"].detach().clone()
                if c["lambdas"] is not None
                else torch.zeros(k_calls, dtype=torch.float64)
            ),
            coefficients=None if c["coefficients"] is None else c["coefficients"].clone(),
            shift=None if c["shift"] is None else c["shift"].clone(),
            model=_model_record(denoiser),
        )
        try:
            fit_per_seed = _per_seed_mse(
                lambda d, z: fitted.sample(d, z), sel_den, select_noise, select_reference,
                eval_batch, clip,
            )  # fmt: skip
            fit_select = float(fit_per_seed.mean())
            change, bound = paired_improvement(
                base_per_seed, fit_per_seed, level=accept_level or 0.95, seed=seed
            )
        except ValueError:
            fit_select, change, bound = math.inf, math.inf, math.inf
    fit_select = fit_select if math.isfinite(fit_select) else math.inf
    # the start is the given cell (its grid up to rounding in the logits): never "accept" it
    accepted = best[2] > 0 and fit_select < base_select
    if accept_level is not None:
        accepted = accepted and bound < 0
    record: dict[str, Any] = {
        "method": "end_to_end",
        "accepted": bool(accepted),
        "select_mse_base": base_select,
        "select_mse": fit_select if accepted else base_select,
        "select_mse_fitted": fit_select,
        "select_change": change,
        "select_change_bound": bound,
        "accept_level": accept_level,
        "clip": None if clip is None else list(clip),
        "learn_grid": bool("logits" in params),
        "coefficients": coefficients,
        "time_shift": bool(time_shift),
        "objective": _objective_name(objective),
        "steps": steps,
        "steps_run": len(losses),
        "best_step": best[2],
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
        "init_sigmas": grid.tolist(),
        "sigma_floor": floor,
        "losses": losses,
        "select_curve": curve,
        "seconds": time.perf_counter() - t0,
    }
    if not accepted:
        fitted = FittedSolver(
            solver=solver.config(),
            sigmas=grid,
            lambdas=torch.zeros(k_calls, dtype=torch.float64),
            model=_model_record(denoiser),
        )
    fitted.metrics = {"end_to_end": record}
    return fitted


def _model_record(denoiser: Denoiser) -> dict[str, Any]:
    out: dict[str, Any] = {"class": type(denoiser).__name__}
    mid = getattr(denoiser, "model_id", None)
    if mid:
        out["id"] = mid
    return out
