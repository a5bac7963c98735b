"""``make demo``: D-ODE on the bundled digits DDPM, end to end, on a CPU.

For every solver and NFE this fits λ with :func:`dode.fit` (the fit of ``python -m dode.train``,
on the config ``fit_config``; one fit per cell, the fitted-solver file written to the run folder),
chooses how much of the fitted λ to use (α·λ, :func:`dode.select_scale`, on seeds used nowhere
else; that solver is written next to the fit's as ``solver-chosen.safetensors``), then judges
the base solver against that D-solver on the same held-out seeds:

* **FD-digits**: Fréchet distance of the digits classifier's penultimate features
  (:mod:`dode.digits`) between the samples and the 360 held-out real digits;
* **FD-pixel**: the same on the 64 raw pixels;
* **MSE to the teacher**: of the raw samples against a converged solution of the same ODE
  from the same noise (the "teacher" reference row), on every judged seed.

Reference rows: a converged ODE solution on the judged seeds (the teacher's own quality,
which no few-step sampler of this ODE can beat), and real training digits against the
held-out ones (the floor of the metric itself).

Writes ``table.md``, ``table.csv``, ``fd_digits_vs_nfe.png``, ``lambdas.png`` and
``samples.png`` to ``--out`` and a Weights & Biases run (offline unless ``--wandb_mode
online``) holding all of it to ``--run_dir``; prints the table at the end.

Usage::

    python experiments/digits_demo.py -c configs/demo/digits.yaml
    python experiments/digits_demo.py -c configs/demo/digits.yaml --solvers '[ddim]' --nfes '[3, 4]'
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import resource
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dode  # noqa: E402
from dode.denoisers.loading import load_denoiser  # noqa: E402
from dode.digits.classifier import (  # noqa: E402
    check_images,
    digits_features,
    load_classifier,
    load_digits_split,
)
from dode.files.solver_file import FittedSolver  # noqa: E402
from dode.grids.schedules import get_schedule  # noqa: E402
from dode.lit.api import fit_kwargs  # noqa: E402
from dode.metrics import FrechetReference, mse  # noqa: E402
from dode.noise import noise_from_seeds, parse_seeds  # noqa: E402
from dode.sampling import sample_many  # noqa: E402
from dode.select import select_scale  # noqa: E402
from dode.solvers import get_solver  # noqa: E402

COLUMNS = [
    "solver",
    "nfe",
    "status",
    "fd_digits_base",
    "fd_digits_dode",
    "fd_digits_diff_std",
    "fd_pixel_base",
    "fd_pixel_dode",
    "mse_teacher_base",
    "mse_teacher_dode",
    "lambda_scale",
    "select_scores",
    "select_mse_teacher_base",
    "select_mse_teacher_fit",
    "fit_seconds",
    "select_seconds",
    "judge_seconds",
    "lambdas",
]


@dataclass
class SolverSpec:
    """One solver of the table.

    Args:
        label: name shown in the table.
        name: :func:`dode.solvers.get_solver` name.
        options: its keyword options.
        schedule: its σ grid (``--model.schedule`` of the fit); default: the fit config's.
        schedule_options: that grid's options (``--model.schedule_options``).
    """

    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    schedule: str | None = None
    schedule_options: dict[str, Any] | None = None


DEFAULT_SOLVERS = [
    SolverSpec("DDIM", "ddim"),
    SolverSpec("iPNDM", "ipndm"),
    SolverSpec("DPM-Solver-2", "dpm_solver", {"order": 2, "stages": "grid"}),
    SolverSpec("DEIS", "deis"),
    SolverSpec("EDM-Heun", "heun"),
    SolverSpec("UniPC", "unipc"),
]
TEACHER = SolverSpec("teacher", "dpm_solver_pp", {"order": 3})


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(len(x), -1).to(torch.float64)


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """Samples as images: clamped to the data range [−1, 1], float32."""
    return check_images(x.float().clamp(-1, 1), "samples")


def _paired_fd_diff_std(fb, fd, ref: FrechetReference, n_boot: int, seed: int) -> float:
    """Bootstrap std of FD(D) − FD(base) over the judged seeds (paired resamples)."""
    if n_boot < 2:
        return math.nan
    if fd is fb:  # α = 0: the D-solver is the base solver, every paired difference is 0
        return 0.0
    gen = np.random.default_rng(seed)
    n = len(fb)
    diffs = []
    for _ in range(n_boot):
        idx = torch.from_numpy(gen.integers(0, n, n))
        diffs.append(ref.distance(fd[idx]) - ref.distance(fb[idx]))
    return float(np.std(diffs, ddof=1))


def _judge_fd(
    xb_raw: torch.Tensor,
    xd_raw: torch.Tensor,
    alpha: float,
    clf,
    ref: FrechetReference,
    n_boot: int,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The judged base and D-solver samples as images, and their FD-digits to ``ref`` with the
    bootstrap std of the difference (the columns ``fd_digits_base/dode/diff_std``); with
    ``alpha`` 0 the D-solver is the base solver and its features are reused."""
    xb, xd = _as_images(xb_raw), _as_images(xd_raw)
    fb = digits_features(xb, clf)
    fd = fb if alpha == 0 else digits_features(xd, clf)
    return (
        xb,
        xd,
        {
            "fd_digits_base": ref.distance(fb),
            "fd_digits_dode": ref.distance(fd),
            "fd_digits_diff_std": _paired_fd_diff_std(fb, fd, ref, n_boot, seed=seed),
        },
    )


def _fit(spec: SolverSpec, nfe: int, s: DemoSettings, run_dir: Path) -> FittedSolver:
    """Fit one cell's λ with :func:`dode.fit`: the fit config, the solver, its NFE and grid."""
    kwargs = {**(fit_kwargs(s.fit_config) if s.fit_config else {}), **s.fit_overrides}
    if spec.schedule:
        kwargs["schedule"] = spec.schedule
    if spec.schedule_options is not None:
        kwargs["schedule_options"] = spec.schedule_options
    kwargs.update(
        solver=spec.name,
        solver_options=spec.options or None,
        nfe=nfe,
        run_dir=run_dir,
        solver_file=run_dir / "solver.safetensors",
    )
    return dode.fit(**kwargs)


def _grids(solvers: list[SolverSpec]) -> str:
    """The solvers' σ grids, for the table header."""
    parts = []
    for s in solvers:
        grid = s.schedule or "the fit config's"
        if s.schedule_options:
            grid += " (" + ", ".join(f"{k}={v}" for k, v in s.schedule_options.items()) + ")"
        parts.append(f"{s.label} {grid}")
    return "; ".join(parts)


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}g}"


def _write_csv(rows: list[dict], path: Path, columns: list[str]) -> None:
    """Write ``rows`` as a CSV table of ``columns`` (``None`` and missing: empty)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: "" if r.get(c) is None else r[c] for c in columns})


def _alphas(rows: list[dict]) -> list[str]:
    """The α tried, as written in the first fitted row's ``select_scores`` (none: [])."""
    ok = [r for r in rows if r["status"] == "ok"]
    return [kv.split(":")[0] for kv in ok[0]["select_scores"].split()] if ok else []


def write_table(rows: list[dict], refs: list[dict], out: Path, header: list[str]) -> str:
    """Write ``table.csv`` and ``table.md``; returns the markdown."""
    _write_csv([*rows, *refs], out / "table.csv", COLUMNS)
    lines = [*header, ""]
    alphas = _alphas(rows)
    lines.append(
        "| solver | NFE | FD-digits base | FD-digits D | ± (D − base) | FD-pixel base | "
        f"FD-pixel D | MSE→teacher base | MSE→teacher D | α | α-selection FD-digits, α = "
        f"{' / '.join(alphas)} | α-selection MSE→teacher, α = 0 / 1 | fit s |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['solver']} | {r['nfe']} | {r['status']} |" + " |" * 10)
            continue
        better = r["fd_digits_dode"] <= r["fd_digits_base"]
        d = _fmt(r["fd_digits_dode"])
        scores = dict(kv.split(":") for kv in r["select_scores"].split())
        lines.append(
            f"| {r['solver']} | {r['nfe']} | {_fmt(r['fd_digits_base'])} | "
            f"{f'**{d}**' if better else d} | {_fmt(r['fd_digits_diff_std'], 2)} | "
            f"{_fmt(r['fd_pixel_base'])} | {_fmt(r['fd_pixel_dode'])} | "
            f"{_fmt(r['mse_teacher_base'])} | {_fmt(r['mse_teacher_dode'])} | "
            f"{r['lambda_scale']:g} | {' / '.join(_fmt(float(v)) for v in scores.values())} | "
            f"{_fmt(r['select_mse_teacher_base'])} / {_fmt(r['select_mse_teacher_fit'])} | "
            f"{_fmt(r['fit_seconds'], 2)} |"
        )
    for r in refs:
        lines.append(
            f"| *{r['solver']}* | {r['nfe'] or ''} | {_fmt(r['fd_digits_base'])} | | | "
            f"{_fmt(r['fd_pixel_base'])} |" + " |" * 7
        )
    md = "\n".join(lines) + "\n"
    (out / "table.md").write_text(md)
    return md


def plot_fd(rows: list[dict], refs: list[dict], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(3.4 * cols, 2.8 * nrows), dpi=110, squeeze=False, sharey=True
    )
    for ax, label in zip(axes.flat, labels):
        ok = [r for r in rows if r["solver"] == label and r["status"] == "ok"]
        x = [r["nfe"] for r in ok]
        ax.plot(x, [r["fd_digits_base"] for r in ok], "s--", color="tab:gray", label="base")
        ax.plot(x, [r["fd_digits_dode"] for r in ok], "o-", color="tab:red", label="D-ODE (α·λ)")
        for r in ok:
            if r["lambda_scale"] != 1:
                ax.annotate(
                    f"α={r['lambda_scale']:g}",
                    (r["nfe"], r["fd_digits_dode"]),
                    textcoords="offset points",
                    xytext=(2, 4),
                    fontsize=6,
                )
        for ref, style in zip(refs, (":", "-.")):
            ax.axhline(ref["fd_digits_base"], ls=style, lw=1, color="k", label=ref["solver"])
        ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_title(label)
        ax.set_xlabel("NFE")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[:, 0]:
        ax.set_ylabel("FD-digits (lower is better)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_lambdas(rows: list[dict], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.8 * nrows), dpi=110, squeeze=False)
    for ax, label in zip(axes.flat, labels):
        for r in rows:
            if r["solver"] == label and r["status"] == "ok":
                lam = [float(v) for v in r["lambdas"].split()]
                ax.plot(range(len(lam)), lam, "o-", ms=3, label=f"NFE {r['nfe']}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(label)
        ax.set_xlabel("model call k")
        ax.legend(fontsize=6)
    for ax in axes[:, 0]:
        ax.set_ylabel("λ_k")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_samples(grid: dict[str, torch.Tensor], title: str, path: Path) -> None:
    """Rows of samples (labelled) from the same noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(grid)
    k = len(next(iter(grid.values())))
    img = np.full((len(names) * 9 + 1, k * 9 + 1), 0.3)
    for r, name in enumerate(names):
        x = ((grid[name].clamp(-1, 1) + 1) / 2).reshape(k, 8, 8).numpy()
        for i in range(k):
            img[1 + r * 9 : 1 + r * 9 + 8, 1 + i * 9 : 1 + i * 9 + 8] = x[i]
    fig, ax = plt.subplots(figsize=(0.45 * k + 1.6, 0.45 * len(names) + 0.6), dpi=110)
    ax.imshow(img, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([5 + 9 * r for r in range(len(names))], names, fontsize=7)
    ax.set_xticks([])
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def _quiet() -> None:
    """Keep the demo's output to its own lines (36 fits would repeat every notice)."""
    warnings.filterwarnings("ignore", r".*(eval mode|many workers|LeafSpec|anonymous).*")
    warnings.filterwarnings("ignore", r".*args parameter is intended to run from within.*")
    warnings.filterwarnings("ignore", r".*(logs directory .* exists|Matrix is singular).*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import lightning.pytorch  # noqa: F401 - sets its loggers' levels on import; override after

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()


@dataclass
class DemoSettings:
    """The settings of ``make demo`` (``configs/demo/digits.yaml``; every one is a command-line
    option of ``python experiments/digits_demo.py``).

    Args:
        solvers: the solvers (label, get_solver name, options).
        nfes: the NFE values; a solver that cannot make exactly that many calls gets a row
            saying so.
        fit_config: the ``python -m dode.train`` config of every fit (model, grid, teacher,
            fit and validation seeds), read with :func:`dode.lit.api.fit_kwargs`; the demo sets
            the solver, its NFE and grid, and the run folder.
        fit_overrides: :func:`dode.fit` keyword arguments for every fit, over the config's
            (e.g. ``{fit_seeds: 0-63}``).
        judge_seeds: the held-out seeds base and D-solver are judged on (never fitted on).
        select_seeds: held-out seeds (neither fitted nor judged on) on which the λ scale α is
            chosen (:func:`dode.select_scale`, FD-digits against the training digits).
        scales: the α tried; ``[1]`` reports the fitted λ as they are (α = 0 is the base
            solver).
        reference_solver: the converged ODE solution (the "teacher" reference row).
        reference_nfe: its NFE.
        model: the model, as in ``--model.model`` of the fit config (used for judging).
        schedule: the σ grid of the reference solution.
        batch_size: samples per batch when judging.
        bootstrap: bootstrap resamples for the noise of FD-digits(D) − FD-digits(base).
        grid_nfe: the NFE of the sample grid.
        grid_samples: samples per row of the sample grid.
        out: where the table, plots and grids go.
        run_dir: where the fits' run folders and the W&B run go.
        wandb_mode: W&B mode of the demo's run.
        workers: worker processes that fit and judge cells side by side (0: all in this
            process). Small convolutions scale poorly over threads, so on a CPU one
            single-threaded worker per core is faster than one process using every core.
        threads: CPU threads of torch and BLAS per process (default: one per core, divided
            among the workers).
    """

    solvers: list[SolverSpec] = field(default_factory=lambda: list(DEFAULT_SOLVERS))
    nfes: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 8, 10])
    fit_config: str | None = "configs/demo/digits-fit.yaml"
    fit_overrides: dict[str, Any] = field(default_factory=dict)
    judge_seeds: str = "1000000-1009999"
    select_seeds: str = "3000000-3000999"
    scales: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    reference_solver: SolverSpec = field(default_factory=lambda: TEACHER)
    reference_nfe: int = 40
    model: str = "digits"
    schedule: str = "karras"
    batch_size: int = 2500
    bootstrap: int = 10
    grid_nfe: int = 4
    grid_samples: int = 12
    out: str = "experiments/results/digits"
    run_dir: str = "runs/digits-demo"
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    workers: int = 0
    threads: int | None = None

    def check(self) -> None:
        """Raise ``ValueError`` (one message) for settings the demo cannot run with."""
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {self.workers!r}.")
        if any(not isinstance(n, int) or n < 1 for n in self.nfes):
            raise ValueError(f"nfes must be positive integers, got {self.nfes}.")
        if self.fit_config and not Path(self.fit_config).is_file():
            raise ValueError(
                f"fit_config {self.fit_config!r} does not exist; pass a dode.train config."
            )
        if 1.0 not in self.scales:
            raise ValueError(
                f"scales must contain 1 (the fitted λ, reported in every row), got "
                f"{self.scales}; add 0 to let a cell fall back to its base solver."
            )
        labels = [spec.label for spec in self.solvers]
        if len(set(labels)) != len(labels):
            raise ValueError(f"solver labels must be unique, got {labels}.")
        if set(parse_seeds(self.judge_seeds)) & set(parse_seeds(self.select_seeds)):
            raise ValueError(
                "select_seeds and judge_seeds overlap; α must be chosen on other seeds."
            )


def run_demo(settings: DemoSettings | None = None, **changes: Any) -> list[dict]:
    """Fit and judge every (solver, NFE) cell; write the table, plots, grids and a W&B run.

    ``changes`` replace fields of ``settings`` (default :class:`DemoSettings`). Returns the
    table's rows (cells, then the reference rows).
    """
    return _checked_run(dataclasses.replace(settings or DemoSettings(), **changes), _run_demo)


def _checked_run(s: Any, run: Callable[[Any], list[dict]]) -> list[dict]:
    """Check the settings ``s`` (α scales as floats), give each worker process its share of the
    cores unless ``s.threads`` says, and return ``run(s)`` under that thread limit (also the
    guided and flow demos')."""
    s.scales = [float(a) for a in s.scales]
    s.check()
    if s.workers and not s.threads:
        s.threads = max(1, (os.cpu_count() or 1) // s.workers)
    with _threads(s.threads):
        return run(s)


@contextlib.contextmanager
def _threads(threads: int | None):
    """Limit torch's and BLAS's (FD's matrix square roots) CPU threads, then restore them."""
    if not threads:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


# -- work that runs in a worker process (or inline with workers=0) -------------------------------


_CACHE: dict[str, Any] = {}


def _worker_init(threads: int | None) -> None:
    if threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(threads)
        _CACHE["threadpool_limits"] = threadpool_limits(threads)  # kept for the worker's life
    _quiet()


def _shared(model: str) -> dict[str, Any]:
    """The model (a registered name, :func:`dode.load_denoiser`), classifier and reference
    statistics, loaded once per process (also the guided and flow demos')."""
    if _CACHE.get("model") != model:
        split = load_digits_split()
        clf = load_classifier()
        _CACHE.update(
            model=model,
            den=load_denoiser(model),
            clf=clf,
            split=split,
            test_digits=FrechetReference.from_features(digits_features(split.test_images, clf)),
            train_digits=FrechetReference.from_features(digits_features(split.train_images, clf)),
            test_pixels=FrechetReference.from_features(_pixels(split.test_images)),
        )
    return _CACHE


def _peak() -> tuple[int, float]:
    """(pid, this process's peak resident memory in MB)."""
    return os.getpid(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reference_task(model: str, spec: SolverSpec, nfe: int, schedule: str, seeds: list[int],
                    batch_size: int) -> dict:  # fmt: skip
    """The converged ODE solution on ``seeds`` (one share of the reference row)."""
    den = _shared(model)["den"]
    solver = get_solver(spec.name, **spec.options)
    sigmas = get_schedule(
        schedule,
        solver.steps_for_nfe(nfe),
        sigma_min=max(0.002, den.sigma_min),
        sigma_max=min(80.0, den.sigma_max),
    )
    noise = noise_from_seeds(seeds, den.sample_shape)
    with torch.inference_mode():
        (x,) = sample_many(den, solver, noise, sigmas, [None], batch_size=batch_size)
    return {"x": x.float(), "describe": solver.describe(), "peak": _peak()}


def _cell_task(spec: SolverSpec, nfe: int, job: DemoSettings) -> dict:
    """Fit one cell with :func:`dode.fit`, choose α, judge base and D-solver."""
    sh = _shared(job.model)
    den, clf = sh["den"], sh["clf"]
    row: dict[str, Any] = {"solver": spec.label, "nfe": nfe}
    cell_dir = Path(job.run_dir) / f"{spec.name}-nfe{nfe}"
    t0 = time.perf_counter()
    if cell_dir.is_dir():  # every demo run refits: the previous run's folder goes
        shutil.rmtree(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    fitted = _fit(spec, nfe, job, cell_dir)
    row["fit_seconds"] = time.perf_counter() - t0
    solver, sigmas, lam = fitted.build_solver(), fitted.sigmas, fitted.lambdas

    def digits(x):
        return digits_features(_as_images(x), clf)

    # α on seeds neither fitted nor judged on, against the *training* digits: the held-out
    # digits the table is judged against play no part in the choice.
    t0 = time.perf_counter()
    with torch.inference_mode():
        choice = select_scale(
            den,
            solver,
            noise_from_seeds(parse_seeds(job.select_seeds), den.sample_shape),
            sigmas,
            lam,
            lambda x: sh["train_digits"].distance(digits(x)),
            job.scales,
            batch_size=job.batch_size,
            return_samples=True,
        )
    row["select_seconds"] = time.perf_counter() - t0
    alpha = choice.scale
    # The solver the table reports, as a file next to the fit's (which keeps α = 1).
    chosen = dataclasses.replace(fitted, lambdas=choice.lambdas)
    chosen.metrics = {
        **fitted.metrics,
        "lambda_scale": alpha,
        "select_scores": {f"{a:g}": v for a, v in choice.scores.items()},
        "select_seeds": job.select_seeds,
        "select_score": "fd_digits vs the training digits",
    }
    chosen.save(cell_dir / "solver-chosen.safetensors")

    # The judged runs: the base solver and, unless α = 0 (the base solver again), the D-solver.
    t0 = time.perf_counter()
    noise = noise_from_seeds(parse_seeds(job.judge_seeds), den.sample_shape)
    sets = [None] if alpha == 0 else [None, choice.lambdas]
    with torch.inference_mode():
        runs = [x.float() for x in sample_many(den, solver, noise, sigmas, sets,
                                               batch_size=job.batch_size)]  # fmt: skip
    xb_raw, xd_raw = runs[0], runs[-1]
    xb, xd, fds = _judge_fd(xb_raw, xd_raw, alpha, clf, sh["test_digits"], job.bootstrap, nfe)
    pix = sh["test_pixels"]
    row.update(
        status="ok",
        lambda_scale=alpha,
        **fds,
        fd_pixel_base=pix.distance(_pixels(xb)),
        fd_pixel_dode=pix.distance(_pixels(xd)),
        judge_seconds=time.perf_counter() - t0,
        lambdas=" ".join(f"{v:.5g}" for v in lam.tolist()),
        select_scores=" ".join(f"{a:g}:{v:.4g}" for a, v in choice.scores.items()),
    )
    grid = ()
    if nfe == job.grid_nfe:  # base and the fitted λ (α = 1) on a few judged seeds
        with torch.inference_mode():
            grid = tuple(_as_images(x) for x in sample_many(
                den, solver, noise[: job.grid_samples], sigmas, [None, lam]))  # fmt: skip
    samples = choice.samples or {}
    return {
        "row": row,
        "raw": (xb_raw, xd_raw),
        "select_raw": {a: samples[a].float() for a in (0.0, 1.0) if a in samples},
        "grid": grid,
        "peak": _peak(),
    }


class _Lazy:
    """A task of ``workers=0``, run in this process when its result is first asked for."""

    def __init__(self, fn, *args) -> None:
        self._call: tuple | None = (fn, args)
        self._out: Any = None

    def result(self) -> Any:
        if self._call is not None:
            fn, args = self._call
            self._out, self._call = fn(*args), None
        return self._out


class _Inline:
    """``workers=0``: the executor interface, each task run in this process on demand."""

    def submit(self, fn, *args) -> _Lazy:
        return _Lazy(fn, *args)

    def shutdown(self, **_) -> None:
        pass


# -- the demo --------------------------------------------------------------------------------


def _cells(s: DemoSettings) -> tuple[list[tuple[SolverSpec, int]], dict[tuple[str, int], dict]]:
    """The (solver, NFE) cells to fit, the dearest first (so that the workers finish together),
    and a row for every cell a solver cannot reach."""
    cells, rows = [], {}
    for spec in s.solvers:
        solver = get_solver(spec.name, **spec.options)
        for nfe in s.nfes:
            try:
                solver.steps_for_nfe(nfe)
                cells.append((spec, nfe))
            except ValueError:
                reach = sorted({solver.nfe(n) for n in range(1, 12)})
                rows[spec.label, nfe] = {
                    "solver": spec.label,
                    "nfe": nfe,
                    "status": f"n/a: {solver.describe()} makes "
                    f"{', '.join(map(str, reach[:5]))}, … calls",
                }
    return sorted(cells, key=lambda c: -c[1]), rows


def _pool(s: DemoSettings):
    """Worker processes (``s.workers``), or this process (``workers=0``)."""
    if not s.workers:
        return _Inline()
    import multiprocessing as mp

    # fork (Linux): the workers start with everything imported; this process has run no torch
    # op yet and has no other threads when the pool forks (on the first submit).
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    return ProcessPoolExecutor(
        s.workers, mp_context=ctx, initializer=_worker_init, initargs=(s.threads,)
    )


def _reference_rows(s: DemoSettings, ref_out: list[dict], seeds: list[int], sh: dict, t0: float):
    """The teacher (converged ODE solution) and real-digits rows, and the teacher's raw
    samples on the judged and on the α-selection seeds."""
    split, clf = sh["split"], sh["clf"]
    shares = len(ref_out)
    n = sum(len(r["x"]) for r in ref_out)
    teacher_all = torch.empty(n, *ref_out[0]["x"].shape[1:])
    for i, r in enumerate(ref_out):
        teacher_all[i::shares] = r["x"]
    teacher_raw, teacher_select = teacher_all[: len(seeds)], teacher_all[len(seeds) :]
    teacher = _as_images(teacher_raw)
    teacher_row = {
        "solver": f"teacher: {ref_out[0]['describe']}, {s.reference_nfe} NFE",
        "nfe": s.reference_nfe,
        "status": "reference",
        "fd_digits_base": sh["test_digits"].distance(digits_features(teacher, clf)),
        "fd_pixel_base": sh["test_pixels"].distance(_pixels(teacher)),
        "judge_seconds": time.perf_counter() - t0,
    }
    real_row = {
        "solver": f"real: {len(split.train_images)} training digits",
        "nfe": None,
        "status": "reference",
        "fd_digits_base": sh["test_digits"].distance(digits_features(split.train_images, clf)),
        "fd_pixel_base": sh["test_pixels"].distance(_pixels(split.train_images)),
    }
    return [teacher_row, real_row], teacher_raw, teacher_select


def _finish_row(res: dict, teacher_raw: torch.Tensor, teacher_select: torch.Tensor) -> dict:
    """A cell's row with its MSE to the teacher (judged and α-selection seeds)."""
    row = res["row"]
    xb_raw, xd_raw = res["raw"]
    sel = res["select_raw"]
    row.update(
        mse_teacher_base=mse(xb_raw, teacher_raw),
        mse_teacher_dode=mse(xd_raw, teacher_raw),
        select_mse_teacher_base=mse(sel[0.0], teacher_select) if 0.0 in sel else None,
        select_mse_teacher_fit=mse(sel[1.0], teacher_select),
    )
    print(
        f"[demo] {row['solver']:>13} NFE {row['nfe']:>2}: FD-digits base "
        f"{row['fd_digits_base']:.3g} → D {row['fd_digits_dode']:.3g} (α = "
        f"{row['lambda_scale']:g}; α-selection FD-digits {row['select_scores']})   fit "
        f"{row['fit_seconds']:.1f} s, α {row['select_seconds']:.1f} s, judge "
        f"{row['judge_seconds']:.1f} s",
        flush=True,
    )
    return row


def _header(s: DemoSettings, sh: dict, total: float, peak_mb: float, processes: int) -> list[str]:
    """The table's title and explanation."""
    seeds, select = parse_seeds(s.judge_seeds), parse_seeds(s.select_seeds)
    fit_cfg = s.fit_config or "(dode.train defaults)"
    procs = (
        f"{processes} processes ({s.workers} workers), {s.threads or torch.get_num_threads()} "
        "torch thread(s) each"
        if s.workers
        else f"1 process, {torch.get_num_threads()} torch threads"
    )
    return [
        "# D-ODE on the bundled digits DDPM",
        "",
        f"Model `{s.model}`{' (`dode/assets/digits_ddpm`)' if s.model == 'digits' else ''}, "
        f"σ grid per solver: {_grids(s.solvers)}; λ fitted with "
        f"`dode.fit` on the `python -m dode.train` config `{fit_cfg}` per cell; base and "
        f"D-solver judged on {len(seeds)} held-out seeds ({s.judge_seeds}), FD against the "
        f"{len(sh['split'].test_images)} held-out real digits (samples clamped to [−1, 1]). "
        f"**D** is the D-solver with λ scaled by α ∈ {{{', '.join(f'{a:g}' for a in s.scales)}}}, "
        "chosen per cell (`dode.select_scale`) by FD-digits against the *training* digits on "
        f"{len(select)} other held-out seeds ({s.select_seeds}); α = 1 is the fitted λ as they "
        "are (the paper's D-solver), α = 0 the base solver. The α-selection columns show those "
        "seeds' scores for every α and the MSE to the teacher of the base solver and of the "
        "fitted λ there. MSE→teacher: mean squared error of the raw samples to the teacher "
        "row's (a converged solution of the same ODE) from the same noise. ± is the bootstrap "
        "std of FD-digits(D) − FD-digits(base) over the judged seeds; bold: D at least as good "
        "as its base.",
        "",
        f"Run: {total:.0f} s wall, peak memory {peak_mb:.0f} MB (sum of every process's peak), "
        f"{procs}, torch {torch.__version__}.",
    ]


def _run_demo(s: DemoSettings) -> list[dict]:
    t_start = time.perf_counter()
    _quiet()
    seeds, select = parse_seeds(s.judge_seeds), parse_seeds(s.select_seeds)
    out_dir, runs = Path(s.out), Path(s.run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    cells, rows = _cells(s)
    pool = _pool(s)
    peaks: dict[int, float] = {}
    grids: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
    wb = None
    try:
        # The reference solution on the judged and the α-selection seeds, one share per worker.
        t0 = time.perf_counter()
        shares = max(1, s.workers)
        ref_seeds = seeds + select
        ref_futs = [
            pool.submit(_reference_task, s.model, s.reference_solver, s.reference_nfe,
                        s.schedule, ref_seeds[i::shares], s.batch_size)
            for i in range(shares)
        ]  # fmt: skip
        cell_futs = {pool.submit(_cell_task, spec, nfe, s): (spec, nfe) for spec, nfe in cells}
        if s.wandb_mode != "disabled":
            wb = _wandb_start(runs, s.wandb_mode)
        sh = _shared(s.model)
        ref_out = [f.result() for f in ref_futs]
        peaks.update(r["peak"] for r in ref_out)
        refs, teacher_raw, teacher_select = _reference_rows(s, ref_out, seeds, sh, t0)
        print(f"[demo] reference rows in {time.perf_counter() - t0:.1f} s", flush=True)

        for f in as_completed(cell_futs) if s.workers else list(cell_futs):
            spec, nfe = cell_futs[f]
            res = f.result()
            rows[spec.label, nfe] = _finish_row(res, teacher_raw, teacher_select)
            peaks.update([res["peak"]])
            if res["grid"]:
                grids[spec.label, nfe] = res["grid"]
    except BaseException:
        if wb is not None:
            wb.finish(exit_code=1)
        raise
    finally:
        pool.shutdown(cancel_futures=True)
    rows_list = [rows[spec.label, n] for spec in s.solvers for n in s.nfes]
    grid: dict[str, torch.Tensor] = {}
    for spec in s.solvers:
        if (spec.label, s.grid_nfe) in grids:
            xb, xfit = grids[spec.label, s.grid_nfe]
            grid[f"{spec.label} base"] = xb
            grid[f"{spec.label} D-ODE λ"] = xfit
    grid["teacher"] = _as_images(teacher_raw)[: s.grid_samples]

    # -- outputs --------------------------------------------------------------------------------
    total = time.perf_counter() - t_start
    peaks.update([_peak()])
    peak_mb = sum(peaks.values())
    header = _header(s, sh, total, peak_mb, len(peaks))
    labels = [spec.label for spec in s.solvers]
    md = write_table(rows_list, refs, out_dir, header)
    plot_fd(rows_list, refs, labels, out_dir / "fd_digits_vs_nfe.png")
    plot_lambdas(rows_list, labels, out_dir / "lambdas.png")
    plot_samples(
        grid,
        f"same noise, NFE {s.grid_nfe}, fitted λ (teacher: {s.reference_nfe} NFE)",
        out_dir / "samples.png",
    )
    if wb is not None:
        _wandb_log(wb, rows_list, refs, out_dir, total, peak_mb)
    print(md)
    print(
        f"[demo] wrote {out_dir}/table.md, table.csv, fd_digits_vs_nfe.png, lambdas.png, samples.png"
    )
    print(f"[demo] done in {total:.0f} s, peak memory {peak_mb:.0f} MB")
    return rows_list + refs


def _wandb_start(runs: Path, mode: str):
    """Start the demo's W&B run (while the workers compute: its start-up costs no wall time)."""
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    from dode.tracking import wandb_mode

    return wandb.init(
        project="dode",
        name="digits-demo",
        dir=str(runs),
        mode=wandb_mode(mode),
        config={"columns": COLUMNS},
        reinit="finish_previous",
    )


def _wandb_log(run, rows, refs, out_dir: Path, total: float, peak_mb: float) -> None:
    import wandb

    table = wandb.Table(columns=COLUMNS)
    for r in [*rows, *refs]:
        table.add_data(*[r.get(c, None) for c in COLUMNS])
    run.log({"table": table})
    for name in ("fd_digits_vs_nfe", "lambdas", "samples"):
        run.log({name: wandb.Image(str(out_dir / f"{name}.png"))})
    for r in rows:
        if r["status"] == "ok":
            key = f"{r['solver']}/nfe{r['nfe']}"
            for col in ("fd_digits_base", "fd_digits_dode", "lambda_scale"):
                run.summary[f"{key}/{col}"] = r[col]
    run.summary["seconds"] = total
    run.summary["peak_memory_mb"] = peak_mb
    for f in ("table.md", "table.csv"):
        run.save(str(out_dir / f), base_path=str(out_dir), policy="now")
    print(f"[demo] W&B run ({run.settings.mode}): {Path(run.dir).parent}")
    run.finish()


def main(argv: list[str] | None = None) -> list[dict]:
    """Command line: ``-c CONFIG`` and any :class:`DemoSettings` field as an option."""
    return cli(
        argv, DemoSettings, run_demo, "digits_demo",
        "D-ODE on the bundled digits DDPM: fit, judge, table, plots, W&B.",
    )  # fmt: skip


def cli(
    argv: list[str] | None,
    settings_cls: type,
    run: Callable[[Any], list[dict]],
    prog: str,
    description: str,
    defaults: dict[str, Any] | None = None,
) -> list[dict]:
    """A demo's command line: ``-c CONFIG`` and every field of the dataclass ``settings_cls``
    as an option (``defaults`` over its own); returns ``run(settings)``, or exits with status 2
    and one line ``PROG: error: …`` on a ``ValueError``."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog=f"python experiments/{prog}.py", description=description, default_env=False
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config")
    parser.add_class_arguments(settings_cls)
    if defaults:
        parser.set_defaults(**defaults)
    _quiet()
    cfg = parser.instantiate(parser.parse_args(argv))
    settings = settings_cls(**{f.name: cfg[f.name] for f in dataclasses.fields(settings_cls)})
    try:
        return run(settings)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
