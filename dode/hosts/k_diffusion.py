"""A fitted solver file as a k-diffusion-style sampler (ComfyUI, AUTOMATIC1111, Forge).

Usage, in a script with k-diffusion::

    from dode.hosts.k_diffusion import KDiffusionSampler
    sample_dode = KDiffusionSampler("solver.safetensors")
    x0 = sample_dode(model, torch.randn(shape) * sample_dode.sigmas[0], sample_dode.sigmas)

The hosts call samplers as ``fn(model, x, sigmas, extra_args=None, callback=None,
disable=None)``: ``model(x, sigma, **extra_args)`` returns the denoised x̂0 (classifier-free
guidance already applied by the host), ``sigma`` has shape ``[B]``, ``x`` starts at
``noise · sigmas[0]`` and ``sigmas`` descends to 0. :class:`KDiffusionSampler` is such a
function. It wraps the host's model as a :class:`~dode.denoisers.Denoiser` (x̂0 prediction)
and runs :meth:`dode.files.solver_file.FittedSolver.sample`, i.e. :func:`dode.sample` with the file's
solver, grid and λ: the same conversion (x̂0 → ε̂ for noise-prediction solvers), the same
D-ODE correction and the same solver code as every other dode path. Nothing here re-derives
them, so whatever the file holds and the core applies reaches the host unchanged.

Conventions:

* **VP hosts** (``host_family="vp"``, the default; Stable Diffusion 1.x/2.x/SDXL in ComfyUI,
  AUTOMATIC1111, Forge; k-diffusion's ``DiscreteEpsDDPMDenoiser``/``CompVisDenoiser``): the
  host's σ and x are dode's σ-space ones (``x = y + σ·n``, ``σ = sqrt((1 − ᾱ)/ᾱ)``), so the
  file's grid is the host's σ list and dode's noise is ``x / sigmas[0]``.
* **Flow hosts** (``host_family="flow"``; ComfyUI's rectified flows, SD3 and FLUX, whose
  "CONST" sampling has ``x_t = (1 − t)·x0 + t·n`` and calls the model at ``σ_host = t``): the
  host's list is ``t = σ/(1 + σ)`` of the file's grid (:attr:`KDiffusionSampler.sigmas` gives
  it), the state is ``x_t = x/(1 + σ)`` and the model's x̂0 is dode's x̂0.
* Only the fitted σ list runs: another list, another length, or a file of the other model
  family raise one ``ValueError`` naming the fitted list (a host that appends, drops or
  rescales σ is caught, never silently mis-sampled). Lists agree when every σ matches to
  1e-5 relative (a float32 copy of the grid passes; a float16/bfloat16 copy to its dtype's
  precision); the solver runs on the file's float64 grid either way. Where the host's model
  shows its discrete σ table (k-diffusion's ``DiscreteSchedule`` wrappers, ComfyUI's discrete
  model sampling), a flow file, or a VP file fitted on a model with another ᾱ table, is refused.
* float16 / bfloat16 host tensors: the solver integrates in float32 (float64 stays float64);
  the model is called with ``x`` in the host's dtype and the result is returned in it.
* ``callback`` receives k-diffusion's dict once per step, after the step's first model call:
  ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` (the state at ``sigmas[i]`` and the model's
  x̂0 there, both in the host's convention and dtype; ``sigma_hat = sigma``: no churn).
  ``disable`` turns the progress bar off; ``extra_args`` reach the model untouched.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from ..denoisers import Denoiser
from ..files.solver_file import FittedSolver

__all__ = ["KDiffusionSampler", "host_sigma_table"]

HostFamily = Literal["vp", "flow"]
HOST_FAMILIES = ("vp", "flow")
_FAMILY_NAMES = {
    "vp": "diffusion (DDPM/VP, σ-space: Stable Diffusion 1.x/2.x/SDXL)",
    "flow": "rectified-flow (SD3, FLUX: the host's σ is t)",
}
#: relative tolerance between the host's σ list and the fitted one (float32 copies pass)
SIGMA_RTOL = 1e-5


def _fmt(values: Tensor, limit: int = 12) -> str:
    v = [f"{float(s):.6g}" for s in values]
    if len(v) > limit:
        v = [*v[: limit - 3], "…", *v[-2:]]
    return "[" + ", ".join(v) + "]"


_WRAPPER_ATTRS = ("inner_model", "model", "model_wrap", "model_sampling", "diffusion_model")


def host_sigma_table(model: Any, depth: int = 5) -> Tensor | None:
    """The discrete VP σ table inside a host's model wrappers, or ``None``.

    k-diffusion's ``DiscreteSchedule`` wrappers (``DiscreteEpsDDPMDenoiser``,
    ``CompVisDenoiser``, …) and ComfyUI's discrete model sampling hold the model's σ levels as
    ``sigmas`` with ``log_sigmas`` beside them; rectified-flow samplings hold no ``log_sigmas``.
    Looks through the usual wrapper attributes (``inner_model``, ``model``, ``model_wrap``,
    ``model_sampling``) without calling anything.
    """
    frontier, seen = [model], set()
    for _ in range(depth):
        nxt = []
        for obj in frontier:
            if obj is None or id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, torch.nn.Module):
                found = {**obj.__dict__, **obj._buffers, **obj._modules}
            else:
                found = getattr(obj, "__dict__", {})
            table, logs = found.get("sigmas"), found.get("log_sigmas")
            if isinstance(table, Tensor) and isinstance(logs, Tensor) and table.ndim == 1:
                return table.detach()
            nxt.extend(found[a] for a in _WRAPPER_ATTRS if a in found)
        frontier = nxt
    return None


def _cond_scale(extra_args: Mapping[str, Any]) -> float | None:
    """k-diffusion's ``extra_args["cond_scale"]`` when the host passes a number, else ``None``."""
    w = extra_args.get("cond_scale") if isinstance(extra_args, Mapping) else None
    return float(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else None


def _host_guidance(extra_args: Mapping[str, Any], fitted: float | None) -> float | None:
    """The guidance scale the host applies: k-diffusion's ``cond_scale`` when given, else the
    file's (``None`` for an unguided file)."""
    w = _cond_scale(extra_args)
    if w is not None:
        return w
    return None if fitted is None else float(fitted)


class _HostDenoiser(Denoiser):
    """The host's ``model(x, sigma, **extra_args) → x̂0`` as a dode denoiser.

    ``denoise`` receives dode's σ-space state; for a flow host it calls the model at
    ``t = σ/(1 + σ)`` with ``x_t = x/(1 + σ)``. ``on_call(x, sigma, denoised)`` sees every call
    with the host-side state and output. Conditioning and guidance belong to the host, so the
    wrapper counts as bound at ``guidance_scale``.
    """

    prediction = "x0"

    def __init__(
        self,
        model: Callable[..., Tensor],
        extra_args: Mapping[str, Any],
        host_dtype: torch.dtype,
        family: HostFamily,
        sigma_min: float,
        sigma_max: float,
        on_call: Callable[[Tensor, Tensor, Tensor], None],
        guidance_scale: float | None = None,
    ) -> None:
        super().__init__(sigma_min, sigma_max)
        self.family = family
        # the host binds conditioning and applies guidance itself: the scale it reports
        # (k-diffusion's ``cond_scale``), else the file's (checked by ``_check_guidance``)
        self.guidance_scale = guidance_scale
        # plain attributes: the host's model is not a submodule of this wrapper
        object.__setattr__(self, "host_model", model)
        object.__setattr__(self, "on_call", on_call)
        self.extra_args = extra_args
        self.host_dtype = host_dtype

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = sigma.reshape(-1)
        if self.family == "flow":
            x_in, s_in = x / (1 + sigma), s / (1 + s)
        else:
            x_in, s_in = x, s
        x_in = x_in.to(self.host_dtype)
        out = self.host_model(x_in, s_in, **self.extra_args)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the host's model returned {got} for x of shape {tuple(x.shape)}; a "
                "k-diffusion-style model(x, sigma, **extra_args) returns the denoised x̂0 of "
                "x's shape (wrap ε- or v-prediction networks with the host's denoiser wrapper)."
            )
        self.on_call(x_in, s_in, out)
        return out.to(x.dtype)


class KDiffusionSampler:
    """A fitted solver file as ``fn(model, x, sigmas, extra_args=None, callback=None,
    disable=None)``, the sampler interface of k-diffusion, ComfyUI, AUTOMATIC1111 and Forge.

    Args:
        solver: a fitted-solver file (``python -m dode.train`` writes one) or a
            :class:`~dode.files.solver_file.FittedSolver`.
        host_family: the host's convention: ``"vp"`` (σ-space, k-diffusion's own; default) or
            ``"flow"`` (ComfyUI's rectified flows: σ_host = t). It must be the file's model
            family.
        dode: ``False`` runs the base solver on the same grid (λ = 0), for comparison.
        check_finite: raise on non-finite model outputs (as :func:`dode.sample`).

    Raises:
        ValueError: unreadable file, unknown ``host_family``, or a file of the other family.
    """

    def __init__(
        self,
        solver: FittedSolver | str | os.PathLike,
        *,
        host_family: HostFamily = "vp",
        dode: bool = True,
        check_finite: bool = True,
    ) -> None:
        if isinstance(solver, FittedSolver):
            fitted, source = solver, "the fitted solver"
        else:
            fitted, source = FittedSolver.load(solver), repr(str(solver))
        if host_family not in HOST_FAMILIES:
            raise ValueError(
                f"unknown host_family {host_family!r}; use 'vp' (σ-space: Stable Diffusion "
                "1.x/2.x/SDXL, k-diffusion's wrappers) or 'flow' (ComfyUI's SD3/FLUX, σ = t)."
            )
        family = (fitted.model or {}).get("family", "vp")
        if family != host_family:
            model = fitted.model.get("id") or fitted.model.get("class") or "its model"
            raise ValueError(
                f"{source} was fitted on a {_FAMILY_NAMES[family]} model ({model}) but the host "
                f"is a {_FAMILY_NAMES[host_family]} host: its σ grid and λ do not apply there. "
                f"Use it with host_family={family!r} in a host running that model, or fit a "
                "solver for the host's model."
            )
        self.fitted = fitted
        self.host_family: HostFamily = host_family
        self.dode = bool(dode)
        self.check_finite = bool(check_finite)
        self.__name__ = f"sample_dode_{fitted.solver.get('name', 'solver')}"

    @property
    def sigmas(self) -> Tensor:
        """The fitted σ list in the host's convention (float64, descending, as the file's grid
        ends): σ for a VP host, ``t = σ/(1 + σ)`` for a flow host. Feed exactly this list to
        the host (ComfyUI: as ``SIGMAS``)."""
        s = self.fitted.sigmas.clone()
        return s / (1 + s) if self.host_family == "flow" else s

    @property
    def nfe(self) -> int:
        """Model calls per sample."""
        return self.fitted.nfe

    def check_sigmas(self, sigmas: Tensor | Any) -> None:
        """``ValueError`` unless ``sigmas`` is the fitted list (:attr:`sigmas`): every σ to
        1e-5 relative, or to the precision of ``sigmas``' dtype where that is coarser."""
        want = self.sigmas
        fix = (
            "pass exactly the fitted list, KDiffusionSampler(...).sigmas (ComfyUI: feed it as "
            "the SIGMAS input; AUTOMATIC1111/Forge: a scheduler entry that returns it)"
        )
        try:
            host = torch.as_tensor(sigmas).detach()
            got = host.to("cpu", torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"sigmas must be a 1-D tensor of σ, got {type(sigmas).__name__}; {fix}."
            ) from None
        # a copy of the fitted list rounded to the host's dtype is the fitted list
        rtol = (
            max(SIGMA_RTOL, torch.finfo(host.dtype).eps) if host.is_floating_point() else SIGMA_RTOL
        )
        name = self.fitted.build_solver().describe()
        what = f"the fitted grid of {name} ({len(want) - 1} steps, NFE {self.nfe}): {_fmt(want)}"
        if got.ndim != 1 or len(got) != len(want):
            shape = f"{len(got)} values" if got.ndim == 1 else f"shape {tuple(got.shape)}"
            hint = ""
            if got.ndim == 1 and len(got) == len(want) + 1:
                hint = " (one σ appended or inserted?)"
            elif got.ndim == 1 and len(got) == len(want) - 1:
                hint = " (one σ dropped?)"
            raise ValueError(
                f"the host's σ list has {shape}{hint} {_fmt(got.flatten())}, but this solver "
                f"runs only on {what}; {fix}."
            )
        diff = (got - want).abs()
        bad = (diff > rtol * want.abs()) | ~torch.isfinite(got)
        if bad.any():
            i = int(bad.nonzero()[0])
            ratio = got[0] / want[0] if want[0] != 0 else float("nan")
            rescaled = (
                bool(torch.allclose(got, want * ratio, rtol=rtol, atol=0))
                and abs(float(ratio) - 1) > rtol
            )
            hint = f" (the whole list is rescaled by {float(ratio):.6g})" if rescaled else ""
            raise ValueError(
                f"the host's σ list {_fmt(got)} differs from {what} at index {i} "
                f"({float(got[i]):.8g} vs {float(want[i]):.8g}){hint}; {fix}."
            )

    def check_model(self, model: Any) -> None:
        """``ValueError`` when the host's model visibly does not fit the file: a discrete VP
        σ table (k-diffusion's ``DiscreteSchedule``, ComfyUI's discrete sampling) in a flow
        host, or a VP table other than the one of the model the file was fitted on."""
        table = host_sigma_table(model)
        if table is None:
            return
        if self.host_family == "flow":
            raise ValueError(
                f"the host's model is a discrete diffusion (DDPM/VP) model ({len(table)} noise "
                "levels, a k-diffusion DiscreteSchedule or ComfyUI discrete sampling) but this "
                "solver was fitted on a rectified-flow model: its σ grid and λ do not apply. "
                "Use a solver file fitted on the host's model (host_family='vp')."
            )
        schedule = (self.fitted.model or {}).get("schedule") or {}
        alphas = schedule.get("alphas_cumprod")
        if not alphas:
            return
        a = torch.as_tensor(alphas, dtype=torch.float64)
        want = ((1 - a) / a).sqrt()
        got = table.to("cpu", torch.float64)
        if got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=0):
            return
        raise ValueError(
            f"the host's model has another noise schedule ({len(got)} levels, σ "
            f"{float(got.min()):.6g}…{float(got.max()):.6g}) than the model this solver was "
            f"fitted on ({self.fitted.model.get('id') or 'its model'}: {len(want)} levels, σ "
            f"{float(want.min()):.6g}…{float(want.max()):.6g}); fit a solver for the host's model."
        )

    def _check_guidance(self, extra_args: Mapping[str, Any]) -> None:
        """Warn when k-diffusion-style ``extra_args["cond_scale"]`` differs from the file's
        guidance scale (λ depend on it)."""
        w = _cond_scale(extra_args)
        fitted = (self.fitted.model or {}).get("guidance_scale")
        if w is not None and fitted is not None and w != float(fitted):
            warnings.warn(
                f"the host's guidance scale (cond_scale {w:g}) is not the one the λ were fitted "
                f"at ({float(fitted):g}); λ depend on it, so fit again at this scale for the "
                "best samples.",
                UserWarning,
                stacklevel=3,
            )

    def __call__(
        self,
        model: Callable[..., Tensor],
        x: Tensor,
        sigmas: Tensor,
        extra_args: dict | None = None,
        callback: Callable[[dict], Any] | None = None,
        disable: bool | None = None,
    ) -> Tensor:
        """Sample with the fitted solver, as a k-diffusion sampler.

        Args:
            model: the host's ``model(x, sigma, **extra_args) → x̂0`` (``sigma``: shape [B]).
            x: the start, ``noise · sigmas[0]`` (VP) or ``x_t`` at ``t = sigmas[0]`` (flow).
            sigmas: the fitted σ list in the host's convention (:attr:`sigmas`).
            extra_args: keyword arguments for ``model``, passed through untouched.
            callback: called once per step with ``{"x", "i", "sigma", "sigma_hat",
                "denoised"}``.
            disable: ``True`` hides the progress bar.

        Returns:
            The sample at ``sigmas[-1]``, in ``x``'s dtype.

        Raises:
            ValueError: another σ list, an ``x`` that is not a floating tensor with a batch
                dimension, a model that does not return x̂0 of ``x``'s shape, or a host model
                whose discrete σ table shows another model (:meth:`check_model`).
        """
        from tqdm.auto import tqdm

        if extra_args is None:
            extra_args = {}
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
            raise ValueError(
                f"x must be a floating-point tensor [B, ...] (the noise times sigmas[0]), got "
                f"{type(x).__name__ if not isinstance(x, Tensor) else f'{x.dtype} {tuple(x.shape)}'}."
            )
        self.check_sigmas(sigmas)
        self.check_model(model)
        self._check_guidance(extra_args)
        host_sigmas = torch.as_tensor(sigmas)
        host_dtype = x.dtype
        work = torch.float64 if host_dtype == torch.float64 else torch.float32
        grid = self.fitted.sigmas
        sigma_0 = float(grid[0])
        # dode's noise: x = noise · σ_0 in σ-space (flow: x = x_t / (1 − t_0) = x_t (1 + σ_0))
        start = x.to(work) * (1 + sigma_0) if self.host_family == "flow" else x.to(work)
        noise = start / sigma_0

        step = {"i": 0, "reported": False}

        def on_call(x_in: Tensor, s_in: Tensor, denoised: Tensor) -> None:
            if step["reported"]:
                return
            step["reported"] = True
            if callback is not None:
                i = step["i"]
                callback(
                    {
                        "x": x_in.to(host_dtype),
                        "i": i,
                        "sigma": host_sigmas[i],
                        "sigma_hat": host_sigmas[i],
                        "denoised": denoised.to(host_dtype),
                    }
                )

        positive = grid[grid > 0]
        # the model's σ range where the host shows its σ table (a model-time shift may not
        # leave it), else unknown below the grid
        table = host_sigma_table(model) if self.host_family == "vp" else None
        low = float(table.min()) if table is not None else 0.0
        den = _HostDenoiser(
            model,
            extra_args,
            host_dtype,
            self.host_family,
            min(low, float(positive.min()))
            if self.fitted.shift is not None
            else float(positive.min()),
            float(positive.max()) * (1 + 1e-9),
            on_call,
            guidance_scale=_host_guidance(
                extra_args, (self.fitted.model or {}).get("guidance_scale")
            ),
        )
        with tqdm(total=len(grid) - 1, disable=disable) as bar:

            def on_step(i: int, sigma_next: float, x_next: Tensor) -> None:
                step["i"], step["reported"] = i + 1, False
                bar.update(1)

            out = self.fitted.sample(
                den, noise, dode=self.dode, check_finite=self.check_finite, callback=on_step
            )
        if self.host_family == "flow":
            out = out / (1 + float(grid[-1]))
        return out.to(host_dtype)

    def __repr__(self) -> str:
        name = self.fitted.build_solver().describe()
        return (
            f"KDiffusionSampler({name}, NFE {self.nfe}, host_family={self.host_family!r}, "
            f"sigmas={_fmt(self.sigmas, 6)})"
        )
