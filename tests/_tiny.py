"""A tiny randomly initialised diffusers ``UNet2DModel`` (and its DDPM scheduler config) for tests.

The network is small enough for CPU tests (sample_size 8, channels (16, 32), one layer per
block, no attention) and its output is made non-trivial: every bias and the output convolution
get extra random weight, so ε̂, v̂ and x̂0 vary with both the input and the timestep.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

CHANNELS = 3
NUM_TRAIN_TIMESTEPS = 1000


def scheduler_config(prediction_type: str = "epsilon") -> dict:
    """The DDPM noise schedule every tiny model is trained under (diffusers' defaults)."""
    return {
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "prediction_type": prediction_type,
        "clip_sample": False,
    }


def make_tiny_unet(
    tmp_path: str | os.PathLike | None = None,
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon",
    sample_size: int = 8,
    seed: int = 0,
    layout: Literal["pipeline", "flat"] = "pipeline",
    num_class_embeds: int | None = None,
):
    """Build a tiny random ``UNet2DModel``; with ``tmp_path``, also save it there.

    Args:
        tmp_path: folder to write to (created if needed); ``None`` writes nothing.
        prediction_type: recorded in the saved scheduler config.
        sample_size: height and width of a sample.
        seed: seed of the random weights.
        layout: ``"pipeline"`` writes ``unet/`` and ``scheduler/`` subfolders (a
            ``DiffusionPipeline`` folder); ``"flat"`` writes ``config.json`` and
            ``scheduler_config.json`` side by side (as ``google/ddpm-cifar10-32``).
        num_class_embeds: make it class-conditional with this many label embeddings.

    Returns:
        The model, in ``eval()`` mode, float32, on the CPU.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    if layout not in ("pipeline", "flat"):
        raise ValueError(f"layout must be 'pipeline' or 'flat', got {layout!r}.")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            layers_per_block=1,
            block_out_channels=(16, 32),
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            num_class_embeds=num_class_embeds,
        )
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith("bias") or name.startswith("conv_out"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    unet.eval()
    if tmp_path is not None:
        root = os.fspath(tmp_path)
        sched = DDPMScheduler(**scheduler_config(prediction_type))
        if layout == "pipeline":
            unet.save_pretrained(os.path.join(root, "unet"))
            sched.save_pretrained(os.path.join(root, "scheduler"))
        else:
            unet.save_pretrained(root)
            sched.save_pretrained(root)
    return unet


def tiny_alphas_cumprod() -> torch.Tensor:
    """The ᾱ table of :func:`scheduler_config` as diffusers computes it (float32 → float64)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**scheduler_config()).alphas_cumprod.to(torch.float64)
