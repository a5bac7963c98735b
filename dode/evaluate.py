"""``python -m dode.evaluate``: generate N samples with a solver and score them (FID).

Samples come from a base solver (by name, with a σ-grid built for an NFE) or from a
fitted-solver file (the D-solver; ``--base`` evaluates its base solver on the same grid).
Generation runs as a Lightning ``predict`` loop, sharded across devices and nodes with DDP:

* sample ``i`` is drawn from its own seed (:func:`dode.noise.noise_from_seeds`), and the seed
  list is split across ranks with no padding (:func:`dode.noise.shard_seeds`), so no seed is
  drawn twice and the images do not depend on the number of devices;
* every sample is written as ``<out>/samples/<seed // 1000 * 1000>/<seed>.png`` the moment it
  is made (atomic rename), so an interrupted run resumes where it stopped: seeds whose PNG
  exists are skipped, none is generated twice;
* the output folder must be on a filesystem every node sees (rank 0 scores all samples).

Then rank 0 computes the Fréchet distance of the samples' features to reference statistics
(:mod:`dode.evaluation.fid`: torch-fidelity's Inception for FID, or a stand-in extractor), appends one
JSON line to ``--log`` and logs the result (and a sample grid) to Weights & Biases, offline
unless ``WANDB_API_KEY`` is set. ``--save npz`` packs the PNGs into ``samples.npz``
(``arr_0``: uint8 ``[N, H, W, C]``, the layout guided-diffusion's evaluator reads, and
``seeds``) and removes the folder.

Examples::

    python -m dode.evaluate --model google/ddpm-cifar10-32 --solver ddim --nfe 10 \\
        --schedule time_uniform --num_samples 50000 --ref refs/cifar10-32x32.npz
    python -m dode.evaluate --solver_file runs/fit/ddim-nfe5.safetensors --devices 8 \\
        --ref refs/cifar10-32x32.npz
    python -m dode.evaluate -c configs/paper/eval/cifar10.yaml --solver_file F

The command line is :mod:`dode.cli.evaluate`; the Python API is :mod:`dode.evaluation`
(:class:`~dode.evaluation.config.EvalConfig`, :func:`~dode.evaluation.run.evaluate`, ...). This
module only runs the command; the names it once re-exported (``dode.evaluate.evaluate``, ...)
and ``main`` still resolve, with a ``DeprecationWarning``, until dode 0.2.
"""

from __future__ import annotations

from .import_paths import moved

#: the names this module once re-exported from :mod:`dode.evaluation`
_REEXPORTED = (
    "EvalConfig",
    "SampleStore",
    "build_grid",
    "load_model",
    "to_uint8",
    "generate",
    "evaluate",
)


def __getattr__(name: str):
    if name in _REEXPORTED:
        return moved("dode.evaluate", "dode.evaluation", name)
    if name == "main":
        return moved("dode.evaluate", "dode.cli.evaluate", name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    import sys

    from dode.cli.evaluate import main

    sys.exit(main())
