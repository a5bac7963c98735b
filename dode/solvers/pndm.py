"""PNDM (Liu et al., 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"):
pseudo linear multistep (PLMS) with a pseudo Runge–Kutta (PRK) warm start, noise prediction,
in σ-space, as diffusers' ``PNDMScheduler``.

PNDM's transfer part φ (its Eq. 9) is the DDIM step; in σ-space (``x = x_vp·sqrt(1 + σ²)``)
it is ``φ(x, ε, σ → σ') = x + (σ' − σ) ε``. The gradient part combines ε̂:

* PRK (the first three steps, four calls each; Eq. 12): from ``x`` at σ to σ' through the
  stage point σ_m, ``e1 = ε̂(x, σ)``, ``e2 = ε̂(φ(x, e1, σ → σ_m), σ_m)``,
  ``e3 = ε̂(φ(x, e2, σ → σ_m), σ_m)``, ``e4 = ε̂(φ(x, e3, σ → σ'), σ')`` and
  ``x' = φ(x, (e1 + 2 e2 + 2 e3 + e4)/6, σ → σ')``. Then PLMS (Eq. 13, Adams–Bashforth 4 on
  the ε̂ at the step starts, the three PRK ``e1`` included), one call per step:
  NFE = N + 9 for N ≥ 4 steps.
* ``skip_prk_steps=True`` (PLMS as Stable Diffusion uses it, after crowsonkb's sampler): the
  first step is Heun's (``e1`` at σ_0, ``e2`` at σ_1 on the Euler prediction, their mean),
  then AB2, AB3 and AB4 on the ε̂ at the step starts (the predictor's ``e2`` is not kept):
  NFE = N + 1 for N ≥ 2 steps.

Where the PRK stage point sits (``stages``):

* ``"sigma"`` (default): the midpoint in σ, ``σ_m = (σ + σ')/2``. In σ the PRK step is then
  the classical Runge–Kutta 4 on ``dx/dσ = ε(x, σ)``, and with AB4 on a grid uniform in σ the
  method has order 4 (``tests/test_pndm.py`` measures it). The stage points are reported by
  :meth:`PNDM.stage_sigmas`.
* ``"grid"`` (diffusers): the first six grid intervals are the three PRK steps and their
  inner points the stage points (diffusers puts them at the timestep midpoint ``t − T/(2N)``;
  build the grid from its timesteps). NFE = N + 6 for N ≥ 7 grid intervals; the step callback
  reports the stage point with the state the third call sees there.

Like iPNDM, the AB coefficients assume equal steps in σ: on other grids (Karras, log-SNR) the
multistep part is the usual fixed-coefficient PLMS of the literature, of lower order.
"""

from __future__ import annotations

from typing import Literal

import torch

from .base import Solver
from .ipndm import AB_COEFFS


class PNDM(Solver):
    name = "pndm"
    consumes = "eps"
    orders = (4,)

    def __init__(
        self, skip_prk_steps: bool = False, stages: Literal["sigma", "grid"] = "sigma"
    ) -> None:
        super().__init__()
        if stages not in ("sigma", "grid"):
            raise ValueError(f"PNDM stages must be 'sigma' or 'grid', got {stages!r}.")
        self.skip_prk_steps = bool(skip_prk_steps)
        self.stages = stages

    def describe(self) -> str:
        if self.skip_prk_steps:
            return "pndm(skip_prk_steps=True)"
        return "pndm" if self.stages == "sigma" else "pndm(stages='grid')"

    def _prk_intervals(self) -> int:
        """Grid intervals the PRK warm start spans (3 steps of 1 or 2 intervals)."""
        return 0 if self.skip_prk_steps else (6 if self.stages == "grid" else 3)

    def nfe(self, num_steps: int) -> int:
        if self.skip_prk_steps:
            return num_steps + 1
        return num_steps + (6 if self.stages == "grid" else 9)

    def min_steps(self) -> int:
        # PLMS: the Heun start must not call the model at σ = 0; PRK: its last stage point
        # (the end of the warm start) must lie above the grid's end.
        return 2 if self.skip_prk_steps else self._prk_intervals() + 1

    def stage_sigmas(self, sigmas) -> torch.Tensor:
        if self.skip_prk_steps or self.stages == "grid":
            return torch.empty(0, dtype=torch.float64)
        s = torch.as_tensor(sigmas, dtype=torch.float64).tolist()
        return torch.tensor([0.5 * (a + b) for a, b in zip(s[:3], s[1:4])], dtype=torch.float64)

    def _prk(self, model, x, s, callback):
        """The three PRK steps; returns the state and the ε̂ at their starts (newest first)."""
        grid = self.stages == "grid"
        history = []
        for j in range(3):
            i = 2 * j if grid else j
            sigma, sigma_next = s[i], s[i + 2] if grid else s[i + 1]
            sigma_m = s[i + 1] if grid else 0.5 * (sigma + sigma_next)
            e1 = model(x, sigma)
            e2 = model(x + (sigma_m - sigma) * e1, sigma_m)
            x_m = x + (sigma_m - sigma) * e2
            e3 = model(x_m, sigma_m)
            e4 = model(x + (sigma_next - sigma) * e3, sigma_next)
            x = x + (sigma_next - sigma) * ((e1 + 2 * e2 + 2 * e3 + e4) / 6)
            history.insert(0, e1)
            if callback is not None:
                if grid:
                    callback(i, sigma_m, x_m)
                    callback(i + 1, sigma_next, x)
                else:
                    callback(i, sigma_next, x)
        return x, history

    def solve(self, model, x, s, callback):
        n = len(s) - 1
        start = self._prk_intervals()
        history: list = []  # ε̂ at the step starts, newest first
        if start:
            x, history = self._prk(model, x, s, callback)
        for i in range(start, n):
            sigma, sigma_next = s[i], s[i + 1]
            e = model(x, sigma)
            if i == 0:  # PLMS without PRK: Heun's first step
                e2 = model(x + (sigma_next - sigma) * e, sigma_next)
                x = x + (sigma_next - sigma) * ((e + e2) / 2)
                history = [e]
            else:
                history.insert(0, e)
                del history[4:]
                coeffs = AB_COEFFS[len(history)]
                eps = coeffs[0] * history[0]
                for c, h in zip(coeffs[1:], history[1:]):
                    eps = eps + c * h
                x = x + (sigma_next - sigma) * eps
            if callback is not None:
                callback(i, sigma_next, x)
        return x
