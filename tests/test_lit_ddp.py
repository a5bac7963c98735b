"""Two processes with DDP on CPU (gloo): the lstsq fit gives identical λ on both ranks, equal to
a single-process ``dode.fit_lambdas`` on the same seeds, and no seed is served twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from _tiny import make_tiny_unet

import dode
from dode.denoisers.loading import load_denoiser
from dode.noise import noise_from_seeds

SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import lightning as L
    import torch
    from dode.lit import DODEModule, NoiseDataModule

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    model_dir, out_dir = sys.argv[1], sys.argv[2]


    class Record(L.Callback):
        def __init__(self):
            self.seeds = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seeds.setdefault(trainer.current_epoch, []).extend(batch["seeds"].tolist())


    module = DODEModule(model=model_dir, solver="ddim", nfe=3, teacher_factor=4, dtype="float64")
    data = NoiseDataModule(fit_seeds="0-10", val_seeds="100-104", batch_size=3, cache_dir=None)
    rec = Record()
    trainer = L.Trainer(
        strategy="ddp", devices=2, accelerator="cpu", use_distributed_sampler=False,
        max_epochs=module.num_calls, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[rec],
    )
    trainer.fit(module, data)
    out = {
        "world": trainer.world_size,
        "lambdas": module.lambdas.detach().tolist(),
        "seeds": rec.seeds,
        "val": module.val_metrics,
    }
    with open(f"{out_dir}/rank{trainer.global_rank}.json", "w") as f:
        json.dump(out, f)
    """
)


def test_ddp_two_ranks_same_lambdas_as_one_process(tmp_path):
    model_dir = tmp_path / "unet"
    make_tiny_unet(model_dir)
    script = tmp_path / "fit_ddp.py"
    script.write_text(SCRIPT)
    root = str(Path(__file__).resolve().parents[1])  # the checkout's dode, installed or not
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, str(script), str(model_dir), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)

    # Identical λ on both ranks (bit for bit) and identical validation numbers.
    assert ranks[0]["lambdas"] == ranks[1]["lambdas"]
    assert ranks[0]["val"] == ranks[1]["val"] and "val/mse_final" in ranks[0]["val"]

    # Every epoch: each seed served exactly once across the two ranks, no padding.
    for epoch in range(3):
        served = [s for r in ranks for s in r["seeds"][str(epoch)]]
        assert sorted(served) == list(range(11))
    assert set(ranks[0]["seeds"]["0"]).isdisjoint(ranks[1]["seeds"]["0"])

    # The same fit in one process, without Lightning.
    den = load_denoiser(str(model_dir), dtype="float64")
    solver = dode.get_solver("ddim")
    sigmas = dode.grids.schedules.karras(solver.steps_for_nfe(3), max(0.002, den.sigma_min), 80.0)
    noise = noise_from_seeds(range(11), den.sample_shape, torch.float64)
    ref = dode.fit_lambdas(den, solver, noise, sigmas, teacher_factor=4)
    got = torch.tensor(ranks[0]["lambdas"], dtype=torch.float64)
    assert torch.allclose(got, ref, rtol=0, atol=1e-10), (got, ref)
    assert (got[1:] != 0).all()
