"""``python -m dode.sample``: samples from a fitted-solver file, on any machine.

Example::

    python -m dode.sample --solver_file runs/x/solver.safetensors --seeds 0-63 --out samples/

writes ``seed_000000.png`` … (one PNG per seed, for image models), ``grid.png`` and
``samples.npz`` with ``samples`` (float32, the model's space, ``[N, ...]``), ``images`` (uint8
``[N, H, W, C]``, image models only), ``seeds``, ``lambdas`` and ``sigmas``. Noise comes from
each sample's seed alone, so the same seeds give the same samples for any batch size and on
any machine (up to the floating-point differences of the device).

Conditional models: ``--class_labels 0,1,2`` (seed ``s`` gets ``labels[s % n]``; also ``all``
and ``uniform``), ``--prompt "…"`` (every seed) or ``--prompts_file FILE`` (one prompt per line,
seed ``s`` gets line ``s % n``), ``--negative_prompt``; a file fitted with a label rule reuses
it. The guidance scale is the file's unless ``--guidance_scale`` is given (another scale warns:
λ were fitted for the file's). Latent models (Stable Diffusion) sample latents and decode them
with the VAE, batched, once per image: ``samples`` then holds the decoded images.

The model defaults to the one recorded in the file (its id: a registered name, hub id or
folder); pass ``--model`` when it lives elsewhere on this machine. Its weights hash must match
the file's (``--ignore_model_hash`` overrides, as in ``python -m dode.evaluate``). ``--out``
must be new, empty, or hold the ``run.json`` of a run with the same model, solver, grid and λ
(a ``run.json`` alone, left by a killed run, names no sample and is replaced). One run at a time
writes into a folder: a run holds ``<out>/.sample.lock`` and a second one is refused (the lock
of a process that is gone is taken over); run after run, ``samples.npz`` is merged by seed.

Flags are spelled with underscores, as in every ``python -m dode.<name>``. This module only
parses the arguments; the work is :func:`dode.evaluation.sample_folder.sample_to_folder`.
``dode/sample.py`` only runs :func:`main`, so the package attribute ``dode.sample`` stays the
sampling function.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..evaluation.sample_folder import sample_to_folder
from .common import command

__all__ = ["main", "parser", "add_conditioning_arguments"]


def add_conditioning_arguments(p: argparse.ArgumentParser) -> None:
    """``--prompt``, ``--prompts_file``, ``--negative_prompt``, ``--class_labels``,
    ``--guidance_scale``, ``--guidance_rescale`` (the fields of the same names of
    ``python -m dode.evaluate``)."""
    g = p.add_argument_group("conditional models")
    g.add_argument(
        "--prompt", default=None, metavar="TEXT", help="text models: one prompt for every seed"
    )
    g.add_argument(
        "--prompts_file",
        default=None,
        metavar="FILE",
        help="text models: one prompt per line (seed s: line s %% n)",
    )
    g.add_argument(
        "--negative_prompt", default=None, metavar="TEXT", help="text models: the negative prompt"
    )
    g.add_argument(
        "--class_labels",
        default=None,
        metavar="LABELS",
        help="class-conditional models: 0,1,2 (seed s: labels[s %% n]), all or uniform",
    )
    g.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        metavar="W",
        help="CFG scale (default: the file's)",
    )
    g.add_argument("--guidance_rescale", type=float, default=None, metavar="PHI",
          help="CFG rescale φ (default: the file's)")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    """The parser of ``python -m dode.sample``."""
    p = argparse.ArgumentParser(
        prog="python -m dode.sample",
        description="Generate samples with a fitted D-ODE solver file.",
    )
    p.add_argument(
        "--solver_file", required=True, metavar="FILE", help="fitted-solver .safetensors file"
    )
    p.add_argument(
        "--model",
        default=None,
        help="model (registered name, folder or hub id); default: the file's",
    )
    p.add_argument("--seeds", default="0-63", help="seeds, e.g. 0-63 or 0-9,20 (default 0-63)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--batch_size",
        type=int,
        default=64,
        metavar="N",
        help="samples per batch (default 64; the samples do not depend on it)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default auto)")
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default=None,
        help="integration dtype (default: the one the solver was fitted in)",
    )
    p.add_argument("--base", action="store_true", help="sample with the base solver (λ = 0)")
    p.add_argument(
        "--ignore_model_hash",
        action="store_true",
        help="sample even if the model's weights differ from the ones the λ were fitted for, "
        "or cannot be identified (the same flag as python -m dode.evaluate's)",
    )
    p.add_argument("--no_png", action="store_true", help="write only samples.npz and grid.png")
    add_conditioning_arguments(p)
    return p


@command("dode.sample", "Run the same command again (samples.npz is written at the end).")
def main(argv: list[str] | None = None) -> Path:
    """Parse, then sample (see the module's description); one ``error:`` line and status 2 on
    bad input. Returns the path of ``samples.npz``."""
    args = parser().parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    out = Path(args.out)
    made = not out.exists()
    try:
        return sample_to_folder(**vars(args))
    except BaseException as e:
        _undo_claim(out, made)
        if isinstance(e, ValueError):
            print(f"dode.sample: error: {e}", file=sys.stderr)
            sys.exit(2)
        raise


def _undo_claim(out: Path, made: bool) -> None:
    """After a failed run: remove a ``run.json`` that is all the folder holds (it names no
    sample) and the folder, if the run made it and it is empty, so a retry with other settings
    is not refused."""
    try:
        if [p.name for p in out.iterdir()] == ["run.json"]:
            (out / "run.json").unlink()
        if made:
            out.rmdir()  # only if empty
    except OSError:
        pass


if __name__ == "__main__":
    main()
