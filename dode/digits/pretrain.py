"""Train a small DDPM or rectified flow (diffusers ``UNet2DModel``) on scikit-learn's 8×8 digits.

``python -m dode.pretrain -c configs/pretrain/digits.yaml`` made the bundled model in
``dode/assets/digits_ddpm``: ε-prediction with the DDPM linear β schedule (1e-4..0.02, 1000
steps, i.e. ``DDPMScheduler()``'s defaults, the same kind of model and scheduler as
``google/ddpm-cifar10-32``), trained on the 1437 training images of
:func:`dode.digits.load_digits_split`. The exported weights are the exponential moving average
(EMA) of the training weights. The result loads with
``DiffusersDenoiser.from_pretrained("dode/assets/digits_ddpm")`` or diffusers'
``DDPMPipeline.from_pretrained``.

Two more bundled models come from the same module:

* ``dode/assets/digits_cond_ddpm`` (``configs/pretrain/digits-cond.yaml``): the same DDPM,
  class-conditional (``--model.num_classes 10``: ``UNet2DModel(num_class_embeds=11)``, label
  ``10`` is the null label of classifier-free guidance) trained with label dropout
  (``--model.label_dropout 0.1``).
* ``dode/assets/digits_flow`` (``configs/pretrain/digits-flow.yaml``): a class-conditional
  rectified flow (``--model.objective flow``): ``x_t = (1 − t) x0 + t ε``, the network predicts
  ``v = ε − x0`` and sees the timestep ``1000 t`` (as diffusers' ``FlowMatchEulerDiscreteScheduler``
  and SD3: ``timesteps = sigmas * num_train_timesteps``); exported with a
  ``FlowMatchEulerDiscreteScheduler`` (shift 1) in ``scheduler/``.

Configuration is a LightningCLI: ``--model.*`` (:class:`DDPMPretrain`), ``--data.*``
(:class:`DigitsDataModule`), ``--trainer.*``, plus ``--output`` (where the model goes),
``--results`` (where the training curve goes) and ``--curve_name`` (its file names:
``{curve_name}_metrics.csv`` and ``{curve_name}_curve.png``, default ``pretrain``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = ["DDPMPretrain", "DigitsDataModule", "export_pretrained", "pretrain", "write_curve"]


class _Repeat(Dataset):
    """``(image, label)`` pairs repeated so that one epoch has ``length`` items (fewer epoch
    boundaries)."""

    def __init__(self, images: Tensor, labels: Tensor, length: int) -> None:
        self.images, self.labels, self.length = images, labels, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        j = i % len(self.images)
        return self.images[j], self.labels[j]


class DigitsDataModule(pl.LightningDataModule):
    """Training and held-out digits of :func:`dode.digits.load_digits_split` in ``[-1, 1]``.

    Training batches are ``(images, labels)``; validation batches ``(images, labels, index)``
    (the index fixes each held-out image's validation noise).

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
        from .classifier import load_digits_split

        split = load_digits_split()
        self.train_images, self.train_labels = split.train_images, split.train_labels
        self.test_images, self.test_labels = split.test_images, split.test_labels

    def train_dataloader(self) -> DataLoader:
        n = self.batch_size * self.steps_per_epoch
        data = _Repeat(self.train_images, self.train_labels, n)
        return DataLoader(data, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        idx = torch.arange(len(self.test_images))
        data = TensorDataset(self.test_images, self.test_labels, idx)
        return DataLoader(data, batch_size=self.val_batch_size)


class DDPMPretrain(pl.LightningModule):
    """DDPM (ε) or rectified-flow (v) training of a diffusers ``UNet2DModel``, with an EMA of
    the weights, optionally class-conditional with label dropout for classifier-free guidance.

    ``objective="eps"``: ``E_{t, ε} ‖ε_θ(sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε, t) − ε‖²`` with ``t``
    uniform over the discrete steps (Ho et al., 2020, Eq. 14).

    ``objective="flow"``: ``E_{t, ε} ‖v_θ((1 − t) x0 + t ε, 1000 t) − (ε − x0)‖²`` with
    ``t ∈ [0, 1]`` drawn by ``flow_time`` (rectified flow, Liu et al., 2023; Esser et al., 2024);
    the network's timestep input is ``t · num_train_timesteps``, as diffusers'
    ``FlowMatchEulerDiscreteScheduler`` feeds it.

    With ``num_classes = K`` the UNet has ``K + 1`` class embeddings; label ``K`` is the null
    (unconditional) label, which replaces the true label of each training image with
    probability ``label_dropout``. Validation reports the loss on the held-out images with fixed
    ``(t, ε)`` per image, for the raw and the EMA weights (true labels; for a conditional model
    also ``val/loss_ema_null`` with the null label).

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
        num_classes: number of classes for class conditioning (``None``: unconditional).
        label_dropout: probability of replacing a training label by the null label
            ``num_classes`` (classifier-free guidance training); needs ``num_classes``.
        objective: ``"eps"`` (DDPM ε-prediction) or ``"flow"`` (rectified flow, v-prediction).
        flow_time: training distribution of the flow time ``t``: ``"uniform"`` on ``[0, 1]`` or
            ``"logit_normal"`` (``sigmoid(N(0, 1))``, as SD3). Validation always uses uniform.
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
        num_classes: int | None = None,
        label_dropout: float = 0.0,
        objective: Literal["eps", "flow"] = "eps",
        flow_time: Literal["uniform", "logit_normal"] = "uniform",
    ) -> None:
        super().__init__()
        from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel

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
        if objective not in ("eps", "flow"):
            raise ValueError(f"objective must be 'eps' or 'flow', got {objective!r}.")
        if flow_time not in ("uniform", "logit_normal"):
            raise ValueError(f"flow_time must be 'uniform' or 'logit_normal', got {flow_time!r}.")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}.")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {label_dropout}.")
        if label_dropout > 0 and num_classes is None:
            raise ValueError(
                "label_dropout needs a class-conditional model: set --model.num_classes too."
            )
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
            num_class_embeds=None if num_classes is None else num_classes + 1,
        )
        self.ema = copy.deepcopy(self.unet).requires_grad_(False).eval()
        if objective == "flow":
            self.scheduler = FlowMatchEulerDiscreteScheduler(
                num_train_timesteps=num_train_timesteps, shift=1.0
            )
        else:
            self.scheduler = DDPMScheduler(
                num_train_timesteps=num_train_timesteps,
                beta_start=beta_start,
                beta_end=beta_end,
                beta_schedule="linear",
                prediction_type="epsilon",
            )
        # (a flow never reads it; kept so that both objectives have the same buffers)
        ddpm = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule="linear",
        )
        self.register_buffer(
            "alphas_cumprod", ddpm.alphas_cumprod.to(torch.float32), persistent=False
        )
        self.ema_updates = 0

    @property
    def null_label(self) -> int | None:
        """The unconditional class label (``num_classes``), ``None`` for an unconditional model."""
        return self.hparams.num_classes

    # ------------------------------------------------------------------ training
    def noisy_and_target(self, x0: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(x_t, network timestep, regression target)`` of clean ``x0``, time ``t`` and
        noise ``eps``: DDPM ``(sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε, t, ε)`` for integer ``t``; flow
        ``((1 − t) x0 + t ε, 1000 t, ε − x0)`` for ``t ∈ [0, 1]``."""
        if self.hparams.objective == "flow":
            tt = t.to(x0.dtype).reshape(-1, 1, 1, 1)
            xt = (1 - tt) * x0 + tt * eps
            return xt, t * self.hparams.num_train_timesteps, eps - x0
        a = self.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps

    def _loss(
        self, net: nn.Module, x0: Tensor, t: Tensor, eps: Tensor, labels: Tensor | None = None
    ) -> Tensor:
        xt, timestep, target = self.noisy_and_target(x0, t, eps)
        if self.hparams.num_classes is None:
            labels = None
        return ((net(xt, timestep, class_labels=labels).sample - target) ** 2).mean(dim=(1, 2, 3))

    def sample_time(self, n: int, device, generator: torch.Generator | None = None) -> Tensor:
        """Training times: integer steps (DDPM) or ``t ∈ [0, 1]`` by ``flow_time`` (flow)."""
        if self.hparams.objective == "eps":
            hi = self.hparams.num_train_timesteps
            return torch.randint(0, hi, (n,), device=device, generator=generator)
        if self.hparams.flow_time == "logit_normal":
            return torch.sigmoid(torch.randn(n, device=device, generator=generator))
        return torch.rand(n, device=device, generator=generator)

    def drop_labels(self, labels: Tensor) -> Tensor:
        """``labels`` with each entry replaced by the null label with probability
        ``label_dropout`` (unchanged, and no random numbers drawn, when it is 0)."""
        p = self.hparams.label_dropout
        if self.hparams.num_classes is None or p == 0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < p
        return torch.where(drop, torch.full_like(labels, self.null_label), labels)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x0, labels = batch
        t = self.sample_time(len(x0), x0.device)
        eps = torch.randn_like(x0)
        labels = self.drop_labels(labels)
        loss = self._loss(self.unet, x0, t, eps, labels).mean()
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
        x0, labels, idx = batch
        gen = torch.Generator().manual_seed(self.hparams.val_seed)
        n_all = int(idx.max()) + 1
        if self.hparams.objective == "flow":
            t_all = torch.rand(n_all, generator=gen)
        else:
            t_all = torch.randint(0, self.hparams.num_train_timesteps, (n_all,), generator=gen)
        eps_all = torch.randn((n_all, *x0.shape[1:]), generator=gen)
        t, eps = t_all[idx.cpu()].to(x0.device), eps_all[idx.cpu()].to(x0.device)
        self.log("val/loss", self._loss(self.unet, x0, t, eps, labels).mean(), prog_bar=False)
        self.log("val/loss_ema", self._loss(self.ema, x0, t, eps, labels).mean(), prog_bar=True)
        if self.null_label is not None:
            null = torch.full_like(labels, self.null_label)
            self.log("val/loss_ema_null", self._loss(self.ema, x0, t, eps, null).mean())

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
    """Write the EMA UNet (``unet/``) and its scheduler (``scheduler/``: ``DDPMScheduler`` for
    ε, ``FlowMatchEulerDiscreteScheduler`` for a flow) to ``output`` in diffusers pipeline
    layout, plus ``training.json`` (how it was made). Atomic: a temporary folder is renamed
    into place.

    ``model_index.json`` names ``DDPMPipeline`` for an ε model; a flow ``UNet2DModel`` has no
    diffusers pipeline, so there ``_class_name`` is ``null`` and the components are loaded one
    by one (``UNet2DModel.from_pretrained(output, subfolder="unet")`` and
    ``FlowMatchEulerDiscreteScheduler.from_pretrained(output, subfolder="scheduler")``)."""
    from ..files.writes import atomic_folder

    output = Path(output)
    with atomic_folder(output) as tmp:
        unet = copy.deepcopy(module.ema).cpu().float()
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        module.scheduler.save_pretrained(tmp / "scheduler")
        index = {
            "_class_name": "DDPMPipeline" if module.hparams.objective == "eps" else None,
            "scheduler": ["diffusers", type(module.scheduler).__name__],
            "unet": ["diffusers", "UNet2DModel"],
        }
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        if card is not None:
            (tmp / "training.json").write_text(json.dumps(card, indent=2) + "\n")
    return output


def write_curve(
    metrics_csv: str | os.PathLike,
    results: str | os.PathLike,
    name: str = "pretrain",
    ylabel: str = "ε-prediction MSE",
    title: str = "digits DDPM pretraining",
) -> list[Path]:
    """Condense Lightning's ``metrics.csv`` into ``{name}_metrics.csv`` (one row per epoch:
    step, train loss, held-out loss raw/EMA, and with the null label for a conditional model)
    and plot ``{name}_curve.png``."""
    import csv

    rows = list(csv.DictReader(open(metrics_csv)))
    by_epoch: dict[int, dict] = {}
    for r in rows:
        if not r.get("epoch"):
            continue
        e = int(float(r["epoch"]))
        d = by_epoch.setdefault(e, {"epoch": e})
        for key, col in (
            ("train/loss_epoch", "train_loss"),
            ("val/loss", "val_loss"),
            ("val/loss_ema", "val_loss_ema"),
            ("val/loss_ema_null", "val_loss_ema_null"),
        ):
            if r.get(key):
                d[col] = float(r[key])
        if r.get("step"):
            d["step"] = max(d.get("step", 0), int(float(r["step"])) + 1)
    table = [by_epoch[e] for e in sorted(by_epoch)]
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    out_csv = results / f"{name}_metrics.csv"
    cols = ["epoch", "step", "train_loss", "val_loss", "val_loss_ema"]
    if any("val_loss_ema_null" in d for d in table):
        cols.append("val_loss_ema_null")
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
        ("val_loss_ema_null", "held-out, EMA, null label"),
    ):
        pts = [(d["step"], d[key]) for d in table if key in d and "step" in d]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=".", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = results / f"{name}_curve.png"
    fig.savefig(out_png)
    plt.close(fig)
    return [out_csv, out_png]


def pretrain(
    model: DDPMPretrain,
    datamodule: DigitsDataModule,
    trainer: pl.Trainer,
    output: str | os.PathLike,
    results: str | os.PathLike | None = "experiments/results/digits",
    curve_name: str = "pretrain",
    command: str = "",
    seed: int | None = None,
) -> Path:
    """Fit ``model`` on ``datamodule``, export it to ``output`` with a training card (what
    ``python -m dode.pretrain`` does after parsing), and condense the training curve into
    ``results`` (``None``: nowhere); returns the model folder.

    Args:
        model: the model to train.
        datamodule: the digits data.
        trainer: the Lightning trainer (its CSV logger's ``metrics.csv`` gives the curve).
        output: the model folder to write.
        results: where ``{curve_name}_metrics.csv`` and ``{curve_name}_curve.png`` go.
        curve_name: file-name stem of the curve.
        command: the command line recorded in the card.
        seed: the seed recorded in the card.
    """
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - t0
    if trainer.interrupted:
        print("dode.pretrain: interrupted; no model written.", file=sys.stderr)
        sys.exit(1)
    if not trainer.is_global_zero:
        return Path(output)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    hp = model.hparams
    card = {
        "command": command,
        "seed": seed,
        "data": "sklearn.datasets.load_digits, fixed stratified split (seed 0, 20% held out), "
        "x / 8 - 1",
        "objective": hp.objective,
        "prediction": "epsilon" if hp.objective == "eps" else "velocity v = eps - x0",
        **(
            {
                "flow": "x_t = (1 - t) x0 + t eps, t in [0, 1]; UNet timestep = t * "
                f"{hp.num_train_timesteps}",
                "flow_time": hp.flow_time,
            }
            if hp.objective == "flow"
            else {}
        ),
        "num_classes": hp.num_classes,
        "null_label": hp.num_classes,
        "label_dropout": hp.label_dropout,
        "scheduler": type(model.scheduler).__name__,
        "steps": int(trainer.global_step),
        "train_seconds": round(seconds, 1),
        "final_metrics": metrics,
        "torch": torch.__version__,
    }
    out = export_pretrained(model, output, card)
    print(f"wrote {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file())} bytes)")
    logger = trainer.logger
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    if results and log_dir and os.path.isfile(os.path.join(log_dir, "metrics.csv")):
        what = "rectified flow" if hp.objective == "flow" else "DDPM"
        if hp.num_classes is not None:
            what = f"class-conditional {what}"
        for p in write_curve(
            os.path.join(log_dir, "metrics.csv"),
            results,
            name=curve_name,
            ylabel="v-prediction MSE" if hp.objective == "flow" else "ε-prediction MSE",
            title=f"digits {what} pretraining",
        ):
            print(f"wrote {p}")
    return out
