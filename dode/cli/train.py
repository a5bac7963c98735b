"""``python -m dode.train``: fit D-ODE λ with Lightning, log to Weights & Biases, write a
fitted-solver file.

Examples::

    python -m dode.train -c configs/default.yaml
    python -m dode.train -c configs/default.yaml -c configs/sgd-local.yaml --model.nfe 8
    python -m dode.train -c configs/tiny.yaml --print_config
    python -m dode.train -c configs/default.yaml --run_dir runs/x --ckpt_path last   # resume
    python -m dode.train -c configs/default.yaml --trainer.devices 8 --trainer.strategy ddp

Every option of :class:`~dode.lit.DODEModule` (``--model.*``), :class:`~dode.lit.NoiseDataModule`
(``--data.*``), the callbacks (``--samples.*``, ``--lambda_plot.*``, ``--fid.*``) and the Lightning
``Trainer`` (``--trainer.*``) is typed and documented in ``--help``.

Run folder (``--run_dir``, default ``runs/<model>-<solver>-nfe<N>-<fit_mode>``): ``config.yaml``,
``metrics.csv``, ``checkpoints/last.ckpt``, ``wandb/`` (offline unless ``WANDB_API_KEY`` is set;
``wandb sync <run_dir>/wandb/offline-run-*`` uploads later), ``samples.png``, ``lambdas.png`` and
the fitted-solver file (``--solver_file``, default ``<run_dir>/solver.safetensors``).

This module holds the implementation; ``dode/train.py`` only runs :func:`main`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningCLI

from ..lit import (
    DODEModule,
    FrechetCallback,
    LambdaPlotCallback,
    NoiseDataModule,
    SampleGridCallback,
    Specs,
)
from ..lit.api import TRAINER_DEFAULTS, FitStopped, run_fit, run_paths
from ..lit.loggers import trainer_extras
from ..lit.specs import RUN_TOP, RunSpec
from ..tracking import wandb_mode
from .common import command, lightning_parser, no_gpu_hint

__all__ = ["CHOICE_OPTIONS", "DODECLI", "main", "reset_stale_options"]

_T0 = time.perf_counter()  # after the imports of this module (torch, lightning, dode)


def _startup_seconds() -> float:
    """Seconds from process start to the end of this module's imports (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        return age - (time.perf_counter() - _T0)
    except Exception:  # noqa: BLE001 - bookkeeping only
        return float("nan")


def _quiet() -> None:
    warnings.filterwarnings("ignore", r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", r".*does not have many workers.*")
    warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)*")
    warnings.filterwarnings("ignore", r".*The anonymous setting has no effect.*")
    warnings.filterwarnings("ignore", r".*LightningCLI's args parameter is intended.*")
    os.environ.setdefault("WANDB_SILENT", "true")
    # Lightning's advertisement for its hosted logger (one line per Trainer, before any error).
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(lambda record: "litlogger" not in record.getMessage())
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def _wandb_online(mode: str) -> bool:
    return wandb_mode(mode) == "online"


#: parse errors as one line (no usage dump)
_Parser = lightning_parser("dode.train")


def _flag_value(args: list[str], i: int, flag: str) -> tuple[bool, str | None, int]:
    """Whether ``args[i]`` is ``flag`` (``--flag VALUE`` or ``--flag=VALUE``): (matched, value,
    the index after it)."""
    arg = args[i]
    if arg == flag:
        return True, args[i + 1] if i + 1 < len(args) else None, i + 2
    if arg.startswith(flag + "="):
        return True, arg[len(flag) + 1 :], i + 1
    return False, None, i + 1


#: each choice of the ``model`` section and the options that belong to what it chose: choosing
#: another one starts from that choice's own options (as LightningCLI's ``class_path`` does)
CHOICE_OPTIONS: tuple[tuple[str, str], ...] = (
    ("schedule", "schedule_options"),
    ("fit_mode", "end_to_end"),
    ("model", "model_options"),
)


def reset_stale_options(
    args: list[str],
    defaults: Mapping[str, str],
    pairs: tuple[tuple[str, str], ...] = CHOICE_OPTIONS,
) -> list[str]:
    """``args`` with ``--model.<options>=null`` after each source that chooses another
    ``model.<choice>`` than the one the current ``model.<options>`` belong to, for each
    ``(choice, options)`` of ``pairs`` (``defaults``: each choice's default): each choice (a
    schedule, a fit mode, a model) starts from its own options.

    The sources are read once, in the order jsonargparse applies them: each ``-c``/``--config``
    file (its ``model.<choice>`` and ``model.<options>``) and each ``--model.<choice>`` /
    ``--model.<options>`` flag. Options from a config file belong to the choice that was
    current when the file set them; a later source that makes another choice resets them
    (``-c configs/sd15.yaml --model.schedule karras`` drops sd15's ``{spacing: trailing}``;
    ``-c configs/digits-end-to-end.yaml --model.fit_mode lstsq`` drops its ``end_to_end``).
    Options given on the command line are the user's own and are never dropped.
    """
    import yaml

    #: per choice: [the current choice, the choice its options belong to, options from a flag]
    state = {choice: [defaults[choice], None, False] for choice, _ in pairs}
    out: list[str] = []
    i = 0
    while i < len(args):
        chosen: dict[str, str] = {}  # what this source chooses
        matched, value, after = False, None, i + 1
        for flag in ("-c", "--config"):
            matched, value, after = _flag_value(args, i, flag)
            if matched:
                break
        if matched:
            try:
                text = Path(value).read_text() if value and Path(value).is_file() else value
                section = (yaml.safe_load(text or "") or {}).get("model") or {}
            except (OSError, yaml.YAMLError, AttributeError):
                section = {}  # the parser reports a config it cannot read
            if isinstance(section, dict):
                for choice, options in pairs:
                    if section.get(choice) is not None:
                        chosen[choice] = section[choice]
                    if options in section:
                        s = state[choice]
                        s[1], s[2] = chosen.get(choice, s[0]), False
        else:
            for choice, options in pairs:
                matched, value, after = _flag_value(args, i, f"--model.{choice}")
                if matched:
                    chosen[choice] = value
                    break
                matched, _, after = _flag_value(args, i, f"--model.{options}")
                if matched:
                    s = state[choice]
                    s[1], s[2] = s[0], True
                    break
        out.extend(args[i:after])
        i = after
        for choice, options in pairs:
            if choice in chosen:
                s = state[choice]
                s[0] = chosen[choice]
                if s[1] is not None and not s[2] and s[1] != s[0]:
                    out.append(f"--model.{options}=null")
                    s[1] = None
    return out


def _add_run_arguments(parser) -> None:
    """The top-level settings (``--run_dir``, ``--solver_file``, ``--ckpt_path``,
    ``--wandb_mode``, ``--wandb_project``, ``--name``) as :class:`~dode.lit.RunSpec` declares
    them: its types, defaults and docstring."""
    import dataclasses
    import typing

    import docstring_parser

    hints = typing.get_type_hints(RunSpec)
    docs = {p.arg_name: p.description for p in docstring_parser.parse(RunSpec.__doc__).params}
    for f in dataclasses.fields(RunSpec):
        if f.name in RUN_TOP:
            text = " ".join((docs.get(f.name) or "").split()).replace("``", "")
            parser.add_argument(f"--{f.name}", type=hints[f.name], default=f.default, help=text)


class DODECLI(LightningCLI):
    """LightningCLI for D-ODE fits: run folder, loggers, checkpoints and the solver file."""

    def __init__(self, args: list[str] | None = None) -> None:
        super().__init__(
            DODEModule,
            NoiseDataModule,
            run=False,
            parser_class=_Parser,
            args=args,
            auto_configure_optimizers=False,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=dict(TRAINER_DEFAULTS),
            parser_kwargs={
                "prog": "python -m dode.train",
                "description": "Fit D-ODE λ for a frozen diffusion model (dode).",
                "default_env": False,
            },
        )

    def parse_arguments(self, parser, args) -> None:
        """Parse, with the options of a schedule, fit mode or model that a later source
        replaced dropped (:func:`reset_stale_options`)."""
        argv = sys.argv[1:] if args is None else args
        if isinstance(argv, list):
            args = reset_stale_options([str(a) for a in argv], Specs.defaults())
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        _add_run_arguments(parser)
        parser.add_lightning_class_args(SampleGridCallback, "samples")
        parser.add_lightning_class_args(LambdaPlotCallback, "lambda_plot")
        parser.add_lightning_class_args(FrechetCallback, "fid")

    # ---- run folder, loggers, checkpoint: what dode.fit adds too -----------------------------
    def specs(self) -> Specs:
        """The parsed settings as :class:`~dode.lit.Specs` (what ``dode.fit(specs)`` takes)."""
        config = self.config.as_dict()
        config.pop("config", None)  # the -c files themselves
        return Specs.from_config(config)

    def run_dir(self) -> Path:
        return run_paths(self.specs())[0]

    def instantiate_trainer(self, **kwargs: Any):
        c = self.config
        extras = trainer_extras(
            self.run_dir(),
            self._get(self.config_init, "trainer", default={}),
            wandb_mode=c.wandb_mode,
            wandb_project=c.wandb_project,
            name=c.name,
            resume=bool(c.ckpt_path),
        )
        trainer_cfg = dict(self._get(self.config_init, "trainer", default={}))
        extras["callbacks"] = [*(trainer_cfg.get("callbacks") or []), *extras["callbacks"]]
        return super().instantiate_trainer(**{**extras, **kwargs})


def _error(msg: str, code: int = 2) -> None:
    print(f"dode.train: error: {msg}", file=sys.stderr)
    sys.exit(code)


@command("dode.train", "Resume with the same --run_dir and --ckpt_path last.")
def main(args: list[str] | None = None) -> Path | None:
    """Parse, then fit and write the fitted-solver file (rank 0) with
    :func:`dode.lit.api.run_fit`, the code path of :func:`dode.fit`; print its path."""
    _quiet()
    t_parse = time.perf_counter()
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        cli = DODECLI(args=args)
    except (ValueError, MisconfigurationException) as e:  # the latter: e.g. no GPU here
        _error(no_gpu_hint(e))
    module, trainer = cli.model, cli.trainer
    module.timings["startup_imports_s"] = _startup_seconds()
    module.timings["parse_and_load_s"] = time.perf_counter() - t_parse
    run_dir, solver_file = run_paths(cli.specs())
    try:
        result = run_fit(
            module,
            cli.datamodule,
            trainer,
            solver_file=solver_file,
            ckpt_path=cli.config.ckpt_path,
        )
    except ValueError as e:
        _error(str(e))
    except FitStopped as e:
        _error(str(e), e.exit_code)
    except RuntimeError:
        if not trainer.interrupted:
            raise
        _error(
            f"interrupted; no solver file was written. Resume with --run_dir {run_dir} "
            "--ckpt_path last."
        )
    if result.path is None:  # not rank 0
        return None
    fitted = result.fitted
    lam = ", ".join(f"{v:.4g}" for v in fitted.lambdas.tolist())
    final = module.val_metrics.get("val/mse_final")
    base = module.val_metrics.get("val/mse_base_final")
    if final is not None and base is not None:
        print(f"val MSE to the teacher: D-ODE {final:.4g} vs base {base:.4g}")
    if result.lambda_scale != 1.0:
        print(f"λ scale chosen by the Fréchet distance on the fid seeds: {result.lambda_scale:g}")
    print(f"λ = [{lam}]")
    print(f"fitted solver: {result.path}")
    t = dict(module.timings)
    t["total_s"] = t.get("startup_imports_s", 0.0) + time.perf_counter() - _T0
    keys = ("startup_imports_s", "model_load_s", "wandb_start_s", "teacher_s", "train_loop_s",
            "validation_s", "wandb_finish_s", "total_s")  # fmt: skip
    print("time: " + ", ".join(f"{k[:-2]} {t[k]:.2f}s" for k in keys if k in t))
    return result.path


if __name__ == "__main__":
    main()
