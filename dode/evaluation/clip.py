"""CLIP score of generated images against their prompts (torchmetrics ``CLIPScore``), from
CLIP weights present locally (dode never downloads them)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["check_clip", "clip_score"]


def _tensor(out):
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


def check_clip(folder: str | os.PathLike, conditioning) -> None:
    """Raise ``ValueError`` unless ``folder`` holds a CLIP model and processor saved with
    ``save_pretrained`` and the samples have prompts to score against."""
    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"no CLIP weights in {str(path)!r} (no config.json); the CLIP score needs a local "
            "CLIP model: download one first (huggingface-cli download "
            "openai/clip-vit-large-patch14 --local-dir DIR) and pass --clip_model DIR."
        )
    if conditioning is None or conditioning.kind != "prompts":
        raise ValueError(
            "the CLIP score compares images with their prompts; pass --prompt or --prompts_file "
            "(a text model), or drop --clip_model."
        )


def clip_score(
    folder: str | os.PathLike,
    store,
    seeds: Sequence[int],
    prompts: Sequence[str],
    batch_size: int = 64,
) -> float:
    """CLIP score (torchmetrics: ``max(100 · mean cos, 0)``) of the stored samples of
    ``seeds`` against ``prompts`` (one per seed)."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    path = str(Path(folder).expanduser())

    class _Features(CLIPModel):
        # transformers ≥ 5 returns model outputs from get_*_features; torchmetrics wants the
        # projected embeddings (pooler_output) as a tensor.
        def get_image_features(self, *args, **kwargs):
            return _tensor(super().get_image_features(*args, **kwargs))

        def get_text_features(self, *args, **kwargs):
            return _tensor(super().get_text_features(*args, **kwargs))

    def load():
        return _Features.from_pretrained(path), CLIPProcessor.from_pretrained(path)

    metric = CLIPScore(model_name_or_path=load)
    start = 0
    for images in store.iter_images(seeds, batch_size):
        n = len(images)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        metric.update(list(images), list(prompts[start : start + n]))
        start += n
    return float(metric.compute())
