"""Any function ``fn(x, sigma) -> x̂0`` (or ε̂) as a denoiser."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor

from .base import Denoiser

__all__ = ["CallableDenoiser"]


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
