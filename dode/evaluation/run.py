"""``evaluate``: generate the samples of a seed list, score them, log the result."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..artifact import FittedSolver
from ..conditioning import conditioning_for_solver
from ..denoisers import Denoiser
from ..solvers import get_solver
from .clip import check_clip, clip_score
from .config import EvalConfig, resolve_solver, seed_list
from .report import append_jsonl, wandb_log
from .score import check_reference, score, seed_digest
from .store import SampleStore, claim_out_dir

__all__ = ["evaluate"]


def _seed_spec(seeds: Sequence[int]) -> str:
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return f"{len(seeds)} seeds ({seed_digest(seeds)})"


def evaluate(cfg: EvalConfig, denoiser: Denoiser | None = None) -> dict | None:
    """Generate, score, log. Returns the result record on rank 0 (``None`` on other ranks).

    Inputs needed for scoring (Inception weights, reference statistics) are checked before
    any sample is generated.
    """
    from .predict import generate

    seeds = seed_list(cfg)
    denoiser, solver_cfg, sigmas, lambdas, label, model_id = resolve_solver(cfg, denoiser)
    fitted = FittedSolver.load(cfg.solver_file) if cfg.solver_file else None
    meta = (fitted.model or {}) if fitted is not None else {}
    # an end-to-end solver's history coefficients and model-time shift (none with --base)
    history = (
        {k: v for k, v in fitted.correction().items() if k != "lambdas"}
        if fitted is not None and lambdas is not None
        else {}
    )
    rule, w, phi = conditioning_for_solver(
        meta, denoiser, prompt=cfg.prompt, prompts_file=cfg.prompts_file,
        class_labels=cfg.class_labels, negative_prompt=cfg.negative_prompt,
        guidance_scale=cfg.guidance_scale, guidance_rescale=cfg.guidance_rescale,
    )  # fmt: skip
    if cfg.clip_model is not None:
        check_clip(cfg.clip_model, rule)
    extractor = check_reference(cfg)
    out = Path(cfg.out)
    listed = {k: v.tolist() for k, v in history.items()}
    claim_out_dir(
        out, model_id, solver_cfg, sigmas, lambdas, denoiser.sample_shape, extra=listed or None
    )
    todo = len(set(seeds) - SampleStore(out).done())
    info = generate(
        denoiser,
        solver_cfg,
        sigmas,
        lambdas,
        seeds,
        out,
        batch_size=cfg.batch_size,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        accelerator=cfg.accelerator,
        progress=cfg.progress,
        conditioning=rule,
        guidance=(w, phi),
        history=history,
    )
    if not info["is_global_zero"]:
        return None
    store = SampleStore(out)
    missing = [s for s in seeds if s not in store.done()]
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {len(seeds)} samples are missing after generation (first: seed "
            f"{missing[0]}); is --out on a filesystem every node shares?"
        )
    gen_rate = todo / max(info["seconds"], 1e-9)
    solver = get_solver(**solver_cfg)
    record: dict = {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "name": cfg.name,
        "model": model_id,
        "solver": solver_cfg,
        "label": label,
        "dode": lambdas is not None,
        "nfe": solver.nfe(len(sigmas) - 1),
        "sigmas": [float(s) for s in sigmas],
        "lambdas": None if lambdas is None else [float(v) for v in lambdas],
        **listed,
        "solver_file": cfg.solver_file,
        "num_samples": len(seeds),
        "seeds": _seed_spec(seeds),
        "generated_now": todo,
        "seconds_generate": round(info["seconds"], 3),
        "images_per_second": round(gen_rate, 3) if todo else None,
        "world_size": info["world_size"],
        "device": info["device"],
        "out": str(out),
        "version": __version__,
        "metric": None,
        "value": None,
    }
    if rule is not None:
        record["guidance_scale"] = w
        record["guidance_rescale"] = phi
        record["conditioning"] = rule.describe()
    if cfg.solver_file:  # resolve_solver refused a mismatch unless told to ignore it
        record["model_check"] = "ignored" if cfg.ignore_model_hash else "match"
    if extractor is not None:
        record.update(score(cfg, extractor, store, seeds))
    if cfg.clip_model is not None:
        prompts = rule.for_seeds(seeds)
        record["clip_score"] = clip_score(cfg.clip_model, store, seeds, prompts)
    if cfg.save in ("npz", "both"):
        store.pack(seeds)
        record["samples_npz"] = str(store.npz)
    if cfg.log:
        append_jsonl(cfg.log, record)
    if cfg.wandb:  # before the samples may be removed: it logs a grid of them
        wandb_log(cfg, record, store, seeds)
    if cfg.save in ("npz", "none"):
        store.remove_pngs()
    if cfg.save == "none" and store.npz.is_file():
        store.npz.unlink()
    return record
