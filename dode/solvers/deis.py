"""DEIS multistep exponential-integrator Adams–Bashforth (Zhang & Chen, 2023), orders 1–3,
noise prediction, in σ-space.

In σ-space the probability-flow ODE is ``dx/dσ = ε(x, σ)``, so one step is
``x_{i+1} = x_i + Σ_j C_ij ε̂_{i−j}`` with ``C_ij = ∫_{σ_i}^{σ_{i+1}} ℓ_j(u(σ)) dσ`` and ℓ_j the
Lagrange basis through the previous nodes ``u(σ_{i−j})``. The basis variable selects the
variant:

* ``basis="t"`` — tAB, the paper's default: polynomial in the VP diffusion time t, with
  ``σ(t)² = exp(β_min t + ½(β_max − β_min) t²) − 1`` (linear β, continuous time in [0, 1]).
* ``basis="logrho"`` — polynomial in log σ: the variant diffusers' DEISMultistepScheduler
  implements.
* ``basis="rho"`` — polynomial in σ itself (ρAB).

The integrals are evaluated by 32-point Gauss–Legendre quadrature in float64 (exact for the
ρ basis, at machine precision for the others on steps with σ_{i+1} > 0). Warm start and the
final step follow :func:`~dode.solvers.base.multistep_order`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from .base import Solver, multistep_order

_GL_X, _GL_W = np.polynomial.legendre.leggauss(32)


class DEIS(Solver):
    name = "deis"
    consumes = "eps"
    orders = (1, 2, 3)

    def __init__(
        self,
        order: int = 3,
        basis: Literal["t", "logrho", "rho"] = "t",
        lower_order_final: bool = True,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
    ) -> None:
        super().__init__(order)
        if basis not in ("t", "logrho", "rho"):
            raise ValueError(f"unknown DEIS basis {basis!r}; use 't', 'logrho' or 'rho'.")
        self.basis = basis
        self.lower_order_final = bool(lower_order_final)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def u(self, sigma: np.ndarray) -> np.ndarray:
        """The interpolation variable for σ."""
        if self.basis == "rho":
            return sigma
        if self.basis == "logrho":
            return np.log(sigma)
        b0, d = self.beta_min, self.beta_max - self.beta_min
        return (-b0 + np.sqrt(b0**2 + 2 * d * np.log1p(sigma**2))) / d

    def coefficients(self, s: list[float], i: int, order: int) -> list[float]:
        """C_ij for j = 0..order−1 (newest first)."""
        a, b = s[i], s[i + 1]
        if order == 1:
            return [b - a]
        if any(isinstance(s[i - j], torch.Tensor) for j in range(-1, order)):
            return self._coefficients_torch(s, i, order)
        nodes = self.u(np.array([s[i - j] for j in range(order)], dtype=np.float64))
        sig = 0.5 * (a + b) + 0.5 * (b - a) * _GL_X
        uu = self.u(sig)
        out = []
        for j in range(order):
            ell = np.ones_like(uu)
            for m in range(order):
                if m != j:
                    ell = ell * (uu - nodes[m]) / (nodes[j] - nodes[m])
            out.append(float(0.5 * (b - a) * np.dot(_GL_W, ell)))
        return out

    def _coefficients_torch(self, s: list, i: int, order: int) -> list:
        """:meth:`coefficients` in torch, differentiable in σ (a learned grid)."""

        def u(sig):
            if self.basis == "rho":
                return sig
            if self.basis == "logrho":
                return sig.log()
            b0, d = self.beta_min, self.beta_max - self.beta_min
            return (-b0 + (b0**2 + 2 * d * torch.log1p(sig**2)).sqrt()) / d

        f64 = torch.float64
        a, b = (torch.as_tensor(v, dtype=f64) for v in (s[i], s[i + 1]))
        nodes = u(torch.stack([torch.as_tensor(s[i - j], dtype=f64) for j in range(order)]))
        gx, gw = torch.from_numpy(_GL_X), torch.from_numpy(_GL_W)
        uu = u(0.5 * (a + b) + 0.5 * (b - a) * gx)
        out = []
        for j in range(order):
            ell = torch.ones_like(uu)
            for m in range(order):
                if m != j:
                    ell = ell * (uu - nodes[m]) / (nodes[j] - nodes[m])
            out.append(0.5 * (b - a) * (gw * ell).sum())
        return out

    def solve(self, model, x, s, callback):
        n = len(s) - 1
        history = []  # newest first
        for i in range(n):
            history.insert(0, model(x, s[i]))
            del history[self.order :]
            order = multistep_order(i, n, s, self.order, self.lower_order_final)
            coeffs = self.coefficients(s, i, order)
            for c, e in zip(coeffs, history):
                x = x + c * e
            if callback is not None:
                callback(i, s[i + 1], x)
        return x
