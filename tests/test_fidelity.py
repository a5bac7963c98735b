"""The fidelity-first judge (dode.evaluation.fidelity) on exact Gaussian models, the fidelity
frontier's CSV, and the grids the shipped configs start from."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

import dode
from dode.denoisers.gmm import gaussian
from dode.evaluation.fidelity import (
    FidelityJudge,
    SeedSplit,
    best_free_cell,
    converged_reference,
)
from dode.metrics import FrechetReference, bootstrap_mean
from dode.noise import noise_from_seeds
from dode.standard_grids import GridSpec

ROOT = Path(__file__).resolve().parents[1]
D = 12


def _gauss(seed: int = 0, sigma_max: float = 80.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    cov = a @ a.T + 0.05 * torch.eye(D, dtype=torch.float64)
    mean = torch.randn(D, generator=g, dtype=torch.float64)
    return gaussian(mean, cov, sigma_min=0.002, sigma_max=sigma_max, sample_shape=(D,))


def _exact(den, seeds, sigma_max=80.0):
    noise = noise_from_seeds(seeds, (D,), dtype=torch.float64)
    return den.exact_solution(noise * sigma_max, sigma_max, 0.0)


def test_reference_is_converged_on_exact_gaussian():
    den = _gauss()
    seeds = list(range(64))
    judge = FidelityJudge(den, seeds, dtype=torch.float64, bootstrap=200)
    exact = _exact(den, seeds)
    err = float(((judge.reference.samples - exact) ** 2).mean())
    scale = float((exact**2).mean())
    assert err < 1e-6 * scale
    # the halving check bounds the reference's own error and is itself small
    assert err <= judge.reference.halving_mse < 1e-5 * scale
    # a few-step cell is measured against the same analytic truth
    solver = dode.get_solver("ddim")
    sig = dode.grids.schedules.karras(5, 0.002, 80.0)
    x = judge.sample(solver, sig)
    s = judge.score(x)
    assert s.mse == pytest.approx(float(((x.double() - exact) ** 2).mean()), rel=5e-3)
    assert s.mse_lo <= s.mse <= s.mse_hi
    assert s.psnr_lo <= s.psnr <= s.psnr_hi


def test_reference_halving_detects_too_few_steps():
    den = _gauss(1)
    noise = noise_from_seeds(range(32), (D,), dtype=torch.float64)
    coarse = converged_reference(den, noise, nfe=6)
    fine = converged_reference(den, noise, nfe=100)
    assert coarse.halving_mse > 1e3 * fine.halving_mse


def test_bootstrap_interval_matches_normal_theory():
    v = torch.randn(4000, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 2
    m, lo, hi = bootstrap_mean(v, num=2000)
    assert lo < m < hi and lo < 2 < hi
    half = 1.96 * float(v.std()) / math.sqrt(len(v))
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)


def test_fd_interval_contains_point_and_truth_is_near_zero():
    den = _gauss(2)
    seeds = list(range(400))
    truth = _exact(den, list(range(10_000, 14_000)))
    judge = FidelityJudge(
        den, seeds, dtype=torch.float64, features=lambda x: x.reshape(len(x), -1).double(),
        fd_reference=FrechetReference.from_features(truth.numpy()), bootstrap=500,
    )  # fmt: skip
    ref = judge.reference_score()
    assert ref.mse == 0.0
    assert ref.fd_lo <= ref.fd <= ref.fd_hi
    bad = judge.score_cell(dode.get_solver("ddim"), dode.grids.schedules.karras(3, 0.002, 80.0))
    assert bad.fd_lo <= bad.fd <= bad.fd_hi
    assert bad.fd > ref.fd_hi  # a 3-step DDIM lands measurably off the distribution


def test_seed_sets_must_be_disjoint():
    with pytest.raises(ValueError, match="overlap"):
        SeedSplit((0, 1, 2), (2, 3), (10,))
    with pytest.raises(ValueError, match="held"):
        SeedSplit((0,), (1,), (0, 5))
    with pytest.raises(ValueError, match="repeat"):
        SeedSplit((0, 0), (1,), (2,))
    s = SeedSplit.ranges(8, 4, 16)
    assert not set(s.fit) & set(s.select) and not set(s.select) & set(s.held)


def test_best_free_cell_picks_the_known_best():
    """Euler vs DPM-Solver++(3M) on a grid from σ_max and on a grid that starts late: the
    search must return the cell with the lowest MSE to the analytic solution, computed here
    independently, and it is on the grid from σ_max."""
    den = _gauss(4)
    seeds = list(range(3_000_000, 3_000_048))
    judge = FidelityJudge(den, seeds, dtype=torch.float64, bootstrap=100)
    solvers = {"Euler": dode.get_solver("euler"), "3M": dode.get_solver("dpm_solver_pp", order=3)}
    grids = [
        GridSpec("karras", {"sigma_min": 0.002, "sigma_max": 2.0, "rho": 7.0}, False, "late"),
        GridSpec("karras", {"sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}, False, "full"),
    ]
    exact = _exact(den, seeds)
    noise = noise_from_seeds(seeds, (D,), dtype=torch.float64)
    truth = {}
    for sl, solver in solvers.items():
        for g in grids:
            s = g.build(solver.steps_for_nfe(8))
            x = dode.sample(den, solver, noise, s)
            truth[f"{sl} / {g.label}"] = float(((x.double() - exact) ** 2).mean())
    choice = best_free_cell(judge, 8, solvers=solvers, grids=grids)
    assert choice.label == min(truth, key=truth.get)
    assert choice.label.endswith("/ full") and choice.mse == pytest.approx(
        truth[choice.label], 1e-2
    )
    assert min(truth["Euler / late"], truth["3M / late"]) > 2 * choice.mse
    assert choice.scores.keys() == truth.keys()
    for k, v in truth.items():
        assert choice.scores[k] == pytest.approx(v, rel=1e-2)


def test_judge_refuses_short_reference_and_half_fd_setup():
    den = _gauss()
    with pytest.raises(ValueError, match="100 NFE"):
        FidelityJudge(den, [0, 1], reference_nfe=40)
    with pytest.raises(ValueError, match="features"):
        FidelityJudge(den, [0, 1], features=lambda x: x)


@pytest.fixture(scope="module")
def fidelity_rows(tmp_path_factory):
    mod = _load_script()
    mod.LEARNED = "grid-lambda"  # the cheap grid + λ fit (the end-to-end one is tested in the core)
    out = tmp_path_factory.mktemp("fidelity")
    mod.run(
        "digits", fit=8, select=8, held=48, steps=2, nfes=[4], solvers=["DDIM", "UniPC"],
        out=out, ablation_nfes=[4], reference_nfe=24,
    )  # fmt: skip
    return mod, out


def test_fidelity_csv_columns(fidelity_rows):
    mod, out = fidelity_rows
    lines = (out / "fidelity.csv").read_text().splitlines()
    comments = [ln for ln in lines if ln.startswith("#")]
    assert comments and lines[: len(comments)] == comments
    assert any("halving check" in c for c in comments)
    rows = list(csv.DictReader(lines[len(comments) :]))
    assert list(rows[0]) == [
        "nfe", "best_free", "best_free_mse", "best_free_mse_lo", "best_free_mse_hi", "learned",
        "learned_mse", "learned_mse_lo", "learned_mse_hi", "best_free_fd", "learned_fd",
        "teacher_fd", "fit_x", "peer", "peer_mse", "peer_mse_lo", "peer_mse_hi", "peer_fd",
        "peer_fd_lo", "peer_fd_hi", "learned_fd_lo", "learned_fd_hi", "teacher_fd_lo",
        "teacher_fd_hi",
    ]  # fmt: skip
    r = rows[0]
    assert r["nfe"] == "4"
    for k in ("best_free", "learned", "peer"):
        lo, m, hi = (float(r[f"{k}_mse{s}"]) for s in ("_lo", "", "_hi"))
        assert 0 < lo <= m <= hi
    for k in ("peer", "learned", "teacher"):
        lo, m, hi = (float(r[f"{k}_fd{s}"]) for s in ("_lo", "", "_hi"))
        assert lo <= hi and m > 0
    assert r["peer"].endswith("LD3-style peer")
    assert any(c.startswith("# peer: dode.peer.fit_peer") for c in comments)
    if r["learned"].startswith("baseline kept"):
        assert r["learned_mse"] == r["best_free_mse"]
    assert float(r["fit_x"]) > 1  # the fit includes the reference on the fit seeds
    assert (out / "fidelity.png").stat().st_size > 0
    abl = mod.read_csv(out / "fidelity_ablation.csv")
    assert [a["variant"] for a in abl] == ["grid only", "λ only", "grid + λ"]


# ---- the grids of the shipped configs ------------------------------------------------------------
def _config(name: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "configs" / name).read_text())["model"]


def _sd_table():
    from _tiny import SD_SCHEDULE
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD_SCHEDULE).alphas_cumprod.to(torch.float64)


class _TableModel(torch.nn.Module):
    """A stand-in with a model's discrete ᾱ table and σ range (no network)."""

    def __init__(self, table):
        super().__init__()
        self.alphas_cumprod = table
        s = ((1 - table) / table).sqrt()
        self.sigma_min, self.sigma_max = float(s[0]), float(s[-1])
        self.round_sigma = None


@pytest.mark.parametrize("name", ["sd15.yaml", "sdxl.yaml"])
def test_sd_configs_start_at_sigma_max(name):
    cfg = _config(name)
    den = _TableModel(_sd_table())
    for nfe in (3, 5, 8):
        steps = dode.get_solver(cfg["solver"], **(cfg.get("solver_options") or {})).steps_for_nfe(
            nfe
        )
        g = dode.grids.schedules.grid_for_model(
            den, cfg["schedule"], steps, cfg["schedule_options"]
        )
        assert float(g[0]) == pytest.approx(den.sigma_max, rel=1e-9)
        # leading spacing stays available, and starts late (the reason for the default)
        lead = dode.grids.schedules.grid_for_model(
            den, "time_uniform", steps, {"spacing": "leading"}
        )
        assert float(lead[0]) < 0.6 * den.sigma_max


@pytest.mark.parametrize("name", ["digits-guided.yaml", "tiny.yaml"])
def test_digits_configs_start_at_sigma_max(name):
    from dode.denoisers.loading import load_denoiser

    cfg = _config(name)
    den = load_denoiser(cfg["model"])
    steps = dode.get_solver(cfg["solver"]).steps_for_nfe(cfg["nfe"])
    g = dode.grids.schedules.grid_for_model(
        den, cfg["schedule"], steps, cfg.get("schedule_options")
    )
    assert float(g[0]) == pytest.approx(float(den.sigma_max), rel=1e-6)


@pytest.mark.parametrize("name, shift", [("sd3.yaml", 3.0), ("flux.yaml", math.exp(1.15))])
def test_flow_configs_start_at_t_one(name, shift):
    cfg = _config(name)
    assert cfg["schedule"] == "flow"
    g = dode.grids.schedules.flow_schedule(cfg["nfe"], shift=shift, **cfg["schedule_options"])
    assert float(g[0] / (1 + g[0])) >= 0.999  # t = 1 − 1/T or later
    cfg = _config("digits-flow.yaml")
    g = dode.grids.schedules.flow_schedule(cfg["nfe"], shift=1.0, **cfg["schedule_options"])
    assert float(g[0] / (1 + g[0])) >= 0.999


def test_late_start_is_an_error_no_lambda_repairs(tmp_path):
    """A tiny SD pipeline (prompt embeddings passed directly): DPM-Solver++(2M) at NFE 5 on
    the leading grid (first σ ≈ 5 of 14.6) vs the trailing grid from t = 999. λ fitted by
    gradients on the final sample's distance to the converged solution barely move the
    leading grid's error; on the trailing grid the same fit helps and lands far closer."""
    from _tiny import make_tiny_sd

    from dode.denoisers import LatentDiffusionDenoiser
    from dode.denoisers.guidance import Conditioning
    from dode.grids.schedules import grid_for_model
    from dode.learned_grid import sgd_grid
    from dode.standard_grids import reference_solution

    make_tiny_sd(tmp_path / "sd", seed=1)
    den0 = LatentDiffusionDenoiser.from_pretrained(tmp_path / "sd")
    n = 8
    emb = torch.randn(n, 6, 32, generator=torch.Generator().manual_seed(0))
    den = den0.bind(Conditioning({"encoder_hidden_states": emb}), guidance_scale=1.0)
    noise = noise_from_seeds(range(n), den0.sample_shape)
    solver = dode.get_solver("dpm_solver_pp", order=2)
    with torch.no_grad():
        ref = reference_solution(den, noise, nfe=60).double()
    out = {}
    for spacing in ("leading", "trailing"):
        g = grid_for_model(den0, "time_uniform", 5, {"spacing": spacing})
        with torch.no_grad():
            (x0,) = dode.sample_many(den, solver, noise, g, [None])
        base = float(((x0.double() - ref) ** 2).mean())
        _, lam, rec = sgd_grid(
            den, solver, 5, noise, reference=ref, init=g, init_lambdas=None, steps=8, lr=0.0,
            lr_lambdas=0.05,
        )  # fmt: skip
        out[spacing] = (base, rec["loss_best"], float(g[0]))
    (lb, ll, ls0), (tb, tl, ts0) = out["leading"], out["trailing"]
    assert ls0 < 0.5 * ts0  # leading starts late
    assert ll > 0.9 * lb  # λ cannot repair the late start
    assert tl < 0.5 * ll and tb < 0.5 * lb  # the trailing grid is far closer, with or without λ
    assert tl < 0.7 * tb  # and there the same fit does help


def _load_script():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "digits_fidelity_mod", ROOT / "experiments" / "digits_fidelity.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_fit_learned_runs_the_end_to_end_fit_and_takes_its_verdict(monkeypatch):
    """The script fits with ``dode.learned_solver.fit_end_to_end`` (its mini-batches, the data
    range clamp) and keeps the fit's own paired-bootstrap verdict; the grid + λ stand-in is
    checked on the selection seeds by the script."""
    mod = _load_script()
    den = _gauss(5)
    sel = FidelityJudge(den, range(3_000_000, 3_000_032), dtype=torch.float64, bootstrap=50)
    cell = best_free_cell(
        sel, 4, solvers={"DDIM": dode.get_solver("ddim")},
        grids=[GridSpec("karras", {"sigma_min": 0.002, "sigma_max": 80.0}, False, "k")],
    )  # fmt: skip
    fit_noise = noise_from_seeds(range(32), (D,), dtype=torch.float64)
    ref = converged_reference(den, fit_noise, nfe=100, check=False).samples
    lv = mod.fit_learned(den, cell, fit_noise, ref, sel, steps=12, batch=8, eval_every=3)
    rec = lv.detail["fitted"].metrics["end_to_end"]
    assert "end-to-end" in lv.label
    assert torch.allclose(torch.tensor(rec["init_sigmas"], dtype=torch.float64), cell.sigmas)
    assert rec["batch_size"] == 8 and rec["clip"] == list(mod.CLIP) and rec["steps"] == 12
    assert mod.accept(lv, sel, cell.mse) == (rec["accepted"], rec["select_mse_fitted"])
    assert rec["accepted"] and rec["select_mse_fitted"] < cell.mse
    still = mod.fit_learned(den, cell, fit_noise, ref, sel, steps=0)  # the start: never accepted
    assert mod.accept(still, sel, cell.mse)[0] is False
    monkeypatch.setattr(mod, "_end_to_end", lambda: None)
    lv = mod.fit_learned(den, cell, fit_noise, ref, sel, steps=15)
    ok, v = mod.accept(lv, sel, cell.mse)
    assert "learned grid + λ" in lv.label and ok and v < cell.mse


def test_judge_clip_clamps_sample_and_reference_and_keeps_the_raw_mse():
    den = _gauss()
    seeds = list(range(32))
    judge = FidelityJudge(den, seeds, dtype=torch.float64, bootstrap=200, clip=(-0.5, 0.5))
    x = judge.sample(dode.get_solver("ddim"), dode.grids.schedules.karras(4, 0.002, 80.0))
    ref = judge.reference.samples
    s = judge.score(x, fd=False)
    assert s.mse == pytest.approx(float(((x.clamp(-0.5, 0.5) - ref.clamp(-0.5, 0.5)) ** 2).mean()))
    assert s.mse_raw == pytest.approx(float(((x - ref) ** 2).mean()))
    assert s.mse < s.mse_raw  # the reference leaves [-0.5, 0.5] on these seeds
    assert torch.equal(judge.mse_per_seed(x, clip=False), ((x - ref) ** 2).mean(1))
    for bad in ((1.0, -1.0), (0.0,)):
        with pytest.raises(ValueError, match="clip must be None or"):
            FidelityJudge(den, seeds, clip=bad)
