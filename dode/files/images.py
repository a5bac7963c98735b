"""Samples as images: data in [−1, 1] → uint8, and a grid of images for a PNG."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["to_uint8", "to_uint8_images", "to_uint8_hwc", "image_grid"]


def to_uint8(x: Tensor) -> Tensor:
    """Data in [−1, 1] to uint8 [0, 255] (as diffusers' pipelines round); same shape and device."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8_images(x: Tensor) -> Tensor:
    """Samples in [−1, 1], ``[B, C, H, W]`` → uint8 ``[B, C, H, W]`` on the CPU."""
    if x.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(x.shape)}.")
    return to_uint8(x).cpu()


def to_uint8_hwc(x: Tensor) -> np.ndarray:
    """Samples in [−1, 1], ``[N, C, H, W]`` → a uint8 array ``[N, H, W, C]`` (PIL's layout)."""
    return to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray, per_row: int = 8, scale: int = 4) -> np.ndarray:
    """uint8 images ``[N, H, W, C]`` → one RGB array, ``per_row`` images a row, 1-pixel white
    gaps, every pixel repeated ``scale`` × ``scale`` times (gray images become RGB)."""
    n, h, w, c = images.shape
    rows = -(-n // per_row)
    out = np.full((rows * (h + 1) + 1, per_row * (w + 1) + 1, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, per_row)
        out[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = im
    if c == 1:
        out = np.repeat(out, 3, axis=2)
    return out.repeat(scale, 0).repeat(scale, 1)
