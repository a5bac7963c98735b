"""The D-ODE correction: one wrapper around the model callable, for every solver.

D-ODE (Kim, Tang & Yu, CVPR 2024, Eq. 6): for the k-th model call the output the solver
consumes, ``o_k`` (x̂0 or ε̂), is replaced by ``õ_k = o_k + λ_k (o_k − o_{k−1})`` with λ_0 = 0.

History convention: ``o_{k−1}`` is the previous *raw* model output, while a multistep solver's
own history holds what it was given, i.e. the *corrected* ``õ``; this is the reference
implementation's behaviour, where the solver never sees the raw outputs. (The alternative,
raw histories, is measured once in ``experiments/history_variant.py``.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .denoisers import Denoiser

__all__ = ["DODECorrection", "model_fn"]


def _check_finite(o: Tensor, k: int, sigma: float) -> None:
    """``ValueError`` if the model's output at call ``k`` (σ = ``sigma``) is not finite."""
    if not torch.isfinite(o).all():
        raise ValueError(
            f"the model returned non-finite values at call {k} (σ = {sigma:.6g}); check the "
            "model weights, its dtype (try float32/float64) and that σ is inside its range."
        )


def model_fn(denoiser: Denoiser, consumes: str) -> Callable[[Tensor, float], Tensor]:
    """The callable a solver consumes: ``denoiser.x0`` or ``denoiser.eps``."""
    return denoiser.x0 if consumes == "x0" else denoiser.eps


def _correct(o: Tensor, prev: Tensor | None, lam) -> Tensor:
    """õ = o + λ (o − o_prev); the base output when there is no previous call."""
    if prev is None:
        return o
    return o + lam * (o - prev)


class DODECorrection:
    """Wrap a model callable so that the k-th call returns ``o_k + λ_k (o_k − o_{k−1})``.

    ``lambdas=None`` returns the raw outputs (the base solver, bit for bit). ``lambdas`` may be
    an ``nn.Parameter``: gradients flow to it through every solver.
    """

    def __init__(
        self,
        fn: Callable[[Tensor, float], Tensor],
        lambdas: Tensor | None = None,
        check_finite: bool = True,
    ) -> None:
        self.fn = fn
        self.lambdas = lambdas
        self.check_finite = check_finite
        self.k = 0
        self.prev: Tensor | None = None

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        k = self.k
        o = self.fn(x, sigma)
        if self.check_finite:
            _check_finite(o, k, float(sigma))
        self.k += 1
        if self.lambdas is None:
            return o
        if k >= len(self.lambdas):
            raise ValueError(
                f"the solver made more model calls than there are λ ({len(self.lambdas)}); the λ "
                "were fitted for another NFE or solver. Refit, or use the grid they came with."
            )
        out = _correct(o, self.prev, self.lambdas[k])
        if self.check_finite and k > 0 and not torch.isfinite(out).all():
            raise ValueError(
                f"the D-ODE correction made non-finite values at call {k} (σ = "
                f"{float(sigma):.6g}, λ_{k} = {float(self.lambdas[k]):.6g}) from finite model "
                "outputs; λ is too large or not finite: refit, or check the solver file."
            )
        self.prev = o
        return out
