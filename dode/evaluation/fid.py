"""FID through torch-fidelity: Inception weights, feature extractors, reference statistics.

The Fréchet Inception Distance here is torch-fidelity's: its ``inception-v3-compat`` network
(the TF 2015-12-05 Inception converted to PyTorch, with TF1-compatible resizing) gives the
2048-d pool features, and ``torch_fidelity.metric_fid.fid_statistics_to_metric`` gives the
distance. Statistics are accumulated in float64 in one streaming pass, so 50,000 images never
have to sit in memory at once.

Feature extractors are pluggable (``features=``):

* ``"inception"`` — the real FID (needs the weights file, see :func:`inception_weights_path`).
* ``"pixels"`` — the mean colour of each cell of a 4×4 grid (48 numbers per RGB image). A cheap
  stand-in for tests and dry runs; a distance on it is *not* an FID and is reported as
  ``fd_pixels``.
* ``"package.module:factory"`` — ``factory()`` returns a callable mapping uint8 images
  ``[B, C, H, W]`` to features ``[B, F]`` (an ``nn.Module`` is moved to the device).

Reference statistics are an ``.npz`` with ``mu`` and ``sigma`` (the format of EDM's
``fid-refs`` and of guided-diffusion's reference batches), a folder of images (statistics are
computed once and cached), or a torch-fidelity dataset name such as ``cifar10-train``.

``python -m dode.fid ref --images DIR --out stats.npz`` writes reference statistics;
``python -m dode.fid score --images DIR --ref stats.npz`` scores a folder (the command line
is :mod:`dode.cli.fid`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..files.cache import cache_root
from ..files.writes import atomic_write

__all__ = [
    "INCEPTION_FILE",
    "INCEPTION_URL",
    "inception_weights_path",
    "InceptionFeatures",
    "PixelFeatures",
    "get_feature_extractor",
    "metric_name",
    "StatsAccumulator",
    "save_stats",
    "load_stats",
    "fid_from_stats",
    "iter_image_folder",
    "reference_stats",
    "stats_of_images",
    "write_reference",
    "score_folder",
]

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
#: pytorch-fid ships the same converted network under this name (same sha256 prefix).
INCEPTION_FILE_ALT = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
)
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def _offline() -> bool:
    return any(os.environ.get(k, "") not in ("", "0") for k in ("HF_HUB_OFFLINE", "DODE_OFFLINE"))


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _missing_weights_message(detail: str) -> str:
    where = _hub_checkpoints() / INCEPTION_FILE
    return (
        f"the Inception weights for FID are not available ({detail}). Download {INCEPTION_FILE} "
        f"from {INCEPTION_URL} (pytorch-fid's {INCEPTION_FILE_ALT}, same hash, works too) and "
        f"either put it at {where} or point DODE_INCEPTION_WEIGHTS (or --inception_weights) "
        "at the file."
    )


def inception_weights_path(path: str | os.PathLike | None = None, download: bool = True) -> str:
    """Find torch-fidelity's Inception weights file; download it only when allowed and online.

    Looks in order at ``path``, ``$DODE_INCEPTION_WEIGHTS`` and torch hub's checkpoint folder
    (``$TORCH_HOME/hub/checkpoints``, where torch-fidelity itself caches the file). With
    none there, downloads into that folder unless ``download=False`` or ``HF_HUB_OFFLINE`` /
    ``DODE_OFFLINE`` is set.

    Raises:
        ValueError: the file is missing (or a given path does not exist) and cannot be fetched;
            the message names the file, its URL and where to put it.
    """
    given = path if path is not None else os.environ.get("DODE_INCEPTION_WEIGHTS") or None
    if given is not None:
        if not Path(given).is_file():
            src = "given path" if path is not None else "DODE_INCEPTION_WEIGHTS"
            raise ValueError(_missing_weights_message(f"{src} {str(given)!r} is not a file"))
        return str(given)
    for name in (INCEPTION_FILE, INCEPTION_FILE_ALT):
        cand = _hub_checkpoints() / name
        if cand.is_file():
            return str(cand)
    if not download or _offline():
        raise ValueError(_missing_weights_message("offline, and no local copy was found"))
    try:
        torch.hub.load_state_dict_from_url(INCEPTION_URL, progress=True, check_hash=True)
    except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
        raise ValueError(_missing_weights_message(f"download failed: {e}")) from None
    return str(_hub_checkpoints() / INCEPTION_FILE)


def _to_rgb(images: Tensor) -> Tensor:
    if images.ndim != 4 or images.dtype != torch.uint8:
        raise ValueError(
            f"feature extractors take uint8 images [B, C, H, W]; got {images.dtype} "
            f"{tuple(images.shape)}."
        )
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}.")
    return images


class InceptionFeatures(nn.Module):
    """torch-fidelity's ``inception-v3-compat`` pool3 features (2048-d) of uint8 images."""

    name = "inception"
    dims = 2048

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = inception_weights_path(weights_path)
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048"], feature_extractor_weights_path=path
            )
        except Exception as e:  # noqa: BLE001 - wrong or corrupt file
            raise ValueError(
                f"{path!r} could not be loaded as torch-fidelity's Inception weights ({e}). "
                + _missing_weights_message("the file there is not the expected one")
            ) from None

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.net(_to_rgb(images))[0].to(torch.float64)


class PixelFeatures(nn.Module):
    """Mean colour of each cell of a ``grid``×``grid`` partition of the image, in [0, 1].

    A stand-in for tests and dry runs (48 features for RGB at grid 4); distances on it are
    named ``fd_pixels``, never FID.
    """

    name = "pixels"

    def __init__(self, grid: int = 4) -> None:
        super().__init__()
        self.grid = int(grid)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = _to_rgb(images).to(torch.float64) / 255.0
        return nn.functional.adaptive_avg_pool2d(x, self.grid).flatten(1)


def get_feature_extractor(
    spec: str | Callable[[Tensor], Tensor] = "inception",
    weights_path: str | os.PathLike | None = None,
) -> Callable[[Tensor], Tensor]:
    """Build a feature extractor: ``"inception"``, ``"pixels"`` or ``"module:factory"``.

    The returned callable has a ``name`` attribute (used to key cached statistics).
    """
    if callable(spec) and not isinstance(spec, str):
        if not hasattr(spec, "name"):
            raise ValueError("a feature extractor object needs a `name` attribute.")
        return spec
    if spec == "inception":
        return InceptionFeatures(weights_path)
    if spec == "pixels":
        return PixelFeatures()
    if isinstance(spec, str) and ":" in spec:
        from ..denoisers.loading import import_factory

        factory = import_factory(
            spec,
            what="feature extractor",
            usage="give 'package.module:factory' where factory() returns a callable from uint8 "
            "[B, C, H, W] to [B, F]",
            returns="a factory returning a feature extractor",
        )
        fx = factory()
        if not callable(fx):
            raise ValueError(f"{spec!r} returned {type(fx).__name__}, which is not callable.")
        if not hasattr(fx, "name"):
            try:
                fx.name = spec.replace(":", ".")
            except AttributeError:
                pass
        return fx
    raise ValueError(
        f"unknown feature extractor {spec!r}; use 'inception', 'pixels' or "
        "'package.module:factory'."
    )


def metric_name(extractor) -> str:
    """``"fid"`` for Inception features, ``"fd_<name>"`` for anything else."""
    name = str(getattr(extractor, "name", extractor))
    if name == "inception":
        return "fid"
    return "fd_" + "".join(c if c.isalnum() else "_" for c in name)


class StatsAccumulator:
    """Streaming mean and covariance (float64) of feature batches.

    Uses sums around a shift (the first batch's mean), so the result matches ``np.cov`` to
    rounding even for features with a large mean.
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift: Tensor | None = None
        self.s1: Tensor | None = None
        self.s2: Tensor | None = None

    def update(self, feats: Tensor) -> None:
        f = feats.detach().to(torch.float64).reshape(len(feats), -1)
        if self.shift is None:
            self.shift = f.mean(0)
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        if f.shape[1] != self.shift.shape[0]:
            raise ValueError("feature batches have different widths.")
        c = f - self.shift.to(f.device)
        self.s1 += c.sum(0).to(self.s1.device)
        self.s2 += (c.T @ c).to(self.s2.device)
        self.n += len(f)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"need at least 2 images for feature statistics, got {self.n}.")
        m = self.s1 / self.n
        mu = (self.shift + m).cpu().numpy()
        cov = (self.s2 - self.n * torch.outer(m, m)) / (self.n - 1)
        return mu, cov.cpu().numpy()


def save_stats(
    path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, features: str, num_images: int
) -> Path:
    """Write ``mu``, ``sigma`` (and which features, how many images) atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                mu=np.asarray(mu, np.float64),
                sigma=np.asarray(sigma, np.float64),
                feature_extractor=np.array(features),
                num_images=np.array(num_images),
            )

    return atomic_write(path, write)


def load_stats(path: str | os.PathLike, features: str | None = None) -> tuple[np.ndarray, ...]:
    """Load ``(mu, sigma)`` from an ``.npz``; check it was made with ``features`` if recorded."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"reference statistics {str(path)!r} do not exist. Download them (e.g. EDM's "
            "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz for CIFAR-10) or "
            "compute them from a folder of real images with `python -m dode.fid ref --images "
            f"DIR --out {path}`."
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
            made_with = str(z["feature_extractor"]) if "feature_extractor" in z.files else None
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"{str(path)!r} is not a statistics file with 'mu' and 'sigma' arrays ({e})."
        ) from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(
            f"{str(path)!r}: mu must be [F] and sigma [F, F]; got {mu.shape} and {sigma.shape}."
        )
    if features is not None and made_with is not None and made_with != features:
        raise ValueError(
            f"{str(path)!r} holds statistics of '{made_with}' features, not '{features}'; use "
            "matching reference statistics or recompute them with the same features."
        )
    return mu, sigma


def fid_from_stats(mu1, sigma1, mu2, sigma2) -> float:
    """The Fréchet distance between two Gaussians (float64; :mod:`dode.metrics`' formula,
    equal to torch-fidelity's to rounding), never below 0."""
    from ..metrics import frechet_distance_from_stats

    a_mu, b_mu = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    if a_mu.shape != b_mu.shape or np.shape(sigma1) != np.shape(sigma2):
        raise ValueError(
            f"feature statistics have different sizes ({a_mu.shape[0]} vs "
            f"{b_mu.shape[0]}): the two sides were made with different feature extractors."
        )
    value = frechet_distance_from_stats(a_mu, sigma1, b_mu, sigma2)
    # The true distance is >= 0; eigenvalue round-off can leave a tiny negative number.
    return max(value, 0.0)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


def iter_image_folder(folder: str | os.PathLike, batch_size: int = 256) -> Iterator[Tensor]:
    """uint8 batches ``[B, C, H, W]`` of the images (png/jpg) under ``folder``, sorted by path."""
    files = _list_images(Path(folder))
    for i in range(0, len(files), batch_size):
        arr = np.stack([_read_image(p) for p in files[i : i + batch_size]])
        yield torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def stats_of_images(
    batches: Iterable[Tensor],
    extractor: Callable[[Tensor], Tensor],
    device: torch.device | str | None = None,
    progress: bool = False,
    total: int | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(mu, sigma, n)`` of the features of uint8 image batches (one streaming pass)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(extractor, nn.Module):
        extractor.to(dev)
    acc = StatsAccumulator()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"features ({getattr(extractor, 'name', '?')})", unit="img")
    for batch in batches:
        acc.update(extractor(batch.to(dev)))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    mu, sigma = acc.result()
    return mu, sigma, acc.n


def _folder_key(folder: Path, files: list[Path]) -> str:
    h = hashlib.sha256(str(folder.resolve()).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$DODE_CACHE/fid-refs`` or ``~/.cache/dode/fid-refs``."""
    return cache_root("fid-refs")


def reference_stats(
    ref: str | os.PathLike,
    extractor: Callable[[Tensor], Tensor],
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    batch_size: int = 256,
    datasets_root: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Reference ``(mu, sigma, description)`` from an ``.npz``, an image folder or a dataset.

    A folder or a torch-fidelity dataset name (``cifar10-train``, ...) is turned into
    statistics once and cached under ``cache_dir`` (default ``~/.cache/dode/fid-refs``, or
    ``$DODE_CACHE/fid-refs``), keyed by the folder's file list and the features.
    """
    name = str(getattr(extractor, "name", "features"))
    if ref is None or str(ref) == "":
        raise ValueError(
            "no reference statistics given; pass --ref with an .npz of mu/sigma (e.g. EDM's "
            "fid-refs), a folder of real images, or a torch-fidelity dataset name such as "
            "cifar10-train."
        )
    ref_s = str(ref)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = Path(ref_s)
    if ref_s.endswith(".npz"):
        mu, sigma = load_stats(path, features=name)
        return mu, sigma, ref_s
    if path.is_dir():
        files = _list_images(path)
        if len(files) < 2:
            raise ValueError(
                f"reference folder {ref_s!r} holds {len(files)} images (png/jpg); it needs real "
                "images to compute statistics from."
            )
        cached = cache / f"ref-{_folder_key(path, files)}-{name}.npz"
        if cached.is_file():
            mu, sigma = load_stats(cached, features=name)
            return mu, sigma, ref_s
        mu, sigma, n = stats_of_images(
            iter_image_folder(path, batch_size), extractor, device, progress=True, total=len(files)
        )
        save_stats(cached, mu, sigma, name, n)
        return mu, sigma, ref_s
    from torch_fidelity.registry import DATASETS_REGISTRY

    if ref_s in DATASETS_REGISTRY:
        cached = cache / f"dataset-{ref_s}-{name}.npz"
        if cached.is_file():
            mu, sigma = load_stats(cached, features=name)
            return mu, sigma, ref_s
        root = str(datasets_root or cache.parent / "datasets")
        try:
            ds = DATASETS_REGISTRY[ref_s](root, not _offline())
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"the reference dataset {ref_s!r} is not available ({e}); run once with network "
                f"access (it is downloaded to {root}), or pass an .npz of mu/sigma or a folder "
                "of images instead."
            ) from None
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size)
        mu, sigma, n = stats_of_images(loader, extractor, device, progress=True, total=len(ds))
        save_stats(cached, mu, sigma, name, n)
        return mu, sigma, ref_s
    raise ValueError(
        f"reference {ref_s!r} is neither an .npz file, an existing folder of images, nor a "
        "torch-fidelity dataset name (e.g. cifar10-train). Download reference statistics or "
        "point --ref at a folder of real images."
    )


def write_reference(
    images: str | os.PathLike,
    out: str | os.PathLike,
    features: str = "inception",
    inception_weights: str | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[int, str]:
    """Write the reference statistics of ``images`` (a folder of images, or anything
    :func:`reference_stats` takes) to ``out``; returns their dimension and the features' name."""
    fx = get_feature_extractor(features, inception_weights)
    if Path(images).is_dir():
        files = _list_images(Path(images))
        batches = iter_image_folder(images, batch_size)
        mu, sigma, n = stats_of_images(batches, fx, device, True, len(files))
    else:
        mu, sigma, _ = reference_stats(str(images), fx, device=device)
        n = -1
    save_stats(out, mu, sigma, str(fx.name), n)
    return len(mu), str(fx.name)


def score_folder(
    images: str | os.PathLike,
    ref: str | os.PathLike,
    features: str = "inception",
    inception_weights: str | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> dict:
    """The Fréchet distance of a folder of images to the reference ``ref`` (anything
    :func:`reference_stats` takes): ``{<metric name>: value, "num_images": n}``."""
    fx = get_feature_extractor(features, inception_weights)
    mu_r, sig_r, _ = reference_stats(str(ref), fx, device=device, batch_size=batch_size)
    folder = Path(images)
    if not folder.is_dir():
        raise ValueError(f"{str(images)!r} is not a folder of images.")
    files = _list_images(folder)
    mu, sigma, n = stats_of_images(
        iter_image_folder(folder, batch_size), fx, device, True, len(files)
    )
    return {metric_name(fx): fid_from_stats(mu, sigma, mu_r, sig_r), "num_images": n}
