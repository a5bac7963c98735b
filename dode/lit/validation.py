"""Validation of a λ fit: the mean squared error to the teacher after every model call and of
the final sample, for the fitted λ and for the base solver (computed once per batch of seeds),
summed over ranks before the ratio."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .problem import FitHost, FitProblem

__all__ = ["TeacherMSE"]


class TeacherMSE:
    """Per-state MSE sums of D-ODE and the base solver, over one validation epoch.

    Args:
        problem: the fit's problem (trajectories and the teacher lookup).
    """

    def __init__(self, problem: FitProblem) -> None:
        self.problem = problem
        self._acc: Tensor | None = None
        self._base: dict[int, tuple[tuple[int, ...], list[Tensor]]] = {}

    def reset(self) -> None:
        """Before an epoch's first batch."""
        self._acc = None

    @torch.no_grad()
    def add(self, module: FitHost, batch: dict, batch_idx: int) -> None:
        """Add a batch's squared errors (the base solver's once per batch of seeds)."""
        noise = batch["noise"]
        problem = self.problem
        target = problem.target(batch["teacher"])
        cond = batch.get("cond")
        seeds = tuple(batch["seeds"].tolist())
        base = self._base.get(batch_idx)
        if base is None or base[0] != seeds:
            sig, states = problem.trajectory(noise, None, cond=cond)
            base = (seeds, [((x - target(s)) ** 2).sum().double() for s, x in zip(sig, states)])
            self._base[batch_idx] = base
        sig, states = problem.trajectory(noise, module.lambdas.detach(), cond=cond)
        dode = [((x - target(s)) ** 2).sum().double() for s, x in zip(sig, states)]
        n = float(states[-1].numel())
        acc = torch.stack([torch.stack(dode), torch.stack(base[1]), torch.full_like(dode[0], n)
                           .expand(len(dode))])  # fmt: skip
        self._acc = acc if self._acc is None else self._acc + acc

    def metrics(self, module: FitHost) -> dict[str, float] | None:
        """The epoch's ``val/...`` metrics (summed over ranks), or ``None`` if no sample was
        seen on any rank."""
        acc, num_calls = self._acc, self.problem.num_calls
        if acc is None:
            acc = torch.zeros(3, num_calls, dtype=torch.float64, device=module.device)
        acc = module.trainer.strategy.reduce(acc, reduce_op="sum").cpu()
        if float(acc[2].min()) <= 0:
            return None
        dode, base = (acc[0] / acc[2]).tolist(), (acc[1] / acc[2]).tolist()
        metrics = {}
        for k in range(num_calls):
            metrics[f"val/mse_{k}"] = dode[k]
            metrics[f"val/mse_base_{k}"] = base[k]
        metrics["val/mse_final"] = dode[-1]
        metrics["val/mse_base_final"] = base[-1]
        metrics["val/mse_ratio_final"] = dode[-1] / base[-1] if base[-1] > 0 else math.nan
        return metrics
