"""``python -m dode.evaluate``: generate N samples with a solver and score them (FID).

Samples come from a base solver (by name, with a σ-grid built for an NFE) or from a
fitted-solver file (the D-solver; ``--base`` evaluates its base solver on the same grid).
Generation runs as a Lightning ``predict`` loop, sharded across devices and nodes with DDP:

* sample ``i`` is drawn from its own seed (:func:`dode.noise.noise_from_seeds`), and the seed
  list is split across ranks with no padding (:func:`dode.noise.shard_seeds`), so no seed is
  drawn twice and the images do not depend on the number of devices;
* every sample is written as ``<out>/samples/<seed // 1000 * 1000>/<seed>.png`` the moment it
  is made (atomic rename), so an interrupted run resumes where it stopped: seeds whose PNG
  exists are skipped, none is generated twice;
* the output folder must be on a filesystem every node sees (rank 0 scores all samples).

Then rank 0 computes the Fréchet distance of the samples' features to reference statistics
(:mod:`dode.fid`: torch-fidelity's Inception for FID, or a stand-in extractor), appends one
JSON line to ``--log`` and logs the result (and a sample grid) to Weights & Biases, offline
unless ``WANDB_API_KEY`` is set. ``--save npz`` packs the PNGs into ``samples.npz``
(``arr_0``: uint8 ``[N, H, W, C]``, the layout guided-diffusion's evaluator reads, and
``seeds``) and removes the folder.

Examples::

    python -m dode.evaluate --model google/ddpm-cifar10-32 --solver ddim --nfe 10 \\
        --schedule time_uniform --num_samples 50000 --ref refs/cifar10-32x32.npz
    python -m dode.evaluate --solver_file runs/fit/ddim-nfe5.safetensors --devices 8 \\
        --ref refs/cifar10-32x32.npz
    python -m dode.evaluate -c configs/paper/eval/cifar10.yaml --solver_file F
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from . import __version__
from .artifact import FittedSolver, atomic_write, weights_hash
from .denoisers import Denoiser
from .dode import sample
from .images import image_grid, to_uint8
from .noise import noise_from_seeds, parse_seeds, shard_seeds
from .schedules import grid_for_model
from .solvers import Solver, get_solver

__all__ = [
    "EvalConfig",
    "SampleStore",
    "build_grid",
    "load_model",
    "to_uint8",
    "generate",
    "evaluate",
    "main",
]

Schedule = Literal["karras", "log_uniform", "time_uniform", "quadratic", "explicit"]


@dataclass
class EvalConfig:
    """Settings of one evaluation (every field is a ``--flag`` of ``python -m dode.evaluate``).

    Args:
        model: hub id or local folder of a diffusers UNet2DModel + DDPM scheduler; may be
            left out with ``solver_file`` when the file records the model id.
        solver: base solver name (``ddim``, ``ipndm``, ``dpm_solver``, ``deis``, ``heun``, ...).
        solver_options: extra constructor arguments of the solver (``{order: 3}``, ...).
        nfe: number of network evaluations; the grid gets the steps that give exactly this.
        schedule: σ-grid: ``karras``, ``log_uniform`` (log-SNR), ``time_uniform`` (DDIM's
            uniform timestep skip on the model's table), ``quadratic`` or ``explicit``; the
            same grids as ``python -m dode.train``.
        schedule_options: options of the schedule, e.g. ``{sigma_min: 0.002, sigma_max: 80}``
            or ``{spacing: trailing}``.
        solver_file: a fitted-solver file (``python -m dode.train`` writes one); overrides
            solver/schedule/nfe.
        base: with ``solver_file``: sample with its base solver (λ = 0) on the same grid.
        num_samples: how many samples (seeds ``seed_start`` ... ``seed_start + N − 1``).
        seed_start: the first seed.
        seeds: an explicit seed list such as ``"0-9999"`` (overrides num_samples/seed_start).
        batch_size: samples per device per batch.
        out: output folder (on a filesystem every node sees).
        save: what to keep: ``png`` (the per-seed folder), ``npz`` (``samples.npz``, folder
            removed), ``both``, or ``none`` (scores only).
        fid: compute the Fréchet distance after generating.
        ref: reference statistics: an ``.npz`` with ``mu``/``sigma``, a folder of real images
            (statistics cached), or a torch-fidelity dataset name (``cifar10-train``).
        features: ``inception`` (FID), ``pixels`` (a stand-in, reported as ``fd_pixels``), or
            ``package.module:factory``.
        inception_weights: path of torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
            (default: ``$DODE_INCEPTION_WEIGHTS``, then torch hub's cache).
        devices: devices per node (``auto``: every GPU, or 1 CPU process).
        num_nodes: number of nodes (DDP).
        accelerator: ``auto``, ``gpu``, ``cpu``.
        model_dtype: dtype of the network (integration stays float32).
        sigma_to_t: how σ maps to the model's timestep: ``interp`` or ``snap``.
        log: JSON-lines file the result is appended to (``null``: none).
        wandb: log the result and a sample grid to Weights & Biases.
        wandb_project: W&B project.
        name: a name for the run (W&B and the log).
        progress: show progress bars (with ETA).
    """

    model: str | None = None
    solver: str | None = None
    solver_options: dict | None = None
    nfe: int | None = None
    schedule: Schedule = "karras"
    schedule_options: dict | None = None
    solver_file: str | None = None
    base: bool = False
    num_samples: int = 50_000
    seed_start: int = 0
    seeds: str | None = None
    batch_size: int = 256
    out: str = "runs/evaluate"
    save: Literal["png", "npz", "both", "none"] = "png"
    fid: bool = True
    ref: str | None = None
    features: str = "inception"
    inception_weights: str | None = None
    devices: int | str = "auto"
    num_nodes: int = 1
    accelerator: str = "auto"
    model_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    sigma_to_t: Literal["interp", "snap"] = "interp"
    log: str | None = "runs/evaluate.jsonl"
    wandb: bool = True
    wandb_project: str = "dode"
    name: str | None = None
    progress: bool = True


# ---- model and grid -------------------------------------------------------------------------


def load_model(
    model: str | None,
    sigma_to_t: Literal["interp", "snap"] = "interp",
    model_dtype: str = "float32",
) -> Denoiser:
    """Load a model (hub id, diffusers folder, or a name ``dode.loading`` knows) as a denoiser.

    A hub id that cannot be fetched (offline, no cache) raises ``ValueError`` naming the
    ``huggingface-cli download`` command and the folder to pass instead.
    """
    if not model:
        raise ValueError(
            "no model given; pass --model (a hub id such as google/ddpm-cifar10-32 or a folder "
            "written by save_pretrained), or a --solver_file that records its model."
        )
    try:
        from .loading import load_denoiser
    except ImportError:  # pragma: no cover - older checkouts without dode.loading
        from .denoisers import DiffusersDenoiser

        return DiffusersDenoiser.from_pretrained(
            model, sigma_to_t=sigma_to_t, torch_dtype=getattr(torch, model_dtype)
        )
    return load_denoiser(model, sigma_to_t=sigma_to_t, dtype=model_dtype)


def build_grid(
    denoiser: Denoiser,
    solver: Solver | str,
    nfe: int,
    schedule: str = "karras",
    options: dict | None = None,
) -> Tensor:
    """The σ-grid on which ``solver`` makes exactly ``nfe`` model calls.

    The same grids as ``python -m dode.train`` builds (:func:`dode.schedules.grid_for_model`):
    ``karras`` and ``log_uniform`` span ``[max(0.002, σ_min), min(80, σ_max)]`` of the model
    unless ``options`` say otherwise (``sigma_min``, ``sigma_max``, ``rho``); ``time_uniform``
    and ``quadratic`` pick timesteps of the model's discrete table (``spacing``, ...).
    """
    solver = get_solver(solver)
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}.")
    return grid_for_model(denoiser, schedule, solver.steps_for_nfe(nfe), options)


# ---- the sample store (resumable) -----------------------------------------------------------


class SampleStore:
    """Per-seed PNG files under ``root/samples`` (written atomically) and the packed npz."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.dir = self.root / "samples"
        self.npz = self.root / "samples.npz"

    def path(self, seed: int) -> Path:
        return self.dir / f"{seed // 1000 * 1000:06d}" / f"{seed:06d}.png"

    def done(self) -> set[int]:
        """Seeds whose sample is already stored (PNG or packed npz)."""
        seeds: set[int] = set()
        if self.dir.is_dir():
            seeds.update(int(p.stem) for p in self.dir.glob("*/*.png") if p.stem.isdigit())
        if self.npz.is_file():
            with np.load(self.npz) as z:
                seeds.update(int(s) for s in z["seeds"])
        return seeds

    def write(self, seeds: Sequence[int], images: Tensor) -> None:
        """Write uint8 images ``[B, C, H, W]``, one PNG per seed."""
        from PIL import Image

        arr = images.permute(0, 2, 3, 1).cpu().numpy()
        for seed, a in zip(seeds, arr):
            p = self.path(int(seed))
            if p.exists():  # seeds already done are never scheduled: this would be a bug
                raise RuntimeError(f"seed {seed} was generated twice ({p} exists).")
            p.parent.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
            tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
            im.save(tmp, format="PNG", compress_level=1)
            os.replace(tmp, p)

    def iter_images(self, seeds: Sequence[int], batch_size: int = 256) -> Iterator[Tensor]:
        """uint8 batches ``[B, C, H, W]`` of the given seeds, in order."""
        packed: dict[int, int] = {}
        arr = None
        if self.npz.is_file():
            z = np.load(self.npz, mmap_mode="r")
            arr = z["arr_0"]
            packed = {int(s): i for i, s in enumerate(z["seeds"])}
        from .fid import _read_image

        for i in range(0, len(seeds), batch_size):
            chunk = seeds[i : i + batch_size]
            imgs = [
                np.asarray(arr[packed[s]]) if s in packed else _read_image(self.path(s))
                for s in chunk
            ]
            yield torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()

    def pack(self, seeds: Sequence[int], batch_size: int = 1024) -> Path:
        """Stream the samples of ``seeds`` into ``samples.npz`` without holding them in memory."""
        first = next(self.iter_images(seeds[:1]))
        _, c, h, w = first.shape
        shape = (len(seeds), h, w, c)

        def write(tmp: str) -> None:
            with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
                with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array_header_2_0(
                        f, {"descr": "|u1", "fortran_order": False, "shape": shape}
                    )
                    for batch in self.iter_images(seeds, batch_size):
                        f.write(batch.permute(0, 2, 3, 1).contiguous().numpy().tobytes())
                with zf.open("seeds.npy", "w") as f:
                    np.lib.format.write_array(f, np.asarray(seeds, dtype=np.int64))

        return atomic_write(self.npz, write)

    def remove_pngs(self) -> None:
        if self.dir.is_dir():
            shutil.rmtree(self.dir)


# ---- Lightning generation -------------------------------------------------------------------


def _lightning():
    import lightning as L

    return L


class _SeedData:
    """Factory for the predict DataModule (built lazily so importing this file stays cheap)."""

    @staticmethod
    def make(seeds: list[int], store: SampleStore, batch_size: int):
        L = _lightning()

        class SeedDataModule(L.LightningDataModule):
            """This rank's share of the seeds (strided, no padding), minus those already done."""

            def __init__(self) -> None:
                super().__init__()
                self.todo: list[int] = []

            def predict_dataloader(self):
                rank, world = self.trainer.global_rank, self.trainer.world_size
                mine = shard_seeds(seeds, rank, world)
                done = store.done()
                self.todo = [s for s in mine if s not in done]
                return torch.utils.data.DataLoader(
                    self.todo,
                    batch_size=batch_size,
                    shuffle=False,
                    collate_fn=lambda b: torch.tensor(b, dtype=torch.long),
                )

        return SeedDataModule()


def _make_module(denoiser, solver_cfg, sigmas, lambdas, sample_shape, store):
    L = _lightning()

    class GenerateModule(L.LightningModule):
        """Holds the frozen denoiser; ``predict_step`` turns a batch of seeds into samples."""

        def __init__(self) -> None:
            super().__init__()
            self.denoiser = denoiser
            self.solver = get_solver(**solver_cfg)
            self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
            self.lambdas = (
                None if lambdas is None else torch.as_tensor(lambdas, dtype=torch.float64)
            )
            self.sample_shape = tuple(sample_shape)
            self.generated = 0
            self._writer: ThreadPoolExecutor | None = None
            self._pending: list[Future] = []

        def on_predict_start(self) -> None:
            # PNG encoding overlaps the next batch's sampling (zlib releases the GIL).
            self._writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dode-png")

        def _drain(self, keep: int) -> None:
            while len(self._pending) > keep or (self._pending and self._pending[0].done()):
                self._pending.pop(0).result()  # re-raises a failed write

        def predict_step(self, batch: Tensor, batch_idx: int = 0) -> None:
            seeds = [int(s) for s in batch.tolist()]
            noise = noise_from_seeds(seeds, self.sample_shape, torch.float32, self.device)
            x = sample(self.denoiser, self.solver, noise, self.sigmas, self.lambdas)
            images = to_uint8(x).cpu()
            self._drain(keep=2)
            self._pending.append(self._writer.submit(store.write, seeds, images))
            self.generated += len(seeds)

        def on_predict_end(self) -> None:
            self._finish()

        def _finish(self) -> None:
            if self._writer is not None:
                try:
                    self._drain(keep=0)
                finally:
                    self._writer.shutdown(wait=True)
                    self._writer = None

    return GenerateModule()


def _num_devices(devices: int | str | Sequence[int], accelerator: str) -> int:
    """How many devices per node a Lightning ``devices`` value asks for."""
    gpus = torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0
    if isinstance(devices, str):
        d = devices.strip()
        if d == "auto":
            return max(gpus, 1)
        if "," in d:
            return len([x for x in d.split(",") if x.strip()])
        if d.lstrip("-").isdigit():
            devices = int(d)
        else:
            raise ValueError(f"devices must be 'auto', a count or a list such as '0,1'; got {d!r}.")
    if isinstance(devices, int):
        return max(gpus, 1) if devices == -1 else devices
    return len(devices)


def _score_device(accelerator: str) -> torch.device:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def generate(
    denoiser: Denoiser,
    solver_cfg: dict,
    sigmas: Tensor,
    lambdas: Tensor | None,
    seeds: Sequence[int],
    out: str | os.PathLike,
    *,
    batch_size: int = 256,
    devices: int | str = "auto",
    num_nodes: int = 1,
    accelerator: str = "auto",
    progress: bool = True,
) -> dict:
    """Generate the samples of ``seeds`` into ``out`` (skipping those already there).

    Returns ``{"rank", "world_size", "generated", "seconds"}`` for this process; every rank
    returns after all ranks are done.
    """
    L = _lightning()
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError("the seed list contains duplicates; every sample needs its own seed.")
    shape = denoiser.sample_shape
    if shape is None:
        raise ValueError("the model does not declare its sample shape (sample_size/channels).")
    store = SampleStore(out)
    if set(seeds) <= store.done():  # nothing left to do (a finished run, resumed)
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
        world = int(os.environ.get("WORLD_SIZE", 1))
        return {"rank": rank, "world_size": world, "is_global_zero": rank == 0,
                "generated": 0, "seconds": 0.0, "device": "cpu"}  # fmt: skip
    module = _make_module(denoiser, solver_cfg, sigmas, lambdas, shape, store)
    data = _SeedData.make(seeds, store, batch_size)
    multi = num_nodes > 1 or _num_devices(devices, accelerator) > 1
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp" if multi else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        use_distributed_sampler=False,
    )
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*predict returned None.*")
            trainer.predict(module, datamodule=data, return_predictions=False)
    except BaseException:
        try:  # an interrupted run still completes the PNGs it handed over
            module._finish()
        except Exception:  # noqa: BLE001 - the original error is the one to report
            pass
        raise
    trainer.strategy.barrier("dode.evaluate.generated")
    return {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "is_global_zero": trainer.is_global_zero,
        "generated": module.generated,
        "seconds": time.perf_counter() - t0,
        "device": str(module.device),
    }


# ---- evaluation -----------------------------------------------------------------------------


def _seed_list(cfg: EvalConfig) -> list[int]:
    if cfg.seeds is not None:
        seeds = parse_seeds(cfg.seeds)
    else:
        if cfg.num_samples < 1 or cfg.seed_start < 0:
            raise ValueError("num_samples must be >= 1 and seed_start >= 0.")
        seeds = list(range(cfg.seed_start, cfg.seed_start + cfg.num_samples))
    if not seeds:
        raise ValueError("the seed list is empty.")
    return seeds


def _seed_digest(seeds: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(seeds, dtype=np.int64).tobytes()).hexdigest()[:12]


def _seed_spec(seeds: Sequence[int]) -> str:
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return f"{len(seeds)} seeds ({_seed_digest(seeds)})"


def _resolve_solver(cfg: EvalConfig, denoiser: Denoiser | None):
    """(denoiser, solver config, σ grid, λ or None, label)."""
    if cfg.solver_file:
        fitted = FittedSolver.load(cfg.solver_file)
        meta = fitted.model or {}
        model = cfg.model or meta.get("id") or meta.get("model_id") or meta.get("name")
        if denoiser is None:
            denoiser = load_model(model, cfg.sigma_to_t, cfg.model_dtype)
        recorded = meta.get("weights_hash") or meta.get("weights_sha256")
        if recorded and recorded != weights_hash(denoiser):
            warnings.warn(
                f"{cfg.solver_file} was fitted on weights with hash {recorded[:12]}…, not those of "
                f"{model!r}; its λ belong to that other model.",
                stacklevel=2,
            )
        lambdas = None if cfg.base else fitted.lambdas
        solver = fitted.build_solver()
        label = ("" if cfg.base else "D-") + solver.describe()
        return denoiser, fitted.solver, fitted.sigmas, lambdas, label, model
    if not cfg.solver or cfg.nfe is None:
        raise ValueError(
            "say what to sample with: --solver NAME --nfe N (a base solver), or --solver_file "
            "FILE (a fitted D-solver)."
        )
    if denoiser is None:
        denoiser = load_model(cfg.model, cfg.sigma_to_t, cfg.model_dtype)
    solver = get_solver(cfg.solver, **(cfg.solver_options or {}))
    sigmas = build_grid(denoiser, solver, cfg.nfe, cfg.schedule, cfg.schedule_options)
    return denoiser, solver.config(), sigmas, None, solver.describe(), cfg.model


def _wandb_log(cfg: EvalConfig, record: dict, store: SampleStore, seeds: list[int]) -> None:
    import wandb

    from .lit.tracking import wandb_mode

    mode = wandb_mode("auto")
    run = wandb.init(
        project=cfg.wandb_project,
        name=cfg.name,
        job_type="evaluate",
        dir=str(Path(cfg.out)),
        mode=mode,
        config={k: v for k, v in record.items() if k not in ("value",)},
    )
    try:
        grid = next(store.iter_images(seeds[:64], 64))
        img = image_grid(grid.permute(0, 2, 3, 1).numpy(), per_row=8, scale=1)
        run.log({"samples": wandb.Image(img)}, commit=False)
    except (StopIteration, FileNotFoundError, KeyError):
        pass
    if record.get("metric"):
        run.log({f"eval/{record['metric']}": record["value"]}, commit=False)
    run.log(
        {
            "eval/images_per_second": record["images_per_second"],
            "eval/num_samples": record["num_samples"],
        }
    )
    run.finish()


def _append_jsonl(path: str | os.PathLike, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _claim_out_dir(out: Path, model_id, solver_cfg, sigmas, lambdas, shape) -> None:
    """Record what the samples in ``out`` are made with; refuse to mix in other samples."""
    ident = {
        "model": str(model_id),
        "solver": solver_cfg,
        "sigmas": [float(s) for s in sigmas],
        "lambdas": None if lambdas is None else [float(v) for v in lambdas],
        "sample_shape": list(shape or ()),
    }
    path = out / "run.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != ident:
            diff = sorted(k for k in ident if old.get(k) != ident[k])
            raise ValueError(
                f"{str(out)!r} already holds samples made with a different {', '.join(diff)}; "
                "resume only with the same settings, or use another --out (or delete it)."
            )
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(ident, indent=1) + "\n"))


def evaluate(cfg: EvalConfig, denoiser: Denoiser | None = None) -> dict | None:
    """Generate, score, log. Returns the result record on rank 0 (``None`` on other ranks).

    Inputs needed for scoring (Inception weights, reference statistics) are checked before
    any sample is generated.
    """
    from . import fid as fidlib

    seeds = _seed_list(cfg)
    denoiser, solver_cfg, sigmas, lambdas, label, model_id = _resolve_solver(cfg, denoiser)
    extractor = None
    if cfg.fid:
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
    out = Path(cfg.out)
    _claim_out_dir(out, model_id, solver_cfg, sigmas, lambdas, denoiser.sample_shape)
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
    if extractor is not None:
        t0 = time.perf_counter()
        device = _score_device(cfg.accelerator)
        mu_r, sig_r, ref_desc = fidlib.reference_stats(cfg.ref, extractor, device=device)
        name = str(extractor.name)
        stats_file = out / f"stats-{name}-{len(seeds)}-{_seed_digest(seeds)}.npz"
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
        record.update(
            metric=fidlib.metric_name(extractor),
            value=value,
            features=name,
            ref=ref_desc,
            seconds_score=round(time.perf_counter() - t0, 3),
        )
    if cfg.save in ("npz", "both"):
        store.pack(seeds)
        record["samples_npz"] = str(store.npz)
    if cfg.log:
        _append_jsonl(cfg.log, record)
    if cfg.wandb:  # before the samples may be removed: it logs a grid of them
        _wandb_log(cfg, record, store, seeds)
    if cfg.save in ("npz", "none"):
        store.remove_pngs()
    if cfg.save == "none" and store.npz.is_file():
        store.npz.unlink()
    return record


def _parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(
        prog="python -m dode.evaluate",
        description="Generate samples with a (fitted) solver and compute FID.",
        epilog=__doc__.split("Examples::")[-1],
    )
    p.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config (repeatable)")
    p.add_class_arguments(EvalConfig, as_group=False)
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: one clear ``error: ...`` line and exit code 2 on bad input."""
    parser = _parser()
    ns = parser.parse_args(argv).as_dict()
    try:
        cfg = EvalConfig(**{k: v for k, v in ns.items() if k in EvalConfig.__dataclass_fields__})
        record = evaluate(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if record is not None:
        value = record["value"]
        shown = "" if value is None else f" {record['metric']} = {value:.4f}"
        rate = record["images_per_second"]
        print(
            f"{record['label']} NFE {record['nfe']}: {record['num_samples']} samples"
            f"{shown}" + (f" ({rate:.1f} img/s)" if rate else "")
        )
        print(json.dumps({k: record[k] for k in ("metric", "value", "num_samples", "out")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
