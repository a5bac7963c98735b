"""Learned σ grids fitted together with the D-ODE λ (beyond the paper).

Two ways to learn the N-step grid of a solver from ~100 seeds, both ending in a fitted-solver
file (:class:`~dode.files.solver_file.FittedSolver`, the grid and λ in it, and how the grid was obtained
in ``metrics["grid"]``) that :func:`dode.sample` and every other consumer use as any file:

``learned_dp`` (GITS-style, Chen et al., ICML 2024)
    Integrate the teacher on a fine grid F (``fine_steps`` Karras steps over the model's σ
    range) and record its state ``x_i`` and the model's ``D_i = D(x_i, f_i)`` at every fine
    point. The cost of jumping from ``f_i`` to ``f_j`` is the MSE of one first-order step
    (DDIM / Euler in x̂0 form) from the teacher state to the teacher state at ``f_j``:
    ``c_ij = ‖D_i + (f_j/f_i)(x_i − D_i) − x_j‖²/n``. A dynamic programme (:func:`dp_search`)
    picks the N steps from ``f_0`` to 0 with the smallest accumulated cost; then λ are fitted on
    that grid in closed form (:func:`dode.fit_lambdas`).
``learned_sgd`` (in the spirit of LD3, Tong et al., ICLR 2025)
    The grid and λ are fitted jointly by Adam on the MSE of the final sample to a converged
    solution from the same noise, backpropagating through the whole trajectory (network,
    solver coefficients, correction). The grid is parameterised so it stays valid
    (:func:`grid_from_logits`): ``σ_0`` fixed, ``log σ_k = log σ_0 − (log σ_0 − log σ_floor) ·
    Σ_{m<k} softmax(w)_m`` for k = 1..N−1, then 0: strictly descending, N + 1 points, ending
    in 0, whatever the logits ``w`` (N of them; the last is the slack down to ``σ_floor``).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import torch
from torch import Tensor

from .denoisers import Denoiser
from .files.solver_file import FittedSolver
from .grids.schedules import explicit, karras
from .solvers import Solver, get_solver
from .standard_grids import model_sigma_range, reference_solution, standard_grids

__all__ = [
    "LEARNED_SCHEDULES",
    "dp_search",
    "dp_brute_force",
    "step_costs",
    "fine_trajectory",
    "dp_grid",
    "grid_from_logits",
    "logits_from_grid",
    "sgd_grid",
    "learned_dp",
    "learned_sgd",
    "learned_schedule",
]

LEARNED_SCHEDULES = ("learned_dp", "learned_sgd")


# ---- the dynamic programme ---------------------------------------------------------------------
def dp_search(cost: Tensor, num_steps: int, start: Tensor | None = None) -> tuple[list[int], float]:
    """The path ``i_0 < i_1 < … < i_N = M`` through the nodes ``0..M`` that minimises
    ``start[i_0] + Σ_k cost[i_k, i_{k+1}]`` with exactly ``num_steps`` edges.

    Args:
        cost: ``[M + 1, M + 1]``; ``cost[i, j]`` (i < j) is the cost of the step i → j.
        num_steps: N, with 1 ≤ N ≤ M.
        start: ``[M + 1]``, the cost of starting at each node (default: 0 at node 0, ∞
            elsewhere: the path starts at 0).

    Returns:
        The node indices (N + 1 of them) and the total cost.
    """
    c = torch.as_tensor(cost, dtype=torch.float64)
    m = c.shape[0] - 1
    if c.ndim != 2 or c.shape[0] != c.shape[1] or m < 1:
        raise ValueError(
            f"cost must be a square [M+1, M+1] matrix with M >= 1, got {tuple(c.shape)}."
        )
    if not isinstance(num_steps, int) or not 1 <= num_steps <= m:
        raise ValueError(f"num_steps must be an integer in [1, {m}], got {num_steps!r}.")
    inf = math.inf
    upper = torch.triu(torch.ones_like(c, dtype=torch.bool), diagonal=1)
    c = torch.where(upper & ~torch.isnan(c), c, torch.full_like(c, inf))
    if start is None:
        best = torch.full((m + 1,), inf, dtype=torch.float64)
        best[0] = 0.0
    else:
        best = torch.as_tensor(start, dtype=torch.float64).clone()
        if best.shape != (m + 1,):
            raise ValueError(f"start must have shape [{m + 1}], got {tuple(best.shape)}.")
        best[m] = inf  # a path needs num_steps >= 1 edges
        best = torch.nan_to_num(best, nan=inf)
    back = []
    for _ in range(num_steps):
        tot = best[:, None] + c  # [from, to]
        val, arg = tot.min(dim=0)
        back.append(arg)
        best = val
    if not math.isfinite(float(best[m])):
        raise ValueError("no finite-cost path with that many steps; check the cost matrix.")
    path = [m]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    return path[::-1], float(best[m])


def dp_brute_force(
    cost: Tensor, num_steps: int, start: Tensor | None = None
) -> tuple[list[int], float]:
    """:func:`dp_search` by enumerating every path (for tests; exponential)."""
    c = torch.as_tensor(cost, dtype=torch.float64)
    m = c.shape[0] - 1
    best, arg = math.inf, None
    for nodes in combinations(range(0, m), num_steps):
        if start is None and nodes[0] != 0:
            continue
        path = [*nodes, m]
        v = 0.0 if start is None else float(start[path[0]])
        v += sum(float(c[a, b]) for a, b in zip(path[:-1], path[1:]))
        if v < best:
            best, arg = v, path
    return arg, best


def _teacher_solver(teacher_solver: Solver | str, options: dict[str, Any] | None) -> Solver:
    opts = dict(options or {})
    if teacher_solver == "dpm_solver_pp":
        opts.setdefault("order", 3)
    return get_solver(teacher_solver, **opts)


@torch.no_grad()
def fine_trajectory(
    denoiser: Denoiser,
    noise: Tensor,
    fine: Tensor,
    *,
    teacher_solver: Solver | str = "dpm_solver_pp",
    teacher_options: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """The teacher's states ``x_i`` at every point of ``fine`` (``[M + 1, B, ...]``, the sample
    last) and the model's x̂0 ``D_i`` at the M non-zero points, from one teacher run (a
    multistep teacher calls the model exactly at its states)."""
    f = explicit(fine)
    teacher = _teacher_solver(teacher_solver, teacher_options)
    if teacher.nfe(len(f) - 1) != len(f) - 1 or len(teacher.stage_sigmas(f)):
        raise ValueError(
            f"the DP teacher must make one model call per fine step; {teacher.describe()} does "
            "not. Use a multistep solver (dpm_solver_pp, unipc, ipndm, deis, euler)."
        )
    xs: list[Tensor] = []
    ds: list[Tensor] = []

    def call(x: Tensor, sigma: float) -> Tensor:
        d = denoiser.x0(x, sigma)
        xs.append(x)
        ds.append(d)
        return d if teacher.consumes == "x0" else (x - d) / sigma

    out = teacher.solve(call, noise * f[0].item(), f.tolist(), None)
    return torch.stack([*xs, out]), torch.stack(ds)


def step_costs(xs: Tensor, ds: Tensor, fine: Tensor, weight: str = "vp") -> Tensor:
    """The ``[M + 1, M + 1]`` cost matrix of :func:`dp_grid` from a fine teacher trajectory
    (:func:`fine_trajectory`).

    ``cost[i, j]`` (i < j) is the mean squared error of one Euler (x̂0 form) step from the
    teacher state ``(x_i, f_i)`` to ``f_j`` against ``x_j``. ``weight="vp"`` measures it on
    the VP scale ``x / sqrt(1 + σ_j²)`` (an error made at large σ shrinks by about that factor
    on its way to σ = 0, so the costs add up comparably); ``"none"`` in σ-space.
    """
    if weight not in ("vp", "none"):
        raise ValueError(f"weight must be 'vp' or 'none', got {weight!r}.")
    f = explicit(fine)
    m = len(f) - 1
    xs, ds = xs.to(torch.float64), ds.to(torch.float64)
    n = xs[0].numel()
    w = 1 / (1 + f**2) if weight == "vp" else torch.ones_like(f)
    cost = torch.full((m + 1, m + 1), math.inf, dtype=torch.float64)
    for i in range(m):
        ratio = (f[i + 1 :] / f[i]).reshape(-1, *([1] * (xs.ndim - 1)))
        pred = ds[i] + ratio * (xs[i] - ds[i])  # [M - i, B, ...]
        err = ((pred - xs[i + 1 :]) ** 2).reshape(m - i, -1).sum(1) / n
        cost[i, i + 1 :] = err * w[i + 1 :]
    return cost


def _model_range(denoiser: Denoiser) -> tuple[float, float]:
    return model_sigma_range(denoiser)


def dp_grid(
    denoiser: Denoiser,
    num_steps: int,
    noise: Tensor,
    *,
    fine_steps: int = 40,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
    teacher_solver: Solver | str = "dpm_solver_pp",
    teacher_options: dict[str, Any] | None = None,
    weight: str = "vp",
    free_start: bool = True,
    return_states: bool = False,
):
    """The GITS-style grid: N steps out of a fine Karras grid, chosen by :func:`dp_search` on
    :func:`step_costs`. With ``free_start`` the grid may start below the model's σ_max: starting
    at ``f_s`` costs the (weighted) MSE between ``f_s · noise`` and the teacher's state there.
    Returns the grid and a record of how it was found (and, with
    ``return_states``, the teacher's states at the grid's σ, keyed by σ)."""
    lo, hi = _model_range(denoiser)
    lo = lo if sigma_min is None else float(sigma_min)
    hi = hi if sigma_max is None else float(sigma_max)
    if not isinstance(fine_steps, int) or fine_steps < num_steps:
        raise ValueError(
            f"fine_steps must be an integer >= num_steps ({num_steps}), got {fine_steps!r}."
        )
    fine = karras(fine_steps, lo, hi, rho)
    t0 = time.perf_counter()
    xs, ds = fine_trajectory(
        denoiser, noise, fine, teacher_solver=teacher_solver, teacher_options=teacher_options
    )
    start = None
    if free_start:  # starting at f_s from f_s · noise instead of the teacher's state there
        w = 1 / (1 + fine**2) if weight == "vp" else torch.ones_like(fine)
        x0 = noise.to(torch.float64)
        start = (
            torch.stack([((f * x0 - x.to(torch.float64)) ** 2).mean() for f, x in zip(fine, xs)])
            * w
        )
    path, total = dp_search(step_costs(xs, ds, fine, weight), num_steps, start)
    grid = fine[path].clone()
    record = {
        "method": "learned_dp",
        "fine_steps": fine_steps,
        "sigma_min": lo,
        "sigma_max": hi,
        "rho": rho,
        "teacher_solver": _teacher_solver(teacher_solver, teacher_options).config(),
        "weight": weight,
        "free_start": free_start,
        "num_seeds": int(noise.shape[0]),
        "indices": path,
        "dp_cost": total,
        "seconds": time.perf_counter() - t0,
    }
    if return_states == "all":
        return grid, record, {float(fine[i]): xs[i] for i in path[1:]}, fine, xs
    if return_states:
        return grid, record, {float(fine[i]): xs[i] for i in path[1:]}
    return grid, record


# ---- the gradient fit ---------------------------------------------------------------------------
_EPS = 1e-4  # every log-σ increment keeps at least this share / N of the span


def grid_from_logits(logits: Tensor, sigma_max: float, sigma_floor: float) -> Tensor:
    """A strictly descending grid of ``len(logits) + 1`` points, ``sigma_max`` first, 0 last.

    ``log σ_k = log σ_max − (log σ_max − log σ_floor) · Σ_{m<k} softmax(logits)_m`` for
    k = 1..N−1; the last logit is the slack between ``σ_{N−1}`` and ``σ_floor``. The softmax is
    mixed with 10⁻⁴ of the uniform share, so no increment underflows to 0 however large the
    logits get. Differentiable in ``logits``.
    """
    if not 0 < sigma_floor < sigma_max:
        raise ValueError(f"need 0 < sigma_floor < sigma_max, got {sigma_floor}, {sigma_max}.")
    span = math.log(sigma_max) - math.log(sigma_floor)
    n = logits.shape[0]
    share = (1 - _EPS) * torch.softmax(logits.to(torch.float64), 0) + _EPS / n
    frac = torch.cumsum(share, 0)[:-1]
    inner = torch.exp(math.log(sigma_max) - span * frac)
    top = logits.new_full((1,), sigma_max, dtype=torch.float64)
    return torch.cat([top, inner, torch.zeros(1, dtype=torch.float64)])


def logits_from_grid(sigmas: Tensor, sigma_floor: float) -> Tensor:
    """Logits whose :func:`grid_from_logits` is ``sigmas`` (which must end in 0 and stay above
    ``sigma_floor``)."""
    s = explicit(sigmas)
    if not s[-2] > sigma_floor:
        raise ValueError(
            f"the grid's last non-zero σ {float(s[-2])} must be above sigma_floor {sigma_floor}."
        )
    logs = torch.cat([s[:-1].log(), torch.tensor([math.log(sigma_floor)], dtype=torch.float64)])
    share = (logs[:-1] - logs[1:]) / (logs[0] - logs[-1])
    n = len(share)
    return ((share - _EPS / n).clamp(min=1e-12) / (1 - _EPS)).log()


def _pick_init(denoiser, solver, num_steps, noise, reference, init) -> tuple[Tensor, str]:
    if isinstance(init, Tensor) or (isinstance(init, Sequence) and not isinstance(init, str)):
        return explicit(init), "explicit"
    if init == "best_standard":
        from .standard_grids import select_grid

        choice = select_grid(
            denoiser, solver, solver.nfe(num_steps), noise,
            grids=[g for g in standard_grids(denoiser)], reference=reference,
        )  # fmt: skip
        return choice.sigmas, choice.spec.label
    if init == "karras":
        lo, hi = _model_range(denoiser)
        return karras(num_steps, lo, hi), "karras"
    raise ValueError(
        f"unknown init {init!r}; use 'dp', 'best_standard', 'karras' or an explicit σ list."
    )


def sgd_grid(
    denoiser: Denoiser,
    solver: Solver | str,
    num_steps: int,
    noise: Tensor,
    *,
    reference: Tensor | None = None,
    init: str | Tensor | Sequence[float] = "dp",
    init_lambdas: str | Tensor | None = "fit",
    steps: int = 4,
    lr: float = 0.05,
    lr_lambdas: float = 0.02,
    teacher_factor: int = 10,
    dp_options: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Fit the grid and λ jointly by Adam on the final-sample MSE to ``reference``.

    Args:
        denoiser: the model.
        solver: the solver.
        num_steps: N (grid intervals).
        noise: standard-normal fit noise ``[B, ...]`` (~100 seeds).
        reference: the converged solution on ``noise`` (default: :func:`reference_solution`;
            with ``init="dp"``, the DP's fine teacher, which is that same solution).
        init: the starting grid: ``dp`` (warm start: :func:`learned_dp`'s grid and λ, the
            cheapest), ``best_standard`` (the best of :func:`standard_grids` on the fit noise by
            the same MSE), ``karras`` or an explicit σ list.
        init_lambdas: ``fit`` (closed form on the starting grid; with ``init="dp"`` the DP's
            λ), ``None`` (zeros) or a tensor.
        steps: Adam iterations (full batch); the best iterate is kept.
        lr, lr_lambdas: Adam learning rates of the logits and of λ.
        teacher_factor: C of the closed-form λ fit that starts λ.
        dp_options: options of :func:`learned_dp` for ``init="dp"``.

    Returns:
        ``(sigmas, lambdas, record)``.
    """
    from .correction import DODECorrection
    from .lambda_fit import fit_lambdas

    solver = get_solver(solver)
    t0 = time.perf_counter()
    k = solver.nfe(num_steps)
    dp_lam, dp_record = None, None
    if isinstance(init, str) and init == "dp":
        fdp, teacher = learned_dp(
            denoiser, solver, k, noise, teacher_factor=teacher_factor, _with_teacher=True,
            **(dp_options or {}),
        )  # fmt: skip
        init_grid, init_label, dp_lam = fdp.sigmas, "dp", fdp.lambdas
        dp_record = fdp.metrics["grid"]
        if reference is None:
            reference = teacher
        t_ref = 0.0
    else:
        if dp_options:
            raise ValueError("dp_options apply only to init='dp'.")
        if reference is None:
            reference = reference_solution(denoiser, noise)
        t_ref = time.perf_counter() - t0
        init_grid, init_label = _pick_init(denoiser, solver, num_steps, noise, reference, init)
    if len(init_grid) - 1 != num_steps:
        raise ValueError(f"the initial grid has {len(init_grid) - 1} steps, need {num_steps}.")
    solver.check_grid(init_grid)
    if init_lambdas == "fit" and dp_lam is not None:
        lam0 = dp_lam.to(torch.float64).clone()
    elif isinstance(init_lambdas, Tensor):
        lam0 = init_lambdas.to(torch.float64).clone()
    elif init_lambdas == "fit":
        lam0 = fit_lambdas(denoiser, solver, noise, init_grid, teacher_factor, space="log")
    elif init_lambdas is None:
        lam0 = torch.zeros(k, dtype=torch.float64)
    else:
        raise ValueError(f"init_lambdas must be 'fit', None or a tensor, got {init_lambdas!r}.")
    sigma_max = float(init_grid[0])
    floor = 0.5 * min(float(denoiser.sigma_min), float(init_grid[-2]))
    floor = max(floor, 1e-8)
    fn = denoiser.x0 if solver.consumes == "x0" else denoiser.eps
    ref = reference.to(torch.float64)

    def run(logits: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        s = grid_from_logits(logits, sigma_max, floor)
        corr = DODECorrection(fn, lam)
        sig = [s[0].item(), *s[1:].to(noise.dtype).unbind()]
        with warnings.catch_warnings():  # the finiteness check reads float(σ) of a grad σ
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            x = solver.solve(corr, noise * sigma_max, sig, None)
        return ((x.to(torch.float64) - ref) ** 2).mean(), s

    losses: list[float] = []
    if num_steps == 1 or steps == 0:  # nothing to learn in the grid / no iterations asked
        with torch.no_grad():
            return init_grid, lam0, {"method": "learned_sgd", "init": init_label, "losses": []}
    logits = torch.nn.Parameter(logits_from_grid(init_grid, floor))
    lam = torch.nn.Parameter(lam0.clone())
    opt = torch.optim.Adam([{"params": [logits], "lr": lr}, {"params": [lam], "lr": lr_lambdas}])
    best = (math.inf, logits.detach().clone(), lam.detach().clone())
    for _ in range(steps + 1):
        opt.zero_grad()
        try:
            loss, _ = run(logits, lam)
        except ValueError:  # non-finite model output on a wild grid: stop, keep the best
            break
        v = float(loss)
        losses.append(v)
        if not math.isfinite(v):
            break
        if v < best[0]:
            best = (v, logits.detach().clone(), lam.detach().clone())
        if len(losses) > steps:
            break
        loss.backward()
        with torch.no_grad():
            lam.grad[0] = 0.0  # λ_0 multiplies nothing
        opt.step()
    with torch.no_grad():
        grid = explicit(grid_from_logits(best[1], sigma_max, floor))
    record = {
        "method": "learned_sgd",
        "init": init_label,
        "init_sigmas": init_grid.tolist(),
        "sigma_floor": floor,
        "steps": steps,
        "lr": lr,
        "lr_lambdas": lr_lambdas,
        "num_seeds": int(noise.shape[0]),
        "loss_init": losses[0] if losses else math.nan,
        "loss_best": best[0],
        "losses": losses,
        "reference_seconds": t_ref,
        "seconds": time.perf_counter() - t0,
    }
    if dp_record is not None:
        record["dp"] = dp_record
    return grid, best[2], record


# ---- fitted-solver files ----------------------------------------------------------------------
def _fitted(solver, grid, lam, record, denoiser) -> FittedSolver:
    return FittedSolver(
        solver=solver.config(),
        sigmas=grid,
        lambdas=lam,
        teacher={},
        model={"class": type(denoiser).__name__},
        metrics={"grid": record},
    )


def _refine_path(
    evaluate, path: list[int], m: int, max_evals: int, free_start: bool
) -> tuple[list[int], float, int]:
    """Coordinate descent on the node indices of ``path`` (its last node ``m`` fixed): move one
    node by ±1 fine point at a time while ``evaluate(path)`` decreases, at most ``max_evals``
    evaluations (the start counts). Returns the best path, its value and the evaluations made."""
    seen: dict[tuple[int, ...], float] = {}

    def value(p: list[int]) -> float:
        key = tuple(p)
        if key not in seen:
            seen[key] = evaluate(p)
        return seen[key]

    best = value(path)
    improved = True
    while improved and len(seen) < max_evals:
        improved = False
        for pos in range(0 if free_start else 1, len(path) - 1):
            for d in (-1, 1):
                cand = list(path)
                cand[pos] += d
                if cand[0] < 0 or any(a >= b for a, b in zip(cand[:-1], cand[1:])):
                    continue
                if tuple(cand) not in seen and len(seen) >= max_evals:
                    break
                v = value(cand)
                if v < best:
                    best, path, improved = v, cand, True
    return path, best, len(seen)


def learned_dp(
    denoiser: Denoiser,
    solver: Solver | str,
    nfe: int,
    noise: Tensor,
    *,
    teacher_factor: int = 10,
    fit: bool = True,
    refine_budget: float = 1.0,
    refine_seeds: int | None = 50,
    _with_teacher: bool = False,
    **options: Any,
) -> FittedSolver:
    """The DP-searched grid (:func:`dp_grid`, ``options`` are its settings) with λ fitted on it
    in closed form (``fit=False``: λ = 0, the base solver on the learned grid).

    The DP's cost is a first-order (Euler) step; the student is usually of higher order. So the
    DP's grid is then refined *with the student solver itself*: coordinate descent over the fine
    grid's points (one node ±1 fine point at a time) on the MSE of the student's final sample
    (with λ fitted on each candidate grid when ``fit``) to the teacher's, on the first
    ``refine_seeds`` fit seeds. Every evaluation reuses the DP's fine teacher states (no new
    teacher run), and the refinement stops after ``refine_budget`` × the fine teacher's model
    calls (counted in calls on the full batch; 0 turns it off).

    The λ targets are the DP's own fine teacher states at the grid's σ (no second teacher run),
    or, for solvers with stage points off the grid, :func:`dode.fit_lambdas`'s teacher (those
    solvers are refined without λ: only the final state is known at σ = 0)."""
    from .lambda_fit import LambdaFit, fit_lambdas
    from .sampling import sample

    solver = get_solver(solver)
    steps = solver.steps_for_nfe(nfe)
    if not (math.isfinite(refine_budget) and refine_budget >= 0):
        raise ValueError(f"refine_budget must be a number >= 0, got {refine_budget!r}.")
    t0 = time.perf_counter()
    grid, record, states, fine, xs = dp_grid(denoiser, steps, noise, return_states="all", **options)
    solver.check_grid(grid)
    staged = bool(len(solver.stage_sigmas(grid)))
    k = solver.nfe(steps)
    b = int(noise.shape[0])
    nb = b if refine_seeds is None else max(1, min(int(refine_seeds), b))
    with_lam = fit and not staged
    # model calls (full batch) per evaluation: the λ fit replays two branches (2k), sampling k
    per_eval = (3 if with_lam else 1) * k * nb / b
    max_evals = int(refine_budget * (len(fine) - 1) / per_eval)
    if max_evals >= 2 and steps >= 1:
        sub, target = noise[:nb], xs[-1][:nb].to(torch.float64)
        sub_states = [{float(f): x[:nb] for f, x in zip(fine, xs)}]

        def evaluate(path: list[int]) -> float:
            g = fine[path].clone()
            try:
                solver.check_grid(g)
                lam = LambdaFit(denoiser, solver, g, [sub], sub_states).run() if with_lam else None
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x = sample(denoiser, solver, sub, g, lam)
            except ValueError:
                return math.inf
            v = float(((x.to(torch.float64) - target) ** 2).mean())
            return v if math.isfinite(v) else math.inf

        path, value, evals = _refine_path(
            evaluate, list(record["indices"]), len(fine) - 1, max_evals,
            record["free_start"],
        )  # fmt: skip
        record["refine"] = {
            "indices_dp": record["indices"], "evaluations": evals, "budget": refine_budget,
            "seeds": nb, "objective": "final MSE" + (" with λ" if with_lam else ""),
            "value": value,
        }  # fmt: skip
        record["indices"] = path
        grid = fine[path].clone()
        states = {float(fine[i]): xs[i] for i in path[1:]}
    if fit and not staged:
        # the fine teacher already holds a state at every σ the student visits
        lam = LambdaFit(denoiser, solver, grid, [noise], [states]).run()
        record["lambda_teacher"] = "dp fine trajectory"
    elif fit:
        lam = fit_lambdas(denoiser, solver, noise, grid, teacher_factor, space="log")
        record["lambda_teacher"] = f"student solver, {teacher_factor}x refined grid"
    else:
        lam = torch.zeros(k, dtype=torch.float64)
    record["teacher_factor"] = teacher_factor
    record["fit_lambdas"] = fit
    record["total_seconds"] = time.perf_counter() - t0
    if _with_teacher:
        return _fitted(solver, grid, lam, record, denoiser), xs[-1]
    return _fitted(solver, grid, lam, record, denoiser)


def learned_sgd(
    denoiser: Denoiser, solver: Solver | str, nfe: int, noise: Tensor, **options: Any
) -> FittedSolver:
    """The grid and λ fitted jointly by gradients (:func:`sgd_grid`; ``options`` are its
    settings)."""
    solver = get_solver(solver)
    t0 = time.perf_counter()
    grid, lam, record = sgd_grid(denoiser, solver, solver.steps_for_nfe(nfe), noise, **options)
    record["total_seconds"] = time.perf_counter() - t0
    return _fitted(solver, grid, lam, record, denoiser)


def learned_schedule(
    denoiser: Denoiser,
    solver: Solver,
    schedule: str,
    num_steps: int,
    options: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, dict[str, Any]]:
    """The config hook: ``--model.schedule learned_dp|learned_sgd`` with its settings in
    ``--model.schedule_options`` (``seeds``, default ``"0-99"``, plus the keyword options of
    :func:`learned_dp` (those of :func:`dp_grid` and the refinement's) or :func:`sgd_grid`). Returns the grid and the record for the file's
    ``metrics["grid"]``; the module then fits λ on that grid as on any other."""
    from .noise import noise_from_seeds, parse_seeds

    if schedule not in LEARNED_SCHEDULES:
        raise ValueError(
            f"unknown learned schedule {schedule!r}; use {' or '.join(LEARNED_SCHEDULES)}."
        )
    opts = dict(options or {})
    seeds = parse_seeds(opts.pop("seeds", "0-99"))
    if denoiser.sample_shape is None:
        raise ValueError("a learned schedule needs the model's sample_shape to draw its seeds.")
    noise = noise_from_seeds(seeds, denoiser.sample_shape).to(dtype)
    try:
        if schedule == "learned_dp":
            fs = learned_dp(denoiser, solver, solver.nfe(num_steps), noise, **opts)
            grid, record = fs.sigmas, fs.metrics["grid"]
            record["lambdas"] = fs.lambdas.tolist()
        else:
            grid, lam, record = sgd_grid(denoiser, solver, num_steps, noise, **opts)
            record["lambdas"] = lam.tolist()
    except TypeError as e:
        raise ValueError(f"bad schedule_options for {schedule!r}: {e}") from None
    record["seeds"] = (
        f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else seeds
    )
    return grid, record
