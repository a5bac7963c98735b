"""``dode.evaluate`` in parts: generate N samples with a solver and score them.

========================  ============================================================
:mod:`.config`            :class:`EvalConfig`; the model, σ grid, solver and λ it names
:mod:`.store`             :class:`SampleStore`: per-seed PNGs (resumable), the packed npz
:mod:`.predict`           the Lightning predict loop (sharded by seed over devices/nodes)
:mod:`.score`             the Fréchet distance of the samples to reference statistics
:mod:`.report`            the JSON-lines log and the W&B run
:mod:`.run`               :func:`evaluate`: all of the above, in order
:mod:`.fidelity`          the fidelity-first judge: MSE/PSNR to a converged reference with
                          bootstrap intervals, FD second; the best learning-free cell
:mod:`.fid`               Fréchet distances of image folders and reference statistics (Inception
                          or a stand-in extractor); ``python -m dode.fid``
:mod:`.metrics`           the formulas every judge uses: Fréchet distance, MSE clamped to the
                          data range, the bootstrap of a mean (foundation: imports no other dode
                          module, so the fit uses them too)
========================  ============================================================

``python -m dode.evaluate`` is the command line (:mod:`dode.evaluate`). The names below are
imported on first use (:func:`dode.import_paths.wing_exports`): importing :mod:`.metrics` runs
nothing else of this folder.
"""

from __future__ import annotations

from ..import_paths import wing_exports


def _modules():
    from . import config, run, store

    return config, run, store


_exports = wing_exports(__name__, __path__, _modules)


def __getattr__(name: str):
    """:class:`EvalConfig`, :func:`evaluate`, :class:`SampleStore`, … on first use."""
    if name == "generate":  # the predict loop imports Lightning: loaded when first used
        from .predict import generate

        return generate
    if name == "to_uint8":  # kept where it was first handed out
        from ..files.images import to_uint8

        return to_uint8
    return _exports(name)
