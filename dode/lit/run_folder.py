"""A fit's run folder: its claim, its lock, its checkpoint and its solver file, checked before
anything in it is touched (:func:`prepare_run`, called by :func:`dode.lit.api.run_fit`).

A run folder holds one fit: ``checkpoints/last.ckpt``, ``metrics.csv``, the images, the W&B
folder and (once the fit ends) ``solver.safetensors``. A fresh fit goes only into a new or empty
folder, a resume only into the folder of the same problem, and ``.fit.lock`` keeps two fits from
sharing one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ..files.solver_file import FittedSolver
from ..files.writes import acquire_lock, ensure_writable, release_lock
from .module import DODEModule, check_resume_seeds

__all__ = ["LOCK_NAME", "default_run_dir", "prepare_run"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "run"


def default_run_dir(model: str, solver: str, nfe: int, fit_mode: str) -> Path:
    """``runs/<model>-<solver>-nfe<N>-<fit_mode>`` (the model's folder name, not its path)."""
    base = Path(str(model).rstrip("/")).name
    return Path("runs") / _slug(f"{base}-{solver}-nfe{nfe}-{fit_mode}")


LOCK_NAME = ".fit.lock"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def _holds_run(run_dir: Path) -> list[str]:
    """What in ``run_dir`` shows that a fit ran there (its checkpoint, metrics, solver file)."""
    names = ("checkpoints/last.ckpt", "metrics.csv", "solver.safetensors")
    return [n for n in names if (run_dir / n).exists()]


def _acquire_lock(run_dir: Path) -> Path:
    """Take ``run_dir/.fit.lock`` (:func:`~dode.files.solver_file.acquire_lock`)."""
    return acquire_lock(run_dir / LOCK_NAME, "run folder", "fit", "run folder")


def _resolve_checkpoint(
    module: DODEModule,
    run_dir: Path,
    ckpt_path: str | None,
    fit_seeds: list[int] | None = None,
    val_seeds: list[int] | None = None,
) -> str | None:
    """The checkpoint to resume from, checked before anything in the run folder is touched.

    ``"last"``: ``run_dir/checkpoints/last.ckpt``; when there is none and the folder holds no
    run, the fit starts fresh with a one-line notice (``ckpt_path="last"`` is safe for a job
    that may or may not have run before). A missing, unreadable (truncated, empty, random) or
    foreign checkpoint, or one of another problem, raises ``ValueError``.
    """
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        path = run_dir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            held = _holds_run(run_dir)
            if held:
                raise ValueError(
                    f"nothing to resume: run folder {str(run_dir)!r} holds {', '.join(held)} "
                    "but no checkpoints/last.ckpt; delete the folder to start over, or pass "
                    "another run folder."
                )
            print(
                f"dode: no checkpoint in {str(run_dir / 'checkpoints')!r} to resume from; "
                "starting a fresh fit.",
                file=sys.stderr,
            )
            return None
    else:
        path = Path(ckpt_path)
        if not path.is_file():
            raise ValueError(
                f"checkpoint {ckpt_path!r} does not exist; pass 'last' (the run folder's last "
                "checkpoint) or the path of a .ckpt file."
            )
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any failure to read it is a damaged file
        raise ValueError(
            f"checkpoint {str(path)!r} cannot be read ({type(e).__name__}: {_one_line(e)}): it "
            "is truncated, empty or not a checkpoint. Delete it (and the run folder) to start "
            "over, or resume from another checkpoint."
        ) from None
    meta = ckpt.get("dode") if isinstance(ckpt, dict) else None
    if not isinstance(meta, dict) or "state_dict" not in ckpt:
        raise ValueError(
            f"{str(path)!r} is not a dode checkpoint (no 'dode' entry); start a new fit."
        )
    if meta.get("problem_key") != module.problem_key() or meta.get("fit_mode") != module.fit_mode:
        raise ValueError(
            f"checkpoint {str(path)!r} was written for another problem (model, solver, grid, "
            "teacher or fit mode differ); resume with the same config, or start a new run folder."
        )
    check_resume_seeds(meta, fit_seeds, f"checkpoint {str(path)!r}")
    if "mode" in meta:
        module.mode_fit.check_state(meta["mode"], val_seeds)
    return str(path)


#: What a dode run folder may hold before its fit wrote checkpoints, metrics or a solver file
#: (a run that stopped early: the saved config, W&B's folder and id, Lightning's hparams).
_RUN_START_NAMES = {
    "config.yaml",
    "hparams.yaml",
    "wandb",
    "wandb_id.txt",
    "checkpoints",
    LOCK_NAME,
}


def _foreign_files(run_dir: Path) -> list[str]:
    """Entries of ``run_dir`` that no dode fit writes before its checkpoints or metrics."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name not in _RUN_START_NAMES)


def _check_solver_file(module: DODEModule, solver_file: Path, resume: bool) -> None:
    """Refuse to replace a solver file this run did not write: any existing file on a fresh
    fit, and on a resume one fitted for another problem (solver, grid or model)."""
    from ..files.writes import check_replaceable

    check_replaceable(solver_file, "solver_file")
    if not solver_file.exists():
        return
    same = False
    if resume:
        try:
            old = FittedSolver.load(solver_file)
            model = old.model or {}
            same = (
                old.solver == module.solver.config()
                # an end-to-end fit learns its grid: the file's is not the config's
                and (
                    module.fit_mode == "end-to-end" or old.sigmas.tolist() == module.sigmas.tolist()
                )
                and model.get("id") == module.hparams.model
                and model.get("weights_hash") == module.weights_hash
            )
        except ValueError:
            same = False
    if not same:
        raise ValueError(
            f"solver_file {str(solver_file)!r} already exists (another fit's solver file); "
            "pass a new --solver_file (or leave it out: <run_dir>/solver.safetensors), or move "
            "that file away to replace it."
        )


def prepare_run(
    module: DODEModule,
    run_dir: Path,
    solver_file: Path,
    ckpt_path: str | None,
    fit_seeds: list[int] | None = None,
    val_seeds: list[int] | None = None,
) -> tuple[str | None, Path | None]:
    """Every check of the run folder, before anything in it is touched: the folders can be
    written, the lock is ours (rank 0), the checkpoint resumes this problem, and a fresh fit
    does not go into a folder holding another run. Returns the checkpoint path and the lock."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if solver_file.is_dir():
        raise ValueError(
            f"solver_file {str(solver_file)!r} is a folder; pass a file name such as "
            f"{str(solver_file / 'solver.safetensors')!r}."
        )
    ensure_writable(run_dir, "run folder", "pass a run folder you can write to")
    ensure_writable(
        solver_file.parent,
        "the fitted-solver file's folder",
        "pass a solver_file in a folder you can write to",
    )
    rank = getattr(rank_zero_only, "rank", 0) or 0
    foreign = _foreign_files(run_dir)
    if foreign and not _holds_run(run_dir):
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise ValueError(
            f"run folder {str(run_dir)!r} is not empty and holds no dode run ({shown}): a fit "
            "would write its samples.png, lambdas.png, metrics and checkpoints among those "
            "files. Pass a new or empty run folder (--run_dir)."
        )
    created = not run_dir.exists()
    lock = None
    try:
        if rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = _acquire_lock(run_dir)
        ckpt = _resolve_checkpoint(module, run_dir, ckpt_path, fit_seeds, val_seeds)
        held = _holds_run(run_dir)
        if ckpt is None and "solver.safetensors" in held and rank == 0:
            raise ValueError(
                f"run folder {str(run_dir)!r} already holds a run that finished "
                f"({', '.join(held)}); pass another run folder, or delete it to start over "
                "(--ckpt_path last resumes a fit that did not finish)."
            )
        if ckpt is None and held and rank == 0:
            raise ValueError(
                f"run folder {str(run_dir)!r} already holds a run ({', '.join(held)}); resume "
                "it with ckpt_path last (--ckpt_path last), pass another run folder, or delete "
                "it to start over."
            )
        if rank == 0:
            if ckpt is None:
                _check_solver_file(module, solver_file, resume=False)
            elif solver_file.exists():
                _check_solver_file(module, solver_file, resume=True)
    except BaseException:
        release_lock(lock)
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    return ckpt, lock
