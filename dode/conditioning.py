"""Conditioning as a function of the seed: class labels and prompts per sample.

Noise is a function of each sample's seed only (:func:`dode.noise.noise_from_seeds`); so is its
conditioning, so the same seeds give the same images for any batch size and any number of
processes:

* class labels: ``"all"`` gives seed ``s`` the label ``s % num_classes``; a list ``[l_0, …,
  l_{n−1}]`` gives it ``l_{s % n}``; ``"uniform"`` draws it from the seed (a hash of the seed,
  independent of the noise stream).
* prompts: a list (or a file with one prompt per line) gives seed ``s`` the prompt
  ``prompts[s % n]``; one negative prompt for all.

:class:`SeedConditioning` holds the rule, checks it against a model (:meth:`SeedConditioning.
check`), resolves it for seeds (:meth:`SeedConditioning.for_seeds`) and describes it for records
and cache keys (:meth:`SeedConditioning.describe`: the kind and a hash of the prompts / the
label rule).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "SeedConditioning",
    "read_prompts",
    "prompts_hash",
    "label_rule",
    "conditioning_for_solver",
    "bind_seeds",
]


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a text file, one per line (blank lines skipped, whitespace stripped).

    Raises:
        ValueError: the file is missing or holds no prompt.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(
            f"prompts file {str(p)!r} does not exist; pass a text file with one prompt per line."
        )
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read prompts file {str(p)!r} ({e}); use UTF-8 text.") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError(
            f"prompts file {str(p)!r} is empty; write one prompt per line (blank lines are "
            "skipped)."
        )
    return prompts


def prompts_hash(prompts: Sequence[str]) -> str:
    """16 hex digits of SHA-256 over the prompts (in order, newline-joined)."""
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()[:16]


def label_rule(spec: Any) -> str | list[int]:
    """``"all"``, ``"uniform"`` or a list of integer labels from a CLI/config value
    (``"0,1,2"``, ``[0, 1, 2]``, ``3``)."""
    if isinstance(spec, str):
        text = spec.strip()
        if text in ("all", "uniform"):
            return text
        try:
            spec = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"class_labels {text!r} is not 'all', 'uniform' or a comma-separated list of "
                "integer labels such as '0,1,2'."
            ) from None
    elif isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if not isinstance(spec, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in spec
    ):
        raise ValueError(
            f"class_labels must be 'all', 'uniform' or a list of integer labels, got {spec!r}."
        )
    if not spec:
        raise ValueError("class_labels is empty; give 'all', 'uniform' or labels such as 0,1,2.")
    return list(spec)


def _uniform_label(seed: int, n: int) -> int:
    digest = hashlib.sha256(f"dode.class_label:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % n


@dataclass(frozen=True)
class SeedConditioning:
    """The conditioning rule of a run: per-seed class labels or prompts.

    Attributes:
        kind: ``"class_labels"`` or ``"prompts"``.
        labels: the label rule (``"all"``, ``"uniform"`` or a list), for ``class_labels``.
        prompts: the prompts, for ``prompts`` (seed ``s`` gets ``prompts[s % n]``).
        negative_prompt: text models: the unconditional prompt (``None``: the model's default).
    """

    kind: Literal["class_labels", "prompts"]
    labels: str | tuple[int, ...] | None = None
    prompts: tuple[str, ...] | None = None
    negative_prompt: str | None = None

    @staticmethod
    def check_options(
        class_labels: Any = None,
        prompts_file: str | os.PathLike | None = None,
        prompts: Sequence[str] | str | None = None,
        negative_prompt: str | None = None,
    ) -> None:
        """The checks of :meth:`from_options` that need no file: one kind of conditioning, a
        valid label rule, non-empty prompts, a negative prompt only with prompts. The prompts
        file itself is read (and checked) by :meth:`from_options`.

        Raises:
            ValueError: the first problem, with its fix.
        """
        given = [
            n
            for n, v in (
                ("class labels", class_labels),
                ("a prompts file", prompts_file),
                ("prompts", prompts),
            )
            if v is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"give one kind of conditioning, not {' and '.join(given)}: class labels for a "
                "class-conditional model, prompts (or a prompts file) for a text model."
            )
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise ValueError(f"negative_prompt must be a string, got {negative_prompt!r}.")
        if class_labels is not None:
            if negative_prompt is not None:
                raise ValueError(
                    "negative_prompt is for text models; a class-conditional model's "
                    "unconditional input is its null label. Drop negative_prompt."
                )
            label_rule(class_labels)
        elif prompts is not None:
            items = [prompts] if isinstance(prompts, str) else list(prompts)
            if not items or not all(isinstance(p, str) and p.strip() for p in items):
                raise ValueError("prompts must be non-empty strings; give at least one prompt.")
        elif prompts_file is None and negative_prompt is not None:
            raise ValueError(
                "negative_prompt without prompts; give prompts (or a prompts file) too."
            )

    @classmethod
    def from_options(
        cls,
        class_labels: Any = None,
        prompts_file: str | os.PathLike | None = None,
        prompts: Sequence[str] | str | None = None,
        negative_prompt: str | None = None,
    ) -> SeedConditioning | None:
        """The rule for the given options (``None`` when none is given).

        Args:
            class_labels: ``"all"``, ``"uniform"``, a list or ``"0,1,2"``.
            prompts_file: a text file, one prompt per line.
            prompts: prompts given directly (a string: one prompt for every seed).
            negative_prompt: one negative prompt for all samples (text models).
        """
        cls.check_options(class_labels, prompts_file, prompts, negative_prompt)
        if class_labels is not None:
            rule = label_rule(class_labels)
            return cls("class_labels", labels=rule if isinstance(rule, str) else tuple(rule))
        if prompts_file is not None:
            return cls("prompts", prompts=tuple(read_prompts(prompts_file)),
                       negative_prompt=negative_prompt)  # fmt: skip
        if prompts is not None:
            items = [prompts] if isinstance(prompts, str) else list(prompts)
            return cls("prompts", prompts=tuple(items), negative_prompt=negative_prompt)
        return None

    # ---- against a model ---------------------------------------------------------------------
    def check(self, denoiser, guidance_scale: float = 1.0) -> None:
        """Raise ``ValueError`` unless the model takes this kind of conditioning (labels in
        range) and, for ``guidance_scale != 1``, has an unconditional input."""
        name = getattr(denoiser, "model_id", None) or type(denoiser).__name__
        if not getattr(denoiser, "conditional", False):
            what = "prompts were" if self.kind == "prompts" else "class labels were"
            raise ValueError(
                f"{what} given for the unconditional model {name!r}; drop them, or load a "
                "conditional model (a class-conditional UNet2DModel, Stable Diffusion)."
            )
        text = getattr(denoiser, "text_conditional", False)
        if self.kind == "prompts" and not text:
            raise ValueError(
                f"prompts were given for {name!r}, a class-conditional model; pass class labels "
                f"instead {denoiser.describe_conditioning()}."
            )
        if self.kind == "class_labels" and text:
            raise ValueError(
                f"class labels were given for {name!r}, a text-conditional model; pass prompts "
                "(a prompts file) instead."
            )
        if self.kind == "class_labels" and isinstance(self.labels, tuple):
            n = denoiser.num_classes
            bad = [v for v in self.labels if not 0 <= v < n]
            if bad:
                raise ValueError(
                    f"class label {bad[0]} is out of range: the model {name!r} has {n} classes, "
                    f"labels 0..{n - 1}."
                )
        if float(guidance_scale) != 1.0 and not getattr(denoiser, "has_unconditional", False):
            raise ValueError(
                f"guidance_scale {guidance_scale:g} needs the model's unconditional output, but "
                f"{name!r} has no unconditional input (no null label / not trained with "
                "condition dropout); use guidance_scale 1."
            )

    def for_seeds(self, seeds: Sequence[int], num_classes: int | None = None) -> Tensor | list[str]:
        """Each seed's conditioning: labels ``[B]`` (long) or a list of prompts."""
        seeds = [int(s) for s in seeds]
        if self.kind == "prompts":
            n = len(self.prompts)
            return [self.prompts[s % n] for s in seeds]
        if isinstance(self.labels, tuple):
            n = len(self.labels)
            return torch.tensor([self.labels[s % n] for s in seeds], dtype=torch.long)
        if num_classes is None:
            raise ValueError(f"class_labels {self.labels!r} needs the model's number of classes.")
        if self.labels == "all":
            return torch.tensor([s % num_classes for s in seeds], dtype=torch.long)
        return torch.tensor([_uniform_label(s, num_classes) for s in seeds], dtype=torch.long)

    def describe(self) -> dict:
        """The kind and a hash of the prompts / the label rule (JSON-able; for cache keys and
        the fitted-solver file)."""
        if self.kind == "class_labels":
            rule = self.labels if isinstance(self.labels, str) else list(self.labels)
            return {"kind": "class_labels", "labels": rule}
        return {
            "kind": "prompts",
            "num_prompts": len(self.prompts),
            "prompts_hash": prompts_hash(self.prompts),
            "negative_prompt": self.negative_prompt,
        }


def conditioning_for_solver(
    model_meta: dict,
    denoiser,
    *,
    prompt: str | None = None,
    prompts_file: str | os.PathLike | None = None,
    class_labels: Any = None,
    negative_prompt: str | None = None,
    guidance_scale: float | None = None,
    guidance_rescale: float | None = None,
) -> tuple[SeedConditioning | None, float, float]:
    """The conditioning rule and guidance ``(w, φ)`` to sample a fitted solver with.

    ``model_meta`` is the file's ``model`` record. Without class labels or prompts, a file
    fitted with a label rule reuses it; one fitted with prompts is an error (the file keeps
    only their hash). The guidance comes from the file unless given; another scale than the
    fitted one warns (λ depend on it).

    Raises:
        ValueError: conditioning the model does not take, labels out of range, a missing or
            empty prompts file, guidance for a model without an unconditional input, prompts
            missing for a solver fitted with prompts.
    """
    import warnings

    from .denoisers import check_guidance

    rule = SeedConditioning.from_options(
        class_labels=class_labels, prompts_file=prompts_file, prompts=prompt,
        negative_prompt=negative_prompt,
    )  # fmt: skip
    fitted = model_meta.get("conditioning") or None
    if rule is None and fitted is not None:
        if fitted.get("kind") == "prompts":
            raise ValueError(
                f"this solver was fitted with prompts ({fitted.get('num_prompts')} prompts, hash "
                f"{fitted.get('prompts_hash')}); pass --prompt TEXT or --prompts_file FILE."
            )
        labels = label_rule(fitted.get("labels", "all"))
        rule = SeedConditioning(
            "class_labels", labels=labels if isinstance(labels, str) else tuple(labels)
        )
    w_fit = float(model_meta.get("guidance_scale", 1.0))
    phi_fit = float(model_meta.get("guidance_rescale", 0.0))
    w, phi = check_guidance(
        w_fit if guidance_scale is None else guidance_scale,
        phi_fit if guidance_rescale is None else guidance_rescale,
    )
    if w != w_fit or phi != phi_fit:
        warnings.warn(
            f"the λ were fitted for guidance scale {w_fit:g} (rescale {phi_fit:g}) but sampling "
            f"uses {w:g} (rescale {phi:g}); λ depend on the guidance scale, so fit again for "
            "this scale for the best samples.",
            UserWarning,
            stacklevel=2,
        )
    if rule is not None:
        rule.check(denoiser, w)
    elif getattr(denoiser, "conditional", False):
        raise ValueError(
            f"the model is conditional {denoiser.describe_conditioning()}: pass --class_labels "
            "(class-conditional) or --prompt / --prompts_file (text models)."
        )
    elif w != 1.0:
        raise ValueError(
            f"guidance scale {w:g} needs a conditional model with an unconditional input; this "
            "model is unconditional: use guidance scale 1."
        )
    return rule, w, phi


def bind_seeds(denoiser, rule: SeedConditioning | None, seeds: Sequence[int], w: float,
               phi: float):  # fmt: skip
    """``denoiser`` bound to the conditioning of ``seeds`` (itself when ``rule`` is None)."""
    if rule is None:
        return denoiser
    cond = rule.for_seeds(seeds, getattr(denoiser, "num_classes", None))
    if isinstance(cond, Tensor):
        cond = cond.to(next(denoiser.parameters()).device)
    return denoiser.bind(cond, guidance_scale=w, guidance_rescale=phi,
                         negative_prompt=rule.negative_prompt)  # fmt: skip
