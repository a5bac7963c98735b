"""Load a denoiser from a short string: a hub id, a local diffusers folder, a registered name,
or ``package.module:factory``.

Registered names:

=============  ===================================================================================
``digits``     the DDPM bundled with the package (``dode/assets/digits_ddpm``, diffusers format,
               8×8 sklearn digits, data in [−1, 1])
``digits-cond`` the class-conditional DDPM bundled with the package
               (``dode/assets/digits_cond_ddpm``: labels 0–9, null label 10 for classifier-free
               guidance)
``gmm-digits`` an exact Gaussian-mixture denoiser fitted to the sklearn digits (20 full-covariance
               components, seed 0, data ``img / 8 − 1`` in [−1, 1], shape 1×8×8): a ground-truth
               model for quick experiments, no network involved
``digits-flow`` the bundled class-conditional rectified-flow digits model (``dode/assets/digits_flow``,
               labels 0..9, null label 10 for CFG: ``den.bind(labels, guidance_scale=w)``)
=============  ===================================================================================

Add your own with :func:`register_model`, or point at any importable factory with
``"package.module:function"`` (called with the keyword options, must return a
:class:`~dode.denoisers.Denoiser`).
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .base import Denoiser, quiet_loading
from .flow import DiffusersFlowDenoiser
from .gmm import GaussianMixtureDenoiser
from .latent import LatentDiffusionDenoiser
from .vp import DiffusersDenoiser

__all__ = [
    "load_denoiser",
    "register_model",
    "import_factory",
    "MODELS",
    "ASSETS",
    "digits_data",
    "resolve_dtype",
    "is_latent_pipeline",
]

ASSETS = Path(__file__).resolve().parents[1] / "assets"

MODELS: dict[str, Callable[..., Denoiser]] = {}

_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"float32"`` → ``torch.float32`` (``None`` and dtypes pass through)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]


def register_model(name: str) -> Callable[[Callable[..., Denoiser]], Callable[..., Denoiser]]:
    """Decorator: make ``load_denoiser(name, **kw)`` call the decorated factory."""

    def deco(fn: Callable[..., Denoiser]) -> Callable[..., Denoiser]:
        MODELS[name] = fn
        return fn

    return deco


def digits_data() -> torch.Tensor:
    """The 1797 sklearn digits as float64 ``[N, 1, 8, 8]`` in [−1, 1] (``img / 8 − 1``)."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images).to(torch.float64)
    return (images / 8.0 - 1.0)[:, None]


def _bundled_ddpm(
    name: str, folder: str, make: str, sigma_to_t: str, dtype: torch.dtype | None, /, **kwargs
) -> DiffusersDenoiser:
    """The DDPM bundled with dode in ``ASSETS / folder``, registered as ``name``; ``make`` is
    the command that writes it (named in the error when the folder is missing)."""
    path = ASSETS / folder
    if not path.is_dir():
        raise ValueError(
            f"the bundled {name!r} model is missing: no diffusers folder at {str(path)!r}. "
            f"Reinstall dode from a complete checkout, or make it with `{make}`; or pass another "
            "model (a registered name, a hub id or a local diffusers folder)."
        )
    den = DiffusersDenoiser.from_pretrained(
        path, sigma_to_t=sigma_to_t, torch_dtype=dtype, **kwargs
    )
    den.model_id = name
    return den


@register_model("digits")
def _digits(
    sigma_to_t: str = "interp", dtype: torch.dtype | None = None, **kwargs
) -> DiffusersDenoiser:
    make = "python -m dode.pretrain -c configs/pretrain/digits.yaml"
    return _bundled_ddpm("digits", "digits_ddpm", make, sigma_to_t, dtype, **kwargs)


@register_model("digits-flow")
def _digits_flow(dtype=None, sigma_to_t=None, **kw) -> DiffusersFlowDenoiser:  # σ→t: t = σ/(1+σ)
    den = DiffusersFlowDenoiser.from_pretrained(
        ASSETS / "digits_flow", torch_dtype=dtype, num_classes=10, **kw
    )
    den.model_id = "digits-flow"
    den.data_range = (-1.0, 1.0)  # the sklearn digits, scaled as the DDPM's
    return den


@register_model("digits-cond")
def _digits_cond(
    sigma_to_t: str = "interp", dtype: torch.dtype | None = None, num_classes: int = 10, **kwargs
) -> DiffusersDenoiser:
    return _bundled_ddpm(
        "digits-cond", "digits_cond_ddpm", "python -m dode.pretrain", sigma_to_t, dtype,
        num_classes=num_classes, **kwargs,
    )  # fmt: skip


_TEXT_PARTS = ("text_encoder", "text_encoder_2")


def is_latent_pipeline(path: str, **kwargs) -> bool:
    """Whether ``path`` (a folder or hub id) is a Stable Diffusion (XL) pipeline: its
    ``model_index.json`` lists a ``unet``, a ``vae`` and a text encoder. ``False`` when there
    is no readable ``model_index.json`` (a bare ``UNet2DModel`` folder, or an unreachable hub
    id: the UNet loader then reports the error)."""
    if os.path.isdir(path):
        index_file = os.path.join(path, "model_index.json")
        if not os.path.isfile(index_file):
            return False
        import json

        try:
            with open(index_file) as f:
                index = json.load(f)
        except (OSError, ValueError):
            return False
    else:
        from diffusers import DiffusionPipeline

        try:
            with quiet_loading():
                index = DiffusionPipeline.load_config(path, **kwargs)
        except Exception:  # noqa: BLE001 - not a pipeline (or offline): the UNet path reports
            return False

    def present(name: str) -> bool:
        entry = index.get(name)
        return isinstance(entry, (list, tuple)) and len(entry) > 0 and entry[0] is not None

    return present("unet") and present("vae") and any(present(n) for n in _TEXT_PARTS)


@functools.lru_cache(maxsize=4)
def _gmm_digits_fit(n_components: int, seed: int) -> GaussianMixtureDenoiser:
    return GaussianMixtureDenoiser.fit(digits_data(), n_components=n_components, seed=seed)


@register_model("gmm-digits")
def _gmm_digits(
    n_components: int = 20, seed: int = 0, dtype: torch.dtype | None = None, **_
) -> GaussianMixtureDenoiser:
    # A fresh module each time (callers may move it to a device); the fit itself is cached.
    den = copy.deepcopy(_gmm_digits_fit(int(n_components), int(seed)))
    den.model_id = "gmm-digits"
    den.data_range = (-1.0, 1.0)
    return den


def import_factory(
    spec: str,
    what: str = "model factory",
    usage: str = "use 'package.module:function' with the package importable (on PYTHONPATH)",
    returns: str = "a function returning a Denoiser",
) -> Callable:
    """The object ``"package.module:name"`` names (``name`` may be dotted), which must be callable.

    Args:
        spec: ``"package.module:name"``.
        what, usage, returns: how the errors name the object, the fix and what it must be.

    Raises:
        ValueError: the module or attribute cannot be imported, or the object is not callable.
    """
    mod_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {what} {spec!r} ({e}); {usage}.") from None
    if not callable(obj):
        raise ValueError(f"{spec!r} is not callable; it must be {returns}.")
    return obj


def _hub_kwargs(kwargs: dict) -> dict:
    keys = ("revision", "cache_dir", "token", "local_files_only")
    return {k: kwargs[k] for k in keys if k in kwargs}


def load_denoiser(
    model: str,
    *,
    sigma_to_t: str = "interp",
    dtype: str | torch.dtype | None = None,
    **kwargs,
) -> Denoiser:
    """Load a frozen denoiser.

    Args:
        model: a registered name (``digits``, ``digits-cond``, ``gmm-digits``; see
            :data:`MODELS`), a local diffusers folder (``save_pretrained`` output: a
            ``StableDiffusion(XL)Pipeline`` folder, loaded as a
            :class:`~dode.denoisers.LatentDiffusionDenoiser`; a ``UNet2DModel`` pipeline folder
            with ``unet/`` and ``scheduler/``, or a flat one), a hub id such as
            ``google/ddpm-cifar10-32`` or ``stable-diffusion-v1-5/stable-diffusion-v1-5``, or
            ``package.module:function``.
        sigma_to_t: how a diffusers model maps σ to its timestep (``interp`` or ``snap``).
        dtype: weights dtype for network models (``None``: as stored); ``float16`` /
            ``bfloat16`` run the network in half precision while the solver integrates in the
            noise's dtype (float32 / float64).
        **kwargs: passed to the factory (``from_pretrained`` for diffusers models), e.g.
            ``num_classes`` for a class-conditional ``UNet2DModel`` (see
            :class:`~dode.denoisers.DiffusersDenoiser`), ``image_size`` for SDXL.

    Returns:
        The denoiser in ``eval()`` mode with gradients off for its weights; ``model_id`` is set
        to ``model``.

    Raises:
        ValueError: unknown name, missing folder, unloadable model; the message says the fix.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(
            "no model given; pass a registered name (" + ", ".join(sorted(MODELS)) + "), a "
            "local diffusers folder or a hub id."
        )
    dt = resolve_dtype(dtype)
    names = ", ".join(sorted(MODELS))
    path = os.path.expanduser(model)
    if model in MODELS:
        kw = {"dtype": dt, **kwargs}
        if model != "gmm-digits":
            kw["sigma_to_t"] = sigma_to_t
        den = MODELS[model](**kw)
    elif os.path.isdir(path) or (model.count("/") == 1 and not model.startswith((".", "~"))):
        # A local diffusers folder, or a hub id "org/name": a Stable Diffusion (XL) pipeline
        # (model_index.json with unet, vae and a text encoder) or a UNet2DModel DDPM.
        if is_latent_pipeline(path, **_hub_kwargs(kwargs)):
            den = LatentDiffusionDenoiser.from_pretrained(
                path, sigma_to_t=sigma_to_t, model_dtype=dt, **kwargs
            )
        else:
            den = DiffusersDenoiser.from_pretrained(
                path, sigma_to_t=sigma_to_t, torch_dtype=dt, **kwargs
            )
        den.model_id = model
    elif model.startswith((os.path.sep, ".", "~")) or os.path.sep in model:
        raise ValueError(
            f"model folder {path!r} does not exist. Pass a folder written by diffusers' "
            "save_pretrained() (with unet/ and scheduler/, or config.json and "
            "scheduler_config.json), a hub id such as 'google/ddpm-cifar10-32', or a "
            f"registered name ({names})."
        )
    elif ":" in model:
        den = import_factory(model)(**kwargs)
        if not isinstance(den, Denoiser):
            raise ValueError(
                f"{model!r} returned {type(den).__name__}, not a dode.denoisers.Denoiser; wrap "
                "your network with CallableDenoiser or DiffusersDenoiser."
            )
    else:
        raise ValueError(
            f"unknown model {model!r}: not a registered name ({names}), not an existing folder "
            "and not a hub id (org/name). Pass one of those, or 'package.module:function'."
        )
    den.eval().requires_grad_(False)
    if getattr(den, "model_id", None) is None:
        den.model_id = model
    if (model in MODELS or ":" in model) and getattr(den, "weights_spec", None) is None:
        # What identifies a factory's model when no tensor does (dode.files.weights.weights_hash).
        den.weights_spec = {"factory": model, "options": kwargs, "sigma_to_t": sigma_to_t}
    return den
