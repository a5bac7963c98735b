"""Host adapters: a fitted solver file run by sampling code that is not dode's own.

=================  ==============================================================================
``diffusers``      :class:`DODEScheduler`: a solver file as a drop-in diffusers scheduler, a thin
                   adapter over the denoisers' native-output conversion, the correction and the
                   replay engine
``export``         :func:`export`: a solver file as a diffusers scheduler folder (its one file,
                   ``scheduler_config.json``; ``python -m dode.export``)
``k_diffusion``    :class:`KDiffusionSampler`: a sampler function with k-diffusion's interface
                   ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None)``, as
                   ComfyUI (``comfy.samplers.KSAMPLER(fn)``), AUTOMATIC1111 and Forge call it
=================  ==============================================================================

Every host is a thin adapter over the core: it converts the host's model call and state to a
:class:`~dode.denoisers.Denoiser` and noise, and runs
:meth:`dode.files.solver_file.FittedSolver.sample` or the replay engine; no host re-derives the
solver, the correction or the λ. ``from dode.hosts import DODEScheduler`` works for every public
name of the three, imported on first use (diffusers is imported only when asked for).
"""

from ..import_paths import wing_exports


def _modules():
    from . import diffusers, export, k_diffusion

    return diffusers, export, k_diffusion


__getattr__ = wing_exports(__name__, __path__, _modules)
