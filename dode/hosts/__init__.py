"""Host adapters: a fitted solver file run by sampling code that is not dode's own.

=================  ==============================================================================
``k_diffusion``    :class:`KDiffusionSampler`: a sampler function with k-diffusion's interface
                   ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None)``, as
                   ComfyUI (``comfy.samplers.KSAMPLER(fn)``), AUTOMATIC1111 and Forge call it
=================  ==============================================================================

(The diffusers scheduler, :mod:`dode.diffusers`, predates this package and keeps its path.)
Every host is a thin adapter over the core: it converts the host's model call and state to a
:class:`~dode.denoisers.Denoiser` and noise, and runs :meth:`dode.artifact.FittedSolver.sample`;
no host re-derives the solver, the correction or the λ.
"""

from .k_diffusion import KDiffusionSampler

__all__ = ["KDiffusionSampler"]
