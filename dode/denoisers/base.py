"""Denoisers in σ-space: ``D(x, σ) → x̂0`` and ``ε̂(x, σ) = (x − D(x, σ)) / σ``.

A denoiser predicts one of the two natively (``prediction``); the other is derived, so a
solver that consumes the native quantity never pays for a round trip.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["Denoiser", "as_sigma", "as_prediction", "check_guidance", "family_of"]


def as_sigma(sigma: float | Tensor, x: Tensor) -> Tensor:
    """σ as a tensor of ``x``'s dtype/device, broadcastable against ``x`` (shape [B, 1, ...])."""
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.shape != (x.shape[0],):
        raise ValueError(
            f"sigma must be a scalar or have shape [{x.shape[0]}] (one per sample), got "
            f"{tuple(s.shape)}."
        )
    return s.reshape(-1, *([1] * (x.ndim - 1)))


def check_guidance(guidance_scale: float, guidance_rescale: float) -> tuple[float, float]:
    """Validate and return ``(w, φ)`` as floats."""
    try:
        w, phi = float(guidance_scale), float(guidance_rescale)
    except (TypeError, ValueError):
        raise ValueError(
            f"guidance_scale and guidance_rescale must be numbers, got {guidance_scale!r} and "
            f"{guidance_rescale!r}."
        ) from None
    if not math.isfinite(w):
        raise ValueError(f"guidance_scale must be a finite number (1 = no guidance), got {w}.")
    if not 0.0 <= phi <= 1.0:
        raise ValueError(f"guidance_rescale must lie in [0, 1] (0 = off), got {phi}.")
    return w, phi


def as_prediction(out: Tensor, x: Tensor, sigma: Tensor, have: str, want: str) -> Tensor:
    """``out`` (x̂0 or ε̂, as ``have`` says) as ``want``: ``x̂0 = x − σ ε̂``, ``ε̂ = (x − x̂0)/σ``
    (the identity when they agree); ``sigma`` broadcastable to ``x`` (:func:`as_sigma`)."""
    if have == want:
        return out
    return x - sigma * out if have == "eps" else (x - out) / sigma


FAMILIES = ("vp", "flow")


def family_of(model: Any) -> str:
    """The model family of a denoiser, or of a denoiser class named by a fitted-solver file
    (``model["class"]``): ``"flow"`` for rectified flows (SD3, FLUX, flow UNets), ``"vp"`` for
    diffusion models in σ-space. The denoiser owns the answer (its :attr:`Denoiser.family`);
    a class name is looked up among the :class:`Denoiser` subclasses, and an unknown one is a
    flow if its name says so. A σ grid and its λ belong to one family.
    """
    if isinstance(model, str):
        cls = _subclass_named(Denoiser, model)
        if cls is None:
            return "flow" if "Flow" in model else "vp"
        model = cls
    family = getattr(model, "family", None)
    return family if family in FAMILIES else "vp"


def _subclass_named(base: type, name: str) -> type | None:
    for cls in base.__subclasses__():
        found = cls if cls.__name__ == name else _subclass_named(cls, name)
        if found is not None:
            return found
    return None


class Denoiser(nn.Module):
    """Base class. Subclasses set ``prediction`` and implement :meth:`denoise`.

    Attributes:
        prediction: ``"x0"`` or ``"eps"``: what :meth:`denoise` returns.
        sigma_min, sigma_max: the σ range the model was trained on.
        sample_shape: the shape of one sample (without batch), or ``None`` if any shape works.
        data_range: ``(low, high)`` of the data the model was trained on where the model
            declares it (a DDPM scheduler config's ``clip_sample`` / ``clip_sample_range``;
            the bundled digits models: ``(-1, 1)``), else ``None`` (latent models: latents have
            no fixed range). The end-to-end fit's ``clip="model"`` clamps to it.
        weight_files: the files the weights were loaded from (set by loaders such as
            :meth:`DiffusersDenoiser.from_pretrained`; empty for in-memory models), so that
            :func:`dode.files.weights.weights_hash` can cache the hash by file identity.
    """

    prediction: Literal["x0", "eps"] = "x0"
    #: ``"vp"`` (diffusion in σ-space) or ``"flow"`` (rectified flow, σ = t/(1 − t)): the one
    #: answer to "is this a flow model?" (:func:`family_of`); flows override it.
    family: Literal["vp", "flow"] = "vp"
    weight_files: tuple[str, ...] = ()
    conditional: bool = False
    #: a text model (its conditioning is prompts: Stable Diffusion, SDXL, SD3, FLUX)
    text_conditional: bool = False
    data_range: tuple[float, float] | None = None

    def __init__(
        self,
        sigma_min: float,
        sigma_max: float,
        sample_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= sigma_min < sigma_max:
            raise ValueError(f"need 0 <= sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.sample_shape = tuple(sample_shape) if sample_shape is not None else None

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Native prediction; ``sigma`` has shape [B, 1, ...] (broadcastable to ``x``)."""
        raise NotImplementedError

    def round_sigma(self, sigma: Tensor) -> Tensor:
        """The σ the model actually evaluates at (identity unless the model is discrete)."""
        return torch.as_tensor(sigma)

    def x0(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Denoised estimate x̂0 = D(x, σ)."""
        s = as_sigma(sigma, x)
        return as_prediction(self.denoise(x, s), x, s, self.prediction, "x0")

    def eps(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Noise estimate ε̂ = (x − D(x, σ)) / σ."""
        s = as_sigma(sigma, x)
        return as_prediction(self.denoise(x, s), x, s, self.prediction, "eps")

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        return self.x0(x, sigma)

    def bind(
        self,
        cond: Any = None,
        *,
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        negative_prompt: Any = None,
    ) -> Denoiser:
        """Bind a batch's conditioning and a guidance scale (see :mod:`dode.denoisers.guidance`).

        An unconditional model takes neither: ``bind()`` returns ``self``; conditioning or a
        guidance scale other than 1 is a ``ValueError``.
        """
        w, _ = check_guidance(guidance_scale, guidance_rescale)
        if cond is not None or negative_prompt is not None:
            what = "a prompt" if isinstance(cond, str) or _is_str_list(cond) else "conditioning"
            name = getattr(self, "model_id", None) or type(self).__name__
            raise ValueError(
                f"{what} was given for an unconditional model ({name}); drop "
                "the prompts/class labels, or load a conditional model (class-conditional "
                "UNet2DModel, Stable Diffusion)."
            )
        if w != 1.0:
            raise ValueError(
                f"guidance_scale {w} needs a conditional model with an unconditional input, but "
                f"{type(self).__name__} is unconditional; use guidance_scale=1."
            )
        return self

    def check_noise(self, noise: Tensor) -> None:
        """Raise ``ValueError`` if ``noise`` does not fit this model."""
        if not isinstance(noise, Tensor):
            raise ValueError(f"noise must be a torch.Tensor, got {type(noise).__name__}.")
        if noise.ndim < 2:
            raise ValueError(
                f"noise must have a batch dimension first, shape [B, ...]; got {tuple(noise.shape)}."
            )
        if self.sample_shape is not None and tuple(noise.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"noise has sample shape {tuple(noise.shape[1:])} but the model expects "
                f"{self.sample_shape}; draw noise of shape [B, {', '.join(map(str, self.sample_shape))}]."
            )


def _is_str_list(obj: Any) -> bool:
    return isinstance(obj, (list, tuple)) and bool(obj) and all(isinstance(o, str) for o in obj)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence the hub libraries' progress notes and warnings while a model loads.

    A failed load is reported once, by dode, with the fix; diffusers/transformers/huggingface_hub
    otherwise print their own advice (``accelerate`` missing, deprecated arguments) for every
    attempt, burying that message.
    """
    loggers = []
    for name in ("diffusers", "transformers", "huggingface_hub"):
        lg = logging.getLogger(name)
        loggers.append((lg, lg.level))
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in loggers:
            lg.setLevel(level)
