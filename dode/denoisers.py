"""Denoisers in σ-space: ``D(x, σ) → x̂0`` and ``ε̂(x, σ) = (x − D(x, σ)) / σ``.

A denoiser predicts one of the two natively (``prediction``); the other is derived, so a
solver that consumes the native quantity never pays for a round trip.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from .schedules import vp_sigmas

__all__ = [
    "Denoiser",
    "CallableDenoiser",
    "DiffusersDenoiser",
    "GaussianMixtureDenoiser",
    "as_sigma",
]


def as_sigma(sigma: float | Tensor, x: Tensor) -> Tensor:
    """σ as a tensor of ``x``'s dtype/device, broadcastable against ``x`` (shape [B, 1, ...])."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(
            f"sigma must be a scalar or have shape [{x.shape[0]}] (one per sample), got "
            f"{tuple(s.shape)}."
        )
    return s.reshape(-1, *([1] * (x.ndim - 1)))


class Denoiser(nn.Module):
    """Base class. Subclasses set ``prediction`` and implement :meth:`denoise`.

    Attributes:
        prediction: ``"x0"`` or ``"eps"``: what :meth:`denoise` returns.
        sigma_min, sigma_max: the σ range the model was trained on.
        sample_shape: the shape of one sample (without batch), or ``None`` if any shape works.
        weight_files: the files the weights were loaded from (set by loaders such as
            :meth:`DiffusersDenoiser.from_pretrained`; empty for in-memory models), so that
            :func:`dode.artifact.weights_hash` can cache the hash by file identity.
    """

    prediction: Literal["x0", "eps"] = "x0"
    weight_files: tuple[str, ...] = ()

    def __init__(
        self,
        sigma_min: float,
        sigma_max: float,
        sample_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= sigma_min < sigma_max:
            raise ValueError(f"need 0 <= sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Native prediction; ``sigma`` has shape [B, 1, ...] (broadcastable to ``x``)."""
        raise NotImplementedError

    def round_sigma(self, sigma: Tensor) -> Tensor:
        """The σ the model actually evaluates at (identity unless the model is discrete)."""
        return torch.as_tensor(sigma)

    def x0(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Denoised estimate x̂0 = D(x, σ)."""
        s = as_sigma(sigma, x)
        out = self.denoise(x, s)
        return out if self.prediction == "x0" else x - s * out

    def eps(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Noise estimate ε̂ = (x − D(x, σ)) / σ."""
        s = as_sigma(sigma, x)
        out = self.denoise(x, s)
        return out if self.prediction == "eps" else (x - out) / s

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        return self.x0(x, sigma)

    def check_noise(self, noise: Tensor) -> None:
        """Raise ``ValueError`` if ``noise`` does not fit this model."""
        if not isinstance(noise, Tensor):
            raise ValueError(f"noise must be a torch.Tensor, got {type(noise).__name__}.")
        if noise.ndim < 2:
            raise ValueError(
                f"noise must have a batch dimension first, shape [B, ...]; got {tuple(noise.shape)}."
            )
        if self.sample_shape is not None and tuple(noise.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"noise has sample shape {tuple(noise.shape[1:])} but the model expects "
                f"{self.sample_shape}; draw noise of shape [B, {', '.join(map(str, self.sample_shape))}]."
            )


class CallableDenoiser(Denoiser):
    """Wrap any ``fn(x, sigma) -> x̂0`` (``sigma`` arrives as shape [B, 1, ...])."""

    def __init__(
        self,
        fn: Callable[[Tensor, Tensor], Tensor],
        sigma_min: float,
        sigma_max: float,
        prediction: Literal["x0", "eps"] = "x0",
        sample_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(sigma_min, sigma_max, sample_shape)
        if not callable(fn):
            raise ValueError("CallableDenoiser needs a callable fn(x, sigma) -> x0.")
        if prediction not in ("x0", "eps"):
            raise ValueError(f"prediction must be 'x0' or 'eps', got {prediction!r}.")
        self.fn = fn
        self.prediction = prediction

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.fn(x, sigma)


class DiffusersDenoiser(Denoiser):
    """A diffusers ``UNet2DModel`` trained as a discrete VP (DDPM) model, seen in σ-space.

    The network sees ``x_vp = x / sqrt(1 + σ²)`` at timestep ``t(σ)``; ``t`` comes from linear
    interpolation of log σ over the discrete table (``sigma_to_t="interp"``, as diffusers'
    Karras/Heun schedulers do) or from snapping to the nearest table entry (``"snap"``, exact
    parity with DDIM on integer timesteps).

    Args:
        unet: the network (kept frozen: ``eval()`` and ``requires_grad_(False)``).
        alphas_cumprod: the discrete ᾱ table, ascending in t.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        sigma_to_t: ``"interp"`` or ``"snap"``.
        model_id: where the model came from (hub id or folder), recorded in artifacts.
    """

    def __init__(
        self,
        unet: nn.Module,
        alphas_cumprod: Tensor,
        prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon",
        sigma_to_t: Literal["interp", "snap"] = "interp",
        model_id: str | None = None,
    ) -> None:
        table = vp_sigmas(alphas_cumprod)
        cfg = getattr(unet, "config", None)
        shape = None
        if cfg is not None and getattr(cfg, "sample_size", None) is not None:
            size = cfg.sample_size
            hw = (size, size) if isinstance(size, int) else tuple(size)
            shape = (cfg.in_channels, *hw)
        super().__init__(float(table[0]), float(table[-1]), shape)
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; use 'epsilon', 'v_prediction' "
                "or 'sample'."
            )
        if sigma_to_t not in ("interp", "snap"):
            raise ValueError(f"sigma_to_t must be 'interp' or 'snap', got {sigma_to_t!r}.")
        self.unet = unet.eval().requires_grad_(False)
        self.prediction_type = prediction_type
        self.prediction = "x0" if prediction_type == "sample" else "eps"
        self.sigma_to_t_mode = sigma_to_t
        self.model_id = model_id
        self.register_buffer("log_sigmas", table.log(), persistent=False)
        self.register_buffer(
            "alphas_cumprod", torch.as_tensor(alphas_cumprod, dtype=torch.float64), persistent=False
        )

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        sigma_to_t: Literal["interp", "snap"] = "interp",
        torch_dtype: torch.dtype | None = None,
        **kwargs,
    ) -> DiffusersDenoiser:
        """Load a UNet2DModel and its scheduler config from a hub id or a local folder.

        Accepts both layouts: a pipeline folder (``unet/`` and ``scheduler/`` subfolders) and a
        flat one (``config.json`` + ``scheduler_config.json``, as ``google/ddpm-cifar10-32``).
        """
        from diffusers import DDPMScheduler, UNet2DModel

        path = os.path.expanduser(str(path_or_id))
        # A hub id is "org/name"; only an absolute or explicitly relative path is surely local.
        looks_local = path.startswith((os.path.sep, ".", "~")) or os.path.isdir(path)
        if looks_local and not os.path.isdir(path):
            raise ValueError(
                f"model folder {path!r} does not exist; pass a folder written by "
                "save_pretrained() or a hub id such as 'google/ddpm-cifar10-32'."
            )
        errors = []
        unet = sched = None
        for sub in (None, "unet"):
            try:
                unet = UNet2DModel.from_pretrained(
                    path, subfolder=sub, torch_dtype=torch_dtype, **kwargs
                )
                unet_sub = sub
                break
            except Exception as e:  # noqa: BLE001 - collect and report below
                errors.append(f"unet (subfolder={sub}): {e}")
        for sub in (None, "scheduler"):
            try:
                sched = DDPMScheduler.from_pretrained(path, subfolder=sub, **kwargs)
                break
            except Exception as e:  # noqa: BLE001
                errors.append(f"scheduler (subfolder={sub}): {e}")
        if unet is None or sched is None:
            raise ValueError(
                f"could not load a diffusers UNet2DModel and scheduler from {path!r}. If it is a hub "
                "id, check the network or download it first (huggingface-cli download "
                f"{path} --local-dir DIR) and pass DIR. Details: " + " | ".join(errors)
            )
        den = cls(
            unet,
            sched.alphas_cumprod.to(torch.float64),
            prediction_type=sched.config.prediction_type,
            sigma_to_t=sigma_to_t,
            model_id=path,
        )
        den.weight_files = _weight_files(path, unet_sub, kwargs)
        return den

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Continuous (or snapped) timestep for σ, by log-σ interpolation over the table."""
        ls = self.log_sigmas
        log_s = sigma.to(torch.float64).clamp(min=1e-30).log()
        if self.sigma_to_t_mode == "snap":
            return (log_s[:, None] - ls[None, :]).abs().argmin(dim=1).to(torch.float64)
        log_s = log_s.clamp(ls[0], ls[-1])
        hi = torch.searchsorted(ls, log_s).clamp(1, len(ls) - 1)
        lo = hi - 1
        w = (log_s - ls[lo]) / (ls[hi] - ls[lo])
        return lo.to(torch.float64) + w

    def round_sigma(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if self.sigma_to_t_mode != "snap":
            return sigma
        t = self.sigma_to_t(sigma.reshape(-1)).long()
        return self.log_sigmas[t].exp().reshape(sigma.shape)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = sigma.reshape(-1)
        t = self.sigma_to_t(s)
        c_in = 1 / (1 + sigma.to(x.dtype) ** 2).sqrt()
        dtype = next(self.unet.parameters()).dtype
        x_in = (x * c_in).to(dtype)
        t_in = t.to(torch.float32) if self.sigma_to_t_mode == "interp" else t.round().long()
        out = self.unet(x_in, t_in.to(x.device)).sample.to(x.dtype)
        if self.prediction_type == "v_prediction":
            # VP: x_vp = α x0 + σ_vp ε, v = α ε − σ_vp x0, α = 1/sqrt(1+σ²), σ_vp = σ α.
            alpha = c_in
            return alpha * out + sigma * alpha * (x * c_in)
        return out


def _weight_files(path: str, subfolder: str | None, kwargs: dict) -> tuple[str, ...]:
    """The weight files a diffusers model was loaded from (empty when unknown).

    A local folder: every ``*.safetensors`` / ``*.bin`` in it. A hub id: the cached
    ``diffusion_pytorch_model.safetensors`` of that subfolder (no network access).
    """
    folder = os.path.join(path, subfolder) if subfolder else path
    if os.path.isdir(folder):
        names = sorted(n for n in os.listdir(folder) if n.endswith((".safetensors", ".bin")))
        return tuple(os.path.join(folder, n) for n in names)
    if kwargs.get("variant") or kwargs.get("use_safetensors") is False:
        return ()
    try:
        from huggingface_hub import try_to_load_from_cache

        name = "diffusion_pytorch_model.safetensors"
        found = try_to_load_from_cache(
            path,
            f"{subfolder}/{name}" if subfolder else name,
            cache_dir=kwargs.get("cache_dir"),
            revision=kwargs.get("revision"),
        )
    except Exception:  # noqa: BLE001 - unknown file: the hash falls back to the tensors
        return ()
    return (found,) if isinstance(found, str) else ()


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
