"""``fit_mode: sgd-local`` and ``sgd-global``: λ fitted by Adam on the MSE to the teacher.

``sgd-local``
    The state before call k is detached, so the loss of the state after call k reaches only λ_k
    (the closed form's objective, by gradients; no backprop through the network).
``sgd-global``
    The MSE of every state of the whole trajectory, backpropagated through the network
    (activation checkpointing per call).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..lambda_fit import branch
from .fit_modes import ModeFit

if TYPE_CHECKING:
    from .problem import FitHost, FitProblem

__all__ = ["GradientFit"]


class GradientFit(ModeFit):
    """λ by gradients: the states the loss sees, the loss and its logging.

    Args:
        problem: what is fitted.
        scope: ``local`` (one call's error reaches one λ) or ``global`` (the whole trajectory).
        activation_checkpointing: ``global``: recompute network activations in backward.
    """

    automatic_optimization = True

    def __init__(
        self,
        problem: FitProblem,
        scope: Literal["local", "global"],
        activation_checkpointing: bool = True,
    ) -> None:
        super().__init__(problem)
        if scope not in ("local", "global"):
            raise ValueError(f"scope must be 'local' or 'global', got {scope!r}.")
        self.scope = scope
        self.activation_checkpointing = activation_checkpointing

    def training_step(self, module: FitHost, batch: dict, batch_idx: int) -> Tensor:
        noise = batch["noise"]
        target = self.problem.target(batch["teacher"])
        sig, states = self.states(module, noise, batch.get("cond"))
        errs = torch.stack([((x - target(s)) ** 2).mean() for s, x in zip(sig, states)])
        loss = errs.mean()
        bs = noise.shape[0]
        module.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k, e in enumerate(errs.detach()):
            module.log(f"train/mse_{k}", e, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def on_train_epoch_end(self, module: FitHost) -> None:
        for k, v in enumerate(module.lambdas.detach().tolist()):
            module.log(f"train/lambda_{k}", v)

    def states(self, module: FitHost, noise: Tensor, cond=None) -> tuple[list[float], list[Tensor]]:
        """The states the loss compares with the teacher, and their σ."""
        if self.scope == "local":
            return self.local_states(module, noise, cond)
        return self.global_states(module, noise, cond)

    def local_states(
        self, module: FitHost, noise: Tensor, cond=None
    ) -> tuple[list[float], list[Tensor]]:
        """The state after each call k from the detached state before it (gradient: λ_k)."""
        problem = self.problem
        fn = problem.model_fn(cond)

        def frozen(x: Tensor, sigma: float) -> Tensor:
            with torch.no_grad():
                return fn(x.detach(), sigma)

        cache: list[Tensor] = []
        lam = module.lambdas.detach()
        sig, states = [], []
        s_list = problem.s_list
        for k in range(problem.num_calls):
            x, s = branch(
                problem.solver, frozen, s_list, noise, cache, lam, k, module.lambdas[k],
                problem.check_finite,
            )  # fmt: skip
            sig.append(s)
            states.append(x)
        return sig, states

    def global_states(
        self, module: FitHost, noise: Tensor, cond=None
    ) -> tuple[list[float], list[Tensor]]:
        """The whole trajectory with the λ parameter (gradient: every λ, through the net)."""
        fn = self.problem.model_fn(cond)
        if self.activation_checkpointing:

            def call(x: Tensor, sigma: float) -> Tensor:
                return checkpoint(fn, x, sigma, use_reentrant=False)
        else:
            call = fn
        return self.problem.trajectory(noise, module.lambdas, call)
