"""``python -m dode.evaluate``: generate N samples with a solver and score them (FID).

The options are the fields of :class:`dode.evaluation.config.EvalConfig` (``-h`` lists and
describes each); ``-c FILE`` reads them from YAML (repeatable). The work is
:func:`dode.evaluation.run.evaluate`; see :mod:`dode.evaluate` for what it writes. SIGTERM stops
the generation between two batches (exit status 143), Ctrl-C at once (130); the samples written so
far are kept, and the same command goes on from them.

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

from ..evaluation.config import EvalConfig
from ..evaluation.run import evaluate
from .common import command, no_gpu_hint

__all__ = ["main", "parser"]


def parser():
    """The parser of ``python -m dode.evaluate`` (jsonargparse; ``EvalConfig``'s fields)."""
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    p = ArgumentParser(
        prog="python -m dode.evaluate",
        description="Generate samples with a (fitted) solver and compute FID.",
        epilog=__doc__.split("Examples::")[-1],
    )
    p.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config (repeatable)")
    p.add_class_arguments(EvalConfig, as_group=False, skip=set(SWITCHES))
    for name, help in SWITCHES.items():  # switches, as in python -m dode.sample
        p.add_argument(f"--{name}", action=ActionYesNo(no_prefix=None), default=False, help=help)
    return p


#: the EvalConfig fields that are switches (``--base``, not ``--base true``), as the flags of the
#: same names of ``python -m dode.sample`` are; a config file sets them with ``base: true``
SWITCHES = {
    "base": "with --solver_file: sample with its base solver (λ = 0) on the same grid",
    "ignore_model_hash": "with --solver_file: evaluate even if the model's weights are not the "
    "ones the file was fitted on, or cannot be identified (the record says model_check: "
    "ignored)",
}


@command(
    "dode.evaluate",
    "Run the same command again: the samples already in --out are kept and skipped.",
)
def main(argv: list[str] | None = None) -> int:
    """CLI entry point: one clear ``error: ...`` line and exit code 2 on bad input."""
    ns = parser().parse_args(argv).as_dict()
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        cfg = EvalConfig(**{k: v for k, v in ns.items() if k in EvalConfig.__dataclass_fields__})
        record = evaluate(cfg)
    except (ValueError, MisconfigurationException) as e:  # the latter: e.g. no GPU here
        print(f"error: {no_gpu_hint(e)}", file=sys.stderr)
        return 2
    except SIGTERMException as e:  # stopped between two batches (dode.signals.stop_if_terminated)
        print(
            "error: stopped by SIGTERM; the samples written so far are kept "
            "(each file whole) and nothing was scored. Run the same command again to finish: "
            "the samples already in --out are skipped.",
            file=sys.stderr,
        )
        return e.code if isinstance(e.code, int) else 128 + 15
    if cfg.wandb and "wandb" in sys.modules:  # the W&B service has written the run out
        sys.modules["wandb"].teardown()
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
