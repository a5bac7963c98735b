"""``make demo-frontier`` (``-guided``, ``-flow``): the best learning-free sampler per NFE and a
learned one, judged fidelity first (issue 18).

For one bundled model (``digits``, ``digits-cond`` at CFG w = 2 with labels seed mod 10,
``digits-flow``) and each NFE 3–10:

* **best_free**: the learning-free (solver, grid) cell with the lowest MSE to the converged
  reference on the *selection* seeds, over every solver of :data:`SOLVERS` and the model's
  standard grid family (:func:`dode.standard_grids.standard_grids`: leading/trailing/linspace/quadratic
  on the ᾱ table, Karras and log-SNR from the model's σ_max (and from 80), shifted flow grids
  from t = 0.999, each also with a final jump to 0), :func:`dode.evaluation.fidelity.
  best_free_cell`;
* **learned**: a learned sampler warm-started at that cell and fitted on the *fit* seeds only
  (:func:`fit_learned`), accepted only if it lowers the selection seeds' MSE by more than
  their noise (a paired bootstrap), else the baseline cell is kept (the CSV says so): never
  worse than best_free by construction on the selection seeds. With ablation NFEs, the
  ingredients (grid, λ, history coefficients, model-time shift) are chosen once per model on
  the selection seeds at the first of them and used at every NFE;
* both judged on the *held-out* seeds (:class:`dode.evaluation.fidelity.FidelityJudge`): MSE to
  the converged reference (DPM-Solver++(3M), 100 NFE, Karras from the model's σ_max, checked by
  halving its steps) with a bootstrap 95 % interval, and FD-digits (the shipped classifier's
  features against the 360 held-out real digits) with its interval; ``teacher_fd`` is the
  reference's own FD-digits;
* ``fit_x``: the learned fit's CPU time (the reference on the fit seeds, the fit itself, the
  acceptance check on the selection seeds) over the reference's generation time on the fit
  seeds; the comment lines give the breakdown per NFE (and the one-time cost of the
  ingredient choice).

Outputs ``experiments/results/<model>/fidelity.csv`` and ``fidelity.png`` (MSE vs NFE with the
intervals); with ``--ablation-nfes`` also ``fidelity_ablation.csv`` (what each ingredient adds).
The default seed counts keep each target under 5 minutes on 2 cores; ``--slow`` uses the
issue's held-out count (5,000 held-out seeds for MSE and FD; 256 selection and 512 fit seeds,
150 Adam steps on mini-batches of 64, five solvers, ablation at NFE 4 and 5). The MSE compares
images clamped to the data range [-1, 1] (:data:`CLIP`). Each committed file's comment lines say
which setting made it.

Usage::

    python experiments/digits_fidelity.py [--model digits|digits-cond|digits-flow] [--slow]
        [--fit N] [--select N] [--held N] [--steps N] [--nfes N ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import inspect
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dode.denoisers.loading import load_denoiser  # noqa: E402
from dode.digits.classifier import (  # noqa: E402
    check_images,
    digits_features,
    feature_hook,
    load_classifier,
    load_digits_split,
)
from dode.evaluation.fidelity import (  # noqa: E402
    CellChoice,
    FidelityJudge,
    SeedSplit,
    best_free_cell,
    bind_seeds,
    converged_reference,
)
from dode.learned_grid import sgd_grid  # noqa: E402
from dode.metrics import FrechetReference  # noqa: E402
from dode.noise import noise_from_seeds  # noqa: E402
from dode.objectives import DEFAULT_WEIGHTS, Objective  # noqa: E402
from dode.peer import fit_peer  # noqa: E402
from dode.solvers import get_solver  # noqa: E402
from dode.standard_grids import standard_grids  # noqa: E402

#: The learning-free solvers searched (label → name, options); one model call per step each.
SOLVERS = {
    "DDIM": ("ddim", {}),
    "iPNDM": ("ipndm", {}),
    "DPM-Solver++(2M)": ("dpm_solver_pp", {"order": 2}),
    "DPM-Solver++(3M)": ("dpm_solver_pp", {"order": 3}),
    "DEIS": ("deis", {}),
    "UniPC": ("unipc", {}),
}
#: The default run's subset (time); the slow run adds :data:`SLOW_SOLVERS`.
FAST_SOLVERS = ["DDIM", "iPNDM", "DPM-Solver++(2M)", "UniPC"]
SLOW_SOLVERS = [*FAST_SOLVERS, "DPM-Solver++(3M)"]
PRESETS = {
    "digits": {"guidance": 1.0, "out": "experiments/results/digits"},
    "digits-cond": {"guidance": 2.0, "out": "experiments/results/digits-guided"},
    "digits-flow": {"guidance": 1.0, "out": "experiments/results/digits-flow"},
}
#: The data range the MSE compares images in (all three models are pixel models in [-1, 1]): a
#: converged reference leaves it on rare seeds (|x| up to 8 on digits) by margins that would
#: otherwise dominate a mean over thousands of seeds; the unclamped MSE stays in the comments.
CLIP = (-1.0, 1.0)
#: Seed counts and fit settings: default (each target < 5 min on 2 cores) and ``--slow``. The
#: fit takes Adam steps on mini-batches of ``batch`` fit seeds, checking the selection MSE every
#: ``eval_every`` steps.
SETTINGS = {
    "default": {"fit": 64, "select": 32, "held": 500, "steps": 30, "batch": 32, "eval_every": 5,
                "ablation_nfes": []},
    "slow": {"fit": 512, "select": 256, "held": 5000, "steps": 150, "batch": 64,
             "eval_every": 10, "ablation_nfes": [4, 5]},
}  # fmt: skip
COLUMNS = [
    "nfe", "best_free", "best_free_mse", "best_free_mse_lo", "best_free_mse_hi", "learned",
    "learned_mse", "learned_mse_lo", "learned_mse_hi", "best_free_fd", "learned_fd",
    "teacher_fd", "fit_x", "peer", "peer_mse", "peer_mse_lo", "peer_mse_hi", "peer_fd",
    "peer_fd_lo", "peer_fd_hi", "learned_fd_lo", "learned_fd_hi", "teacher_fd_lo",
    "teacher_fd_hi",
]  # fmt: skip
ABLATION_COLUMNS = [
    "nfe", "variant", "accepted", "select_mse", "mse", "mse_lo", "mse_hi", "ratio", "fd",
    "fit_x", "select_quality", "fd_lo", "fd_hi",
]  # fmt: skip


# ---- the learned sampler ------------------------------------------------------------------------
@dataclass
class Learned:
    """A fitted sampler: ``sample(denoiser, noise)`` → final samples, its label and timings."""

    label: str
    sample: Callable
    seconds: float
    detail: dict


#: ``auto``: the end-to-end fit where dode has it, else the grid + λ fit; ``grid-lambda``: always
#: the grid + λ fit (``--learned``).
LEARNED = "auto"


def _end_to_end():
    """``dode.learned_solver.fit_end_to_end`` where this dode has it (and :data:`LEARNED` is
    ``auto``), else ``None``."""
    if LEARNED != "auto":
        return None
    try:
        from dode.learned_solver import fit_end_to_end
    except ImportError:
        return None
    return fit_end_to_end


#: The ablation variants: (name, options of fit_end_to_end) / (name, stand-in learning rates).
E2E_VARIANTS = {
    "grid only": {"learn_grid": True, "coefficients": "none", "time_shift": False},
    "grid + λ": {"learn_grid": True, "coefficients": "lambda", "time_shift": False},
    "grid + history": {"learn_grid": True, "coefficients": "history", "time_shift": False},
    "grid + history + shift": {"learn_grid": True, "coefficients": "history", "time_shift": True},
}
STANDIN_VARIANTS = {"grid only": (0.05, 0.0), "λ only": (0.0, 0.02), "grid + λ": (0.05, 0.02)}
#: The weights of the spectrum and moments terms in the ablation (both off in the default
#: objective; 0.1 x spectrum was the default before the feature Fréchet term).
SPECTRUM_WEIGHT = 0.1
MOMENTS_WEIGHT = 1.0
#: The objective and bound ablation (all ingredients; ablation NFEs only, never the choice):
#: L2 alone, L2 plus each batch-statistics term, the default (L2 + the digits classifier's
#: feature Fréchet term, dode.objectives.DEFAULT_WEIGHTS) also on half-size mini-batches, and
#: the shift bound at half its fraction. Each: (objective: a callable of the features hook, or
#: "default"; extra options, ``batch_size`` overriding the run's mini-batch).
OBJECTIVE_VARIANTS = {
    "objective: l2": (lambda f: "l2", {}),
    "objective: l2 + spectrum": (lambda f: Objective(spectrum=SPECTRUM_WEIGHT, features=f), {}),
    "objective: l2 + moments": (lambda f: Objective(moments=MOMENTS_WEIGHT, features=f), {}),
    "objective: default": (lambda f: "default", {}),
    "objective: default, half mini-batch": (lambda f: "default", {"batch_size": "half"}),
    "bound: shift fraction 0.25": (lambda f: "default", {"shift_fraction": 0.25}),
}  # fmt: skip
#: The peer's (LD3-style) RMSprop learning rate (dode.peer.fit_peer): 0.01 overshoots from
#: the warm start on the digits DDPM (its validation loss rises 2-6x in 5 steps), 0.002 does not.
PEER_LR = 0.002


def fit_learned(
    fit_den,
    cell: CellChoice,
    fit_noise: torch.Tensor,
    fit_ref: torch.Tensor,
    select: FidelityJudge,
    *,
    steps: int,
    batch: int | None = None,
    eval_every: int = 2,
    variant: str | None = None,
    features=None,
) -> Learned:
    """Fit a learned sampler warm-started at ``cell`` on the fit seeds only.

    With ``dode.learned_solver.fit_end_to_end`` available: the end-to-end fit (grid, history
    coefficients, model-time shift; ``variant`` a key of :data:`E2E_VARIANTS`, default all
    on; mini-batches of ``batch`` fit seeds, the MSE on images clamped to :data:`CLIP`,
    accepted by its paired test on the selection seeds). Otherwise the joint grid + λ gradient
    fit (:func:`dode.learned_grid.sgd_grid`) started at the cell's grid with λ = 0
    (``variant`` a key of :data:`STANDIN_VARIANTS`).
    """
    t0 = time.process_time()
    e2e = _end_to_end()
    if e2e is not None:
        if variant in OBJECTIVE_VARIANTS:
            objective, extra = OBJECTIVE_VARIANTS[variant]
            opts = {**E2E_VARIANTS["grid + history + shift"], **extra}
            if opts.pop("batch_size", None) == "half" and batch:
                batch = max(2, batch // 2)
            objective = objective(features)
            opts["objective"] = objective
            if objective == "default":
                opts["features"] = features
        else:
            opts = dict(E2E_VARIANTS[variant or "grid + history + shift"])
            opts["features"] = features  # the default objective's feature network
        if "select_denoiser" in inspect.signature(e2e).parameters:
            # a conditional model is bound to the fit seeds' labels; the selection seeds have theirs
            opts["select_denoiser"] = select.denoiser
        fitted = e2e(
            fit_den, cell.solver, cell.sigmas, fit_noise, fit_ref,
            select_noise=select.noise, select_reference=select.reference.samples,
            steps=steps, batch_size=batch, select_batch_size=len(select.noise),
            eval_every=eval_every, clip=CLIP, seed=0, **opts,
        )  # fmt: skip
        label = f"{cell.solver_label} / end-to-end ({variant or 'grid + history + shift'})"
        return Learned(
            label,
            lambda den, noise: fitted.sample(den, noise),
            time.process_time() - t0,
            {"fitted": fitted},
        )
    lr, lr_lam = STANDIN_VARIANTS[variant or "grid + λ"]
    n = len(cell.sigmas) - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        grid, lam, rec = sgd_grid(
            fit_den, cell.solver, n, fit_noise, reference=fit_ref, init=cell.sigmas,
            init_lambdas=None, steps=steps if lr or lr_lam else 0, lr=lr, lr_lambdas=lr_lam,
        )  # fmt: skip
    solver = cell.solver

    def sample(den, noise):
        from dode import sample_many

        with torch.no_grad():
            (x,) = sample_many(den, solver, noise, grid, [lam])
        return x

    label = f"{cell.solver_label} / learned {variant or 'grid + λ'} (Adam {steps})"
    return Learned(label, sample, time.process_time() - t0, {"grid": grid, "lambdas": lam})


def accept(learned: Learned, select: FidelityJudge, baseline_mse: float) -> tuple[bool, float]:
    """Whether ``learned`` lowers the selection seeds' MSE below ``baseline_mse``; its MSE. The
    end-to-end fit has decided already (a paired bootstrap on the selection seeds): its verdict."""
    if "fitted" in learned.detail:
        rec = learned.detail["fitted"].metrics["end_to_end"]
        return bool(rec["accepted"]), float(rec["select_mse_fitted"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            x = learned.sample(select.denoiser, select.noise)
            v = float(select.mse_per_seed(x).mean())
        except ValueError:
            return False, math.inf
    v = v if math.isfinite(v) else math.inf
    return v < baseline_mse, v


def fit_peer_row(
    fit_den,
    cell: CellChoice,
    fit_noise,
    fit_ref,
    select: FidelityJudge,
    *,
    steps,
    batch=None,
    eval_every=2,
    features=None,
) -> Learned:
    """The peer: the LD3-style fit (:func:`dode.peer.fit_peer`: learned log-SNR grid,
    bounded decoupled model times, the perceptual loss of ``features``, RMSprop with
    validation-driven decay, no coefficients) warm-started at ``cell``, validated on the
    selection seeds."""
    t0 = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = fit_peer(
            fit_den, cell.solver, cell.sigmas, fit_noise, fit_ref,
            select_noise=select.noise, select_reference=select.reference.samples,
            select_denoiser=select.denoiser, features=features, steps=steps, lr=PEER_LR,
            batch_size=batch, eval_every=eval_every, clip=CLIP, seed=0,
        )  # fmt: skip
    return Learned(
        f"{cell.solver_label} / LD3-style peer",
        lambda den, noise: fitted.sample(den, noise),
        time.process_time() - t0,
        {"fitted": fitted},
    )


# ---- the run --------------------------------------------------------------------------------------
def _grids(den):
    """The standard family without the σ_min = 0.002 members where the model's own minimum
    differs (0.01 on the digits DDPMs: close to it; dropping them halves the search)."""
    lo = max(float(den.sigma_min), 1e-6)
    return [g for g in standard_grids(den) if g.options.get("sigma_min", lo) == lo]


def run(
    model: str = "digits",
    *,
    fit: int,
    select: int,
    held: int,
    steps: int,
    batch: int | None = None,
    eval_every: int = 2,
    nfes: list[int],
    solvers: list[str],
    out: Path,
    ablation_nfes: list[int] = (),
    setting: str = "default",
    reference_nfe: int = 100,
) -> list[dict]:
    """The fidelity table of ``model`` (a key of :data:`PRESETS`); see the module docstring."""
    if model not in PRESETS:
        raise ValueError(f"unknown model {model!r}; pick one of {sorted(PRESETS)}.")
    bad = [s for s in solvers if s not in SOLVERS]
    if bad or not solvers:
        raise ValueError(f"unknown solvers {bad}; pick from {list(SOLVERS)}.")
    torch.set_num_threads(1)
    t_all, cpu_all = time.perf_counter(), time.process_time()
    w = PRESETS[model]["guidance"]
    base = load_denoiser(model)
    seeds = SeedSplit.ranges(fit, select, held)
    clf = load_classifier()
    real = FrechetReference.from_features(digits_features(load_digits_split().test_images, clf))

    def feats(x):
        return digits_features(check_images(x.float().clamp(-1, 1)), clf)

    hook = feature_hook(clf)  # the fits' feature network (objective, peer): differentiable

    t0 = time.perf_counter()
    # below 100 NFE (quick tests only) the judge skips the halving check
    ref = {"reference_nfe": reference_nfe, "check_reference": reference_nfe >= 100}
    sel = FidelityJudge(base, seeds.select, guidance_scale=w, clip=CLIP, **ref)
    jud = FidelityJudge(
        base, seeds.held, guidance_scale=w, features=feats, fd_reference=real, clip=CLIP, **ref
    )  # fmt: skip
    ref_s = time.perf_counter() - t0
    fit_den = bind_seeds(base, seeds.fit, w)
    fit_noise = noise_from_seeds(seeds.fit, base.sample_shape)
    c0 = time.process_time()  # CPU time (one thread): the ratios hold on a busy machine too
    fit_ref = converged_reference(fit_den, fit_noise, nfe=reference_nfe, check=False)
    teacher_s = time.process_time() - c0  # fit_x's unit: the teacher's time on the fit seeds
    teacher = jud.reference_score()
    grids = _grids(base)
    cand = {k: get_solver(SOLVERS[k][0], **SOLVERS[k][1]) for k in solvers}
    rows, ablation, notes = [], [], []
    e2e = _end_to_end() is not None
    fit_opts = {"steps": steps, "batch": batch, "eval_every": eval_every, "features": hook}
    cells: dict[int, tuple[CellChoice, float, object]] = {}

    def cell_at(nfe: int):
        """The best learning-free cell at ``nfe`` (searched once), its search time, its score."""
        if nfe not in cells:
            t0 = time.perf_counter()
            cell = best_free_cell(sel, nfe, solvers=cand, grids=grids)
            cells[nfe] = (cell, time.perf_counter() - t0, jud.score_cell(cell.solver, cell.sigmas))
        return cells[nfe]

    def ablate(nfe: int, variants=None) -> dict[str, tuple[Learned, bool, float, float]]:
        """Every ingredient variant (or ``variants``) fitted at ``nfe``: variant -> (fit,
        accepted, selection MSE, fit CPU seconds); one ablation row each."""
        cell, _, bf = cell_at(nfe)
        fits = {}
        for variant in variants or (E2E_VARIANTS if e2e else STANDIN_VARIANTS):
            c0 = time.process_time()
            lv = fit_learned(
                fit_den, cell, fit_noise, fit_ref.samples, sel, variant=variant, **fit_opts
            )
            okv, sv = accept(lv, sel, cell.mse)
            fits[variant] = (lv, okv, sv, time.process_time() - c0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sc = jud.score(lv.sample(jud.denoiser, jud.noise))
            rec = lv.detail["fitted"].metrics["end_to_end"] if "fitted" in lv.detail else {}
            ablation.append({
                "nfe": nfe, "variant": variant, "accepted": okv, "select_mse": sv,
                "mse": sc.mse, "mse_lo": sc.mse_lo, "mse_hi": sc.mse_hi,
                "ratio": sc.mse / bf.mse, "fd": sc.fd,
                "fit_x": (teacher_s + fits[variant][3]) / teacher_s,
                "select_quality": rec.get("select_quality_fitted") or math.nan,
                "fd_lo": sc.fd_lo, "fd_hi": sc.fd_hi,
            })  # fmt: skip
            print(f"  ablation NFE {nfe} {variant}: {sc.mse / bf.mse:.2f}x", flush=True)
        return fits

    # the ingredients: chosen once, on the selection seeds at the first ablation NFE (the
    # accepted variant with the lowest selection MSE), then used at every NFE
    choice_nfe = ablation_nfes[0] if e2e and ablation_nfes else None
    chosen, choice_fits, choice_note = None, {}, "all ingredients (no choice made)"
    if choice_nfe is not None:
        choice_fits = ablate(choice_nfe)
        good = {v: f[2] for v, f in choice_fits.items() if f[1]}
        if good:
            chosen = min(good, key=good.get)
        choice_note = (
            f"ingredients chosen on the selection seeds at NFE {choice_nfe}: {chosen or 'all'} "
            f"(selection MSE per variant: "
            + ", ".join(
                f"{v} {f[2]:.4g}{'' if f[1] else ' rejected'}" for v, f in choice_fits.items()
            )
            + f"; the choice's fits took {sum(f[3] for f in choice_fits.values()):.1f} s CPU once)"
        )
        print(choice_note, flush=True)
    for nfe in nfes:
        cell, search_s, bf = cell_at(nfe)
        c0 = time.process_time()
        if nfe == choice_nfe and chosen is not None:
            learned, _, _, spent = choice_fits[chosen]
            c0 -= spent  # fit_x counts that variant's own fit
        else:
            learned = fit_learned(
                fit_den, cell, fit_noise, fit_ref.samples, sel, variant=chosen, **fit_opts
            )
        ok, sel_mse = accept(learned, sel, cell.mse)
        fit_total = teacher_s + (time.process_time() - c0)
        if ok:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ls = jud.score(learned.sample(jud.denoiser, jud.noise))
            label = learned.label
        else:
            ls, label = bf, f"baseline kept ({learned.label} did not lower the selection MSE)"
        peer = fit_peer_row(fit_den, cell, fit_noise, fit_ref.samples, sel, **fit_opts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ps = jud.score(peer.sample(jud.denoiser, jud.noise))
        row = {
            "nfe": nfe, "best_free": cell.label, "best_free_mse": bf.mse,
            "best_free_mse_lo": bf.mse_lo, "best_free_mse_hi": bf.mse_hi, "learned": label,
            "learned_mse": ls.mse, "learned_mse_lo": ls.mse_lo, "learned_mse_hi": ls.mse_hi,
            "best_free_fd": bf.fd, "learned_fd": ls.fd, "teacher_fd": teacher.fd,
            "fit_x": fit_total / teacher_s, "peer": peer.label, "peer_mse": ps.mse,
            "peer_mse_lo": ps.mse_lo, "peer_mse_hi": ps.mse_hi, "peer_fd": ps.fd,
            "peer_fd_lo": ps.fd_lo, "peer_fd_hi": ps.fd_hi, "learned_fd_lo": ls.fd_lo,
            "learned_fd_hi": ls.fd_hi, "teacher_fd_lo": teacher.fd_lo,
            "teacher_fd_hi": teacher.fd_hi,
        }  # fmt: skip
        rows.append(row)
        fitted = learned.detail.get("fitted")
        rec = fitted.metrics["end_to_end"] if fitted is not None else {}
        paired = (
            f", paired change {rec['select_change']:.3g} (95 % upper bound "
            f"{rec['select_change_bound']:.3g})"
            if "select_change" in rec
            else ""
        )
        notes.append(
            f"# NFE {nfe}: unclamped MSE best_free {bf.mse_raw:.4g}, learned {ls.mse_raw:.4g}; "
            f"best_free FD interval [{bf.fd_lo:.4g}, {bf.fd_hi:.4g}], learned "
            f"[{ls.fd_lo:.4g}, {ls.fd_hi:.4g}]; selection MSE {cell.mse:.4g} -> {sel_mse:.4g}"
            f"{paired} ({'accepted' if ok else 'rejected'}); search {search_s:.1f} s over "
            f"{sum(math.isfinite(v) for v in cell.scores.values())} cells; fit_x = (teacher "
            f"{teacher_s:.2f} s + fit {learned.seconds:.1f} s + acceptance "
            f"{fit_total - teacher_s - learned.seconds:.1f} s) / teacher {teacher_s:.2f} s"
        )
        print(
            f"NFE {nfe}: {cell.label} {bf.mse:.4g} [{bf.mse_lo:.4g}, {bf.mse_hi:.4g}] -> "
            f"{label[:60]} {ls.mse:.4g} ({ls.mse / bf.mse:.2f}x), FD {bf.fd:.3g} -> {ls.fd:.3g} "
            f"(teacher {teacher.fd:.3g}), fit_x {row['fit_x']:.1f}; peer {ps.mse:.4g} "
            f"({ps.mse / bf.mse:.2f}x), FD {ps.fd:.3g}",
            flush=True,
        )
        if nfe in ablation_nfes and nfe != choice_nfe:
            ablate(nfe)
        if e2e and nfe in ablation_nfes:
            ablate(nfe, OBJECTIVE_VARIANTS)
    total = time.perf_counter() - t_all
    cpu = time.process_time() - cpu_all
    what = {
        "digits": "digits (DDPM)",
        "digits-cond": f"digits-cond (CFG w={w:g}, labels seed mod 10)",
        "digits-flow": "digits-flow (rectified flow, w=1, labels seed mod 10)",
    }[model]
    learned_what = (
        "dode.learned_solver.fit_end_to_end (grid; λ or history coefficients; model-time shift)"
        if e2e
        else "joint grid + λ gradient fit (dode.learned_grid.sgd_grid) from the best_free cell, "
        "λ = 0"
    )
    header = [
        f"# {what}: fidelity frontier (issue 18), setting {setting!r}; run {total:.0f} s wall, "
        f"{cpu:.0f} s CPU on {torch.get_num_threads()} thread",
        f"# seeds: {seeds.describe()} (disjoint); best_free chosen by MSE on the selection "
        f"seeds over {len(cand)} solvers ({', '.join(solvers)}) x {len(grids)} standard grids; "
        "MSE/FD judged on the held-out seeds, 95 % bootstrap intervals over seeds; MSE on "
        f"images clamped to {list(CLIP)} as they are shown (the unclamped MSE per NFE below)",
        f"# reference: DPM-Solver++(3M), {reference_nfe} NFE, Karras from the model's sigma_max "
        f"({float(jud.reference_start):.4g}); "
        f"halving check (MSE to {reference_nfe // 2} NFE): held-out "
        f"{jud.reference.halving_mse:.3g}, selection {sel.reference.halving_mse:.3g}; "
        f"references took {ref_s:.1f} s",
        f"# learned: {learned_what}, {steps} Adam steps on the fit seeds"
        + (f" (mini-batches of {batch})" if batch else "")
        + ", accepted only if it lowers the selection MSE"
        + (" by a paired bootstrap's 95 % bound" if e2e else "")
        + f" (else the baseline cell is kept); {choice_note}",
        "# objective: dode.objectives.default_objective (L2 + "
        + ", ".join(f"{v:g} x {k}" for k, v in DEFAULT_WEIGHTS.items() if v)
        + "; fd: the Fréchet distance of the digits classifier's features between a mini-batch's "
        "samples and its references); an iterate is kept and accepted only if its selection-seed "
        "quality (the Fréchet "
        "distance of the digits classifier's features to the selection reference's) stays "
        "within the warm-start cell's 95 % bootstrap bound",
        f"# peer: dode.peer.fit_peer (LD3-style, written from the paper: log-SNR grid, "
        f"decoupled model times bounded by half the smallest step, perceptual loss on the "
        f"digits classifier's unit-normalised features, RMSprop lr {PEER_LR:g} with "
        f"validation-driven decay, no coefficients), warm-started at best_free, {steps} steps "
        f"on the learned fit's mini-batches, "
        "validated on the selection seeds",
        f"# teacher_fd: the reference's FD-digits vs the 360 held-out real digits, interval "
        f"[{teacher.fd_lo:.4g}, {teacher.fd_hi:.4g}]; fit_x in units of the reference's "
        f"generation time on the fit seeds ({teacher_s:.2f} s CPU); all fit times are CPU "
        "seconds of the one thread",
        *notes,
    ]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "fidelity.csv", rows, COLUMNS, header)
    if ablation:
        write_csv(
            out / "fidelity_ablation.csv", ablation, ABLATION_COLUMNS,
            [header[0], f"# ablation: {learned_what}; ratio = held-out MSE / best_free's"],
        )  # fmt: skip
    plot(rows, out / "fidelity.png", title=what)
    print(f"total {total:.0f} s; wrote {out / 'fidelity.csv'}", flush=True)
    return rows


def write_csv(path: Path, rows: list[dict], columns: list[str], comments: list[str]) -> None:
    """Comment lines (``#``), then the header and rows (floats to 6 significant digits)."""
    with open(path, "w", newline="") as f:
        for c in comments:
            f.write(c.replace("\n", " ") + "\n")
        w = csv.DictWriter(f, columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def read_csv(path: Path) -> list[dict]:
    """The rows of a file written by :func:`write_csv` (comment lines skipped)."""
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def plot(rows: list[dict], path: Path, title: str = "digits") -> None:
    """Left: MSE vs NFE (best free, learned, peer) with intervals. Right: the MSE–FD pairs,
    FD-digits against MSE per NFE (each point labelled with its NFE; the teacher's FD interval
    shaded): lower-left is closer *and* sharper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nfe = [r["nfe"] for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    kinds = (
        ("best_free", "best learning-free (solver, grid)", "o", "C0"),
        ("learned", "learned (dode)", "^", "C1"),
        ("peer", "peer (LD3-style)", "s", "C2"),
    )
    for key, label, mk, color in kinds:
        if f"{key}_mse" not in rows[0]:
            continue
        m = [r[f"{key}_mse"] for r in rows]
        err = [
            [v - r[f"{key}_mse_lo"] for v, r in zip(m, rows)],
            [r[f"{key}_mse_hi"] - v for v, r in zip(m, rows)],
        ]
        ax.errorbar(nfe, m, yerr=err, fmt=mk + "-", color=color, capsize=3, label=label)
        fd = [r[f"{key}_fd"] for r in rows]
        fd_err = None
        if f"{key}_fd_lo" in rows[0]:
            fd_err = [
                [max(v - r[f"{key}_fd_lo"], 0) for v, r in zip(fd, rows)],
                [max(r[f"{key}_fd_hi"] - v, 0) for v, r in zip(fd, rows)],
            ]
        bx.errorbar(m, fd, yerr=fd_err, fmt=mk, color=color, capsize=2, label=label)
        for x, y, n in zip(m, fd, nfe):
            bx.annotate(str(n), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    if "teacher_fd_lo" in rows[0] and math.isfinite(rows[0]["teacher_fd_lo"]):
        bx.axhspan(rows[0]["teacher_fd_lo"], rows[0]["teacher_fd_hi"], color="0.85",
                   label="teacher FD interval")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel(
        f"MSE to the converged reference (held-out, in [{CLIP[0]:g}, {CLIP[1]:g}])", fontsize=8
    )
    ax.set_title(title + " (95 % bootstrap intervals)", fontsize=9)
    ax.legend(fontsize=7)
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("MSE to the converged reference (held-out)", fontsize=8)
    bx.set_ylabel("FD-digits (held-out)", fontsize=8)
    bx.set_title("MSE–FD pairs per NFE (lower-left: closer and sharper)", fontsize=9)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Refuse meaningless arguments before any work, each with one ``p.error`` line; solver
    labels are taken in any case (``--solvers ddim`` is DDIM) and written back as labels."""
    from dode.files.writes import ensure_writable

    by_case = {k.lower(): k for k in SOLVERS}
    if a.solvers is not None:
        unknown = [s for s in a.solvers if s.lower() not in by_case]
        if unknown:
            p.error(f"--solvers: unknown solver {unknown[0]!r}; pick from {', '.join(SOLVERS)}.")
        a.solvers = [by_case[s.lower()] for s in a.solvers]
        if len(set(a.solvers)) != len(a.solvers):
            p.error("--solvers names a solver twice; give each once.")
    for flag, counts in (("--nfes", a.nfes), ("--ablation-nfes", a.ablation_nfes or [])):
        bad = [n for n in counts if n < 1]
        if bad:
            p.error(f"{flag}: NFE {bad[0]} is not a positive number of model calls.")
        if len(set(counts)) != len(counts):
            p.error(f"{flag} names an NFE twice; give each once.")
    for flag, n in (("--fit", a.fit), ("--select", a.select), ("--held", a.held)):
        if n is not None and not 1 <= n <= 1_000_000:
            p.error(f"{flag} {n}: a seed count must lie in 1 … 1,000,000.")
    if a.steps is not None and a.steps < 1:
        p.error(f"--steps {a.steps}: the learned fit needs at least one Adam step.")
    if a.out is not None:
        if a.out.exists() and not a.out.is_dir():
            p.error(f"--out {str(a.out)!r} is a file; pass a folder for fidelity.csv and .png.")
        try:
            ensure_writable(a.out, "--out", "pass a folder you can write to")
        except ValueError as e:
            p.error(str(e))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=list(PRESETS), default="digits")
    p.add_argument("--slow", action="store_true",
                   help="5,000 held-out, 256 selection, 512 fit seeds, 150 Adam steps on "
                        "mini-batches of 64")  # fmt: skip
    p.add_argument("--fit", type=int, default=None, help="fit seeds (0..FIT-1)")
    p.add_argument("--select", type=int, default=None, help="selection seeds (from 3,000,000)")
    p.add_argument("--held", type=int, default=None, help="held-out seeds (from 1,000,000)")
    p.add_argument("--steps", type=int, default=None, help="Adam steps of the learned fit")
    p.add_argument("--nfes", type=int, nargs="+", default=list(range(3, 11)))
    p.add_argument("--solvers", nargs="+", default=None, help=f"from {list(SOLVERS)}")
    p.add_argument("--ablation-nfes", type=int, nargs="*", default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--learned", choices=["auto", "grid-lambda"], default="auto",
                   help="auto: dode.learned_solver.fit_end_to_end where available")  # fmt: skip
    a = p.parse_args(argv)
    check_args(p, a)
    global LEARNED
    LEARNED = a.learned
    setting = "slow" if a.slow else "default"
    cfg = SETTINGS[setting]
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    return run(
        a.model,
        fit=cfg["fit"] if a.fit is None else a.fit,
        select=cfg["select"] if a.select is None else a.select,
        held=cfg["held"] if a.held is None else a.held,
        steps=cfg["steps"] if a.steps is None else a.steps,
        batch=cfg["batch"],
        eval_every=cfg["eval_every"],
        nfes=a.nfes,
        solvers=a.solvers or (SLOW_SOLVERS if a.slow else FAST_SOLVERS),
        out=a.out or ROOT / PRESETS[a.model]["out"],
        ablation_nfes=cfg["ablation_nfes"] if a.ablation_nfes is None else a.ablation_nfes,
        setting=setting,
    )


if __name__ == "__main__":
    main()
