"""Where dode keeps what it can recompute: ``$DODE_CACHE`` or ``~/.cache/dode``.

Sub-folders: ``teacher`` (teacher states, :mod:`dode.lit.data`), ``fid-refs`` (reference
statistics, :mod:`dode.evaluation.fid`), ``weights-hash`` (:func:`dode.files.weights.weights_hash`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root(*parts: str) -> Path:
    """``$DODE_CACHE`` (if set and non-empty) or ``~/.cache/dode``, joined with ``parts``."""
    root = os.environ.get("DODE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dode")
    return Path(root, *parts)
