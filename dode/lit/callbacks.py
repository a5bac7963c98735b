"""Callbacks of ``python -m dode.train``: sample grid, λ plot, Fréchet distance.

For ``fit_mode: end-to-end`` the λ plot is the learned solver's (σ per step, warm start vs now;
λ and shift per call; the history coefficients), drawn after every selection and at the end,
and the sample grid's rows are the warm-start cell, the kept iterate and the converged
reference.

All three run at the end of the fit, write a PNG into the run folder and log to every logger
that takes images (Weights & Biases); numbers go to every logger and into the fitted-solver
file's metrics.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn

from ..files.images import image_grid, to_uint8_images
from ..metrics import frechet_distance_from_stats
from ..noise import parse_seeds, shard_seeds
from ..select import best_scale, check_scales

__all__ = ["SampleGridCallback", "LambdaPlotCallback", "FrechetCallback", "to_uint8_images"]


def _grid(rows: list[Tensor], scale: int) -> np.ndarray:
    """Rows of uint8 ``[B, C, H, W]`` images → one HWC array with 1-pixel gaps."""
    return image_grid(torch.cat(rows).permute(0, 2, 3, 1).numpy(), len(rows[0]), scale)


def _run_dir(trainer: pl.Trainer) -> Path:
    return Path(trainer.default_root_dir)


def _log_image(trainer: pl.Trainer, key: str, image: np.ndarray, caption: str) -> None:
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.log_image(key=key, images=[image], caption=[caption])


def _log_metrics(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    for lg in trainer.loggers:
        lg.log_metrics(metrics, step=trainer.global_step)


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    from ..files.writes import atomic_write

    atomic_write(
        path,
        lambda tmp: Image.fromarray(image).save(tmp, format="PNG"),
        fix="nothing was written there. Free some space and resume the run (--ckpt_path last).",
    )


class SampleGridCallback(pl.Callback):
    """At the end of the fit: base solver, D-solver and teacher samples from the same noise
    (the first validation seeds), as one image (rows: base, D-ODE, teacher).

    Args:
        num_samples: samples per row (0 turns the grid off).
        scale: nearest-neighbour upscaling of the saved image.
    """

    def __init__(self, num_samples: int = 8, scale: int = 4) -> None:
        if num_samples < 0 or scale < 1:
            raise ValueError("samples.num_samples must be >= 0 and samples.scale >= 1.")
        self.num_samples = num_samples
        self.scale = scale
        self.path: Path | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not self.num_samples or not trainer.is_global_zero:
            return
        if getattr(pl_module, "learned", None) is not None:
            return self._end_to_end(trainer, pl_module)
        dm = trainer.datamodule
        batch = dm.states_for(dm.val_seeds[: self.num_samples])
        cond = batch.get("cond")
        base = pl_module.decoded(pl_module.sample_final(batch["noise"], dode=False, cond=cond))
        dode = pl_module.decoded(pl_module.sample_final(batch["noise"], dode=True, cond=cond))
        teacher = pl_module.decoded(batch["teacher"][:, -1].to(pl_module.device))
        if base.ndim == 4:
            image = _grid([to_uint8_images(t.cpu()) for t in (base, dode, teacher)], self.scale)
        else:
            image = _scatter([base, dode, teacher])
        self.path = _run_dir(trainer) / "samples.png"
        _save_png(self.path, image)
        _log_image(
            trainer, "samples", image, f"rows: base, D-ODE, teacher ({pl_module.num_calls} NFE)"
        )

    @torch.no_grad()
    def _end_to_end(self, trainer: pl.Trainer, pl_module) -> None:
        from ..sampling import sample

        dm, mode = trainer.datamodule, pl_module.mode_fit
        batch = dm.selection_sample(self.num_samples)
        dev = pl_module.device
        den = pl_module.bound(batch.get("cond"))
        z = batch["noise"].to(dev)
        learned = pl_module.learned
        kept = learned.solver_file(mode.best_params)
        rows = [
            sample(den, learned.solver, z, learned.init_sigmas),
            kept.sample(den, z),
            batch["reference"].to(dev),
        ]
        rows = [pl_module.decoded(x) for x in rows]
        if rows[0].ndim == 4:
            image = _grid([to_uint8_images(t.cpu()) for t in rows], self.scale)
        else:
            image = _scatter(rows, ("warm start", "end-to-end", "reference"))
        self.path = _run_dir(trainer) / "samples.png"
        _save_png(self.path, image)
        _log_image(
            trainer, "samples", image,
            f"rows: warm start, end-to-end (step {mode.best_step}), reference "
            f"({pl_module.num_calls} NFE)",
        )  # fmt: skip


def _figure_to_array(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _scatter(rows: list[Tensor], names=("base", "D-ODE", "teacher")) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    for x, name in zip(rows, names):
        f = x.detach().cpu().double().reshape(len(x), -1)
        ax.scatter(f[:, 0], f[:, 1 if f.shape[1] > 1 else 0], s=8, label=name)
    ax.legend()
    img = _figure_to_array(fig)
    plt.close(fig)
    return img


class LambdaPlotCallback(pl.Callback):
    """At the end of the fit: λ per model call, and the MSE to the teacher of each state for
    the base and the D-solver (validation seeds), saved as ``lambdas.png`` and logged.

    Args:
        enabled: draw the plot.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path: Path | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if getattr(pl_module, "learned", None) is not None and not trainer.sanity_checking:
            self.on_train_end(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not self.enabled or not trainer.is_global_zero:
            return
        if getattr(pl_module, "learned", None) is not None:
            return self._end_to_end(trainer, pl_module)
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        lam = pl_module.lambdas.detach().cpu().numpy()
        k = np.arange(len(lam))
        val = pl_module.val_metrics
        fig, axes = plt.subplots(1, 2 if val else 1, figsize=(9 if val else 4.5, 3.2), dpi=100)
        axes = np.atleast_1d(axes)
        axes[0].plot(k, lam, "o-")
        axes[0].axhline(0, color="grey", lw=0.5)
        for ax in axes:
            ax.set_xticks(k)
        axes[0].set_xlabel("model call k")
        axes[0].set_ylabel("λ_k")
        axes[0].set_title(f"{pl_module.solver.describe()}, NFE {pl_module.num_calls}")
        if val:
            d = [val[f"val/mse_{i}"] for i in k]
            b = [val[f"val/mse_base_{i}"] for i in k]
            axes[1].semilogy(k, b, "s--", label="base")
            axes[1].semilogy(k, d, "o-", label="D-ODE")
            axes[1].set_xlabel("state after call k")
            axes[1].set_ylabel("MSE to teacher")
            axes[1].legend()
        fig.tight_layout()
        image = _figure_to_array(fig)
        plt.close(fig)
        self.path = _run_dir(trainer) / "lambdas.png"
        _save_png(self.path, image)
        _log_image(trainer, "lambdas", image, "λ per model call; MSE to the teacher per state")

    def _end_to_end(self, trainer: pl.Trainer, pl_module) -> None:
        """The learned solver now: σ per step (warm start vs now), λ and the model-time shift
        per call, the history coefficients; ``end_to_end.png``, logged as ``end_to_end``."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        learned = pl_module.learned
        with torch.no_grad():
            now = {k: None if v is None else v.detach().cpu().double().numpy()
                   for k, v in learned.current().items()}  # fmt: skip
        warm = learned.init_sigmas.numpy()
        coef = now["coefficients"]
        fig, axes = plt.subplots(1, 3 if coef is not None else 2, dpi=100,
                                 figsize=(13 if coef is not None else 9, 3.2))  # fmt: skip
        steps = np.arange(len(warm) - 1)
        axes[0].semilogy(steps, warm[:-1], "s--", label="warm start")
        axes[0].semilogy(steps, now["sigmas"][:-1], "o-", label="now")
        axes[0].set_xlabel("step k")
        axes[0].set_ylabel("σ_k")
        axes[0].legend()
        step = trainer.global_step
        axes[0].set_title(f"{learned.solver.describe()}, NFE {learned.num_calls}, step {step}")
        k = np.arange(learned.num_calls)
        for name, label in (("lambdas", "λ_k"), ("shift", "shift ξ_k")):
            if now[name] is not None:
                axes[1].plot(k, now[name], "o-", label=label)
        axes[1].axhline(0, color="grey", lw=0.5)
        axes[1].set_xticks(k)
        axes[1].set_xlabel("model call k")
        axes[1].legend()
        if coef is not None:
            lim = float(np.abs(coef).max()) or 1.0
            im = axes[2].imshow(coef, cmap="RdBu_r", vmin=-lim, vmax=lim)
            axes[2].set_xlabel("earlier call j")
            axes[2].set_ylabel("call k")
            axes[2].set_title("history coefficients c_kj")
            fig.colorbar(im, ax=axes[2])
        fig.tight_layout()
        image = _figure_to_array(fig)
        plt.close(fig)
        self.path = _run_dir(trainer) / "end_to_end.png"
        _save_png(self.path, image)
        _log_image(trainer, "end_to_end", image,
                   f"σ per step (warm start vs now), λ and shift, coefficients; step {step}")  # fmt: skip


class _Features(nn.Module):
    """A :mod:`dode.evaluation.fid` extractor (uint8 images → flat features ``[B, F]``); also usable as a
    torchmetrics ``feature``."""

    def __init__(self, extractor, sample_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.extractor = extractor
        self.name = getattr(extractor, "name", type(extractor).__name__)
        probe = torch.zeros((2, *sample_shape), dtype=torch.uint8)
        self.num_features = int(self.extractor(probe).reshape(2, -1).shape[1])

    def forward(self, images: Tensor) -> Tensor:
        return self.extractor(images).reshape(len(images), -1)


class _Moments:
    """Float64 feature sums ``Σf``, ``Σ f fᵀ`` and the count, summed over ranks by the
    strategy: the statistics of a feature set split across processes."""

    def __init__(self, num_features: int, device) -> None:
        self.s1 = torch.zeros(num_features, dtype=torch.float64, device=device)
        self.s2 = torch.zeros(num_features, num_features, dtype=torch.float64, device=device)
        self.n = torch.zeros((), dtype=torch.float64, device=device)

    def update(self, feats: Tensor) -> None:
        f = feats.to(self.s1.device, torch.float64)
        self.s1 += f.sum(0)
        self.s2 += f.T @ f
        self.n += len(f)

    def stats(self, trainer: pl.Trainer) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance of every rank's features together."""
        s1, s2, n = (
            trainer.strategy.reduce(t, reduce_op="sum") for t in (self.s1, self.s2, self.n)
        )
        mu = s1 / n
        cov = (s2 - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), cov.cpu().numpy()


class FrechetCallback(pl.Callback):
    """Fréchet distance of D-solver and base samples to a reference, with a pluggable feature
    extractor (:mod:`dode.evaluation.fid`).

    Runs at the end of the fit on every rank (samples sharded by seed; the feature statistics
    are summed across ranks). Logs ``val/<name>_dode`` and ``val/<name>_base`` where name is
    ``fid`` for Inception features and ``fd_<extractor>`` otherwise, and ``val/<name>_alpha<α>``
    for every other λ scale α in ``scales``.

    With ``select``, the λ scale with the lowest distance is kept as ``chosen_scale``:
    ``dode.fit`` and ``python -m dode.train`` read it and write α·λ to the fitted-solver file
    (``val/lambda_scale`` and ``lambdas_fitted`` in its metrics; the module's λ, its
    checkpoints, the sample grid and the λ plot keep the fitted λ). ``results`` holds the
    distances measured, for the file's metrics. The closed-form fit
    minimises the squared error to the teacher, which a sample-quality metric does not always
    reward; with 0 among the scales, the solver written is never worse than the base solver by
    this metric on these seeds (:func:`dode.select_scale` is the same for Python code).

    Args:
        feature: ``null`` (off), ``inception`` (FID; needs torch-fidelity's weights file, see
            ``inception_weights``), ``pixels`` (a cheap stand-in) or ``package.module:factory``
            (a callable from uint8 ``[B, C, H, W]`` to ``[B, F]``).
        num_samples: number of generated samples per solver.
        seeds: their seeds (default: ``2000000`` onwards; disjoint from the fit seeds).
        reference: ``teacher`` (the teacher's samples from the same seeds) or an ``.npz`` with
            reference ``mu``/``sigma`` of the same features (``python -m dode.fid ref``).
        batch_size: samples per batch.
        inception_weights: path of ``weights-inception-2015-12-05-6726825d.pth``; default
            ``$DODE_INCEPTION_WEIGHTS``, then torch hub's checkpoint folder.
        scales: the λ scales α scored (α·λ; 0 = the base solver, 1 = the fitted λ); default
            ``[0, 1]``.
        select: keep the best-scoring α (see above).
    """

    def __init__(
        self,
        feature: str | None = None,
        num_samples: int = 1000,
        seeds: str | None = None,
        reference: str = "teacher",
        batch_size: int = 100,
        inception_weights: str | None = None,
        scales: list[float] | None = None,
        select: bool = False,
    ) -> None:
        self.feature = feature
        self.scales = [0.0, 1.0] if scales is None else check_scales(scales, "fid.scales")
        self.select = select
        if select and feature is None:
            raise ValueError(
                "fid.select chooses the λ scale by a Fréchet distance: set fid.feature too "
                "(e.g. pixels, inception or package.module:factory)."
            )
        self.num_samples = num_samples
        self.seed_spec = seeds
        self.reference = reference
        self.batch_size = batch_size
        self.inception_weights = inception_weights
        self.results: dict[str, float] = {}
        self.chosen_scale: float | None = None
        if feature is None:
            return
        if num_samples < 2:
            raise ValueError("fid.num_samples must be >= 2.")
        from ..evaluation import fid

        if feature == "inception":
            # Fail now, before any fitting, if the weights cannot be had.
            self.inception_weights = fid.inception_weights_path(inception_weights)
        if reference != "teacher" and not Path(reference).is_file():
            raise ValueError(
                f"fid.reference {reference!r} is neither 'teacher' nor an existing .npz of "
                "reference statistics (make one with `python -m dode.fid ref`)."
            )
        self.seeds = (
            parse_seeds(seeds)
            if seeds is not None
            else list(range(2_000_000, 2_000_000 + num_samples))
        )
        if len(self.seeds) < num_samples:
            raise ValueError(f"fid.seeds has {len(self.seeds)} seeds, fewer than num_samples.")
        self.seeds = self.seeds[:num_samples]

    def setup(self, trainer: pl.Trainer, pl_module, stage: str) -> None:
        if self.feature is None:
            return
        if getattr(pl_module, "fit_mode", None) == "end-to-end":
            raise ValueError(
                "fid scores the λ fits (α·λ on the module's grid); the end-to-end fit is judged "
                "by experiments/digits_fidelity.py or dode.evaluate on its solver file. Set "
                "fid.feature null."
            )
        from ..evaluation import fid

        fx = fid.get_feature_extractor(self.feature, self.inception_weights)
        self.name = fid.metric_name(fx)
        self.features = _Features(fx, pl_module.sample_shape)

    def _reference_stats(self) -> tuple[np.ndarray, np.ndarray]:
        from ..evaluation import fid

        mu, sigma = fid.load_stats(self.reference)
        if len(mu) != self.features.num_features:
            raise ValueError(
                f"{self.reference!r} has {len(mu)}-d statistics but the '{self.feature}' "
                f"features are {self.features.num_features}-d."
            )
        return mu, sigma

    @torch.no_grad()
    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self.feature is None:
            return
        feats = self.features.to(pl_module.device)
        dm = trainer.datamodule
        rank, world = trainer.global_rank, trainer.world_size
        mine = shard_seeds(self.seeds, rank, world)
        nb = max(1, math.ceil(len(mine) / self.batch_size))
        groups = [g for g in np.array_split(np.array(mine, dtype=np.int64), nb) if len(g)]
        ref_stats = self._reference_stats() if self.reference != "teacher" else None
        real = _Moments(feats.num_features, pl_module.device)
        fakes = {a: _Moments(feats.num_features, pl_module.device) for a in self.scales}
        for g in groups:
            batch = dm.states_for(g.tolist())
            if ref_stats is None:
                teacher = pl_module.decoded(batch["teacher"][:, -1].to(pl_module.device))
                real.update(feats(to_uint8_images(teacher.cpu()).to(pl_module.device)))
            for a, moments in fakes.items():
                x = pl_module.decoded(
                    pl_module.sample_final(batch["noise"], scale=a, cond=batch.get("cond"))
                )
                moments.update(feats(to_uint8_images(x).to(pl_module.device)))
        if ref_stats is None:
            ref_stats = real.stats(trainer)
        scores = {}
        for a, moments in fakes.items():
            scores[a] = frechet_distance_from_stats(*moments.stats(trainer), *ref_stats)
            self.results[f"val/{self.name}_{self._suffix(a)}"] = scores[a]
        if self.select:
            # Every rank holds the same (all-reduced) distances, hence the same choice.
            self.chosen_scale = best_scale(scores)
            self.results["val/lambda_scale"] = self.chosen_scale
        if trainer.is_global_zero:
            _log_metrics(trainer, self.results)

    @staticmethod
    def _suffix(a: float) -> str:
        return {0.0: "base", 1.0: "dode"}.get(a, f"alpha{a:g}")
