"""Host adapters: a fitted solver file run by sampling code that is not dode's own.

=================  ==============================================================================
``diffusers``      :class:`~dode.hosts.diffusers.DODEScheduler`: a solver file as a drop-in
                   diffusers scheduler, a thin adapter over the denoisers' native-output
                   conversion, the correction and the replay engine
``export``         :func:`~dode.hosts.export.export`: a solver file as a diffusers scheduler folder
                   (its one file, ``scheduler_config.json``; ``python -m dode.export``)
``k_diffusion``    :class:`~dode.hosts.k_diffusion.KDiffusionSampler`: a sampler function with
                   k-diffusion's interface ``fn(model, x, sigmas, extra_args=None, callback=None,
                   disable=None)``, as ComfyUI (``comfy.samplers.KSAMPLER(fn)``), AUTOMATIC1111
                   and Forge call it
=================  ==============================================================================

Every host is a thin adapter over the core: it converts the host's model call and state to a
:class:`~dode.denoisers.Denoiser` and noise, and runs
:meth:`dode.files.solver_file.FittedSolver.sample` or the replay engine; no host re-derives the
solver, the correction or the λ. This package exports nothing itself: import each host from its
module (``from dode.hosts.k_diffusion import KDiffusionSampler``), so that a k-diffusion host
does not import diffusers.
"""
