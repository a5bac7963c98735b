"""Denoisers in σ-space: ``D(x, σ) → x̂0`` and ``ε̂(x, σ) = (x − D(x, σ)) / σ``.

One module per model family:

=============  ===================================================================================
``base``       :class:`Denoiser` (the contract) and :func:`as_sigma`
``callable``   :class:`CallableDenoiser`: any ``fn(x, sigma)``
``vp``         :class:`DiffusersDenoiser`: a diffusers ``UNet2DModel`` DDPM (pixel space),
               unconditional or class-conditional (``num_class_embeds``, null label for CFG:
               :class:`~dode.denoisers.vp.ClassLabelDenoiser`, shared with the flow UNet)
``latent``     :class:`LatentDiffusionDenoiser`: Stable Diffusion 1.x/2.x and SDXL (latents,
               prompts, VAE decoding)
``flow``       :class:`FlowDenoiser`, :class:`DiffusersFlowDenoiser`, :class:`GaussianMixtureFlow`:
               rectified flows (velocity prediction) mapped to σ-space, class labels + CFG;
               :class:`GuidedFlowDenoiser` (a bound flow); both are a
               :class:`~dode.denoisers.flow.VelocityFlow` (x̂0, ε̂, start from the velocity)
``flow_latent`` :class:`SD3Denoiser`, :class:`FluxDenoiser`: SD3 and FLUX latent flows (text
               embeddings, CFG / embedded guidance, packed latents, VAE decoding)
``gmm``        :class:`GaussianMixtureDenoiser`, :func:`gaussian`: exact mixture denoisers
``loading``    :func:`load_denoiser`: a model by registered name (the bundled digits models), diffusers
               folder or hub id, or ``package.module:factory``; :func:`register_model`
``guidance``   :class:`Conditioning`, :class:`ConditionalDenoiser`, :class:`GuidedDenoiser`:
               a conditional model bound to a batch's conditioning, classifier-free guidance
=============  ===================================================================================

A conditional model is bound to its batch first, ``den.bind(cond, guidance_scale=w)``, and is
then a plain ``D(x, σ)`` for every solver (see :mod:`dode.denoisers.guidance`): the bound
denoiser wraps the model (:meth:`ConditionalDenoiser.guided` makes it; a flow makes a
:class:`GuidedFlowDenoiser`).
"""

from .base import Denoiser, as_sigma, family_of
from .callable import CallableDenoiser
from .flow import (
    DiffusersFlowDenoiser,
    FlowDenoiser,
    GaussianMixtureFlow,
    GuidedFlowDenoiser,
    flow_start,
    is_flow,
)
from .flow_latent import FluxDenoiser, SD3Denoiser
from .gmm import GaussianMixtureDenoiser, gaussian
from .guidance import (
    ConditionalDenoiser,
    Conditioning,
    GuidedDenoiser,
    check_guidance,
    rescale_noise_cfg,
)
from .latent import LatentDiffusionDenoiser
from .loading import load_denoiser, register_model
from .vp import DiffusersDenoiser

__all__ = [
    "Denoiser",
    "CallableDenoiser",
    "DiffusersDenoiser",
    "LatentDiffusionDenoiser",
    "GaussianMixtureDenoiser",
    "FlowDenoiser",
    "DiffusersFlowDenoiser",
    "GaussianMixtureFlow",
    "GuidedFlowDenoiser",
    "SD3Denoiser",
    "FluxDenoiser",
    "flow_start",
    "is_flow",
    "family_of",
    "as_sigma",
    "gaussian",
    "Conditioning",
    "ConditionalDenoiser",
    "GuidedDenoiser",
    "check_guidance",
    "rescale_noise_cfg",
    "load_denoiser",
    "register_model",
]
