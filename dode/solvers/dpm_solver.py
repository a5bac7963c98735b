"""DPM-Solver, singlestep, orders 2 and 3 (Lu et al., 2022, Algorithms 1 and 2), noise
prediction, written in σ-space.

Notation trap: DPM-Solver's λ_t = log(α_t/σ_t) is the half log-SNR of the VP process; in
σ-space (``σ = σ_VP/α``) it is simply ``λ = −log σ``, and the VP factor ``α_t/α_s`` drops out.
So ``h = log(σ_s/σ_t)`` and ``σ_t (e^h − 1) = σ_s − σ_t``.

Stage points sit at ``λ_s + r_k h``, i.e. ``σ_{s_k} = σ_s^(1−r_k) σ_t^(r_k)``, with r = (1/2)
for order 2 and r = (1/3, 2/3) for order 3. (diffusers' DPMSolverSinglestepScheduler is a
different variant: it takes the stage points from the timestep grid itself, so one of its
"steps" spans two or three grid intervals.)

The last step, to σ = 0, is first order (DDIM): at σ = 0, h = ∞ and the stage points collapse
onto 0. Hence NFE = order·(N − 1) + 1 for N steps.
"""

from __future__ import annotations

import math

import torch

from .base import Solver


class DPMSolver(Solver):
    name = "dpm_solver"
    consumes = "eps"
    orders = (1, 2, 3)

    def __init__(self, order: int = 2, r1: float | None = None, r2: float | None = None) -> None:
        super().__init__(order)
        self.r1 = r1 if r1 is not None else (0.5 if self.order == 2 else 1 / 3)
        self.r2 = r2 if r2 is not None else 2 / 3
        if not (0 < self.r1 < 1 and 0 < self.r2 < 1 and (self.order < 3 or self.r1 < self.r2)):
            raise ValueError("stage ratios must satisfy 0 < r1 < r2 < 1.")

    def nfe(self, num_steps: int) -> int:
        return self.order * (num_steps - 1) + 1

    def config(self) -> dict:
        return {"name": self.name, "order": self.order, "r1": self.r1, "r2": self.r2}

    def _ratios(self) -> list[float]:
        return [] if self.order == 1 else ([self.r1] if self.order == 2 else [self.r1, self.r2])

    def stage_sigmas(self, sigmas) -> torch.Tensor:
        s = torch.as_tensor(sigmas, dtype=torch.float64).tolist()
        out = []
        for a, b in zip(s[:-1], s[1:]):
            if b > 0:
                out += [a ** (1 - r) * b**r for r in self._ratios()]
        return torch.tensor(out, dtype=torch.float64)

    def solve(self, model, x, s, callback):
        for i in range(len(s) - 1):
            sigma, sigma_next = s[i], s[i + 1]
            eps = model(x, sigma)
            if sigma_next == 0 or self.order == 1:
                x = x + (sigma_next - sigma) * eps
            elif self.order == 2:
                r1 = self.r1
                sigma_u = sigma ** (1 - r1) * sigma_next**r1
                u = x - (sigma - sigma_u) * eps
                eps_u = model(u, sigma_u)
                x = x - (sigma - sigma_next) * eps - (sigma - sigma_next) / (2 * r1) * (eps_u - eps)
            else:
                r1, r2 = self.r1, self.r2
                h = math.log(sigma / sigma_next)
                s1 = sigma ** (1 - r1) * sigma_next**r1
                s2 = sigma ** (1 - r2) * sigma_next**r2
                u1 = x - (sigma - s1) * eps
                d1 = model(u1, s1) - eps
                phi_2 = math.expm1(r2 * h) / (r2 * h) - 1  # (e^{r2 h} − 1)/(r2 h) − 1
                u2 = x - (sigma - s2) * eps - s2 * (r2 / r1) * phi_2 * d1
                d2 = model(u2, s2) - eps
                phi = math.expm1(h) / h - 1
                x = x - (sigma - sigma_next) * eps - (sigma_next / r2) * phi * d2
            if callback is not None:
                callback(i, sigma_next, x)
        return x
