"""``python -m dode.export``: a fitted-solver file as a diffusers scheduler folder.

Example::

    python -m dode.export --solver_file runs/x/solver.safetensors --out my_scheduler/

The work is :func:`dode.hosts.export.export` (see :mod:`dode.hosts.export` for what it writes and
refuses).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import command

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The parser of ``python -m dode.export``."""
    p = argparse.ArgumentParser(
        prog="python -m dode.export",
        description="Write a fitted D-ODE solver as a diffusers scheduler folder (DODEScheduler).",
    )
    p.add_argument(
        "--solver_file",
        metavar="FILE",
        required=True,
        help="fitted-solver .safetensors file",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder (made if needed; only scheduler_config.json is written there)",
    )
    p.add_argument(
        "--like",
        default=None,
        help="pipeline or scheduler folder of the model (for its noise schedule), if the "
        "solver file's model cannot be found on this machine",
    )
    p.add_argument("--base", action="store_true", help="export the base solver (λ = 0)")
    return p


@command("dode.export")
def main(argv: list[str] | None = None) -> int:
    """Parse, then :func:`dode.hosts.export.export`; one ``error:`` line and status 2 on bad input."""
    args = parser().parse_args(argv)
    from ..hosts.export import export

    try:
        out: Path = export(args.solver_file, args.out, args.like, args.base)
    except ValueError as e:
        print(f"dode.export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'scheduler_config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
