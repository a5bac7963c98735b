"""Samples and their judges: the evaluation run of ``python -m dode.evaluate``, the sample
folder of ``python -m dode.sample``, Fréchet distances and the fidelity judge.

========================  ============================================================
:mod:`.config`            :class:`EvalConfig`; the model, σ grid, solver and λ it names
:mod:`.store`             :class:`SampleStore`: per-seed PNGs (resumable), the packed npz
:mod:`.predict`           the Lightning predict loop (sharded by seed over devices/nodes)
:mod:`.score`             the Fréchet distance of the samples to reference statistics
:mod:`.report`            the JSON-lines log and the W&B run
:mod:`.run`               :func:`evaluate`: all of the above, in order
:mod:`.clip`              the CLIP score of text-conditioned samples
:mod:`.sample_folder`     :func:`sample_to_folder`: samples of a solver file into a folder
                          (``python -m dode.sample``)
:mod:`.fidelity`          the fidelity-first judge: MSE/PSNR to a converged reference with
                          bootstrap intervals, FD second; the best learning-free cell
:mod:`.fid`               Fréchet distances of image folders and reference statistics (Inception
                          or a stand-in extractor); ``python -m dode.fid``
========================  ============================================================

The formulas every judge uses (Fréchet distance, MSE clamped to the data range, the bootstrap
of a mean) are :mod:`dode.metrics`, which the fit uses too. ``python -m dode.evaluate`` is the
command line (:mod:`dode.cli.evaluate`). This package exports nothing itself: import from its
modules (``from dode.evaluation.run import evaluate``), so that what needs only the sample
folder or the Fréchet distances (``python -m dode.sample``, ``python -m dode.fid``) does not
import the Lightning predict loop.
"""
