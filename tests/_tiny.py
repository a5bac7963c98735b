"""A tiny randomly initialised diffusers ``UNet2DModel`` (and its DDPM scheduler config) for tests.

The network is small enough for CPU tests (sample_size 8, channels (16, 32), one layer per
block, no attention) and its output is made non-trivial: every bias and the output convolution
get extra random weight, so ε̂, v̂ and x̂0 vary with both the input and the timestep.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

CHANNELS = 3
NUM_TRAIN_TIMESTEPS = 1000


def scheduler_config(prediction_type: str = "epsilon") -> dict:
    """The DDPM noise schedule every tiny model is trained under (diffusers' defaults)."""
    return {
        "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "prediction_type": prediction_type,
        "clip_sample": False,
    }


def make_tiny_unet(
    tmp_path: str | os.PathLike | None = None,
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon",
    sample_size: int = 8,
    seed: int = 0,
    layout: Literal["pipeline", "flat"] = "pipeline",
    num_class_embeds: int | None = None,
):
    """Build a tiny random ``UNet2DModel``; with ``tmp_path``, also save it there.

    Args:
        tmp_path: folder to write to (created if needed); ``None`` writes nothing.
        prediction_type: recorded in the saved scheduler config.
        sample_size: height and width of a sample.
        seed: seed of the random weights.
        layout: ``"pipeline"`` writes ``unet/`` and ``scheduler/`` subfolders (a
            ``DiffusionPipeline`` folder); ``"flat"`` writes ``config.json`` and
            ``scheduler_config.json`` side by side (as ``google/ddpm-cifar10-32``).
        num_class_embeds: make it class-conditional with this many label embeddings.

    Returns:
        The model, in ``eval()`` mode, float32, on the CPU.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    if layout not in ("pipeline", "flat"):
        raise ValueError(f"layout must be 'pipeline' or 'flat', got {layout!r}.")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(
            sample_size=sample_size,
            in_channels=CHANNELS,
            out_channels=CHANNELS,
            layers_per_block=1,
            block_out_channels=(16, 32),
            norm_num_groups=8,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            num_class_embeds=num_class_embeds,
        )
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith("bias") or name.startswith("conv_out"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    unet.eval()
    if tmp_path is not None:
        root = os.fspath(tmp_path)
        sched = DDPMScheduler(**scheduler_config(prediction_type))
        if layout == "pipeline":
            unet.save_pretrained(os.path.join(root, "unet"))
            sched.save_pretrained(os.path.join(root, "scheduler"))
        else:
            unet.save_pretrained(root)
            sched.save_pretrained(root)
    return unet


def tiny_alphas_cumprod() -> torch.Tensor:
    """The ᾱ table of :func:`scheduler_config` as diffusers computes it (float32 → float64)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**scheduler_config()).alphas_cumprod.to(torch.float64)


SD_SCHEDULE = {
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def write_clip_tokenizer(folder: str | os.PathLike, model_max_length: int = 77):
    """A byte-level CLIP tokenizer without merges (every character a token) written to
    ``folder`` (vocab.json, merges.txt) and loaded from there; 514 tokens, the last two
    ``<|startoftext|>`` and ``<|endoftext|>`` (also the padding token)."""
    import json

    from transformers import CLIPTokenizer

    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    vocab, merges = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab, "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(merges, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(vocab, merges, model_max_length=model_max_length)


def write_t5_tokenizer(folder: str | os.PathLike):
    """A T5 tokenizer (Unigram over single characters, no sentinel tokens) written to
    ``folder`` and loaded from there: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2."""
    from transformers import T5TokenizerFast

    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("\u2581" + c, -2.5) for c in chars]
    T5TokenizerFast(vocab=vocab, extra_ids=0).save_pretrained(os.fspath(folder))
    return T5TokenizerFast.from_pretrained(os.fspath(folder))


def tiny_text_encoders(
    tmp_path: str | os.PathLike, clip_widths: tuple[int, ...], projection: int | None, t5: int
) -> dict:
    """Random text encoders for the tiny flow pipelines: CLIP models of the given widths
    (``CLIPTextModelWithProjection`` when ``projection`` is given, as SD3's; else
    ``CLIPTextModel``, as FLUX's), and a T5 encoder of width ``t5`` (0: none), with their
    tokenizers (:func:`write_clip_tokenizer`, :func:`write_t5_tokenizer`), keyed as the
    pipelines name them (``text_encoder``, ``tokenizer``, ``text_encoder_2``, …)."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    root = os.fspath(tmp_path)
    tok = write_clip_tokenizer(os.path.join(root, "_vocab"))
    parts: dict = {}
    for i, width in enumerate(clip_widths):
        cfg = CLIPTextConfig(
            bos_token_id=len(tok) - 2, eos_token_id=len(tok) - 1, pad_token_id=len(tok) - 1,
            hidden_size=width, intermediate_size=37, projection_dim=projection or width,
            num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tok),
            max_position_embeddings=77,
        )  # fmt: skip
        model = CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)
        suffix = f"_{i + 1}" if i else ""
        parts[f"text_encoder{suffix}"] = model.eval()
        parts[f"tokenizer{suffix}"] = tok
    if t5:
        t5_tok = write_t5_tokenizer(os.path.join(root, "_t5"))
        cfg = T5Config(
            vocab_size=len(t5_tok), d_model=t5, d_kv=8, d_ff=37, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        )  # fmt: skip
        suffix = f"_{len(clip_widths) + 1}"
        parts[f"text_encoder{suffix}"] = T5EncoderModel(cfg).eval()
        parts[f"tokenizer{suffix}"] = t5_tok
    return parts


def _perturb(module, gen) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or name.startswith("conv_out"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))


def make_tiny_sd(
    tmp_path: str | os.PathLike,
    xl: bool = False,
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
    seed: int = 0,
):
    """A tiny random ``StableDiffusionPipeline`` (or ``StableDiffusionXLPipeline``) saved to
    ``tmp_path`` with ``save_pretrained``: 4×8×8 latents (16×16 images), CLIP text encoder(s)
    of width 32 on :func:`write_clip_tokenizer`, a DDIM scheduler config with SD's schedule.

    Returns:
        The pipeline (float32, CPU), without safety checker.
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    gen = torch.Generator().manual_seed(seed)
    tok = write_clip_tokenizer(os.path.join(os.fspath(tmp_path), "_vocab"))
    text_cfg = CLIPTextConfig(
        bos_token_id=len(tok) - 2,
        eos_token_id=len(tok) - 1,
        pad_token_id=len(tok) - 1,
        hidden_size=32,
        intermediate_size=37,
        projection_dim=32,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(tok),
        max_position_embeddings=77,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet_kw = dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(8, 16),
            norm_num_groups=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=2,
        )
        if xl:
            unet_kw.update(
                cross_attention_dim=64,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=8 * 6 + 32,
                use_linear_projection=True,
            )
        else:
            unet_kw.update(cross_attention_dim=32)
        unet = UNet2DConditionModel(**unet_kw)
        vae = AutoencoderKL(
            block_out_channels=(8, 16),
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=4,
            sample_size=16,
        )
        text_encoder = CLIPTextModel(text_cfg)
        text_encoder_2 = CLIPTextModelWithProjection(text_cfg) if xl else None
    _perturb(unet, gen)
    sched = DDIMScheduler(**SD_SCHEDULE, prediction_type=prediction_type)
    parts = dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tok, scheduler=sched)
    if xl:
        pipe = StableDiffusionXLPipeline(**parts, text_encoder_2=text_encoder_2, tokenizer_2=tok)
    else:
        pipe = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(os.fspath(tmp_path))
    return pipe


def _tiny_flow_vae(shift_factor: float, scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift_factor,
        scaling_factor=scaling_factor,
    ).eval()


def _perturb_all(module, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


def make_tiny_sd3(
    tmp_path: str | os.PathLike, shift: float = 3.0, seed: int = 0, text_encoders: bool = False
):
    """A tiny random ``StableDiffusion3Pipeline`` (4×8×8 latents, no text encoders: pass
    ``prompt_embeds`` [B, L, 16] / ``pooled_prompt_embeds`` [B, 12]) saved to ``tmp_path``.
    ``text_encoders``: with two CLIP encoders of width 8 (projections 6), no T5 (the pipeline
    pads with zeros), so string prompts work."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr = SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=16,
            caption_projection_dim=16,
            pooled_projection_dim=12,
            out_channels=4,
            pos_embed_max_size=16,
        )
        vae = _tiny_flow_vae(0.0609, 1.5035)
        text = tiny_text_encoders(tmp_path, (8, 8), 6, 0) if text_encoders else {}
    _perturb_all(tr, seed + 1)  # zero-initialised output layers would make v ≡ 0
    names = [f"{p}{s}" for s in ("", "_2", "_3") for p in ("text_encoder", "tokenizer")]
    pipe = StableDiffusion3Pipeline(
        transformer=tr,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
        vae=vae,
        **{n: text.get(n) for n in names},
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(os.fspath(tmp_path))
    return pipe


def make_tiny_flux(tmp_path: str | os.PathLike, seed: int = 0, text_encoders: bool = False):
    """A tiny random ``FluxPipeline`` (guidance-distilled, packed latents; 16×24 images give
    4×8×12 latents; pass ``prompt_embeds`` [B, L, 32] / ``pooled_prompt_embeds`` [B, 24])
    saved to ``tmp_path``. ``text_encoders``: with a CLIP encoder of width 24 and a T5 encoder
    of width 32, so string prompts work."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tr = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=24,
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),
        )
        vae = _tiny_flow_vae(0.1159, 0.3611)
        text = tiny_text_encoders(tmp_path, (24,), None, 32) if text_encoders else {}
    _perturb_all(tr, seed + 3)
    sched = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=4,
        max_image_seq_len=64,
    )
    names = [f"{p}{s}" for s in ("", "_2") for p in ("text_encoder", "tokenizer")]
    pipe = FluxPipeline(scheduler=sched, vae=vae, transformer=tr, **{n: text.get(n) for n in names})
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(os.fspath(tmp_path))
    return pipe


def sd3_embeds(seed: int = 2) -> dict[str, torch.Tensor]:
    """Random conditioning for :func:`make_tiny_sd3`: 3 prompts of 7 tokens, with negatives."""
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt_embeds": torch.randn(3, 7, 16, generator=g),
        "pooled_prompt_embeds": torch.randn(3, 12, generator=g),
        "negative_prompt_embeds": torch.randn(3, 7, 16, generator=g),
        "negative_pooled_prompt_embeds": torch.randn(3, 12, generator=g),
    }


def flux_embeds(seed: int = 4) -> dict[str, torch.Tensor]:
    """Random conditioning for :func:`make_tiny_flux`: 2 prompts of 5 tokens."""
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt_embeds": torch.randn(2, 5, 32, generator=g),
        "pooled_prompt_embeds": torch.randn(2, 24, generator=g),
    }


def float_timesteps(cls):
    """The diffusers scheduler class ``cls``, with the network's timesteps kept at the float
    ``t·T`` of its σ. diffusers' multistep flow schedulers (``use_flow_sigmas=True``) hand the
    network int64 timesteps while the state is at the float ``t·T``, the time dode evaluates at.
    """

    class Float(cls):
        def set_timesteps(self, *args, **kwargs):
            super().set_timesteps(*args, **kwargs)
            self.timesteps = (self.sigmas[:-1] * self.config.num_train_timesteps).float()

    return Float


def inside_shift_bounds(solver, grid, xi):
    """``xi`` moved inside the model-time shift's bounds (:func:`dode.correction.shift_bounds`)
    at 90 % of the room: the first call down only (σ_0 is the top), the last call up only (the
    model's σ_min is not known here), every other one at most 0.9 × its bound either way; the
    entries stay nonzero."""
    from dode.correction import call_sigmas, shift_bounds

    lo, hi = shift_bounds(call_sigmas(solver, grid), grid)
    xi = xi.clone().to(torch.float64)
    xi[0], xi[-1] = -xi[0].abs(), xi[-1].abs()
    return torch.where(xi > 0, torch.minimum(xi, 0.9 * hi), torch.maximum(xi, 0.9 * lo))
