"""Metrics: Fréchet distance between feature sets, errors to a reference (optionally in the
data range), and the bootstrap of a per-seed mean.

The Fréchet distance is computed here and only here (:mod:`dode.evaluation.fid` and the
``evaluate`` run use it for Inception features); it works on any features (pixels, a digits
classifier's penultimate layer, Inception pool3). This module imports no other dode module, so
the fit (:mod:`dode.learned_solver`) uses its clamp, per-seed MSE and bootstrap too.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "gaussian_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "FrechetReference",
    "mse",
    "check_clip",
    "clipped",
    "per_seed_mse",
    "bootstrap_means",
    "bootstrap_mean",
]


def gaussian_stats(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of features ``[N, F]``."""
    f = (
        torch.as_tensor(features)
        .detach()
        .to(torch.float64)
        .reshape(len(features), -1)
        .cpu()
        .numpy()
    )
    if f.shape[0] < 2:
        raise ValueError("need at least 2 feature vectors to estimate a covariance.")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(cov: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix (negative round-off clipped)."""
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _frechet(mu, cov, mu_r, sqrt_cov_r, trace_r) -> float:
    """‖μ − μr‖² + Tr Σ + Tr Σr − 2 Tr (R Σ R)^{1/2} with ``R = Σr^{1/2}``."""
    m = sqrt_cov_r @ cov @ sqrt_cov_r
    ev = np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)
    diff = mu - mu_r
    return float(diff @ diff + np.trace(cov) + trace_r - 2 * np.sqrt(ev).sum())


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}) (Heusel et al., 2017), in float64.

    ``Tr (Σ1 Σ2)^{1/2} = Tr (R Σ1 R)^{1/2}`` with ``R = Σ2^{1/2}``: the trace of a symmetric
    PSD matrix's square root, from two symmetric eigendecompositions (the one implementation
    behind :class:`FrechetReference` and :func:`dode.evaluation.fid.fid_from_stats`; equal to the general
    matrix square root formula, scipy's ``sqrtm`` as in torch-fidelity, up to rounding).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("feature statistics have different dimensions.")
    return _frechet(mu1, sigma1, mu2, _sqrt_psd(sigma2), float(np.trace(sigma2)))


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between two feature sets ``[N, F]`` and ``[M, F]``."""
    return frechet_distance_from_stats(*gaussian_stats(features_a), *gaussian_stats(features_b))


class FrechetReference:
    """A reference feature set's statistics, ready for many Fréchet distances to it.

    With ``R = Σr^{1/2}`` (symmetric, computed once), ``Tr (Σ Σr)^{1/2} = Tr (R Σ R)^{1/2}``, the
    trace of a symmetric PSD matrix's square root: one symmetric eigendecomposition per
    distance (the reference's square root is computed once); the same arithmetic as
    :func:`frechet_distance_from_stats`.

    Args:
        mu, cov: the reference's mean ``[F]`` and covariance ``[F, F]``.
    """

    def __init__(self, mu, cov) -> None:
        self.mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
        self.cov = np.atleast_2d(np.asarray(cov, dtype=np.float64))
        if self.cov.shape != (len(self.mu), len(self.mu)):
            raise ValueError(
                f"reference covariance has shape {self.cov.shape} but the mean has "
                f"{len(self.mu)} entries; pass the (mu, cov) of one feature set."
            )
        self.sqrt_cov = _sqrt_psd(self.cov)
        self.trace = float(np.trace(self.cov))

    @classmethod
    def from_features(cls, features) -> FrechetReference:
        return cls(*gaussian_stats(features))

    def distance(self, features=None, *, stats=None) -> float:
        """Fréchet distance of ``features [N, F]`` (or their ``stats=(mu, cov)``) to the reference."""
        if (features is None) == (stats is None):
            raise ValueError("pass either features or stats=(mu, cov).")
        mu, cov = gaussian_stats(features) if stats is None else stats
        mu, cov = np.atleast_1d(mu), np.atleast_2d(cov)
        if mu.shape != self.mu.shape or cov.shape != self.cov.shape:
            raise ValueError(
                f"features have dimension {mu.shape[0]} but the reference has {len(self.mu)}."
            )
        return _frechet(mu, cov, self.mu, self.sqrt_cov, self.trace)


def mse(a: Tensor, b: Tensor) -> float:
    """Mean squared error, in float64."""
    return float(((a.to(torch.float64) - b.to(torch.float64)) ** 2).mean())


def check_clip(clip) -> tuple[float, float] | None:
    """``clip`` as a data range ``(low, high)`` of floats, or ``None``; a ``ValueError`` names
    anything else."""
    if clip is None:
        return None
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"clip must be None or (low, high) with finite low < high (the data range, e.g. "
            f"(-1, 1) for images), got {clip!r}."
        )
    return lo, hi


def clipped(x: Tensor, clip: tuple[float, float] | None) -> Tensor:
    """``x`` in float64, clamped to the data range ``clip`` where given."""
    x = x.to(torch.float64)
    return x if clip is None else x.clamp(clip[0], clip[1])


def per_seed_mse(x: Tensor, ref: Tensor, clip: tuple[float, float] | None = None) -> Tensor:
    """Per-sample MSE ``[B]`` (float64) of ``x`` to ``ref``, both clamped to ``clip`` where
    given (as an image shows them)."""
    return ((clipped(x, clip) - clipped(ref, clip)) ** 2).flatten(1).mean(1)


def _finite_values(values: Tensor | np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(torch.as_tensor(values, dtype=torch.float64).cpu()).ravel()
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError(f"{what} needs a non-empty set of finite values.")
    return v


def _resampled_means(v: np.ndarray, num: int, seed: int) -> np.ndarray:
    idx = np.random.default_rng(seed).integers(0, v.size, size=(num, v.size))
    return v[idx].mean(1)


def bootstrap_means(values: Tensor | np.ndarray, *, num: int = 1000, seed: int = 0) -> np.ndarray:
    """``num`` means of ``values`` resampled with replacement (float64, seeded).

    Raises:
        ValueError: no values, or a non-finite one.
    """
    return _resampled_means(_finite_values(values, "bootstrap_means"), num, seed)


def bootstrap_mean(
    values: Tensor | np.ndarray, *, num: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """The mean of per-seed ``values`` and its percentile bootstrap interval.

    Returns:
        ``(mean, lo, hi)``.
    """
    v = _finite_values(values, "bootstrap_mean")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    means = _resampled_means(v, num, seed)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))
