"""Solver base class: a plain loop over ``model(x, sigma)`` and a σ-grid.

A solver consumes either x̂0 (``consumes = "x0"``) or ε̂ (``consumes = "eps"``); the caller
hands it a callable that returns exactly that. The obligations every solver meets are listed
in :class:`Solver`'s docstring and checked over the whole registry by
``tests/test_solver_contract.py``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from torch import Tensor

ModelFn = Callable[[Tensor, float], Tensor]
StepCallback = Callable[[int, float, Tensor], None]


class Solver:
    """Base class of every solver.

    Subclasses implement :meth:`solve` and, if their NFE is not one per step, :meth:`nfe`
    (and :meth:`min_steps`, :meth:`stage_sigmas` where they apply). ``callback(i, sigma_next,
    x)`` is called after step ``i`` with the state at ``sigma_next`` (the teacher uses it to
    record its trajectory).

    The contract. The D-ODE correction, the teacher and the closed-form fit treat every solver
    alike and rely on these; ``tests/test_solver_contract.py`` checks each of them for every
    registered solver and option:

    1. **Exact call count.** ``solve`` calls ``model`` exactly ``nfe(num_steps)`` times on a
       grid of ``num_steps`` intervals (one λ per call; the correction raises otherwise).
    2. **Known noise levels.** Every σ the model is called at is a grid point or one of
       ``stage_sigmas(sigmas)``: the teacher's grid is refined to contain exactly those σ, and
       the fit matches its targets by σ.
    3. **Affine in the outputs.** Each update is an affine combination of the state and model
       outputs, with coefficients that depend on the grid only (never on the outputs' values):
       the state after call k is then affine in λ_k, which the closed-form fit
       ``λ_k = <g, r>/<g, g>`` relies on.
    4. **Elementwise.** The arithmetic is elementwise and broadcasts over a new leading
       dimension: a model output stacked as ``[o, o']`` (shape ``(2, *x.shape)``) yields the
       two resulting states stacked the same way. The fit's replay evaluates both branches of
       call k (λ_k = 0 and 1) in one pass this way. A solver that cannot honour this sets
       ``replay_batchable = False`` and the fit replays the two branches separately.
    5. **Differentiable.** No ``torch.no_grad``, ``detach`` or in-place writes on the state:
       gradients reach λ (``nn.Parameter``) through every update.
    6. **Rebuildable.** ``get_solver(**solver.config())`` rebuilds an equal solver. The base
       :meth:`config` reads every constructor parameter from the attribute of the same name,
       so a subclass stores each one as ``self.<parameter>`` (normalised values are fine).
    """

    name: ClassVar[str] = "solver"
    consumes: ClassVar[Literal["x0", "eps"]] = "x0"
    orders: ClassVar[tuple[int, ...]] = (1,)
    replay_batchable: ClassVar[bool] = True

    def __init__(self, order: int | None = None) -> None:
        order = self.orders[-1] if order is None else order
        if order not in self.orders:
            raise ValueError(
                f"{self.name} supports order {', '.join(map(str, self.orders))}; got order={order!r}."
            )
        self.order = int(order)

    # ---- accounting -------------------------------------------------------------------------
    def nfe(self, num_steps: int) -> int:
        """Number of model calls for a grid of ``num_steps`` intervals."""
        return num_steps

    def min_steps(self) -> int:
        return 1

    def steps_for_nfe(self, nfe: int) -> int:
        """The number of grid intervals that gives exactly ``nfe`` model calls."""
        for n in range(1, max(nfe, 1) + 1):
            if n >= self.min_steps() and self.nfe(n) == nfe:
                return n
        ok = sorted({self.nfe(n) for n in range(self.min_steps(), self.min_steps() + 12)})
        raise ValueError(
            f"{self.describe()} cannot use exactly NFE={nfe}; reachable NFE values are "
            f"{', '.join(map(str, ok))}, ... Pick one of those or a lower-order solver."
        )

    def stage_sigmas(self, sigmas: Tensor) -> Tensor:
        """σ of intermediate stage points that are not on the grid (multi-stage solvers)."""
        return torch.empty(0, dtype=torch.float64)

    def describe(self) -> str:
        return f"{self.name}(order={self.order})" if len(self.orders) > 1 else self.name

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild this solver with :func:`get_solver`:
        ``{"name": ..., <each constructor parameter>: self.<parameter>}``, in signature order.

        Raises:
            TypeError: a subclass does not store a constructor parameter under its own name
                (a programming error in the subclass, see contract item 6).
        """
        out: dict = {"name": self.name}
        for p in inspect.signature(type(self).__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if not hasattr(self, p.name):
                raise TypeError(
                    f"{type(self).__name__} does not store its constructor parameter "
                    f"{p.name!r} as self.{p.name}; config() cannot rebuild it."
                )
            out[p.name] = getattr(self, p.name)
        return out

    # ---- running ----------------------------------------------------------------------------
    def check_grid(self, sigmas: Tensor | list[float]) -> list[float]:
        s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
        if s.numel() < 2:
            raise ValueError("the σ grid needs at least two points (σ_max, ..., 0).")
        if not torch.isfinite(s).all():
            i = int((~torch.isfinite(s)).nonzero()[0])
            raise ValueError(
                f"σ[{i}] = {s[i].item()} is not finite; every σ of the grid must be a finite "
                "number (start at the model's largest finite σ)."
            )
        if s[0] < s[-1] and (s[1:] >= s[:-1]).all():
            raise ValueError(
                f"the σ grid is reversed: it ascends from σ[0] = {s[0].item():.6g} to σ[-1] = "
                f"{s[-1].item():.6g}, but dode grids run from σ_max down to 0; reverse it "
                "(sigmas.flip(0))."
            )
        if (s[:-1] <= 0).any() or s[-1] < 0:
            raise ValueError("the σ grid must be finite, positive, and end with σ >= 0.")
        if not (s[1:] < s[:-1]).all():
            i = int((s[1:] >= s[:-1]).nonzero()[0])
            raise ValueError(
                f"the σ grid must be strictly descending, but σ[{i}] = {s[i].item():.6g} <= "
                f"σ[{i + 1}] = {s[i + 1].item():.6g}; sort it largest first without repeats, or "
                "build it with dode.grids.schedules (karras, log_uniform, time_uniform, explicit)."
            )
        steps = s.numel() - 1
        if steps < self.min_steps():
            raise ValueError(
                f"{self.describe()} needs at least {self.min_steps()} steps "
                f"(NFE >= {self.nfe(self.min_steps())}); the grid has {steps}."
            )
        return s.tolist()

    def __call__(
        self,
        model: ModelFn,
        x: Tensor,
        sigmas: Tensor | list[float],
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Integrate from ``sigmas[0]`` to ``sigmas[-1]`` starting at ``x`` (already scaled)."""
        return self.solve(model, x, self.check_grid(sigmas), callback)

    def solve(
        self, model: ModelFn, x: Tensor, s: list[float], callback: StepCallback | None
    ) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def log(v):
    """``log`` of a float or a tensor (a σ may be a tensor that carries a gradient, e.g. a
    learned grid; floats keep the exact float arithmetic)."""
    return torch.log(v) if isinstance(v, torch.Tensor) else math.log(v)


def expm1(v):
    """``exp(v) − 1`` of a float or a tensor (see :func:`log`)."""
    return torch.expm1(v) if isinstance(v, torch.Tensor) else math.expm1(v)


def multistep_order(i: int, n: int, s: list[float], order: int, lower_order_final: bool) -> int:
    """Order of step ``i`` of ``n`` for a multistep method: warm start with lower orders; with
    ``lower_order_final`` (diffusers' rule for fewer than 15 steps) the last step is first order
    and the one before at most second order; the step to σ = 0 is always first order."""
    k = min(order, i + 1)
    if lower_order_final and n < 15:
        if i == n - 1:
            k = 1
        elif i == n - 2:
            k = min(k, 2)
    if s[i + 1] == 0:
        k = 1
    return k
