"""The teacher and the paper's closed-form λ fit.

The teacher integrates the same ODE with finer steps on a grid that contains every σ the
student visits (:func:`teacher_states`); its states are looked up by σ (:func:`at_sigma`), never
by index. The fit walks the student along the grid: the state after model call k is affine in
λ_k, so ``λ_k = <g, r>/<g, g>`` from float64 sufficient statistics (:func:`batch_stats`) that
sum over batches and processes (:class:`LambdaFit`, :func:`fit_lambdas`). Model outputs are
replayed from a per-batch cache (:func:`branch`), so each call is evaluated once per batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import Tensor

from .correction import _correct, model_fn
from .denoisers import Denoiser
from .grids.schedules import refine, round_refined
from .replay import Replay, ReplayStop, run_until_stop
from .sampling import _check_denoiser, _prepare, sample
from .solvers import Solver, get_solver

__all__ = [
    "teacher_states",
    "at_sigma",
    "LambdaFit",
    "FitInfo",
    "fit_lambdas",
    "branch",
    "batch_stats",
]

V = TypeVar("V")


def default_teacher(solver: Solver) -> Solver:
    """The student's own solver, rebuilt from its config."""
    return get_solver(**solver.config())


def teacher_states(
    denoiser: Denoiser,
    solver: Solver | str,
    noise: Tensor,
    sigmas: Tensor | Sequence[float],
    teacher_factor: int = 10,
    *,
    teacher_solver: Solver | str | None = None,
    space: str = "rho",
    rho: float = 7.0,
) -> dict[float, Tensor]:
    """Integrate the same ODE on a grid refined ``teacher_factor``× that contains every σ the
    student visits (grid points and stage points), and return the teacher's state at each of
    those σ (keys: the exact σ values)."""
    denoiser, solver, s = _prepare(denoiser, solver, noise, sigmas)
    teacher = default_teacher(solver) if teacher_solver is None else get_solver(teacher_solver)
    stages = solver.stage_sigmas(s)
    grid = refine(s, teacher_factor, space=space, rho=rho, include=stages)
    needed = set(s[1:].tolist()) | set(stages.tolist())
    # A model that snaps σ to its table evaluates the teacher's extra points at table σ too.
    grid = round_refined(grid, denoiser.round_sigma, keep=[float(s[0]), *needed])
    states: dict[float, Tensor] = {}

    def record(i: int, sigma_next: float, x: Tensor) -> None:
        if sigma_next in needed:
            states[sigma_next] = x.detach()

    with torch.no_grad():
        sample(denoiser, teacher, noise, grid, callback=record)
    missing = needed - set(states)
    if missing:  # pragma: no cover - refine() guarantees containment
        raise RuntimeError(f"teacher grid misses student σ {sorted(missing)}")
    return states


def at_sigma(states: Mapping[float, V], sigma: float) -> V:
    """The entry of ``states`` (keyed by σ, e.g. :func:`teacher_states`) at ``sigma``.

    The exact key if present, else the first key within a relative tolerance of 1e-12
    (absolute 1e-12 below σ = 1): the one lookup of teacher states by σ.
    """
    if sigma in states:
        return states[sigma]
    for key, val in states.items():
        if abs(key - sigma) <= 1e-12 * max(1.0, abs(sigma)):
            return val
    raise ValueError(
        f"no teacher state at σ = {sigma!r}: the teacher grid must contain every σ the student "
        "visits. Build teacher states with dode.teacher_states() for this exact grid and solver."
    )


_Stop = ReplayStop  # the name older imports use


class _Replay:
    """Model callable for the sequential fit: a :class:`~dode.replay.Replay` of the per-batch
    cache (call k evaluated once and cached, the replay stopped at call k + 1) with the
    correction applied: λ_j for the calls j < k, a trial λ on call k.

    ``lam=None``: call k returns both branches stacked on a new leading dimension,
    ``[õ_k(λ_k=0), õ_k(λ_k=1)]``; the solvers' arithmetic is elementwise, so the state after
    call k comes back as ``[x(0), x(1)]`` from one replay instead of two."""

    def __init__(
        self, fn, cache: list[Tensor], lambdas: Tensor, k: int, lam: Tensor | None, check: bool
    ):
        self.raw = Replay(cache, fn, stop_at=k + 1, check_finite=check)
        self.lambdas, self.k, self.lam = lambdas, k, lam

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        j = self.raw.calls
        o = self.raw(x, sigma)
        prev = self.raw.outputs[j - 1] if j > 0 else None
        if j == self.k and self.lam is None:
            return torch.stack([o, o]) if prev is None else torch.stack([o, o + (o - prev)])
        return _correct(o, prev, self.lam if j == self.k else self.lambdas[j])


def _walk(solver: Solver, replay: _Replay, s: list[float], noise: Tensor) -> tuple[Tensor, float]:
    """Run ``solver`` on ``replay`` from ``noise · σ_0`` until the replay stops it: the state
    and its σ (the final sample and 0.0 when it never stops)."""
    x, sigma = run_until_stop(solver, replay, noise * s[0], s)
    return x, 0.0 if sigma is None else sigma


def branch(
    solver: Solver,
    fn: Callable[[Tensor, float], Tensor],
    s: list[float],
    noise: Tensor,
    cache: list[Tensor],
    lambdas: Tensor,
    k: int,
    lam: Tensor,
    check_finite: bool = True,
) -> tuple[Tensor, float]:
    """Run the student up to the input of model call ``k + 1`` with ``λ_j`` (j < k) from
    ``lambdas`` and ``λ_k = lam``; return that state and its σ (the final sample and 0.0 when
    ``k`` is the last call).

    Model outputs are replayed from ``cache`` (a per-batch list, filled on first use), so each
    call is evaluated once per batch however many times the walk is repeated. ``lam`` may carry
    a gradient (the state is affine in it); the cached outputs never do.
    """
    return _walk(solver, _Replay(fn, cache, lambdas, k, lam, check_finite), s, noise)


def _branch_tangent(
    solver: Solver,
    fn: Callable[[Tensor, float], Tensor],
    s: list[float],
    noise: Tensor,
    cache: list[Tensor],
    lambdas: Tensor,
    k: int,
    check_finite: bool = True,
) -> tuple[Tensor, Tensor, float]:
    """The state after call k at λ_k = 0 and ``g = x(λ_k=1) − x(λ_k=0)`` (the state is affine
    in λ_k).

    A solver whose ``replay_batchable`` is true (the default; see the solver contract in
    :class:`dode.solvers.Solver`) gets one replay with the two branches stacked (see
    :class:`_Replay`); one that sets it false gets two :func:`branch` replays. Errors of the
    model or the solver propagate.
    """
    if not getattr(solver, "replay_batchable", True):
        zero = torch.tensor(0.0, dtype=torch.float64)
        x0, sigma = branch(solver, fn, s, noise, cache, lambdas, k, zero, check_finite)
        x1, _ = branch(solver, fn, s, noise, cache, lambdas, k, zero + 1.0, check_finite)
        return x0, x1 - x0, sigma
    replay = _Replay(fn, cache, lambdas, k, None, check_finite)
    x, sigma = _walk(solver, replay, s, noise)
    want = (2, *noise.shape)
    if tuple(x.shape) != want:
        raise RuntimeError(
            f"solver {solver.describe()} ({type(solver).__name__}) breaks the solver contract "
            f"(dode.solvers.Solver): it sets replay_batchable, but the fit's stacked replay of "
            f"call {k} gave a state of shape {tuple(x.shape)} instead of {want}. Make its "
            "updates elementwise in the model outputs, or set replay_batchable = False on the "
            "class (the fit then replays each call twice)."
        )
    return x[0], x[1] - x[0], sigma


def batch_stats(
    solver: Solver,
    fn: Callable[[Tensor, float], Tensor],
    s: list[float],
    noise: Tensor,
    teacher: dict[float, Tensor] | Callable[[float], Tensor],
    cache: list[Tensor],
    lambdas: Tensor,
    k: int,
    check_finite: bool = True,
) -> tuple[Tensor, float]:
    """One batch's float64 sufficient statistics ``[<g, r>, <g, g>, <r, r>, n]`` for call k
    (on the noise's device) and the σ of the state they refer to.

    ``g`` is the change of the state after call k per unit λ_k, ``r`` = teacher − student
    state at λ_k = 0. ``teacher`` maps σ to the teacher state (a dict keyed by exact σ, as
    :func:`teacher_states` returns, or a function). Sum the statistics over batches and
    processes, then :meth:`LambdaFit.solve`.
    """
    x0, g, sigma = _branch_tangent(solver, fn, s, noise, cache, lambdas, k, check_finite)
    g = g.to(torch.float64)
    target = teacher(sigma) if callable(teacher) else at_sigma(teacher, sigma)
    r = target.to(device=g.device, dtype=torch.float64) - x0.to(torch.float64)
    n = torch.tensor(float(r.numel()), dtype=torch.float64, device=g.device)
    return torch.stack([(g * r).sum(), (g * g).sum(), (r * r).sum(), n]), sigma


@dataclass
class FitInfo:
    """Per-call record of a closed-form fit."""

    sigmas: list[float] = field(default_factory=list)  # σ of the state each λ_k is fitted at
    lambdas: list[float] = field(default_factory=list)
    mse_before: list[float] = field(default_factory=list)  # MSE to the teacher with λ_k = 0
    mse_after: list[float] = field(default_factory=list)  # ... with the fitted λ_k
    degenerate: list[int] = field(default_factory=list)

    def record(
        self, k: int, sigma: float | None, lam: float, stats: Tensor, degenerate: bool = False
    ) -> None:
        """Record call ``k``, fitted at ``sigma`` to ``lam``, from its summed statistics
        ``[<g, r>, <g, g>, <r, r>, n]``: the MSE to the teacher before and after."""
        gr, gg, rr, n = (float(v) for v in stats)
        self.sigmas.append(float(sigma) if sigma is not None else math.nan)
        self.lambdas.append(lam)
        self.mse_before.append(rr / n)
        self.mse_after.append((rr - 2 * lam * gr + lam * lam * gg) / n)
        if degenerate:
            self.degenerate.append(k)


class LambdaFit:
    """Sequential closed-form fit of λ over local batches (one process's share of the data).

    For each call k, :meth:`stats` returns the float64 sufficient statistics
    ``[<g, r>, <g, g>, <r, r>, n]`` summed over the local batches, where ``g`` is the change of
    the next student state per unit λ_k and ``r`` = teacher − student state at λ_k = 0. Sum them
    over processes (all-reduce), then :meth:`solve` gives ``λ_k = <g, r>/<g, g>`` and
    :meth:`set` applies it. :meth:`run` does the whole loop in one process.
    """

    def __init__(
        self,
        denoiser: Denoiser | Sequence[Denoiser],
        solver: Solver | str,
        sigmas: Tensor | Sequence[float],
        noises: Sequence[Tensor],
        teachers: Sequence[dict[float, Tensor]],
        check_finite: bool = True,
    ) -> None:
        # One denoiser for all batches, or one per batch (a conditional model bound to each
        # batch's conditioning: ``bound.split(batch_size)`` beside ``noise.split(batch_size)``).
        dens = list(denoiser) if isinstance(denoiser, (list, tuple)) else [denoiser] * len(noises)
        if len(dens) != len(noises):
            raise ValueError(
                f"{len(dens)} denoisers for {len(noises)} noise batches; give one denoiser, or "
                "one per batch (bound.split(batch_size) beside noise.split(batch_size))."
            )
        self.denoisers = [_check_denoiser(d) for d in dens]
        self.denoiser = self.denoisers[0] if self.denoisers else _check_denoiser(denoiser)
        self.solver = get_solver(solver)
        if len(noises) != len(teachers):
            raise ValueError("need one teacher-state dict per noise batch.")
        self.s = torch.tensor(self.solver.check_grid(sigmas), dtype=torch.float64)
        for d, n in zip(self.denoisers, noises):
            d.check_noise(n)
        self.noises = list(noises)
        self.teachers = list(teachers)
        self.num_calls = self.solver.nfe(len(self.s) - 1)
        self.lambdas = torch.zeros(self.num_calls, dtype=torch.float64)
        self.fns = [model_fn(d, self.solver.consumes) for d in self.denoisers]
        self.fn = self.fns[0] if self.fns else model_fn(self.denoiser, self.solver.consumes)
        self.caches: list[list[Tensor]] = [[] for _ in noises]
        self.check_finite = check_finite
        self.info = FitInfo()

    @torch.no_grad()
    def stats(self, k: int) -> tuple[Tensor, float]:
        """Local sufficient statistics for call k and the σ of the state they refer to."""
        total = torch.zeros(4, dtype=torch.float64)
        sigma = 0.0
        for b in range(len(self.noises)):
            st, sigma = batch_stats(
                self.solver,
                self.fns[b],
                self.s.tolist(),
                self.noises[b],
                self.teachers[b],
                self.caches[b],
                self.lambdas,
                k,
                self.check_finite,
            )
            total += st.cpu()
        return total, sigma

    @staticmethod
    def solve(stats: Tensor, k: int = -1) -> tuple[float, bool]:
        """λ = <g, r>/<g, g>; ``(0, True)`` (with a warning) when ‖g‖ ≈ 0."""
        gr, gg, rr, n = (float(v) for v in stats)
        scale = max(rr, 1e-300)
        if k == 0:
            return 0.0, False
        if not math.isfinite(gg) or not math.isfinite(gr) or gg <= 1e-20 * scale:
            warnings.warn(
                f"D-ODE fit: call {k} is degenerate (the state does not depend on λ_{k}: "
                "consecutive model outputs are equal); λ set to 0.",
                RuntimeWarning,
                stacklevel=2,
            )
            return 0.0, True
        return gr / gg, False

    def set(
        self,
        k: int,
        lam: float,
        stats: Tensor | None = None,
        sigma: float | None = None,
        degenerate: bool = False,
    ) -> None:
        """Set λ_k; given its summed statistics, also record the call in :attr:`info`."""
        self.lambdas[k] = lam
        if stats is not None:
            self.info.record(k, sigma, lam, stats, degenerate)

    def run(self, reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Fit every λ in turn; ``reduce`` sums statistics across processes."""
        for k in range(self.num_calls):
            st, sigma = self.stats(k)
            if reduce is not None:
                st = reduce(st)
            lam, degenerate = self.solve(st, k)
            self.set(k, lam, st, sigma, degenerate)
        return self.lambdas.clone()


def _split_denoiser(denoiser: Denoiser, n: int, batch_size: int | None) -> list[Denoiser]:
    """One denoiser per chunk of ``noise.split(batch_size)``: a denoiser bound to one
    conditioning row per sample (:class:`~dode.denoisers.GuidedDenoiser` with ``N > 1`` rows)
    is split along with the noise; any other serves every chunk."""
    rows = len(denoiser) if hasattr(denoiser, "split") else 1
    chunks = math.ceil(n / batch_size) if batch_size else 1
    if rows > 1 and batch_size:
        return denoiser.split(batch_size)
    return [denoiser] * chunks


def _warn_degenerate(solver: Solver, steps: int, num_samples: int) -> None:
    """Warn where a fit's result says little: one model call (λ_0 = 0 by definition: the
    D-solver is the base solver) or one sample (λ fitted to a single trajectory)."""
    if solver.nfe(steps) == 1:
        warnings.warn(
            f"{solver.describe()} on {steps} step(s) makes one model call, whose λ_0 is 0 by "
            "definition (no previous output): the fitted D-solver is the base solver. Use NFE >= 2.",
            stacklevel=3,
        )
    if num_samples == 1:
        warnings.warn(
            "fitting λ on one sample: the λ fit that one trajectory and say little about other "
            "samples; fit on many (the paper uses 1000s; dozens at the least).",
            stacklevel=3,
        )


def fit_lambdas(
    denoiser: Denoiser,
    solver: Solver | str,
    noise: Tensor,
    sigmas: Tensor | Sequence[float],
    teacher_factor: int = 10,
    *,
    teacher_solver: Solver | str | None = None,
    batch_size: int | None = None,
    space: str = "rho",
    rho: float = 7.0,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, FitInfo]:
    """The paper's closed-form D-ODE fit (sequential over model calls, float64 statistics).

    The teacher integrates the same ODE with ``teacher_factor``× finer steps on a grid that
    contains every σ the student visits (:func:`teacher_states`); targets are matched by σ.
    Walking the student along the grid, the state after call k is affine in λ_k, so
    ``λ_k = <g, r>/<g, g>``; λ_k is applied before moving on.

    Args:
        denoiser: the frozen model.
        solver: the student solver (instance or name).
        noise: standard normal ``[B, ...]``; scaled by ``sigmas[0]`` here.
        sigmas: the student grid (descending, ending in 0).
        teacher_factor: C, the teacher's refinement (≥ 2; the paper uses 10).
        teacher_solver: the teacher's solver; default: the student's own.
        batch_size: process the noise in chunks of this size (statistics are summed); a
            denoiser bound to one conditioning row per sample (``den.bind(labels)``) is split
            along with the noise (:meth:`~dode.denoisers.GuidedDenoiser.split`).
        space, rho: parameterisation of the refinement (see :func:`dode.grids.schedules.refine`).
        return_info: also return a :class:`FitInfo` with per-call MSE before/after.

    Returns:
        λ, float64, one per model call (λ_0 = 0).
    """
    denoiser, solver, s = _prepare(denoiser, solver, noise, sigmas)
    if not isinstance(teacher_factor, int) or teacher_factor < 2:
        raise ValueError(f"teacher_factor must be an integer >= 2, got {teacher_factor!r}.")
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(
            f"batch_size must be a positive integer (samples per chunk), or None for one "
            f"chunk; got {batch_size!r}."
        )
    _warn_degenerate(solver, len(s) - 1, len(noise))
    chunks = list(noise.split(batch_size)) if batch_size else [noise]
    dens = _split_denoiser(denoiser, noise.shape[0], batch_size)
    teachers = [
        teacher_states(
            d,
            solver,
            c,
            s,
            teacher_factor,
            teacher_solver=teacher_solver,
            space=space,
            rho=rho,
        )
        for d, c in zip(dens, chunks)
    ]
    fit = LambdaFit(dens, solver, s, chunks, teachers)
    lambdas = fit.run()
    return (lambdas, fit.info) if return_info else lambdas
