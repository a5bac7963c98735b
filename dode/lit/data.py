"""``NoiseDataModule``: noise batches from per-sample seeds, with their teacher states.

* Noise is a function of each sample's seed only (:func:`dode.noise.noise_from_seeds`), so the
  same seeds give the same samples for any batch size and any number of processes.
* Seeds are sharded over ranks with :func:`dode.noise.shard_seeds` (strided, no padding): no seed
  is served twice. Each rank splits its share into the same number of batches (sizes differ
  by at most one sample), so collective operations line up across ranks. Use
  ``Trainer(use_distributed_sampler=False)`` (``python -m dode.train`` does).
* Conditioning (class labels, prompts) is a function of the seed too
  (:class:`dode.conditioning.SeedConditioning`): ``class_labels``, ``prompts`` (a file, one
  prompt per line, seed ``s`` → line ``s % n``) and ``negative_prompt``. Each batch then carries
  ``cond`` (labels ``[B]`` or a list of prompts), which the module binds into its denoiser.
* Teacher states at every σ the student visits are computed once per seed and cached on disk
  (:class:`TeacherCache`), keyed by everything they depend on (model id and weights hash,
  dtypes, solver, σ grid, teacher factor/solver/refinement); each rank computes only the seeds
  it serves, files are written atomically, and later runs (any batch size, any world size)
  reuse them.
* ``fit_mode: end-to-end``: the converged references (final samples) of the fit and selection
  seeds come from a :class:`ReferenceSource` (:meth:`NoiseDataModule.attach_references`),
  computed in batches of a set size, each rank its strided share, cached in the same
  :class:`TeacherCache` under the reference problem's key and gathered so every rank holds them
  (:meth:`NoiseDataModule.references`). The fit then streams mini-batches of fit seeds in the
  fit's order (:func:`dode.learned_solver.minibatch_order`), each rank its share of every global
  mini-batch, with their references; validation serves each rank's share of the selection seeds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..conditioning import SeedConditioning
from ..files.cache import cache_root
from ..files.writes import atomic_write
from ..noise import noise_from_seeds, shard_seeds
from ..signals import stop_if_terminated
from .specs import DataSpec

__all__ = [
    "NoiseDataModule",
    "ReferenceSource",
    "gather_rows",
    "TeacherCache",
    "TeacherSource",
    "problem_digest",
    "rank_batches",
    "split_even",
    "default_cache_dir",
]


def problem_digest(obj: Any) -> str:
    """SHA-256 (hex) of ``obj`` as canonical JSON: the cache key of a problem or a seed list."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TeacherSource:
    """What :class:`NoiseDataModule` needs to know of the problem (handed over with
    :meth:`NoiseDataModule.attach`; :meth:`dode.lit.DODEModule.teacher_source` makes one).

    Attributes:
        problem: everything the teacher states depend on (JSON-able; keys the cache).
        sample_shape: the shape of one sample.
        dtype: the integration dtype of noise and states.
        compute: standard-normal noise ``[B, ...]`` → teacher states ``[B, M, ...]`` (CPU).
        description: how the teacher is made, for the log line.
        condition: seeds → their conditioning (labels ``[B]`` or prompts), for a conditional
            problem; ``compute`` then takes it as its second argument.
    """

    problem: dict
    sample_shape: tuple[int, ...]
    dtype: torch.dtype
    compute: Callable[[Tensor], Tensor]
    description: str = "teacher"
    condition: Callable[[list[int]], Any] | None = None

    def key(self) -> str:
        """The cache key: 24 hex digits of :func:`problem_digest` of ``problem``."""
        return problem_digest(self.problem)[:24]


@dataclass(frozen=True)
class ReferenceSource:
    """The converged references of an end-to-end fit (handed over with
    :meth:`NoiseDataModule.attach_references`; :meth:`dode.lit.DODEModule.reference_source`
    makes one).

    Attributes:
        problem: everything a reference depends on (model and weights, conditioning and
            guidance, the reference's solver and NFE, sample shape): keys the cache.
        sample_shape: the shape of one sample.
        dtype: the integration dtype of noise and references.
        compute: standard-normal noise ``[B, ...]`` (and, for a conditional problem, its
            conditioning) → the final samples ``[B, ...]`` (CPU).
        batch_size: seeds per reference batch (never all seeds at once).
        description: how the references are made, for the log line.
        condition: seeds → their conditioning, for a conditional problem.
    """

    problem: dict
    sample_shape: tuple[int, ...]
    dtype: torch.dtype
    compute: Callable[..., Tensor]
    batch_size: int = 64
    description: str = "reference"
    condition: Callable[[list[int]], Any] | None = None


@dataclass(frozen=True)
class FitPlan:
    """How the end-to-end fit draws its mini-batches: ``batch_size`` fit seeds per micro-batch
    (``None``: all), in the order of :func:`dode.learned_solver.minibatch_order` from ``seed``;
    ``per_epoch`` micro-batches per Lightning epoch; ``select_batch_size`` selection seeds per
    validation batch."""

    batch_size: int | None
    seed: int
    per_epoch: int
    select_batch_size: int | None


def gather_rows(trainer, rows: Tensor, positions: Sequence[int], total: int) -> Tensor:
    """Every rank's ``rows`` (``[n_r, ...]``, at ``positions`` of a list of ``total``) placed
    in order: ``[total, ...]`` on every rank (CPU). Ranks may hold different numbers of rows."""
    rows = rows.detach().cpu()
    world = trainer.world_size if trainer is not None else 1
    out = torch.empty((total, *rows.shape[1:]), dtype=rows.dtype)
    if world == 1:
        out[list(positions)] = rows
        return out
    m = math.ceil(total / world)
    pad = torch.zeros((m, *rows.shape[1:]), dtype=rows.dtype)
    pad[: len(rows)] = rows
    pos = torch.full((m,), -1, dtype=torch.long)
    pos[: len(rows)] = torch.as_tensor(list(positions), dtype=torch.long)
    dev = trainer.strategy.root_device
    every = trainer.strategy.all_gather(pad.to(dev)).cpu().reshape(world * m, *rows.shape[1:])
    where = trainer.strategy.all_gather(pos.to(dev)).cpu().reshape(-1)
    keep = where >= 0
    out[where[keep]] = every[keep]
    return out


def default_cache_dir() -> Path:
    """``$DODE_CACHE`` or ``~/.cache/dode``, plus ``/teacher``."""
    return cache_root("teacher")


def split_even(seeds: Sequence[int], num_batches: int) -> list[list[int]]:
    """Split into ``num_batches`` contiguous parts whose sizes differ by at most one."""
    n = len(seeds)
    out, start = [], 0
    for i in range(num_batches):
        size = n // num_batches + (1 if i < n % num_batches else 0)
        out.append(list(seeds[start : start + size]))
        start += size
    return out


def rank_batches(
    seeds: Sequence[int], rank: int, world_size: int, batch_size: int, what: str = "seeds"
) -> list[list[int]]:
    """One rank's seeds (strided shard, no padding) split into batches.

    Every rank gets the same number of batches, ``ceil(ceil(N / W) / batch_size)``, so
    per-batch collectives (DDP gradient sync) line up; sizes differ by at most one within a
    rank. Raises ``ValueError`` if some rank would get an empty batch.
    """
    n = len(seeds)
    if n < world_size:
        raise ValueError(
            f"{what} has {n} seeds for {world_size} processes; give at least one per process."
        )
    num = math.ceil(math.ceil(n / world_size) / batch_size)
    mine = shard_seeds(seeds, rank, world_size)
    if len(mine) < num:
        raise ValueError(
            f"{n} {what} over {world_size} processes with batch_size {batch_size} leaves a "
            "process an empty batch; use more seeds or a larger batch_size."
        )
    return split_even(mine, num)


def _notice(msg: str) -> None:
    """One line on stderr, on whichever rank it concerns."""
    print(f"dode: {msg}", file=sys.stderr, flush=True)


def _checksum(seeds: Tensor, states: Tensor) -> str:
    """sha256 of a cache entry: seeds and states (dtype, shape and bytes)."""
    h = hashlib.sha256()
    for t in (seeds, states):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TeacherCache:
    """Teacher states per seed on disk: one safetensors file per computed chunk.

    Directory: ``root/<problem key>/``, with ``problem.json`` (what the key stands for) and
    files holding ``seeds`` [n] and ``states`` [n, M, ...] and, in their metadata, the sha256
    of both. Any file with a seed is used, so the cache works across batch sizes and world
    sizes. ``root=None`` keeps nothing.

    Entries are verified when read: a file whose checksum does not match (overwritten bytes),
    that has none (written before checksums) or whose states are not finite is not used: a
    one-line notice names it, it is deleted and its states are recomputed (a cache only costs
    time). A cache folder that cannot be written turns the cache off for the run, with a
    notice; so does a model whose weights nothing identifies (the problem's
    ``model.weights_hash`` is ``None``), since two such models would share entries.
    """

    def __init__(self, root: str | os.PathLike | None, problem: dict) -> None:
        self.problem = problem
        self.key = problem_digest(problem)[:24]
        model = problem.get("model") if isinstance(problem, dict) else None
        if (
            root is not None
            and isinstance(model, dict)
            and "weights_hash" in model
            and model["weights_hash"] is None
        ):
            _notice(
                f"nothing identifies the weights of model {model.get('id')!r} (no tensors "
                "reachable from it, no factory name), so its teacher states are not cached."
            )
            root = None
        self.dir = Path(root) / self.key if root is not None else None
        self.index: dict[int, tuple[Path, int]] = {}
        if self.dir is not None and self.dir.is_dir():
            self._scan()

    def _scan(self) -> None:
        from safetensors import safe_open

        for f in sorted(self.dir.glob("*.safetensors")):
            try:
                with safe_open(str(f), framework="pt") as h:
                    seeds = h.get_tensor("seeds").tolist()
            except Exception:  # noqa: BLE001 - an unreadable file is ignored (recomputed)
                continue
            for row, s in enumerate(seeds):
                self.index.setdefault(int(s), (f, row))

    def _load(self, f: Path) -> Tensor | None:
        """The states of cache file ``f`` if it verifies, else ``None`` (after a notice; the
        file is deleted and its seeds dropped from the index)."""
        from safetensors import safe_open

        problem = None
        try:
            with safe_open(str(f), framework="pt") as h:
                want = (h.metadata() or {}).get("sha256")
                seeds, states = h.get_tensor("seeds"), h.get_tensor("states")
            if not want:
                problem = "it has no checksum (written by an older dode)"
            elif _checksum(seeds, states) != want:
                problem = "its checksum does not match (the file was changed or damaged)"
            elif states.is_floating_point() and not torch.isfinite(states).all():
                problem = "its states hold NaN or inf"
        except Exception as e:  # noqa: BLE001 - any read failure is a damaged file
            problem = f"it cannot be read ({e})"
        if problem is None:
            return states
        _notice(f"teacher cache file {str(f)!r} is not used: {problem}; recomputing its states.")
        for s in [s for s, (g, _) in self.index.items() if g == f]:
            del self.index[s]
        try:
            f.unlink()
        except OSError:
            pass
        return None

    def get(self, seeds: Sequence[int]) -> dict[int, Tensor]:
        """The cached states of those seeds that have them (verified; see the class)."""
        by_file: dict[Path, list[tuple[int, int]]] = {}
        for s in seeds:
            if s in self.index:
                f, row = self.index[s]
                by_file.setdefault(f, []).append((s, row))
        out: dict[int, Tensor] = {}
        for f, items in by_file.items():
            states = self._load(f)
            if states is None:
                continue
            for s, row in items:
                out[s] = states[row]
        return out

    def put(self, seeds: Sequence[int], states: Tensor) -> None:
        """Store states ``[len(seeds), M, ...]`` (atomic write, with their checksum); states
        that are not finite are not stored."""
        if self.dir is None or not len(seeds):
            return
        if states.is_floating_point() and not torch.isfinite(states).all():
            return
        from safetensors.torch import save_file

        path = self.dir / f"{problem_digest(list(map(int, seeds)))[:20]}.safetensors"
        tensors = {
            "seeds": torch.tensor(list(seeds), dtype=torch.long),
            "states": states.detach().cpu().contiguous(),
        }
        meta = {"sha256": _checksum(tensors["seeds"], tensors["states"])}
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta_path = self.dir / "problem.json"
            if not meta_path.exists():
                text = json.dumps(self.problem, indent=1, sort_keys=True)
                atomic_write(meta_path, lambda tmp: Path(tmp).write_text(text))
            atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        except Exception as e:  # noqa: BLE001 - OSError, or safetensors' error on a full disk
            why = getattr(e, "strerror", None) or str(e) or type(e).__name__
            _notice(
                f"teacher cache folder {str(self.dir)!r} cannot be written ({why}); "
                "teacher states are not cached this run. Set data.cache_dir to a writable "
                "folder (or null)."
            )
            self.dir = None
            return
        for row, s in enumerate(seeds):
            self.index.setdefault(int(s), (path, row))


class _Batches(Dataset):
    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def _rows(cond: Any, index: list[int]) -> Any:
    if isinstance(cond, Tensor):
        return cond[index]
    return [cond[i] for i in index]


class NoiseDataModule(pl.LightningDataModule):
    """Noise batches (from per-sample seeds) with their teacher states.

    Each batch is a dict: ``seeds`` [B], ``noise`` [B, ...] (standard normal, integration dtype)
    and ``teacher`` [B, M, ...] (the teacher's state at each of the module's
    ``target_sigmas``). The teacher comes from a :class:`TeacherSource` handed over with
    :meth:`attach`: a :class:`~dode.lit.DODEModule` attaches its own in its ``setup`` hook, so
    ``trainer.fit(module, data)`` needs nothing more.

    Args:
        **settings: the fields of :class:`~dode.lit.specs.DataSpec` (seeds, batch size, teacher
            cache, conditioning) as keywords, declared and defaulted there (and shown by
            ``python -m dode.train --help`` as ``--data.*``). Any left out keeps its default.

    Raises:
        TypeError: a keyword that is no setting.
        ValueError: a bad value (the spec's message).
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        spec = DataSpec(**settings)
        #: the settings, checked (:class:`~dode.lit.specs.DataSpec`)
        self.spec = spec
        self.save_hyperparameters(spec.kwargs())
        class_labels, prompts, cache_dir = spec.class_labels, spec.prompts, spec.cache_dir
        negative_prompt, batch_size = spec.negative_prompt, spec.batch_size
        self.conditioning: SeedConditioning | None = SeedConditioning.from_options(
            class_labels=class_labels, prompts_file=prompts, negative_prompt=negative_prompt
        )
        self.fit_seeds = list(self.spec.fit_seed_list)
        self.val_seeds = list(self.spec.val_seed_list)
        self.batch_size = batch_size
        if cache_dir == "auto":
            self.cache_dir: Path | None = default_cache_dir()
        else:
            self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self._cache: TeacherCache | None = None
        self.teacher: TeacherSource | None = None
        self.served: dict[str, list[int]] = {}
        self.reference: ReferenceSource | None = None
        self._fit_refs: Tensor | None = None
        self._select_refs: Tensor | None = None
        self._plan: FitPlan | None = None
        self._order: list[Tensor] = []
        self._order_iter = None

    @classmethod
    def from_spec(cls, spec: DataSpec) -> NoiseDataModule:
        """The data module of ``spec``: the same as the constructor with its fields."""
        if not isinstance(spec, DataSpec):
            raise ValueError(
                f"NoiseDataModule.from_spec takes a DataSpec, got {type(spec).__name__}."
            )
        return cls(**spec.kwargs())

    # ---- sharding ----------------------------------------------------------------------------
    def _rank(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def rank_batches(self, seeds: Sequence[int], what: str = "seeds") -> list[list[int]]:
        """This rank's seeds, in batches (see :func:`rank_batches`)."""
        rank, world = self._rank()
        return rank_batches(seeds, rank, world, self.batch_size, what)

    # ---- teacher states ----------------------------------------------------------------------
    def attach(self, teacher: TeacherSource) -> None:
        """Serve batches of this problem (see :meth:`dode.lit.DODEModule.teacher_source`)."""
        if not isinstance(teacher, TeacherSource):
            raise ValueError(
                f"NoiseDataModule.attach takes a TeacherSource, got {type(teacher).__name__}; "
                "pass module.teacher_source()."
            )
        self.teacher = teacher

    def _source(self, teacher: TeacherSource | None) -> TeacherSource:
        teacher = teacher if teacher is not None else self.teacher
        if teacher is None:
            raise ValueError(
                "NoiseDataModule has no teacher: fit it with a DODEModule (which attaches its "
                "own at setup) or call data.attach(module.teacher_source()) first."
            )
        return teacher

    def cache(self, teacher: TeacherSource | None = None) -> TeacherCache:
        """The teacher cache of ``teacher`` (default: the attached one)."""
        teacher = self._source(teacher)
        if self._cache is None or self._cache.key != teacher.key():
            self._cache = TeacherCache(self.cache_dir, teacher.problem)
        return self._cache

    def states_for(self, seeds: Sequence[int], teacher: TeacherSource | None = None) -> dict:
        """One batch: ``seeds``, ``noise`` and ``teacher`` (cached states, computing the
        missing ones and storing them) of ``teacher`` (default: the attached one)."""
        teacher = self._source(teacher)
        seeds = [int(s) for s in seeds]
        noise = noise_from_seeds(seeds, teacher.sample_shape, teacher.dtype)
        cache = self.cache(teacher)
        have = cache.get(seeds)
        cond = teacher.condition(seeds) if teacher.condition is not None else None
        missing = [i for i, s in enumerate(seeds) if s not in have]
        if missing:
            if cond is None:
                new = teacher.compute(noise[missing])
            else:
                new = teacher.compute(noise[missing], _rows(cond, missing))
            cache.put([seeds[i] for i in missing], new)
            for j, i in enumerate(missing):
                have[seeds[i]] = new[j]
        states = torch.stack([have[s] for s in seeds]).to(teacher.dtype)
        batch = {"seeds": torch.tensor(seeds, dtype=torch.long), "noise": noise, "teacher": states}
        if cond is not None:
            batch["cond"] = cond
        return batch

    def _loader(self, seeds: list[int], what: str) -> DataLoader:
        teacher = self._source(None)
        groups = self.rank_batches(seeds, what)
        self.served[what] = [s for g in groups for s in g]
        cache = self.cache(teacher)
        todo = sum(1 for g in groups for s in g if s not in cache.index)
        if todo:
            where = cache.dir if cache.dir is not None else "memory only"
            rank_zero_info(
                f"dode: teacher states for {todo} {what} on rank {self._rank()[0]} "
                f"({teacher.description}; cache: {where})"
            )
        show = todo > 0 and self._rank()[0] == 0 and len(groups) > 1
        batches = []
        for g in tqdm(groups, desc=f"teacher ({what})", disable=not show):
            stop_if_terminated(self.trainer)  # between batches: every cache file is whole
            batches.append(self.states_for(g, teacher))
        return DataLoader(_Batches(batches), batch_size=None, shuffle=False)

    # ---- end-to-end: references and mini-batches ------------------------------------------
    def attach_references(self, source: ReferenceSource) -> None:
        """Serve an end-to-end fit whose references come from ``source`` (its module attaches
        it at setup, :meth:`dode.lit.DODEModule.reference_source`)."""
        if not isinstance(source, ReferenceSource):
            raise ValueError(
                f"NoiseDataModule.attach_references takes a ReferenceSource, got "
                f"{type(source).__name__}."
            )
        self.reference = source
        self._fit_refs = self._select_refs = None

    def references(self, seeds: Sequence[int], what: str = "seeds") -> Tensor:
        """The converged references of ``seeds`` ``[N, ...]`` (CPU, in order) on every rank.

        Each rank takes its strided share, in batches of the source's ``batch_size``: cached
        entries are read (a damaged one is recomputed), the missing ones computed and written;
        the shares are then gathered."""
        src = self.reference
        if src is None:
            raise ValueError(
                "NoiseDataModule has no reference source: fit it with a DODEModule of fit_mode "
                "end-to-end (which attaches its own at setup)."
            )
        seeds = [int(s) for s in seeds]
        rank, world = self._rank()
        mine = list(range(rank, len(seeds), world))
        cache = TeacherCache(self.cache_dir, src.problem)
        todo = sum(1 for i in mine if seeds[i] not in cache.index)
        if todo:
            where = cache.dir if cache.dir is not None else "memory only"
            rank_zero_info(
                f"dode: references for {todo} {what} on rank {rank} ({src.description}, "
                f"batches of {src.batch_size}; cache: {where})"
            )
        chunks = [mine[i : i + src.batch_size] for i in range(0, len(mine), src.batch_size)]
        show = todo > 0 and rank == 0 and len(chunks) > 1
        rows: list[Tensor] = []
        for chunk in tqdm(chunks, desc=f"references ({what})", disable=not show):
            stop_if_terminated(self.trainer)  # between batches: every cache file is whole
            part = [seeds[i] for i in chunk]
            have = cache.get(part)
            missing = [s for s in part if s not in have]
            if missing:
                noise = noise_from_seeds(missing, src.sample_shape, src.dtype)
                if src.condition is None:
                    new = src.compute(noise)
                else:
                    new = src.compute(noise, src.condition(missing))
                new = new.detach().cpu()
                cache.put(missing, new)
                have.update(zip(missing, new))
            rows.extend(have[s].to(src.dtype) for s in part)
        local = torch.stack(rows) if rows else torch.zeros((0, *src.sample_shape), dtype=src.dtype)
        return gather_rows(self.trainer, local, mine, len(seeds))

    def serve_end_to_end(
        self,
        fit_refs: Tensor,
        select_refs: Tensor,
        *,
        batch_size: int | None,
        seed: int,
        per_epoch: int,
        select_batch_size: int | None,
    ) -> None:
        """Stream the fit's mini-batches and the selection batches with these references (the
        plan: see :class:`FitPlan`)."""
        plan = FitPlan(batch_size, seed, per_epoch, select_batch_size)
        self._fit_refs, self._select_refs, self._plan = fit_refs, select_refs, plan
        self._order, self._order_iter = [], None

    def gather(self, rows: Tensor, positions: Sequence[int], total: int) -> Tensor:
        """:func:`gather_rows` over this data module's trainer's processes."""
        return gather_rows(self.trainer, rows, positions, total)

    def minibatch(self, m: int) -> Tensor:
        """The fit seeds' indices of the ``m``-th global micro-batch (the fit's order)."""
        from ..learned_solver import minibatch_order

        if self._order_iter is None:
            self._order_iter = minibatch_order(len(self.fit_seeds), self._plan.batch_size,
                                               self._plan.seed)  # fmt: skip
        while len(self._order) <= m:
            self._order.append(next(self._order_iter))
        return self._order[m]

    def fit_batch(self, m: int) -> dict:
        """This rank's share of the ``m``-th global micro-batch: ``seeds``, ``noise``,
        ``reference``, ``global_size`` (seeds in the global micro-batch) and ``cond``."""
        rank, world = self._rank()
        idx = self.minibatch(m)
        share = idx[rank::world]
        seeds = [self.fit_seeds[int(i)] for i in share]
        batch = {
            "seeds": torch.tensor(seeds, dtype=torch.long),
            "noise": noise_from_seeds(seeds, self.reference.sample_shape, self.reference.dtype),
            "reference": self._fit_refs[share],
            "global_size": len(idx),
        }
        if self.reference.condition is not None:
            batch["cond"] = self.reference.condition(seeds)
        return batch

    def selection_batches(self, every_rank: bool = False) -> list[dict]:
        """This rank's share of the selection seeds (``every_rank``: all of them) in batches
        of the plan's ``select_batch_size``: ``seeds``, ``positions`` (in ``val_seeds``),
        ``noise``, ``reference`` and ``cond``."""
        rank, world = (0, 1) if every_rank else self._rank()
        mine = list(range(rank, len(self.val_seeds), world))
        size = self._plan.select_batch_size or len(mine) or 1
        out = []
        for i in range(0, len(mine), size):
            pos = mine[i : i + size]
            seeds = [self.val_seeds[j] for j in pos]
            batch = {
                "seeds": torch.tensor(seeds, dtype=torch.long),
                "positions": torch.tensor(pos, dtype=torch.long),
                "noise": noise_from_seeds(
                    seeds, self.reference.sample_shape, self.reference.dtype
                ),  # fmt: skip
                "reference": self._select_refs[pos],
            }
            if self.reference.condition is not None:
                batch["cond"] = self.reference.condition(seeds)
            out.append(batch)
        return out

    def selection_sample(self, num: int) -> dict:
        """The first ``num`` selection seeds: ``seeds``, ``noise``, ``reference`` and ``cond``
        (the end-to-end sample grid)."""
        seeds = self.val_seeds[:num]
        batch = {
            "seeds": torch.tensor(seeds, dtype=torch.long),
            "noise": noise_from_seeds(seeds, self.reference.sample_shape, self.reference.dtype),
            "reference": self._select_refs[: len(seeds)],
        }
        if self.reference.condition is not None:
            batch["cond"] = self.reference.condition(seeds)
        return batch

    def train_dataloader(self) -> DataLoader:
        if self._plan is not None:
            return DataLoader(_FitStream(self), batch_size=None, shuffle=False)
        return self._loader(self.fit_seeds, "fit_seeds")

    def val_dataloader(self) -> DataLoader:
        if self._plan is not None:
            return DataLoader(_Batches(self.selection_batches()), batch_size=None, shuffle=False)
        return self._loader(self.val_seeds, "val_seeds")


class _FitStream(Dataset):
    """One Lightning epoch of the end-to-end fit: ``per_epoch`` micro-batches; item ``i`` of
    epoch ``e`` is global micro-batch ``e · per_epoch + i`` (so a resumed run, at any epoch,
    serves the same mini-batches as an uninterrupted one)."""

    def __init__(self, data: NoiseDataModule) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data._plan.per_epoch

    def __getitem__(self, i: int) -> dict:
        trainer = self.data.trainer
        epoch = trainer.current_epoch if trainer is not None else 0
        return self.data.fit_batch(epoch * len(self) + i)
