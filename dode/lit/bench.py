"""The wall time of ``python -m dode.train`` against a direct ``dode.fit_lambdas`` call on the
same work, and where the time goes (:func:`bench`; command line: ``python -m dode.bench``,
:mod:`dode.cli.bench`).

Both run in fresh processes on the same problem (``configs/tiny.yaml``: the exact GMM digits
model, DDIM at 4 NFE, teacher 10×, the same fit seeds and batch size), alternately, each
``repeat`` times; the minimum of each is reported. Both use ``threads`` CPU threads
(default 1: on a shared machine, idle-waiting thread teams make timings erratic). The training
run computes its teacher from scratch (fresh cache folder), skips validation and the end-of-fit
callbacks (the direct call does neither), and logs to W&B offline and CSV. Its own breakdown
(imports, parse and model load, W&B start-up, teacher, fit loop) comes from the timings
recorded in the fitted-solver file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIRECT = """
import time, json, sys
t0 = time.perf_counter()
import torch, dode
from dode.denoisers.loading import load_denoiser
from dode.noise import noise_from_seeds
t1 = time.perf_counter()
n, bs, nfe, model = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
den = load_denoiser(model)
solver = dode.get_solver("ddim")
sigmas = dode.grids.schedules.karras(  # the grid grid_for_model makes for "karras" (no lightning import)
    solver.steps_for_nfe(nfe), max(0.002, den.sigma_min), min(80.0, den.sigma_max)
)
noise = noise_from_seeds(range(n), den.sample_shape, torch.float32)
t2 = time.perf_counter()
lam = dode.fit_lambdas(den, solver, noise, sigmas, teacher_factor=10, batch_size=bs)
t3 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "load_s": t2 - t1, "fit_lambdas_s": t3 - t2,
                  "lambdas": lam.tolist()}))
"""


def _run(cmd: list[str], env: dict, cwd: str) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}"
        )
    return dt, proc


#: the config both runs share unless another is given
TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def bench(
    seeds: int = 128,
    batch_size: int = 32,
    nfe: int = 4,
    model: str = "gmm-digits",
    repeat: int = 2,
    threads: int = 1,
    config: str | os.PathLike | None = None,
) -> dict:
    """Time ``python -m dode.train`` and a direct ``dode.fit_lambdas`` call on the same work.

    Args:
        seeds: number of fit seeds (``0`` to ``seeds - 1``).
        batch_size: batch size of both runs.
        nfe: model calls of the DDIM student.
        model: the model both fit (a registered name).
        repeat: runs of each, alternately; the fastest of each is reported.
        threads: OMP/torch threads of both runs.
        config: the training run's YAML config (default ``configs/tiny.yaml``).

    Returns:
        The problem, the fastest run of each (wall time, its breakdown and λ), the ratios of
        their wall and compute times, and the largest difference of their λ.

    Raises:
        ValueError: a count below 1.
        RuntimeError: one of the runs failed (its command and the end of its stderr).
    """
    for name, value in (("seeds", seeds), ("batch_size", batch_size), ("nfe", nfe),
                        ("repeat", repeat), ("threads", threads)):  # fmt: skip
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    config = str(config or TINY_CONFIG)
    env = {**os.environ, "WANDB_SILENT": "true", "OMP_NUM_THREADS": str(threads)}
    env.pop("WANDB_API_KEY", None)
    from ..files.solver_file import FittedSolver

    train, direct = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeat):
            run = Path(tmp) / f"run{r}"
            cmd = [
                sys.executable, "-m", "dode.train", "-c", config,
                "--model.model", model, "--model.nfe", str(nfe),
                "--data.fit_seeds", f"0-{seeds - 1}", "--data.batch_size", str(batch_size),
                "--data.cache_dir", str(Path(tmp) / f"cache{r}"), "--run_dir", str(run),
                "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
                "--samples.num_samples", "0", "--lambda_plot.enabled", "false",
                "--fid.feature", "null", "--wandb_mode", "offline",
            ]  # fmt: skip
            wall, proc = _run(cmd, env, tmp)
            fs = FittedSolver.load(run / "solver.safetensors")
            t = {k[5:]: v for k, v in fs.metrics.items() if k.startswith("time/")}
            line = [x for x in proc.stdout.splitlines() if x.startswith("time: ")][-1]
            t.update(
                {f"{k}_s": float(v[:-1]) for k, v in (i.split() for i in line[6:].split(", "))}
            )
            train.append({"wall_s": wall, **t, "lambdas": fs.lambdas.tolist()})
            wall, proc = _run(
                [
                    sys.executable,
                    "-c",
                    DIRECT,
                    str(seeds),
                    str(batch_size),
                    str(nfe),
                    model,
                ],  # fmt: skip
                env,
                tmp,
            )
            direct.append({"wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])})
    best_t = min(train, key=lambda d: d["wall_s"])
    best_d = min(direct, key=lambda d: d["wall_s"])
    out = {
        "problem": f"{model}, ddim NFE {nfe}, {seeds} fit seeds, batch "
        f"{batch_size}, teacher 10x, {threads} CPU thread(s)",
        "train": best_t,
        "direct": best_d,
        "ratio_wall": best_t["wall_s"] / best_d["wall_s"],
        "ratio_compute": (best_t.get("teacher_s", 0) + best_t.get("train_loop_s", 0))
        / best_d["fit_lambdas_s"],
        "max_abs_lambda_diff": max(
            abs(a - b) for a, b in zip(best_t["lambdas"], best_d["lambdas"])
        ),
    }
    return out
