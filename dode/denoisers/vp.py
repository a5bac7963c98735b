"""Discrete VP (DDPM) models in diffusers format, seen in σ-space."""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import Tensor, nn

from ..schedules import vp_sigmas
from .base import Denoiser

__all__ = ["DiffusersDenoiser"]


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
        return cls(
            unet,
            sched.alphas_cumprod.to(torch.float64),
            prediction_type=sched.config.prediction_type,
            sigma_to_t=sigma_to_t,
            model_id=path,
        )

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
