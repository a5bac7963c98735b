"""λ-scale selection: how much of the fitted λ to use, by a sample-quality score.

:func:`select_scale` samples held-out noise with ``α · λ`` for each α and keeps the best
score; :func:`check_scales` and :func:`best_scale` are the one validation and the one choice
rule (also used by the Lightning ``FrechetCallback``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .denoisers import Denoiser
from .sampling import sample_many
from .solvers import Solver

__all__ = ["select_scale", "ScaleChoice", "check_scales", "best_scale"]


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
