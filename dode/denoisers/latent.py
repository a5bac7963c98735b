"""Latent text-to-image models: Stable Diffusion 1.x / 2.x and SDXL in diffusers format.

The solver works on latents: ``sample_shape`` is the latent shape ``(C, h, w)`` of the UNet and
``dode.sample`` returns latents (σ = 0: the denoised latents); :meth:`LatentDiffusionDenoiser.decode`
turns them into images in [−1, 1] with the VAE (its scaling factor), batched, once per image.
The network is the same discrete VP model as :class:`~dode.denoisers.DiffusersDenoiser` (ε or
v prediction, SD 2.x-v included), with the prompt embeddings as conditioning::

    den = LatentDiffusionDenoiser.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5",
                                                  model_dtype=torch.float16).to("cuda")
    bound = den.bind(["a red cube"] * 4, guidance_scale=7.5, negative_prompt="blurry")
    latents = dode.sample(bound, "dpm_solver_pp", noise.cuda(), sigmas)  # float32 integration
    images = den.decode(latents)                                         # [4, 3, 512, 512]

Prompt encoding follows the diffusers pipelines (``encode_prompt``): SD 1.x/2.x take the last
hidden state of the CLIP text encoder, padded to ``model_max_length``; the unconditional rows
are the negative prompt (default ``""``). SDXL concatenates the penultimate hidden states of
both text encoders, takes the pooled, projected output of the second, and adds the size/crop
ids ``(H, W, 0, 0, H, W)`` (``image_size``, default: the UNet's sample size × the VAE factor);
without a negative prompt its unconditional rows are zeros when the pipeline config says
``force_zeros_for_empty_prompt`` (SDXL base does). Each distinct prompt is encoded once and
cached (:meth:`LatentDiffusionDenoiser.encode_prompts`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .guidance import Conditioning
from .vp import DiffusersDenoiser, PipelineFolder, load_alphas_cumprod, vae_decode

__all__ = ["LatentDiffusionDenoiser"]


class LatentDiffusionDenoiser(DiffusersDenoiser):
    """Stable Diffusion 1.x / 2.x or SDXL: a text-conditional VP model on VAE latents.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        vae: the ``AutoencoderKL`` (used by :meth:`decode` only).
        text_encoders: ``[CLIPTextModel]`` (SD) or ``[CLIPTextModel,
            CLIPTextModelWithProjection]`` (SDXL; the first may be absent: ``[None, enc2]``).
        tokenizers: one CLIP tokenizer per text encoder.
        alphas_cumprod: the discrete ᾱ table (from the pipeline's scheduler config).
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (SD 2.x-v).
        sigma_to_t: ``"interp"`` or ``"snap"`` (see :class:`DiffusersDenoiser`).
        model_id: where the model came from.
        force_zeros_for_empty_prompt: SDXL: zero unconditional embeddings when no negative
            prompt is given (the pipeline config's flag).
        image_size: SDXL's ``original_size`` / ``target_size`` ``(H, W)`` in pixels.
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        text_encoders: Sequence[nn.Module | None],
        tokenizers: Sequence[Any],
        alphas_cumprod: Tensor,
        prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon",
        sigma_to_t: Literal["interp", "snap"] = "interp",
        model_id: str | None = None,
        force_zeros_for_empty_prompt: bool = False,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(unet, alphas_cumprod, prediction_type, sigma_to_t, model_id)
        cfg = unet.config
        if getattr(cfg, "time_cond_proj_dim", None) is not None:
            raise ValueError(
                "UNets with a guidance embedding (time_cond_proj_dim, LCM-style distilled "
                "models) are not supported; use a Stable Diffusion base model."
            )
        if len(text_encoders) != len(tokenizers) or not 1 <= len(text_encoders) <= 2:
            raise ValueError("give one tokenizer per text encoder (one for SD, two for SDXL).")
        self.xl = getattr(cfg, "addition_embed_type", None) == "text_time"
        if self.xl and len(text_encoders) != 2:
            raise ValueError(
                "an SDXL UNet (addition_embed_type='text_time') needs two text encoders and "
                "tokenizers (text_encoder, text_encoder_2); pass [None, enc2] without the first."
            )
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoders = nn.ModuleList(
            [
                e.eval().requires_grad_(False) if e is not None else nn.Identity()
                for e in text_encoders
            ]
        )
        self._has_encoder = [e is not None for e in text_encoders]
        self.tokenizers = list(tokenizers)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        h, w = self.sample_shape[1:] if self.sample_shape else (None, None)
        self.image_size = (
            tuple(image_size)
            if image_size is not None
            else (h * self.vae_scale_factor, w * self.vae_scale_factor)
        )
        if self.xl:
            proj = text_encoders[-1].config.projection_dim
            expected = unet.add_embedding.linear_1.in_features
            passed = cfg.addition_time_embed_dim * 6 + proj
            if expected != passed:
                raise ValueError(
                    f"the SDXL UNet expects added embeddings of size {expected} but the text "
                    f"encoder's projection ({proj}) and 6 time ids give {passed}; the UNet and "
                    "text_encoder_2 do not belong together."
                )
        self.conditional = True
        self.text_conditional = True
        self.has_unconditional = True
        self._prompt_cache: dict[str, tuple[Tensor, Tensor | None]] = {}

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        sigma_to_t: Literal["interp", "snap"] = "interp",
        model_dtype: torch.dtype | None = None,
        image_size: tuple[int, int] | None = None,
        **kwargs,
    ) -> LatentDiffusionDenoiser:
        """Load a ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` folder or hub id.

        Args:
            path_or_id: a pipeline folder (``save_pretrained`` output with ``model_index.json``,
                ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` and for
                SDXL ``text_encoder_2/``, ``tokenizer_2/``) or a hub id.
            model_dtype: dtype of the networks (``torch.float16`` / ``bfloat16``); the solver
                integrates in the noise's dtype (float32 / float64) regardless.
            image_size: SDXL size ids (default: the UNet sample size × the VAE factor).
            **kwargs: passed to every ``from_pretrained`` (``revision``, ``cache_dir``, …).
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        folder = PipelineFolder(
            path_or_id,
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "StableDiffusionPipeline",
            "complete StableDiffusion(XL)Pipeline",
            model_dtype,
            kwargs,
        )
        path, index, present, load = folder.path, folder.index, folder.present, folder.load
        xl = present("text_encoder_2")
        unet = load("unet", UNet2DConditionModel)
        vae = load("vae", AutoencoderKL)
        if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            vae = vae.to(torch.float32)  # as the SDXL pipelines do: fp16 VAEs overflow
        encoders: list[nn.Module | None] = []
        tokenizers: list[Any] = []
        if present("text_encoder"):
            encoders.append(load("text_encoder", CLIPTextModel))
            tokenizers.append(load("tokenizer", CLIPTokenizer, dtype=False))
        elif xl:
            encoders.append(None)
            tokenizers.append(None)
        if xl:
            encoders.append(load("text_encoder_2", CLIPTextModelWithProjection))
            tokenizers.append(load("tokenizer_2", CLIPTokenizer, dtype=False))
        if not encoders:
            raise ValueError(f"the pipeline {path!r} has no text encoder; it is not a text model.")
        errors: list[str] = []
        sched = load_alphas_cumprod(path, errors, **kwargs)
        if sched is None:
            raise ValueError(
                f"could not read the scheduler config of {path!r}: " + " | ".join(errors)
            )
        alphas_cumprod, prediction_type = sched
        return cls(
            unet,
            vae,
            encoders,
            tokenizers,
            alphas_cumprod,
            prediction_type=prediction_type,
            sigma_to_t=sigma_to_t,
            model_id=path,
            force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", xl)),
            image_size=image_size,
        )

    # ---- prompts --------------------------------------------------------------------------

    def describe_conditioning(self) -> str:
        return "(SDXL prompts)" if self.xl else "(prompts)"

    def _encode(self, prompts: list[str]) -> list[tuple[Tensor, Tensor | None]]:
        """Embeddings of ``prompts`` as the diffusers pipelines compute them (no cache)."""
        hidden, pooled = [], None
        for has, enc, tok in zip(self._has_encoder, self.text_encoders, self.tokenizers):
            if not has:
                continue
            ids = tok(
                prompts,
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            device = next(enc.parameters()).device
            if self.xl:
                out = enc(ids.input_ids.to(device), output_hidden_states=True)
                if pooled is None and out[0].ndim == 2:
                    pooled = out[0]
                hidden.append(out.hidden_states[-2])
            else:
                use_mask = getattr(enc.config, "use_attention_mask", False)
                mask = ids.attention_mask.to(device) if use_mask else None
                hidden.append(enc(ids.input_ids.to(device), attention_mask=mask)[0])
        h = torch.cat(hidden, dim=-1)
        return [(h[i], None if pooled is None else pooled[i]) for i in range(len(prompts))]

    @torch.no_grad()
    def _lookup(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        todo = list(dict.fromkeys(p for p in prompts if p not in self._prompt_cache))
        if todo:
            self._prompt_cache.update(zip(todo, self._encode(todo)))
        rows = [self._prompt_cache[p] for p in prompts]
        hidden = torch.stack([r[0] for r in rows])
        pooled = torch.stack([r[1] for r in rows]) if self.xl else None
        return hidden, pooled

    def _conditioning(self, hidden: Tensor, pooled: Tensor | None) -> Conditioning:
        if not self.xl:
            return Conditioning({"encoder_hidden_states": hidden})
        h, w = self.image_size
        ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=hidden.dtype, device=hidden.device)
        return Conditioning(
            {
                "encoder_hidden_states": hidden,
                "added_cond_kwargs": {
                    "text_embeds": pooled,
                    "time_ids": ids.expand(len(hidden), 6),
                },
            }
        )

    def encode_prompts(
        self, prompts: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None
    ) -> tuple[Conditioning, Conditioning]:
        """Conditional and unconditional conditioning for ``prompts`` (one row each).

        Each distinct prompt (negative ones included) is encoded once and cached on the model.

        Args:
            prompts: one prompt per sample (a single string: one row).
            negative_prompt: one for all, one per prompt, or ``None`` (``""``; SDXL with
                ``force_zeros_for_empty_prompt``: zero embeddings).
        """
        prompts = _as_prompts(prompts, "prompts")
        hidden, pooled = self._lookup(prompts)
        if negative_prompt is None and self.xl and self.force_zeros_for_empty_prompt:
            neg_hidden, neg_pooled = torch.zeros_like(hidden), torch.zeros_like(pooled)
        else:
            neg = [""] * len(prompts) if negative_prompt is None else negative_prompt
            neg = (
                [neg] * len(prompts)
                if isinstance(neg, str)
                else _as_prompts(neg, "negative_prompt")
            )
            if len(neg) != len(prompts):
                raise ValueError(
                    f"{len(neg)} negative prompts for {len(prompts)} prompts; give one negative "
                    "prompt for all, or one per prompt."
                )
            neg_hidden, neg_pooled = self._lookup(neg)
        return self._conditioning(hidden, pooled), self._conditioning(neg_hidden, neg_pooled)

    def make_conditioning(
        self, cond: Any, negative_prompt: Any, guided: bool
    ) -> tuple[Conditioning, Conditioning | None]:
        if isinstance(cond, Conditioning):
            if guided and not isinstance(negative_prompt, Conditioning):
                raise ValueError(
                    "with ready Conditioning and guidance, pass the unconditional rows as a "
                    "Conditioning too: bind(cond, negative_prompt=uncond, guidance_scale=w) "
                    "(both from encode_prompts)."
                )
            return cond, negative_prompt if guided else None
        if not (isinstance(cond, str) or _is_prompt_list(cond)):
            raise ValueError(
                f"a text-conditional model takes prompts (a string or a list of strings), got "
                f"{type(cond).__name__}; class labels are for class-conditional UNet2DModels."
            )
        c, u = self.encode_prompts(cond, negative_prompt)
        return c, u if guided else None

    # ---- images ---------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: Tensor, batch_size: int | None = 8) -> Tensor:
        """Images in [−1, 1] (float32, ``[B, 3, H, W]``) from denoised latents (σ = 0).

        Latents are divided by the VAE's ``scaling_factor`` (or un-normalised with its
        ``latents_mean`` / ``latents_std`` when the config has them, as SDXL's pipeline does)
        and decoded in batches of ``batch_size``.
        """
        if latents.ndim != 4 or (
            self.sample_shape and tuple(latents.shape[1:]) != self.sample_shape
        ):
            raise ValueError(
                f"decode takes latents [B, {', '.join(map(str, self.sample_shape or ('C', 'h', 'w')))}]"
                f", got {tuple(latents.shape)}."
            )
        return vae_decode(self.vae, latents, batch_size)


def _is_prompt_list(obj: Any) -> bool:
    return isinstance(obj, (list, tuple)) and bool(obj) and all(isinstance(o, str) for o in obj)


def _as_prompts(prompts: Any, name: str) -> list[str]:
    if isinstance(prompts, str):
        return [prompts]
    if not _is_prompt_list(prompts):
        raise ValueError(
            f"{name} must be a string or a non-empty list of strings, got {prompts!r}."
        )
    return list(prompts)
