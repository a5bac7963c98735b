"""Bad input between model families: a flow solver file with a DDPM (σ-space) model and the
reverse; a flow grid starting at σ = ∞ handed to ``dode.sample`` / ``dode.fit_lambdas``."""

from __future__ import annotations

import math

import pytest
import torch

import dode
from dode.denoisers import GaussianMixtureFlow, gaussian
from dode.files.solver_file import FittedSolver, model_family
from dode.grids.schedules import flow_sigmas

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models():
    mean, cov = torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    return GaussianMixtureFlow.gaussian(mean, cov), gaussian(mean, cov)


def _fitted(cls_name: str, sigmas) -> FittedSolver:
    n = len(sigmas) - 1
    return FittedSolver(
        solver={"name": "euler"},
        sigmas=torch.as_tensor(sigmas, dtype=torch.float64),
        lambdas=torch.zeros(n),
        model={"id": "m", "class": cls_name},
    )


def test_family_of_models(models):
    flow, vp = models
    assert model_family(flow) == "flow" and model_family(vp) == "vp"
    assert model_family(flow.bind()) == "flow"
    assert model_family("DiffusersFlowDenoiser") == "flow"
    assert model_family("DiffusersDenoiser") == "vp"


def test_family_recorded_and_round_trips(tmp_path):
    fs = _fitted("SD3Denoiser", flow_sigmas(4, 3.0, spacing="dpm_solver"))
    assert fs.model["family"] == "flow"
    assert _fitted("FluxDenoiser", [3.0, 1.0, 0.0]).model["family"] == "flow"
    assert _fitted("GuidedFlowDenoiser", [3.0, 1.0, 0.0]).model["family"] == "flow"
    assert _fitted("LatentDiffusionDenoiser", [3.0, 1.0, 0.0]).model["family"] == "vp"
    fs = _fitted("DiffusersFlowDenoiser", flow_sigmas(4, 3.0, spacing="dpm_solver"))
    assert fs.model["family"] == "flow"
    fs.save(tmp_path / "f.safetensors")
    assert FittedSolver.load(tmp_path / "f.safetensors").model["family"] == "flow"
    with pytest.raises(ValueError, match="unknown model family"):
        FittedSolver(
            solver={"name": "euler"}, sigmas=[1.0, 0.0], lambdas=[0.0], model={"family": "ve"}
        )


def test_flow_file_with_vp_model_and_reverse(models):
    flow, vp = models
    noise = torch.randn(3, 4, dtype=torch.float64)
    flow_file = _fitted("GaussianMixtureFlow", flow_sigmas(4, 3.0, spacing="dpm_solver"))
    vp_file = _fitted("GaussianMixtureDenoiser", dode.grids.schedules.karras(4, 0.002, 80.0))
    assert flow_file.sample(flow, noise).shape == noise.shape
    assert vp_file.sample(vp, noise).shape == noise.shape
    with pytest.raises(ValueError, match="fitted on a rectified-flow model .* is a diffusion"):
        flow_file.sample(vp, noise)
    with pytest.raises(ValueError, match="fitted on a diffusion .* is a rectified-flow model"):
        vp_file.sample(flow, noise)


def test_grid_from_infinity_says_start(models):
    flow, _ = models
    s = flow_sigmas(4, 3.0)
    assert math.isinf(s[0])
    noise = torch.randn(3, 4, dtype=torch.float64)
    for call in (
        lambda: dode.sample(flow, "euler", noise, s),
        lambda: dode.fit_lambdas(flow, "euler", noise, s),
    ):
        with pytest.raises(ValueError, match=r"starts at ∞.*FlowDenoiser\.start.*flow_start"):
            call()
    noise, grid = flow.start(noise, s)  # the fix works
    assert torch.isfinite(dode.sample(flow, "euler", noise, grid)).all()


@pytest.mark.parametrize("tool", ["sample", "evaluate"])
def test_cli_refuses_the_other_family_first(tmp_path, capsys, tool):
    """A flow solver file with the bundled DDPM: one error naming the family, before the
    weights check (whose override could not make the λ apply) and before anything is written."""
    from dode.denoisers.loading import load_denoiser
    from dode.grids.schedules import flow_sigmas

    flow = load_denoiser("digits-flow")
    fs = FittedSolver(
        solver={"name": "euler"},
        sigmas=flow_sigmas(4, 1.0, spacing="dpm_solver"),
        lambdas=torch.zeros(4),
        model={"id": "digits-flow", "class": type(flow).__name__, "weights_hash": "0" * 64},
    )
    path = fs.save(tmp_path / "flow.safetensors")
    out = tmp_path / "out"
    if tool == "sample":
        from dode.cli.sample import main

        argv = ["--solver_file", str(path), "--model", "digits", "--seeds", "0-1"]
        with pytest.raises(SystemExit) as e:
            main([*argv, "--out", str(out), "--ignore_model_hash"])
        code = e.value.code
    else:
        from dode.cli.evaluate import main

        argv = ["--solver_file", str(path), "--model", "digits", "--seeds", "0-1", "--out"]
        code = main([*argv, str(out), "--fid", "false", "--wandb", "false", "--log", "null"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "rectified-flow model" in err[0] and "diffusion" in err[0], err
    assert not out.exists()
