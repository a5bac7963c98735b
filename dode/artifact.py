"""A fitted D-ODE solver as a file: safetensors (σ grid, λ) + JSON metadata.

The file is self-contained: solver name and options, the σ grid, λ, the teacher settings, the
model's id and a hash of its weights, fit metrics and the package version. Loading it on
another machine and sampling from the same seeds reproduces the same samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from . import __version__
from .solvers import Solver, get_solver

FORMAT = "dode.fitted_solver/1"

__all__ = [
    "FittedSolver",
    "weights_hash",
    "atomic_write",
    "atomic_folder",
    "model_family",
    "model_schedule",
]

FAMILIES = ("vp", "flow")


def model_family(denoiser_or_class) -> str:
    """``"flow"`` for rectified flows (SD3, FLUX, flow UNets: σ = t/(1 − t)), ``"vp"`` for
    diffusion models in σ-space (DDPM / Stable Diffusion, EDM-style denoisers, the mixtures).

    Takes a denoiser or the class name a fitted-solver file records (``model["class"]``).
    A σ grid and its λ belong to one family: the same σ means another noise level in the other.
    """
    if isinstance(denoiser_or_class, str):
        from . import denoisers

        known = getattr(denoisers, denoiser_or_class, None)
        if isinstance(known, type) and getattr(known, "family", None) in FAMILIES:
            return known.family
        return "flow" if "Flow" in denoiser_or_class else "vp"
    family = getattr(denoiser_or_class, "family", None)
    if family in FAMILIES:
        return family
    inner = getattr(denoiser_or_class, "model", None)  # a bound (guided) denoiser
    if inner is not None and getattr(inner, "family", None) in FAMILIES:
        return inner.family
    return "vp"


_HASHES: dict[str, str] = {}  # file-identity key -> weights hash, for this process


def _hash_tensors(module: nn.Module) -> str:
    h = hashlib.sha256()
    for key, val in sorted(module.state_dict().items()):
        h.update(key.encode())
        t = val.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _file_key(module: nn.Module) -> str | None:
    """A key for the module's weights by the identity of the files they were loaded from
    (path, size, mtime, inode) and the state dict's names, dtypes and shapes; ``None`` if
    the module does not say which files it came from (or one of them is gone)."""
    files = getattr(module, "weight_files", ())
    if not files:
        return None
    ident = []
    try:
        for f in files:
            st = os.stat(f)
            ident.append([os.path.realpath(f), st.st_size, st.st_mtime_ns, st.st_ino])
    except OSError:
        return None
    tensors = [[k, str(v.dtype), list(v.shape)] for k, v in sorted(module.state_dict().items())]
    blob = json.dumps({"files": ident, "tensors": tensors}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def weights_hash(module: nn.Module, *, cache: bool = True) -> str:
    """sha256 over a module's state dict (keys sorted; tensors as contiguous CPU bytes).

    Hashing a multi-GB model takes minutes, so for a module loaded from files (its
    ``weight_files``, set by :meth:`dode.denoisers.DiffusersDenoiser.from_pretrained`) the
    result is cached by the files' identity (path, size, mtime, inode) and the state dict's
    names, dtypes and shapes: in memory for this process and under
    ``$DODE_CACHE/weights-hash`` across processes. A rewritten weight file gets a new key and
    is hashed again. The value is always the tensor hash; modules without ``weight_files``
    (built in memory) are hashed every time. A frozen denoiser is assumed to hold the weights
    of its files (weights changed in memory after loading are not seen; pass
    ``cache=False`` to hash the tensors).
    """
    key = _file_key(module) if cache else None
    if key is None:
        return _hash_tensors(module)
    if key in _HASHES:
        return _HASHES[key]
    from .cache import cache_root

    path = cache_root("weights-hash", key)
    try:
        value = path.read_text().strip()
    except OSError:
        value = ""
    if len(value) != 64 or not set(value) <= set("0123456789abcdef"):
        value = _hash_tensors(module)
        try:
            atomic_write(path, lambda tmp: Path(tmp).write_text(value + "\n"))
        except OSError:  # a read-only cache only costs the time
            pass
    _HASHES[key] = value
    return value


def model_schedule(denoiser) -> dict | None:
    """The model family's noise schedule, as the fitted-solver file records it under
    ``model["schedule"]`` (what :meth:`dode.diffusers.DODEScheduler.from_solver_file` needs to
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


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; when the block finishes, make its contents
    readable (0755/0644) and move it onto ``path``, replacing what was there. If the block
    raises, the temporary folder is removed and ``path`` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=path.parent))
    try:
        yield tmp
        for p in [tmp, *tmp.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@dataclass
class FittedSolver:
    """A solver with its σ grid and fitted λ (``lambdas=None`` in a file is not allowed)."""

    solver: dict
    sigmas: Tensor
    lambdas: Tensor
    teacher: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    version: str = __version__

    def __post_init__(self) -> None:
        self.sigmas = torch.as_tensor(self.sigmas, dtype=torch.float64).flatten()
        self.lambdas = torch.as_tensor(self.lambdas, dtype=torch.float64).flatten()
        if self.model and "family" not in self.model and self.model.get("class"):
            self.model = {**self.model, "family": model_family(str(self.model["class"]))}
        family = (self.model or {}).get("family")
        if family is not None and family not in FAMILIES:
            raise ValueError(
                f"unknown model family {family!r} in the fitted solver; use 'vp' or 'flow'."
            )
        solver = self.build_solver()
        nfe = solver.nfe(len(self.sigmas) - 1)
        if len(self.lambdas) != nfe:
            raise ValueError(
                f"{solver.describe()} on {len(self.sigmas) - 1} steps makes {nfe} model calls "
                f"but {len(self.lambdas)} λ were given."
            )

    def build_solver(self) -> Solver:
        return get_solver(**self.solver)

    @property
    def nfe(self) -> int:
        return len(self.lambdas)

    def check_model(self, denoiser) -> None:
        """Refuse a model of the other family than the one this solver was fitted on (a flow
        solver file with a DDPM model, or the reverse): ``ValueError``."""
        recorded = (self.model or {}).get("family")
        if recorded is None or denoiser is None:
            return
        actual = model_family(denoiser)
        if actual != recorded:
            names = {"vp": "diffusion (DDPM/VP, σ-space)", "flow": "rectified-flow"}
            name = getattr(denoiser, "model_id", None) or type(denoiser).__name__
            raise ValueError(
                f"this solver was fitted on a {names[recorded]} model "
                f"({self.model.get('id') or self.model.get('class')}) but {name!r} is a "
                f"{names[actual]} model: its σ grid and λ do not apply. Sample with the model "
                "the file records, or fit a solver for this model."
            )

    def sample(self, denoiser, noise: Tensor, *, dode: bool = True, **kwargs) -> Tensor:
        """Sample with this solver (``dode=False``: the base solver on the same grid)."""
        from .sampling import sample

        self.check_model(denoiser)
        return sample(
            denoiser,
            self.build_solver(),
            noise,
            self.sigmas,
            self.lambdas if dode else None,
            **kwargs,
        )

    def metadata(self) -> dict:
        meta = asdict(self)
        meta.pop("sigmas")
        meta.pop("lambdas")
        meta["format"] = FORMAT
        return meta

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (a partial file is never left behind)."""
        from safetensors.torch import save_file

        tensors = {"sigmas": self.sigmas.contiguous(), "lambdas": self.lambdas.contiguous()}
        meta = {"dode": json.dumps(self.metadata(), sort_keys=True)}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FittedSolver:
        """Load a fitted-solver file; a missing or corrupt file raises ``ValueError``."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ValueError(
                f"fitted-solver file {str(path)!r} does not exist; `python -m dode.train` writes "
                "one at the end of a fit (see its output for the path)."
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("dode")
                sigmas, lambdas = f.get_tensor("sigmas"), f.get_tensor("lambdas")
            meta = json.loads(raw) if raw else None
        except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
            raise ValueError(
                f"{str(path)!r} is not a readable fitted-solver file ({e}); re-run the fit or "
                "copy the file again."
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(
                f"{str(path)!r} is a safetensors file but not a dode fitted solver "
                f"(expected format {FORMAT!r})."
            )
        meta.pop("format")
        return cls(sigmas=sigmas, lambdas=lambdas, **meta)
