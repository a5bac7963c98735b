"""``python -m dode.bench``: the wall time of ``python -m dode.train`` against a direct
``dode.fit_lambdas`` call on the same work, and where the time goes.

Example::

    python -m dode.bench --repeat 2 --seeds 128

The options are the arguments of :func:`dode.lit.bench.bench` (the work; ``-h`` describes
each); it prints the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import command

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The parser of ``python -m dode.bench``."""
    p = argparse.ArgumentParser(
        prog="python -m dode.bench",
        description="Wall time of python -m dode.train against a direct dode.fit_lambdas call "
        "on the same work, and where the time goes.",
    )
    p.add_argument("--seeds", type=int, default=128, help="number of fit seeds (0 to N-1)")
    p.add_argument(
        "--batch_size",
        type=int,
        default=32,
        help="batch size of both runs",
    )
    p.add_argument("--nfe", type=int, default=4, help="model calls of the DDIM student")
    p.add_argument("--model", default="gmm-digits", help="the model both runs fit")
    p.add_argument(
        "--repeat", type=int, default=2, help="runs of each, alternately; the fastest counts"
    )
    p.add_argument("--threads", type=int, default=1, help="OMP/torch threads of both runs")
    p.add_argument(
        "--config", default=None, help="YAML config of the training run (default configs/tiny.yaml)"
    )
    return p


@command("dode.lit.bench")
def main(argv: list[str] | None = None) -> dict:
    """Parse, then :func:`dode.lit.bench.bench`; print and return its result."""
    from ..lit.bench import bench

    args = parser().parse_args(argv)
    try:
        out = bench(**vars(args))
    except (ValueError, RuntimeError) as e:
        print(f"dode.bench: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(out, indent=1))
    return out
