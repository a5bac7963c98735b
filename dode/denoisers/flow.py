"""Flow-matching (rectified flow) models in dode's σ-space.

The mapping
-----------
A rectified flow interpolates data and noise linearly, ``x_t = (1 − t)·x0 + t·ε`` with
t ∈ [0, 1], and its network predicts the velocity ``v ≈ ε − x0`` (diffusers'
``prediction_type="flow_prediction"``; SD3, FLUX). Dividing by ``1 − t``::

    x = x_t / (1 − t) = x0 + σ ε,      σ = t / (1 − t),      t = σ / (1 + σ),

which is exactly dode's convention ``x = y + σ·n``. The denoiser and the noise estimate are::

    x̂0 = D(x, σ) = x_t − t·v,          ε̂ = x_t + (1 − t)·v,

both computed from ``v`` directly (no division by a small t or 1 − t). Every dode solver and the
D-ODE correction therefore apply unchanged: Euler in x̂0 form (``"euler"``) and DDIM in ε form
(``"ddim"``) are both diffusers' flow Euler step ``x_{t'} = x_t + (t' − t)·v``. A time shift
(SD3's ``shift``, FLUX's μ) is ``σ' = s·σ``: it changes the grid (:func:`dode.grids.schedules.
flow_sigmas`), not the model.

t = 1 and the initial noise
---------------------------
t = 1 is σ = ∞: ``x = x_t / (1 − t)`` does not exist there and no solver can step from it.
diffusers' ``FlowMatchEulerDiscreteScheduler`` (SD3, FLUX pipelines) starts exactly at t = 1
with ``x_t = latents`` (standard normal): its first step is
``x_{t1} = latents + (t1 − 1)·v(latents, 1)``, i.e. ``x̂0 = latents − v`` followed by
``x(σ1) = x̂0 + σ1·latents``, which is the σ → ∞ limit of the DDIM step (and of the first,
first-order step of every multistep solver here: DPM-Solver++, UniPC, iPNDM, DEIS). dode takes
that first step exactly, outside the solver, in :meth:`FlowDenoiser.start`:

* grid starting at t = 1 (σ_0 = ∞): one model call at t = 1, then
  ``noise = latents + x̂0 / σ1`` on the grid ``σ1, σ2, …, 0`` (``noise · σ1 = x(σ1)``);
* grid starting at t_0 < 1 (diffusers' DPM-Solver++ and UniPC with ``use_flow_sigmas=True``
  start at ``shift(1 − 1/T)`` and ``1 − 1e-6``): the pipeline's ``x_{t0} = latents`` is
  ``x = latents / (1 − t0)``, so ``noise = latents / t0`` (``noise · σ0 = x``); no model call.

``dode.sample(den, solver, *den.start(latents, sigmas))`` then gives diffusers' image for the
same latents. The first step from t = 1 is shared by the base and the D-solver (the λ are fitted
on the rest of the grid; λ on its first call is 0 as always), and a multistep solver restarted
at σ1 is the σ0 → ∞ limit of the same solver on the full grid (its second step from ∞ has
``r = h_prev / h = ∞`` and reduces to first order).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor, nn

from ..grids.schedules import flow_t_to_sigma
from .base import Denoiser, family_of, quiet_loading
from .gmm import GaussianMixtureDenoiser
from .guidance import ConditionalDenoiser, Conditioning, GuidedDenoiser, rescale_noise_cfg
from .vp import ClassLabelDenoiser, unet_sample_shape, weight_files

__all__ = [
    "VelocityFlow",
    "FlowDenoiser",
    "GuidedFlowDenoiser",
    "DiffusersFlowDenoiser",
    "GaussianMixtureFlow",
    "flow_start",
    "flow_from_native",
    "flow_scale",
    "is_flow",
]


def _t_and_scale(sigma, x: Tensor) -> tuple[Tensor, Tensor]:
    """t = σ/(1 + σ) and 1 − t = 1/(1 + σ) in float64, shape [B, 1, ...]."""
    s = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    s = s.reshape(-1)
    if s.shape != (x.shape[0],):
        raise ValueError(
            f"sigma must be a scalar or have shape [{x.shape[0]}] (one per sample), got "
            f"{tuple(s.shape)}."
        )
    if torch.isinf(s).any():
        raise ValueError(
            "σ = ∞ (flow time t = 1) cannot be a solver's state; map the pipeline's latents and "
            "the grid with FlowDenoiser.start(latents, sigmas) first."
        )
    s = s.reshape(-1, *([1] * (x.ndim - 1)))
    return s / (1 + s), 1 / (1 + s)


def flow_scale(sigma, x: Tensor) -> Tensor:
    """``1 − t = 1/(1 + σ)`` in ``x``'s dtype, [B, 1, ...]: ``x_t = x · flow_scale(σ, x)``."""
    return _t_and_scale(sigma, x)[1].to(x.dtype)


def flow_from_native(v: Tensor, x: Tensor, sigma, want: str = "x0") -> Tensor:
    """A flow's velocity ``v`` at ``x_t = x/(1 + σ)`` as ``want``: ``x̂0 = x_t − t·v`` or
    ``ε̂ = x_t + (1 − t)·v`` (each straight from ``v``: no division by a small t or 1 − t).

    The one conversion: :class:`FlowDenoiser` and :class:`dode.hosts.diffusers.DODEScheduler` both
    call it. ``sigma``: a float or one per sample.
    """
    t, c = _t_and_scale(sigma, x)
    x_t = x * c.to(x.dtype)
    return x_t - t.to(x.dtype) * v if want == "x0" else x_t + c.to(x.dtype) * v


class VelocityFlow(Denoiser):
    """What every rectified flow shares, written once over its velocity: :meth:`x0`,
    :meth:`eps`, :meth:`denoise` and :meth:`start` from :meth:`velocity` ``v(x_t, t)`` (see the
    module docstring). :class:`FlowDenoiser` (a network) and :class:`GuidedFlowDenoiser` (a
    conditional flow bound to its rows, whose velocity is the guided one) are both one.
    """

    prediction = "x0"
    family = "flow"

    def velocity(self, x_t: Tensor, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        """The velocity at ``x_t`` (the flow's own variable) and time ``t`` (float64,
        ``[B, 1, ...]``)."""
        raise NotImplementedError

    def x0(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """x̂0 = x_t − t·v with x_t = x/(1 + σ), t = σ/(1 + σ)."""
        t, c = _t_and_scale(sigma, x)
        return flow_from_native(self.velocity(x * c.to(x.dtype), t), x, sigma, "x0")

    def eps(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """ε̂ = x_t + (1 − t)·v (equals (x − x̂0)/σ)."""
        t, c = _t_and_scale(sigma, x)
        return flow_from_native(self.velocity(x * c.to(x.dtype), t), x, sigma, "eps")

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.x0(x, sigma.reshape(-1))

    def start(self, latents: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor]:
        """Map a diffusers pipeline's initial latents (``x_{t0}``, standard normal) and a flow
        grid to dode's ``(noise, sigmas)`` so that ``dode.sample(self, solver, noise, sigmas)``
        continues the pipeline's trajectory (module docstring, "t = 1 and the initial noise").

        Args:
            latents: the pipeline's starting latents ``[B, ...]`` (at t_0).
            sigmas: a flow grid (:func:`dode.grids.schedules.flow_sigmas`), possibly starting at ∞.

        Returns:
            ``noise`` (with ``noise · sigmas[0]`` the σ-space state) and the finite grid.
        """
        s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
        if s.numel() < 2 or not (s[1:] < s[:-1]).all() or s[-1] < 0 or torch.isnan(s).any():
            raise ValueError(
                "sigmas must be a descending flow grid ending in 0; build it with "
                "dode.grids.schedules.flow_sigmas."
            )
        if not torch.isinf(s[0]):
            t0 = s[0] / (1 + s[0])
            return latents / t0.item(), s
        if s[1] == 0:
            raise ValueError(
                "a one-step flow grid from t = 1 is just x̂0 = latents − v(latents, 1); give at "
                "least two steps."
            )
        if torch.isinf(s[1:]).any():
            raise ValueError("only the first σ of a flow grid may be ∞ (t = 1).")
        one = torch.ones(latents.shape[0], *([1] * (latents.ndim - 1)), dtype=torch.float64)
        x0 = latents - self.velocity(latents, one.to(latents.device))
        return latents + x0 / s[1].item(), s[1:]


class FlowDenoiser(VelocityFlow, ConditionalDenoiser):
    """A rectified-flow model seen as a σ-space denoiser (see the module docstring).

    Subclasses implement :meth:`velocity` ``v(x_t, t) ≈ ε − x0``; :meth:`x0` and :meth:`eps`
    follow from it without round trips. A conditional flow (``conditional = True``) takes the
    batch's :class:`~dode.denoisers.Conditioning` as a third argument and is bound to it with
    :meth:`bind`, as every conditional model: ``den.bind(cond, guidance_scale=w)`` gives a
    :class:`GuidedFlowDenoiser`, whose classifier-free guidance combines the velocities
    (the flow's native prediction) ``v = v_u + w (v_c − v_u)`` from one forward of ``2B``.

    Args:
        sample_shape: the shape of one sample, or ``None``.
        t_min: the smallest flow time the model was trained on (σ_min = t_min/(1 − t_min)).
    """

    def __init__(self, sample_shape: tuple[int, ...] | None = None, t_min: float = 1e-3) -> None:
        if not 0 <= t_min < 1:
            raise ValueError(f"t_min must be in [0, 1), got {t_min}.")
        super().__init__(t_min / (1 - t_min), math.inf, sample_shape)

    def velocity(
        self, x_t: Tensor, t: Tensor, cond: Conditioning | None = None
    ) -> Tensor:  # pragma: no cover - abstract
        """The flow's velocity at ``x_t`` (the flow's own variable) and time ``t``.

        Args:
            x_t: ``[B, ...]``.
            t: float64, shape ``[B, 1, ...]`` (broadcastable to ``x_t``), in (0, 1].
            cond: conditional flows: the batch's conditioning (``B`` rows).
        """
        raise NotImplementedError

    def _velocity(self, x_t: Tensor, t: Tensor, cond: Conditioning | None) -> Tensor:
        # unconditional subclasses may define velocity(x_t, t) without ``cond``
        return self.velocity(x_t, t) if cond is None else self.velocity(x_t, t, cond)

    # the ConditionalDenoiser contract: the native prediction is v at x_t = x/(1 + σ)
    def native(self, x: Tensor, sigma: Tensor, cond: Conditioning | None) -> Tensor:
        t, c = _t_and_scale(sigma, x)
        return self._velocity(x * c.to(x.dtype), t, cond)

    def from_native(self, out: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
        return flow_from_native(out, x, sigma, "x0")

    def guided(
        self,
        cond: Conditioning,
        uncond: Conditioning | None,
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
    ) -> GuidedFlowDenoiser:
        """This flow wrapped with its bound rows and scales: a :class:`GuidedFlowDenoiser`
        (still a flow: its velocity is the guided one)."""
        return GuidedFlowDenoiser(self, cond, uncond, guidance_scale, guidance_rescale)


class GuidedFlowDenoiser(VelocityFlow, GuidedDenoiser):
    """A conditional flow bound to a batch's conditioning and the CFG scale (made by
    :meth:`FlowDenoiser.bind`): a :class:`~dode.denoisers.GuidedDenoiser` wrapping the flow.

    Guidance acts on the velocity, the flow's native prediction, from one forward of ``2B``
    (unconditional rows first, as the SD3 pipeline does): ``v = v_u + w (v_c − v_u)``. It is
    still a flow: :meth:`velocity` is the guided velocity, and :meth:`x0`, :meth:`eps`,
    :meth:`denoise` and :meth:`start` are every flow's (:class:`VelocityFlow`).
    """

    def velocity(self, x_t: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        """The guided velocity (``cond`` must be ``None``: the bound rows are used)."""
        if cond is not None:
            raise ValueError("a bound flow already holds its conditioning; call velocity(x_t, t).")
        b = x_t.shape[0]
        c = self.cond.rows(b)
        if self.uncond is None:
            return self.model.velocity(x_t, t, c)
        u = self.uncond.rows(b)
        tt = t.expand(b, *t.shape[1:]) if t.shape[0] == 1 else t
        both = self.model.velocity(
            torch.cat([x_t, x_t]), torch.cat([tt, tt]), Conditioning.cat([u, c])
        )
        v_u, v_c = both.chunk(2)
        v = v_u + self.guidance_scale * (v_c - v_u)
        if self.guidance_rescale > 0:
            v = rescale_noise_cfg(v, v_c, self.guidance_rescale)
        return v


def is_flow(denoiser: Any) -> bool:
    """Whether ``denoiser`` is a rectified flow: its :attr:`~dode.denoisers.Denoiser.family`
    (:func:`~dode.denoisers.base.family_of`), also for one bound to its conditioning."""
    return family_of(denoiser) == "flow"


def flow_start(denoiser: FlowDenoiser, latents: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """:meth:`FlowDenoiser.start` as a function (also for a bound :class:`GuidedFlowDenoiser`)."""
    if not is_flow(denoiser):
        raise ValueError(
            f"flow_start needs a FlowDenoiser, got {type(denoiser).__name__}; a VP (DDPM) model "
            "starts from noise · σ_0 directly."
        )
    return denoiser.start(latents, sigmas)


class DiffusersFlowDenoiser(FlowDenoiser, ClassLabelDenoiser):
    """A diffusers ``UNet2DModel`` trained as a rectified flow (velocity at timestep ``t·T``).

    Class-conditional UNets (``num_class_embeds``) follow the convention of
    :class:`~dode.denoisers.vp.ClassLabelDenoiser` (as the DDPM adapter does): ``num_classes = num_class_embeds − 1`` makes the last index
    the null label, used for classifier-free guidance. Bind labels (one per sample, or one for
    all) with ``den.bind(labels, guidance_scale=w)``; :meth:`set_class_labels` fixes labels on
    the model itself (no guidance).

    Args:
        unet: the network (kept frozen).
        num_train_timesteps: T: the network sees timestep ``t·T`` (float), as in
            ``FlowMatchEulerDiscreteScheduler``.
        shift: the scheduler config's static shift (recorded, for building grids).
        class_labels: labels for a class-conditional UNet (see :meth:`set_class_labels`).
        model_id: where the model came from.
        num_classes: class-conditional UNets: the number of real classes (default
            ``num_class_embeds``: no null label, no guidance).
    """

    def __init__(
        self,
        unet: nn.Module,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        class_labels: Tensor | int | None = None,
        model_id: str | None = None,
        num_classes: int | None = None,
    ) -> None:
        cfg = getattr(unet, "config", None)
        super().__init__(unet_sample_shape(unet), t_min=1 / num_train_timesteps)
        self.unet = unet.eval().requires_grad_(False)
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = float(shift)
        self.model_id = model_id
        self._init_classes(cfg, num_classes)
        self.num_class_embeds = getattr(cfg, "num_class_embeds", None) if cfg is not None else None
        self.class_labels: Tensor | None = None
        if class_labels is not None:
            self.set_class_labels(class_labels)

    def set_class_labels(self, labels: Tensor | int | None) -> DiffusersFlowDenoiser:
        """Labels for the following unbound calls (``[B]`` or one int for every sample; the
        null label, if any, samples unconditionally). ``bind`` is the general way."""
        if labels is None:
            self.class_labels = None
            return self
        if self.num_class_embeds is None:
            raise ValueError(
                "this UNet has no class embedding (num_class_embeds=None); drop labels."
            )
        lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if ((lab < 0) | (lab >= self.num_class_embeds)).any():
            raise ValueError(
                f"class labels must be in [0, {self.num_class_embeds}), got {lab.tolist()}."
            )
        self.class_labels = lab
        return self

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        torch_dtype: torch.dtype | None = None,
        num_classes: int | None = None,
        **kwargs,
    ) -> DiffusersFlowDenoiser:
        """Load ``unet/`` (a ``UNet2DModel``) and ``scheduler/`` (a
        ``FlowMatchEulerDiscreteScheduler`` config) from a hub id or a local folder.
        ``num_classes``: see the class docstring (class-conditional models only)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel

        path = os.path.expanduser(str(path_or_id))
        looks_local = path.startswith((os.path.sep, ".", "~")) or os.path.isdir(path)
        if looks_local and not os.path.isdir(path):
            raise ValueError(
                f"model folder {path!r} does not exist; pass a folder with unet/ and scheduler/ "
                "(written by save_pretrained) or a hub id."
            )
        try:
            with quiet_loading():
                unet = UNet2DModel.from_pretrained(
                    path, subfolder="unet", torch_dtype=torch_dtype, **kwargs
                )
                sched = FlowMatchEulerDiscreteScheduler.from_pretrained(
                    path, subfolder="scheduler", **kwargs
                )
        except Exception as e:  # noqa: BLE001 - reported with the fix
            raise ValueError(
                f"could not load a flow UNet2DModel (unet/) and a FlowMatchEulerDiscreteScheduler "
                f"config (scheduler/) from {path!r}; check the folder layout or, for a hub id, "
                f"download it first. Details: {e}"
            ) from None
        den = cls(
            unet,
            num_train_timesteps=sched.config.num_train_timesteps,
            shift=sched.config.shift,
            model_id=path,
            num_classes=num_classes,
        )
        den.weight_files = weight_files(path, "unet", kwargs)
        return den

    def velocity(self, x_t: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        b = x_t.shape[0]
        timestep = (t.reshape(-1) * self.num_train_timesteps).to(torch.float32).expand(b)
        kw = {}
        if cond is not None:
            kw = cond.to(x_t.device).kwargs
        elif self.num_class_embeds is not None:
            if self.class_labels is None:
                raise ValueError(
                    "this UNet is class-conditional (num_class_embeds="
                    f"{self.num_class_embeds}); bind labels with den.bind(labels, "
                    "guidance_scale=w), or fix them with set_class_labels(labels)."
                )
            lab = self.class_labels.to(x_t.device)
            if lab.numel() == 1:
                lab = lab.expand(b)
            elif lab.numel() != b:
                raise ValueError(
                    f"{lab.numel()} class labels for a batch of {b}; give one label per sample."
                )
            kw["class_labels"] = lab
        dtype = next(self.unet.parameters()).dtype
        out = self.unet(x_t.to(dtype), timestep.to(x_t.device), **kw).sample
        return out.to(x_t.dtype)


class GaussianMixtureFlow(FlowDenoiser):
    """A Gaussian mixture written as a rectified flow: its exact (analytic) velocity.

    With ``x = x_t/(1 − t)`` and ``σ = t/(1 − t)`` the mixture's posterior mean ``D(x, σ)``
    (:class:`~dode.denoisers.GaussianMixtureDenoiser`) gives ``v = (x_t − D)/t``; at t = 1 the
    posterior mean is the mixture mean, so ``v(x_t, 1) = x_t − E[x0]``. Its ODE in σ-space is the
    mixture's probability-flow ODE, so :meth:`exact_solution` (single Gaussian) is the ground
    truth for solver tests through the mapping.
    """

    def __init__(self, gmm: GaussianMixtureDenoiser, t_min: float = 1e-3) -> None:
        super().__init__(gmm.sample_shape, t_min)
        self.gmm = gmm

    @classmethod
    def gaussian(cls, mean: Tensor, cov: Tensor, t_min: float = 1e-3) -> GaussianMixtureFlow:
        """A single Gaussian N(mean, cov) as an exact flow."""
        from .gmm import gaussian

        return cls(gaussian(mean, cov), t_min)

    def velocity(self, x_t: Tensor, t: Tensor) -> Tensor:
        t = t.expand(x_t.shape[0], *t.shape[1:]) if t.shape[0] == 1 else t
        one = t.reshape(-1) >= 1
        tt = torch.where(t >= 1, torch.full_like(t, 0.5), t)  # placeholder where t = 1
        sigma = flow_t_to_sigma(tt).to(x_t.dtype)
        x = x_t / (1 - tt).to(x_t.dtype)
        x0 = self.gmm.denoise(x, sigma)
        if one.any():
            w = self.gmm.log_weights.exp().to(x_t.dtype)
            mean = (w[:, None] * self.gmm.means.to(x_t.dtype)).sum(0).reshape(x_t.shape[1:])
            x0 = torch.where(one.reshape(-1, *([1] * (x_t.ndim - 1))), mean.expand_as(x_t), x0)
        return (x_t - x0) / torch.where(t >= 1, torch.ones_like(t), t).to(x_t.dtype)

    def exact_solution(self, x: Tensor, sigma_from: float, sigma_to: float) -> Tensor:
        """Closed-form ODE solution in σ-space (single Gaussian only)."""
        return self.gmm.exact_solution(x, sigma_from, sigma_to)
