"""``make demo-guided``: D-ODE with classifier-free guidance on the bundled class-conditional
digits DDPM, end to end, on a CPU (``make demo-flow`` runs the same code on the rectified-flow
digits model, see ``experiments/digits_flow_demo.py``).

For every guidance scale w, solver and NFE this fits λ with the core Python API on the model
bound to the fit seeds' labels and w (``den.bind(labels, guidance_scale=w)``;
:func:`dode.teacher_states` and :class:`dode.LambdaFit`, i.e. :func:`dode.fit_lambdas`), chooses
how much of the fitted λ to use (α·λ, :func:`dode.select_scale`, on seeds used nowhere else, as
``make demo`` does), then judges the base solver against that D-solver on the same held-out
seeds:

* **FD-digits**: Fréchet distance of the shipped digits classifier's penultimate features
  (:mod:`dode.digits`) between the samples and the 360 held-out real digits;
* **class accuracy**: the fraction of samples the shipped classifier assigns to the label they
  were asked for;
* **MSE to the teacher**: of the raw samples against a converged solution of the same guided
  ODE from the same noise (the "teacher" reference row of that w), on every judged seed;
* **fit MSE**: the fit's own objective on the fit seeds: the final sample's MSE to the fit's
  teacher (the same solver on a ``teacher_factor``× finer grid), base and fitted λ.

Class labels are a function of the seed (label = seed mod 10), so nothing depends on batching
or on the number of worker processes. Reference rows: per w, a converged ODE solution on the
judged seeds; real training digits against the held-out ones (the floor of FD-digits) and the
classifier's accuracy on the held-out digits (the ceiling of the accuracy).

Writes ``table.md``, ``table.csv``, ``fd_digits_vs_nfe.png`` and ``samples.png`` to ``--out``;
prints the table at the end.

Usage::

    python experiments/digits_guided_demo.py -c configs/demo/digits-guided.yaml
    python experiments/digits_guided_demo.py -c configs/demo/digits-guided.yaml \\
        --solvers '[{label: DDIM, name: ddim}]' --nfes '[3, 4]' --guidance_scales '[2]'
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "experiments"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from digits_demo import (  # noqa: E402
    SolverSpec,
    _alphas,
    _as_images,
    _checked_run,
    _fmt,
    _judge_fd,
    _peak,
    _pool,
    _quiet,
    _shared,
    _write_csv,
    cli,
    plot_samples,
)

import dode  # noqa: E402
from dode.denoisers import Denoiser  # noqa: E402
from dode.denoisers.flow import FlowDenoiser, flow_start  # noqa: E402
from dode.digits.classifier import digits_features  # noqa: E402
from dode.grids.schedules import flow_sigmas, grid_for_model, refine_space  # noqa: E402
from dode.lambda_fit import at_sigma  # noqa: E402
from dode.metrics import mse  # noqa: E402
from dode.noise import noise_from_seeds, parse_seeds  # noqa: E402
from dode.sampling import sample_many  # noqa: E402
from dode.select import check_scales, select_scale  # noqa: E402
from dode.solvers import Solver, get_solver  # noqa: E402

COLUMNS = [
    "guidance",
    "solver",
    "nfe",
    "status",
    "fd_digits_base",
    "fd_digits_dode",
    "fd_digits_diff_std",
    "acc_base",
    "acc_dode",
    "mse_teacher_base",
    "mse_teacher_dode",
    "fit_mse_base",
    "fit_mse_dode",
    "lambda_scale",
    "select_scores",
    "fit_seconds",
    "select_seconds",
    "judge_seconds",
    "lambdas",
]

#: The bundled class-conditional models, by their registered names (:func:`dode.load_denoiser`;
#: 10 classes, label = seed mod 10).
MODELS = (
    "digits-cond",  # dode/assets/digits_cond_ddpm: ε, DDPM linear β, null label 10 for CFG
    "digits-flow",  # dode/assets/digits_flow: rectified flow, v = ε − x0 at timestep 1000·t
)
NUM_CLASSES = 10

# Each on diffusers' DDIM grid (time-uniform, "leading": t_i = i·(1000 // N)), as `make demo`.
GUIDED_SOLVERS = [
    SolverSpec("DDIM", "ddim", {}, "time_uniform", {"spacing": "leading"}),
    SolverSpec("DPM-Solver++(2M)", "dpm_solver_pp", {"order": 2}, "time_uniform",
               {"spacing": "leading"}),
    SolverSpec("UniPC", "unipc", {}, "time_uniform", {"spacing": "leading"}),
]  # fmt: skip
TEACHER = SolverSpec("teacher", "dpm_solver_pp", {"order": 3})


# -- the model, bound to a set of seeds ----------------------------------------------------------


def labels_of(seeds: list[int]) -> Tensor:
    """Class labels as a function of the seed: ``seed mod 10``."""
    return torch.tensor(seeds, dtype=torch.long) % NUM_CLASSES


def bind(den: Denoiser, seeds: list[int], w: float) -> Denoiser:
    """``den`` conditioned on the seeds' labels, guidance scale ``w`` (a flow stays a flow:
    :meth:`~dode.denoisers.FlowDenoiser.bind` keeps ``start``)."""
    return den.bind(labels_of(seeds), guidance_scale=w)


def problem(den: Denoiser, spec: SolverSpec, nfe: int, seeds: list[int], w: float):
    """``(model, noise, σ grid)`` of one cell on ``seeds``: the model bound to the seeds'
    labels and w, ready for :func:`dode.sample` / :func:`dode.teacher_states`.

    A flow grid starts at t = 1 (σ = ∞): its first model call is taken exactly by
    :meth:`~dode.denoisers.FlowDenoiser.start` (the same for base and D-solver, never
    corrected) and counts towards the NFE; the solver makes the other ``nfe − 1`` calls on the
    finite rest of the grid, where the λ act.
    """
    solver = get_solver(spec.name, **spec.options)
    model = bind(den, seeds, w)
    latents = noise_from_seeds(seeds, den.sample_shape)
    if isinstance(den, FlowDenoiser):
        steps = solver.steps_for_nfe(nfe - 1) + 1
        opts = {"shift": getattr(den, "shift", 1.0), **(spec.schedule_options or {})}
        grid = flow_sigmas(steps, spacing=spec.schedule or "flux", **opts)
        with torch.no_grad():
            noise, sigmas = flow_start(model, latents, grid)
        return model, noise.clone(), sigmas
    sigmas = grid_for_model(
        den, spec.schedule or "time_uniform", solver.steps_for_nfe(nfe), spec.schedule_options
    )
    return model, latents, sigmas


def _space(den: Denoiser, spec: SolverSpec) -> str:
    """Where the teacher's grid is refined: log σ for flows and time-uniform DDPM grids."""
    return "log" if isinstance(den, FlowDenoiser) else refine_space(spec.schedule or "")


def _reach(solver: Solver, nfe: int, flow: bool) -> bool:
    try:
        solver.steps_for_nfe(nfe - 1 if flow else nfe)
    except ValueError:
        return False
    return True


# -- settings ------------------------------------------------------------------------------------


@dataclass
class DemoSettings:
    """The settings of ``make demo-guided`` (``configs/demo/digits-guided.yaml``) and ``make
    demo-flow`` (``configs/demo/digits-flow.yaml``); each is a command-line option.

    Args:
        model: ``digits-cond`` (the class-conditional DDPM) or ``digits-flow`` (the
            class-conditional rectified flow; guidance 1 only).
        solvers: the solvers (label, get_solver name, options, grid). DDPM: ``schedule`` and
            ``schedule_options`` as ``--model.schedule`` of dode.train (default time_uniform).
            Flow: ``schedule`` is the spacing of :func:`dode.grids.schedules.flow_sigmas` (default
            ``flux``: t uniform from 1 to 1/N) and ``schedule_options`` its options (``shift``).
        nfes: the NFE values, model calls per sample (for a flow, the call at t = 1 included).
        guidance_scales: the classifier-free guidance scales w (1: the conditional model alone).
        fit_seeds: the seeds λ are fitted on (one batch).
        teacher_factor: the fit's teacher: the same solver on a grid this many times finer.
        judge_seeds: the held-out seeds base and D-solver are judged on.
        select_seeds: other held-out seeds on which α is chosen (FD-digits against the
            *training* digits).
        scales: the α tried (must contain 1; 0 is the base solver).
        reference_solver: the converged ODE solution (the "teacher" row of each w).
        reference_nfe: its NFE (karras grid on the DDPM; the first solver's flow spacing on
            the flow).
        bootstrap: bootstrap resamples for the noise of FD-digits(D) − FD-digits(base).
        grid_nfe: the NFE of the sample grid.
        grid_samples: samples per row of the sample grid (the first judged seeds).
        out: where the table, plot and grid go.
        workers: worker processes (0: all in this process).
        threads: torch/BLAS threads per process (default: the cores divided among workers).
    """

    model: str = "digits-cond"
    solvers: list[SolverSpec] = field(default_factory=lambda: list(GUIDED_SOLVERS))
    nfes: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 8, 10])
    guidance_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    fit_seeds: str = "0-127"
    teacher_factor: int = 10
    judge_seeds: str = "1000000-1001499"
    select_seeds: str = "3000000-3000499"
    scales: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    reference_solver: SolverSpec = field(default_factory=lambda: TEACHER)
    reference_nfe: int = 40
    bootstrap: int = 10
    grid_nfe: int = 4
    grid_samples: int = 10
    out: str = "experiments/results/digits-guided"
    workers: int = 0
    threads: int | None = None

    @property
    def flow(self) -> bool:
        return self.model == "digits-flow"

    def check(self) -> None:
        """Raise ``ValueError`` (one message) for settings the demo cannot run with."""
        if self.model not in MODELS:
            raise ValueError(
                f"unknown model {self.model!r}; the demo runs on {' or '.join(MODELS)}."
            )
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {self.workers!r}.")
        low = 2 if self.flow else 1
        if not self.nfes or any(not isinstance(n, int) or n < low for n in self.nfes):
            raise ValueError(
                f"nfes must be integers >= {low}"
                + (" (a flow spends one call at t = 1)" if self.flow else "")
                + f", got {self.nfes}."
            )
        if not isinstance(self.teacher_factor, int) or self.teacher_factor < 2:
            raise ValueError(f"teacher_factor must be an integer >= 2, got {self.teacher_factor}.")
        ws = self.guidance_scales
        if not ws or not all(math.isfinite(w) and w >= 0 for w in ws) or len(set(ws)) != len(ws):
            raise ValueError(f"guidance_scales must be distinct numbers >= 0, got {ws}.")
        if self.flow and ws != [1.0]:
            raise ValueError(
                f"guidance_scales {ws}: the flow demo runs the conditional flow alone (no "
                "classifier-free guidance for flows in this demo yet); use guidance_scales: [1]."
            )
        check_scales(self.scales)
        if 1.0 not in self.scales:
            raise ValueError(
                f"scales must contain 1 (the fitted λ), got {self.scales}; add 0 to let a cell "
                "fall back to its base solver."
            )
        labels = [spec.label for spec in self.solvers]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"solver labels must be unique (and at least one), got {labels}.")
        sets = {k: set(parse_seeds(getattr(self, k))) for k in
                ("fit_seeds", "select_seeds", "judge_seeds")}  # fmt: skip
        for a, b in (("fit_seeds", "judge_seeds"), ("fit_seeds", "select_seeds"),
                     ("select_seeds", "judge_seeds")):  # fmt: skip
            if sets[a] & sets[b]:
                raise ValueError(f"{a} and {b} overlap; give disjoint seed ranges.")
        for spec in self.solvers:
            get_solver(spec.name, **spec.options)  # unknown names/options: its own ValueError


def run_demo(settings: DemoSettings | None = None, **changes: Any) -> list[dict]:
    """Fit and judge every (w, solver, NFE) cell; write the table, plot and grid.

    ``changes`` replace fields of ``settings`` (default :class:`DemoSettings`). Returns the
    table's rows (cells, then the reference rows).
    """
    s = dataclasses.replace(settings or DemoSettings(), **changes)
    s.guidance_scales = [float(w) for w in s.guidance_scales]
    return _checked_run(s, _run_demo)


# -- work that runs in a worker process (or inline with workers=0) -------------------------------
# (the model, classifier and reference statistics: digits_demo's ``_shared``, once per process)


def accuracy(images: Tensor, labels: Tensor, clf) -> float:
    """Fraction of ``images`` the classifier assigns to ``labels``."""
    with torch.inference_mode():
        pred = torch.cat([clf(x).argmax(1) for x in images.split(4096)])
    return float((pred == labels).double().mean())


def _reference_task(s: DemoSettings, w: float, seeds: list[int]) -> dict:
    """The converged ODE solution on ``seeds`` at guidance ``w`` (a share of a teacher row)."""
    den = _shared(s.model)["den"]
    spec = s.reference_solver
    solver = get_solver(spec.name, **spec.options)
    if isinstance(den, FlowDenoiser):
        flow_spec = dataclasses.replace(spec, schedule=s.solvers[0].schedule,
                                        schedule_options=s.solvers[0].schedule_options)  # fmt: skip
        model, noise, sigmas = problem(den, flow_spec, s.reference_nfe, seeds, w)
    else:
        model = bind(den, seeds, w)
        noise = noise_from_seeds(seeds, den.sample_shape)
        sigmas = grid_for_model(den, "karras", solver.steps_for_nfe(s.reference_nfe))
    with torch.inference_mode():
        (x,) = sample_many(model, solver, noise, sigmas, [None])
    return {"x": x.float(), "describe": solver.describe(), "peak": _peak()}


def _cell_task(spec: SolverSpec, nfe: int, w: float, s: DemoSettings) -> dict:
    """Fit one cell (core API), choose α, judge base and D-solver."""
    sh = _shared(s.model)
    den, clf = sh["den"], sh["clf"]
    solver = get_solver(spec.name, **spec.options)
    row: dict[str, Any] = {"guidance": w, "solver": spec.label, "nfe": nfe}

    # The fit: dode.fit_lambdas, spelled out to keep the teacher for the fit's own objective.
    t0 = time.perf_counter()
    model, noise, sigmas = problem(den, spec, nfe, parse_seeds(s.fit_seeds), w)
    teacher = dode.teacher_states(
        model, solver, noise, sigmas, s.teacher_factor, space=_space(den, spec)
    )
    fit = dode.LambdaFit(model, solver, sigmas, [noise], [teacher])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # degenerate calls: λ = 0, recorded
        lam = fit.run()
    with torch.inference_mode():
        xb_fit, xd_fit = sample_many(model, solver, noise, sigmas, [None, lam])
    target = at_sigma(teacher, 0.0)
    row.update(fit_mse_base=mse(xb_fit, target), fit_mse_dode=mse(xd_fit, target))
    row["fit_seconds"] = time.perf_counter() - t0

    # α on seeds neither fitted nor judged on, against the *training* digits.
    t0 = time.perf_counter()
    model, noise, sigmas = problem(den, spec, nfe, parse_seeds(s.select_seeds), w)
    with torch.inference_mode():
        choice = select_scale(
            model, solver, noise, sigmas, lam,
            lambda x: sh["train_digits"].distance(digits_features(_as_images(x), clf)),
            s.scales,
        )  # fmt: skip
    row["select_seconds"] = time.perf_counter() - t0
    alpha = choice.scale

    # The judged runs: the base solver and, unless α = 0 (the base solver again), the D-solver.
    t0 = time.perf_counter()
    seeds = parse_seeds(s.judge_seeds)
    labels = labels_of(seeds)
    model, noise, sigmas = problem(den, spec, nfe, seeds, w)
    sets = [None] if alpha == 0 else [None, choice.lambdas]
    with torch.inference_mode():
        runs = [x.float() for x in sample_many(model, solver, noise, sigmas, sets)]
    xb_raw, xd_raw = runs[0], runs[-1]
    xb, xd, fds = _judge_fd(xb_raw, xd_raw, alpha, clf, sh["test_digits"], s.bootstrap, nfe)
    row.update(
        status="ok",
        lambda_scale=alpha,
        **fds,
        acc_base=accuracy(xb, labels, clf),
        acc_dode=accuracy(xd, labels, clf),
        judge_seconds=time.perf_counter() - t0,
        lambdas=" ".join(f"{v:.5g}" for v in lam.tolist()),
        select_scores=" ".join(f"{a:g}:{v:.4g}" for a, v in choice.scores.items()),
    )
    grid = (xb[: s.grid_samples], xd[: s.grid_samples]) if nfe == s.grid_nfe else ()
    return {"row": row, "raw": (xb_raw, xd_raw), "grid": grid, "peak": _peak()}


# -- outputs -------------------------------------------------------------------------------------


def write_table(rows: list[dict], refs: list[dict], out: Path, header: list[str]) -> str:
    """Write ``table.csv`` and ``table.md``; returns the markdown."""
    _write_csv([*rows, *refs], out / "table.csv", COLUMNS)
    alphas = _alphas(rows)
    lines = [*header, ""]
    lines.append(
        "| w | solver | NFE | FD-digits base | FD-digits D | ± (D − base) | accuracy base | "
        "accuracy D | MSE→teacher base | MSE→teacher D | fit MSE base | fit MSE D | α | "
        f"α-selection FD-digits, α = {' / '.join(alphas)} | fit s |"
    )
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        w = _fmt(r["guidance"])
        if r["status"] != "ok":
            lines.append(f"| {w} | {r['solver']} | {r['nfe']} | {r['status']} |" + " |" * 11)
            continue
        d = _fmt(r["fd_digits_dode"])
        better = r["fd_digits_dode"] <= r["fd_digits_base"]
        scores = [kv.split(":")[1] for kv in r["select_scores"].split()]
        lines.append(
            f"| {w} | {r['solver']} | {r['nfe']} | {_fmt(r['fd_digits_base'])} | "
            f"{f'**{d}**' if better else d} | {_fmt(r['fd_digits_diff_std'], 2)} | "
            f"{r['acc_base']:.3f} | {r['acc_dode']:.3f} | {_fmt(r['mse_teacher_base'])} | "
            f"{_fmt(r['mse_teacher_dode'])} | {_fmt(r['fit_mse_base'])} | "
            f"{_fmt(r['fit_mse_dode'])} | {r['lambda_scale']:g} | "
            f"{' / '.join(_fmt(float(v)) for v in scores)} | {_fmt(r['fit_seconds'], 2)} |"
        )
    for r in refs:
        w = "" if r.get("guidance") is None else _fmt(r["guidance"])
        lines.append(
            f"| {w} | *{r['solver']}* | {r['nfe'] or ''} | {_fmt(r['fd_digits_base'])} | | | "
            f"{r['acc_base']:.3f} |" + " |" * 8
        )
    md = "\n".join(lines) + "\n"
    (out / "table.md").write_text(md)
    return md


def plot_fd(rows: list[dict], refs: list[dict], s: DemoSettings, path: Path) -> None:
    """FD-digits vs NFE, one panel per guidance scale: every solver, base (dashed) and D."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ws = s.guidance_scales
    fig, axes = plt.subplots(
        1, len(ws), figsize=(3.6 * len(ws), 3.0), dpi=110, squeeze=False, sharey=True
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, w in zip(axes[0], ws):
        for spec, color in zip(s.solvers, colors):
            ok = [r for r in rows if r["guidance"] == w and r["solver"] == spec.label
                  and r["status"] == "ok"]  # fmt: skip
            x = [r["nfe"] for r in ok]
            ax.plot(x, [r["fd_digits_base"] for r in ok], "s--", color=color, alpha=0.6, ms=3,
                    label=f"{spec.label} base")  # fmt: skip
            ax.plot(x, [r["fd_digits_dode"] for r in ok], "o-", color=color, ms=3,
                    label=f"{spec.label} D")  # fmt: skip
        for r in refs:
            if r.get("guidance") == w:
                ax.axhline(r["fd_digits_base"], ls=":", lw=1, color="k", label="teacher")
            elif r.get("guidance") is None:
                ax.axhline(r["fd_digits_base"], ls="-.", lw=1, color="grey", label="real digits")
        ax.set_yscale("log")
        ax.set_xticks(s.nfes)
        ax.set_title(f"guidance w = {w:g}")
        ax.set_xlabel("NFE")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("FD-digits (lower is better)")
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- the demo --------------------------------------------------------------------------------


def _cells(s: DemoSettings) -> tuple[list[tuple[SolverSpec, int, float]], dict]:
    """The cells to fit (the dearest first) and a row for every NFE a solver cannot make."""
    cells, rows = [], {}
    for w in s.guidance_scales:
        for spec in s.solvers:
            solver = get_solver(spec.name, **spec.options)
            for nfe in s.nfes:
                if _reach(solver, nfe, s.flow):
                    cells.append((spec, nfe, w))
                else:
                    rows[w, spec.label, nfe] = {
                        "guidance": w, "solver": spec.label, "nfe": nfe,
                        "status": f"n/a: {solver.describe()} cannot make {nfe} calls",
                    }  # fmt: skip
    return sorted(cells, key=lambda c: -c[1] * (1 if c[2] == 1 else 2)), rows


def _header(s: DemoSettings, total: float, peak_mb: float, processes: int) -> list[str]:
    n_judge, n_select = len(parse_seeds(s.judge_seeds)), len(parse_seeds(s.select_seeds))
    n_fit = len(parse_seeds(s.fit_seeds))
    grids = "; ".join(
        f"{spec.label} {spec.schedule or ('flux' if s.flow else 'time_uniform')}"
        + (f" ({', '.join(f'{k}={v}' for k, v in spec.schedule_options.items())})"
           if spec.schedule_options else "")
        for spec in s.solvers
    )  # fmt: skip
    if s.flow:
        title = "# D-ODE on the bundled class-conditional rectified-flow digits model"
        what = (
            f"Model `digits-flow` (`dode/assets/digits_flow`, v = ε − x0), guidance "
            f"{', '.join(f'{w:g}' for w in s.guidance_scales)} (the conditional model alone), "
            "labels seed mod 10. Flow grids start at t = 1 (σ = ∞): the first model call, at "
            "t = 1, is taken exactly by `FlowDenoiser.start` (`dode.denoisers.flow_start`), "
            "shared by base and D-solver and not corrected; it **counts in the NFE**, and the "
            "solver makes the other NFE − 1 calls, where the λ act. Flow grid per solver "
            f"(`dode.grids.schedules.flow_sigmas` spacing): {grids}."
        )
        ref_grid = "the same flow grid"
    else:
        title = "# D-ODE with classifier-free guidance on the bundled class-conditional digits DDPM"
        what = (
            "Model `digits-cond` (`dode/assets/digits_cond_ddpm`, ε, null label 10), bound to "
            "its batch with `den.bind(labels, guidance_scale=w)`, labels seed mod 10; CFG "
            "o = o_u + w (o_c − o_u) on ε, one batched forward of 2B (w = 1: no unconditional "
            f"pass). σ grid per solver: {grids}."
        )
        ref_grid = "a Karras grid in [0.01, 80]"
    procs = (
        f"{processes} processes ({s.workers} workers), {s.threads} torch thread(s) each"
        if s.workers
        else f"1 process, {torch.get_num_threads()} torch thread(s)"
    )
    return [
        title,
        "",
        what,
        "",
        f"λ fitted per cell with the core API (`dode.teacher_states` + `dode.LambdaFit`, i.e. "
        f"`dode.fit_lambdas`) on {n_fit} fit seeds ({s.fit_seeds}), teacher: the same solver "
        f"on a {s.teacher_factor}× finer grid. Base and D-solver judged on **{n_judge} held-out "
        f"seeds** ({s.judge_seeds}); FD-digits against the 360 held-out real digits, accuracy: "
        "the shipped classifier's label equals the label asked for (samples clamped to "
        f"[−1, 1]). **D** is the D-solver with λ scaled by α ∈ "
        f"{{{', '.join(f'{a:g}' for a in s.scales)}}}, chosen per cell (`dode.select_scale`) "
        f"by FD-digits against the *training* digits on {n_select} other held-out seeds "
        f"({s.select_seeds}); α = 1 is the fitted λ as they are, α = 0 the base solver. "
        f"MSE→teacher: of the raw samples to the teacher row of the same w ({s.reference_nfe}-NFE "
        f"{s.reference_solver.name} on {ref_grid}, same noise and labels). Fit MSE: the fit's "
        "own objective on the fit seeds, the final sample's MSE to the fit's teacher, base vs "
        "fitted λ (α = 1). ± is the bootstrap std of FD-digits(D) − FD-digits(base); bold: D "
        "at least as good as its base.",
        "",
        f"Run: {total:.0f} s wall, peak memory {peak_mb:.0f} MB (sum over processes), {procs}, "
        f"torch {torch.__version__}.",
    ]


def _run_demo(s: DemoSettings) -> list[dict]:
    t_start = time.perf_counter()
    _quiet()
    out_dir = Path(s.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = parse_seeds(s.judge_seeds)
    cells, rows = _cells(s)
    pool = _pool(s)
    peaks: dict[int, float] = {}
    grids: dict[tuple[float, str], tuple[Tensor, Tensor]] = {}
    try:
        shares = max(1, s.workers)
        ref_futs = {
            w: [pool.submit(_reference_task, s, w, seeds[i::shares]) for i in range(shares)]
            for w in s.guidance_scales
        }
        cell_futs = {pool.submit(_cell_task, spec, nfe, w, s): (spec, nfe, w)
                     for spec, nfe, w in cells}  # fmt: skip
        sh = _shared(s.model)
        clf, split = sh["clf"], sh["split"]
        refs, teacher_raw = [], {}
        for w, futs in ref_futs.items():
            outs = [f.result() for f in futs]
            peaks.update(o["peak"] for o in outs)
            x = torch.empty(len(seeds), *outs[0]["x"].shape[1:])
            for i, o in enumerate(outs):
                x[i::shares] = o["x"]
            teacher_raw[w] = x
            img = _as_images(x)
            refs.append({
                "guidance": w, "solver": f"teacher: {outs[0]['describe']}, {s.reference_nfe} NFE",
                "nfe": s.reference_nfe, "status": "reference",
                "fd_digits_base": sh["test_digits"].distance(digits_features(img, clf)),
                "acc_base": accuracy(img, labels_of(seeds), clf),
            })  # fmt: skip
        refs.append({
            "guidance": None, "solver": f"real: {len(split.train_images)} training digits "
            "(accuracy: the classifier on the held-out digits)", "nfe": None,
            "status": "reference",
            "fd_digits_base": sh["test_digits"].distance(
                digits_features(split.train_images, clf)),
            "acc_base": accuracy(split.test_images, split.test_labels, clf),
        })  # fmt: skip
        print(f"[demo] reference rows in {time.perf_counter() - t_start:.1f} s", flush=True)
        for f in as_completed(cell_futs) if s.workers else list(cell_futs):
            spec, nfe, w = cell_futs[f]
            res = f.result()
            row = res["row"]
            xb_raw, xd_raw = res["raw"]
            row.update(
                mse_teacher_base=mse(xb_raw, teacher_raw[w]),
                mse_teacher_dode=mse(xd_raw, teacher_raw[w]),
            )
            rows[w, spec.label, nfe] = row
            peaks.update([res["peak"]])
            if res["grid"]:
                grids[w, spec.label] = res["grid"]
            print(
                f"[demo] w {w:g} {spec.label:>16} NFE {nfe:>2}: FD-digits base "
                f"{row['fd_digits_base']:.3g} → D {row['fd_digits_dode']:.3g} (α = "
                f"{row['lambda_scale']:g}), accuracy {row['acc_base']:.3f} → "
                f"{row['acc_dode']:.3f}; fit {row['fit_seconds']:.1f} s, α "
                f"{row['select_seconds']:.1f} s, judge {row['judge_seconds']:.1f} s",
                flush=True,
            )
    finally:
        pool.shutdown(cancel_futures=True)
    rows_list = [rows[w, spec.label, n] for w in s.guidance_scales for spec in s.solvers
                 for n in s.nfes]  # fmt: skip

    grid: dict[str, Tensor] = {}
    for w in s.guidance_scales:
        for spec in s.solvers:
            if (w, spec.label) in grids:
                xb, xd = grids[w, spec.label]
                alpha = rows[w, spec.label, s.grid_nfe]["lambda_scale"]
                grid[f"w={w:g} {spec.label} base"] = xb
                grid[f"w={w:g} {spec.label} D (α={alpha:g})"] = xd
        grid[f"w={w:g} teacher"] = _as_images(teacher_raw[w])[: s.grid_samples]

    total = time.perf_counter() - t_start
    peaks.update([_peak()])
    peak_mb = sum(peaks.values())
    md = write_table(rows_list, refs, out_dir, _header(s, total, peak_mb, len(peaks)))
    plot_fd(rows_list, refs, s, out_dir / "fd_digits_vs_nfe.png")
    if grid:
        plot_samples(
            grid,
            f"same noise, labels 0-9, NFE {s.grid_nfe} (teacher: {s.reference_nfe} NFE)",
            out_dir / "samples.png",
        )
    print(md)
    print(f"[demo] wrote {out_dir}/table.md, table.csv, fd_digits_vs_nfe.png, samples.png")
    print(f"[demo] done in {total:.0f} s, peak memory {peak_mb:.0f} MB")
    return rows_list + refs


def main(argv: list[str] | None = None, prog: str = "digits_guided_demo",
         defaults: dict[str, Any] | None = None) -> list[dict]:  # fmt: skip
    """Command line: ``-c CONFIG`` and any :class:`DemoSettings` field as an option."""
    return cli(
        argv, DemoSettings, run_demo, prog,
        "D-ODE on a bundled class-conditional digits model: fit, judge, table, plot.", defaults,
    )  # fmt: skip


if __name__ == "__main__":
    main()
