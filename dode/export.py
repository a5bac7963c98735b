"""``python -m dode.export``: a fitted-solver file as a diffusers scheduler folder.

Example::

    python -m dode.export --solver-file runs/x/solver.safetensors --out my_scheduler/

writes ``my_scheduler/scheduler_config.json``; then in Python::

    from dode.diffusers import DODEScheduler
    pipe.scheduler = DODEScheduler.from_pretrained("my_scheduler")

The model's noise schedule (ᾱ table and prediction type, or flow shift) comes from the file,
else from ``--like`` (a pipeline or scheduler folder of the model), else from the scheduler
config saved with the model the file names. The folder is written atomically; bad input
prints one ``error:`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .artifact import atomic_folder

__all__ = ["main", "export"]


def _like_config(path: str) -> dict:
    from .diffusers import read_scheduler_config

    errors: list[str] = []
    config = read_scheduler_config(path, errors)
    if config is not None:
        return config
    raise ValueError(
        f"--like {path!r}: no scheduler config found there (a pipeline folder with scheduler/ "
        f"or a scheduler folder); {'; '.join(errors)}"
    )


def export(solver_file: str, out: str, like: str | None = None, base: bool = False) -> Path:
    """Write the scheduler folder for ``solver_file`` to ``out``; returns ``out``."""
    from .diffusers import DODEScheduler

    sched = DODEScheduler.from_solver_file(
        solver_file, like=_like_config(like) if like else None, dode=not base
    )
    with atomic_folder(out) as tmp:
        sched.save_pretrained(tmp)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dode.export",
        description="Write a fitted D-ODE solver as a diffusers scheduler folder (DODEScheduler).",
    )
    p.add_argument("--solver-file", required=True, help="fitted-solver .safetensors file")
    p.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    p.add_argument(
        "--like",
        default=None,
        help="pipeline or scheduler folder of the model (for its noise schedule), if the "
        "solver file's model cannot be found on this machine",
    )
    p.add_argument("--base", action="store_true", help="export the base solver (λ = 0)")
    args = p.parse_args(argv)
    try:
        out = export(args.solver_file, args.out, args.like, args.base)
    except ValueError as e:
        print(f"dode.export: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'scheduler_config.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
