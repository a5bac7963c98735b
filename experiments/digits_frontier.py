"""The FD-based frontier (issue 14; ``make demo-frontier`` now runs the fidelity frontier,
``experiments/digits_fidelity.py``): the best you can get at each NFE on the bundled digits DDPM, and what
dode adds on top (issue 14).

Per NFE (3–10):

* **best_base**: the best learning-free (solver, grid): every solver on every grid of
  :func:`dode.standard_grids.standard_grids`, the grid chosen per (solver, NFE) by MSE to a converged
  solution on selection seeds (:func:`dode.standard_grids.select_grid`), the solver by FD-digits on the
  same selection seeds;
* **best_dode**: each solver on its best standard grid with λ fitted in closed form on the fit
  seeds and α ∈ {0, ½, 1} chosen by FD-digits on the selection seeds (as the demo does);
* **learned**: the GITS-style DP grid, refined with the student solver + λ, and λ
  (:func:`dode.learned_grid.learned_dp`) for the solver of best_dode, α chosen the same way; at
  NFE 4 and 5 also the gradient fit of grid and λ warm-started from it
  (:func:`dode.learned_grid.learned_sgd`, ``learned_sgd*`` columns), α chosen the same way.
  ``learned_fit_x`` / ``learned_sgd_fit_x``: the whole fit's time over the teacher's
  generation time on the same 100 fit seeds (goal ≤ 3).

All judged on held-out seeds: FD-digits (the shipped classifier's features, against the 360
held-out real digits; :mod:`dode.digits`, as ``experiments/digits_demo.py`` computes it) and
the MSE to the teacher (DPM-Solver++(3M), 40 NFE, Karras over the model's whole σ range).
A second table runs the exact digits GMM (``gmm-digits``): MSE to a 200-NFE float64 solution
for the best standard grid + λ, the DP grid without λ and with λ (``--model digits`` only).

``--model digits-cond`` (CFG ``--guidance 2``) and ``--model
digits-flow`` (guidance 1) run the same frontier on the bundled
class-conditional models (the same solvers and NFEs, :data:`PRESETS`; each run is under 5
minutes on 2 cores, ``--solvers`` / ``--nfes`` narrow it): labels are seed mod 10, bound per
noise set (fit, selection, judged) with ``den.bind(labels, guidance_scale=w)`` as in
``experiments/digits_guided_demo.py``. The flow's
standard grids start at the finite σ = 999 (t = 0.999), so no :meth:`FlowDenoiser.start` is
needed. FD-digits is against the 360 held-out real digits as for the DDPM.

Usage::

    python experiments/digits_frontier.py [--model digits|digits-cond|digits-flow] [--guidance W]
        [--judge 500] [--select 100] [--solvers NAME ...] [--nfes N ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dode  # noqa: E402
from dode.denoisers.loading import load_denoiser  # noqa: E402
from dode.digits.classifier import check_images, digits_features, load_classifier, load_digits_split  # noqa: E402
from dode.learned_grid import learned_dp, learned_sgd  # noqa: E402
from dode.metrics import FrechetReference  # noqa: E402
from dode.noise import noise_from_seeds  # noqa: E402
from dode.solvers import get_solver  # noqa: E402
from dode.standard_grids import reference_solution, select_grid, standard_grids  # noqa: E402

SOLVERS = {
    "DDIM": ("ddim", {}),
    "iPNDM": ("ipndm", {}),
    "DPM-Solver++(2M)": ("dpm_solver_pp", {"order": 2}),
    "UniPC": ("unipc", {}),
}
#: Per model: the solvers (keys of :data:`SOLVERS`), NFEs, guidance scale and output folder.
#: (DDIM on the flow is its Euler step: both are the first-order step in σ-space.)
PRESETS = {
    "digits": {"solvers": list(SOLVERS), "nfes": list(range(3, 11)), "guidance": 1.0,
               "out": "experiments/results/digits"},
    "digits-cond": {"solvers": list(SOLVERS), "nfes": list(range(3, 11)), "guidance": 2.0,
                    "out": "experiments/results/digits-guided"},
    "digits-flow": {"solvers": list(SOLVERS), "nfes": list(range(3, 11)), "guidance": 1.0,
                    "out": "experiments/results/digits-flow"},
}  # fmt: skip
COLUMNS = [
    "nfe", "best_base", "best_base_fd", "best_base_mse", "best_dode", "best_dode_fd",
    "best_dode_mse", "learned", "learned_fd", "learned_mse", "learned_sgd", "learned_sgd_fd",
    "learned_sgd_mse", "teacher_fd", "best_mse_base", "best_mse_base_mse", "per_solver",
    "learned_fit_s", "learned_sgd_fit_s", "learned_fit_x", "learned_sgd_fit_x",
]  # fmt: skip


def _mse(a, b) -> float:
    return float(((a.double() - b.double()) ** 2).mean())


def run(
    judge: int,
    select: int,
    out: Path,
    nfes: list[int],
    model: str = "digits",
    guidance: float = 1.0,
    solvers: list[str] | None = None,
    sgd_nfes: tuple[int, ...] = (4, 5),
    gmm: bool | None = None,
    fit: int = 100,
) -> list[dict]:
    """The frontier of ``model`` (a key of :data:`PRESETS`) at ``guidance``; see the module
    docstring. ``solvers``: keys of :data:`SOLVERS` (default: all); ``sgd_nfes``: where
    :func:`learned_sgd` also runs; ``gmm``: also the exact-GMM table (default: for ``digits``);
    ``fit``: the fit seeds (0 to fit − 1) for λ and the learned grids."""
    if model not in PRESETS:
        raise ValueError(f"unknown model {model!r}; pick one of {sorted(PRESETS)}.")
    solvers = list(SOLVERS) if solvers is None else solvers
    bad = [k for k in solvers if k not in SOLVERS]
    if bad or not solvers:
        raise ValueError(f"unknown solvers {bad}; pick from {list(SOLVERS)}.")
    if model != "digits-cond" and guidance != 1:
        raise ValueError(f"--guidance {guidance:g} needs --model digits-cond (the others take 1).")
    gmm = model == "digits" if gmm is None else gmm
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    base = load_denoiser(model)
    clf = load_classifier()
    split = load_digits_split()
    test_ref = FrechetReference.from_features(digits_features(split.test_images, clf))
    train_ref = FrechetReference.from_features(digits_features(split.train_images, clf))

    def fd(x, ref=test_ref) -> float:
        return ref.distance(digits_features(check_images(x.float().clamp(-1, 1)), clf))

    shape = base.sample_shape
    fit_seeds = list(range(fit))
    sel_seeds = list(range(3_000_000, 3_000_000 + select))
    jud_seeds = list(range(1_000_000, 1_000_000 + judge))
    fit_noise = noise_from_seeds(fit_seeds, shape)
    sel_noise = noise_from_seeds(sel_seeds, shape)
    jud_noise = noise_from_seeds(jud_seeds, shape)
    # grids are picked by MSE (low variance) on the first 50 selection seeds, α by FD on all
    grid_noise = sel_noise[:50]
    # one model per noise set: conditional models bound to the seeds' labels (seed mod 10) and w
    fit_den, sel_den, grid_den, jud_den = (
        _bind(base, seeds, guidance, model != "digits")
        for seeds in (fit_seeds, sel_seeds, sel_seeds[:50], jud_seeds)
    )
    t0 = time.perf_counter()
    reference_solution(fit_den, fit_noise)  # the teacher's generation time, the fit cost's unit
    teacher_s = time.perf_counter() - t0
    grid_ref = reference_solution(grid_den, grid_noise)
    jud_ref = reference_solution(jud_den, jud_noise)
    teacher_fd = fd(jud_ref)
    grids = _grids(base)
    rows = []
    for nfe in nfes:
        cells = {}
        for label in solvers:
            name, opts = SOLVERS[label]
            solver = get_solver(name, **opts)
            ch = select_grid(grid_den, solver, nfe, grid_noise, grids=grids, reference=grid_ref)
            lam = dode.fit_lambdas(fit_den, solver, fit_noise, ch.sigmas, space="log")
            sc = dode.select_scale(
                sel_den, solver, sel_noise, ch.sigmas, lam, lambda x: fd(x, train_ref)
            )
            xb, xd = dode.sample_many(jud_den, solver, jud_noise, ch.sigmas, [None, sc.lambdas])
            cells[label] = {
                "grid": ch.spec.label, "sel_fd_base": sc.scores[0.0],
                "sel_fd_dode": sc.scores[sc.scale], "alpha": sc.scale, "solver": solver,
                "fd_base": fd(xb), "fd_dode": fd(xd), "mse_base": _mse(xb, jud_ref),
                "mse_dode": _mse(xd, jud_ref),
            }  # fmt: skip
        best_b = min(cells, key=lambda k: cells[k]["sel_fd_base"])
        best_d = min(cells, key=lambda k: cells[k]["sel_fd_dode"])
        best_m = min(cells, key=lambda k: cells[k]["mse_base"])
        c_b, c_d = cells[best_b], cells[best_d]
        solver = c_d["solver"]
        t0 = time.perf_counter()
        fdp = learned_dp(fit_den, solver, nfe, fit_noise)
        dp_s = time.perf_counter() - t0
        sc = dode.select_scale(
            sel_den, solver, sel_noise, fdp.sigmas, fdp.lambdas, lambda x: fd(x, train_ref)
        )
        (xl,) = dode.sample_many(jud_den, solver, jud_noise, fdp.sigmas, [sc.lambdas])
        row = {
            "nfe": nfe,
            "best_base": f"{best_b} / {c_b['grid']}",
            "best_base_fd": c_b["fd_base"],
            "best_base_mse": c_b["mse_base"],
            "best_dode": f"D-{best_d} / {c_d['grid']} (α={c_d['alpha']:g})",
            "best_dode_fd": c_d["fd_dode"],
            "best_dode_mse": c_d["mse_dode"],
            "learned": f"D-{best_d} / learned_dp (α={sc.scale:g})",
            "learned_fd": fd(xl),
            "learned_mse": _mse(xl, jud_ref),
            "teacher_fd": teacher_fd,
            "best_mse_base": f"{best_m} / {cells[best_m]['grid']}",
            "best_mse_base_mse": cells[best_m]["mse_base"],
            "per_solver": "; ".join(
                f"{k} {v['grid']}: FD {v['fd_base']:.3g}→{v['fd_dode']:.3g}, "
                f"MSE {v['mse_base']:.3g}→{v['mse_dode']:.3g}"
                for k, v in cells.items()
            ),
            "learned_fit_s": dp_s,
            "learned_fit_x": dp_s / teacher_s,
        }
        if nfe in sgd_nfes:
            t0 = time.perf_counter()
            fsg = learned_sgd(fit_den, solver, nfe, fit_noise)  # warm start: the DP grid + λ
            row["learned_sgd_fit_s"] = time.perf_counter() - t0
            row["learned_sgd_fit_x"] = row["learned_sgd_fit_s"] / teacher_s
            sc = dode.select_scale(
                sel_den, solver, sel_noise, fsg.sigmas, fsg.lambdas, lambda x: fd(x, train_ref)
            )
            (xs,) = dode.sample_many(jud_den, solver, jud_noise, fsg.sigmas, [sc.lambdas])
            row["learned_sgd"] = f"D-{best_d} / learned_sgd (α={sc.scale:g})"
            row["learned_sgd_fd"] = fd(xs)
            row["learned_sgd_mse"] = _mse(xs, jud_ref)
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
               if k != "per_solver"}, flush=True)  # fmt: skip
    total = time.perf_counter() - t_all
    out.mkdir(parents=True, exist_ok=True)
    what = {
        "digits": "digits",
        "digits-cond": f"digits-cond (CFG w={guidance:g}, labels seed mod 10)",
        "digits-flow": "digits-flow (rectified flow, w=1, labels seed mod 10)",
    }
    header = (
        f"# {what[model]} frontier (issue 14): {', '.join(solvers)}; judged on {judge} held-out seeds (the demo uses 10,000), "
        f"grids chosen on {len(grid_noise)} and α on {select} other seeds, λ/grids fitted on seeds "
        f"0-{fit - 1}; teacher "
        f"(fit seeds) {teacher_s:.1f} s; run {total:.0f} s on {torch.get_num_threads()} thread(s)"
    )
    with open(out / "frontier.csv", "w", newline="") as f:
        f.write(header + "\n")
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    plot(rows, out / "frontier.png", title=what[model])
    if gmm:
        table = run_gmm(nfes)
        with open(out / "frontier_gmm.csv", "w", newline="") as f:
            f.write("# exact digits GMM: MSE to a 200-NFE float64 DPM-Solver++(3M) solution, "
                    "DPM-Solver++(2M), 256 held-out seeds\n")  # fmt: skip
            w = csv.DictWriter(f, list(table[0]))
            w.writeheader()
            for r in table:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    print(f"teacher (fit seeds) {teacher_s:.2f} s; total {total:.0f} s", flush=True)
    return rows


def _bind(den, seeds: list[int], guidance: float, conditional: bool):
    """``den`` bound to the labels ``seed mod 10`` and CFG ``guidance`` (unconditional: as is)."""
    if not conditional:
        return den
    return den.bind(torch.tensor(seeds, dtype=torch.long) % 10, guidance_scale=guidance)


def _grids(den):
    """The standard family without the σ_min = 0.002 members where the model's own minimum
    differs (0.01 on the digits DDPM, close; dropping them keeps the run short)."""
    lo = max(float(den.sigma_min), 1e-6)
    return [g for g in standard_grids(den) if g.options.get("sigma_min", lo) == lo]


def run_gmm(nfes: list[int]) -> list[dict]:
    den = load_denoiser("gmm-digits")
    shape = den.sample_shape
    fit = noise_from_seeds(list(range(100)), shape).double()
    held = noise_from_seeds(list(range(2_000_000, 2_000_256)), shape).double()
    ref = reference_solution(den, held, nfe=200)
    sel_ref = reference_solution(den, fit, nfe=200)
    solver = get_solver("dpm_solver_pp", order=2)
    out = []
    for nfe in nfes:
        ch = select_grid(den, solver, nfe, fit, grids=_grids(den), reference=sel_ref)
        lam = dode.fit_lambdas(den, solver, fit, ch.sigmas, space="log")
        fdp = learned_dp(den, solver, nfe, fit)
        xs = dode.sample_many(den, solver, held, ch.sigmas, [None, lam])
        xl = dode.sample_many(den, solver, held, fdp.sigmas, [None, fdp.lambdas])
        out.append({
            "nfe": nfe, "best_grid": ch.spec.label, "best_grid_base_mse": _mse(xs[0], ref),
            "best_grid_dode_mse": _mse(xs[1], ref), "learned_dp_base_mse": _mse(xl[0], ref),
            "learned_dp_dode_mse": _mse(xl[1], ref),
        })  # fmt: skip
    return out


def plot(rows: list[dict], path: Path, title: str = "digits") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nfe = [r["nfe"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(nfe, [r["best_base_fd"] for r in rows], "o-", label="best learning-free (solver, grid)")
    ax.plot(nfe, [r["best_dode_fd"] for r in rows], "s-", label="best D-solver, standard grid")
    ax.plot(nfe, [r["learned_fd"] for r in rows], "^-", label="learned DP grid + λ")
    sg = [r for r in rows if "learned_sgd_fd" in r]
    if sg:
        ax.plot([r["nfe"] for r in sg], [r["learned_sgd_fd"] for r in sg], "v", ms=9,
                label="learned grid + λ (gradient fit)")  # fmt: skip
    ax.axhline(rows[0]["teacher_fd"], color="k", ls="--", lw=1, label="teacher")
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("FD-digits (lower is better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=list(PRESETS), default="digits")
    p.add_argument("--guidance", type=float, default=None,
                   help="CFG scale (digits-cond only; default: the preset's, 2)")  # fmt: skip
    p.add_argument("--judge", type=int, default=500, help="held-out seeds judged per cell")
    p.add_argument("--select", type=int, default=100, help="seeds for grid and α selection")
    p.add_argument("--fit", type=int, default=100, help="fit seeds (0 to FIT-1) for λ and grids")
    p.add_argument("--solvers", nargs="+", default=None, help=f"from {list(SOLVERS)}")
    p.add_argument("--nfes", type=int, nargs="+", default=None)
    p.add_argument("--sgd-nfes", type=int, nargs="*", default=[4, 5],
                   help="NFEs where the gradient fit also runs")  # fmt: skip
    p.add_argument("--no-gmm", action="store_true", help="skip the exact-GMM table (digits)")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    pre = PRESETS[a.model]
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    return run(
        a.judge,
        a.select,
        a.out or ROOT / pre["out"],
        a.nfes or pre["nfes"],
        model=a.model,
        guidance=pre["guidance"] if a.guidance is None else a.guidance,
        solvers=a.solvers or pre["solvers"],
        sgd_nfes=tuple(a.sgd_nfes),
        gmm=False if a.no_gmm else None,
        fit=a.fit,
    )


if __name__ == "__main__":
    main()
