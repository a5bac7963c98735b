"""``python -m dode.sample``: samples from a fitted-solver file, on any machine.

Example::

    python -m dode.sample --solver-file runs/x/solver.safetensors --seeds 0-63 --out samples/

writes ``seed_000000.png`` … (one PNG per seed, for image models), ``grid.png`` and
``samples.npz`` with ``samples`` (float32, the model's space, ``[N, ...]``), ``images`` (uint8
``[N, H, W, C]``, image models only), ``seeds``, ``lambdas`` and ``sigmas``. Noise comes from
each sample's seed alone, so the same seeds give the same samples for any batch size and on
any machine (up to the floating-point differences of the device).

Conditional models: ``--class-labels 0,1,2`` (seed ``s`` gets ``labels[s % n]``; also ``all``
and ``uniform``), ``--prompt "…"`` (every seed) or ``--prompts-file FILE`` (one prompt per line,
seed ``s`` gets line ``s % n``), ``--negative-prompt``; a file fitted with a label rule reuses
it. The guidance scale is the file's unless ``--guidance-scale`` is given (another scale warns:
λ were fitted for the file's). Latent models (Stable Diffusion) sample latents and decode them
with the VAE, batched, once per image: ``samples`` then holds the decoded images.

The model defaults to the one recorded in the file (its id: a registered name, hub id or
folder); pass ``--model`` when it lives elsewhere on this machine. Its weights hash must match
the file's (``--ignore_model_hash`` overrides, as in ``python -m dode.evaluate``). ``--out``
must be new, empty, or hold the ``run.json`` of a run with the same model, solver, grid and λ.

This module holds the implementation; ``dode/sample.py`` only runs :func:`main`, so the
package attribute ``dode.sample`` stays the sampling function.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ..artifact import FittedSolver, atomic_write, check_model_weights
from ..conditioning import SeedConditioning, bind_seeds, conditioning_for_solver
from ..evaluation.store import claim_out_dir
from ..images import image_grid as _grid
from ..images import to_uint8_hwc as _uint8
from ..noise import noise_from_seeds, parse_seeds

__all__ = ["main", "generate"]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


def add_conditioning_arguments(p: argparse.ArgumentParser) -> None:
    """``--prompt``, ``--prompts-file``, ``--negative-prompt``, ``--class-labels``,
    ``--guidance-scale``, ``--guidance-rescale`` (shared by dode.sample and dode.evaluate)."""
    g = p.add_argument_group("conditional models")
    g.add_argument("--prompt", default=None, help="text models: one prompt for every seed")
    g.add_argument(
        "--prompts-file", default=None, help="text models: one prompt per line (seed s: s %% n)"
    )
    g.add_argument("--negative-prompt", default=None, help="text models: the negative prompt")
    g.add_argument(
        "--class-labels",
        default=None,
        help="class-conditional models: 0,1,2 (seed s: labels[s %% n]), all or uniform",
    )
    g.add_argument(
        "--guidance-scale", type=float, default=None, help="CFG scale (default: the file's)"
    )
    g.add_argument(
        "--guidance-rescale", type=float, default=None, help="CFG rescale φ (default: the file's)"
    )


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(
        prog="python -m dode.sample",
        description="Generate samples with a fitted D-ODE solver file.",
    )
    p.add_argument("--solver-file", required=True, help="fitted-solver .safetensors file")
    p.add_argument(
        "--model",
        default=None,
        help="model (registered name, folder or hub id); default: the file's",
    )
    p.add_argument("--seeds", default="0-63", help="seeds, e.g. 0-63 or 0-9,20 (default 0-63)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default=None,
        help="integration dtype (default: the one the solver was fitted in)",
    )
    p.add_argument("--base", action="store_true", help="sample with the base solver (λ = 0)")
    p.add_argument(
        "--ignore_model_hash",
        "--ignore-model-hash",
        dest="ignore_model_hash",
        action="store_true",
        help="sample even if the model's weights differ from the ones the λ were fitted for, "
        "or cannot be identified (the same flag as python -m dode.evaluate's)",
    )
    p.add_argument("--no-png", action="store_true", help="write only samples.npz and grid.png")
    add_conditioning_arguments(p)
    args = p.parse_args(argv)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    try:
        return _run(args)
    except ValueError as e:
        print(f"dode.sample: error: {e}", file=sys.stderr)
        sys.exit(2)


def _run(args) -> Path:
    from ..loading import load_denoiser, resolve_dtype

    fs = FittedSolver.load(args.solver_file)
    seeds = parse_seeds(args.seeds)
    if not seeds:
        raise ValueError("--seeds is empty; give seeds such as 0-63.")
    if len(set(seeds)) != len(seeds):
        twice = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ValueError(
            f"--seeds lists seed {twice[0]} more than once; every sample needs its own seed."
        )
    if args.batch_size < 1:
        raise ValueError("--batch-size must be >= 1.")
    meta = fs.model or {}
    model = args.model or meta.get("id")
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
        source=str(args.solver_file),
        ignore=args.ignore_model_hash,
    )
    dtype_name = args.dtype or meta.get("integration_dtype") or "float32"
    if dtype_name in ("float16", "bfloat16"):
        raise ValueError(
            f"{args.solver_file} asks to integrate in {dtype_name}, too coarse for the ODE "
            "(samples differ from float32 ones by up to 0.87 on [-1, 1] data); pass --dtype "
            "float32 (or float64)."
        )
    rule, w, phi = conditioning_for_solver(
        meta, den, prompt=args.prompt, prompts_file=args.prompts_file,
        class_labels=args.class_labels, negative_prompt=args.negative_prompt,
        guidance_scale=args.guidance_scale, guidance_rescale=args.guidance_rescale,
    )  # fmt: skip
    dtype = resolve_dtype(dtype_name)
    out = Path(args.out)
    claim_out_dir(
        out,
        model,
        fs.solver,
        fs.sigmas,
        None if args.base else fs.lambdas,
        den.sample_shape,
        extra={
            "tool": "dode.sample",
            "dtype": str(dtype).removeprefix("torch."),
            "conditioning": rule.describe() if rule is not None else None,
            "guidance_scale": w if rule is not None else None,
            **{k: v.tolist() for k, v in fs.correction(not args.base).items() if k != "lambdas"},
        },
    )
    x = generate(
        fs,
        den,
        seeds,
        batch_size=args.batch_size,
        dtype=dtype,
        device=_device(args.device),
        dode=not args.base,
        conditioning=rule,
        guidance_scale=w,
        guidance_rescale=phi,
    )
    arrays = {
        "samples": x.float().numpy(),
        "seeds": np.asarray(seeds, np.int64),
        "lambdas": (fs.lambdas * (0 if args.base else 1)).numpy(),
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
        images = _uint8(x)
        arrays["images"] = images
        from PIL import Image

        if not args.no_png:
            for s, im in zip(seeds, images):
                png = out / f"seed_{s:06d}.png"
                atomic_write(
                    png,
                    lambda t, im=im: Image.fromarray(
                        im.squeeze(-1) if im.shape[-1] == 1 else im
                    ).save(t, format="PNG"),
                )
        grid = _grid(images[:64])
        atomic_write(out / "grid.png", lambda t: Image.fromarray(grid).save(t, format="PNG"))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    npz = atomic_write(out / "samples.npz", write)
    kind = "base solver" if args.base else "D-solver"
    print(f"{len(seeds)} samples ({kind}, {fs.build_solver().describe()}, NFE {fs.nfe}) -> {out}")
    print(f"samples: {npz}")
    return npz


if __name__ == "__main__":
    main()
