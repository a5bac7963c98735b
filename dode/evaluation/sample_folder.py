"""Samples from a fitted-solver file into a folder: the work of ``python -m dode.sample``.

:func:`sample_to_folder` loads the file's model (checking its weights hash), samples the given
seeds with the file's solver, grid and λ (a conditional model bound to each seed's conditioning
and the guidance; a latent model decoded to images), and writes ``samples.npz`` (merged by
seed with an earlier run's), one PNG per seed and ``grid.png`` into the folder, each write
atomic. :func:`generate` is the sampling loop alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..conditioning import SeedConditioning, bind_seeds, conditioning_for_solver
from ..files.images import image_grid as _grid
from ..files.images import to_uint8_hwc as _uint8
from ..files.solver_file import FittedSolver
from ..files.weights import check_model_weights
from ..files.writes import acquire_lock, atomic_write, ensure_writable, release_lock
from ..noise import noise_from_seeds, parse_seeds
from .store import claim_out_dir

__all__ = ["sample_to_folder", "generate", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """The device ``name`` names (``auto``: CUDA if there is one); ``ValueError`` if this
    machine has no such device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N."
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ValueError(
                f"--device {name!r}: this machine has {have}; pass --device cpu or auto."
            )
    return device


def generate(
    fs: FittedSolver,
    denoiser,
    seeds: list[int],
    *,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    dode: bool = True,
    conditioning: SeedConditioning | None = None,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
) -> torch.Tensor:
    """Samples for ``seeds`` with a fitted solver (``dode=False``: its base solver), on CPU.

    A conditional model is bound to each batch's per-seed ``conditioning`` and the guidance;
    a latent model's samples are decoded to images in [−1, 1] (batched, once per image)."""
    denoiser = denoiser.to(device)
    decode = getattr(denoiser, "decode", None)
    out = []
    for i in range(0, len(seeds), batch_size):
        chunk = seeds[i : i + batch_size]
        noise = noise_from_seeds(chunk, denoiser.sample_shape, dtype, device)
        den = bind_seeds(denoiser, conditioning, chunk, guidance_scale, guidance_rescale)
        with torch.no_grad():
            x = fs.sample(den, noise, dode=dode)
            out.append((decode(x, batch_size) if decode is not None else x).cpu())
    return torch.cat(out)


#: the per-seed arrays of samples.npz (first axis: one row per seed); the others are the
#: run's settings, the same for every run into one --out (run.json makes sure).
_PER_SEED = ("samples", "seeds", "images", "class_labels", "prompts")


def _read_npz(path: Path) -> dict | None:
    """The arrays of an earlier run's ``samples.npz`` (``None`` if there is none);
    ``ValueError`` if it cannot be read."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            old = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any read failure is a damaged file
        raise ValueError(
            f"{str(path)!r} (the samples of an earlier run into this folder) cannot be read "
            f"({type(e).__name__}: {e}); move it away or pass another --out, so that its samples "
            "are not lost."
        ) from None
    return old


def _merge_npz(path: Path, old: dict | None, new: dict) -> dict:
    """``new`` merged by seed with ``old``, the ``samples.npz`` an earlier run into the same
    folder wrote: the earlier seeds stay (in their order), this run's follow; a seed in both
    takes this run's sample. ``ValueError`` if they do not fit together."""
    if old is None:
        return new
    keys = [k for k in _PER_SEED if k in new]
    if sorted(k for k in _PER_SEED if k in old) != sorted(keys) or any(
        old[k].shape[1:] != new[k].shape[1:] for k in keys if k != "prompts"
    ):
        raise ValueError(
            f"{str(path)!r} holds samples of another shape or kind than this run's; move it "
            "away or pass another --out, so that its samples are not lost."
        )
    fresh = set(int(s) for s in new["seeds"])
    keep = np.array([int(s) not in fresh for s in old["seeds"]], dtype=bool)
    merged = dict(new)
    for k in keys:
        merged[k] = np.concatenate([old[k][keep], new[k]])
    return merged


#: the lock file a run holds in its --out (pid and host)
LOCK_NAME = ".sample.lock"


#: what a write failure (a full disk) says after "<path> could not be written (<why>); "
_WRITE_FIX = (
    "nothing half-written is left (the files written before it are whole). Free some space, or "
    "pass another --out, and run again."
)


def _write(path: Path, write) -> Path:
    return atomic_write(path, write, fix=_WRITE_FIX)


def sample_to_folder(
    solver_file: str | Path,
    out: str | Path,
    *,
    model: str | None = None,
    seeds: str = "0-63",
    batch_size: int = 64,
    device: str = "auto",
    dtype: str | None = None,
    base: bool = False,
    ignore_model_hash: bool = False,
    no_png: bool = False,
    prompt: str | None = None,
    prompts_file: str | None = None,
    negative_prompt: str | None = None,
    class_labels: str | None = None,
    guidance_scale: float | None = None,
    guidance_rescale: float | None = None,
) -> Path:
    """The work of ``python -m dode.sample`` (each argument is the flag of that name): sample
    ``seeds`` with the solver file and write them into the folder ``out``; returns the path of
    ``samples.npz``. ``ValueError`` on bad input (nothing is sampled then)."""
    from ..denoisers.loading import load_denoiser, resolve_dtype

    device = resolve_device(device)
    fs = FittedSolver.load(solver_file)
    seeds = parse_seeds(seeds)
    if not seeds:
        raise ValueError("--seeds is empty; give seeds such as 0-63.")
    if len(set(seeds)) != len(seeds):
        seen: set[int] = set()
        twice = sorted({s for s in seeds if s in seen or seen.add(s)})
        raise ValueError(
            f"--seeds lists seed {twice[0]} more than once; every sample needs its own seed."
        )
    if batch_size < 1:
        raise ValueError("--batch_size must be >= 1.")
    meta = fs.model or {}
    model = model or meta.get("id")
    if not model:
        raise ValueError("the file records no model; pass --model.")
    den = load_denoiser(
        model,
        sigma_to_t=meta.get("sigma_to_t", "interp"),
        dtype=meta.get("dtype"),
        **(meta.get("options") or {}),
    )
    fs.check_model(den)  # the model family first: no override makes another family's λ apply
    check_model_weights(
        meta.get("weights_hash"),
        den,
        str(model),
        source=str(solver_file),
        ignore=ignore_model_hash,
    )
    dtype_name = dtype or meta.get("integration_dtype") or "float32"
    if dtype_name in ("float16", "bfloat16"):
        raise ValueError(
            f"{solver_file} asks to integrate in {dtype_name}, too coarse for the ODE "
            "(samples differ from float32 ones by up to 0.87 on [-1, 1] data); pass --dtype "
            "float32 (or float64)."
        )
    rule, w, phi = conditioning_for_solver(
        meta, den, prompt=prompt, prompts_file=prompts_file,
        class_labels=class_labels, negative_prompt=negative_prompt,
        guidance_scale=guidance_scale, guidance_rescale=guidance_rescale,
    )  # fmt: skip
    dtype = resolve_dtype(dtype_name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder; pass a folder.")
    ensure_writable(out, "--out", "pass a folder you can write to")
    out.mkdir(parents=True, exist_ok=True)
    # one run at a time per folder: a second one would replace samples.npz under the first
    lock = acquire_lock(out / LOCK_NAME, "--out", "dode.sample run", "--out")
    try:
        claim_out_dir(
            out,
            model,
            fs.solver,
            fs.sigmas,
            None if base else fs.lambdas,
            den.sample_shape,
            extra={
                "tool": "dode.sample",
                "dtype": str(dtype).removeprefix("torch."),
                "conditioning": rule.describe() if rule is not None else None,
                "guidance_scale": w if rule is not None else None,
                **{k: v.tolist() for k, v in fs.correction(not base).items() if k != "lambdas"},
            },
            lock=lock,
        )
        npz_path = out / "samples.npz"
        earlier = _read_npz(npz_path)  # before the work: a damaged file is refused now
        x = generate(
            fs,
            den,
            seeds,
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            dode=not base,
            conditioning=rule,
            guidance_scale=w,
            guidance_rescale=phi,
        )
        arrays = {
            "samples": x.float().numpy(),
            "seeds": np.asarray(seeds, np.int64),
            "lambdas": (fs.lambdas * (0 if base else 1)).numpy(),
            "sigmas": fs.sigmas.numpy(),
        }
        if rule is not None:
            cond = rule.for_seeds(seeds, getattr(den, "num_classes", None))
            arrays["guidance_scale"] = np.float64(w)
            if isinstance(cond, torch.Tensor):
                arrays["class_labels"] = cond.numpy()
            else:
                arrays["prompts"] = np.asarray(cond)
        if x.ndim == 4:
            arrays["images"] = _uint8(x)
        arrays = _merge_npz(npz_path, earlier, arrays)
        if x.ndim == 4:
            images = arrays["images"][-len(seeds) :]
            from PIL import Image

            if not no_png:
                for s, im in zip(seeds, images):
                    png = out / f"seed_{s:06d}.png"
                    _write(
                        png,
                        lambda t, im=im: Image.fromarray(
                            im.squeeze(-1) if im.shape[-1] == 1 else im
                        ).save(t, format="PNG"),
                    )
            grid = _grid(arrays["images"][:64])
            _write(out / "grid.png", lambda t: Image.fromarray(grid).save(t, format="PNG"))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        npz = _write(npz_path, write)
        kind = "base solver" if base else "D-solver"
        print(
            f"{len(seeds)} samples ({kind}, {fs.build_solver().describe()}, NFE {fs.nfe}) -> {out}"
        )
        if len(arrays["seeds"]) > len(seeds):
            print(f"samples.npz now holds {len(arrays['seeds'])} seeds (earlier runs' kept)")
        print(f"samples: {npz}")
        return npz
    finally:
        release_lock(lock)
