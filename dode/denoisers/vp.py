"""Discrete VP (DDPM) models in diffusers format, seen in σ-space.

Pixel-space ``UNet2DModel`` DDPMs, unconditional or class-conditional. A class-conditional
UNet (``num_class_embeds`` set) takes one label per sample. For classifier-free guidance the
model needs an unconditional input: by dode's convention a model trained with label dropout
has ``num_class_embeds = num_classes + 1`` and the extra, last index ``num_classes`` is the
"null" label (pass ``num_classes`` to say so). A model whose ``num_class_embeds`` equals its
number of classes has no unconditional input: binding it with ``guidance_scale != 1`` is an
error.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..grids.schedules import vp_sigmas
from .base import quiet_loading
from .guidance import ConditionalDenoiser, Conditioning

__all__ = [
    "ClassLabelDenoiser",
    "DiffusersDenoiser",
    "vp_from_native",
    "vp_prediction",
    "vp_scale",
    "vp_sigma_to_t",
]


def resolve_model_path(path_or_id: str | os.PathLike, example: str) -> str:
    """``path_or_id`` as a string; ``ValueError`` for a local-looking path that does not exist."""
    path = os.path.expanduser(str(path_or_id))
    # A hub id is "org/name"; only an absolute or explicitly relative path is surely local.
    looks_local = path.startswith((os.path.sep, ".", "~")) or os.path.isdir(path)
    if looks_local and not os.path.isdir(path):
        raise ValueError(
            f"model folder {path!r} does not exist; pass a folder written by "
            f"save_pretrained() or a hub id such as {example!r}."
        )
    return path


class PipelineFolder:
    """A diffusers pipeline folder (or hub id) whose parts load one by one, each failure with one
    clear message.

    Args:
        path_or_id: the folder (with ``model_index.json``) or hub id.
        example: a hub id to name in the error for a missing folder.
        pipeline_class: the pipeline class that writes such folders (named in errors).
        holds: what the folder must hold, for the error of a part that does not load.
        model_dtype: dtype the networks are cast to (``None``: as stored).
        kwargs: passed to every ``from_pretrained`` (``revision``, ``cache_dir``, …).
    """

    def __init__(
        self,
        path_or_id: str | os.PathLike,
        example: str,
        pipeline_class: str,
        holds: str,
        model_dtype: torch.dtype | None,
        kwargs: dict,
    ) -> None:
        from diffusers import DiffusionPipeline

        self.path = path = resolve_model_path(path_or_id, example)
        self.holds, self.model_dtype, self.kwargs = holds, model_dtype, kwargs
        try:
            with quiet_loading():
                self.index = DiffusionPipeline.load_config(path, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"{path!r} is not a diffusers pipeline (no model_index.json): {e}. Pass a folder "
                f"written by {pipeline_class}.save_pretrained() or a hub id; if it is a hub "
                f"id, download it first (huggingface-cli download {path} --local-dir DIR)."
            ) from None

    def present(self, name: str) -> bool:
        """Whether ``model_index.json`` lists the part ``name``."""
        entry = self.index.get(name)
        return isinstance(entry, (list, tuple)) and entry[0] is not None

    def load(self, name: str, loader: Any, dtype: bool = True) -> Any:
        """``loader.from_pretrained`` on the subfolder ``name`` (cast to ``model_dtype`` if
        ``dtype``)."""
        try:
            with quiet_loading():
                obj = loader.from_pretrained(self.path, subfolder=name, **self.kwargs)
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"could not load {name}/ of the pipeline {self.path!r} ({e}); the folder must "
                f"hold a {self.holds}."
            ) from None
        model_dtype = self.model_dtype
        return obj.to(model_dtype) if dtype and model_dtype is not None else obj


@torch.no_grad()
def vae_decode(vae: nn.Module, latents: Tensor, batch_size: int | None = 8) -> Tensor:
    """Images in [−1, 1] (float32, ``[B, 3, H, W]``) from denoised latents: the one VAE decode
    of the latent models (Stable Diffusion/SDXL, SD3, FLUX).

    Latents are un-normalised as the VAE's config says -- with ``latents_mean`` /
    ``latents_std`` when it has them (SDXL's pipeline), else divided by ``scaling_factor`` and
    shifted by ``shift_factor`` (SD3, FLUX; none for SD) -- and decoded in batches of
    ``batch_size`` (``None``: all at once) in the VAE's dtype.
    """
    cfg = vae.config
    param = next(vae.parameters())
    z = latents.to(device=param.device, dtype=torch.float32)
    mean, std = getattr(cfg, "latents_mean", None), getattr(cfg, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        mean = torch.tensor(mean, device=z.device).view(shape)
        std = torch.tensor(std, device=z.device).view(shape)
        z = z * std / cfg.scaling_factor + mean
    else:
        z = z / cfg.scaling_factor
        shift = getattr(cfg, "shift_factor", None)
        if shift:
            z = z + shift
    chunks = z.split(batch_size) if batch_size else (z,)
    return torch.cat([vae.decode(c.to(param.dtype)).sample.float() for c in chunks]).clamp(-1, 1)


def unet_sample_shape(unet: nn.Module) -> tuple[int, ...] | None:
    """``(C, H, W)`` of a sample from a diffusers UNet's config (``None`` without
    ``sample_size``)."""
    cfg = getattr(unet, "config", None)
    if cfg is None or getattr(cfg, "sample_size", None) is None:
        return None
    size = cfg.sample_size
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return (cfg.in_channels, *hw)


def load_alphas_cumprod(path: str, errors: list[str], **kwargs) -> tuple[Tensor, str] | None:
    """The ᾱ table and prediction type from a scheduler config (``scheduler/`` or flat)."""
    from diffusers import DDPMScheduler

    for sub in (None, "scheduler"):
        try:
            with quiet_loading():
                sched = DDPMScheduler.from_pretrained(path, subfolder=sub, **kwargs)
            return sched.alphas_cumprod.to(torch.float64), sched.config.prediction_type
        except Exception as e:  # noqa: BLE001 - collect and report by the caller
            errors.append(f"scheduler (subfolder={sub}): {e}")
    return None


def scheduler_data_range(path: str, **kwargs) -> tuple[float, float] | None:
    """The data range a pixel model's scheduler config declares: ``(−r, r)`` where it sets
    ``clip_sample: true`` (``r = clip_sample_range``, default 1), else ``None``. The config is
    read as written (a missing ``clip_sample`` declares nothing, whatever a scheduler class's
    default)."""
    from diffusers import DDPMScheduler

    for sub in (None, "scheduler"):
        try:
            with quiet_loading():
                cfg = DDPMScheduler.load_config(path, subfolder=sub, **kwargs)
        except Exception:  # noqa: BLE001 - no config there: try the next layout
            continue
        if not cfg.get("clip_sample"):
            return None
        r = float(cfg.get("clip_sample_range") or 1.0)
        return (-r, r)
    return None


def vp_sigma_to_t(sigma: Tensor, log_sigmas: Tensor, mode: str) -> Tensor:
    """The timestep of a discrete VP model for σ (float64, shape of ``sigma`` flattened).

    ``mode="interp"``: linear interpolation of log σ over ``log_sigmas`` (the log σ table,
    ascending in t; clamped to its ends), as diffusers' Karras/Heun schedulers do; ``"snap"``:
    the index of the nearest table entry (exact parity with DDIM on integer timesteps).
    """
    log_s = sigma.to(torch.float64).reshape(-1).clamp(min=1e-30).log()
    if mode == "snap":
        return (log_s[:, None] - log_sigmas[None, :]).abs().argmin(dim=1).to(torch.float64)
    log_s = log_s.clamp(log_sigmas[0], log_sigmas[-1])
    hi = torch.searchsorted(log_sigmas, log_s).clamp(1, len(log_sigmas) - 1)
    lo = hi - 1
    w = (log_s - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
    return lo.to(torch.float64) + w


def vp_scale(sigma: Tensor, x: Tensor) -> Tensor:
    """``1/sqrt(1 + σ²)`` in ``x``'s dtype: the network's input is ``x_vp = x · vp_scale``."""
    return 1 / (1 + sigma.to(x.dtype) ** 2).sqrt()


def vp_prediction(prediction_type: str) -> str:
    """What a VP network's native output becomes (:func:`vp_from_native`): ``"x0"`` for
    ``"sample"``, ``"eps"`` for ``"epsilon"`` and ``"v_prediction"``."""
    return "x0" if prediction_type == "sample" else "eps"


def vp_from_native(out: Tensor, x: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """A VP network's native output (ε, v or x0 at ``x_vp = x / sqrt(1 + σ²)``) as
    :func:`vp_prediction` says (ε̂ for ε and v, x̂0 for x0); ``sigma`` is [B, 1, ...] in x's dtype.

    The one conversion: :class:`DiffusersDenoiser` and :class:`dode.hosts.diffusers.DODEScheduler`
    both call it.
    """
    if prediction_type == "v_prediction":
        # VP: x_vp = α x0 + σ_vp ε, v = α ε − σ_vp x0, α = 1/sqrt(1+σ²), σ_vp = σ α.
        alpha = vp_scale(sigma, x)
        return alpha * out + sigma * alpha * (x * alpha)
    return out


class ClassLabelDenoiser(ConditionalDenoiser):
    """The class-label convention of diffusers' class-conditional ``UNet2DModel``
    (``num_class_embeds``), shared by the VP (:class:`DiffusersDenoiser`) and flow
    (:class:`~dode.denoisers.DiffusersFlowDenoiser`) adapters: integer labels, and with
    ``num_classes = num_class_embeds − 1`` the last index as the null label used for
    classifier-free guidance. A subclass calls :meth:`_init_classes` from its constructor.
    """

    def _init_classes(self, cfg: Any, num_classes: int | None) -> None:
        embeds = getattr(cfg, "num_class_embeds", None) if cfg is not None else None
        if getattr(cfg, "class_embed_type", None) is not None:
            raise ValueError(
                f"class_embed_type={cfg.class_embed_type!r} is not supported; dode takes "
                "class-conditional UNet2DModels with integer labels (num_class_embeds)."
            )
        self.num_classes: int | None = None
        self.null_label: int | None = None
        if embeds is None:
            if num_classes is not None:
                raise ValueError(
                    f"num_classes={num_classes} was given but the UNet has no class embedding "
                    "(num_class_embeds is None): it is unconditional; drop num_classes."
                )
            return
        n = int(embeds) if num_classes is None else int(num_classes)
        if n not in (embeds, embeds - 1) or n < 1:
            raise ValueError(
                f"num_classes must be num_class_embeds ({embeds}: no null label) or "
                f"num_class_embeds − 1 ({embeds - 1}: the last index is the null label for "
                f"guidance), got {num_classes}."
            )
        self.num_classes = n
        self.null_label = n if n == embeds - 1 else None
        self.conditional = True
        self.has_unconditional = self.null_label is not None

    def describe_conditioning(self) -> str:
        if self.num_classes is None:
            return "(unconditional)"
        null = f", null label {self.null_label}" if self.null_label is not None else ""
        return f"(class labels 0..{self.num_classes - 1}{null})"

    def make_conditioning(
        self, cond: Any, negative_prompt: Any, guided: bool
    ) -> tuple[Conditioning, Conditioning | None]:
        if isinstance(cond, Conditioning):
            labels = cond.kwargs.get("class_labels")
            if labels is None:
                raise ValueError("a class-conditional model needs Conditioning with class_labels.")
        else:
            if isinstance(cond, str) or (
                isinstance(cond, (list, tuple)) and any(isinstance(c, str) for c in cond)
            ):
                raise ValueError(
                    "a prompt was given for a class-conditional model; pass integer class "
                    f"labels {self.describe_conditioning()} instead."
                )
            labels = torch.as_tensor(cond)
            if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise ValueError(f"class labels must be integers, got {labels.dtype}.")
            labels = labels.reshape(-1).long()
        if negative_prompt is not None:
            raise ValueError(
                "negative_prompt is for text models; a class-conditional model's unconditional "
                "input is its null label."
            )
        if labels.numel() == 0:
            raise ValueError("no class labels given; pass one per sample (or one for all).")
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.numel():
            raise ValueError(
                f"class label {int(bad[0])} is out of range: the model has {self.num_classes} "
                f"classes, labels 0..{self.num_classes - 1}."
            )
        c = Conditioning({"class_labels": labels})
        u = (
            Conditioning({"class_labels": torch.full_like(labels, self.null_label)})
            if guided
            else None
        )
        return c, u


class DiffusersDenoiser(ClassLabelDenoiser):
    """A diffusers ``UNet2DModel`` trained as a discrete VP (DDPM) model, seen in σ-space.

    The network sees ``x_vp = x / sqrt(1 + σ²)`` at timestep ``t(σ)``; ``t`` comes from linear
    interpolation of log σ over the discrete table (``sigma_to_t="interp"``, as diffusers'
    Karras/Heun schedulers do) or from snapping to the nearest table entry (``"snap"``, exact
    parity with DDIM on integer timesteps).

    Args:
        unet: the network (kept frozen: ``eval()`` and ``requires_grad_(False)``).
        alphas_cumprod: the discrete ᾱ table, ascending in t.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        sigma_to_t: ``"interp"`` or ``"snap"``.
        model_id: where the model came from (hub id or folder), recorded in artifacts.
        num_classes: class-conditional UNets only: the number of real classes. Default:
            ``num_class_embeds`` (no null label, so no guidance); ``num_class_embeds − 1``
            makes the last index the null label used for classifier-free guidance.
    """

    def __init__(
        self,
        unet: nn.Module,
        alphas_cumprod: Tensor,
        prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon",
        sigma_to_t: Literal["interp", "snap"] = "interp",
        model_id: str | None = None,
        num_classes: int | None = None,
    ) -> None:
        table = vp_sigmas(alphas_cumprod)
        cfg = getattr(unet, "config", None)
        super().__init__(float(table[0]), float(table[-1]), unet_sample_shape(unet))
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; use 'epsilon', 'v_prediction' "
                "or 'sample'."
            )
        if sigma_to_t not in ("interp", "snap"):
            raise ValueError(f"sigma_to_t must be 'interp' or 'snap', got {sigma_to_t!r}.")
        self.unet = unet.eval().requires_grad_(False)
        self.prediction_type = prediction_type
        self.prediction = vp_prediction(prediction_type)
        self.sigma_to_t_mode = sigma_to_t
        self.model_id = model_id
        self.register_buffer("log_sigmas", table.log(), persistent=False)
        self.register_buffer(
            "alphas_cumprod", torch.as_tensor(alphas_cumprod, dtype=torch.float64), persistent=False
        )
        self._init_classes(cfg, num_classes)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        sigma_to_t: Literal["interp", "snap"] = "interp",
        torch_dtype: torch.dtype | None = None,
        num_classes: int | None = None,
        **kwargs,
    ) -> DiffusersDenoiser:
        """Load a UNet2DModel and its scheduler config from a hub id or a local folder.

        Accepts both layouts: a pipeline folder (``unet/`` and ``scheduler/`` subfolders) and a
        flat one (``config.json`` + ``scheduler_config.json``, as ``google/ddpm-cifar10-32``).
        ``num_classes``: see the class docstring (class-conditional models only).
        """
        from diffusers import UNet2DModel

        path = resolve_model_path(path_or_id, "google/ddpm-cifar10-32")
        errors: list[str] = []
        unet = None
        for sub in (None, "unet"):
            try:
                with quiet_loading():
                    unet = UNet2DModel.from_pretrained(
                        path, subfolder=sub, torch_dtype=torch_dtype, **kwargs
                    )
                unet_sub = sub
                break
            except Exception as e:  # noqa: BLE001 - collect and report below
                errors.append(f"unet (subfolder={sub}): {e}")
        sched = load_alphas_cumprod(path, errors, **kwargs)
        if unet is None or sched is None:
            raise ValueError(
                f"could not load a diffusers UNet2DModel and scheduler from {path!r}. If it is a hub "
                "id, check the network or download it first (huggingface-cli download "
                f"{path} --local-dir DIR) and pass DIR. Details: " + " | ".join(errors)
            )
        alphas_cumprod, prediction_type = sched
        den = cls(
            unet,
            alphas_cumprod,
            prediction_type=prediction_type,
            sigma_to_t=sigma_to_t,
            model_id=path,
            num_classes=num_classes,
        )
        den.weight_files = weight_files(path, unet_sub, kwargs)
        den.data_range = scheduler_data_range(path, **kwargs)
        return den

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Continuous (or snapped) timestep for σ, by log-σ interpolation over the table."""
        return vp_sigma_to_t(sigma, self.log_sigmas, self.sigma_to_t_mode)

    def round_sigma(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        if self.sigma_to_t_mode != "snap":
            return sigma
        t = self.sigma_to_t(sigma.reshape(-1)).long()
        return self.log_sigmas[t].exp().reshape(sigma.shape)

    def native(self, x: Tensor, sigma: Tensor, cond: Conditioning | None) -> Tensor:
        """The UNet's own output (ε, v or x0) at ``x_vp = x / sqrt(1 + σ²)``, ``t(σ)``."""
        s = sigma.reshape(-1)
        t = self.sigma_to_t(s)
        c_in = vp_scale(sigma, x)
        dtype = next(self.unet.parameters()).dtype
        x_in = (x * c_in).to(dtype)
        t_in = t.to(torch.float32) if self.sigma_to_t_mode == "interp" else t.round().long()
        kwargs = {} if cond is None else cond.to(x.device, dtype).kwargs
        return self.unet(x_in, t_in.to(x.device), **kwargs).sample.to(x.dtype)

    def from_native(self, out: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        return vp_from_native(out, x, sigma, self.prediction_type)


def weight_files(path: str, subfolder: str | None, kwargs: dict) -> tuple[str, ...]:
    """The weight files a diffusers model was loaded from (empty when unknown).

    A local folder: every ``*.safetensors`` / ``*.bin`` in it. A hub id: the cached
    ``diffusion_pytorch_model.safetensors`` of that subfolder (no network access).
    """
    folder = os.path.join(path, subfolder) if subfolder else path
    if os.path.isdir(folder):
        names = sorted(n for n in os.listdir(folder) if n.endswith((".safetensors", ".bin")))
        return tuple(os.path.join(folder, n) for n in names)
    if kwargs.get("variant") or kwargs.get("use_safetensors") is False:
        return ()
    try:
        from huggingface_hub import try_to_load_from_cache

        name = "diffusion_pytorch_model.safetensors"
        found = try_to_load_from_cache(
            path,
            f"{subfolder}/{name}" if subfolder else name,
            cache_dir=kwargs.get("cache_dir"),
            revision=kwargs.get("revision"),
        )
    except Exception:  # noqa: BLE001 - unknown file: the hash falls back to the tensors
        return ()
    return (found,) if isinstance(found, str) else ()
