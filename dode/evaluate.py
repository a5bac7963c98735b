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
(:mod:`dode.fid`: torch-fidelity's Inception for FID, or a stand-in extractor), appends one
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
"""

from __future__ import annotations

import json
import sys

from .evaluation import (
    EvalConfig,
    SampleStore,
    build_grid,
    evaluate,
    load_model,
    to_uint8,
)

__all__ = [
    "EvalConfig",
    "SampleStore",
    "build_grid",
    "load_model",
    "to_uint8",
    "generate",  # noqa: F822 - imported on first use (module __getattr__)
    "evaluate",
    "main",
]


def __getattr__(name: str):
    if name == "generate":  # the Lightning predict loop, imported when first used
        from .evaluation.predict import generate

        return generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(
        prog="python -m dode.evaluate",
        description="Generate samples with a (fitted) solver and compute FID.",
        epilog=__doc__.split("Examples::")[-1],
    )
    p.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config (repeatable)")
    p.add_class_arguments(EvalConfig, as_group=False)
    return p


def _no_gpu_hint(e: Exception) -> str:
    """One line for a settings error; a GPU asked for on a machine without one says so."""
    import torch

    msg = " ".join(str(e).split())
    if not torch.cuda.is_available() and any(w in msg.lower() for w in ("gpu", "cuda")):
        msg += " (this machine has no usable GPU: use accelerator cpu or auto)"
    return msg


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: one clear ``error: ...`` line and exit code 2 on bad input."""
    parser = _parser()
    ns = parser.parse_args(argv).as_dict()
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        cfg = EvalConfig(**{k: v for k, v in ns.items() if k in EvalConfig.__dataclass_fields__})
        record = evaluate(cfg)
    except (ValueError, MisconfigurationException) as e:  # the latter: e.g. no GPU here
        print(f"error: {_no_gpu_hint(e)}", file=sys.stderr)
        return 2
    if record is not None:
        value = record["value"]
        shown = "" if value is None else f" {record['metric']} = {value:.4f}"
        rate = record["images_per_second"]
        print(
            f"{record['label']} NFE {record['nfe']}: {record['num_samples']} samples"
            f"{shown}" + (f" ({rate:.1f} img/s)" if rate else "")
        )
        print(json.dumps({k: record[k] for k in ("metric", "value", "num_samples", "out")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
