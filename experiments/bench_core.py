"""Core benchmark, measured side by side in one run.

(a) Cost of the closed-form λ fit relative to generating the teacher: the teacher integrates
    the same ODE with C = 10× finer steps (``dode.teacher_states``); the fit
    (``LambdaFit.run``) then walks the student once per call. Reported as fractions of the
    teacher's wall time:

    * ``fit incl. model``: the whole fit, including the student's own K model calls;
    * ``fit bookkeeping``: the fit without any model call (the denoiser is wrapped and times
      itself), i.e. the solver replay, the statistics and the bookkeeping.

(b) Sampling time of each D-solver over its base solver at equal NFE (``dode.sample`` with and
    without λ, both with the non-finite check on), median over interleaved repeats.

Models: a tiny randomly initialised diffusers ``UNet2DModel`` (3×32×32, batch 64) behind
``DiffusersDenoiser``, and the exact Gaussian-mixture denoiser fitted to scikit-learn's 8×8
digits (20 components, batch 500 for the fit, 2000 for sampling).

Usage::

    python experiments/bench_core.py                    # writes experiments/results/core/bench.md
    python experiments/bench_core.py --quick            # fewer solvers / repeats, to stdout
    python experiments/bench_core.py --device cuda --out experiments/results/core/bench_cuda.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor

from dode import LambdaFit, sample, teacher_states
from dode.correction import _correct
from dode.denoisers import Denoiser, DiffusersDenoiser, GaussianMixtureDenoiser
from dode.grids.schedules import karras, vp_alphas_cumprod
from dode.solvers import get_solver

SOLVERS = ["ddim", "euler", "heun", "ipndm", "dpm_solver", "dpm_solver_pp", "deis", "unipc"]
RESULTS = Path(__file__).parent / "results" / "core"


class TimedDenoiser(Denoiser):
    """Delegates to ``inner`` and accumulates the wall time spent in it."""

    def __init__(self, inner: Denoiser, device: torch.device) -> None:
        super().__init__(inner.sigma_min, inner.sigma_max, inner.sample_shape)
        self.inner = inner
        self.prediction = inner.prediction
        self.sync = device.type == "cuda"
        self.seconds = 0.0
        self.calls = 0

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        t0 = self._now()
        out = self.inner.denoise(x, sigma)
        self.seconds += self._now() - t0
        self.calls += 1
        return out

    def reset(self) -> tuple[float, int]:
        spent, calls = self.seconds, self.calls
        self.seconds, self.calls = 0.0, 0
        return spent, calls


def tiny_unet(device: torch.device) -> DiffusersDenoiser:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32, 32),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
    return DiffusersDenoiser(unet, vp_alphas_cumprod()).to(device)


def digits_gmm(device: torch.device) -> GaussianMixtureDenoiser:
    from sklearn.datasets import load_digits

    data = torch.from_numpy(load_digits().data) / 8.0 - 1.0
    return GaussianMixtureDenoiser.fit(data, n_components=20, seed=0).to(device)


def steps_at_most(solver, nfe: int) -> int:
    """Steps for the largest reachable NFE <= ``nfe``."""
    for target in range(nfe, 0, -1):
        try:
            return solver.steps_for_nfe(target)
        except ValueError:
            continue
    raise ValueError(f"{solver.describe()} reaches no NFE <= {nfe}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def fit_overhead(den: TimedDenoiser, solver, noise: Tensor, s: Tensor, device) -> dict:
    den.reset()
    _sync(device)
    t0 = time.perf_counter()
    teacher = teacher_states(den, solver, noise, s, teacher_factor=10)
    _sync(device)
    t_teacher = time.perf_counter() - t0
    teacher_model, teacher_calls = den.reset()
    fit = LambdaFit(den, solver, s, [noise], [teacher])
    t0 = time.perf_counter()
    fit.run()
    _sync(device)
    t_fit = time.perf_counter() - t0
    fit_model, fit_calls = den.reset()
    return {
        "teacher_s": t_teacher,
        "teacher_model_s": teacher_model,
        "teacher_calls": teacher_calls,
        "fit_s": t_fit,
        "fit_model_s": fit_model,
        "fit_calls": fit_calls,
        "incl": t_fit / t_teacher,
        "bookkeeping": (t_fit - fit_model) / t_teacher,
    }


@torch.no_grad()
def sampling_ratio(den: Denoiser, solver, noise: Tensor, s: Tensor, repeats: int, device) -> dict:
    lam = torch.full((solver.nfe(len(s) - 1),), 0.1, dtype=torch.float64)
    lam[0] = 0.0
    wall: dict[str, list[float]] = {"base": [], "dode": []}
    cpu: dict[str, list[float]] = {"base": [], "dode": []}
    sample(den, solver, noise, s)  # warm-up (allocator, kernels)
    sample(den, solver, noise, s, lam)
    for r in range(repeats):
        order = ("base", "dode") if r % 2 == 0 else ("dode", "base")
        for which in order:
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            sample(den, solver, noise, s, lam if which == "dode" else None)
            _sync(device)
            wall[which].append(time.perf_counter() - t0)
            cpu[which].append(time.process_time() - c0)
    # The correction's own arithmetic, timed in isolation: NFE × õ = o + λ (o − o_prev) on
    # tensors of the sample's shape (what the D-solver adds to the base solver's work).
    o, prev = noise.clone(), noise.flip(0).clone()
    iso = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for k in range(1, len(lam)):
            _correct(o, prev, lam[k])
        _sync(device)
        iso.append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "repeats": repeats,
        "base_s": med["base"],
        "dode_s": med["dode"],
        # each repeat times base and D back to back: their ratio sees the same machine load
        "ratio": statistics.median(d / b for d, b in zip(wall["dode"], wall["base"])),
        "ratio_min": min(wall["dode"]) / min(wall["base"]),
        "ratio_cpu": med_cpu["dode"] / med_cpu["base"],
        "isolated": statistics.median(iso) / med["base"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--nfe", type=int, default=10, help="target NFE (the largest reachable <= it)")
    p.add_argument("--repeats", type=int, default=15, help="sampling repeats (UNet; GMM: 2x + 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--quick", action="store_true", help="3 solvers, 3 repeats, print only")
    p.add_argument("--models", default="unet,gmm", help="comma-separated subset of unet,gmm")
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--out", default=str(RESULTS / "bench.md"))
    args = p.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    solvers = ["ddim", "dpm_solver", "unipc"] if args.quick else args.solvers.split(",")
    wanted = args.models.split(",")
    repeats = 3 if args.quick else args.repeats

    g = torch.Generator().manual_seed(0)
    models = {}
    if "unet" in wanted:
        models["tiny UNet2DModel 3x32x32"] = (
            tiny_unet(device),
            torch.randn(64, 3, 32, 32, generator=g).to(device),
            torch.randn(64, 3, 32, 32, generator=g).to(device),
        )
    if "gmm" in wanted:
        models["digits GMM (64-d, 20 comp.)"] = (
            digits_gmm(device),
            torch.randn(500, 64, generator=g).to(device),
            torch.randn(2000, 64, generator=g).to(device),
        )
    rows_a, rows_b = [], []
    for model_name, (den, fit_noise, sample_noise) in models.items():
        timed = TimedDenoiser(den, device)
        for name in solvers:
            solver = get_solver(name)
            steps = steps_at_most(solver, args.nfe)
            s = karras(steps)
            nfe = solver.nfe(steps)
            runs = [
                fit_overhead(timed, solver, fit_noise, s, device)
                for _ in range(1 if model_name.startswith("tiny") else 5)
            ]
            a = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            a["runs"] = len(runs)
            reps = repeats if model_name.startswith("tiny") else 2 * repeats + 1
            b = sampling_ratio(den, solver, sample_noise, s, reps, device)
            rows_a.append((model_name, name, nfe, a))
            rows_b.append((model_name, name, nfe, b))
            print(
                f"{model_name:28s} {name:14s} NFE {nfe:2d}  teacher {a['teacher_s']:7.2f}s  "
                f"fit {a['fit_s']:6.2f}s (model {a['fit_model_s']:5.2f}s)  incl {a['incl']:.2%}  "
                f"bookkeeping {a['bookkeeping']:.2%}  |  base {b['base_s']:.3f}s "
                f"D {b['dode_s']:.3f}s  ratio {b['ratio']:.3f} (minima {b['ratio_min']:.3f}, CPU time "
                f"{b['ratio_cpu']:.3f}, isolated "
                f"correction {b['isolated']:.2%})",
                flush=True,
            )

    lines = [
        "# Core benchmark",
        "",
        f"Generated by `python experiments/bench_core.py` on {platform.node() or 'this machine'}: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, "
        f"device `{device}`, {args.threads} torch thread(s). Karras grid (σ 0.002…80, ρ = 7), "
        f"default solver options, the largest NFE <= {args.nfe} each solver reaches.",
        "",
        "## (a) λ fit vs teacher generation (target: fit excluding the teacher <= 5%)",
        "",
        "Teacher: the student's own solver on the grid refined C = 10× (stage points included), "
        "batch as below. `fit incl. model` = whole `LambdaFit.run()` (with the student's own K "
        "model calls) / teacher time; `fit bookkeeping` = the same without any model call "
        "(the denoiser times itself).",
        "",
        "| model | solver | NFE | teacher calls | teacher s | fit s | fit model s "
        "| fit incl. model | fit bookkeeping |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model_name, name, nfe, a in rows_a:
        lines.append(
            f"| {model_name} | {name} | {nfe} | {a['teacher_calls']} | {a['teacher_s']:.2f} "
            f"| {a['fit_s']:.3f} | {a['fit_model_s']:.3f} | {a['incl']:.1%} "
            f"| {a['bookkeeping']:.1%} |"
        )
    lines += [
        "",
        "Fit batch: 64 images (UNet), 500 noises (GMM). UNet: one run per solver; GMM: "
        "median of 5 runs (each column separately).",
        "",
        "## (b) D-solver / base sampling time at equal NFE (target <= 1.03)",
        "",
        "Each repeat times the base solver and the D-solver back to back (alternating which "
        "goes first), after one warm-up each; both with the non-finite check. `base s`, "
        "`D-solver s`: median wall times. `ratio`: median over repeats of D / base within a "
        "repeat; `ratio of minima`: fastest D run / fastest base run; `ratio (CPU)`: medians of "
        "this process's CPU time (other processes disturb it less; not meaningful on CUDA). "
        "`correction alone`: the correction's arithmetic (NFE × `o + λ (o − o_prev)` on tensors "
        "of the batch's shape) timed in isolation, as a fraction of the base time — the part of "
        "the D-solver's extra cost that is not measurement noise.",
        "",
        "| model | solver | NFE | repeats | base s | D-solver s | ratio | ratio of minima "
        "| ratio (CPU) | correction alone |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model_name, name, nfe, b in rows_b:
        lines.append(
            f"| {model_name} | {name} | {nfe} | {b['repeats']} | {b['base_s']:.3f} "
            f"| {b['dode_s']:.3f} | {b['ratio']:.3f} | {b['ratio_min']:.3f} "
            f"| {b['ratio_cpu']:.3f} | {b['isolated']:.2%} |"
        )
    lines += ["", "Sampling batch: 64 images (UNet), 2000 noises (GMM).", ""]
    text = "\n".join(lines)
    if args.quick:
        print(text)
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
