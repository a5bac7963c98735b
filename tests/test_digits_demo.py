"""``make demo`` end to end: fits through ``python -m dode.train`` on the shipped digits DDPM,
judged on held-out seeds with the shipped classifier.

What is checked is what must hold for any correct pipeline on this model: a 3-step DDIM is
far from the converged ODE solution, which is itself far from the floor of real digits; and a
D-solver fitted on some seeds reduces the error to its teacher on other seeds.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import digits_demo  # noqa: E402

from dode.artifact import FittedSolver  # noqa: E402


def _read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _num(row: dict, key: str) -> float:
    return float(row[key])


def test_reduced_demo_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out, runs = tmp_path / "out", tmp_path / "runs"
    digits_demo.main(
        [
            "-c",
            "configs/demo/digits.yaml",
            "--solvers=[{label: DDIM, name: ddim}]",
            "--nfes=[3, 4]",
            "--judge_seeds=1000000-1000499",
            "--reference_nfe=20",
            "--bootstrap=4",
            "--grid_nfe=3",
            "--threads=1",
            "--fit_overrides=[--data.fit_seeds=0-63]",
            f"--out={out}",
            f"--run_dir={runs}",
        ]
    )
    rows = _read(out / "table.csv")
    for col in digits_demo.COLUMNS:
        assert col in rows[0]
    cells = [r for r in rows if r["status"] == "ok"]
    teacher, real = (r for r in rows if r["status"] == "reference")
    assert [(r["solver"], int(r["nfe"])) for r in cells] == [("DDIM", 3), ("DDIM", 4)]
    for r in cells:
        for col in ("fd_digits_base", "fd_digits_dode", "fd_pixel_base", "fd_pixel_dode"):
            assert math.isfinite(_num(r, col)) and _num(r, col) >= 0
        # Fitted on seeds 0-63, judged on others: D-ODE lands closer to the converged solution.
        assert _num(r, "mse_teacher_dode") < _num(r, "mse_teacher_base")
        assert len(r["lambdas"].split()) == int(r["nfe"])
        fitted = FittedSolver.load(runs / f"ddim-nfe{r['nfe']}" / "solver.safetensors")
        assert fitted.nfe == int(r["nfe"]) and fitted.model["id"] == "digits"
    ddim3 = cells[0]
    assert _num(real, "fd_digits_base") < _num(teacher, "fd_digits_base")
    assert _num(teacher, "fd_digits_base") < 0.5 * _num(ddim3, "fd_digits_base")
    md = (out / "table.md").read_text()
    assert "| DDIM | 3 |" in md and "teacher" in md
    for name in ("fd_digits_vs_nfe.png", "lambdas.png", "samples.png"):
        assert (out / name).stat().st_size > 1000
    assert list((runs / "wandb").glob("offline-run-*"))


def test_demo_rejects_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        digits_demo.main(["--fit_config=nowhere.yaml", f"--out={tmp_path}"])
    assert e.value.code == 2
    assert "fit_config 'nowhere.yaml' does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_full_demo(tmp_path, monkeypatch):
    """The whole table (6 solvers × NFE 3-10, 10,000 judged seeds), as ``make demo``.

    What the method promises: in every cell the D-solver lands closer to the converged ODE
    solution than its base solver from the same noise; and D-DDIM, whose one-step error is
    the largest, improves FD-digits at every NFE.
    """
    monkeypatch.chdir(ROOT)
    digits_demo.main(
        ["-c", "configs/demo/digits.yaml", f"--out={tmp_path}", f"--run_dir={tmp_path / 'runs'}"]
    )
    rows = _read(tmp_path / "table.csv")
    cells = [r for r in rows if r["status"] == "ok"]
    assert len(cells) == 32  # EDM-Heun cannot make 4, 6, 8 or 10 calls
    for r in cells:
        assert _num(r, "mse_teacher_dode") < _num(r, "mse_teacher_base"), r
    for r in cells:
        if r["solver"] == "DDIM":
            assert _num(r, "fd_digits_dode") < _num(r, "fd_digits_base"), r
