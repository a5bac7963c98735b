"""What the entry points share: the list of them, Ctrl-C as one line, the no-GPU hint, the
one-line parser errors."""

from __future__ import annotations

import functools
import signal
import sys

__all__ = [
    "ENTRY_POINTS",
    "command",
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


def _lightning_interrupt(e: SystemExit) -> bool:
    """Whether ``e`` is Lightning's way of ending on Ctrl-C: inside ``trainer.fit`` /
    ``predict`` it catches the ``KeyboardInterrupt``, tears the run down and calls
    ``sys.exit(1)`` while handling it (so the interrupt is the exit's context)."""
    return e.code == 1 and isinstance(e.__context__, KeyboardInterrupt)


def command(name: str, again: str = "Run the same command again."):
    """Decorate a command's ``main``: Ctrl-C (``KeyboardInterrupt``, also the one Lightning
    turns into ``sys.exit(1)``) ends it with one line on stderr and exit status 130 (128 +
    SIGINT), not a traceback. Every file dode writes is written whole (atomic renames), so an
    interruption leaves none half-written; ``again`` says how to go on."""

    def decorate(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                pass
            except SystemExit as e:
                if not _lightning_interrupt(e):
                    raise
            sys.stderr.write(
                f"{name}: stopped by Ctrl-C; every file written so far is whole and none is "
                f"half-written. {again}\n"
            )
            sys.exit(128 + signal.SIGINT)

        return run

    return decorate


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
