"""Generation as a Lightning ``predict`` loop, sharded across devices and nodes with DDP.

Sample ``i`` is drawn from its own seed (:func:`dode.noise.noise_from_seeds`) and the seed list
is split across ranks with no padding (:func:`dode.noise.shard_seeds`), so no seed is drawn
twice and the images do not depend on the number of devices. Seeds already in the store are
skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import lightning as L
import torch
from torch import Tensor

from ..conditioning import bind_seeds
from ..denoisers import Denoiser
from ..files.images import to_uint8
from ..noise import noise_from_seeds, shard_seeds
from ..sampling import sample
from ..signals import stop_if_terminated
from ..solvers import get_solver
from .store import SampleStore

__all__ = ["SeedDataModule", "GenerateModule", "generate", "num_devices"]


class SeedDataModule(L.LightningDataModule):
    """This rank's share of the seeds (strided, no padding), minus those already done."""

    def __init__(self, seeds: list[int], store: SampleStore, batch_size: int) -> None:
        super().__init__()
        self.seeds = seeds
        self.store = store
        self.batch_size = batch_size
        self.todo: list[int] = []

    def predict_dataloader(self):
        rank, world = self.trainer.global_rank, self.trainer.world_size
        mine = shard_seeds(self.seeds, rank, world)
        done = self.store.done()
        self.todo = [s for s in mine if s not in done]
        return torch.utils.data.DataLoader(
            self.todo,
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=_as_long_tensor,
        )


def _as_long_tensor(batch: list[int]) -> Tensor:
    return torch.tensor(batch, dtype=torch.long)


class GenerateModule(L.LightningModule):
    """Holds the frozen denoiser; ``predict_step`` turns a batch of seeds into samples and hands
    them to the store (PNG encoding overlaps the next batch's sampling)."""

    def __init__(
        self,
        denoiser: Denoiser,
        solver_cfg: dict,
        sigmas: Tensor,
        lambdas: Tensor | None,
        sample_shape: Sequence[int],
        store: SampleStore,
        conditioning=None,
        guidance: tuple[float, float] = (1.0, 0.0),
        history: dict | None = None,
    ) -> None:
        super().__init__()
        #: an end-to-end solver's ``coefficients`` / ``shift`` (keywords of dode.sample)
        self.history = dict(history or {})
        self.conditioning = conditioning
        self.guidance = guidance
        self.denoiser = denoiser
        self.solver = get_solver(**solver_cfg)
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
        self.lambdas = None if lambdas is None else torch.as_tensor(lambdas, dtype=torch.float64)
        self.sample_shape = tuple(sample_shape)
        self.store = store
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
        stop_if_terminated(self._trainer)  # between batches: what is written stays whole
        seeds = [int(s) for s in batch.tolist()]
        noise = noise_from_seeds(seeds, self.sample_shape, torch.float32, self.device)
        den = bind_seeds(self.denoiser, self.conditioning, seeds, *self.guidance)
        x = sample(den, self.solver, noise, self.sigmas, self.lambdas, **self.history)
        decode = getattr(self.denoiser, "decode", None)
        if decode is not None:  # latent models: images from the VAE, once per image
            x = decode(x)
        images = to_uint8(x).cpu()
        self._drain(keep=2)
        self._pending.append(self._writer.submit(self.store.write, seeds, images))
        self.generated += len(seeds)

    def on_predict_end(self) -> None:
        self.finish()

    def finish(self) -> None:
        """Wait for the PNGs handed over so far (also after an interruption)."""
        if self._writer is not None:
            try:
                self._drain(keep=0)
            finally:
                self._writer.shutdown(wait=True)
                self._writer = None


def num_devices(devices: int | str | Sequence[int], accelerator: str) -> int:
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
    conditioning=None,
    guidance: tuple[float, float] = (1.0, 0.0),
    history: dict | None = None,
) -> dict:
    """Generate the samples of ``seeds`` into ``out`` (skipping those already there).

    ``history``: an end-to-end solver's ``coefficients`` and ``shift``
    (:meth:`dode.files.solver_file.FittedSolver.correction`), applied with ``lambdas``.

    Returns ``{"rank", "world_size", "generated", "seconds"}`` for this process; every rank
    returns after all ranks are done.
    """
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
    module = GenerateModule(
        denoiser, solver_cfg, sigmas, lambdas, shape, store, conditioning, guidance, history
    )
    data = SeedDataModule(seeds, store, batch_size)
    multi = num_nodes > 1 or num_devices(devices, accelerator) > 1
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
            module.finish()
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
