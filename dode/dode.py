"""The D-ODE correction, sampling, the teacher, and the closed-form λ fit.

D-ODE (Kim, Tang & Yu, CVPR 2024, Eq. 6): for the k-th model call the output the solver
consumes, ``o_k`` (x̂0 or ε̂), is replaced by ``õ_k = o_k + λ_k (o_k − o_{k−1})`` with λ_0 = 0.
One wrapper around the model callable does this for every solver.

History convention: ``o_{k−1}`` is the previous *raw* model output, while a multistep solver's
own history holds what it was given, i.e. the *corrected* ``õ``; this is the reference
implementation's behaviour, where the solver never sees the raw outputs. (The alternative,
raw histories, is measured once in ``experiments/history_variant.py``.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .denoisers import Denoiser
from .schedules import refine
from .solvers import Solver, get_solver

__all__ = [
    "DODECorrection",
    "model_fn",
    "sample",
    "sample_many",
    "select_scale",
    "ScaleChoice",
    "check_scales",
    "best_scale",
    "teacher_states",
    "LambdaFit",
    "FitInfo",
    "fit_lambdas",
    "branch",
    "batch_stats",
]


def _check_denoiser(denoiser) -> Denoiser:
    if denoiser is None:
        raise ValueError(
            "no model given; pass a dode.denoisers.Denoiser (e.g. DiffusersDenoiser."
            "from_pretrained(path) or CallableDenoiser(fn, sigma_min, sigma_max))."
        )
    if not isinstance(denoiser, Denoiser):
        raise ValueError(
            f"expected a dode.denoisers.Denoiser, got {type(denoiser).__name__}; wrap a plain "
            "function fn(x, sigma) -> x0 with dode.denoisers.CallableDenoiser(fn, sigma_min, "
            "sigma_max)."
        )
    return denoiser


def _check_finite(o: Tensor, k: int, sigma: float) -> None:
    if not torch.isfinite(o).all():
        raise ValueError(
            f"the model returned non-finite values at call {k} (σ = {sigma:.6g}); check the "
            "model weights, its dtype (try float32/float64) and that σ is inside its range."
        )


def model_fn(denoiser: Denoiser, consumes: str) -> Callable[[Tensor, float], Tensor]:
    """The callable a solver consumes: ``denoiser.x0`` or ``denoiser.eps``."""
    return denoiser.x0 if consumes == "x0" else denoiser.eps


def _correct(o: Tensor, prev: Tensor | None, lam) -> Tensor:
    """õ = o + λ (o − o_prev); the base output when there is no previous call."""
    if prev is None:
        return o
    return o + lam * (o - prev)


class DODECorrection:
    """Wrap a model callable so that the k-th call returns ``o_k + λ_k (o_k − o_{k−1})``.

    ``lambdas=None`` returns the raw outputs (the base solver, bit for bit). ``lambdas`` may be
    an ``nn.Parameter``: gradients flow to it through every solver.
    """

    def __init__(
        self,
        fn: Callable[[Tensor, float], Tensor],
        lambdas: Tensor | None = None,
        check_finite: bool = True,
    ) -> None:
        self.fn = fn
        self.lambdas = lambdas
        self.check_finite = check_finite
        self.k = 0
        self.prev: Tensor | None = None

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        k = self.k
        o = self.fn(x, sigma)
        if self.check_finite:
            _check_finite(o, k, float(sigma))
        self.k += 1
        if self.lambdas is None:
            return o
        if k >= len(self.lambdas):
            raise ValueError(
                f"the solver made more model calls than there are λ ({len(self.lambdas)}); the λ "
                "were fitted for another NFE or solver. Refit, or use the grid they came with."
            )
        out = _correct(o, self.prev, self.lambdas[k])
        self.prev = o
        return out


def _prepare(denoiser, solver, noise, sigmas):
    denoiser = _check_denoiser(denoiser)
    solver = get_solver(solver)
    denoiser.check_noise(noise)
    s = torch.tensor(solver.check_grid(sigmas), dtype=torch.float64)
    return denoiser, solver, s


def sample(
    denoiser: Denoiser,
    solver: Solver | str,
    noise: Tensor,
    sigmas: Tensor | Sequence[float],
    lambdas: Tensor | Sequence[float] | None = None,
    *,
    check_finite: bool = True,
    callback=None,
) -> Tensor:
    """Solve the probability-flow ODE from ``noise · σ_0`` down the grid.

    Args:
        denoiser: the (frozen) model.
        solver: a :class:`~dode.solvers.Solver` or its name.
        noise: standard normal noise ``[B, ...]``; integration runs in its dtype.
        sigmas: descending grid ending in 0.
        lambdas: one λ per model call (``solver.nfe(len(sigmas) − 1)``), or ``None`` for the
            base solver.
        check_finite: raise on non-finite model outputs (one reduction per call).
        callback: ``callback(i, sigma_next, x)`` after every step.

    Returns:
        The sample at ``sigmas[-1]`` (σ = 0: the generated data).
    """
    denoiser, solver, s = _prepare(denoiser, solver, noise, sigmas)
    if lambdas is not None:
        lambdas = torch.as_tensor(lambdas) if not isinstance(lambdas, Tensor) else lambdas
        nfe = solver.nfe(len(s) - 1)
        if lambdas.ndim != 1 or len(lambdas) != nfe:
            raise ValueError(
                f"need one λ per model call: {solver.describe()} on {len(s) - 1} steps makes "
                f"{nfe} calls, got λ of shape {tuple(lambdas.shape)}."
            )
    wrapped = DODECorrection(model_fn(denoiser, solver.consumes), lambdas, check_finite)
    x = noise * s[0].item()
    return solver(wrapped, x, s, callback)


class _SharedFirstCall(Denoiser):
    """A denoiser that answers a repeated first call from memory.

    After :meth:`arm`, the next call is remembered; a later call with bit-identical ``x`` and
    σ returns the remembered output. Runs of one solver from the same noise with different λ
    start with the same call (λ_0 = 0), so it is evaluated once.
    """

    def __init__(self, inner: Denoiser) -> None:
        super().__init__(inner.sigma_min, inner.sigma_max, inner.sample_shape)
        self.inner = inner
        self.prediction = inner.prediction
        self._memo: tuple[Tensor, Tensor, Tensor] | None = None
        self._armed = False

    def arm(self) -> None:
        self._memo, self._armed = None, True

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return self.inner.round_sigma(sigma)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self._memo is not None:
            mx, ms, out = self._memo
            if mx.shape == x.shape and torch.equal(ms, sigma) and torch.equal(mx, x):
                return out
        out = self.inner.denoise(x, sigma)
        if self._armed:
            self._memo, self._armed = (x, sigma, out), False
        return out


def sample_many(
    denoiser: Denoiser,
    solver: Solver | str,
    noise: Tensor,
    sigmas: Tensor | Sequence[float],
    lambdas: Sequence[Tensor | Sequence[float] | None],
    *,
    batch_size: int | None = None,
    check_finite: bool = True,
) -> list[Tensor]:
    """:func:`sample` from the same noise with several λ sets (``None``: the base solver).

    The runs share their first model call (no λ touches it), evaluated once per batch: with
    base and D-solver at NFE ``n`` this saves one call in ``2n``. Results equal separate
    :func:`sample` calls bit for bit.

    Args:
        lambdas: the λ sets, one result per entry.
        batch_size: samples per batch (default: all at once).

    Returns:
        One ``[B, ...]`` tensor per λ set, in order.
    """
    if isinstance(lambdas, Tensor) or not isinstance(lambdas, Sequence) or not lambdas:
        raise ValueError(
            "lambdas must be a non-empty list of λ sets (None for the base solver), e.g. "
            "[None, fitted.lambdas]."
        )
    denoiser = _check_denoiser(denoiser)
    shared = _SharedFirstCall(denoiser)
    chunks = noise.split(batch_size) if batch_size else (noise,)
    outs: list[list[Tensor]] = [[] for _ in lambdas]
    for chunk in chunks:
        shared.arm()
        for out, lam in zip(outs, lambdas):
            out.append(sample(shared, solver, chunk, sigmas, lam, check_finite=check_finite))
    return [torch.cat(o) for o in outs]


def check_scales(scales: Sequence[float], name: str = "scales") -> list[float]:
    """λ scales α as floats; ``ValueError`` unless they are distinct, finite and not empty."""
    out = [float(a) for a in scales]
    if not out or not all(math.isfinite(a) for a in out) or len(set(out)) != len(out):
        raise ValueError(f"{name} must be distinct finite numbers, e.g. [0, 0.5, 1]; got {scales}.")
    return out


def best_scale(scores: dict[float, float]) -> float:
    """The α with the lowest score (a non-finite score ranks last; ties: the first listed)."""
    return min(scores, key=lambda a: scores[a] if math.isfinite(scores[a]) else math.inf)


@dataclass
class ScaleChoice:
    """The outcome of :func:`select_scale`.

    Attributes:
        scale: the chosen α (the λ to use are ``α · λ``).
        lambdas: ``α · λ``.
        scores: the score of every α tried (lower is better).
        samples: the samples of every α (``return_samples=True`` only).
    """

    scale: float
    lambdas: Tensor
    scores: dict[float, float]
    samples: dict[float, Tensor] | None = None


def select_scale(
    denoiser: Denoiser,
    solver: Solver | str,
    noise: Tensor,
    sigmas: Tensor | Sequence[float],
    lambdas: Tensor | Sequence[float],
    score: Callable[[Tensor], float],
    scales: Sequence[float] = (0.0, 0.5, 1.0),
    *,
    batch_size: int | None = None,
    return_samples: bool = False,
) -> ScaleChoice:
    """Choose how much of the fitted λ to use, by a sample-quality score on held-out noise.

    The closed-form fit minimises the squared error to the teacher; a metric of sample quality
    (a Fréchet distance, say) can disagree: MSE-optimal corrections average over what the few
    steps cannot resolve, and at some NFE the base solver's sharper errors score better.
    Sampling ``noise`` (seeds the fit never saw) with ``α · λ`` for each α and keeping the
    lowest ``score`` gives a solver that is not worse than the base by that score whenever
    ``0.0`` is among the ``scales`` (α = 0 is the base solver). A non-finite score ranks last.

    Args:
        lambdas: the fitted λ.
        score: ``score(samples) -> float``, lower is better.
        scales: the α to try (finite, distinct).
        batch_size: samples per batch when sampling.
        return_samples: keep every α's samples in the result.
    """
    scales = check_scales(scales)
    lam = torch.as_tensor(lambdas, dtype=torch.float64)
    sets = [None if a == 0 else a * lam for a in scales]
    samples = sample_many(denoiser, solver, noise, sigmas, sets, batch_size=batch_size)
    scores = {a: float(score(x)) for a, x in zip(scales, samples)}
    best = best_scale(scores)
    scores = {a: v if math.isfinite(v) else math.inf for a, v in scores.items()}
    kept = dict(zip(scales, samples)) if return_samples else None
    return ScaleChoice(best, best * lam, scores, kept)


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


def _lookup(states: dict[float, Tensor], sigma: float) -> Tensor:
    if sigma in states:
        return states[sigma]
    for key, val in states.items():
        if abs(key - sigma) <= 1e-12 * max(1.0, abs(sigma)):
            return val
    raise ValueError(
        f"no teacher state at σ = {sigma!r}: the teacher grid must contain every σ the student "
        "visits. Build teacher states with dode.teacher_states() for this exact grid and solver."
    )


class _Stop(Exception):
    def __init__(self, x: Tensor, sigma: float) -> None:
        self.x, self.sigma = x, sigma


class _Replay:
    """Model callable for the sequential fit: replays cached outputs for calls < k, evaluates
    call k once (caching it), applies a trial λ to it, and stops at call k + 1.

    ``lam=None``: call k returns both branches stacked on a new leading dimension,
    ``[õ_k(λ_k=0), õ_k(λ_k=1)]``; the solvers' arithmetic is elementwise, so the state after
    call k comes back as ``[x(0), x(1)]`` from one replay instead of two."""

    def __init__(
        self, fn, cache: list[Tensor], lambdas: Tensor, k: int, lam: Tensor | None, check: bool
    ):
        self.fn, self.cache, self.lambdas, self.k, self.lam, self.check = (
            fn,
            cache,
            lambdas,
            k,
            lam,
            check,
        )
        self.j = 0

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        j = self.j
        if j > self.k:
            raise _Stop(x, sigma)
        self.j += 1
        if j == len(self.cache):
            o = self.fn(x, sigma)
            if self.check:
                _check_finite(o, j, float(sigma))
            self.cache.append(o)
        o = self.cache[j]
        prev = self.cache[j - 1] if j > 0 else None
        if j == self.k and self.lam is None:
            return torch.stack([o, o]) if prev is None else torch.stack([o, o + (o - prev)])
        return _correct(o, prev, self.lam if j == self.k else self.lambdas[j])


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
    replay = _Replay(fn, cache, lambdas, k, lam, check_finite)
    try:
        return solver.solve(replay, noise * s[0], s, None), 0.0
    except _Stop as stop:
        return stop.x, float(stop.sigma)


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
    in λ_k), from one replay with the two branches stacked (see :class:`_Replay`); falls back
    to two :func:`branch` replays if a solver's arithmetic does not broadcast."""
    try:
        replay = _Replay(fn, cache, lambdas, k, None, check_finite)
        try:
            x, sigma = solver.solve(replay, noise * s[0], s, None), 0.0
        except _Stop as stop:
            x, sigma = stop.x, float(stop.sigma)
        if x.shape == (2, *noise.shape):
            return x[0], x[1] - x[0], sigma
    except RuntimeError:
        pass
    zero = torch.tensor(0.0, dtype=torch.float64)
    x0, sigma = branch(solver, fn, s, noise, cache, lambdas, k, zero, check_finite)
    x1, _ = branch(solver, fn, s, noise, cache, lambdas, k, zero + 1.0, check_finite)
    return x0, x1 - x0, sigma


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
    target = teacher(sigma) if callable(teacher) else _lookup(teacher, sigma)
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
        denoiser: Denoiser,
        solver: Solver | str,
        sigmas: Tensor | Sequence[float],
        noises: Sequence[Tensor],
        teachers: Sequence[dict[float, Tensor]],
        check_finite: bool = True,
    ) -> None:
        self.denoiser = _check_denoiser(denoiser)
        self.solver = get_solver(solver)
        if len(noises) != len(teachers):
            raise ValueError("need one teacher-state dict per noise batch.")
        self.s = torch.tensor(self.solver.check_grid(sigmas), dtype=torch.float64)
        for n in noises:
            self.denoiser.check_noise(n)
        self.noises = list(noises)
        self.teachers = list(teachers)
        self.num_calls = self.solver.nfe(len(self.s) - 1)
        self.lambdas = torch.zeros(self.num_calls, dtype=torch.float64)
        self.fn = model_fn(self.denoiser, self.solver.consumes)
        self.caches: list[list[Tensor]] = [[] for _ in noises]
        self.check_finite = check_finite
        self.info = FitInfo()

    def _branch(self, b: int, k: int, lam: float) -> tuple[Tensor, float]:
        return branch(
            self.solver,
            self.fn,
            self.s.tolist(),
            self.noises[b],
            self.caches[b],
            self.lambdas,
            k,
            torch.tensor(lam, dtype=torch.float64),
            self.check_finite,
        )

    @torch.no_grad()
    def stats(self, k: int) -> tuple[Tensor, float]:
        """Local sufficient statistics for call k and the σ of the state they refer to."""
        total = torch.zeros(4, dtype=torch.float64)
        sigma = 0.0
        for b in range(len(self.noises)):
            st, sigma = batch_stats(
                self.solver,
                self.fn,
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
        if not math.isfinite(gg) or not math.isfinite(gr) or gg <= 1e-20 * scale or gg == 0:
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
        self.lambdas[k] = lam
        if stats is not None:
            gr, gg, rr, n = (float(v) for v in stats)
            self.info.sigmas.append(float(sigma) if sigma is not None else float("nan"))
            self.info.lambdas.append(lam)
            self.info.mse_before.append(rr / n)
            self.info.mse_after.append((rr - 2 * lam * gr + lam * lam * gg) / n)
            if degenerate:
                self.info.degenerate.append(k)

    def run(self, reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Fit every λ in turn; ``reduce`` sums statistics across processes."""
        for k in range(self.num_calls):
            st, sigma = self.stats(k)
            if reduce is not None:
                st = reduce(st)
            lam, degenerate = self.solve(st, k)
            self.set(k, lam, st, sigma, degenerate)
        return self.lambdas.clone()


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
        batch_size: process the noise in chunks of this size (statistics are summed).
        space, rho: parameterisation of the refinement (see :func:`dode.schedules.refine`).
        return_info: also return a :class:`FitInfo` with per-call MSE before/after.

    Returns:
        λ, float64, one per model call (λ_0 = 0).
    """
    denoiser, solver, s = _prepare(denoiser, solver, noise, sigmas)
    if not isinstance(teacher_factor, int) or teacher_factor < 2:
        raise ValueError(f"teacher_factor must be an integer >= 2, got {teacher_factor!r}.")
    chunks = list(noise.split(batch_size)) if batch_size else [noise]
    teachers = [
        teacher_states(
            denoiser,
            solver,
            c,
            s,
            teacher_factor,
            teacher_solver=teacher_solver,
            space=space,
            rho=rho,
        )
        for c in chunks
    ]
    fit = LambdaFit(denoiser, solver, s, chunks, teachers)
    lambdas = fit.run()
    return (lambdas, fit.info) if return_info else lambdas
