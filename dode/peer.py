"""The peer row of every frontier: an LD3-style learned discretisation, written from the paper.

LD3 (Tong et al., "Learning to Discretize Denoising Diffusion ODEs", ICLR 2025) learns the
N-step time grid of a given solver from a few hundred seeds, as we read the paper:

* the **grid** is learned in log-SNR (``λ = −2 log σ``): positive steps from a softmax, so the
  grid stays strictly monotone and keeps its end points (here
  :func:`dode.learned_grid.grid_from_logits`: the steps of ``log σ`` from σ_0 down to a floor,
  one softmax; uniform in log σ is uniform in log-SNR);
* the **model times are decoupled** from the integration times: call k evaluates the network at
  a time offset from the solver's, the offset bounded by a fraction (one half) of the smallest
  neighbouring step (here the one definition of that bound, :func:`dode.correction.shift_bounds`
  and :func:`dode.correction.bounded_shift`: additive in log σ, i.e. in log-SNR);
* **no coefficients** on past model outputs: the solver itself, on the learned times;
* the **loss** is a perceptual distance (LPIPS) between the student's final sample and the
  teacher's from the same noise; here LPIPS-like: the squared distance of the unit-normalised
  features of a frozen network the user plugs in (``features``: the digits classifier for the
  digits models, a perceptual trunk for images), L2 without one. The paper's optional slack
  (a ball around the starting noise) is left out: on the digits models it changed nothing
  measurable;
* the **optimiser** is RMSprop with momentum, and the learning rate decays when the loss on
  held-aside validation seeds stops improving (after ``patience`` evaluations, by ``decay``,
  down to ``min_lr``); the iterate with the best validation loss is kept.

Unlike the paper's cold start from a log-SNR-uniform grid, :func:`fit_peer` is warm-started at
the given (best standard) cell, as dode's own end-to-end fit is, so both are judged from the
same start on the same seeds. It is a peer to compare with, not dode's method.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .correction import DODECorrection, bounded_shift, call_sigmas, model_fn, shift_bounds
from .denoisers import Denoiser
from .files.solver_file import FittedSolver
from .grids.schedules import explicit
from .learned_grid import grid_from_logits, logits_from_grid
from .learned_solver import zero_nonfinite_grads
from .metrics import check_clip, clipped
from .solvers import Solver, get_solver
from .standard_grids import model_sigma_range

__all__ = ["fit_peer", "perceptual_distance"]


def perceptual_distance(
    x: Tensor, ref: Tensor, features: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """Per-sample LPIPS-like distance ``[B]``: ``‖f(x)/‖f(x)‖ − f(ref)/‖f(ref)‖‖²`` of the
    feature hook ``f`` (unit-normalised features, as LPIPS normalises its activations), or the
    per-sample MSE without features."""
    if features is None:
        return (x.to(torch.float64) - ref.to(torch.float64)).pow(2).flatten(1).mean(1)
    fa, fb = features(x).flatten(1), features(ref).flatten(1)
    fa = fa / fa.norm(dim=1, keepdim=True).clamp_min(1e-12)
    fb = fb / fb.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (fa - fb).pow(2).sum(1)


def fit_peer(
    denoiser: Denoiser,
    solver: Solver | str,
    sigmas: Tensor | Sequence[float],
    noise: Tensor,
    reference: Tensor,
    *,
    select_noise: Tensor,
    select_reference: Tensor,
    select_denoiser: Denoiser | None = None,
    features: Callable[[Tensor], Tensor] | None = None,
    steps: int = 100,
    lr: float = 0.002,
    momentum: float = 0.9,
    decay: float = 0.5,
    patience: int = 2,
    min_lr: float = 1e-4,
    eval_every: int = 2,
    batch_size: int | None = None,
    clip: tuple[float, float] | None = None,
    seed: int = 0,
) -> FittedSolver:
    """Fit the LD3-style peer (module docstring) warm-started at ``(solver, sigmas)``.

    Args:
        denoiser, solver, sigmas, noise, reference, select_noise, select_reference,
            select_denoiser, batch_size, clip, seed: as :func:`dode.learned_solver.fit_end_to_end`
            (the selection seeds are LD3's validation seeds).
        features: the perceptual feature hook ``f(samples) -> [B, F]`` (differentiable);
            ``None``: L2.
        steps: RMSprop iterations.
        lr, momentum: RMSprop's (one rate for the grid and the model-time offsets).
        decay, patience, min_lr: the validation-driven decay: ``lr ← lr · decay`` after
            ``patience`` evaluations without a lower validation loss, stopping below ``min_lr``.
        eval_every: evaluate the validation loss every this many steps.

    Returns:
        A :class:`~dode.files.solver_file.FittedSolver` (grid, λ = 0, model-time shift; no
        history coefficients) with the record in ``metrics["peer"]``: the validation curve,
        the learning-rate decays, the best step.
    """
    t0 = time.perf_counter()
    solver = get_solver(solver)
    clip = check_clip(clip)
    grid = explicit(torch.as_tensor(sigmas, dtype=torch.float64))
    solver.check_grid(grid)
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}.")
    for name, v in (("lr", lr), ("min_lr", min_lr)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}.")
    if not (0 < decay < 1) or not (0 <= momentum < 1):
        raise ValueError(f"need 0 < decay < 1 and 0 <= momentum < 1, got {decay!r}, {momentum!r}.")
    sel_den = denoiser if select_denoiser is None else select_denoiser
    num_steps = len(grid) - 1
    k_calls = solver.nfe(num_steps)
    sigma_max = float(grid[0])
    lo = model_sigma_range(denoiser)[0]
    floor = max(0.5 * min(lo, float(grid[-2])), 1e-8)
    ref = clipped(reference, clip)
    sel_ref = clipped(select_reference, clip)
    params = {"shift": nn.Parameter(torch.zeros(k_calls, dtype=torch.float64))}
    if num_steps >= 2:
        params["logits"] = nn.Parameter(logits_from_grid(grid, floor))

    def current(p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        s = grid_from_logits(p["logits"], sigma_max, floor) if "logits" in p else grid
        g = s.detach()
        b_lo, b_hi = shift_bounds(call_sigmas(solver, g), g, floor=lo)
        return s, bounded_shift(p["shift"], b_lo, b_hi)

    def run(p: dict[str, Tensor], den: Denoiser, z: Tensor) -> Tensor:
        s, xi = current(p)
        corr = DODECorrection(model_fn(den, solver.consumes), None, False, shift=xi)
        sig = list(s.unbind()) if s.requires_grad else s.tolist()
        return clipped(solver.solve(corr, z * sigma_max, sig, None), clip)

    @torch.no_grad()
    def validation(p: dict[str, Tensor]) -> float:
        try:
            x = run(p, sel_den, select_noise)
        except ValueError:
            return math.inf
        v = float(perceptual_distance(x, sel_ref, features).mean())
        return v if math.isfinite(v) else math.inf

    def rows(den, idx):
        return den[idx] if callable(getattr(den, "__getitem__", None)) else den

    opt = torch.optim.RMSprop(list(params.values()), lr=lr, momentum=momentum)
    gen = torch.Generator().manual_seed(int(seed))
    best = (math.inf, {k: v.detach().clone() for k, v in params.items()}, 0)
    curve: list[tuple[int, float]] = []
    decays: list[int] = []
    since, stop, ran = 0, "steps", 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
        for step in range(steps + 1):
            if step % eval_every == 0 or step == steps:
                v = validation(params)
                curve.append((step, v))
                if v < best[0]:
                    best, since = (v, {k: t.detach().clone() for k, t in params.items()}, step), 0
                else:
                    since += 1
                    if since >= patience:
                        since = 0
                        for group in opt.param_groups:
                            group["lr"] *= decay
                        decays.append(step)
                        if opt.param_groups[0]["lr"] < min_lr:
                            stop = "min_lr"
                            break
            if step == steps:
                break
            idx = torch.randperm(noise.shape[0], generator=gen)[:batch_size] if batch_size else None
            d, z, r = (
                (denoiser, noise, ref)
                if idx is None
                else (rows(denoiser, idx), noise[idx], ref[idx])
            )
            opt.zero_grad()
            try:
                loss = perceptual_distance(run(params, d, z), r, features).mean()
            except ValueError:
                stop = "non-finite model output"
                break
            if not torch.isfinite(loss):
                stop = "non-finite loss"
                break
            loss.backward()
            zero_nonfinite_grads(params.values())
            opt.step()
            ran += 1
            with torch.no_grad():  # the offsets' fraction u stays in [-1, 1], 0 without room
                s_now = current(params)[0].detach()
                b_lo, b_hi = shift_bounds(call_sigmas(solver, s_now), s_now, floor=lo)
                u = params["shift"]
                u.clamp_(-1.0, 1.0)
                u.copy_(torch.where(b_hi > 0, u, u.clamp(max=0.0)))
                u.copy_(torch.where(b_lo < 0, u, u.clamp(min=0.0)))
    with torch.no_grad():
        s, xi = current(best[1])
    record: dict[str, Any] = {
        "method": "ld3_style_peer",
        "loss": "perceptual (unit-normalised features)" if features is not None else "l2",
        "features": getattr(features, "__name__", None) if features is not None else None,
        "optimizer": f"RMSprop(lr={lr:g}, momentum={momentum:g})",
        "decay": decay,
        "patience": patience,
        "min_lr": min_lr,
        "lr_decays_at": decays,
        "steps": steps,
        "steps_run": ran,
        "best_step": best[2],
        "validation_curve": curve,
        "stop": stop,
        "init_sigmas": grid.tolist(),
        "seconds": time.perf_counter() - t0,
    }
    fitted = FittedSolver(
        solver=solver.config(),
        sigmas=explicit(s),
        lambdas=torch.zeros(k_calls, dtype=torch.float64),
        shift=xi.detach().clone(),
        model={"class": type(denoiser).__name__},
    )
    fitted.metrics = {"peer": record}
    return fitted
