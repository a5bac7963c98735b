"""The D-ODE correction: one wrapper around the model callable, for every solver.

D-ODE (Kim, Tang & Yu, CVPR 2024, Eq. 6): for the k-th model call the output the solver
consumes, ``o_k`` (x̂0 or ε̂), is replaced by ``õ_k = o_k + λ_k (o_k − o_{k−1})`` with λ_0 = 0.

History convention: ``o_{k−1}`` is the previous *raw* model output, while a multistep solver's
own history holds what it was given, i.e. the *corrected* ``õ``; this is the reference
implementation's behaviour, where the solver never sees the raw outputs. (The alternative,
raw histories, is measured once in ``experiments/history_variant.py``.)

Beyond the paper, the same wrapper carries the end-to-end learned solver's ingredients
(:mod:`dode.learned_solver`), so every host that samples through it runs them alike:

* **History coefficients** ``C`` (``[K, K]``, strictly lower triangular below the
  sub-diagonal): ``õ_k = o_k + λ_k (o_k − o_{k−1}) + Σ_{j<k−1} C_kj (o_k − o_j)``, the whole
  history of raw outputs; λ is the one-term case (the sub-diagonal).
* **Model-time shift** ``ξ`` (``[K]``): call k feeds the network ``σ_k · exp(ξ_k)`` instead of
  the integration σ_k (the solver's arithmetic keeps σ_k).

All zero (or ``None``) gives the base solver bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .denoisers import Denoiser

__all__ = ["DODECorrection", "check_history", "model_fn", "recomputed"]


def _check_finite(o: Tensor, k: int, sigma: float) -> None:
    """``ValueError`` if the model's output at call ``k`` (σ = ``sigma``) is not finite."""
    if not torch.isfinite(o).all():
        raise ValueError(
            f"the model returned non-finite values at call {k} (σ = {sigma:.6g}); check the "
            "model weights, its dtype (try float32/float64) and that σ is inside its range."
        )


def model_fn(
    denoiser: Denoiser, consumes: str, recompute: bool = False
) -> Callable[[Tensor, float], Tensor]:
    """The callable a solver consumes: ``denoiser.x0`` or ``denoiser.eps``; with
    ``recompute``, each call's activations are recomputed in the backward pass
    (:func:`recomputed`)."""
    fn = denoiser.x0 if consumes == "x0" else denoiser.eps
    return recomputed(fn) if recompute else fn


def recomputed(fn: Callable[[Tensor, float], Tensor]) -> Callable[[Tensor, float], Tensor]:
    """``fn(x, σ)`` whose activations are not kept for the backward pass but recomputed there
    (activation checkpointing, ``torch.utils.checkpoint`` without reentrance).

    A call that builds a graph keeps only its inputs and output; the backward pass runs the
    network's forward once more to rebuild that call's activations, then frees them. So a
    trajectory of K calls holds about one call's activations at a time instead of K, at the
    cost of one extra forward per call. Gradients are the same as without it (the network is
    deterministic in eval mode). Without gradients (``torch.no_grad``) it is ``fn`` itself.
    ``fn`` may be any model callable: a bound (conditional, guided) denoiser's ``x0`` / ``eps``,
    a latent or flow model in half precision; σ may carry a gradient (learned grid, time shift).
    """
    from torch.utils.checkpoint import checkpoint

    def call(x: Tensor, sigma: float | Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return fn(x, sigma)
        return checkpoint(fn, x, sigma, use_reentrant=False)

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def _correct(o: Tensor, prev: Tensor | None, lam) -> Tensor:
    """õ = o + λ (o − o_prev); the base output when there is no previous call."""
    if prev is None:
        return o
    return o + lam * (o - prev)


def check_history(
    coefficients: Tensor | None, shift: Tensor | None, num_calls: int, what: str = ""
) -> None:
    """``ValueError`` unless the history coefficients are ``[K, K]`` with zeros on and above
    the sub-diagonal and the shift is ``[K]``, both finite, for ``K = num_calls``."""
    if coefficients is not None:
        c = coefficients.detach()
        if c.shape != (num_calls, num_calls):
            raise ValueError(
                f"{what}the history coefficients must have shape [{num_calls}, {num_calls}] (one "
                f"row per model call), got {tuple(c.shape)}; they were fitted for another NFE or "
                "solver. Refit, or use the grid they came with."
            )
        if not torch.isfinite(c).all():
            raise ValueError(f"{what}the history coefficients hold non-finite values; refit.")
        if (torch.triu(c, diagonal=-1) != 0).any():
            raise ValueError(
                f"{what}history coefficient C[k, j] must be 0 for j >= k − 1 (the sub-diagonal "
                "is λ, the rest would use outputs not yet made); refit, or fix the file."
            )
    if shift is not None:
        xi = shift.detach()
        if xi.shape != (num_calls,):
            raise ValueError(
                f"{what}the model-time shift must have shape [{num_calls}] (one per model call), "
                f"got {tuple(xi.shape)}; refit, or use the grid it came with."
            )
        if not torch.isfinite(xi).all():
            raise ValueError(f"{what}the model-time shift holds non-finite values; refit.")


class DODECorrection:
    """Wrap a model callable so that the k-th call returns ``o_k + λ_k (o_k − o_{k−1})``
    (plus the history terms ``Σ_{j<k−1} C_kj (o_k − o_j)``, with the model called at
    ``σ_k · exp(ξ_k)``, where ``coefficients`` / ``shift`` are given).

    ``lambdas=None`` (and no coefficients or shift) returns the raw outputs (the base solver,
    bit for bit). ``lambdas``, ``coefficients`` and ``shift`` may be ``nn.Parameter`` objects:
    gradients flow to them through every solver. ``coefficients`` needs ``lambdas``.
    """

    def __init__(
        self,
        fn: Callable[[Tensor, float], Tensor],
        lambdas: Tensor | None = None,
        check_finite: bool = True,
        *,
        coefficients: Tensor | None = None,
        shift: Tensor | None = None,
    ) -> None:
        if coefficients is not None and lambdas is None:
            raise ValueError("history coefficients need λ (zeros for none): pass lambdas too.")
        self.fn = fn
        self.lambdas = lambdas
        self.coefficients = coefficients
        self.shift = shift
        self.check_finite = check_finite
        self.k = 0
        self.prev: Tensor | None = None
        self.history: list[Tensor] = []

    def _too_many(self, what: str, n: int) -> ValueError:
        return ValueError(
            f"the solver made more model calls than there are {what} ({n}); they were fitted "
            "for another NFE or solver. Refit, or use the grid they came with."
        )

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        k = self.k
        if self.shift is not None:
            if k >= len(self.shift):
                raise self._too_many("model-time shifts", len(self.shift))
            o = self.fn(x, sigma * torch.exp(self.shift[k]))
        else:
            o = self.fn(x, sigma)
        if self.check_finite:
            _check_finite(o, k, float(sigma))
        self.k += 1
        if self.lambdas is None:
            return o
        if k >= len(self.lambdas):
            raise ValueError(
                f"the solver made more model calls than there are λ ({len(self.lambdas)}); the λ "
                "were fitted for another NFE or solver. Refit, or use the grid they came with."
            )
        out = _correct(o, self.prev, self.lambdas[k])
        if self.coefficients is not None:
            row = self.coefficients[k]
            for j, oj in enumerate(self.history[: max(k - 1, 0)]):
                out = out + row[j] * (o - oj)
            self.history.append(o)
        if self.check_finite and k > 0 and not torch.isfinite(out).all():
            raise ValueError(
                f"the D-ODE correction made non-finite values at call {k} (σ = "
                f"{float(sigma):.6g}, λ_{k} = {float(self.lambdas[k]):.6g}) from finite model "
                "outputs; λ is too large or not finite: refit, or check the solver file."
            )
        self.prev = o
        return out
