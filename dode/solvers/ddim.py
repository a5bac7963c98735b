"""DDIM (Song et al., 2021) in σ-space: Euler on the probability-flow ODE.

In σ-space DDIM is ``x_{i+1} = x_i + (σ_{i+1} − σ_i) ε̂_i`` (ε form). The x̂0 form
``x_{i+1} = x̂0 + (σ_{i+1}/σ_i)(x_i − x̂0)`` is the same map; it differs only in what D-ODE
corrects (x̂0 instead of ε̂), as in the paper's "DDIM (data prediction)".
"""

from __future__ import annotations

from .base import Solver


class DDIM(Solver):
    """DDIM consuming ε̂ (the paper's D-DDIM)."""

    name = "ddim"
    consumes = "eps"

    def solve(self, model, x, s, callback):
        for i in range(len(s) - 1):
            eps = model(x, s[i])
            x = x + (s[i + 1] - s[i]) * eps
            if callback is not None:
                callback(i, s[i + 1], x)
        return x


class Euler(Solver):
    """DDIM / Euler consuming x̂0 (EDM's Euler sampler)."""

    name = "euler"
    consumes = "x0"

    def solve(self, model, x, s, callback):
        for i in range(len(s) - 1):
            denoised = model(x, s[i])
            x = denoised + (s[i + 1] / s[i]) * (x - denoised)
            if callback is not None:
                callback(i, s[i + 1], x)
        return x
