"""What every fit mode of :class:`~dode.lit.DODEModule` shares: the names, the stop error and
the hooks a mode answers.

The module owns the Lightning side (hooks, logging, checkpoints, the λ parameter); each mode
does its own work in a small class the module delegates to:

=================  ===========================================  ============================
``lstsq``          :class:`dode.lit.lstsq.LstsqFit`             closed form, epoch k fits λ_k
``sgd-local``      :class:`dode.lit.gradient.GradientFit`       Adam, one call's error per λ
``sgd-global``     :class:`dode.lit.gradient.GradientFit`       Adam through the trajectory
``end-to-end``     :class:`dode.lit.end_to_end.EndToEndFit`     grid, coefficients, shift
=================  ===========================================  ============================

A mode is made with its problem (:class:`~dode.lit.problem.FitProblem`: the model call, the
teacher lookup, the grid, the solver, the conditioning binder, the dtypes); its hooks take the
Lightning module as their first argument, of which they use only what
:class:`~dode.lit.problem.FitHost` lists (the mode keeps no reference to it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import Tensor

    from .problem import FitHost, FitProblem

__all__ = ["FitMode", "FIT_MODES", "FitStopped", "ModeFit"]

FitMode = Literal["lstsq", "sgd-local", "sgd-global", "end-to-end"]
FIT_MODES: tuple[str, ...] = ("lstsq", "sgd-local", "sgd-global", "end-to-end")


class FitStopped(RuntimeError):
    """A fit that stopped before its end (a limit, a signal): nothing half-written, no solver
    file; ``exit_code`` is the status ``python -m dode.train`` exits with."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ModeFit:
    """The hooks a fit mode answers; each does nothing here.

    Args:
        problem: what the mode fits (:class:`~dode.lit.problem.FitProblem`).

    Attributes:
        automatic_optimization: whether Lightning runs the optimizer on the returned loss.
    """

    automatic_optimization: bool = True
    #: the mode validates itself (its hooks below) instead of the MSE to the teacher per state
    owns_validation: bool = False

    def __init__(self, problem: FitProblem) -> None:
        self.problem = problem

    def setup(self, module: FitHost, stage: str) -> None:
        """After the data module is attached (``module.trainer`` is set)."""

    def optimizers(self, module: FitHost):
        """The optimizer of this mode (``None``: Adam on λ with the module's ``lr``)."""
        return None

    def on_train_start(self, module: FitHost) -> None:
        """Before the first training batch (after a checkpoint is restored)."""

    def on_before_optimizer_step(self, module: FitHost, optimizer) -> None:
        """After the backward pass (gradients synced), before the optimizer's step."""

    def validation_step(self, module: FitHost, batch: dict, batch_idx: int) -> None:
        """One validation batch (modes that set ``owns_validation``)."""

    def on_validation_epoch_end(self, module: FitHost) -> None:
        """After the validation batches (modes that set ``owns_validation``)."""

    def state_dict(self) -> dict | None:
        """What the mode keeps in the checkpoint besides the module's parameters."""
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s entry."""

    def check_state(self, state: dict, val_seeds: list[int] | None = None) -> None:
        """``ValueError`` if :meth:`state_dict`'s entry ``state`` (a checkpoint's) cannot be
        resumed by this mode with these settings; checked before the run starts."""

    def on_train_epoch_start(self, module: FitHost) -> None:
        """Before an epoch's first training batch."""

    def training_step(self, module: FitHost, batch: dict, batch_idx: int) -> Tensor | None:
        """One training batch: the loss to optimise, or ``None`` (manual optimisation)."""
        return None

    def on_train_epoch_end(self, module: FitHost) -> None:
        """After an epoch's last training batch."""

    def on_train_end(self, module: FitHost) -> None:
        """After the training loop (raise :class:`FitStopped` if it ended early)."""

    def fitted(self, module: FitHost) -> bool:
        """Whether every λ has its value (validation is skipped before)."""
        return True
