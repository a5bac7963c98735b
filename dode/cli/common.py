"""What the entry points share: the list of them, the no-GPU hint, the one-line parser errors."""

from __future__ import annotations

import sys

__all__ = [
    "ENTRY_POINTS",
    "no_gpu_hint",
    "lightning_parser",
]

#: every command: ``python -m dode.<name>`` runs ``dode/<name>.py`` (``dode/digits/__main__.py``
#: for ``digits``), which only calls the ``main()`` of ``dode/cli/<name>.py``.
ENTRY_POINTS: tuple[str, ...] = (
    "train",
    "sample",
    "evaluate",
    "export",
    "fid",
    "pretrain",
    "digits",
    "bench",
)


def no_gpu_hint(e: Exception) -> str:
    """One line for a settings error; a GPU asked for on a machine without one says so."""
    import torch

    msg = " ".join(str(e).split())
    if not torch.cuda.is_available() and any(w in msg.lower() for w in ("gpu", "cuda")):
        msg += " (this machine has no usable GPU: use accelerator cpu or auto)"
    return msg


def lightning_parser(name: str) -> type:
    """A ``LightningArgumentParser`` whose parse errors are one line
    (``dode.<name>: error: ...`` and where the options are listed), not a usage dump."""
    from lightning.pytorch.cli import LightningArgumentParser

    class _Parser(LightningArgumentParser):
        def error(self, message: str, ex: Exception | None = None):
            if not self.exit_on_error:
                return super().error(message, ex)
            msg = " ".join(str(message).split())
            sys.stderr.write(f"{name}: error: {msg}\n  (options: python -m {name} --help)\n")
            self.exit(2)

    _Parser.__qualname__ = _Parser.__name__ = "Parser"
    return _Parser
