"""The hash of a model's weights: what a fitted-solver file records and the samplers check.

:func:`weights_hash` identifies a model's weights (its state dict, or what is reachable from a
model without one, or the factory it was loaded with), cached by file identity for models
loaded from files; :func:`check_model_weights` is the check ``dode.sample`` and
``dode.evaluate`` run before they sample with a file fitted on some model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import types
from pathlib import Path

import torch
from torch import Tensor, nn

from .cache import cache_root
from .writes import atomic_write

__all__ = ["weights_hash", "check_model_weights"]

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


def _reachable_tensors(obj, path: str, out: dict[str, Tensor], seen: set[int], depth: int) -> None:
    """Collect the tensors reachable from ``obj`` (modules' state dicts, tensors, closures,
    globals a function names, bound methods' ``self``, ``functools.partial`` arguments,
    containers and plain objects' attributes), keyed by a path that names where they sit."""
    if depth < 0 or id(obj) in seen or obj is None:
        return
    if isinstance(obj, (str, bytes, int, float, bool, complex, type, types.ModuleType)):
        return
    seen.add(id(obj))
    if isinstance(obj, Tensor):
        out[path] = obj
    elif isinstance(obj, nn.Module):
        for k, v in obj.state_dict(keep_vars=True).items():
            out[f"{path}.{k}"] = v
        _reachable_tensors(
            {k: v for k, v in vars(obj).items() if not k.startswith("_")},
            path,
            out,
            seen,
            depth - 1,
        )
    elif isinstance(obj, types.MethodType):
        _reachable_tensors(obj.__self__, f"{path}.__self__", out, seen, depth)
        _reachable_tensors(obj.__func__, path, out, seen, depth)
    elif isinstance(obj, functools.partial):
        _reachable_tensors(obj.func, f"{path}.func", out, seen, depth - 1)
        _reachable_tensors(list(obj.args), f"{path}.args", out, seen, depth - 1)
        _reachable_tensors(dict(obj.keywords), f"{path}.kw", out, seen, depth - 1)
    elif isinstance(obj, types.FunctionType):
        code = obj.__code__
        for name, cell in zip(code.co_freevars, obj.__closure__ or ()):
            try:
                val = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            _reachable_tensors(val, f"{path}.<{name}>", out, seen, depth - 1)
        for name in code.co_names:
            if name in obj.__globals__:
                _reachable_tensors(obj.__globals__[name], f"{path}.{name}", out, seen, depth - 1)
        _reachable_tensors(list(obj.__defaults__ or ()), f"{path}.defaults", out, seen, depth - 1)
        _reachable_tensors(
            dict(obj.__kwdefaults__ or {}), f"{path}.kwdefaults", out, seen, depth - 1
        )
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _reachable_tensors(v, f"{path}.{k}", out, seen, depth - 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _reachable_tensors(v, f"{path}[{i}]", out, seen, depth - 1)
    elif hasattr(obj, "__dict__") and not callable(getattr(obj, "__get__", None)):
        _reachable_tensors(
            {k: v for k, v in vars(obj).items() if not k.startswith("__")},
            path,
            out,
            seen,
            depth - 1,
        )


def _hash_reachable(module: nn.Module) -> str | None:
    """The hash of a module without weights of its own (e.g. a ``CallableDenoiser`` over a
    closure): the tensors reachable from its attributes, else the factory it was made by
    (``weights_spec``: ``package.module:factory`` or a registered name, and its arguments),
    else ``None`` (nothing identifies the weights)."""
    found: dict[str, Tensor] = {}
    attrs = {k: v for k, v in vars(module).items() if not k.startswith("_")}
    _reachable_tensors(attrs, "", found, {id(module)}, depth=6)
    if found:
        h = hashlib.sha256(b"reachable-tensors\n")
        for key in sorted(found):
            t = found[key].detach().cpu().contiguous()
            h.update(key.encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()
    spec = getattr(module, "weights_spec", None)
    if spec is not None:
        blob = json.dumps({"factory": spec}, sort_keys=True, default=repr).encode()
        return hashlib.sha256(blob).hexdigest()
    return None


def weights_hash(module: nn.Module, *, cache: bool = True) -> str | None:
    """sha256 over a module's state dict (keys sorted; tensors as contiguous CPU bytes).

    A module with an empty state dict (a ``CallableDenoiser`` over a closure, a factory's
    analytic model) is hashed by what can identify it: the tensors reachable from its
    attributes (modules, closures, globals its functions name, bound methods' ``self``,
    ``functools.partial`` arguments), else the factory and arguments it was loaded with
    (``weights_spec``, set by :func:`dode.denoisers.loading.load_denoiser`). ``None`` means nothing
    identifies its weights: the teacher cache is then off for it and the model checks of
    ``dode.sample``/``dode.evaluate`` cannot vouch for it (see :func:`check_model_weights`).

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
    if not module.state_dict():
        return _hash_reachable(module)
    key = _file_key(module) if cache else None
    if key is None:
        return _hash_tensors(module)
    if key in _HASHES:
        return _HASHES[key]
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


def check_model_weights(
    recorded: str | None,
    denoiser: nn.Module,
    model: str,
    *,
    source: str,
    ignore: bool = False,
    flag: str = "--ignore_model_hash",
) -> str:
    """Check that ``denoiser`` has the weights a fitted solver was fitted on.

    Args:
        recorded: the weights hash the file records (``None``: none).
        denoiser: the model to sample with.
        model: its name, for the message.
        source: the file, for the message.
        ignore: go on anyway (the override flag was given).
        flag: the override flag's name, for the message.

    Returns:
        ``"match"``, or ``"ignored"`` when ``ignore`` let a mismatch or an unverifiable model
        through.

    Raises:
        ValueError: the weights differ, or either side cannot identify them, and not
            ``ignore``.
    """
    have = weights_hash(denoiser)
    if recorded and have and recorded == have:
        return "match"
    if ignore:
        return "ignored"
    if recorded and have:
        raise ValueError(
            f"model {model!r} has other weights than the ones the λ in {source} were fitted "
            f"for (hash {have[:12]}… vs {recorded[:12]}…); pass the right --model, or {flag} "
            "to use them anyway."
        )
    which = (
        "the file records no weights hash"
        if not recorded
        else (
            f"nothing identifies the weights of {model!r} (no tensors reachable from it and no "
            "factory name)"
        )
    )
    raise ValueError(
        f"cannot check that {model!r} has the weights the λ in {source} were fitted for: "
        f"{which}; pass {flag} to use them anyway."
    )
