"""The fidelity-first judge: how close a few-step sampler lands to the converged solution.

A few-step sampler integrates the same probability-flow ODE as a many-step one, from the same
noise; its job is to land where the converged solution lands. So the primary measure of a
(solver, grid, λ) cell is the MSE (and PSNR) of its final samples to a *converged reference*
from the same noise, with a bootstrap 95 % interval over seeds; a distribution distance
(FD-digits, the shipped digits classifier's features) is the second measure, with its own
bootstrap interval. Both need no Lightning.

* :class:`SeedSplit`: fit, selection and held-out seeds, checked disjoint (cells are fitted on
  the fit seeds, chosen on the selection seeds and judged on the held-out ones).
* :func:`converged_reference`: a high-order solver at ≥ 100 NFE from the model's σ_max
  (:func:`dode.standard_grids.reference_solution`: DPM-Solver++(3M) on a Karras grid over the model's
  whole σ range; a flow model starts at t = 1 − 1/1000), checked by halving its steps: the
  MSE between the two runs bounds the reference's own error.
* :class:`FidelityJudge`: one model (``digits``, ``digits-cond`` at any w with labels from the
  seed, ``digits-flow``, an exact Gaussian mixture, any :class:`~dode.denoisers.Denoiser`) on
  one seed set; :meth:`FidelityJudge.score` gives MSE, PSNR and FD with intervals.
* :func:`best_free_cell`: the best learning-free (solver, grid) cell at an NFE by the judge's
  MSE, over every given solver and grid (default: :func:`dode.standard_grids.standard_grids`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..metrics import bootstrap_mean, check_clip, per_seed_mse
from ..noise import noise_from_seeds
from ..solvers import Solver, get_solver
from ..standard_grids import GridSpec, model_sigma_range, reference_solution, standard_grids

__all__ = [
    "SeedSplit",
    "Reference",
    "Score",
    "FidelityJudge",
    "CellChoice",
    "bind_seeds",
    "converged_reference",
    "best_free_cell",
    "psnr",
]


# ---- seeds ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedSplit:
    """Fit, selection and held-out seeds; any overlap is refused.

    Attributes:
        fit: seeds a learned solver is fitted on.
        select: seeds cells and fits are chosen (accepted) on.
        held: seeds the chosen cells are judged on (MSE, PSNR and FD).
    """

    fit: tuple[int, ...]
    select: tuple[int, ...]
    held: tuple[int, ...]

    def __post_init__(self) -> None:
        named = {"fit": self.fit, "select": self.select, "held": self.held}
        for name, seeds in named.items():
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"the {name} seeds repeat a seed; give each seed once.")
            if not seeds:
                raise ValueError(f"the {name} seed set is empty; give at least one seed.")
        names = list(named)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                both = sorted(set(named[a]) & set(named[b]))
                if both:
                    raise ValueError(
                        f"the {a} and {b} seeds overlap ({len(both)} seeds, e.g. {both[:3]}): "
                        "a cell chosen or fitted on a seed must be judged on others; use "
                        "disjoint ranges (e.g. SeedSplit.ranges)."
                    )

    @classmethod
    def ranges(cls, fit: int, select: int, held: int) -> SeedSplit:
        """``fit`` seeds from 0, ``select`` from 3,000,000 and ``held`` from 1,000,000."""
        for name, n in (("fit", fit), ("select", select), ("held", held)):
            if not (isinstance(n, int) and 0 < n <= 1_000_000):
                raise ValueError(f"{name} must be a seed count in 1..1,000,000, got {n!r}.")
        return cls(
            tuple(range(fit)),
            tuple(range(3_000_000, 3_000_000 + select)),
            tuple(range(1_000_000, 1_000_000 + held)),
        )

    def describe(self) -> str:
        def rng(s: tuple[int, ...]) -> str:
            if list(s) == list(range(s[0], s[0] + len(s))):
                return f"{s[0]}-{s[-1]}"
            return f"{len(s)} seeds"

        return f"fit {rng(self.fit)}, select {rng(self.select)}, held-out {rng(self.held)}"


def bind_seeds(denoiser, seeds: Sequence[int], guidance_scale: float = 1.0):
    """``denoiser`` for the samples of ``seeds``: a conditional model bound to the class labels
    ``seed mod 10`` (the digits convention) at ``guidance_scale``; any other model as is."""
    if getattr(denoiser, "conditional", False):
        labels = torch.tensor(list(seeds), dtype=torch.long) % 10
        return denoiser.bind(labels, guidance_scale=guidance_scale)
    if guidance_scale != 1:
        raise ValueError(
            f"guidance_scale {guidance_scale:g} needs a conditional model; "
            f"{type(denoiser).__name__} is unconditional (use 1)."
        )
    return denoiser


# ---- statistics -------------------------------------------------------------------------------
def psnr(mse: float, peak_to_peak: float = 2.0) -> float:
    """PSNR in dB of a mean squared error for images in a range of width ``peak_to_peak``
    (2 for [-1, 1])."""
    return math.inf if mse <= 0 else 10 * math.log10(peak_to_peak**2 / mse)


# ---- the reference ----------------------------------------------------------------------------
@dataclass
class Reference:
    """A converged solution and how converged it is.

    Attributes:
        samples: the solution ``[B, ...]`` (float64).
        nfe: its model calls per sample.
        halving_mse: mean squared difference to the same solver at half the steps; the
            reference's own error is at most about this (less by 2^order for a high-order
            solver).
        seconds: wall time of the reference run (without the halving check).
    """

    samples: Tensor
    nfe: int
    halving_mse: float
    seconds: float


def converged_reference(
    denoiser,
    noise: Tensor,
    *,
    nfe: int = 100,
    check: bool = True,
    batch_size: int | None = None,
) -> Reference:
    """The converged solution of ``denoiser``'s ODE from ``noise`` (standard normal), with its
    halving check (see :class:`Reference`). ``nfe`` must be ≥ 100 unless the caller knows the
    model converges sooner (tests); the check runs ``nfe // 2`` calls from the same noise."""
    if not isinstance(nfe, int) or nfe < 4:
        raise ValueError(f"the reference needs nfe >= 4 (>= 100 to judge), got {nfe!r}.")
    t0 = time.perf_counter()
    ref = reference_solution(denoiser, noise, nfe=nfe, batch_size=batch_size).to(torch.float64)
    seconds = time.perf_counter() - t0
    half = math.nan
    if check:
        coarse = reference_solution(denoiser, noise, nfe=nfe // 2, batch_size=batch_size)
        half = float(((coarse.to(torch.float64) - ref) ** 2).mean())
    return Reference(ref, nfe, half, seconds)


# ---- the judge --------------------------------------------------------------------------------
@dataclass
class Score:
    """A cell's samples judged against the reference (and, if set up, FD).

    MSE is per element, averaged over each sample, then over seeds; its interval is a bootstrap
    over seeds, and PSNR (images in [-1, 1]) maps the MSE and its interval. ``fd`` and its
    interval are ``nan`` where no features were given.
    """

    mse: float
    mse_lo: float
    mse_hi: float
    psnr: float
    psnr_lo: float
    psnr_hi: float
    fd: float = math.nan
    fd_lo: float = math.nan
    fd_hi: float = math.nan
    per_seed: Tensor | None = field(default=None, repr=False)
    #: the MSE without clamping to the judge's ``clip`` range (equal to ``mse`` without one)
    mse_raw: float = math.nan

    def row(self, prefix: str = "") -> dict[str, float]:
        keys = ("mse", "mse_lo", "mse_hi", "psnr", "psnr_lo", "psnr_hi", "fd", "fd_lo", "fd_hi")
        return {f"{prefix}{k}": getattr(self, k) for k in keys}


class FidelityJudge:
    """Judge samplers of one model on one seed set by fidelity to the converged reference.

    Args:
        denoiser: the model; a conditional one is bound to ``seed mod 10`` at
            ``guidance_scale`` (:func:`bind_seeds`).
        seeds: the seeds judged (standard-normal noise of the model's ``sample_shape`` per
            seed, :func:`dode.noise.noise_from_seeds`).
        guidance_scale: the CFG scale of a conditional model.
        reference_nfe: model calls of the converged reference (≥ 100 to judge).
        check_reference: run the halving check (:func:`converged_reference`).
        features: ``features(samples) -> [B, F]`` for the Fréchet distance (e.g. the digits
            classifier's), or ``None`` (no FD).
        fd_reference: the statistics FD is measured against (e.g. held-out real digits);
            needs ``features``.
        bootstrap: bootstrap resamples of the MSE interval (the FD interval takes
            ``max(100, bootstrap // 5)``, each a covariance and a matrix square root).
        dtype: the noise's dtype (the model's integration dtype).
        batch_size: samples per batch when sampling (default: all at once).
        clip: the data range ``(low, high)`` the MSE clamps samples and reference to, as an
            image shows them (``(-1, 1)`` for pixel models); ``None``: unclamped (latents).
            The unclamped MSE stays in :attr:`Score.mse_raw`.
    """

    def __init__(
        self,
        denoiser,
        seeds: Sequence[int],
        *,
        guidance_scale: float = 1.0,
        reference_nfe: int = 100,
        check_reference: bool = True,
        features: Callable[[Tensor], Tensor] | None = None,
        fd_reference=None,
        bootstrap: int = 1000,
        dtype: torch.dtype = torch.float32,
        batch_size: int | None = None,
        clip: tuple[float, float] | None = None,
    ) -> None:
        self.clip = check_clip(clip)
        if reference_nfe < 100 and check_reference:
            raise ValueError(
                f"the judge's reference needs >= 100 NFE, got {reference_nfe}; pass "
                "check_reference=False only for a model known to converge sooner (tests)."
            )
        if (fd_reference is None) != (features is None):
            raise ValueError("FD needs both features and fd_reference (or neither).")
        shape = getattr(denoiser, "sample_shape", None)
        if shape is None:
            raise ValueError("the judge needs the model's sample_shape to draw the seeds' noise.")
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("the judge's seed set is empty; give at least one seed.")
        if len(set(self.seeds)) != len(self.seeds):
            seen: set[int] = set()
            twice = sorted({s for s in self.seeds if s in seen or seen.add(s)})
            raise ValueError(
                f"the judge's seeds repeat seed {twice[0]} ({len(twice)} repeated in all): a "
                "repeated seed would count twice in the intervals; give each seed once."
            )
        self.base = denoiser
        self.denoiser = bind_seeds(denoiser, self.seeds, guidance_scale)
        self.guidance_scale = guidance_scale
        self.noise = noise_from_seeds(self.seeds, shape, dtype=dtype)
        self.features = features
        self.fd_reference = fd_reference
        self.bootstrap = int(bootstrap)
        self.batch_size = batch_size
        self.reference = converged_reference(
            self.denoiser, self.noise, nfe=reference_nfe, check=check_reference,
            batch_size=batch_size,
        )  # fmt: skip
        self._ref_score: Score | None = None
        #: where the reference starts: the model's σ_max (a flow model's: t = 1 − 1/1000)
        self.reference_start = model_sigma_range(self.denoiser)[1]

    def sample(self, solver: Solver | str, sigmas: Tensor, lambdas: Tensor | None = None) -> Tensor:
        """The final samples of ``solver`` on ``sigmas`` (with ``lambdas``) from the seeds."""
        from ..sampling import sample_many

        with torch.no_grad():
            (x,) = sample_many(
                self.denoiser, get_solver(solver), self.noise, sigmas, [lambdas],
                batch_size=self.batch_size,
            )  # fmt: skip
        return x

    def mse_per_seed(self, samples: Tensor, *, clip: bool = True) -> Tensor:
        """Per-seed MSE ``[B]`` (float64) of ``samples`` to the reference, both clamped to the
        judge's ``clip`` range unless ``clip=False``."""
        ref = self.reference.samples
        if samples.shape != ref.shape:
            raise ValueError(
                f"samples have shape {tuple(samples.shape)} but the reference "
                f"{tuple(ref.shape)}; sample the judge's own seeds (FidelityJudge.sample)."
            )
        return per_seed_mse(samples, ref, self.clip if clip else None)

    def score(self, samples: Tensor, *, fd: bool = True) -> Score:
        """MSE/PSNR to the reference (and FD if set up and ``fd``) with 95 % intervals.

        Raises:
            ValueError: samples of another shape, or non-finite samples (naming their seeds).
        """
        per = self.mse_per_seed(samples)
        bad = (~torch.isfinite(samples.reshape(len(samples), -1)).all(1)).nonzero().flatten()
        if len(bad):
            shown = ", ".join(str(self.seeds[i]) for i in bad[:5].tolist())
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise ValueError(
                f"{len(bad)} of {len(samples)} samples hold NaN or inf (seeds {shown}{more}): "
                "the sampler diverged on them; check the solver, grid and λ that made them."
            )
        m, lo, hi = bootstrap_mean(per, num=self.bootstrap)
        raw = float(self.mse_per_seed(samples, clip=False).mean()) if self.clip else m
        out = Score(m, lo, hi, psnr(m), psnr(hi), psnr(lo), per_seed=per, mse_raw=raw)
        if fd and self.features is not None:
            out.fd, out.fd_lo, out.fd_hi = self.fd(samples)
        return out

    def score_cell(
        self, solver: Solver | str, sigmas: Tensor, lambdas: Tensor | None = None, *, fd=True
    ) -> Score:
        """:meth:`score` of :meth:`sample`."""
        return self.score(self.sample(solver, sigmas, lambdas), fd=fd)

    def fd(self, samples: Tensor) -> tuple[float, float, float]:
        """The Fréchet distance of the samples' features to ``fd_reference`` and its bootstrap
        95 % interval over seeds: ``(fd, lo, hi)``.

        FD on a resample with repeats is biased upwards (fewer distinct samples: a noisier
        covariance), by much more than the spread at a few hundred seeds; so the percentile
        interval is shifted by the bootstrap's bias estimate (mean of the resampled FDs minus
        the point estimate), the percentile interval of the bias-corrected estimate."""
        from ..metrics import gaussian_stats

        if self.features is None:
            raise ValueError("this judge has no features; pass features= and fd_reference=.")
        f = np.asarray(torch.as_tensor(self.features(samples), dtype=torch.float64).cpu())
        point = self.fd_reference.distance(f)
        rng = np.random.default_rng(1)
        num = max(100, self.bootstrap // 5)
        boots = [
            self.fd_reference.distance(stats=gaussian_stats(f[rng.integers(0, len(f), len(f))]))
            for _ in range(num)
        ]
        bias = float(np.mean(boots)) - point
        lo, hi = np.quantile(boots, 0.025) - bias, np.quantile(boots, 0.975) - bias
        return point, float(lo), float(hi)

    def reference_score(self) -> Score:
        """The reference's own FD (the teacher's) with its interval; MSE 0 by definition."""
        if self._ref_score is None:
            self._ref_score = self.score(self.reference.samples)
        return self._ref_score


# ---- the baseline to beat ---------------------------------------------------------------------
@dataclass
class CellChoice:
    """The outcome of :func:`best_free_cell`.

    Attributes:
        label: ``"<solver label> / <grid label>"`` of the best cell.
        solver_label: the solver's label (key of the ``solvers`` mapping).
        solver: the solver.
        grid: the grid's :class:`~dode.standard_grids.GridSpec`.
        sigmas: the grid at the NFE.
        mse: the best cell's MSE on the judge's seeds.
        scores: ``label -> MSE`` of every cell tried (``inf`` where it failed).
    """

    label: str
    solver_label: str
    solver: Solver
    grid: GridSpec
    sigmas: Tensor
    mse: float
    scores: dict[str, float]


def default_solvers() -> dict[str, Solver]:
    """Every solver family at its usual orders, one model call per step where the family
    allows it (Heun and DPM-Solver's singlestep stages cost more per step: they compete at
    the same NFE)."""
    return {
        "DDIM": get_solver("ddim"),
        "Euler (x0)": get_solver("euler"),
        "EDM-Heun": get_solver("heun"),
        "iPNDM": get_solver("ipndm"),
        "DPM-Solver-2": get_solver("dpm_solver", order=2, stages="grid"),
        "DPM-Solver++(2M)": get_solver("dpm_solver_pp", order=2),
        "DPM-Solver++(3M)": get_solver("dpm_solver_pp", order=3),
        "DEIS": get_solver("deis"),
        "UniPC": get_solver("unipc"),
    }


def best_free_cell(
    judge: FidelityJudge,
    nfe: int,
    *,
    solvers: Mapping[str, Solver] | None = None,
    grids: Sequence[GridSpec] | None = None,
) -> CellChoice:
    """The learning-free (solver, grid) cell with the lowest MSE to ``judge``'s reference at
    ``nfe`` model calls (choose on selection seeds; judge the choice on held-out seeds).

    Args:
        judge: the judge on the selection seeds.
        nfe: model calls; each solver gets ``solver.steps_for_nfe(nfe)`` steps (cells whose
            solver cannot make exactly ``nfe`` calls, or whose grid cannot be built or sampled,
            score ``inf``).
        solvers: label → solver (default: :func:`default_solvers`).
        grids: the grid family (default: :func:`dode.standard_grids.standard_grids` of the model).
    """
    solvers = dict(default_solvers() if solvers is None else solvers)
    grids = list(standard_grids(judge.base) if grids is None else grids)
    if not solvers or not grids:
        raise ValueError("best_free_cell needs at least one solver and one grid.")
    scores: dict[str, float] = {}
    best: tuple[float, str, str, GridSpec, Tensor] | None = None
    for sl, solver in solvers.items():
        try:
            steps = solver.steps_for_nfe(nfe)
        except ValueError:
            continue
        if solver.nfe(steps) != nfe:
            continue
        for spec in grids:
            label = f"{sl} / {spec.label}"
            try:
                s = spec.build(steps)
                solver.check_grid(s)
                v = float(judge.mse_per_seed(judge.sample(solver, s)).mean())
            except ValueError:
                v = math.inf
            v = v if math.isfinite(v) else math.inf
            scores[label] = v
            if best is None or v < best[0]:
                best = (v, label, sl, spec, s)
    if best is None or not math.isfinite(best[0]):
        raise ValueError(f"no (solver, grid) cell works at NFE {nfe}; check the candidates.")
    v, label, sl, spec, s = best
    return CellChoice(label, sl, solvers[sl], spec, s, v, scores)


def describe_reference(ref: Reference, name: str = "reference") -> dict[str, Any]:
    """A JSON-friendly summary of a :class:`Reference`."""
    return {
        f"{name}_nfe": ref.nfe,
        f"{name}_halving_mse": ref.halving_mse,
        f"{name}_seconds": ref.seconds,
    }
