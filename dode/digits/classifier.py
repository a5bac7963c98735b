"""The bundled digits problem: data split, classifier, and the offline metrics it gives.

scikit-learn's 8×8 handwritten digits (1797 images, 10 classes, intensities 0..16) are the
data of the bundled diffusion model (``dode/assets/digits_ddpm``, made by ``python -m
dode.pretrain -c configs/pretrain/digits.yaml``). Images are scaled to ``[-1, 1]`` as
``x / 8 − 1`` and shaped ``[N, 1, 8, 8]``. One fixed, stratified split holds out 20% (360
images) for judging; everything is trained on the other 1437.

Metrics (none of them is FID; no Inception network is involved):

* **FD-digits** (:func:`fd_digits`): Fréchet distance between Gaussian fits of the
  penultimate-layer features of a small digits classifier (:class:`DigitsClassifier`, shipped
  in ``dode/assets/digits_classifier``), a feature space that knows what a digit looks like.
* **FD-pixel** (:func:`fd_pixel`): the same distance on the 64 raw pixels.
* **MSE to the teacher**: :func:`dode.metrics.mse` between a sampler's output and the
  teacher's from the same noise.

Train the classifier with ``python -m dode.digits --output dode/assets/digits_classifier``
(the command line is :mod:`dode.cli.digits`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..files.writes import atomic_folder
from ..metrics import frechet_distance, gaussian_stats, mse

__all__ = [
    "ASSETS",
    "DIGITS_MODEL",
    "DIGITS_CLASSIFIER",
    "DigitsSplit",
    "load_digits_split",
    "to_images",
    "DigitsClassifier",
    "load_classifier",
    "train_classifier",
    "digits_features",
    "feature_hook",
    "fd_digits",
    "fd_pixel",
    "mse",
    "check_images",
    "digits_stats",
    "pixel_stats",
    "asset_files",
    "write_asset_hashes",
    "verify_assets",
]

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DIGITS_MODEL = ASSETS / "digits_ddpm"
DIGITS_CLASSIFIER = ASSETS / "digits_classifier"

SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class DigitsSplit:
    """The fixed digits split; images in ``[-1, 1]``, shape ``[N, 1, 8, 8]``, float32."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def to_images(raw: np.ndarray) -> Tensor:
    """scikit-learn digit intensities 0..16 (``[N, 64]`` or ``[N, 8, 8]``) → ``[N, 1, 8, 8]``
    in ``[-1, 1]``."""
    a = np.asarray(raw, dtype=np.float32).reshape(-1, 1, 8, 8)
    return torch.from_numpy(a / 8.0 - 1.0)


@lru_cache(maxsize=1)
def _split() -> DigitsSplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    idx = np.arange(len(data.target))
    tr, te = train_test_split(
        idx, test_size=TEST_FRACTION, stratify=data.target, random_state=SPLIT_SEED
    )
    tr, te = np.sort(tr), np.sort(te)
    images, labels = to_images(data.images), torch.from_numpy(data.target.astype(np.int64))
    return DigitsSplit(images[tr], labels[tr], images[te], labels[te])


def load_digits_split() -> DigitsSplit:
    """The fixed split: 1437 training and 360 held-out images (stratified, seed 0).

    The returned tensors are shared between calls: do not modify them in place.
    """
    return _split()


def check_images(images: Tensor, name: str = "images") -> Tensor:
    """``images`` as float32 ``[N, 1, 8, 8]``; a clear ``ValueError`` otherwise."""
    if not isinstance(images, Tensor):
        images = torch.as_tensor(np.asarray(images))
    if images.ndim == 2 and images.shape[1] == 64:
        images = images.reshape(-1, 1, 8, 8)
    elif images.ndim == 3 and tuple(images.shape[1:]) == (8, 8):
        images = images[:, None]
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(
            f"{name} must be digits of shape [N, 1, 8, 8] (or [N, 64]) scaled to [-1, 1]; got "
            f"{tuple(images.shape)}."
        )
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contain non-finite values (NaN or inf); check the sampler.")
    return images.detach().to(torch.float32)


# ----------------------------------------------------------------------------------- hashes

HASHES_FILE = "SHA256SUMS"


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def asset_files(root: str | os.PathLike = ASSETS) -> list[Path]:
    """Every shipped file under ``root`` (sorted; the hashes file itself excluded)."""
    root = Path(root)
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.name != HASHES_FILE and "__pycache__" not in p.parts
    )


def write_asset_hashes(root: str | os.PathLike = ASSETS) -> Path:
    """Write ``root/SHA256SUMS`` (``sha256sum -c`` format) for every file under ``root``."""
    root = Path(root)
    lines = [f"{_sha256(p)}  {p.relative_to(root).as_posix()}\n" for p in asset_files(root)]
    out = root / HASHES_FILE
    out.write_text("".join(lines))
    return out


def verify_assets(root: str | os.PathLike = ASSETS) -> list[str]:
    """Check the shipped files against ``root/SHA256SUMS``.

    Returns:
        One line per problem (mismatch, missing file, unlisted file); empty when all match.
    """
    root = Path(root)
    sums = root / HASHES_FILE
    if not sums.is_file():
        return [f"{sums} is missing; run `make pretrain-digits` or write_asset_hashes()."]
    problems, listed = [], set()
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        listed.add(name)
        p = root / name
        if not p.is_file():
            problems.append(f"{name}: listed in {HASHES_FILE} but missing")
        elif _sha256(p) != digest:
            problems.append(f"{name}: sha256 differs from {HASHES_FILE}")
    for p in asset_files(root):
        if p.relative_to(root).as_posix() not in listed:
            problems.append(f"{p.relative_to(root).as_posix()}: not listed in {HASHES_FILE}")
    return problems


# --------------------------------------------------------------------------------- classifier


@dataclass
class ClassifierConfig:
    """Architecture of :class:`DigitsClassifier` (stored as ``config.json``)."""

    channels: tuple[int, int] = (32, 64)
    features: int = 128
    num_classes: int = 10
    dropout: float = 0.2


class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2)`` (stride 2, even sizes) as two strided maxima: the same values,
    several times faster on a CPU, where max pooling also computes indices it never returns."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            return nn.functional.max_pool2d(x, 2)
        y = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(y[..., 0::2], y[..., 1::2])


class DigitsClassifier(nn.Module):
    """A small CNN for 8×8 digits; :meth:`features` is its penultimate layer (``features`` wide).

    conv3×3(c1) → SiLU → conv3×3(c1) → SiLU → maxpool 2 → conv3×3(c2) → SiLU → maxpool 2 →
    flatten (c2·2·2) → linear(features) → SiLU → [dropout] → linear(num_classes).
    """

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ClassifierConfig()
        c1, c2 = config.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(c1, c1, 3, padding=1),
            nn.SiLU(),
            MaxPool2x2(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.SiLU(),
            MaxPool2x2(),
            nn.Flatten(),
            nn.Linear(c2 * 4, config.features),
            nn.SiLU(),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.features, config.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``[N, features]`` of images ``[N, 1, 8, 8]`` in ``[-1, 1]``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.features(x)))

    def save_pretrained(self, path: str | os.PathLike, metadata: dict | None = None) -> Path:
        """Write ``model.safetensors`` + ``config.json`` into ``path`` (atomically)."""
        from safetensors.torch import save_file

        path = Path(path)
        with atomic_folder(path) as tmp:
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"))
            cfg = asdict(self.config) | {"metadata": metadata or {}}
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> DigitsClassifier:
        """Load a classifier folder written by :meth:`save_pretrained`."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, weights = path / "config.json", path / "model.safetensors"
        if not cfg_file.is_file() or not weights.is_file():
            raise ValueError(
                f"no digits classifier in {str(path)!r} (need config.json and model.safetensors); "
                "train one with `python -m dode.digits --output DIR`."
            )
        raw = json.loads(cfg_file.read_text())
        raw.pop("metadata", None)
        raw["channels"] = tuple(raw["channels"])
        model = cls(ClassifierConfig(**raw))
        model.load_state_dict(load_file(str(weights)))
        return model.eval().requires_grad_(False)


@lru_cache(maxsize=4)
def _load_classifier_cached(path: str) -> DigitsClassifier:
    return DigitsClassifier.from_pretrained(path)


def load_classifier(path: str | os.PathLike | None = None) -> DigitsClassifier:
    """The shipped classifier (or one at ``path``), in eval mode, frozen, cached per path."""
    return _load_classifier_cached(str(Path(path or DIGITS_CLASSIFIER).resolve()))


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random shifts of up to one pixel (no flips: a flipped digit is another symbol)."""
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    out = torch.empty_like(x)
    offsets = torch.randint(0, 3, (len(x), 2), generator=gen)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy : dy + 8, dx : dx + 8]
    return out


def train_classifier(
    output: str | None = None,
    seed: int = 0,
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    channels: tuple[int, int] = (32, 64),
    features: int = 128,
    dropout: float = 0.2,
) -> dict:
    """Train :class:`DigitsClassifier` on the training split; report held-out accuracy.

    AdamW with a cosine learning-rate decay, random one-pixel shifts as augmentation.

    Args:
        output: folder to write the classifier to (``None``: do not save).
        seed: seed of initialisation, batch order and augmentation.
        epochs: passes over the 1437 training images.
        batch_size: images per step.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        channels: conv widths (c1, c2).
        features: width of the penultimate (feature) layer.
        dropout: dropout before the last layer.

    Returns:
        ``{"test_accuracy", "train_accuracy", "seconds", "parameters"}``.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be positive integers.")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    split = load_digits_split()
    x, y = split.train_images, split.train_labels
    model = DigitsClassifier(ClassifierConfig(tuple(channels), features, 10, dropout))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            b = perm[i : i + batch_size]
            loss = nn.functional.cross_entropy(model(_augment(x[b], gen)), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        test_acc = float((model(split.test_images).argmax(1) == split.test_labels).float().mean())
        train_acc = float((model(x).argmax(1) == y).float().mean())
    info = {
        "test_accuracy": test_acc,
        "train_accuracy": train_acc,
        "seconds": time.perf_counter() - t0,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if output is not None:
        meta = {
            "data": "sklearn.datasets.load_digits, fixed stratified split (seed 0, 20% held out)",
            "command": f"python -m dode.digits --output {output} --seed {seed} --epochs {epochs}",
            "seed": seed,
            "epochs": epochs,
            "test_accuracy": round(test_acc, 4),
            "n_test": len(split.test_labels),
        }
        model.save_pretrained(output, metadata=meta)
    return info


# -------------------------------------------------------------------------------- metrics


@torch.no_grad()
def digits_features(
    images: Tensor, classifier: DigitsClassifier | None = None, batch_size: int = 4096
) -> Tensor:
    """Penultimate-layer features ``[N, F]`` (float64) of the digits classifier.

    Args:
        images: ``[N, 1, 8, 8]`` (or ``[N, 64]``) in ``[-1, 1]``, on any device.
        classifier: defaults to the shipped one.
        batch_size: images per forward pass.
    """
    images = check_images(images).cpu()
    clf = classifier if classifier is not None else load_classifier()
    outs = [clf.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return torch.cat(outs).to(torch.float64)


def feature_hook(classifier: DigitsClassifier | None = None):
    """The digits classifier's penultimate features as the end-to-end fit's feature network
    (:class:`dode.objectives.Objective`'s ``features``): ``fn(samples [B, 1, 8, 8]) -> [B, F]``
    (float64), differentiable in the samples (the classifier frozen, in eval mode)."""
    clf = classifier if classifier is not None else load_classifier()
    clf.eval().requires_grad_(False)

    def features(x: Tensor) -> Tensor:
        if x.ndim == 2 and x.shape[1] == 64:
            x = x.reshape(-1, 1, 8, 8)
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(
                f"the digits feature hook takes digits [B, 1, 8, 8] in [-1, 1], got "
                f"{tuple(x.shape)}: it belongs to the digits models only."
            )
        return clf.features(x.to(torch.float32)).to(torch.float64)

    features.__name__ = "digits_features"
    return features


def fd_digits(a: Tensor, b: Tensor, classifier: DigitsClassifier | None = None) -> float:
    """FD-digits: Fréchet distance between the digits-classifier features of two image sets.

    Either argument may also be precomputed statistics ``(mu, cov)`` from
    :func:`digits_stats`, which saves recomputing the reference set's features.
    """
    return _fd(a, b, lambda x: digits_features(x, classifier))


def fd_pixel(a: Tensor, b: Tensor) -> float:
    """FD-pixel: Fréchet distance between the raw 64-pixel vectors of two image sets."""
    return _fd(a, b, lambda x: check_images(x).reshape(len(x), -1).to(torch.float64))


def digits_stats(images: Tensor, classifier: DigitsClassifier | None = None):
    """Gaussian statistics ``(mu, cov)`` of the digits-classifier features of ``images``."""
    return gaussian_stats(digits_features(images, classifier))


def pixel_stats(images: Tensor):
    """Gaussian statistics ``(mu, cov)`` of the raw pixels of ``images``."""
    return gaussian_stats(check_images(images).reshape(len(images), -1))


def _fd(a, b, feats) -> float:
    from ..metrics import frechet_distance_from_stats

    def stats(x):
        if isinstance(x, tuple) and len(x) == 2:
            return x
        return gaussian_stats(feats(x))

    if not isinstance(a, tuple) and not isinstance(b, tuple):
        return frechet_distance(feats(a), feats(b))
    return frechet_distance_from_stats(*stats(a), *stats(b))
