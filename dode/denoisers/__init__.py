"""Denoisers in σ-space: ``D(x, σ) → x̂0`` and ``ε̂(x, σ) = (x − D(x, σ)) / σ``.

One module per model family:

=============  ===================================================================================
``base``       :class:`Denoiser` (the contract) and :func:`as_sigma`
``callable``   :class:`CallableDenoiser`: any ``fn(x, sigma)``
``vp``         :class:`DiffusersDenoiser`: a diffusers ``UNet2DModel`` DDPM (pixel space)
``gmm``        :class:`GaussianMixtureDenoiser`, :func:`gaussian`: exact mixture denoisers
=============  ===================================================================================
"""

from .base import Denoiser, as_sigma
from .callable import CallableDenoiser
from .gmm import GaussianMixtureDenoiser, gaussian
from .vp import DiffusersDenoiser

__all__ = [
    "Denoiser",
    "CallableDenoiser",
    "DiffusersDenoiser",
    "GaussianMixtureDenoiser",
    "as_sigma",
    "gaussian",
]
