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

**Bounds** (one definition, used by the fit's parametrisation and by every check of a solver
file or host): a history coefficient (and λ of a solver that carries history coefficients) lies
in ``[−COEFFICIENT_BOUND, COEFFICIENT_BOUND]`` (the fit's ``c = C·tanh(raw/C)``,
:func:`bounded_coefficients`); the shift of call k lies in ``[lo_k, hi_k]``
(:func:`shift_bounds`): at most :data:`SHIFT_FRACTION` of the smallest step in log σ between
σ_k and its neighbours among the grid's and the calls' σ (the log-SNR step, halved), never above
the grid's first σ (σ_max), and for the smallest σ no lower than ``floor`` where it is given
(the model's σ_min). As in LD3 (Tong et al., ICLR 2025), a model time may move inside its own
interval, never past its neighbours: the call order in σ is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .denoisers import Denoiser

__all__ = [
    "COEFFICIENT_BOUND",
    "SHIFT_FRACTION",
    "DODECorrection",
    "bounded_coefficients",
    "bounded_shift",
    "call_sigmas",
    "check_history",
    "model_fn",
    "recomputed",
    "shift_bounds",
]

#: |history coefficient| (and |λ| of a solver with history coefficients) at most this: the
#: end-to-end fit parametrises them as ``C·tanh(raw/C)``; fits give values of order 1, a file
#: beyond it is a hand edit or a broken fit (its samples blow up) and is refused.
COEFFICIENT_BOUND = 10.0
#: a call's model-time shift moves its σ by at most this fraction of the smallest adjacent step
#: in log σ (LD3's bound on its decoupled model times: half the smallest step).
SHIFT_FRACTION = 0.5
#: relative slack of the bound checks (float rounding of a file's values)
_SLACK = 1e-6


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


def bounded_coefficients(raw: Tensor, bound: float = COEFFICIENT_BOUND) -> Tensor:
    """``C·tanh(raw/C)``: the fit's coefficients (λ and history), in ``(−C, C)`` for any
    ``raw``, equal to ``raw`` near 0 (slope 1 at 0, so a zero start is the base solver)."""
    return bound * torch.tanh(raw / bound)


def call_sigmas(solver, sigmas) -> list[float]:
    """σ of every model call of ``solver`` on the grid ``sigmas``, in order (stage points
    included): the solver run on a dummy state with a model that records its σ."""
    calls: list[float] = []

    def record(x: Tensor, sigma) -> Tensor:
        calls.append(float(sigma))
        return torch.zeros_like(x)

    grid = [float(v) for v in torch.as_tensor(sigmas, dtype=torch.float64).flatten()]
    solver.solve(record, torch.zeros(1, dtype=torch.float64), grid, None)
    return calls


def shift_bounds(
    calls: list[float] | Tensor,
    sigmas: list[float] | Tensor,
    *,
    floor: float | None = None,
    fraction: float = SHIFT_FRACTION,
) -> tuple[Tensor, Tensor]:
    """The bounds ``(lo, hi)`` (``[K]`` float64, ``lo <= 0 <= hi``) of the model-time shift ξ
    of the calls made at σ ``calls`` on the grid ``sigmas``.

    The points are the grid's and the calls' positive σ. Call k may move by ``fraction`` of the
    smallest step in log σ between σ_k and its neighbouring points: ``|ξ_k| <= fraction · min(
    log(σ_above/σ_k), log(σ_k/σ_below))``. The largest point (the grid's σ_0, the model's
    σ_max) has no room above (``hi = 0``); the smallest one's step below goes to ``floor``
    (the model's σ_min) when given, else only its step above counts. So no call leaves the
    interval between its neighbours, none goes above σ_0, and none below ``floor``.
    """
    c = [float(v) for v in torch.as_tensor(calls, dtype=torch.float64).flatten()]
    g = [float(v) for v in torch.as_tensor(sigmas, dtype=torch.float64).flatten()]
    pts = sorted({v for v in [*c, *g] if v > 0 and math.isfinite(v)})
    lo, hi = [], []
    for s in c:
        if not (s > 0 and math.isfinite(s)):
            lo.append(0.0)
            hi.append(0.0)
            continue
        i = pts.index(s)
        up = math.log(pts[i + 1] / s) if i + 1 < len(pts) else None
        if i > 0:
            down = math.log(s / pts[i - 1])
        elif floor is not None:
            down = math.log(s / floor) if 0 < floor < s else 0.0
        else:
            down = None
        gaps = [v for v in (up, down) if v is not None]
        b = fraction * min(gaps) if gaps else 0.0
        lo.append(-b)
        hi.append(b if up is not None else 0.0)
    return torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)


def bounded_shift(u: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The shift ``ξ = u·hi`` for ``u > 0``, ``ξ = −u·lo`` for ``u <= 0``: inside ``[lo, hi]``
    for ``u`` in ``[−1, 1]`` (the fit keeps ``u`` there, 0 where a side has no room), 0 at
    ``u = 0``; ``lo``/``hi`` come from :func:`shift_bounds` on the current grid, so the shift
    follows the grid as it is learned."""
    return torch.where(u > 0, u * hi, -u * lo)


def _check_bounds(
    coefficients: Tensor | None,
    shift: Tensor | None,
    what: str,
    lambdas: Tensor | None,
    calls: list[float] | None,
    sigmas: Tensor | None,
    model_range: tuple[float, float] | None,
) -> None:
    """The bounds of the module docstring (``ValueError`` naming the entry and the fix)."""
    bound = COEFFICIENT_BOUND * (1 + _SLACK)
    if coefficients is not None:
        c = coefficients.detach().to(torch.float64)
        big = (c.abs() > bound).nonzero().tolist()
        if big:
            k, j = big[0]
            raise ValueError(
                f"{what}history coefficient C[{k}, {j}] = {float(c[k, j]):.6g} is beyond the "
                f"bound ±{COEFFICIENT_BOUND:g} (dode.correction.COEFFICIENT_BOUND; {len(big)} "
                "entries beyond it): its samples blow up. The file was edited or the fit is "
                "broken; refit (the end-to-end fit keeps them inside the bound), or restore the "
                "file."
            )
        if lambdas is not None:
            lam = torch.as_tensor(lambdas, dtype=torch.float64).detach().flatten()
            big = (lam.abs() > bound).nonzero().flatten().tolist()
            if big:
                k = big[0]
                raise ValueError(
                    f"{what}λ[{k}] = {float(lam[k]):.6g} of a solver with history coefficients "
                    f"is beyond the bound ±{COEFFICIENT_BOUND:g} "
                    "(dode.correction.COEFFICIENT_BOUND): its samples blow up. Refit, or restore "
                    "the file."
                )
    if shift is None:
        return
    xi = shift.detach().to(torch.float64).flatten()
    if calls is not None and sigmas is not None:
        lo, hi = shift_bounds(calls, sigmas)
        for k in range(len(xi)):
            v = float(xi[k])
            if v > float(hi[k]) * (1 + _SLACK) + 1e-12 or v < float(lo[k]) * (1 + _SLACK) - 1e-12:
                raise ValueError(
                    f"{what}model-time shift ξ[{k}] = {v:.6g} of call {k} (σ = {calls[k]:.6g}, "
                    f"the network at σ·exp(ξ) = {calls[k] * math.exp(v):.6g}) is outside its "
                    f"bound [{float(lo[k]):.4g}, {float(hi[k]):.4g}]: at most "
                    f"{SHIFT_FRACTION:g} of the smallest adjacent step in log σ, never above "
                    "the grid's first σ (dode.correction.shift_bounds). The file was edited or "
                    "fitted without the bound; refit, or restore the file."
                )
    if calls is not None and model_range is not None:
        low, top = model_range
        for k in range(len(xi)):
            v, s = float(xi[k]), calls[k]
            if v == 0 or not (s > 0 and math.isfinite(s)):
                continue
            net = s * math.exp(v)
            below = low > 0 and net < low * (1 - 1e-3) and net < s
            above = math.isfinite(top) and net > top * (1 + 1e-3) and net > s
            if below or above:
                raise ValueError(
                    f"{what}model-time shift ξ[{k}] = {v:.6g} takes call {k} (σ = {s:.6g}) to "
                    f"σ = {net:.6g}, {'below' if below else 'above'} the model's σ range "
                    f"[{low:.6g}, {top:.6g}]: the network was never trained there. Refit for "
                    "this model (the fit keeps the shift inside the model's range), or sample "
                    "with the model the file was fitted on."
                )


def check_history(
    coefficients: Tensor | None,
    shift: Tensor | None,
    num_calls: int,
    what: str = "",
    *,
    lambdas: Tensor | None = None,
    calls: list[float] | None = None,
    sigmas: Tensor | None = None,
    model_range: tuple[float, float] | None = None,
) -> None:
    """``ValueError`` unless the history coefficients are ``[K, K]`` with zeros on and above
    the sub-diagonal and the shift is ``[K]``, both finite, for ``K = num_calls``, and both
    inside their bounds (the module docstring): the coefficients (and ``lambdas``, where
    coefficients are given) always; the shift where the calls' σ (``calls``, from
    :func:`call_sigmas`) and the grid ``sigmas`` are given; and, with the model's
    ``model_range`` ``(σ_min, σ_max)``, no shifted call outside it (0 / ∞: no bound)."""
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
    _check_bounds(coefficients, shift, what, lambdas, calls, sigmas, model_range)


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
