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
command line (:mod:`dode.cli.evaluate`).
"""

from .config import EvalConfig, build_grid, load_model, resolve_solver, seed_list
from .predict import generate
from .run import evaluate
from .sample_folder import sample_to_folder
from .store import SampleStore, claim_out_dir

__all__ = [
    "EvalConfig",
    "load_model",
    "build_grid",
    "resolve_solver",
    "seed_list",
    "generate",
    "evaluate",
    "SampleStore",
    "claim_out_dir",
    "sample_to_folder",
]
