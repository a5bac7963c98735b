"""Conditional fits with Lightning: per-seed conditioning, guidance in the problem key, λ = 0
equals the base solver, two processes give the λ of one, the solver file's record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _tiny import make_tiny_unet

import dode
from dode.conditioning import SeedConditioning
from dode.denoisers.loading import load_denoiser
from dode.files.solver_file import FittedSolver
from dode.lit import DODEModule, NoiseDataModule
from dode.noise import noise_from_seeds

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cond_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cond")
    make_tiny_unet(folder, num_class_embeds=4)
    return folder


def _module(folder, **kw) -> DODEModule:
    opts = dict(model=str(folder), solver="ddim", nfe=3, teacher_factor=3, dtype="float64",
                model_options={"num_classes": 3}, guidance_scale=2.0)  # fmt: skip
    opts.update(kw)
    return DODEModule(**opts)


def test_conditioning_is_a_function_of_the_seed():
    allc = SeedConditioning.from_options(class_labels="all")
    assert allc.for_seeds([0, 1, 5, 7], num_classes=3).tolist() == [0, 1, 2, 1]
    lst = SeedConditioning.from_options(class_labels="2,0")
    assert lst.for_seeds([4, 5, 6], num_classes=3).tolist() == [2, 0, 2]
    uni = SeedConditioning.from_options(class_labels="uniform")
    a = uni.for_seeds(range(200), num_classes=10)
    assert torch.equal(a[50:60], uni.for_seeds(range(50, 60), num_classes=10))
    assert set(a.tolist()) == set(range(10))  # every class drawn
    pr = SeedConditioning(kind="prompts", prompts=("a", "b", "c"))
    assert pr.for_seeds([3, 4, 8]) == ["a", "b", "c"]


def test_problem_key_depends_on_guidance_and_conditioning(cond_folder, tmp_path):
    keys = []
    for w, labels in [(2.0, "all"), (3.0, "all"), (2.0, "uniform"), (2.0, "0,1")]:
        m = _module(cond_folder, guidance_scale=w)
        m.use_conditioning(SeedConditioning.from_options(class_labels=labels))
        keys.append(m.problem_key())
    assert len(set(keys)) == 4
    # Prompts: another prompt list or negative prompt is another problem (describe() differs).
    (tmp_path / "p1.txt").write_text("a cat\na dog\n")
    (tmp_path / "p2.txt").write_text("a cat\na bird\n")
    d = [
        NoiseDataModule(prompts=str(tmp_path / f), negative_prompt=neg).conditioning.describe()
        for f, neg in [("p1.txt", None), ("p2.txt", None), ("p1.txt", "blurry")]
    ]
    assert d[0] != d[1] and d[0] != d[2] and d[0]["kind"] == "prompts"


def test_lambda_zero_equals_base_with_conditioning(cond_folder):
    den = load_denoiser(str(cond_folder), num_classes=3, dtype="float64")
    noise = noise_from_seeds(range(6), den.sample_shape, torch.float64)
    bound = den.bind(torch.arange(6) % 3, guidance_scale=2.0)
    sigmas = dode.grids.schedules.karras(4, 0.01, 80.0)
    for solver in ("ddim", "dpm_solver_pp", "unipc"):
        base = dode.sample(bound, solver, noise, sigmas)
        zero = dode.sample(bound, solver, noise, sigmas, torch.zeros(4, dtype=torch.float64))
        assert torch.equal(base, zero)


def test_fit_records_guidance_and_schedule(cond_folder, tmp_path):
    """dode.fit with class labels and guidance: λ equal fit_lambdas on the bound denoiser; the
    file records guidance, conditioning and the schedule, and DODEScheduler reads it."""
    fitted = dode.fit(
        model=str(cond_folder), solver="ddim", nfe=3, teacher_factor=3, dtype="float64",
        model_options={"num_classes": 3}, guidance_scale=2.0, class_labels="all",
        fit_seeds="0-7", val_seeds="100-103", batch_size=3, cache_dir=str(tmp_path / "c"),
        run_dir=tmp_path / "run", wandb_mode="disabled", samples={"num_samples": 2},
        trainer={"enable_progress_bar": False},
    )  # fmt: skip
    den = load_denoiser(str(cond_folder), num_classes=3, dtype="float64")
    noise = noise_from_seeds(range(8), den.sample_shape, torch.float64)
    ref = dode.fit_lambdas(den.bind(torch.arange(8) % 3, guidance_scale=2.0), "ddim", noise,
                           fitted.sigmas, teacher_factor=3, batch_size=3)  # fmt: skip
    assert torch.allclose(fitted.lambdas, ref, rtol=0, atol=1e-10)
    fs = FittedSolver.load(tmp_path / "run" / "solver.safetensors")
    m = fs.model
    assert m["guidance_scale"] == 2.0 and m["guidance_rescale"] == 0.0
    assert m["conditioning"] == {"kind": "class_labels", "labels": "all"}
    assert m["schedule"]["family"] == "vp" and m["schedule"]["prediction_type"] == "epsilon"
    assert torch.allclose(
        torch.tensor(m["schedule"]["alphas_cumprod"], dtype=torch.float64), den.alphas_cumprod
    )
    from dode.hosts.diffusers import DODEScheduler

    sched = DODEScheduler.from_solver_file(tmp_path / "run" / "solver.safetensors")
    assert sched.config.guidance_scale == 2.0


SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import lightning as L
    import torch
    from dode.lit import DODEModule, NoiseDataModule

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    model_dir, out_dir = sys.argv[1], sys.argv[2]
    module = DODEModule(model=model_dir, solver="ddim", nfe=3, teacher_factor=3, dtype="float64",
                        model_options={"num_classes": 3}, guidance_scale=2.0)
    data = NoiseDataModule(fit_seeds="0-8", val_seeds="100-103", batch_size=2, cache_dir=None,
                           class_labels="uniform")
    trainer = L.Trainer(
        strategy="ddp", devices=2, accelerator="cpu", use_distributed_sampler=False,
        max_epochs=module.num_calls, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, data)
    with open(f"{out_dir}/rank{trainer.global_rank}.json", "w") as f:
        json.dump({"world": trainer.world_size, "lambdas": module.lambdas.detach().tolist()}, f)
    """
)


def test_ddp_two_ranks_with_class_labels(cond_folder, tmp_path):
    script = tmp_path / "fit_ddp.py"
    script.write_text(SCRIPT)
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, str(script), str(cond_folder), str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["lambdas"] == ranks[1]["lambdas"]
    den = load_denoiser(str(cond_folder), num_classes=3, dtype="float64")
    seeds = list(range(9))
    labels = SeedConditioning.from_options(class_labels="uniform").for_seeds(seeds, 3)
    noise = noise_from_seeds(seeds, den.sample_shape, torch.float64)
    solver = dode.get_solver("ddim")
    sigmas = DODEModule(model=str(cond_folder), nfe=3, model_options={"num_classes": 3}).sigmas
    ref = dode.fit_lambdas(den.bind(labels, guidance_scale=2.0), solver, noise, sigmas,
                           teacher_factor=3)  # fmt: skip
    got = torch.tensor(ranks[0]["lambdas"], dtype=torch.float64)
    assert torch.allclose(got, ref, rtol=0, atol=1e-10), (got, ref)
    assert (got[1:] != 0).all()
