"""``python -m dode.fid``: reference statistics and Fréchet distances of image folders.

Examples::

    python -m dode.fid ref --images DIR --out stats.npz       # reference statistics (mu, sigma)
    python -m dode.fid score --images DIR --ref stats.npz     # {"fid": ..., "num_images": N}

The work is :func:`dode.evaluation.fid.write_reference` and :func:`dode.evaluation.fid.score_folder`.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from .common import command

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    """The parser of ``python -m dode.fid`` (sub-commands ``ref`` and ``score``)."""
    p = argparse.ArgumentParser(
        prog="python -m dode.fid",
        description="FID through torch-fidelity: reference statistics and Fréchet distances.",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{ref,score}")
    r = sub.add_parser(
        "ref",
        help="write reference statistics (.npz of mu/sigma)",
        description="Write the reference statistics (.npz of mu/sigma) of a folder of images.",
    )
    r.add_argument("--images", required=True, help="a folder of images or a dataset name")
    r.add_argument("--out", required=True, help="the .npz file to write")
    s = sub.add_parser(
        "score",
        help="Fréchet distance of a folder of images to a reference",
        description="Fréchet distance of a folder of images to reference statistics.",
    )
    s.add_argument("--images", required=True, help="a folder of images")
    s.add_argument(
        "--ref",
        required=True,
        help="reference: an .npz of mu/sigma, a folder of images or a torch-fidelity dataset name",
    )
    for q in (r, s):
        q.add_argument(
            "--features",
            default="inception",
            help="inception (FID), pixels (a stand-in) or package.module:factory",
        )
        q.add_argument(
            "--inception_weights",
            default=None,
            help="path of torch-fidelity's Inception weights (default: $DODE_INCEPTION_WEIGHTS, "
            "then torch hub's cache)",
        )
        q.add_argument(
            "--batch_size", type=int, default=256, help="images per forward pass (default 256)"
        )
        q.add_argument(
            "--device",
            default="cuda" if torch.cuda.is_available() else "cpu",
            help="cpu, cuda, cuda:1, ... (default: cuda when there is one)",
        )
    return p


@command("dode.fid")
def main(argv: list[str] | None = None) -> int:
    """Parse, then write or score; one ``error:`` line and status 2 on bad input."""
    a = parser().parse_args(argv)
    from ..evaluation.fid import score_folder, write_reference

    opts = dict(
        features=a.features,
        inception_weights=a.inception_weights,
        batch_size=a.batch_size,
        device=a.device,
    )
    try:
        if a.cmd == "ref":
            dim, name = write_reference(a.images, a.out, **opts)
            print(f"wrote {a.out} ({dim}-d {name} statistics)")
        else:
            print(json.dumps(score_folder(a.images, a.ref, **opts)))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
