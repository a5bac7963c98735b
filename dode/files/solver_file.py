"""A fitted D-ODE solver as a file: safetensors (σ grid, λ) + JSON metadata.

The file is self-contained: solver name and options, the σ grid, λ, the teacher settings, the
model's id and a hash of its weights, fit metrics and the package version. Loading it on
another machine and sampling from the same seeds reproduces the same samples.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor

from ..denoisers.base import FAMILIES, family_of
from ..solvers import Solver, get_solver
from ..version import __version__
from .writes import atomic_write, check_replaceable, ensure_writable

FORMAT = "dode.fitted_solver/2"
_FORMAT_NAME, _FORMAT_MAJOR = "dode.fitted_solver", 2
#: the format major versions this dode reads: 1 (σ and λ) and 2 (also the end-to-end solver's
#: optional history coefficients and model-time shift, :mod:`dode.learned_solver`).
_READS = ("1", "2")
_TENSORS = ("coefficients", "shift")

__all__ = ["FittedSolver", "model_family", "model_schedule"]


#: |λ| above this in a loaded file draws a warning: fits give |λ| of order 1 (tens on a few
#: seeds); ±1e6 is a hand edit or a broken fit, and its samples blow up.
LAMBDA_WARN = 100.0


def _denoiser_name(denoiser) -> str:
    """How messages name a denoiser: its model id, else its class."""
    return getattr(denoiser, "model_id", None) or type(denoiser).__name__


def model_family(denoiser_or_class) -> str:
    """``"flow"`` or ``"vp"``: :func:`dode.denoisers.base.family_of` (the denoiser owns the
    answer), for a denoiser or the class name a fitted-solver file records."""
    return family_of(denoiser_or_class)


def model_schedule(denoiser) -> dict | None:
    """The model family's noise schedule, as the fitted-solver file records it under
    ``model["schedule"]`` (what :meth:`dode.hosts.diffusers.DODEScheduler.from_solver_file` needs to
    run the solver in a pipeline): ``{"family": "vp", "alphas_cumprod": [...],
    "prediction_type": ..., "num_train_timesteps": T}`` for diffusers VP models (pixel and
    latent), ``{"family": "flow", "prediction_type": "flow", "num_train_timesteps": T,
    "shift": s}`` for diffusers flows; ``None`` for other denoisers."""
    table = getattr(denoiser, "alphas_cumprod", None)
    if isinstance(table, Tensor) and getattr(denoiser, "prediction_type", None) is not None:
        return {
            "family": "vp",
            "alphas_cumprod": table.to(torch.float64).tolist(),
            "prediction_type": denoiser.prediction_type,
            "num_train_timesteps": len(table),
        }
    if hasattr(denoiser, "num_train_timesteps") and hasattr(denoiser, "shift"):
        return {
            "family": "flow",
            "prediction_type": "flow",
            "num_train_timesteps": int(denoiser.num_train_timesteps),
            "shift": float(denoiser.shift),
        }
    return None


def _check_values(sigmas: Tensor, lambdas: Tensor, where: str = "") -> None:
    """``ValueError`` naming σ or λ if either holds NaN or ±inf."""
    for name, t in (("λ", lambdas), ("σ", sigmas)):
        bad = (~torch.isfinite(t)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"{where}{name}[{bad[0]}] = {t[bad[0]].item()} is not finite ({len(bad)} of "
                f"{len(t)} values); every {name} must be a finite number. Refit, or fix the file."
            )


@dataclass
class FittedSolver:
    """A solver with its σ grid and fitted λ (``lambdas=None`` in a file is not allowed).

    An end-to-end learned solver (:func:`dode.learned_solver.fit_end_to_end`) also carries
    ``coefficients`` (``[K, K]`` history coefficients, zero on and above the sub-diagonal) and
    ``shift`` (``[K]`` model-time shift ξ); ``None`` for a plain D-ODE solver. Both are saved
    as tensors of the file (format 2) and applied by :meth:`sample` through
    :class:`dode.correction.DODECorrection`.
    """

    solver: dict
    sigmas: Tensor
    lambdas: Tensor
    teacher: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    version: str = __version__
    #: metadata keys of a newer minor version of the format, kept as they are and written back.
    extra: dict = field(default_factory=dict)
    #: history coefficients ``[K, K]`` of an end-to-end solver (``None``: none).
    coefficients: Tensor | None = None
    #: model-time shift ξ ``[K]`` of an end-to-end solver (``None``: none).
    shift: Tensor | None = None

    def __post_init__(self) -> None:
        self.sigmas = torch.as_tensor(self.sigmas, dtype=torch.float64).flatten()
        self.lambdas = torch.as_tensor(self.lambdas, dtype=torch.float64).flatten()
        if self.coefficients is not None:
            self.coefficients = torch.as_tensor(self.coefficients, dtype=torch.float64).detach()
        if self.shift is not None:
            self.shift = torch.as_tensor(self.shift, dtype=torch.float64).detach().flatten()
        if self.model and "family" not in self.model and self.model.get("class"):
            self.model = {**self.model, "family": model_family(str(self.model["class"]))}
        family = (self.model or {}).get("family")
        if family is not None and family not in FAMILIES:
            raise ValueError(
                f"unknown model family {family!r} in the fitted solver; use 'vp' or 'flow'."
            )
        _check_values(self.sigmas, self.lambdas)
        solver = self.build_solver()
        if len(self.sigmas) and self.sigmas[-1] != 0:
            raise ValueError(
                f"the σ grid of the fitted solver ends at σ = {self.sigmas[-1].item():.6g}, not "
                "at 0: its samples would keep that much noise. A fitted solver's grid runs from "
                "σ_max down to 0; refit, or restore the file's grid."
            )
        solver.check_grid(self.sigmas)
        nfe = solver.nfe(len(self.sigmas) - 1)
        if len(self.lambdas) != nfe:
            raise ValueError(
                f"{solver.describe()} on {len(self.sigmas) - 1} steps makes {nfe} model calls "
                f"but {len(self.lambdas)} λ were given."
            )
        from ..correction import call_sigmas, check_history

        check_history(
            self.coefficients, self.shift, nfe, "fitted solver: ", lambdas=self.lambdas,
            calls=call_sigmas(solver, self.sigmas) if self.shift is not None else None,
            sigmas=self.sigmas,
        )  # fmt: skip

    def build_solver(self) -> Solver:
        return get_solver(**self.solver)

    @property
    def nfe(self) -> int:
        return len(self.lambdas)

    def check_model(self, denoiser) -> None:
        """Check what the file records against the model it is used with.

        Refuses (``ValueError``) a model of the other family than the one this solver was
        fitted on (a flow solver file with a DDPM model, or the reverse), a grid that starts
        above the model's largest σ and a model-time shift that takes a call outside the
        model's σ range (naming the call). :meth:`sample` also refuses an unconditional (or unbound)
        model for a solver fitted on a conditional one. The weights hash is compared by
        :func:`check_model_weights` (the CLIs do).
        """
        if denoiser is None:
            return
        recorded = (self.model or {}).get("family")
        actual = model_family(denoiser)
        if recorded is not None and actual != recorded:
            names = {"vp": "diffusion (DDPM/VP, σ-space)", "flow": "rectified-flow"}
            name = _denoiser_name(denoiser)
            raise ValueError(
                f"this solver was fitted on a {names[recorded]} model "
                f"({self._name()}) but {name!r} is a "
                f"{names[actual]} model: its σ grid and λ do not apply. Sample with the model "
                "the file records, or fit a solver for this model."
            )
        self._check_sigma_range(denoiser)
        if self.shift is not None:  # no shifted call outside the model's σ range
            from ..correction import call_sigmas, check_history

            check_history(
                None, self.shift, self.nfe, "fitted solver: ",
                calls=call_sigmas(self.build_solver(), self.sigmas), sigmas=self.sigmas,
                model_range=(
                    float(getattr(denoiser, "sigma_min", 0.0) or 0.0),
                    float(getattr(denoiser, "sigma_max", float("inf")) or float("inf")),
                ),
            )  # fmt: skip

    def _name(self) -> str:
        return str(self.model.get("id") or self.model.get("class") or "its model")

    def _check_sigma_range(self, denoiser) -> None:
        top = getattr(denoiser, "sigma_max", None)
        try:
            top = float(top)
        except (TypeError, ValueError):
            return
        s0 = float(self.sigmas[0])
        if top < float("inf") and top > 0 and s0 > top * (1 + 1e-3):
            name = _denoiser_name(denoiser)
            raise ValueError(
                f"the fitted solver's grid starts at σ = {s0:.6g}, above the largest σ of "
                f"{name!r} ({top:.6g}): the model was never trained there, so the file does not "
                f"belong to this model (it was fitted on {self._name()!r}) or its grid was "
                "edited. Sample with the model the file records, or refit."
            )

    def _check_conditioning(self, denoiser) -> None:
        m = self.model or {}
        fitted_cond = m.get("conditioning") is not None
        w_file = m.get("guidance_scale")
        w_used = getattr(denoiser, "guidance_scale", None)
        name = _denoiser_name(denoiser)
        if fitted_cond and w_used is None:
            raise ValueError(
                f"this solver was fitted on the conditional model {self._name()!r} "
                f"({m.get('conditioning')}, guidance scale {w_file}), but {name!r} is an "
                "unconditional model (or a conditional one not bound to a batch): its λ do not "
                "apply. Bind the conditional model the file records, den.bind(cond, "
                f"guidance_scale={w_file}), or fit a solver for this model."
            )

    @property
    def is_end_to_end(self) -> bool:
        """Whether the file carries history coefficients or a model-time shift (hosts that
        run only λ must refuse it rather than drop them)."""
        return self.coefficients is not None or self.shift is not None

    def correction(self, dode: bool = True) -> dict:
        """The keyword arguments of :func:`dode.sample` that apply this solver's correction:
        ``lambdas`` and, for an end-to-end solver, ``coefficients`` and ``shift`` (all
        ``None`` with ``dode=False``: the base solver on the same grid)."""
        if not dode:
            return {"lambdas": None}
        out: dict = {"lambdas": self.lambdas}
        if self.coefficients is not None:
            out["coefficients"] = self.coefficients
        if self.shift is not None:
            out["shift"] = self.shift
        return out

    def sample(self, denoiser, noise: Tensor, *, dode: bool = True, **kwargs) -> Tensor:
        """Sample with this solver (``dode=False``: the base solver on the same grid).

        The model is checked against what the file records (:meth:`check_model`); noise in
        float16/bfloat16 is refused (too coarse for the ODE: pass ``noise.float()``)."""
        from ..sampling import sample

        self.check_model(denoiser)
        if denoiser is not None:
            self._check_conditioning(denoiser)
        return sample(
            denoiser, self.build_solver(), noise, self.sigmas, **self.correction(dode), **kwargs
        )

    def metadata(self) -> dict:
        meta = asdict(self)
        for key in ("sigmas", "lambdas", "coefficients", "shift"):
            meta.pop(key)
        extra = meta.pop("extra")
        meta = {**extra, **meta}
        meta["format"] = meta.get("format", FORMAT) if extra else FORMAT
        return meta

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a partial file is never left behind). Non-finite σ or λ and a
        path that cannot be written raise ``ValueError``."""
        from safetensors.torch import save_file

        _check_values(self.sigmas, self.lambdas)
        path = Path(path)
        if path.is_dir():
            raise ValueError(
                f"fitted-solver path {str(path)!r} is a folder; pass a file name such as "
                f"{str(path / 'solver.safetensors')!r}."
            )
        ensure_writable(path.parent, "the fitted-solver file's folder", "pass a writable path")
        check_replaceable(path, "fitted-solver file")
        tensors = {"sigmas": self.sigmas.contiguous(), "lambdas": self.lambdas.contiguous()}
        for key in ("coefficients", "shift"):
            if getattr(self, key) is not None:
                tensors[key] = getattr(self, key).contiguous()
        meta = {"dode": json.dumps(self.metadata(), sort_keys=True)}
        try:
            return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - OSError, safetensors' error on a full disk
            why = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise ValueError(
                f"fitted-solver file {str(path)!r} could not be written ({why}); nothing was "
                "written there. Free some space (or pass another path) and save again."
            ) from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> FittedSolver:
        """Load a fitted-solver file; a missing or corrupt file raises ``ValueError``."""
        from safetensors import safe_open

        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise ValueError(
                f"FittedSolver.load needs the path of a fitted-solver file, got {path!r}; "
                "`python -m dode.train` writes one at the end of a fit."
            )
        path = Path(path)
        if not path.exists():
            raise ValueError(
                f"fitted-solver file {str(path)!r} does not exist; `python -m dode.train` writes "
                "one at the end of a fit (see its output for the path)."
            )
        if not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file (a device, pipe or socket)"
            raise ValueError(
                f"fitted-solver path {str(path)!r} is {kind}; pass the .safetensors file a fit "
                "wrote (e.g. <run_dir>/solver.safetensors)."
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("dode")
                sigmas, lambdas = f.get_tensor("sigmas"), f.get_tensor("lambdas")
                history = {k: f.get_tensor(k) for k in ("coefficients", "shift") if k in f.keys()}
            meta = json.loads(raw) if raw else None
        except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
            raise ValueError(
                f"{str(path)!r} is not a readable fitted-solver file ({e}); re-run the fit or "
                "copy the file again."
            ) from None
        fmt = meta.get("format") if isinstance(meta, dict) else None
        name, _, version = str(fmt).partition("/")
        if name != _FORMAT_NAME:
            raise ValueError(
                f"{str(path)!r} is a safetensors file but not a dode fitted solver "
                f"(expected format {FORMAT!r})."
            )
        major = version.split(".")[0]
        if major not in _READS:
            raise ValueError(
                f"{str(path)!r} has fitted-solver format {fmt!r} (written by dode "
                f"{meta.get('version', '?')}); this dode ({__version__}) reads format versions "
                f"{', '.join(_READS)}. Upgrade dode (pip install -U dode) to read it."
            )
        if history and major == "1":
            raise ValueError(
                f"{str(path)!r} says format {fmt!r} but holds history coefficients or a "
                "model-time shift, which only format 2 has; the file is corrupt: re-run the fit."
            )
        _check_values(sigmas.double(), lambdas.double(), f"{str(path)!r}: ")
        known = {f.name for f in fields(cls)} - {"sigmas", "lambdas", "extra", *_TENSORS}
        extra = {k: v for k, v in meta.items() if k not in known}
        if set(extra) - {"format"}:
            warnings.warn(
                f"{str(path)!r} (format {fmt}, dode {meta.get('version', '?')}) has metadata "
                f"this dode ({__version__}) does not know: {', '.join(sorted(set(extra) - {'format'}))}; "
                "kept as they are but not used.",
                stacklevel=2,
            )
        else:
            extra = {}
        if not isinstance(meta.get("solver"), dict):
            raise ValueError(
                f"{str(path)!r} records no solver (metadata 'solver' missing); re-run the fit."
            )
        for key in ("model", "teacher", "metrics"):
            if meta.get(key) is not None and not isinstance(meta[key], dict):
                raise ValueError(
                    f"{str(path)!r} is damaged: its metadata '{key}' is a "
                    f"{type(meta[key]).__name__} ({str(meta[key])[:40]!r}), not a record; re-run "
                    "the fit or copy the file again."
                )
        kept = {k: v for k, v in meta.items() if k in known}
        fitted = cls(sigmas=sigmas, lambdas=lambdas, **kept, extra=extra, **history)
        big = (fitted.lambdas.abs() > LAMBDA_WARN).nonzero().flatten().tolist()
        if big:
            k = big[0]
            warnings.warn(
                f"{str(path)!r}: λ[{k}] = {fitted.lambdas[k].item():.6g} is far outside what a "
                f"D-ODE fit gives (|λ| <= {LAMBDA_WARN:g}; {len(big)} of {len(fitted.lambdas)} "
                "λ): samples may blow up. Check where these λ came from (a hand-edited file, a "
                "fit mixing problems), or refit.",
                stacklevel=2,
            )
        return fitted
