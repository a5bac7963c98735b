"""The sample store: one PNG per seed (written atomically, so a run resumes), the packed npz,
and the record of what the samples in a folder were made with."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..files.writes import atomic_write

__all__ = ["SampleStore", "claim_out_dir"]


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
            if p.exists():  # seeds already done are never scheduled: another run wrote it
                raise ValueError(
                    f"sample {str(p)!r} appeared while this run was making it: another "
                    "evaluation is writing into the same --out at the same time. Nothing is "
                    "lost (a seed gives the same sample in both); run one evaluation per --out "
                    "at a time, then re-run this one with the same --out to finish."
                )
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
        shape = None
        for i in range(0, len(seeds), batch_size):
            chunk = seeds[i : i + batch_size]
            imgs = [np.asarray(arr[packed[s]]) if s in packed else self._read(s) for s in chunk]
            for s, im in zip(chunk, imgs):
                shape = im.shape if shape is None else shape
                if im.shape != shape:
                    raise ValueError(
                        f"sample {str(self.path(s))!r} has shape {im.shape}, the others "
                        f"{shape}: it was not written by this run. Delete it and re-run to "
                        "regenerate it."
                    )
            yield torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()

    def _read(self, seed: int) -> np.ndarray:
        """The PNG of ``seed`` as uint8 ``[H, W, C]``; ``ValueError`` if it is unreadable."""
        from .fid import _read_image

        p = self.path(seed)
        try:
            return _read_image(p)
        except Exception as e:  # noqa: BLE001 - any decoding failure is a bad sample file
            raise ValueError(
                f"sample {str(p)!r} is not a readable PNG ({type(e).__name__}: {e}); delete it "
                "and re-run with the same --out to regenerate it."
            ) from None

    def png_seeds(self) -> set[int]:
        """Seeds stored as PNG files."""
        if not self.dir.is_dir():
            return set()
        return {int(p.stem) for p in self.dir.glob("*/*.png") if p.stem.isdigit()}

    def packed_seeds(self) -> list[int]:
        """Seeds in ``samples.npz``, in its order."""
        if not self.npz.is_file():
            return []
        with np.load(self.npz) as z:
            return [int(s) for s in z["seeds"]]

    def pack(self, seeds: Sequence[int], batch_size: int = 1024) -> Path:
        """Stream the samples of ``seeds`` into ``samples.npz`` without holding them in memory,
        with every other sample the store holds (earlier runs' packed seeds, in their order,
        then the other PNGs' in seed order), so packing never drops a sample."""
        order = self.packed_seeds()
        have = set(order)
        order += [int(s) for s in seeds if int(s) not in have]
        have.update(order)
        order += sorted(self.png_seeds() - have)
        seeds = order
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

    def remove_pngs(self, seeds: set[int] | None = None) -> None:
        """Remove the PNG folder (``seeds=None``) or only the PNGs of ``seeds`` (and folders
        left empty)."""
        if not self.dir.is_dir():
            return
        if seeds is None:
            shutil.rmtree(self.dir)
            return
        for s in seeds:
            self.path(s).unlink(missing_ok=True)
        for d in sorted(self.dir.glob("*"), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        if not any(self.dir.iterdir()):
            self.dir.rmdir()


def claim_out_dir(
    out: Path,
    model_id,
    solver_cfg,
    sigmas,
    lambdas,
    shape,
    extra: dict | None = None,
    lock: Path | None = None,
) -> None:
    """Record what the samples in ``out`` are made with (``run.json``); refuse to mix in
    other samples: a ``run.json`` of other settings, or a non-empty folder without one (files
    this run did not write). ``extra``: more settings that must match (e.g. the tool).

    ``lock``: the lock file in ``out`` this run holds (:func:`~dode.files.writes.acquire_lock`):
    it is not counted as a foreign file, and a ``run.json`` of other settings that is all the
    folder holds (a run stopped before its first sample) is replaced: no other run can be
    writing there.
    """
    from ..files.writes import ensure_writable

    out = Path(out)
    ident = {
        "model": str(model_id),
        "solver": solver_cfg,
        "sigmas": [float(s) for s in sigmas],
        "lambdas": None if lambdas is None else [float(v) for v in lambdas],
        "sample_shape": list(shape or ()),
        **(extra or {}),
    }
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder; pass a folder.")
    path = out / "run.json"
    held = lock.name if lock is not None else None
    others = (
        [p.name for p in out.iterdir() if p.name not in ("run.json", held)] if out.is_dir() else []
    )
    if path.is_file() and not (held and not others):  # (else: it names no sample, replaced)
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{str(path)!r} is not a readable run record ({e}); use another --out, or "
                "delete the folder to start over."
            ) from None
        if not isinstance(old, dict) or old != ident:
            old = old if isinstance(old, dict) else {}
            diff = sorted(k for k in set(ident) | set(old) if old.get(k) != ident.get(k))
            raise ValueError(
                f"{str(out)!r} already holds samples made with a different {', '.join(diff)}; "
                "resume only with the same settings, or use another --out (or delete it)."
            )
        ensure_writable(out, "--out", "pass a folder you can write to")
        return
    if not path.is_file() and others:
        raise ValueError(
            f"--out {str(out)!r} is not empty and holds no run record (run.json) of these "
            "samples: its files were not written by this run. Pass an empty or new folder."
        )
    ensure_writable(out, "--out", "pass a folder you can write to")
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(ident, indent=1) + "\n"))
