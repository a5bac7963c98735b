"""Experiment tracking for the entry points: the one rule for the Weights & Biases mode."""

from __future__ import annotations

import os
from typing import Literal

__all__ = ["wandb_mode"]

WandbMode = Literal["online", "offline", "disabled"]


def wandb_mode(requested: str = "auto") -> WandbMode:
    """The W&B mode of a run.

    ``online``, ``offline`` and ``disabled`` are taken as asked. ``auto``: ``offline`` or
    ``disabled`` when ``$WANDB_MODE`` says so (``dryrun`` is ``offline``), else ``online`` when
    ``$WANDB_API_KEY`` is set, else ``offline`` (a run never waits for a login).
    """
    if requested in ("online", "offline", "disabled"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(
            f"unknown W&B mode {requested!r}; use 'auto', 'online', 'offline' or 'disabled'."
        )
    forced = os.environ.get("WANDB_MODE", "").lower()
    if forced in ("offline", "dryrun"):
        return "offline"
    if forced == "disabled":
        return "disabled"
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"
