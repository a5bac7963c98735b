"""DPM-Solver++ multistep, 2M and 3M (Lu et al., 2022b), data prediction, in σ-space.

With λ = −log σ and ``h = log(σ_s/σ_t)``, the first-order update is
``x_t = (σ_t/σ_s) x_s + (1 − e^{−h}) D_s`` (= DDIM). 2M adds ``½(1 − e^{−h}) D1`` with
``D1 = (D_s − D_{s−1}) / r0``, ``r0 = h_{prev}/h`` (the "midpoint" form used by diffusers);
3M uses the second divided difference as in diffusers' ``multistep_dpm_solver_third_order_update``.

Order trap: that 3M update (the official DPM-Solver code's too) weights ``D2 ≈ h² x̂0''/2``
with ``−φ3`` (``φ3 = (e^{−h} − 1 + h)/h² − ½``) where the Taylor expansion of the exponential
integrator gives ``−2·φ3``; its local error is therefore O(h³) and 3M converges with order 2,
not 3 (``tests/test_convergence.py`` measures it; doubling the term restores order 3). It is
kept as is for parity with diffusers.

Warm start with lower orders. ``lower_order_final`` (default, as diffusers for < 15 steps):
the last step is first order and the one before it at most second order. The step to σ = 0
is always first order (h = ∞ there).
"""

from __future__ import annotations

from .base import Solver, expm1, log, multistep_order


class DPMSolverPP(Solver):
    name = "dpm_solver_pp"
    consumes = "x0"
    orders = (1, 2, 3)

    def __init__(self, order: int = 2, lower_order_final: bool = True) -> None:
        super().__init__(order)
        self.lower_order_final = bool(lower_order_final)

    def step_order(self, i: int, n: int, s: list[float]) -> int:
        return multistep_order(i, n, s, self.order, self.lower_order_final)

    def solve(self, model, x, s, callback):
        n = len(s) - 1
        hist = []  # denoised outputs, newest last
        for i in range(n):
            sigma, sigma_next = s[i], s[i + 1]
            hist.append(model(x, sigma))
            del hist[: -self.order]
            order = self.step_order(i, n, s)
            m0 = hist[-1]
            if order == 1:
                x = (sigma_next / sigma) * x + (1 - sigma_next / sigma) * m0
            else:
                h = log(sigma / sigma_next)
                h0 = log(s[i - 1] / sigma)
                r0 = h0 / h
                d1_0 = (m0 - hist[-2]) / r0
                e = -expm1(-h)  # 1 − e^{−h}
                if order == 2:
                    x = (sigma_next / sigma) * x + e * m0 + 0.5 * e * d1_0
                else:
                    h1 = log(s[i - 2] / s[i - 1])
                    r1 = h1 / h
                    d1_1 = (hist[-2] - hist[-3]) / r1
                    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                    d2 = (1 / (r0 + r1)) * (d1_0 - d1_1)
                    phi1 = -e / h + 1  # (e^{−h} − 1)/h + 1
                    phi2 = phi1 / h - 0.5
                    x = (sigma_next / sigma) * x + e * m0 + phi1 * d1 - phi2 * d2
            if callback is not None:
                callback(i, sigma_next, x)
        return x
