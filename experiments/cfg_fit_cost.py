"""The fit's cost beyond the teacher with classifier-free guidance on (a benchmark, not a
test): a tiny Stable Diffusion pipeline on CPU, DPM-Solver++(2M) at NFE 5, C = 10, guidance 7.5;
teacher time vs closed-form fit time on the same prompts and seeds.

    PYTHONPATH=. python experiments/cfg_fit_cost.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _tiny import make_tiny_sd  # noqa: E402

import dode  # noqa: E402
from dode.denoisers.loading import load_denoiser  # noqa: E402
from dode.lambda_fit import LambdaFit, teacher_states  # noqa: E402
from dode.noise import noise_from_seeds  # noqa: E402

torch.set_num_threads(1)
with tempfile.TemporaryDirectory() as tmp:
    make_tiny_sd(Path(tmp) / "sd", seed=1)
    den = load_denoiser(str(Path(tmp) / "sd"))
    prompts = [f"prompt number {i}" for i in range(16)]
    bound = den.bind(prompts, guidance_scale=7.5)
    solver = dode.get_solver("dpm_solver_pp")
    sigmas = dode.grids.schedules.karras(solver.steps_for_nfe(5), 0.03, 14.6)
    noise = noise_from_seeds(range(16), den.sample_shape, torch.float32)
    t0 = time.perf_counter()
    with torch.no_grad():
        teacher = teacher_states(bound, solver, noise, sigmas, 10)
    t_teacher = time.perf_counter() - t0
    t0 = time.perf_counter()
    lam = LambdaFit(bound, solver, sigmas, [noise], [teacher]).run()
    t_fit = time.perf_counter() - t0
print(f"teacher {t_teacher:.2f}s, fit {t_fit:.2f}s, ratio {t_fit / t_teacher:.3f} (1/C = 0.1)")
print("λ =", [round(v, 4) for v in lam.tolist()])
