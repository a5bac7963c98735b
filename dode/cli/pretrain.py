"""``python -m dode.pretrain``: train the small digits models (LightningCLI).

Examples::

    python -m dode.pretrain -c configs/pretrain/digits.yaml        # dode/assets/digits_ddpm
    python -m dode.pretrain -c configs/pretrain/digits-cond.yaml   # dode/assets/digits_cond_ddpm
    python -m dode.pretrain -c configs/pretrain/digits-flow.yaml   # dode/assets/digits_flow

Options: ``--model.*`` (:class:`dode.digits.pretrain.DDPMPretrain`), ``--data.*``
(:class:`dode.digits.pretrain.DigitsDataModule`), ``--trainer.*``, plus ``--output``, ``--results`` and
``--curve_name``; ``-h`` describes each. The work is :func:`dode.digits.pretrain.pretrain`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from ..digits.pretrain import DDPMPretrain, DigitsDataModule, pretrain
from .common import command, lightning_parser

__all__ = ["main"]


class _PretrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--output", type=str, default="dode/assets/digits_ddpm", help="model folder"
        )
        parser.add_argument(
            "--results",
            type=str | None,
            default="experiments/results/digits",
            help="where {curve_name}_metrics.csv and {curve_name}_curve.png go (null: nowhere)",
        )
        parser.add_argument(
            "--curve_name", type=str, default="pretrain", help="file-name stem of the curve"
        )


@command("dode.pretrain")
def main(args: list[str] | None = None) -> Path:
    """Entry point of ``python -m dode.pretrain``; returns the model folder."""
    argv = sys.argv[1:] if args is None else list(args)
    cli = _PretrainCLI(
        DDPMPretrain,
        DigitsDataModule,
        run=False,
        args=args,  # None: sys.argv[1:], as argv
        parser_class=lightning_parser("dode.pretrain"),
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"deterministic": False, "num_sanity_val_steps": 0},
        parser_kwargs={
            "prog": "python -m dode.pretrain",
            "description": "Train a small DDPM or rectified flow on scikit-learn's 8x8 digits.",
        },
    )
    cfg = cli.config
    return pretrain(
        cli.model,
        cli.datamodule,
        cli.trainer,
        cfg.output,
        results=cfg.results,
        curve_name=cfg.curve_name,
        command="python -m dode.pretrain " + " ".join(argv),
        seed=cfg.seed_everything,
    )


if __name__ == "__main__":
    main()
