"""``python -m dode.digits``: train the digits classifier of FD-digits.

Example::

    python -m dode.digits --output dode/assets/digits_classifier

The options are the arguments of :func:`dode.digits.train_classifier` (``-h`` describes each),
the work; it prints its result (held-out and training accuracy, seconds, parameters) as JSON.
"""

from __future__ import annotations

import json
import sys

from .common import command

__all__ = ["main", "parser"]


def parser():
    """The parser of ``python -m dode.digits`` (jsonargparse; ``train_classifier``'s arguments)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from ..digits.classifier import train_classifier

    p = ArgumentParser(
        prog="python -m dode.digits",
        description="Train the digits classifier (FD-digits features) on the training split; "
        "report held-out accuracy.",
    )
    p.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config (repeatable)")
    p.add_function_arguments(train_classifier, as_group=False)
    return p


@command("dode.digits")
def main(argv: list[str] | None = None) -> dict:
    """Parse, then :func:`dode.digits.train_classifier`; print and return its result."""
    from ..digits.classifier import train_classifier

    ns = parser().parse_args(argv).as_dict()
    ns.pop("config", None)
    try:
        info = train_classifier(**ns)
    except ValueError as e:
        print(f"dode.digits: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
