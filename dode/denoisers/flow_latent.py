"""Latent text-to-image rectified flows: Stable Diffusion 3 / 3.5 and FLUX in diffusers format.

Both are :class:`~dode.denoisers.FlowDenoiser` s on VAE latents: the network predicts the
velocity ``v ≈ ε − x0`` of ``x_t = (1 − t) x0 + t ε`` (see :mod:`dode.denoisers.flow` for the
mapping to σ-space and :meth:`~dode.denoisers.FlowDenoiser.start` for the pipelines' t = 1
start). ``dode.sample`` returns denoised latents; :meth:`decode` turns them into images in
[−1, 1] with the VAE (``latents / scaling_factor + shift_factor``, as the pipelines do).

SD3 (:class:`SD3Denoiser`)
    ``SD3Transformer2DModel`` at timestep ``t·T``; text conditioning = ``prompt_embeds``
    ``[B, L, D]`` (CLIP-L/G + T5) and ``pooled_prompt_embeds`` ``[B, P]``. Classifier-free
    guidance on the velocity from one forward of ``2B`` (negative rows first, as
    ``StableDiffusion3Pipeline``). The grid's shift is the scheduler's ``shift`` (3.0 for SD3)::

        den = SD3Denoiser.from_pretrained("stabilityai/stable-diffusion-3-medium-diffusers",
                                          model_dtype=torch.float16).to("cuda")
        bound = den.bind(["a red cube"] * 4, guidance_scale=7.0)        # text encoders loaded
        # or: den.bind({"prompt_embeds": pe, "pooled_prompt_embeds": ppe,
        #               "negative_prompt_embeds": npe, "negative_pooled_prompt_embeds": nppe}, ...)
        noise, sigmas = bound.start(latents, flow_sigmas(28, shift=den.shift))
        images = den.decode(dode.sample(bound, "dpm_solver_pp", noise, sigmas))

FLUX (:class:`FluxDenoiser`)
    ``FluxTransformer2DModel`` at time ``t``. Guidance-distilled: the *embedded* guidance
    (FluxPipeline's ``guidance_scale``, default 3.5) is an input of the network, ``bind(cond,
    guidance=g)`` or the model option ``guidance``; there is no unconditional pass, so bind's
    CFG scale ``guidance_scale`` stays 1. dode's state is the unpacked latent
    ``[B, C, h, w]`` (``C = in_channels / 4``); the network sees it packed into 2×2 patches
    ``[B, h/2·w/2, 4C]`` with ``img_ids`` / ``txt_ids``, exactly as ``FluxPipeline``. The grid is
    shifted by μ from the image sequence length (:attr:`FluxDenoiser.mu`)::

        den = FluxDenoiser.from_pretrained("black-forest-labs/FLUX.1-dev",
                                           model_dtype=torch.bfloat16).to("cuda")
        bound = den.bind(["a red cube"] * 4, guidance=3.5)  # the default: den.guidance
        noise, sigmas = bound.start(latents, flow_sigmas(8, mu=den.mu, spacing="flux"))

    Pipeline latents are packed; :meth:`FluxDenoiser.pack` / :meth:`FluxDenoiser.unpack` convert.

Prompts as strings need the pipeline's text encoders (loaded by ``from_pretrained`` when the
folder has them; prompts are encoded by the diffusers pipeline's own ``encode_prompt``).
Embeddings can always be passed directly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..grids.schedules import flux_mu
from .base import Denoiser
from .flow import FlowDenoiser
from .guidance import Conditioning, check_guidance
from .vp import PipelineFolder, vae_decode

__all__ = ["SD3Denoiser", "FluxDenoiser"]

_EMBED_KEYS = ("prompt_embeds", "pooled_prompt_embeds")
_NEG_KEYS = ("negative_prompt_embeds", "negative_pooled_prompt_embeds")


def _is_prompts(obj: Any) -> bool:
    return isinstance(obj, str) or (
        isinstance(obj, (list, tuple)) and bool(obj) and all(isinstance(o, str) for o in obj)
    )


class _LatentFlow(FlowDenoiser):
    """Shared parts of the SD3 and FLUX adapters: VAE decoding, prompts, loading."""

    _pipeline_class = ""
    _encoder_names: tuple[tuple[str, str], ...] = ()  # (module name, transformers class)

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module | None,
        sample_shape: tuple[int, ...],
        num_train_timesteps: int,
        scheduler_config: dict | None,
        text_encoders: dict[str, Any] | None,
        model_id: str | None,
    ) -> None:
        super().__init__(sample_shape, t_min=1 / num_train_timesteps)
        self.transformer = transformer.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None
        self.num_train_timesteps = int(num_train_timesteps)
        self.scheduler_config = dict(scheduler_config or {})
        self.model_id = model_id
        self.conditional = True
        self.text_conditional = True
        parts = dict(text_encoders or {})
        self.text_encoders = nn.ModuleDict(
            {
                k: v.eval().requires_grad_(False)
                for k, v in parts.items()
                if isinstance(v, nn.Module)
            }
        )
        self._text_parts = parts  # encoders and tokenizers, for the pipeline's encode_prompt
        self._pipe = None

    # ---- conditioning ------------------------------------------------------------------------

    def describe_conditioning(self) -> str:
        return "(prompt_embeds + pooled_prompt_embeds)"

    def conditioning(self, prompt_embeds: Tensor, pooled_prompt_embeds: Tensor) -> Conditioning:
        """The network's conditioning rows from the pipeline's embeddings."""
        for name, t, nd in (
            ("prompt_embeds", prompt_embeds, 3),
            ("pooled_prompt_embeds", pooled_prompt_embeds, 2),
        ):
            if not isinstance(t, Tensor) or t.ndim != nd:
                raise ValueError(
                    f"{name} must be a tensor with {nd} dimensions (batch first), got "
                    f"{getattr(t, 'shape', type(t).__name__)}."
                )
        if len(prompt_embeds) != len(pooled_prompt_embeds):
            raise ValueError(
                f"{len(prompt_embeds)} prompt_embeds but {len(pooled_prompt_embeds)} "
                "pooled_prompt_embeds; give one row of each per prompt."
            )
        return Conditioning(
            {"encoder_hidden_states": prompt_embeds, "pooled_projections": pooled_prompt_embeds}
        )

    def _embeds(self, obj: Any, what: str) -> Conditioning:
        if isinstance(obj, Conditioning):
            return obj
        if isinstance(obj, dict) and all(k in obj for k in _EMBED_KEYS):
            return self.conditioning(obj["prompt_embeds"], obj["pooled_prompt_embeds"])
        if (
            isinstance(obj, (tuple, list))
            and len(obj) == 2
            and all(isinstance(o, Tensor) for o in obj)
        ):
            return self.conditioning(*obj)
        raise ValueError(
            f"{what} must be prompts (strings), a dict with prompt_embeds and "
            f"pooled_prompt_embeds, a (prompt_embeds, pooled_prompt_embeds) pair or a "
            f"Conditioning; got {type(obj).__name__}."
        )

    def _pipeline(self) -> Any:
        if not self._text_parts:
            raise ValueError(
                f"{type(self).__name__} has no text encoders, so it cannot encode prompts; pass "
                "embeddings instead (bind({'prompt_embeds': ..., 'pooled_prompt_embeds': ...})), "
                "or load a pipeline folder that has its text encoders."
            )
        if self._pipe is None:
            import diffusers

            cls = getattr(diffusers, self._pipeline_class)
            names = [n for pair in self._encoder_names for n in pair]
            parts = {n: self._text_parts.get(n) for n in names}
            self._pipe = cls(transformer=self.transformer, vae=self.vae, scheduler=None, **parts)
        return self._pipe

    def _text_device(self) -> torch.device:
        enc = next(iter(self.text_encoders.values()), None)
        return next(enc.parameters()).device if enc is not None else torch.device("cpu")

    # ---- images ------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: Tensor, batch_size: int | None = 8) -> Tensor:
        """Images in [−1, 1] (float32, ``[B, 3, H, W]``) from denoised latents (σ = 0)."""
        if self.vae is None:
            raise ValueError(f"{type(self).__name__} was built without a VAE; cannot decode.")
        if latents.ndim != 4 or tuple(latents.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"decode takes latents [B, {', '.join(map(str, self.sample_shape))}], got "
                f"{tuple(latents.shape)}."
            )
        return vae_decode(self.vae, latents, batch_size)

    # ---- loading -----------------------------------------------------------------------------

    @classmethod
    def _load_parts(
        cls,
        path_or_id: str | os.PathLike,
        transformer_class: str,
        model_dtype: torch.dtype | None,
        load_text_encoders: bool,
        kwargs: dict,
    ) -> tuple[str, nn.Module, nn.Module | None, dict, dict]:
        import diffusers
        import transformers
        from diffusers import FlowMatchEulerDiscreteScheduler

        if isinstance(model_dtype, str):  # from configs: "float16", "bfloat16", ...
            if not isinstance(getattr(torch, model_dtype, None), torch.dtype):
                raise ValueError(f"unknown model_dtype {model_dtype!r}; use e.g. 'bfloat16'.")
            model_dtype = getattr(torch, model_dtype)
        folder = PipelineFolder(
            path_or_id,
            cls._example,
            cls._pipeline_class,
            f"{cls._pipeline_class} ({transformer_class} in transformer/)",
            model_dtype,
            kwargs,
        )
        path, index, present, load = folder.path, folder.index, folder.present, folder.load
        if not present("transformer"):
            raise ValueError(
                f"the pipeline {path!r} has no transformer/; it is not a {cls._pipeline_class}."
            )
        transformer = load("transformer", getattr(diffusers, transformer_class))
        vae = load("vae", diffusers.AutoencoderKL) if present("vae") else None
        sched = load("scheduler", FlowMatchEulerDiscreteScheduler, dtype=False)
        parts: dict[str, Any] = {}
        if load_text_encoders:
            for enc_name, tok_name in cls._encoder_names:
                if present(enc_name) and present(tok_name):
                    parts[enc_name] = load(enc_name, getattr(transformers, index[enc_name][1]))
                    parts[tok_name] = load(
                        tok_name, getattr(transformers, index[tok_name][1]), dtype=False
                    )
        return path, transformer, vae, dict(sched.config), parts


class SD3Denoiser(_LatentFlow):
    """Stable Diffusion 3 / 3.5: an ``SD3Transformer2DModel`` rectified flow on VAE latents.

    Args:
        transformer: the ``SD3Transformer2DModel``.
        vae: the ``AutoencoderKL`` (with ``shift_factor``), used by :meth:`decode` only.
        num_train_timesteps: T (the network sees timestep ``t·T``).
        shift: the scheduler's static shift (build grids with ``flow_sigmas(n, shift=...)``).
        latent_size: ``(h, w)`` of the latents (default: the transformer's ``sample_size``, as
            the pipeline's default resolution).
        text_encoders: optional ``{"text_encoder": ..., "tokenizer": ..., "text_encoder_2":
            ..., "tokenizer_2": ..., "text_encoder_3": ..., "tokenizer_3": ...}`` for string
            prompts (encoded by ``StableDiffusion3Pipeline.encode_prompt``).
        model_id: where the model came from.
        max_sequence_length: T5 tokens for string prompts (the pipeline's default 256).
    """

    _pipeline_class = "StableDiffusion3Pipeline"
    _example = "stabilityai/stable-diffusion-3-medium-diffusers"
    _encoder_names = (
        ("text_encoder", "tokenizer"),
        ("text_encoder_2", "tokenizer_2"),
        ("text_encoder_3", "tokenizer_3"),
    )

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module | None = None,
        num_train_timesteps: int = 1000,
        shift: float = 3.0,
        latent_size: tuple[int, int] | None = None,
        text_encoders: dict[str, Any] | None = None,
        model_id: str | None = None,
        max_sequence_length: int = 256,
    ) -> None:
        cfg = transformer.config
        size = latent_size if latent_size is not None else cfg.sample_size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        super().__init__(
            transformer,
            vae,
            (cfg.in_channels, *hw),
            num_train_timesteps,
            {"shift": shift},
            text_encoders,
            model_id,
        )
        self.shift = float(shift)
        self.has_unconditional = True
        self.max_sequence_length = int(max_sequence_length)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        model_dtype: torch.dtype | None = None,
        latent_size: tuple[int, int] | None = None,
        text_encoders: bool = True,
        **kwargs,
    ) -> SD3Denoiser:
        """Load a ``StableDiffusion3Pipeline`` folder or hub id (``transformer/``, ``vae/``,
        ``scheduler/``; the text encoders too when present and ``text_encoders=True``).

        Args:
            model_dtype: dtype of the networks; the solver integrates in the noise's dtype.
            **kwargs: passed to every ``from_pretrained`` (``revision``, ``cache_dir``, …).
        """
        path, tr, vae, sched, parts = cls._load_parts(
            path_or_id, "SD3Transformer2DModel", model_dtype, text_encoders, kwargs
        )
        return cls(
            tr,
            vae,
            num_train_timesteps=sched.get("num_train_timesteps", 1000),
            shift=sched.get("shift", 3.0),
            latent_size=latent_size,
            text_encoders=parts,
            model_id=path,
        )

    def encode_prompts(
        self, prompts: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None
    ) -> tuple[Conditioning, Conditioning]:
        """Conditional and unconditional rows for string prompts (the pipeline's
        ``encode_prompt``; negative default ``""``)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        neg = "" if negative_prompt is None else negative_prompt
        neg = [neg] * len(prompts) if isinstance(neg, str) else list(neg)
        if len(neg) != len(prompts):
            raise ValueError(
                f"{len(neg)} negative prompts for {len(prompts)} prompts; give one for all or "
                "one per prompt."
            )
        with torch.no_grad():
            pe, npe, ppe, nppe = self._pipeline().encode_prompt(
                prompt=prompts,
                prompt_2=None,
                prompt_3=None,
                negative_prompt=neg,
                do_classifier_free_guidance=True,
                device=self._text_device(),
                max_sequence_length=self.max_sequence_length,
            )
        return self.conditioning(pe, ppe), self.conditioning(npe, nppe)

    def make_conditioning(
        self, cond: Any, negative_prompt: Any, guided: bool
    ) -> tuple[Conditioning, Conditioning | None]:
        if _is_prompts(cond):
            if negative_prompt is not None and not _is_prompts(negative_prompt):
                raise ValueError("with string prompts, negative_prompt must be strings too.")
            c, u = self.encode_prompts(cond, negative_prompt)
            return c, u if guided else None
        c = self._embeds(cond, "cond")
        if not guided:
            return c, None
        neg = negative_prompt
        if neg is None and isinstance(cond, dict) and all(k in cond for k in _NEG_KEYS):
            neg = {"prompt_embeds": cond[_NEG_KEYS[0]], "pooled_prompt_embeds": cond[_NEG_KEYS[1]]}
        if neg is None:
            raise ValueError(
                "guidance needs the unconditional rows: pass negative_prompt_embeds and "
                "negative_pooled_prompt_embeds (in the cond dict, or as negative_prompt={"
                "'prompt_embeds': ..., 'pooled_prompt_embeds': ...}), or use guidance_scale=1."
            )
        if _is_prompts(neg):
            raise ValueError(
                "a string negative_prompt needs string prompts (the text encoders encode both); "
                "with embeddings, pass negative embeddings."
            )
        return c, self._embeds(neg, "negative_prompt")

    def velocity(self, x_t: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        if cond is None:
            raise ValueError(
                "SD3Denoiser is text-conditional: bind the prompts first, "
                "den.bind(prompts_or_embeddings, guidance_scale=w)."
            )
        b = x_t.shape[0]
        p = next(self.transformer.parameters())
        timestep = (t.reshape(-1) * self.num_train_timesteps).to(torch.float32).expand(b)
        kw = cond.to(x_t.device, p.dtype).kwargs
        out = self.transformer(
            hidden_states=x_t.to(p.dtype),
            timestep=timestep.to(x_t.device),
            encoder_hidden_states=kw["encoder_hidden_states"],
            pooled_projections=kw["pooled_projections"],
            return_dict=False,
        )[0]
        return out.to(x_t.dtype)


class FluxDenoiser(_LatentFlow):
    """FLUX.1: a guidance-distilled ``FluxTransformer2DModel`` rectified flow on packed latents.

    Args:
        transformer: the ``FluxTransformer2DModel``.
        vae: the ``AutoencoderKL`` (``shift_factor``, ``scaling_factor``), for :meth:`decode`.
        image_size: ``(H, W)`` in pixels (default 1024², the pipeline's); the latents are
            ``[in_channels / 4, 2·⌊H / 2f⌋, 2·⌊W / 2f⌋]`` with f the VAE factor.
        scheduler_config: the ``FlowMatchEulerDiscreteScheduler`` config (``base_shift``,
            ``max_shift``, ``base_image_seq_len``, ``max_image_seq_len`` for :attr:`mu`).
        text_encoders: optional ``{"text_encoder": CLIP, "tokenizer": ..., "text_encoder_2":
            T5, "tokenizer_2": ...}`` for string prompts.
        model_id: where the model came from.
        max_sequence_length: T5 tokens for string prompts (the pipeline's default 512).
        guidance: the embedded guidance bound by default (FluxPipeline's ``guidance_scale``).
    """

    _pipeline_class = "FluxPipeline"
    _example = "black-forest-labs/FLUX.1-dev"
    _encoder_names = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))

    def __init__(
        self,
        transformer: nn.Module,
        vae: nn.Module | None = None,
        image_size: tuple[int, int] | int = 1024,
        scheduler_config: dict | None = None,
        text_encoders: dict[str, Any] | None = None,
        model_id: str | None = None,
        max_sequence_length: int = 512,
        guidance: float = 3.5,
    ) -> None:
        cfg = transformer.config
        if cfg.in_channels % 4:
            raise ValueError(
                f"a FLUX transformer packs 2×2 latent patches: in_channels ({cfg.in_channels}) "
                "must be a multiple of 4."
            )
        f = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        h, w = (2 * (int(s) // (f * 2)) for s in hw)
        if h < 2 or w < 2:
            raise ValueError(f"image_size {hw} is too small for the VAE factor {f}.")
        sched = dict(scheduler_config or {})
        super().__init__(
            transformer,
            vae,
            (cfg.in_channels // 4, h, w),
            sched.get("num_train_timesteps", 1000),
            sched,
            text_encoders,
            model_id,
        )
        self.image_size = hw
        self.guidance_embeds = bool(getattr(cfg, "guidance_embeds", False))
        self.has_unconditional = False
        self.max_sequence_length = int(max_sequence_length)
        self.guidance = float(guidance)

    @property
    def image_seq_len(self) -> int:
        """Number of packed latent tokens ``h/2 · w/2``."""
        _, h, w = self.sample_shape
        return (h // 2) * (w // 2)

    @property
    def mu(self) -> float:
        """FLUX's dynamic shift μ for this resolution (:func:`dode.grids.schedules.flux_mu` with the
        scheduler config's values, as ``FluxPipeline``)."""
        c = self.scheduler_config
        return flux_mu(
            self.image_seq_len,
            c.get("base_image_seq_len", 256),
            c.get("max_image_seq_len", 4096),
            c.get("base_shift", 0.5),
            c.get("max_shift", 1.15),
        )

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        model_dtype: torch.dtype | None = None,
        image_size: tuple[int, int] | int = 1024,
        text_encoders: bool = True,
        guidance: float = 3.5,
        **kwargs,
    ) -> FluxDenoiser:
        """Load a ``FluxPipeline`` folder or hub id (``transformer/``, ``vae/``, ``scheduler/``;
        the text encoders too when present and ``text_encoders=True``)."""
        path, tr, vae, sched, parts = cls._load_parts(
            path_or_id, "FluxTransformer2DModel", model_dtype, text_encoders, kwargs
        )
        return cls(tr, vae, image_size, sched, parts, path, guidance=guidance)

    # ---- packing (FluxPipeline._pack_latents / _unpack_latents) --------------------------------

    @staticmethod
    def pack(latents: Tensor) -> Tensor:
        """``[B, C, h, w]`` → ``[B, h/2 · w/2, 4C]`` (2×2 patches, FluxPipeline's order)."""
        b, c, h, w = latents.shape
        x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    def unpack(self, packed: Tensor) -> Tensor:
        """``[B, h/2 · w/2, 4C]`` → ``[B, C, h, w]`` for this denoiser's latent size."""
        c, h, w = self.sample_shape
        b = packed.shape[0]
        x = packed.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, h, w)

    def _ids(self, txt_len: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        _, h, w = self.sample_shape
        img = torch.zeros(h // 2, w // 2, 3)
        img[..., 1] += torch.arange(h // 2)[:, None]
        img[..., 2] += torch.arange(w // 2)[None, :]
        img_ids = img.reshape(-1, 3).to(device=device, dtype=dtype)
        return img_ids, torch.zeros(txt_len, 3, device=device, dtype=dtype)

    # ---- conditioning ------------------------------------------------------------------------

    def describe_conditioning(self) -> str:
        return "(prompt_embeds + pooled_prompt_embeds; embedded guidance, no CFG)"

    def bind(
        self,
        cond: Any = None,
        *,
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        negative_prompt: Any = None,
        guidance: float | None = None,
    ) -> Denoiser:
        """Bind prompts (or ``prompt_embeds`` + ``pooled_prompt_embeds``) and the embedded
        guidance.

        FLUX is guidance-distilled: its guidance value (FluxPipeline's ``guidance_scale``) is a
        network input, in every row — ``guidance`` here, default :attr:`guidance` (3.5) — and
        there is no unconditional pass. ``guidance_scale`` keeps its meaning for every dode
        model, the CFG scale w, and must stay 1 (no negative prompt, no rescale). Models
        without a guidance embedding (FLUX.1-schnell) ignore ``guidance``.
        """
        check_guidance(guidance_scale, guidance_rescale)
        g = self.guidance if guidance is None else float(guidance)
        if cond is None:
            raise ValueError(
                "FluxDenoiser is text-conditional: pass prompts or {'prompt_embeds': ..., "
                "'pooled_prompt_embeds': ...} to bind()."
            )
        if guidance_scale != 1.0 or negative_prompt is not None or guidance_rescale:
            raise ValueError(
                "FLUX is guidance-distilled: its guidance (FluxPipeline's guidance_scale) is a "
                f"network input, bind(cond, guidance={guidance_scale if guidance_scale != 1 else g}"
                ") or the model option guidance; there is no unconditional pass, so CFG "
                "(guidance_scale != 1), negative_prompt and guidance_rescale do not apply."
            )
        if _is_prompts(cond):
            prompts = [cond] if isinstance(cond, str) else list(cond)
            with torch.no_grad():
                pe, ppe, _ = self._pipeline().encode_prompt(
                    prompt=prompts,
                    prompt_2=None,
                    device=self._text_device(),
                    max_sequence_length=self.max_sequence_length,
                )
            c = self.conditioning(pe, ppe)
        else:
            c = self._embeds(cond, "cond")
        if self.guidance_embeds and "guidance" not in c.kwargs:
            ref = c.kwargs["pooled_projections"]
            rows = torch.full((len(c),), g, dtype=torch.float32, device=ref.device)
            c = Conditioning({**c.kwargs, "guidance": rows})
        bound = self.guided(c, None, 1.0, 0.0)
        bound.embedded_guidance = g if self.guidance_embeds else None
        return bound

    def velocity(self, x_t: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        if cond is None:
            raise ValueError(
                "FluxDenoiser is text-conditional: bind the prompts first, "
                "den.bind(prompts_or_embeddings, guidance_scale=3.5)."
            )
        b = x_t.shape[0]
        p = next(self.transformer.parameters())
        kw = dict(cond.to(x_t.device, p.dtype).kwargs)
        guidance = kw.pop("guidance", None)
        if guidance is not None:
            guidance = guidance.to(torch.float32)
        img_ids, txt_ids = self._ids(kw["encoder_hidden_states"].shape[1], x_t.device, p.dtype)
        out = self.transformer(
            hidden_states=self.pack(x_t.to(p.dtype)),
            timestep=t.reshape(-1).to(torch.float32).expand(b).to(p.dtype),
            guidance=guidance,
            pooled_projections=kw["pooled_projections"],
            encoder_hidden_states=kw["encoder_hidden_states"],
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return self.unpack(out).to(x_t.dtype)
