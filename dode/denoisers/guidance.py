"""Conditioning and classifier-free guidance (CFG): a conditional model bound to a batch.

A conditional network takes extra inputs (class labels; text embeddings, with SDXL's pooled
embeddings and size/crop ids). dode's solvers and the D-ODE correction only know ``D(x, σ)``,
so — in the style of dpm-solver's ``model_wrapper`` — the conditioning of a batch and the
guidance scale ``w`` are bound into the model first::

    bound = den.bind(["a red cube", "a blue ball"], guidance_scale=7.5)  # a Denoiser again
    x = dode.sample(bound, "dpm_solver_pp", noise, sigmas)               # noise: [2, 4, 64, 64]

Classifier-free guidance (Ho & Salimans, 2022) combines the conditional and unconditional
outputs in the model's NATIVE prediction (ε, v or x0), from one batched forward of ``2B``
(unconditional rows first, as diffusers does)::

    o = o_u + w (o_c − o_u)

then converts ``o`` to what the solver consumes. ``w = 1`` is the conditional model alone (no
unconditional pass); ``w = 0`` the unconditional one. ``guidance_rescale = φ > 0`` applies
diffusers' ``rescale_noise_cfg`` (Lin et al., 2023, eq. 15–16): ``o ← φ o·std(o_c)/std(o) +
(1 − φ) o``, per sample. The D-ODE correction then acts on the guided output, unchanged.

Conditioning follows the batch: a bound denoiser holds ``N`` rows of conditioning, and row
``i`` conditions sample ``i`` of the noise. It serves batches of exactly ``N`` samples, or any
batch when ``N = 1`` (one conditioning broadcast to all). To run in chunks, slice it along with
the noise: ``bound[i:j]`` conditions ``noise[i:j]`` (:meth:`GuidedDenoiser.split` mirrors
``noise.split(batch_size)``); anything else is a ``ValueError``, never a silent mismatch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .base import Denoiser, check_guidance, family_of

__all__ = [
    "Conditioning",
    "ConditionalDenoiser",
    "GuidedDenoiser",
    "check_guidance",
    "rescale_noise_cfg",
]

Index = int | slice | Sequence[int] | Tensor


def _map(tree: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(tree, dict):
        return {k: _map(v, fn) for k, v in tree.items()}
    return fn(tree)


def _leaves(tree: Any) -> list[Tensor]:
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    return [tree]


@dataclass(frozen=True)
class Conditioning:
    """The network's conditioning keyword arguments for a batch: ``net(x, t, **kwargs)``.

    ``kwargs`` maps names to tensors (or dicts of tensors, as diffusers'
    ``added_cond_kwargs``), all with the batch first: row ``i`` conditions sample ``i``.
    Examples: ``{"class_labels": [B]}`` for a class-conditional ``UNet2DModel``;
    ``{"encoder_hidden_states": [B, L, D]}`` for Stable Diffusion 1.x/2.x; SDXL adds
    ``{"added_cond_kwargs": {"text_embeds": [B, P], "time_ids": [B, 6]}}``.
    """

    kwargs: dict[str, Any]

    def __post_init__(self) -> None:
        leaves = _leaves(self.kwargs)
        if not leaves or not all(isinstance(t, Tensor) and t.ndim >= 1 for t in leaves):
            raise ValueError("Conditioning needs tensors with a batch dimension first.")
        sizes = {t.shape[0] for t in leaves}
        if len(sizes) != 1:
            raise ValueError(
                f"the conditioning tensors disagree on the batch size ({sorted(sizes)}); give "
                "every tensor one row per sample."
            )

    def __len__(self) -> int:
        return _leaves(self.kwargs)[0].shape[0]

    def __getitem__(self, index: Index) -> Conditioning:
        """The rows of ``index`` (an int keeps the batch dimension: one row)."""
        if isinstance(index, int):
            index = slice(index, (index + 1) or None)
        elif not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long)
            return Conditioning(_map(self.kwargs, lambda t: t[index.to(t.device)]))
        return Conditioning(_map(self.kwargs, lambda t: t[index]))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Moved to ``device``; floating tensors cast to ``dtype`` (labels stay integers)."""

        def move(t: Tensor) -> Tensor:
            return t.to(
                device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None
            )

        return Conditioning(_map(self.kwargs, move))

    def rows(self, batch: int) -> Conditioning:
        """This conditioning for a batch of ``batch`` samples (one row is broadcast)."""
        n = len(self)
        if n == batch:
            return self
        if n == 1:
            return Conditioning(_map(self.kwargs, lambda t: t.expand(batch, *t.shape[1:])))
        raise ValueError(
            f"the denoiser is bound to {n} conditionings but was called with a batch of {batch} "
            "samples; conditioning follows the batch (row i conditions sample i). Slice the "
            "bound denoiser along with the noise (bound[i:j] for noise[i:j], or "
            "bound.split(batch_size)), or bind one conditioning per sample."
        )

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """Rows of all ``items``, in order (same keys in each)."""
        first = items[0].kwargs

        def join(path: tuple[str, ...]) -> Any:
            node = first
            for p in path:
                node = node[p]
            if isinstance(node, dict):
                return {k: join((*path, k)) for k in node}
            parts = []
            for c in items:
                leaf = c.kwargs
                for p in path:
                    leaf = leaf[p]
                parts.append(leaf)
            return torch.cat(parts)

        return Conditioning(join(()))

    def fingerprint(self) -> str:
        """A hash of the conditioning's values (for cache keys and records)."""
        import hashlib

        h = hashlib.sha256()

        def walk(tree: Any, prefix: str) -> None:
            if isinstance(tree, dict):
                for k in sorted(tree):
                    walk(tree[k], f"{prefix}/{k}")
                return
            t = tree.detach().cpu().contiguous()
            h.update(f"{prefix}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")

        walk(self.kwargs, "")
        return h.hexdigest()[:16]


def rescale_noise_cfg(out: Tensor, out_cond: Tensor, guidance_rescale: float) -> Tensor:
    """diffusers' ``rescale_noise_cfg`` (Lin et al., 2023, "Common Diffusion Noise Schedules and
    Sample Steps are Flawed", eq. 15–16): match the per-sample std of the guided output to the
    conditional one, mixed by ``guidance_rescale``."""
    dims = list(range(1, out_cond.ndim))
    std_cond = out_cond.std(dim=dims, keepdim=True)
    std_cfg = out.std(dim=dims, keepdim=True)
    rescaled = out * (std_cond / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * out


class ConditionalDenoiser(Denoiser):
    """A denoiser whose network may take conditioning.

    Subclasses implement :meth:`native` (the network's own output — ε, v or x0 — for a batch
    and its :class:`Conditioning`), :meth:`from_native` (that output as :attr:`prediction`)
    and :meth:`make_conditioning` (user input → conditional and unconditional
    :class:`Conditioning`), and set :attr:`conditional` and :attr:`has_unconditional`.
    An unconditional network (``conditional = False``) is used as is; a conditional one must
    be bound to the batch's conditioning with :meth:`bind` first, which wraps it (and the
    bound rows and scales) in the denoiser :meth:`guided` makes: a :class:`GuidedDenoiser`
    here; a model family whose bound form needs more, such as a flow, returns its own.
    """

    conditional: bool = False
    has_unconditional: bool = False

    def native(
        self, x: Tensor, sigma: Tensor, cond: Conditioning | None
    ) -> Tensor:  # pragma: no cover
        """The network's native output for ``x`` at ``sigma`` ([B, 1, ...])."""
        raise NotImplementedError

    def from_native(self, out: Tensor, x: Tensor, sigma: Tensor) -> Tensor:  # pragma: no cover
        """A native output converted to :attr:`prediction` (identity if they agree)."""
        raise NotImplementedError

    def make_conditioning(
        self, cond: Any, negative_prompt: Any, guided: bool
    ) -> tuple[Conditioning, Conditioning | None]:  # pragma: no cover
        """``(conditional, unconditional)`` rows for ``cond``; the second only if ``guided``."""
        raise NotImplementedError

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self.conditional:
            raise ValueError(
                f"{type(self).__name__} is a conditional model: bind the batch's conditioning "
                "first, e.g. den.bind(labels_or_prompts, guidance_scale=w), and sample with "
                "the bound denoiser."
            )
        return self.from_native(self.native(x, sigma, None), x, sigma)

    def bind(
        self,
        cond: Any = None,
        *,
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        negative_prompt: Any = None,
    ) -> Denoiser:
        """Bind a batch's conditioning and the guidance scale: a plain ``D(x, σ)`` again.

        Args:
            cond: one entry per sample (class labels, prompts, or a ready
                :class:`Conditioning`), or one entry for all samples.
            guidance_scale: CFG scale w (1: the conditional model alone, no extra pass).
            guidance_rescale: φ in [0, 1] for :func:`rescale_noise_cfg` (0: off).
            negative_prompt: text models only: the unconditional prompt(s).

        Returns:
            A :class:`GuidedDenoiser` (``self`` for an unconditional network).
        """
        if not self.conditional:
            return super().bind(
                cond,
                guidance_scale=guidance_scale,
                guidance_rescale=guidance_rescale,
                negative_prompt=negative_prompt,
            )
        w, phi = check_guidance(guidance_scale, guidance_rescale)
        if cond is None:
            raise ValueError(
                f"{type(self).__name__} is conditional: pass the batch's conditioning (one "
                "class label or prompt per sample, or one for all) to bind()."
            )
        guided = w != 1.0
        if guided and not self.has_unconditional:
            raise ValueError(
                f"guidance_scale {w} needs the model's unconditional output, but "
                f"{type(self).__name__} {self.describe_conditioning()} has no unconditional "
                "input (it was not trained with condition dropout); use guidance_scale=1, or "
                "a model with a null condition."
            )
        c, u = self.make_conditioning(cond, negative_prompt, guided)
        return self.guided(c, u if guided else None, w, phi)

    def guided(
        self,
        cond: Conditioning,
        uncond: Conditioning | None,
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
    ) -> GuidedDenoiser:
        """This model wrapped with its bound rows and scales (what :meth:`bind` returns once
        it has made the conditioning): a :class:`GuidedDenoiser`. Families whose bound form
        needs more (a flow's guided velocity) override it."""
        return GuidedDenoiser(self, cond, uncond, guidance_scale, guidance_rescale)

    def describe_conditioning(self) -> str:
        """A short phrase naming the kind of conditioning, for error messages."""
        return ""


class GuidedDenoiser(Denoiser):
    """A conditional model with a batch's conditioning and the CFG scale bound in.

    Made by :meth:`ConditionalDenoiser.bind`; it wraps the model (composition: the model is
    shared, never copied or subclassed). ``len(bound)`` is the number of conditioning rows;
    ``bound[i:j]`` (or a list/tensor of indices) is the same wrapper bound to those rows, with
    every other attribute kept (such as FLUX's ``embedded_guidance``).

    Attributes:
        model: the conditional model (shared, not copied).
        cond, uncond: the conditional and unconditional :class:`Conditioning` (``uncond`` is
            ``None`` when ``guidance_scale == 1``).
        guidance_scale, guidance_rescale: w and φ.
    """

    @property
    def family(self) -> str:  # type: ignore[override]
        """The bound model's family (a guided flow is still a flow)."""
        return family_of(self.model)

    def __init__(
        self,
        model: ConditionalDenoiser,
        cond: Conditioning,
        uncond: Conditioning | None,
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
    ) -> None:
        super().__init__(model.sigma_min, model.sigma_max, model.sample_shape)
        w, phi = check_guidance(guidance_scale, guidance_rescale)
        if uncond is None and w != 1.0:
            raise ValueError(f"guidance_scale {w} needs unconditional conditioning rows.")
        if uncond is not None and len(uncond) != len(cond):
            raise ValueError(
                f"{len(cond)} conditional but {len(uncond)} unconditional rows; give one "
                "negative prompt per prompt, or one for all."
            )
        self.model = model
        self.cond = cond
        self.uncond = uncond
        self.guidance_scale = w
        self.guidance_rescale = phi
        self.prediction = model.prediction
        self.model_id = getattr(model, "model_id", None)
        self.data_range = getattr(model, "data_range", None)

    def __len__(self) -> int:
        return len(self.cond)

    def __bool__(self) -> bool:
        return True

    def __getitem__(self, index: Index) -> GuidedDenoiser:
        out = type(self)(
            self.model,
            self.cond[index],
            None if self.uncond is None else self.uncond[index],
            self.guidance_scale,
            self.guidance_rescale,
        )
        # what was set on this wrapper after it was made stays (the rows are the slice's)
        for name, value in vars(self).items():
            vars(out).setdefault(name, value)
        for name, module in self._modules.items():
            out._modules.setdefault(name, module)
        return out

    def split(self, batch_size: int) -> list[GuidedDenoiser]:
        """Bound denoisers for ``noise.split(batch_size)``, chunk by chunk."""
        n = len(self)
        return [self[i : min(i + batch_size, n)] for i in range(0, n, batch_size)]

    def round_sigma(self, sigma: Tensor) -> Tensor:
        return self.model.round_sigma(sigma)

    def check_noise(self, noise: Tensor) -> None:
        super().check_noise(noise)
        self.cond.rows(noise.shape[0])  # raises when the batch does not match

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        b = x.shape[0]
        cond = self.cond.rows(b)
        if self.uncond is None:
            out = self.model.native(x, sigma, cond)
        else:
            uncond = self.uncond.rows(b)
            both = self.model.native(
                torch.cat([x, x]), torch.cat([sigma, sigma]), Conditioning.cat([uncond, cond])
            )
            out_uncond, out_cond = both.chunk(2)
            out = out_uncond + self.guidance_scale * (out_cond - out_uncond)
            if self.guidance_rescale > 0:
                out = rescale_noise_cfg(out, out_cond, self.guidance_rescale)
        return self.model.from_native(out, x, sigma)

    def describe(self) -> dict[str, Any]:
        """What is bound: for records and cache keys."""
        return {
            "guidance_scale": self.guidance_scale,
            "guidance_rescale": self.guidance_rescale,
            "conditioning": self.model.describe_conditioning(),
            "rows": len(self),
            "cond": self.cond.fingerprint(),
            "uncond": None if self.uncond is None else self.uncond.fingerprint(),
        }
