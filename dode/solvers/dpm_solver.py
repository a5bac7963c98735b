"""DPM-Solver, singlestep, orders 2 and 3 (Lu et al., 2022, Algorithms 1 and 2), noise
prediction, written in σ-space.

Notation trap: DPM-Solver's λ_t = log(α_t/σ_t) is the half log-SNR of the VP process; in
σ-space (``σ = σ_VP/α``) it is simply ``λ = −log σ``, and the VP factor ``α_t/α_s`` drops out.
So ``h = log(σ_s/σ_t)`` and ``σ_t (e^h − 1) = σ_s − σ_t``.

Two ways to place the stage points (``stages``):

* ``"lambda"`` (default, the paper's): stage points sit at ``λ_s + r_k h``, i.e.
  ``σ_{s_k} = σ_s^(1−r_k) σ_t^(r_k)``, with r = (1/2) for order 2 and r = (1/3, 2/3) for
  order 3. The last step, to σ = 0, is first order (DDIM): at σ = 0, h = ∞ and the stage points
  collapse onto 0. Hence NFE = order·(N − 1) + 1 for N steps.
* ``"grid"`` (diffusers' ``DPMSolverSinglestepScheduler`` with ``algorithm_type="dpmsolver"``):
  every grid point but the last is one model call, NFE = N. The grid is cut into groups by
  diffusers' order list (``[1, 2, 3, 1, 2, 3, …]`` with its ``lower_order_final`` tail); a group
  of k intervals is one singlestep order-k update from the group's first point, whose
  intermediate grid points are its stages (each computed by the lower-order update, so
  ``r`` comes from the grid). ``solver_type`` picks diffusers' "midpoint" or "heun" form of the
  order-2 and order-3 updates. A step to σ = 0 is always first order.
"""

from __future__ import annotations

from typing import Literal

import torch

from .base import Solver, expm1, log


class DPMSolver(Solver):
    name = "dpm_solver"
    consumes = "eps"
    orders = (1, 2, 3)

    def __init__(
        self,
        order: int = 2,
        r1: float | None = None,
        r2: float | None = None,
        stages: Literal["lambda", "grid"] = "lambda",
        solver_type: Literal["midpoint", "heun"] = "midpoint",
        lower_order_final: bool = False,
    ) -> None:
        super().__init__(order)
        if stages not in ("lambda", "grid"):
            raise ValueError(f"stages must be 'lambda' or 'grid', got {stages!r}.")
        if solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}.")
        self.stages = stages
        self.solver_type = solver_type
        self.lower_order_final = bool(lower_order_final)
        self.r1 = r1 if r1 is not None else (0.5 if self.order == 2 else 1 / 3)
        self.r2 = r2 if r2 is not None else 2 / 3
        if not (0 < self.r1 < 1 and 0 < self.r2 < 1 and (self.order < 3 or self.r1 < self.r2)):
            raise ValueError("stage ratios must satisfy 0 < r1 < r2 < 1.")

    def nfe(self, num_steps: int) -> int:
        if self.stages == "grid":
            return num_steps
        return self.order * (num_steps - 1) + 1

    def _ratios(self) -> list[float]:
        return [] if self.order == 1 else ([self.r1] if self.order == 2 else [self.r1, self.r2])

    def stage_sigmas(self, sigmas) -> torch.Tensor:
        if self.stages == "grid":  # every stage point is a grid point
            return torch.empty(0, dtype=torch.float64)
        s = torch.as_tensor(sigmas, dtype=torch.float64).tolist()
        out = []
        for a, b in zip(s[:-1], s[1:]):
            if b > 0:
                out += [a ** (1 - r) * b**r for r in self._ratios()]
        return torch.tensor(out, dtype=torch.float64)

    def grid_orders(self, num_steps: int, final_zero: bool = True) -> list[int]:
        """Order of each model call with ``stages="grid"``: diffusers' ``get_order_list``.

        As diffusers does, ``lower_order_final`` is switched on when the number of steps is not
        a multiple of the order or the grid ends at σ = 0, and a step to σ = 0 is first order.
        """
        n, k = num_steps, self.order
        if self.lower_order_final or n % k != 0 or final_zero:
            if k == 3:
                tail = {0: [1, 2, 1], 1: [1], 2: [1, 2]}[n % 3]
                orders = [1, 2, 3] * ((n - len(tail)) // 3) + tail
            elif k == 2:
                orders = [1, 2] * (n // 2 - 1) + [1, 1] if n % 2 == 0 else [1, 2] * (n // 2) + [1]
            else:
                orders = [1] * n
        else:
            orders = ([1, 2, 3] if k == 3 else [1, 2] if k == 2 else [1]) * (n // k)
        if final_zero:
            orders[-1] = 1
        return orders

    def _grid_update(self, x0, outs, s, j, k):
        """Order-k singlestep update from the state ``x0`` at ``s[j]`` to ``s[j + k]`` with the
        outputs ``outs`` at ``s[j..j+k−1]`` (oldest first); diffusers' formulas divided by α_t."""
        sigma, sigma_next = s[j], s[j + k]
        x = x0 - (sigma - sigma_next) * outs[0]
        if k == 1:
            return x
        h = log(sigma / sigma_next)
        phi = (sigma - sigma_next) / h - sigma_next  # σ_t ((e^h − 1)/h − 1)
        if k == 2:
            r0 = log(sigma / s[j + 1]) / h
            d1 = (outs[1] - outs[0]) / r0
            if self.solver_type == "midpoint":
                return x - 0.5 * (sigma - sigma_next) * d1
            return x - phi * d1
        r1 = log(sigma / s[j + 1]) / h
        r0 = log(sigma / s[j + 2]) / h
        d1_0 = (outs[1] - outs[0]) / r1
        d1_1 = (outs[2] - outs[0]) / r0
        if self.solver_type == "midpoint":
            return x - phi * d1_1
        d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
        d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
        phi2 = ((sigma - sigma_next) - sigma_next * h) / h**2 - 0.5 * sigma_next
        return x - phi * d1 - phi2 * d2

    def _solve_grid(self, model, x, s, callback):
        n = len(s) - 1
        orders = self.grid_orders(n, s[-1] == 0)
        outs: list = []
        x_start = x
        for i in range(n):
            k = orders[i]
            if k == 1:
                outs, x_start = [], x
            outs.append(model(x, s[i]))
            x = self._grid_update(x_start, outs, s, i + 1 - k, k)
            if callback is not None:
                callback(i, s[i + 1], x)
        return x

    def solve(self, model, x, s, callback):
        if self.stages == "grid":
            return self._solve_grid(model, x, s, callback)
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
                h = log(sigma / sigma_next)
                s1 = sigma ** (1 - r1) * sigma_next**r1
                s2 = sigma ** (1 - r2) * sigma_next**r2
                u1 = x - (sigma - s1) * eps
                d1 = model(u1, s1) - eps
                phi_2 = expm1(r2 * h) / (r2 * h) - 1  # (e^{r2 h} − 1)/(r2 h) − 1
                u2 = x - (sigma - s2) * eps - s2 * (r2 / r1) * phi_2 * d1
                d2 = model(u2, s2) - eps
                phi = expm1(h) / h - 1
                x = x - (sigma - sigma_next) * eps - (sigma_next / r2) * phi * d2
            if callback is not None:
                callback(i, sigma_next, x)
        return x
