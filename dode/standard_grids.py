"""The standard σ-grid family of a model, and picking the best grid per (solver, NFE).

A few-step sampler is only as good as its grid, and which grid is best depends on the solver,
the NFE and the score (issue 14: UniPC at NFE 8 on the digits DDPM is 8× closer to the
converged solution on the "trailing" grid than on "leading"). :func:`standard_grids` lists
the usual candidates for a model:

* uniform in the discrete timestep of a DDPM table: ``leading`` (DDIM "uniform"),
  ``trailing``, ``linspace``; DDIM's ``quadratic`` skip (DDPM models only);
* Karras ρ = 7 with σ_max ∈ {80, the model's max} and σ_min ∈ {the model's min, 0.002};
* uniform in log-SNR over the same ranges;
* flow models (σ_max = ∞, :class:`~dode.denoisers.FlowDenoiser`): shifted-uniform flow grids,
  uniform in flow time t and shifted as SD3/FLUX shift (:func:`dode.grids.schedules.flow_sigmas`,
  shifts :data:`FLOW_SHIFTS`), all starting at the same finite σ (:data:`FLOW_SIGMA_MAX`, the
  t = 1 − 1/1000 of diffusers' multistep flow schedulers) and ending in a step to 0;
* every one of those also as a *jump* variant: the first N points of the family's N + 1-step
  grid, so the last step goes straight to 0 from a larger σ (no model call is spent at σ_min).

:func:`select_grid` samples the selection noise on every candidate and keeps the grid with the
lowest score: by default the MSE to a converged solution of the same ODE from the same noise
(:func:`reference_solution`), or any ``score(samples) -> float``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .grids.schedules import explicit, flow_sigmas, karras, log_uniform, quadratic, time_uniform
from .solvers import Solver, get_solver

__all__ = [
    "FLOW_SHIFTS",
    "FLOW_SIGMA_MAX",
    "GridSpec",
    "GridChoice",
    "standard_grids",
    "reference_solution",
    "select_grid",
    "model_sigma_range",
    "flow_grid",
]

FLOW_SIGMA_MAX = 999.0
"""Where grids of a flow model (σ_max = ∞) start: σ at flow time t = 1 − 1/1000."""
FLOW_SHIFTS = (0.5, 1.0, 3.0, 6.0)
"""The time shifts of the standard flow grids (SD3 uses 3; FLUX's μ = 0.5–1.15 is 1.6–3.2)."""


def model_sigma_range(denoiser) -> tuple[float, float]:
    """The finite σ range a grid of ``denoiser`` spans: ``(max(σ_min, 1e-6), σ_max)``, with
    σ_max = :data:`FLOW_SIGMA_MAX` for a flow model (whose σ_max is ∞)."""
    lo, hi = float(denoiser.sigma_min), float(denoiser.sigma_max)
    return max(lo, 1e-6), (hi if math.isfinite(hi) else FLOW_SIGMA_MAX)


def flow_grid(num_steps: int, shift: float = 1.0, sigma_max: float = FLOW_SIGMA_MAX) -> Tensor:
    """A shifted-uniform flow grid that starts at ``sigma_max``: unshifted flow times
    ``u_0 · k / N`` (k = N … 1, as diffusers' ``use_flow_sigmas`` multistep schedulers space
    them) with ``u_0`` chosen so that the shifted first point is ``sigma_max``, shifted by
    ``shift`` (:func:`dode.grids.schedules.flow_sigmas`), then 0.
    """
    if not (math.isfinite(sigma_max) and sigma_max > 0):
        raise ValueError(f"sigma_max must be finite and > 0, got {sigma_max}.")
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be finite and > 0, got {shift}.")
    s0 = sigma_max / shift  # σ' = shift · σ
    u0 = s0 / (1 + s0)
    times = u0 * torch.arange(num_steps, 0, -1, dtype=torch.float64) / num_steps
    return flow_sigmas(times=times, shift=shift)


_BUILDERS: dict[str, Callable[..., Tensor]] = {
    "karras": karras,
    "log_uniform": log_uniform,
    "time_uniform": time_uniform,
    "quadratic": quadratic,
    "flow": flow_grid,
}


@dataclass(frozen=True)
class GridSpec:
    """One member of the grid family: a named schedule with its options.

    Args:
        schedule: ``karras``, ``log_uniform``, ``time_uniform``, ``quadratic``, ``flow``
            (:func:`flow_grid`) or ``explicit``
            (``options={"sigmas": [...]}``, a fixed number of steps).
        options: the schedule's keyword options (σ range, ρ, spacing, ᾱ table, ...).
        jump: build the ``N + 1``-step grid and drop its smallest non-zero σ, so the last step
            goes to 0 from a larger σ.
        label: a short name (``karras(0.01-157)``, ``trailing+jump``, ...).
    """

    schedule: str
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    jump: bool = False
    label: str = ""

    def build(self, num_steps: int) -> Tensor:
        """The grid with ``num_steps`` intervals: descending σ, a final 0."""
        if self.schedule not in _BUILDERS and self.schedule != "explicit":
            raise ValueError(
                f"unknown grid schedule {self.schedule!r}; use one of {sorted(_BUILDERS)}."
            )
        if self.schedule == "explicit":
            s = explicit(self.options["sigmas"])
            if len(s) - 1 != num_steps:
                raise ValueError(
                    f"the explicit grid {self.label!r} has {len(s) - 1} steps, not {num_steps}."
                )
            return s
        fn = _BUILDERS[self.schedule]
        if not self.jump:
            return fn(num_steps, **self.options)
        longer = fn(num_steps + 1, **self.options)
        return explicit(torch.cat([longer[:-2], longer[-1:]]))

    def describe(self) -> dict[str, Any]:
        """JSON-friendly record (the ᾱ table is left out)."""
        opts = {k: v for k, v in self.options.items() if k != "alphas_cumprod"}
        return {"label": self.label, "schedule": self.schedule, "options": opts, "jump": self.jump}


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def standard_grids(denoiser, *, jump: bool = True) -> list[GridSpec]:
    """The standard grid family for ``denoiser`` (see the module docstring).

    Args:
        denoiser: the model; its ``sigma_min``/``sigma_max`` set the σ ranges
            (:func:`model_sigma_range`), its ``alphas_cumprod`` (diffusers DDPM models) enables
            the time-uniform and quadratic grids, and an infinite ``sigma_max`` (a flow model)
            the shifted-uniform flow grids.
        jump: also list the variants that end in a direct step to 0 from a larger σ.
    """
    lo_model, hi_model = model_sigma_range(denoiser)
    specs: list[GridSpec] = []
    if not math.isfinite(float(denoiser.sigma_max)):
        for shift in FLOW_SHIFTS:
            specs.append(
                GridSpec(
                    "flow", {"shift": shift, "sigma_max": hi_model}, False, f"flow(shift={shift:g})"
                )
            )
    table = getattr(denoiser, "alphas_cumprod", None)
    if table is not None:
        table = table.detach().cpu().to(torch.float64)
        for spacing in ("leading", "trailing", "linspace"):
            specs.append(
                GridSpec(
                    "time_uniform", {"alphas_cumprod": table, "spacing": spacing}, False, spacing
                )
            )
        specs.append(GridSpec("quadratic", {"alphas_cumprod": table}, False, "quadratic"))
    his = sorted({hi for hi in (80.0, hi_model) if hi <= hi_model}, reverse=True)
    los = sorted({lo for lo in (lo_model, 0.002)})
    for name, short in (("karras", "karras"), ("log_uniform", "logsnr")):
        for hi in his:
            for lo in los:
                if not lo < hi:
                    continue
                opts: dict[str, Any] = {"sigma_min": lo, "sigma_max": hi}
                if name == "karras":
                    opts["rho"] = 7.0
                specs.append(GridSpec(name, opts, False, f"{short}({_fmt(lo)}-{_fmt(hi)})"))
    if jump:
        specs += [
            GridSpec(s.schedule, s.options, True, f"{s.label}+jump")
            for s in list(specs)
            if not (s.schedule == "time_uniform" and s.options.get("spacing") == "trailing")
        ]
    return specs


@torch.no_grad()
def reference_solution(
    denoiser,
    noise: Tensor,
    *,
    solver: Solver | str = "dpm_solver_pp",
    solver_options: dict[str, Any] | None = None,
    nfe: int = 40,
    sigmas: Tensor | None = None,
    batch_size: int | None = None,
) -> Tensor:
    """A converged solution of the probability-flow ODE from ``noise``.

    Default: DPM-Solver++(3M) with 40 model calls on a Karras grid (ρ = 7) over the model's
    whole σ range, so it starts where the model's ODE starts (``σ_max`` of the model;
    :data:`FLOW_SIGMA_MAX` for a flow model, see :func:`model_sigma_range`).
    """
    from .sampling import sample_many

    opts = dict(solver_options or {})
    if isinstance(solver, str) and solver == "dpm_solver_pp":
        opts.setdefault("order", 3)
    solver = get_solver(solver, **opts) if isinstance(solver, str) else solver
    if sigmas is None:
        sigmas = karras(solver.steps_for_nfe(nfe), *model_sigma_range(denoiser))
    (x,) = sample_many(denoiser, solver, noise, sigmas, [None], batch_size=batch_size)
    return x


@dataclass
class GridChoice:
    """The outcome of :func:`select_grid`.

    Attributes:
        spec: the chosen grid's :class:`GridSpec`.
        sigmas: the chosen grid.
        scores: label → score for every candidate tried (lower is better; ``inf`` for a
            candidate that failed or scored non-finite).
        errors: label → why a candidate could not be built or sampled.
    """

    spec: GridSpec
    sigmas: Tensor
    scores: dict[str, float]
    errors: dict[str, str] = field(default_factory=dict)


def select_grid(
    denoiser,
    solver: Solver | str,
    nfe: int,
    noise: Tensor,
    *,
    grids: Sequence[GridSpec] | None = None,
    score: Callable[[Tensor], float] | None = None,
    reference: Tensor | None = None,
    lambdas: Callable[[Tensor], Tensor | None] | None = None,
    batch_size: int | None = None,
) -> GridChoice:
    """Pick the grid on which ``solver`` at ``nfe`` model calls scores best on ``noise``.

    Args:
        denoiser: the model.
        solver: the solver (instance or name).
        nfe: the number of model calls; each candidate is built with
            ``solver.steps_for_nfe(nfe)`` steps.
        noise: standard-normal selection noise (seeds used nowhere else).
        grids: the candidates (default: :func:`standard_grids`).
        score: ``score(samples) -> float``, lower is better. Default: the MSE to ``reference``.
        reference: the converged solution on ``noise`` (default: :func:`reference_solution`;
            computed only when ``score`` is not given).
        lambdas: ``lambdas(sigmas)`` → the λ to sample with on that grid (``None``: the base
            solver), e.g. a closed-form fit per grid.
        batch_size: samples per batch when sampling.

    Returns:
        A :class:`GridChoice`; ties go to the first candidate listed.
    """
    from .sampling import sample_many

    solver = get_solver(solver) if isinstance(solver, str) else solver
    steps = solver.steps_for_nfe(nfe)
    grids = list(standard_grids(denoiser) if grids is None else grids)
    if not grids:
        raise ValueError("select_grid needs at least one candidate grid; pass grids=[...].")
    labels = [g.label or f"grid{i}" for i, g in enumerate(grids)]
    if len(set(labels)) != len(labels):
        raise ValueError(f"candidate grid labels must be unique, got {labels}.")
    if score is None:
        ref = (
            reference_solution(denoiser, noise, batch_size=batch_size)
            if reference is None
            else reference
        )

        def score(x: Tensor) -> float:
            return float(((x.double() - ref.double()) ** 2).mean())

    scores: dict[str, float] = {}
    errors: dict[str, str] = {}
    built: dict[str, Tensor] = {}
    for label, spec in zip(labels, grids):
        try:
            s = spec.build(steps)
            solver.check_grid(s)
            lam = lambdas(s) if lambdas is not None else None
            with torch.no_grad():
                (x,) = sample_many(denoiser, solver, noise, s, [lam], batch_size=batch_size)
            v = float(score(x))
        except ValueError as e:
            errors[label] = str(e)
            v = math.inf
        scores[label] = v if math.isfinite(v) else math.inf
        if label not in errors:
            built[label] = s
    best = min(labels, key=lambda k: scores[k])
    if best not in built:
        raise ValueError(
            f"no candidate grid works for {solver.describe()} at NFE {nfe}: "
            + "; ".join(f"{k}: {v}" for k, v in errors.items())
        )
    return GridChoice(grids[labels.index(best)], built[best], scores, errors)
