"""``python -m dode.lit.bench``: wall time of ``python -m dode.train`` against a direct
``dode.fit_lambdas`` call on the same work, and where the time goes.

Both run in fresh processes on the same problem (``configs/tiny.yaml``: the exact GMM digits
model, DDIM at 4 NFE, teacher 10×, the same fit seeds and batch size), alternately, each
``--repeat`` times; the minimum of each is reported. Both use ``--threads`` CPU threads
(default 1: on a shared machine, idle-waiting thread teams make timings erratic). The training run computes its teacher
from scratch (fresh cache folder), skips validation and the end-of-fit callbacks (the direct
call does neither), and logs to W&B offline and CSV. Its own breakdown (imports, parse and
model load, W&B start-up, teacher, fit loop) comes from the timings recorded in the
fitted-solver file.

Options: ``--seeds N`` (fit seeds, default 128), ``--batch-size``, ``--repeat``, ``--config``.
"""

from __future__ import annotations

import argparse
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
from dode.loading import load_denoiser
from dode.noise import noise_from_seeds
t1 = time.perf_counter()
n, bs, nfe, model = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
den = load_denoiser(model)
solver = dode.get_solver("ddim")
sigmas = dode.schedules.karras(  # the grid build_grid() makes for "karras" (no lightning import)
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
        raise SystemExit(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}"
        )
    return dt, proc


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        prog="python -m dode.lit.bench", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--seeds", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--nfe", type=int, default=4)
    p.add_argument("--model", default="gmm-digits")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="OMP/torch threads of both runs")
    p.add_argument(
        "--config", default=str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
    )
    args = p.parse_args(argv)
    env = {**os.environ, "WANDB_SILENT": "true", "OMP_NUM_THREADS": str(args.threads)}
    env.pop("WANDB_API_KEY", None)
    from ..artifact import FittedSolver

    train, direct = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            run = Path(tmp) / f"run{r}"
            cmd = [
                sys.executable, "-m", "dode.train", "-c", args.config,
                "--model.model", args.model, "--model.nfe", str(args.nfe),
                "--data.fit_seeds", f"0-{args.seeds - 1}", "--data.batch_size", str(args.batch_size),
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
                    str(args.seeds),
                    str(args.batch_size),
                    str(args.nfe),
                    args.model,
                ],  # fmt: skip
                env,
                tmp,
            )
            direct.append({"wall_s": wall, **json.loads(proc.stdout.strip().splitlines()[-1])})
    best_t = min(train, key=lambda d: d["wall_s"])
    best_d = min(direct, key=lambda d: d["wall_s"])
    out = {
        "problem": f"{args.model}, ddim NFE {args.nfe}, {args.seeds} fit seeds, batch "
        f"{args.batch_size}, teacher 10x, {args.threads} CPU thread(s)",
        "train": best_t,
        "direct": best_d,
        "ratio_wall": best_t["wall_s"] / best_d["wall_s"],
        "ratio_compute": (best_t.get("teacher_s", 0) + best_t.get("train_loop_s", 0))
        / best_d["fit_lambdas_s"],
        "max_abs_lambda_diff": max(
            abs(a - b) for a, b in zip(best_t["lambdas"], best_d["lambdas"])
        ),
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
