"""Exact denoisers of Gaussian mixtures: a ground truth for solver tests."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Denoiser

__all__ = ["GaussianMixtureDenoiser", "gaussian"]


class GaussianMixtureDenoiser(Denoiser):
    """Exact posterior mean for data ``y ~ Σ_k w_k N(μ_k, Σ_k)`` (full covariances).

    ``x = y + σ n`` is then a mixture of ``N(μ_k, Σ_k + σ² I)`` and
    ``D(x, σ) = Σ_k r_k(x) [μ_k + Σ_k (Σ_k + σ² I)^{-1} (x − μ_k)]`` with responsibilities
    ``r_k``. Computed in the eigenbasis of each Σ_k, in the dtype of ``x``. Its probability-flow
    ODE is the exact one, so it is a ground truth for solver tests; with one component the ODE
    solution is known in closed form (:meth:`exact_solution`).
    """

    prediction = "x0"

    def __init__(
        self,
        means: Tensor,
        covs: Tensor,
        weights: Tensor | None = None,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sample_shape: tuple[int, ...] | None = None,
    ) -> None:
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if means.ndim != 2 or covs.shape != (*means.shape, means.shape[1]):
            raise ValueError(
                f"means must be [K, D] and covs [K, D, D]; got {tuple(means.shape)} and "
                f"{tuple(covs.shape)}."
            )
        K, D = means.shape
        super().__init__(sigma_min, sigma_max, sample_shape or (D,))
        w = (
            torch.full((K,), 1.0 / K, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        if w.shape != (K,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError("weights must be K non-negative numbers with a positive sum.")
        evals, evecs = torch.linalg.eigh((covs + covs.transpose(1, 2)) / 2)
        if (evals < -1e-10).any():
            raise ValueError("covariances must be positive semi-definite.")
        self.register_buffer("means", means)
        self.register_buffer("evals", evals.clamp(min=0))
        self.register_buffer("evecs", evecs)
        self.register_buffer("log_weights", (w / w.sum()).log())

    @classmethod
    def fit(
        cls,
        data: Tensor,
        n_components: int = 20,
        seed: int = 0,
        reg_covar: float = 1e-3,
        **kwargs,
    ) -> GaussianMixtureDenoiser:
        """Fit a full-covariance mixture to ``data`` [N, ...] with scikit-learn."""
        from sklearn.mixture import GaussianMixture

        data = torch.as_tensor(data, dtype=torch.float64)
        flat = data.reshape(len(data), -1).numpy()
        gm = GaussianMixture(
            n_components, covariance_type="full", random_state=seed, reg_covar=reg_covar
        )
        gm.fit(flat)
        return cls(
            torch.from_numpy(gm.means_),
            torch.from_numpy(gm.covariances_),
            torch.from_numpy(gm.weights_),
            sample_shape=tuple(data.shape[1:]),
            **kwargs,
        )

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        shape = x.shape
        xf = x.reshape(shape[0], -1)
        dt = xf.dtype
        mu, lam, U = (b.to(dt) for b in (self.means, self.evals, self.evecs))
        s2 = sigma.reshape(-1, 1, 1).to(dt) ** 2  # [B,1,1]
        z = torch.einsum("kde,bke->bkd", U.transpose(1, 2), xf[:, None, :] - mu[None])  # [B,K,D]
        var = lam[None] + s2  # [B,K,D]
        logp = -0.5 * ((z**2) / var).sum(-1) - 0.5 * var.log().sum(-1) + self.log_weights.to(dt)
        r = torch.softmax(logp, dim=1)  # [B,K]
        shrunk = z * (lam[None] / var)  # Σ(Σ+σ²I)^{-1}(x−μ) in eigenbasis
        post = mu[None] + torch.einsum("kde,bke->bkd", U, shrunk)  # [B,K,D]
        return (r[..., None] * post).sum(1).reshape(shape)

    def exact_solution(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """Closed-form probability-flow ODE solution (single component only):
        ``x(σ') − μ = U diag(sqrt((λ+σ'²)/(λ+σ²))) Uᵀ (x(σ) − μ)``."""
        if self.means.shape[0] != 1:
            raise ValueError("exact_solution needs a single-component (Gaussian) denoiser.")
        shape = x.shape
        xf = x.reshape(shape[0], -1)
        dt = xf.dtype
        mu, lam, U = self.means[0].to(dt), self.evals[0].to(dt), self.evecs[0].to(dt)
        z = (xf - mu) @ U
        z = z * ((lam + sigma_to**2) / (lam + sigma_from**2)).sqrt()
        return (mu + z @ U.T).reshape(shape)


def gaussian(mean: Tensor, cov: Tensor, **kwargs) -> GaussianMixtureDenoiser:
    """A single Gaussian N(mean, cov) as an exact denoiser."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    return GaussianMixtureDenoiser(mean[None], cov[None], **kwargs)
