"""``experiments/digits_frontier.py`` on the three digits models, reduced (one solver, one
NFE, few seeds): the frontier's columns are filled and consistent."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _frontier():
    spec = importlib.util.spec_from_file_location(
        "digits_frontier", ROOT / "experiments" / "digits_frontier.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    ("model", "guidance", "solver"),
    [
        ("digits", 1.0, "iPNDM"),
        ("digits-cond", 2.0, "UniPC"),
        ("digits-flow", 1.0, "DPM-Solver++(2M)"),
    ],
)
def test_frontier_reduced(tmp_path, model, guidance, solver):
    fr = _frontier()
    argv = ["--model", model, "--guidance", str(guidance), "--solvers", solver, "--nfes", "4",
            "--judge", "40", "--select", "16", "--fit", "16", "--sgd-nfes", "--no-gmm", "--out", str(tmp_path)]  # fmt: skip
    (row,) = fr.main(argv)
    assert row["nfe"] == 4
    assert row["best_base"].startswith(solver + " / ")
    assert row["learned"].startswith(f"D-{solver} / learned_dp")
    for k in ("best_base_fd", "best_dode_fd", "learned_fd", "teacher_fd", "best_base_mse",
              "best_dode_mse", "learned_mse", "learned_fit_x"):  # fmt: skip
        assert math.isfinite(row[k]) and row[k] > 0, k
    # the grid was chosen by MSE among the standard grids: best by MSE is that solver's cell
    assert row["best_mse_base_mse"] == pytest.approx(row["best_base_mse"])
    lines = (tmp_path / "frontier.csv").read_text().splitlines()
    assert lines[0].startswith(f"# {model}")
    rows = list(csv.DictReader(lines[1:]))
    assert list(rows[0]) == fr.COLUMNS and rows[0]["nfe"] == "4"
    assert (tmp_path / "frontier.png").stat().st_size > 0
    assert not (tmp_path / "frontier_gmm.csv").exists()


def test_frontier_bad_input():
    fr = _frontier()
    with pytest.raises(ValueError, match="needs --model digits-cond"):
        fr.run(10, 10, Path("unused"), [4], model="digits-flow", guidance=2.0)
    with pytest.raises(ValueError, match="unknown solvers"):
        fr.run(10, 10, Path("unused"), [4], model="digits-cond", solvers=["Heun"])
