"""The end-to-end learned solver (:func:`dode.learned_solver.fit_end_to_end`) against the best
standard cell, with an ablation of its ingredients, on the bundled digits models.

Per model and NFE: the best standard cell (UniPC and DPM-Solver++(2M) over
:func:`dode.standard_grids.standard_grids`) is chosen on selection seeds by the MSE to the converged
reference (DPM-Solver++(3M), ``--ref-nfe`` calls from the model's σ_max), then each variant is
fitted on the fit seeds from that cell and judged on held-out seeds::

    python experiments/end_to_end.py --model digits --nfe 4 5
    python experiments/end_to_end.py --model digits-cond --w 2 --nfe 4 5 --variants full

Labels of the conditional models are the position in each seed set mod 10. Prints one line per
variant: held-out MSE, its ratio to the best standard cell, fit seconds, accepted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dode.denoisers.loading import load_denoiser
from dode.learned_solver import fit_end_to_end
from dode.noise import noise_from_seeds
from dode.sampling import sample
from dode.solvers import get_solver
from dode.standard_grids import reference_solution, select_grid, standard_grids

VARIANTS = {
    "grid": {"coefficients": "none", "time_shift": False},
    "grid+lambda": {"coefficients": "lambda", "time_shift": False},
    "grid+history": {"coefficients": "history", "time_shift": False},
    "full": {"coefficients": "history", "time_shift": True},
    "full-l1": {"coefficients": "history", "time_shift": True, "objective": "l1"},
}
SOLVERS = [("UniPC", "unipc", {}), ("DPM-Solver++(2M)", "dpm_solver_pp", {"order": 2})]


def _mse(x, ref, keep=None):
    e = ((x.double() - ref.double()) ** 2).flatten(1).mean(1)
    return float(e.mean() if keep is None else e[keep].mean())


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="digits")
    p.add_argument("--w", type=float, default=1.0)
    p.add_argument("--nfe", type=int, nargs="+", default=[4, 5])
    p.add_argument("--fit", type=int, default=128)
    p.add_argument("--select", type=int, default=128)
    p.add_argument("--held", type=int, default=512)
    p.add_argument("--ref-nfe", type=int, default=100)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--ref-cache", default=None, help="a folder to keep the references in")
    p.add_argument("--options", default="{}", help="extra fit_end_to_end keywords (a dict)")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    den = load_denoiser(a.model)
    shape = den.sample_shape
    sets = {
        "fit": list(range(a.fit)),
        "select": list(range(10_000, 10_000 + a.select)),
        "held": list(range(20_000, 20_000 + a.held)),
    }
    noise = {k: noise_from_seeds(v, shape) for k, v in sets.items()}
    if getattr(den, "conditional", False) or a.model != "digits":
        dens = {k: den.bind(torch.arange(len(v)) % 10, guidance_scale=a.w) for k, v in sets.items()}
    else:
        dens = dict.fromkeys(sets, den)
    t0 = time.perf_counter()
    cache = (
        Path(a.ref_cache) / f"{a.model}-w{a.w:g}-{a.fit}-{a.select}-{a.held}-{a.ref_nfe}.pt"
        if a.ref_cache
        else None
    )
    if cache is not None and cache.is_file():
        ref = torch.load(cache)
    else:
        ref = {k: reference_solution(dens[k], noise[k], nfe=a.ref_nfe) for k in sets}
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(ref, cache)
    print(f"# {a.model} w={a.w}: references in {time.perf_counter() - t0:.1f} s", flush=True)
    # seeds whose converged sample leaves the data range ([-1, 1], by more than 0.5): the
    # model's ODE diverges there and one such seed can dominate a mean over hundreds
    keep = ref["held"].flatten(1).abs().amax(1) <= 1.5
    print(f"# held-out seeds with the reference in range: {int(keep.sum())} of {len(keep)}")
    opts = eval(a.options)  # noqa: S307 - a local experiment's command line
    for nfe in a.nfe:
        best = None
        for label, name, o in SOLVERS:
            solver = get_solver(name, **o)
            ch = select_grid(
                dens["select"], solver, nfe, noise["select"], grids=standard_grids(den),
                reference=ref["select"],
            )  # fmt: skip
            v = ch.scores[ch.spec.label]
            if best is None or v < best[0]:
                best = (v, label, solver, ch.sigmas, ch.spec.label)
        _, label, solver, grid, glabel = best
        with torch.no_grad():
            xb = sample(dens["held"], solver, noise["held"], grid)
        base, base_in = _mse(xb, ref["held"]), _mse(xb, ref["held"], keep)
        print(
            f"NFE {nfe}: best standard {label} on {glabel}: held-out MSE {base:.5f} "
            f"(in-range seeds {base_in:.5f})",
            flush=True,
        )
        for var in a.variants:
            t1 = time.perf_counter()
            fs = fit_end_to_end(
                dens["fit"], solver, grid, noise["fit"], ref["fit"],
                select_noise=noise["select"], select_reference=ref["select"],
                select_denoiser=dens["select"], steps=a.steps, **{**VARIANTS[var], **opts},
            )  # fmt: skip
            sec = time.perf_counter() - t1
            with torch.no_grad():
                x = fs.sample(dens["held"], noise["held"])
            v, v_in = _mse(x, ref["held"]), _mse(x, ref["held"], keep)
            r = fs.metrics["end_to_end"]
            print(
                f"  {var:14s} held {v:.5f} ratio {v / base:.3f} in-range {v_in:.5f} ratio "
                f"{v_in / base_in:.3f}  select {r['select_mse_base']:.5f}"
                f"->{r['select_mse']:.5f}  best_step {r['best_step']:3d}  {sec:5.1f} s  "
                f"accepted {r['accepted']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
