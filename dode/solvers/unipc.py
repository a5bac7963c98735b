"""UniPC (Zhao et al., 2023): unified predictor–corrector, data prediction, B(h) = bh1 or bh2,
orders 1–3, in σ-space.

With λ = −log σ and ``h = log(σ_s/σ_t)``, UniP-p predicts
``x_t = (σ_t/σ_s) x_s − φ1 m0 − B(h) Σ_k ρ^p_k D_k`` (φ1 = e^{−h} − 1, ``D_k = (m_k − m0)/r_k``)
and UniC corrects the same step once the model has been evaluated at the predicted point,
re-using that evaluation for the next step, so the corrector costs no extra model call:
NFE = N. The corrector is never applied after the last step (no call at σ = 0). The ρ come
from the linear systems of the paper (Eq. 8 / Algorithm 2), ``ρ = ½`` in the 2×2 cases, the
choice diffusers' UniPCMultistepScheduler also makes.
"""

from __future__ import annotations

from typing import Literal

import torch

from .base import Solver, expm1, log


def _vector(vals: list) -> torch.Tensor:
    """float64 vector of floats, or of tensors (a learned grid's σ carry gradients)."""
    if any(isinstance(v, torch.Tensor) for v in vals):
        return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in vals])
    return torch.tensor(vals, dtype=torch.float64)


def _entries(v: torch.Tensor) -> list:
    """A vector's entries: floats, or 0-dim tensors when it carries a gradient."""
    return list(v.unbind()) if v.requires_grad else v.tolist()


class UniPC(Solver):
    name = "unipc"
    consumes = "x0"
    orders = (1, 2, 3)

    def __init__(
        self,
        order: int = 2,
        variant: Literal["bh1", "bh2"] = "bh2",
        lower_order_final: bool = True,
        corrector: bool = True,
    ) -> None:
        super().__init__(order)
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"unknown UniPC variant {variant!r}; use 'bh1' or 'bh2'.")
        self.variant = variant
        self.lower_order_final = bool(lower_order_final)
        self.corrector = bool(corrector)

    def step_order(self, i: int, n: int, s: list[float]) -> int:
        """Order of step ``i`` of ``n``: warm start; with ``lower_order_final`` at most ``n − i``
        (diffusers' UniPC rule, for any number of steps, unlike DPM-Solver++'s "< 15 steps"
        rule); the step to σ = 0 is always first order."""
        k = min(self.order, i + 1)
        if self.lower_order_final:
            k = min(k, n - i)
        return 1 if s[i + 1] == 0 else k

    def _system(self, h: float, rks: list[float], order: int):
        hh = -h
        h_phi_1 = expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        fact = 1
        B_h = hh if self.variant == "bh1" else expm1(hh)
        R, b = [], []
        r = _vector(rks)
        for j in range(1, order + 1):
            R.append(r ** (j - 1))
            b.append(h_phi_k * fact / B_h)
            fact *= j + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        return torch.stack(R), _vector(b), h_phi_1, B_h

    def _diffs(self, outs, s, i0, order):
        """r_k and D_k = (m_k − m0)/r_k for the k = 1..order−1 previous outputs."""
        h = log(s[i0] / s[i0 + 1])
        m0 = outs[-1]
        rks, d1s = [], []
        for k in range(1, order):
            rk = log(s[i0] / s[i0 - k]) / h  # (λ_{s_k} − λ_{s0}) / h
            rks.append(rk)
            d1s.append((outs[-(k + 1)] - m0) / rk)
        rks.append(1.0)
        return h, rks, d1s

    def _predict(self, x, outs, s, i, order):
        sigma, sigma_next = s[i], s[i + 1]
        m0 = outs[-1]
        if order == 1 or sigma_next == 0:
            return (sigma_next / sigma) * x + (1 - sigma_next / sigma) * m0
        h, rks, d1s = self._diffs(outs, s, i, order)
        R, b, h_phi_1, B_h = self._system(h, rks, order)
        if order == 2:
            rhos = [0.5]
        else:
            rhos = _entries(torch.linalg.solve(R[:-1, :-1], b[:-1]))
        x_t = (sigma_next / sigma) * x - h_phi_1 * m0
        res = sum(rho * d for rho, d in zip(rhos, d1s))
        return x_t - B_h * res

    def _correct(self, x_last, model_t, outs, s, i, order):
        """Correct the step s[i−1] → s[i] with the new output ``model_t`` at s[i]."""
        sigma, sigma_next = s[i - 1], s[i]
        m0 = outs[-1]
        h, rks, d1s = self._diffs(outs, s, i - 1, order)
        R, b, h_phi_1, B_h = self._system(h, rks, order)
        if order == 1:
            rhos = [0.5]
        else:
            rhos = _entries(torch.linalg.solve(R, b))
        x_t = (sigma_next / sigma) * x_last - h_phi_1 * m0
        res = sum(rho * d for rho, d in zip(rhos[:-1], d1s))
        return x_t - B_h * (res + rhos[-1] * (model_t - m0))

    def solve(self, model, x, s, callback):
        n = len(s) - 1
        outs: list = []
        x_last = None
        prev_order = 1
        for i in range(n):
            m = model(x, s[i])
            if i > 0 and self.corrector:
                x = self._correct(x_last, m, outs, s, i, prev_order)
            outs.append(m)
            del outs[: -self.order]
            order = self.step_order(i, n, s)
            x_last = x
            x = self._predict(x, outs, s, i, order)
            prev_order = order
            if callback is not None:
                callback(i, s[i + 1], x)
        return x
