"""Sampling with a (D-)solver: :func:`sample`, :func:`sample_many`.

:func:`sample` validates the denoiser, solver, noise and grid, wraps the model callable in the
D-ODE correction (:class:`~dode.correction.DODECorrection`) and integrates the probability-flow
ODE from ``noise · σ_0``. :func:`sample_many` runs several λ sets from the same noise and
evaluates their shared first model call once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .correction import DODECorrection, call_sigmas, check_history, model_fn
from .denoisers import Denoiser
from .solvers import Solver, get_solver

__all__ = ["rows", "sample", "sample_many"]


def _check_denoiser(denoiser) -> Denoiser:
    if denoiser is None:
        raise ValueError(
            "no model given; pass a dode.denoisers.Denoiser (e.g. DiffusersDenoiser."
            "from_pretrained(path) or CallableDenoiser(fn, sigma_min, sigma_max))."
        )
    if not isinstance(denoiser, Denoiser):
        raise ValueError(
            f"expected a dode.denoisers.Denoiser, got {type(denoiser).__name__}; wrap a plain "
            "function fn(x, sigma) -> x0 with dode.denoisers.CallableDenoiser(fn, sigma_min, "
            "sigma_max)."
        )
    return denoiser


def _check_finite_start(sigmas) -> None:
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if s.numel() and torch.isposinf(s[0]):
        raise ValueError(
            "the σ grid starts at ∞ (a flow grid from t = 1, as FlowMatchEulerDiscreteScheduler "
            "uses): no solver can step from there. Map the pipeline's latents and the grid "
            "first, noise, sigmas = den.start(latents, sigmas) (FlowDenoiser.start, or "
            "dode.denoisers.flow_start(den, latents, sigmas)), then sample on the finite grid."
        )


def _check_batch(noise: Tensor) -> None:
    """``ValueError`` for an empty batch (nothing to sample or fit)."""
    if noise.shape[0] == 0:
        raise ValueError(
            f"the noise batch is empty (shape {tuple(noise.shape)}); pass at least one sample, "
            "noise of shape [B, ...] with B >= 1."
        )


def _check_lambdas(lambdas: Tensor) -> None:
    """``ValueError`` naming λ if any is NaN or ±inf."""
    finite = torch.isfinite(lambdas.detach())
    if not finite.all():
        k = int((~finite).nonzero()[0])
        raise ValueError(
            f"λ[{k}] = {lambdas[k].item()} is not finite; every λ must be a finite number. "
            "Refit, or check the solver file."
        )


def _prepare(denoiser, solver, noise, sigmas) -> tuple[Denoiser, Solver, Tensor]:
    """The checked denoiser, the solver instance and the checked grid (float64)."""
    denoiser = _check_denoiser(denoiser)
    solver = get_solver(solver)
    denoiser.check_noise(noise)
    if noise.dtype in (torch.float16, torch.bfloat16):
        name = str(noise.dtype).removeprefix("torch.")
        raise ValueError(
            f"noise is {name}, so the ODE would be integrated in {name}: too coarse (samples "
            "differ from float32 ones by up to 0.8 on [-1, 1] data). Pass noise.float() (the "
            "network may still run in half precision: its weights' dtype is separate)."
        )
    _check_finite_start(sigmas)
    _check_batch(noise)
    s = torch.tensor(solver.check_grid(sigmas), dtype=torch.float64)
    return denoiser, solver, s


def sample(
    denoiser: Denoiser,
    solver: Solver | str,
    noise: Tensor,
    sigmas: Tensor | Sequence[float],
    lambdas: Tensor | Sequence[float] | None = None,
    *,
    check_finite: bool = True,
    callback=None,
    coefficients: Tensor | None = None,
    shift: Tensor | None = None,
) -> Tensor:
    """Solve the probability-flow ODE from ``noise · σ_0`` down the grid.

    Args:
        denoiser: the (frozen) model.
        solver: a :class:`~dode.solvers.Solver` or its name.
        noise: standard normal noise ``[B, ...]``; integration runs in its dtype.
        sigmas: descending grid ending in 0.
        lambdas: one λ per model call (``solver.nfe(len(sigmas) − 1)``), or ``None`` for the
            base solver.
        check_finite: raise on non-finite model outputs (one reduction per call).
        callback: ``callback(i, sigma_next, x)`` after every step.
        coefficients: the end-to-end solver's history coefficients ``[K, K]`` (zero on and
            above the sub-diagonal; needs ``lambdas``), see :mod:`dode.correction`.
        shift: the end-to-end solver's model-time shift ``[K]``: call k feeds the model
            ``σ_k · exp(ξ_k)``.

    Returns:
        The sample at ``sigmas[-1]`` (σ = 0: the generated data).
    """
    denoiser, solver, s = _prepare(denoiser, solver, noise, sigmas)
    if lambdas is not None:
        lambdas = torch.as_tensor(lambdas) if not isinstance(lambdas, Tensor) else lambdas
        nfe = solver.nfe(len(s) - 1)
        if lambdas.ndim != 1 or len(lambdas) != nfe:
            raise ValueError(
                f"need one λ per model call: {solver.describe()} on {len(s) - 1} steps makes "
                f"{nfe} calls, got λ of shape {tuple(lambdas.shape)}."
            )
        _check_lambdas(lambdas)
    if coefficients is not None or shift is not None:
        nfe = solver.nfe(len(s) - 1)
        if coefficients is not None and lambdas is None:
            raise ValueError(
                "history coefficients need λ (the one-term part; zeros for none): pass lambdas."
            )
        check_history(
            coefficients, shift, nfe, f"{solver.describe()} on {len(s) - 1} steps: ",
            lambdas=lambdas, calls=call_sigmas(solver, s) if shift is not None else None,
            sigmas=s, model_range=(float(denoiser.sigma_min), float(denoiser.sigma_max)),
        )  # fmt: skip
    wrapped = DODECorrection(
        model_fn(denoiser, solver.consumes), lambdas, check_finite,
        coefficients=coefficients, shift=shift,
    )  # fmt: skip
    x = noise * s[0].item()
    out = solver(wrapped, x, s, callback)
    if check_finite and not torch.isfinite(out).all():
        raise ValueError(
            f"the final state of {solver.describe()} is not finite although every model output "
            "was; check the σ grid and λ (refit), or integrate in float64."
        )
    return out


class _SharedFirstCall(Denoiser):
    """A denoiser that answers a repeated first call from memory.

    After :meth:`arm`, the next call is remembered; a later call with bit-identical ``x`` and
    σ returns the remembered output. Runs of one solver from the same noise with different λ
    start with the same call (λ_0 = 0), so it is evaluated once.
    """

    def __init__(self, inner: Denoiser) -> None:
        super().__init__(inner.sigma_min, inner.sigma_max, inner.sample_shape)
        self.inner = inner
        self.prediction = inner.prediction
        self._memo: tuple[Tensor, Tensor, Tensor] | None = None
        self._armed = False

    def arm(self) -> None:
        self._memo, self._armed = None, True

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return self.inner.round_sigma(sigma)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self._memo is not None:
            mx, ms, out = self._memo
            if mx.shape == x.shape and torch.equal(ms, sigma) and torch.equal(mx, x):
                return out
        out = self.inner.denoise(x, sigma)
        if self._armed:
            self._memo, self._armed = (x, sigma, out), False
        return out


def sample_many(
    denoiser: Denoiser,
    solver: Solver | str,
    noise: Tensor,
    sigmas: Tensor | Sequence[float],
    lambdas: Sequence[Tensor | Sequence[float] | None],
    *,
    batch_size: int | None = None,
    check_finite: bool = True,
) -> list[Tensor]:
    """:func:`sample` from the same noise with several λ sets (``None``: the base solver).

    The runs share their first model call (no λ touches it), evaluated once per batch: with
    base and D-solver at NFE ``n`` this saves one call in ``2n``. Results equal separate
    :func:`sample` calls bit for bit.

    Args:
        lambdas: the λ sets, one result per entry.
        batch_size: samples per batch (default: all at once); a bound (conditional) denoiser
            is sliced to each batch's rows (:func:`rows`).

    Returns:
        One ``[B, ...]`` tensor per λ set, in order.
    """
    if isinstance(lambdas, Tensor) or not isinstance(lambdas, Sequence) or not lambdas:
        raise ValueError(
            "lambdas must be a non-empty list of λ sets (None for the base solver), e.g. "
            "[None, fitted.lambdas]."
        )
    denoiser = _check_denoiser(denoiser)
    step = batch_size or noise.shape[0]
    outs: list[list[Tensor]] = [[] for _ in lambdas]
    for i in range(0, noise.shape[0], step):
        chunk = noise[i : i + step]
        whole = len(chunk) == noise.shape[0]
        shared = _SharedFirstCall(denoiser if whole else rows(denoiser, slice(i, i + step)))
        shared.arm()
        for out, lam in zip(outs, lambdas):
            out.append(sample(shared, solver, chunk, sigmas, lam, check_finite=check_finite))
    return [torch.cat(o) for o in outs]


def rows(denoiser: Denoiser, index) -> Denoiser:
    """The denoiser for those rows of the batch: a bound (conditional) denoiser sliced
    (``bound[index]``: its conditioning has one row per sample), any other as it is."""
    return denoiser[index] if callable(getattr(denoiser, "__getitem__", None)) else denoiser
