"""Where a result goes: one JSON line appended to a log, and a Weights & Biases run."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..files.images import image_grid
from .config import EvalConfig
from .store import SampleStore

__all__ = ["append_jsonl", "wandb_log"]


def check_log_path(path: str | os.PathLike) -> None:
    """``ValueError`` unless ``path`` can take the JSON line at the end (it is a file or can be
    made, in a writable folder): checked before any sample is generated."""
    from ..files.writes import ensure_writable

    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"--log {str(path)!r} is a folder; pass a file for the JSON-lines record, e.g. "
            f"{str(path / 'evaluate.jsonl')!r} (or --log null for none)."
        )
    if path.exists() and not path.is_file():
        raise ValueError(f"--log {str(path)!r} is not a regular file; pass a .jsonl file path.")
    ensure_writable(path.parent, "--log folder", "pass a --log file in a writable folder")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one JSON line (flushed to disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def wandb_log(cfg: EvalConfig, record: dict, store: SampleStore, seeds: list[int]) -> None:
    """Log the record and a grid of the first 64 samples to a W&B run (offline unless
    ``WANDB_API_KEY`` is set).

    The run is finished here; W&B's service writes out and closes an offline run's file when it
    handles the finish, possibly after this returns: ``wandb.teardown()`` waits for it (the
    process runs it at exit; ``python -m dode.evaluate`` runs it before it returns)."""
    import wandb

    from ..tracking import wandb_mode

    mode = wandb_mode("auto")
    run = wandb.init(
        project=cfg.wandb_project,
        name=cfg.name,
        job_type="evaluate",
        dir=str(Path(cfg.out)),
        mode=mode,
        config={k: v for k, v in record.items() if k not in ("value",)},
    )
    try:
        grid = next(store.iter_images(seeds[:64], 64))
        img = image_grid(grid.permute(0, 2, 3, 1).numpy(), per_row=8, scale=1)
        run.log({"samples": wandb.Image(img)}, commit=False)
    except (StopIteration, FileNotFoundError, KeyError):
        pass
    if record.get("metric"):
        run.log({f"eval/{record['metric']}": record["value"]}, commit=False)
    run.log(
        {
            "eval/images_per_second": record["images_per_second"],
            "eval/num_samples": record["num_samples"],
        }
    )
    run.finish()
