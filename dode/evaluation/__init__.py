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
========================  ============================================================

``python -m dode.evaluate`` is the command line (:mod:`dode.evaluate`).
"""

from __future__ import annotations

from ..images import to_uint8
from .config import EvalConfig, build_grid, load_model, resolve_solver, seed_list
from .run import evaluate
from .store import SampleStore, claim_out_dir

__all__ = [
    "EvalConfig",
    "SampleStore",
    "build_grid",
    "load_model",
    "to_uint8",
    "generate",
    "evaluate",
    "resolve_solver",
    "seed_list",
    "claim_out_dir",
]


def __getattr__(name: str):
    # The predict loop imports Lightning: loaded when first used.
    if name == "generate":
        from .predict import generate

        return generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
