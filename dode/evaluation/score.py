"""Scoring: the Fréchet distance of the stored samples' features to reference statistics
(:mod:`dode.evaluation.fid`: torch-fidelity's Inception for FID, or a stand-in extractor)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import fid as fidlib
from .config import EvalConfig
from .store import SampleStore

__all__ = ["check_reference", "score", "score_device", "seed_digest"]


def check_reference(cfg: EvalConfig):
    """The feature extractor for ``cfg`` (``None`` without ``cfg.fid``), after checking that
    the reference statistics can be had: called before any sample is generated."""
    if not cfg.fid:
        return None
    extractor = fidlib.get_feature_extractor(cfg.features, cfg.inception_weights)
    ref = cfg.ref
    if ref is None:
        raise ValueError(
            "--fid needs --ref: an .npz of reference mu/sigma, a folder of real images or a "
            "torch-fidelity dataset name (or pass --fid false to only generate)."
        )
    if str(ref).endswith(".npz"):
        fidlib.load_stats(ref, features=str(extractor.name))
    elif not Path(ref).is_dir():
        from torch_fidelity.registry import DATASETS_REGISTRY

        if ref not in DATASETS_REGISTRY:
            fidlib.reference_stats(ref, extractor)  # raises the explanatory error
    return extractor


def score(cfg: EvalConfig, extractor, store: SampleStore, seeds: Sequence[int]) -> dict:
    """Score the samples of ``seeds``: the record's ``metric``, ``value``, ``features``, ``ref``
    and ``seconds_score``. The samples' statistics are cached in the output folder."""
    t0 = time.perf_counter()
    device = score_device(cfg.accelerator)
    mu_r, sig_r, ref_desc = fidlib.reference_stats(cfg.ref, extractor, device=device)
    name = str(extractor.name)
    stats_file = store.root / f"stats-{name}-{len(seeds)}-{seed_digest(seeds)}.npz"
    if stats_file.is_file():
        mu, sig = fidlib.load_stats(stats_file, features=name)
    else:
        mu, sig, _ = fidlib.stats_of_images(
            store.iter_images(seeds, cfg.batch_size),
            extractor,
            device,
            progress=cfg.progress,
            total=len(seeds),
        )
        fidlib.save_stats(stats_file, mu, sig, name, len(seeds))
    value = fidlib.fid_from_stats(mu, sig, mu_r, sig_r)
    return {
        "metric": fidlib.metric_name(extractor),
        "value": value,
        "features": name,
        "ref": ref_desc,
        "seconds_score": round(time.perf_counter() - t0, 3),
    }


def score_device(accelerator: str) -> torch.device:
    """The device to score on: the current GPU when the accelerator allows one, else the CPU."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def seed_digest(seeds: Sequence[int]) -> str:
    """A short digest of a seed list (names cached statistics)."""
    return hashlib.sha256(np.asarray(seeds, dtype=np.int64).tobytes()).hexdigest()[:12]
