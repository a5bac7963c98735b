"""Metrics: Fréchet distance between feature sets, trajectory error to the teacher.

The Inception FID lives in the Lightning callback and ``dode.evaluate`` (torchmetrics /
torch-fidelity); the functions here work on any features (pixels, a digits classifier's
penultimate layer, Inception pool3).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

__all__ = ["gaussian_stats", "frechet_distance", "frechet_distance_from_stats", "mse"]


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


def frechet_distance_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}) (Heusel et al., 2017)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("feature statistics have different dimensions.")
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1 @ sigma2, disp=False)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(sigma1.shape[0])
        covmean = linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance between two feature sets ``[N, F]`` and ``[M, F]``."""
    return frechet_distance_from_stats(*gaussian_stats(features_a), *gaussian_stats(features_b))


def mse(a: Tensor, b: Tensor) -> float:
    """Mean squared error, in float64."""
    return float(((a.to(torch.float64) - b.to(torch.float64)) ** 2).mean())
