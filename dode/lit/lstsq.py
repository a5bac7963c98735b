"""``fit_mode: lstsq``: the paper's closed form, one epoch per model call.

Epoch k fits λ_k: every training batch adds its float64 sufficient statistics
``[<g, r>, <g, g>, <r, r>, n]`` (:func:`dode.lambda_fit.batch_stats`); after a rank's last batch
they are summed over ranks (all-reduce) and ``λ_k = <g, r>/<g, g>`` is set on every rank. The
model outputs of calls < k are cached per batch (``cache_outputs``), so each call is evaluated
once. The module's ``max_epochs`` is set to K here, whoever built the ``Trainer``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..lambda_fit import LambdaFit, batch_stats
from .fit_modes import FitStopped, ModeFit

if TYPE_CHECKING:
    from .problem import FitHost, FitProblem

__all__ = ["LstsqFit"]


class LstsqFit(ModeFit):
    """The closed-form λ fit: statistics per batch, one λ per epoch, output caches.

    Args:
        problem: what is fitted.
        cache_outputs: keep each batch's model outputs between epochs (K outputs per sample in
            memory) instead of re-evaluating calls < k (K²/2 calls).
    """

    automatic_optimization = False  # λ is set in closed form; the optimizer sees no gradient

    def __init__(self, problem: FitProblem, cache_outputs: bool = True) -> None:
        super().__init__(problem)
        self.cache_outputs = cache_outputs
        self._acc: Tensor | None = None
        self._acc_sigma = 0.0
        self._caches: dict[int, tuple[tuple[int, ...], list[Tensor]]] = {}

    def setup(self, module: FitHost, stage: str) -> None:
        # The one place max_epochs is set for lstsq (epoch k fits λ_k).
        if stage == "fit":
            module.trainer.fit_loop.max_epochs = self.problem.num_calls

    def on_train_epoch_start(self, module: FitHost) -> None:
        self._acc = None

    @torch.no_grad()
    def training_step(self, module: FitHost, batch: dict, batch_idx: int) -> None:
        k, problem = module.current_epoch, self.problem
        if k >= problem.num_calls:
            return None
        seeds = tuple(batch["seeds"].tolist())
        cached = self._caches.get(batch_idx)
        if not self.cache_outputs or cached is None or cached[0] != seeds:
            cached = (seeds, [])
            if self.cache_outputs:
                self._caches[batch_idx] = cached
        st, sigma = batch_stats(
            problem.solver,
            problem.model_fn(batch.get("cond")),
            problem.s_list,
            batch["noise"],
            problem.target(batch["teacher"]),
            cached[1],
            module.lambdas.detach(),
            k,
            problem.check_finite,
        )
        self._acc = st if self._acc is None else self._acc + st
        self._acc_sigma = sigma
        if batch_idx == module.trainer.num_training_batches - 1:
            self.solve_call(module, k)
        return None

    def solve_call(self, module: FitHost, k: int) -> None:
        """After this rank's last batch of epoch k: all-reduce the statistics, set λ_k."""
        acc = self._acc if self._acc is not None else torch.zeros(4, dtype=torch.float64)
        st = module.trainer.strategy.reduce(acc.to(module.device), reduce_op="sum").cpu()
        lam, degenerate = LambdaFit.solve(st, k)
        with torch.no_grad():
            module.lambdas[k] = lam
        module.num_fitted.fill_(k + 1)
        # One optimizer "step" per fitted λ (no gradients, so nothing moves): global_step then
        # counts the fitted λ, and Lightning writes the epoch-end checkpoints.
        module.optimizers().step()
        info = module.fit_info
        info.record(k, self._acc_sigma, lam, st, degenerate)
        log = module.log
        log(f"train/lambda_{k}", lam, on_step=False, on_epoch=True)
        log(f"train/mse_before_{k}", info.mse_before[-1], on_step=False, on_epoch=True)
        log(f"train/mse_after_{k}", info.mse_after[-1], on_step=False, on_epoch=True)
        log("train/num_fitted", float(k + 1), on_step=False, on_epoch=True, prog_bar=True)
        if k + 1 == self.problem.num_calls:
            self._caches.clear()

    def fitted(self, module: FitHost) -> bool:
        return int(module.num_fitted) >= self.problem.num_calls

    def on_train_end(self, module: FitHost) -> None:
        n, num_calls = int(module.num_fitted), self.problem.num_calls
        if n < num_calls:
            raise FitStopped(
                f"the lstsq fit stopped after {n} of {num_calls} λ (one epoch per model "
                f"call; a max_epochs/max_steps/max_time limit ended it): no solver file was "
                f"written{'; the last checkpoint holds the λ fitted so far' if n else ''}. "
                "Resume with --ckpt_path last (ckpt_path='last') and without the limit to fit "
                "the rest."
            )
