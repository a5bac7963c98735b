"""Stopping long work between batches when the process is sent SIGTERM."""

from __future__ import annotations

from typing import Any

__all__ = ["stop_if_terminated"]


def stop_if_terminated(trainer: Any | None) -> None:
    """Raise Lightning's ``SIGTERMException`` (exit status 143 = 128 + SIGTERM) if the process
    was sent SIGTERM (a timeout, ``kill``, SLURM, Kubernetes) while ``trainer`` runs.

    Lightning's handler only notes the signal (``trainer.received_sigterm``) and its loops look
    at it only between training batches: work that runs elsewhere (the teacher phase of a fit,
    the batches of a ``predict`` loop) calls this between its batches to stop there."""
    if trainer is not None and getattr(trainer, "received_sigterm", False):
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        raise SIGTERMException(128 + 15)
