"""EDM-Heun (Karras et al., 2022, Algorithm 1, deterministic): NFE = 2N − 1.

The last step, to σ = 0, is an Euler step (no correction at σ = 0).
"""

from __future__ import annotations

from .base import Solver


class Heun(Solver):
    name = "heun"
    consumes = "x0"

    def nfe(self, num_steps: int) -> int:
        return 2 * num_steps - 1

    def solve(self, model, x, s, callback):
        for i in range(len(s) - 1):
            sigma, sigma_next = s[i], s[i + 1]
            denoised = model(x, sigma)
            d = (x - denoised) / sigma
            x_next = x + (sigma_next - sigma) * d
            if sigma_next > 0:
                denoised_next = model(x_next, sigma_next)
                d_next = (x_next - denoised_next) / sigma_next
                x_next = x + (sigma_next - sigma) * (0.5 * d + 0.5 * d_next)
            x = x_next
            if callback is not None:
                callback(i, sigma_next, x)
        return x
