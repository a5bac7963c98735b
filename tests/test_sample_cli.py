"""``python -m dode.sample``: PNGs and an .npz from a fitted-solver file; the same samples for
any batch size; the model recorded in the file, its weights hash checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import make_tiny_unet
from PIL import Image

import dode
from dode.cli.sample import main
from dode.denoisers.loading import load_denoiser
from dode.files.solver_file import FittedSolver
from dode.files.weights import weights_hash
from dode.noise import noise_from_seeds

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def solver_file(tmp_path_factory):
    """A fitted-solver file for a tiny UNet (λ from a closed-form fit on 8 seeds)."""
    root = tmp_path_factory.mktemp("sample")
    model = root / "unet"
    make_tiny_unet(model)
    den = load_denoiser(str(model))
    sigmas = dode.grids.schedules.karras(3, 0.01, 80.0)
    noise = noise_from_seeds(range(8), den.sample_shape)
    lam = dode.fit_lambdas(den, "ipndm", noise, sigmas, teacher_factor=3)
    fs = FittedSolver(
        solver=dode.get_solver("ipndm").config(),
        sigmas=sigmas,
        lambdas=lam,
        teacher={"factor": 3},
        model={"id": str(model), "weights_hash": weights_hash(den), "dtype": "float32"},
    )
    return fs.save(root / "solver.safetensors"), model, den


def test_sample_writes_pngs_and_npz(solver_file, tmp_path):
    path, _, den = solver_file
    main(["--solver_file", str(path), "--seeds", "3-7,11", "--out", str(tmp_path / "a")])
    z = np.load(tmp_path / "a" / "samples.npz")
    seeds = [3, 4, 5, 6, 7, 11]
    assert z["seeds"].tolist() == seeds
    fs = FittedSolver.load(path)
    expect = fs.sample(den, noise_from_seeds(seeds, den.sample_shape))
    assert np.allclose(z["samples"], expect.numpy(), rtol=1e-5, atol=1e-4)
    assert z["images"].shape == (6, 8, 8, 3) and z["images"].dtype == np.uint8
    for i, s in enumerate(seeds):
        png = np.asarray(Image.open(tmp_path / "a" / f"seed_{s:06d}.png"))
        assert np.array_equal(png, z["images"][i])
    assert (tmp_path / "a" / "grid.png").is_file()


def test_same_samples_for_any_batch_size_and_base_flag(solver_file, tmp_path):
    path, _, den = solver_file
    main(["--solver_file", str(path), "--seeds", "0-9", "--out", str(tmp_path / "b1"),
          "--batch_size", "3", "--no_png"])  # fmt: skip
    main(["--solver_file", str(path), "--seeds", "0-9", "--out", str(tmp_path / "b2"),
          "--batch_size", "10", "--no_png", "--base"])  # fmt: skip
    main(["--solver_file", str(path), "--seeds", "0-9", "--out", str(tmp_path / "b3"),
          "--batch_size", "10", "--no_png"])  # fmt: skip
    a, base, c = (np.load(tmp_path / d / "samples.npz")["samples"] for d in ("b1", "b2", "b3"))
    assert np.allclose(a, c, rtol=1e-5, atol=1e-4)  # float32 convs: rounding only
    ref_base = dode.sample(den, "ipndm", noise_from_seeds(range(10), den.sample_shape),
                           FittedSolver.load(path).sigmas)  # fmt: skip
    assert np.allclose(base, ref_base.numpy(), rtol=1e-5, atol=1e-4)
    assert not np.allclose(a, base, atol=1e-3)  # the λ change the samples


def test_other_model_weights_are_refused(solver_file, tmp_path, capsys):
    path, _, _ = solver_file
    other = tmp_path / "other"
    make_tiny_unet(other, seed=1)
    with pytest.raises(SystemExit) as e:
        main(["--solver_file", str(path), "--model", str(other), "--out", str(tmp_path / "c")])
    assert e.value.code == 2
    assert "other weights" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    main(["--solver_file", str(path), "--model", str(other), "--out", str(tmp_path / "c"),
          "--ignore_model_hash", "--seeds", "0-1"])  # fmt: skip
    assert (tmp_path / "c" / "samples.npz").is_file()


def test_missing_solver_file_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--solver_file", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "does not exist" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_importing_the_cli_keeps_dode_sample_callable():
    noise = torch.zeros(2, 3)
    den = dode.denoisers.gaussian(torch.zeros(3), torch.eye(3))
    out = dode.sample(den, "ddim", noise, dode.grids.schedules.karras(2))
    assert out.shape == (2, 3)


def test_cli_module_does_not_shadow_the_sampling_function():
    import dode.cli.sample  # noqa: F401
    from dode.sampling import sample

    assert dode.sample is sample
    assert "dode.sample" not in sys.modules  # nothing in the package imports the script shim


def test_python_m_dode_sample_help():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run(
        [sys.executable, "-m", "dode.sample", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "usage: python -m dode.sample" in r.stdout and "--solver_file" in r.stdout
