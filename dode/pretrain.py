"""Train a small DDPM (diffusers ``UNet2DModel``) on scikit-learn's 8×8 digits.

``python -m dode.pretrain -c configs/pretrain/digits.yaml`` made the bundled model in
``dode/assets/digits_ddpm``: ε-prediction with the DDPM linear β schedule (1e-4..0.02, 1000
steps, i.e. ``DDPMScheduler()``'s defaults, the same kind of model and scheduler as
``google/ddpm-cifar10-32``), trained on the 1437 training images of
:func:`dode.digits.load_digits_split`. The exported weights are the exponential moving average
(EMA) of the training weights. The result loads with
``DiffusersDenoiser.from_pretrained("dode/assets/digits_ddpm")`` or diffusers'
``DDPMPipeline.from_pretrained``.

Configuration is a LightningCLI: ``--model.*`` (:class:`DDPMPretrain`), ``--data.*``
(:class:`DigitsDataModule`), ``--trainer.*``, plus ``--output`` (where the model goes) and
``--results`` (where the training curve goes: ``pretrain_metrics.csv`` and
``pretrain_curve.png``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LightningCLI
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["DDPMPretrain", "DigitsDataModule", "export_pretrained", "main"]


class _Repeat(Dataset):
    """``images`` repeated so that one epoch has ``length`` items (fewer epoch boundaries)."""

    def __init__(self, images: Tensor, length: int) -> None:
        self.images, self.length = images, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i % len(self.images)]


class DigitsDataModule(pl.LightningDataModule):
    """Training and held-out images of :func:`dode.digits.load_digits_split` in ``[-1, 1]``.

    Args:
        batch_size: training images per step.
        steps_per_epoch: optimizer steps per epoch (validation and logging run per epoch).
        val_batch_size: held-out images per validation batch.
    """

    def __init__(
        self, batch_size: int = 128, steps_per_epoch: int = 500, val_batch_size: int = 360
    ) -> None:
        super().__init__()
        if batch_size < 1 or steps_per_epoch < 1 or val_batch_size < 1:
            raise ValueError("batch_size, steps_per_epoch and val_batch_size must be positive.")
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.val_batch_size = val_batch_size

    def setup(self, stage: str | None = None) -> None:
        from .digits import load_digits_split

        split = load_digits_split()
        self.train_images = split.train_images
        self.test_images = split.test_images

    def train_dataloader(self) -> DataLoader:
        data = _Repeat(self.train_images, self.batch_size * self.steps_per_epoch)
        return DataLoader(data, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        idx = torch.arange(len(self.test_images))
        return DataLoader(TensorDataset(self.test_images, idx), batch_size=self.val_batch_size)


class DDPMPretrain(pl.LightningModule):
    """ε-prediction DDPM training of a diffusers ``UNet2DModel``, with an EMA of the weights.

    Loss: ``E_{t, ε} ‖ε_θ(sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε, t) − ε‖²`` with ``t`` uniform over the
    discrete steps (Ho et al., 2020, Eq. 14). Validation reports the same loss on the held-out
    images with fixed ``(t, ε)`` per image, for the raw and the EMA weights.

    Args:
        sample_size: image side (8 for the digits).
        in_channels: image channels.
        block_out_channels: UNet widths per resolution.
        down_block_types: diffusers down-block names, one per resolution.
        up_block_types: diffusers up-block names, one per resolution (reversed order).
        layers_per_block: ResNet layers per block.
        norm_num_groups: GroupNorm groups (must divide every width).
        attention_head_dim: width of an attention head (mid block and Attn* blocks).
        num_train_timesteps: discrete DDPM steps.
        beta_start: first β of the linear schedule.
        beta_end: last β of the linear schedule.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps; then cosine decay to ``min_lr_ratio · lr``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        ema_decay: EMA decay per step (the exported weights are the EMA).
        ema_warmup: use ``min(ema_decay, (1 + n) / (10 + n))`` at step ``n`` so that early
            weights are forgotten quickly.
        val_seed: seed of the fixed validation ``(t, ε)``.
    """

    def __init__(
        self,
        sample_size: int = 8,
        in_channels: int = 1,
        block_out_channels: tuple[int, ...] = (8, 16, 32),
        down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types: tuple[str, ...] = ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        attention_head_dim: int = 8,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        min_lr_ratio: float = 0.1,
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        val_seed: int = 1234,
    ) -> None:
        super().__init__()
        from diffusers import DDPMScheduler, UNet2DModel

        n = len(block_out_channels)
        if len(down_block_types) != n or len(up_block_types) != n:
            raise ValueError(
                "down_block_types and up_block_types need one entry per block_out_channels "
                f"entry ({n}); got {len(down_block_types)} and {len(up_block_types)}."
            )
        if any(c % norm_num_groups for c in block_out_channels):
            raise ValueError(
                f"norm_num_groups={norm_num_groups} must divide every width in "
                f"block_out_channels={tuple(block_out_channels)}."
            )
        attn_widths = {block_out_channels[-1]} | {
            c for c, b in zip(block_out_channels, down_block_types, strict=True) if "Attn" in b
        }
        if any(c % attention_head_dim for c in attn_widths):
            raise ValueError(
                f"attention_head_dim={attention_head_dim} must divide the width of every block "
                f"with attention (the last width and Attn* blocks): {sorted(attn_widths)}."
            )
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}.")
        self.save_hyperparameters()
        self.unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=in_channels,
            block_out_channels=tuple(block_out_channels),
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            attention_head_dim=attention_head_dim,
        )
        self.ema = copy.deepcopy(self.unet).requires_grad_(False).eval()
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule="linear",
            prediction_type="epsilon",
        )
        self.register_buffer(
            "alphas_cumprod", self.scheduler.alphas_cumprod.to(torch.float32), persistent=False
        )
        self.ema_updates = 0

    # ------------------------------------------------------------------ training
    def _loss(self, net: nn.Module, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        a = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        return ((net(xt, t).sample - eps) ** 2).mean(dim=(1, 2, 3))

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x0 = batch
        t = torch.randint(0, self.hparams.num_train_timesteps, (len(x0),), device=x0.device)
        loss = self._loss(self.unet, x0, t, torch.randn_like(x0)).mean()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        n = self.ema_updates
        decay = self.hparams.ema_decay
        if self.hparams.ema_warmup:
            decay = min(decay, (1 + n) / (10 + n))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.unet.parameters(), strict=True):
                pe.lerp_(p.detach(), 1 - decay)
            for be, b in zip(self.ema.buffers(), self.unet.buffers(), strict=True):
                be.copy_(b)
        self.ema_updates += 1

    def validation_step(self, batch, batch_idx: int) -> None:
        x0, idx = batch
        gen = torch.Generator().manual_seed(self.hparams.val_seed)
        n_all = int(idx.max()) + 1
        t_all = torch.randint(0, self.hparams.num_train_timesteps, (n_all,), generator=gen)
        eps_all = torch.randn((n_all, *x0.shape[1:]), generator=gen)
        t, eps = t_all[idx.cpu()].to(x0.device), eps_all[idx.cpu()].to(x0.device)
        self.log("val/loss", self._loss(self.unet, x0, t, eps).mean(), prog_bar=False)
        self.log("val/loss_ema", self._loss(self.ema, x0, t, eps).mean(), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.unet.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warm, floor = self.hparams.warmup_steps, self.hparams.min_lr_ratio

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            p = min((step - warm) / max(total - warm, 1), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ema_updates"] = self.ema_updates

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.ema_updates = checkpoint.get("ema_updates", 0)


def export_pretrained(
    module: DDPMPretrain, output: str | os.PathLike, card: dict | None = None
) -> Path:
    """Write the EMA UNet (``unet/``) and its ``DDPMScheduler`` (``scheduler/``) to ``output``
    in diffusers pipeline layout, plus ``training.json`` (how it was made). Atomic: a
    temporary folder is renamed into place."""
    from .artifact import atomic_folder

    output = Path(output)
    with atomic_folder(output) as tmp:
        unet = copy.deepcopy(module.ema).cpu().float()
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        module.scheduler.save_pretrained(tmp / "scheduler")
        index = {
            "_class_name": "DDPMPipeline",
            "scheduler": ["diffusers", "DDPMScheduler"],
            "unet": ["diffusers", "UNet2DModel"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        if card is not None:
            (tmp / "training.json").write_text(json.dumps(card, indent=2) + "\n")
    return output


def write_curve(metrics_csv: str | os.PathLike, results: str | os.PathLike) -> list[Path]:
    """Condense Lightning's ``metrics.csv`` into ``pretrain_metrics.csv`` (one row per epoch:
    step, train loss, held-out loss raw/EMA) and plot ``pretrain_curve.png``."""
    import csv

    rows = list(csv.DictReader(open(metrics_csv)))
    by_epoch: dict[int, dict] = {}
    for r in rows:
        if not r.get("epoch"):
            continue
        e = int(float(r["epoch"]))
        d = by_epoch.setdefault(e, {"epoch": e})
        for key, name in (
            ("train/loss_epoch", "train_loss"),
            ("val/loss", "val_loss"),
            ("val/loss_ema", "val_loss_ema"),
        ):
            if r.get(key):
                d[name] = float(r[key])
        if r.get("step"):
            d["step"] = max(d.get("step", 0), int(float(r["step"])) + 1)
    table = [by_epoch[e] for e in sorted(by_epoch)]
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    out_csv = results / "pretrain_metrics.csv"
    cols = ["epoch", "step", "train_loss", "val_loss", "val_loss_ema"]
    with open(out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for d in table:
            w.writerow({c: d.get(c, "") for c in cols})

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=120)
    for key, label in (
        ("train_loss", "train (epoch mean)"),
        ("val_loss", "held-out, raw weights"),
        ("val_loss_ema", "held-out, EMA weights"),
    ):
        pts = [(d["step"], d[key]) for d in table if key in d and "step" in d]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=".", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("ε-prediction MSE")
    ax.set_title("digits DDPM pretraining")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = results / "pretrain_curve.png"
    fig.savefig(out_png)
    plt.close(fig)
    return [out_csv, out_png]


class _PretrainCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--output", type=str, default="dode/assets/digits_ddpm", help="model folder"
        )
        parser.add_argument(
            "--results",
            type=str | None,
            default="experiments/results/digits",
            help="where pretrain_metrics.csv and pretrain_curve.png go (null: nowhere)",
        )


def main(args: list[str] | None = None) -> Path:
    """Entry point of ``python -m dode.pretrain``; returns the model folder."""
    argv = sys.argv[1:] if args is None else list(args)
    cli = _PretrainCLI(
        DDPMPretrain,
        DigitsDataModule,
        run=False,
        args=argv,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"deterministic": False, "num_sanity_val_steps": 0},
    )
    cfg = cli.config
    t0 = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - t0
    if cli.trainer.interrupted:
        print("dode.pretrain: interrupted; no model written.", file=sys.stderr)
        sys.exit(1)
    if not cli.trainer.is_global_zero:
        return Path(cfg.output)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}
    card = {
        "command": "python -m dode.pretrain " + " ".join(argv),
        "seed": cfg.seed_everything,
        "data": "sklearn.datasets.load_digits, fixed stratified split (seed 0, 20% held out), "
        "x / 8 - 1",
        "steps": int(cli.trainer.global_step),
        "train_seconds": round(seconds, 1),
        "final_metrics": metrics,
        "torch": torch.__version__,
    }
    out = export_pretrained(cli.model, cfg.output, card)
    print(f"wrote {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file())} bytes)")
    logger = cli.trainer.logger
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    if cfg.results and log_dir and os.path.isfile(os.path.join(log_dir, "metrics.csv")):
        for p in write_curve(os.path.join(log_dir, "metrics.csv"), cfg.results):
            print(f"wrote {p}")
    return out


if __name__ == "__main__":
    main()
