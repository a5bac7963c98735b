"""``python -m dode.export``: a fitted-solver file as a diffusers scheduler folder.

Example::

    python -m dode.export --solver_file runs/x/solver.safetensors --out my_scheduler/

writes ``my_scheduler/scheduler_config.json``; then in Python::

    from dode.hosts.diffusers import DODEScheduler
    pipe.scheduler = DODEScheduler.from_pretrained("my_scheduler")

The model's noise schedule (ᾱ table and prediction type, or flow shift) comes from the file,
else from ``--like`` (a pipeline or scheduler folder of the model), else from the scheduler
config saved with the model the file names. Only the scheduler's own file is written (atomically);
nothing else in ``--out`` is touched, and a ``scheduler_config.json`` that an earlier export did not
write is refused. Bad input prints one ``error:`` line and exits with status 2.

The command line is :mod:`dode.cli.export`; this module holds :func:`export`, the work.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

__all__ = ["export"]


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


def _check_target(path: Path) -> None:
    """Refuse to replace ``path`` unless it is absent or a file this export writes (a
    ``DODEScheduler`` config written by an earlier export)."""
    from ..files.writes import check_replaceable

    check_replaceable(path, "--out file")
    if not path.exists():
        return
    try:
        cls = json.loads(path.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        cls = None
    if cls != "DODEScheduler":
        what = f"the config of a {cls}" if cls else "a file dode.export did not write"
        raise ValueError(
            f"{str(path)!r} already exists and is {what}; dode.export replaces only a "
            "DODEScheduler config written by an earlier export. Pass a new folder as --out (e.g. "
            f"{str(path.parent / 'dode_scheduler')!r}), or move that file away first."
        )


def export(solver_file: str, out: str, like: str | None = None, base: bool = False) -> Path:
    """Write the scheduler's files (``scheduler_config.json``) for ``solver_file`` into
    folder ``out`` (made if needed); returns ``out``.

    Only the scheduler's own files are written, each atomically; nothing else in ``out`` is
    touched. A file of that name that an export did not write (another scheduler's config)
    is refused with ``ValueError``, as is an ``out`` that is a file."""
    from .diffusers import DODEScheduler

    out_path = Path(out)
    if out_path.exists() and not out_path.is_dir():
        raise ValueError(
            f"--out {out!r} is a file, not a folder; pass a folder (it is made if needed)."
        )
    _check_target(out_path / DODEScheduler.config_name)
    sched = DODEScheduler.from_solver_file(
        solver_file, like=_like_config(like) if like else None, dode=not base
    )
    from ..files.writes import atomic_write, ensure_writable

    ensure_writable(out_path, "--out", "pass a folder you can write to")
    try:
        with tempfile.TemporaryDirectory(prefix=".dode-export-") as tmp:
            sched.save_pretrained(tmp)
            files = sorted(p for p in Path(tmp).iterdir() if p.is_file())
            for f in files:
                _check_target(out_path / f.name)
            for f in files:
                atomic_write(out_path / f.name, lambda t, f=f: shutil.copyfile(f, t))
    except OSError as e:  # a full disk, a folder gone read-only meanwhile
        raise ValueError(
            f"the scheduler could not be written to {str(out_path)!r} ({e.strerror or e}); "
            f"nothing was written there ({DODEScheduler.config_name} is written whole or not at "
            "all). Free some space, or pass another --out, and export again."
        ) from None
    return out_path
