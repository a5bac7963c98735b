"""``make demo`` end to end: fits through ``python -m dode.train`` on the shipped digits DDPM,
judged on held-out seeds with the shipped classifier.

What is checked is what must hold for any correct pipeline on this model: a 3-step DDIM is
far from the converged ODE solution, which is itself far from the floor of real digits; a
D-solver fitted on some seeds reduces the error to its teacher on other seeds; the reported
D-solver is the fitted one scaled by the chosen α (α = 0: the base solver itself); worker
processes give the numbers of a single process.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import digits_demo  # noqa: E402

from dode.files.solver_file import FittedSolver  # noqa: E402


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
            "--select_seeds=3000000-3000199",
            "--threads=1",
            "--workers=0",
            "--fit_overrides={fit_seeds: 0-63}",
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
        # Fitted on seeds 0-63, α chosen on 3000000+, judged on 1000000+: the fitted λ land
        # closer to the converged solution than the base solver.
        assert _num(r, "select_mse_teacher_fit") < _num(r, "select_mse_teacher_base")
        assert len(r["lambdas"].split()) == int(r["nfe"])
        alpha = _num(r, "lambda_scale")
        scores = dict(kv.split(":") for kv in r["select_scores"].split())
        assert set(scores) == {"0", "0.5", "1"}
        assert min(scores, key=lambda a: float(scores[a])) == f"{alpha:g}"
        if alpha == 0:  # the base solver itself
            assert _num(r, "fd_digits_dode") == _num(r, "fd_digits_base")
            assert _num(r, "mse_teacher_dode") == _num(r, "mse_teacher_base")
        else:
            assert _num(r, "mse_teacher_dode") < _num(r, "mse_teacher_base")
        fitted = FittedSolver.load(runs / f"ddim-nfe{r['nfe']}" / "solver.safetensors")
        assert fitted.nfe == int(r["nfe"]) and fitted.model["id"] == "digits"
        chosen = FittedSolver.load(runs / f"ddim-nfe{r['nfe']}" / "solver-chosen.safetensors")
        assert torch.equal(chosen.lambdas, _num(r, "lambda_scale") * fitted.lambdas)
        assert torch.equal(chosen.sigmas, fitted.sigmas)
        assert chosen.metrics["lambda_scale"] == _num(r, "lambda_scale")
    ddim3 = cells[0]
    assert _num(real, "fd_digits_base") < _num(teacher, "fd_digits_base")
    assert _num(teacher, "fd_digits_base") < 0.5 * _num(ddim3, "fd_digits_base")
    md = (out / "table.md").read_text()
    assert "| DDIM | 3 |" in md and "teacher" in md
    for name in ("fd_digits_vs_nfe.png", "lambdas.png", "samples.png"):
        assert (out / name).stat().st_size > 1000
    assert list((runs / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--fit_config=nowhere.yaml"], "fit_config 'nowhere.yaml' does not exist"),
        (["--workers=-1"], "workers must be an integer >= 0"),
        (["--scales=[0, 0.5]"], "scales must contain 1"),
        (["--select_seeds=1000000-1000009"], "select_seeds and judge_seeds overlap"),
    ],
)
def test_demo_rejects_bad_input(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        digits_demo.main([*args, f"--out={tmp_path}", f"--run_dir={tmp_path}/runs"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "table.csv").exists()


def test_demo_workers_give_the_numbers_of_one_process(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    common = [
        "-c",
        "configs/demo/digits.yaml",
        "--solvers=[{label: DEIS, name: deis, schedule: quadratic}]",
        "--nfes=[3]",
        "--judge_seeds=1000000-1000299",
        "--select_seeds=3000000-3000099",
        "--reference_nfe=10",
        "--bootstrap=0",
        "--threads=1",
        "--wandb_mode=disabled",
        "--fit_overrides={fit_seeds: 0-31}",
    ]
    rows = {}
    for w in (0, 1):
        out = tmp_path / f"w{w}"
        digits_demo.main([*common, f"--workers={w}", f"--out={out}", f"--run_dir={out}/runs"])
        rows[w] = _read(out / "table.csv")
    for a, b in zip(rows[0], rows[1]):
        for col in ("fd_digits_base", "fd_digits_dode", "mse_teacher_base", "mse_teacher_dode",
                    "select_mse_teacher_fit", "lambdas", "lambda_scale", "select_scores"):  # fmt: skip
            if a[col] and a[col][0].isdigit() and " " not in a[col]:
                assert float(a[col]) == pytest.approx(float(b[col]), rel=1e-6), col
            else:
                assert a[col] == b[col], col


@pytest.mark.slow
def test_full_demo(tmp_path, monkeypatch):
    """The whole table (6 solvers × NFE 3-10, 10,000 judged seeds), as ``make demo``.

    The targets: D-DDIM at most half of DDIM's FD-digits at NFE 3-6; no D-solver worse than
    its base beyond three bootstrap standard deviations; the fitted λ bring the samples closer
    to the converged ODE solution than the base solver in nearly every cell (on the α-selection
    seeds).
    """
    monkeypatch.chdir(ROOT)
    digits_demo.main(
        ["-c", "configs/demo/digits.yaml", f"--out={tmp_path}", f"--run_dir={tmp_path / 'runs'}"]
    )
    rows = _read(tmp_path / "table.csv")
    cells = [r for r in rows if r["status"] == "ok"]
    assert len(cells) == 32  # EDM-Heun cannot make 4, 6, 8 or 10 calls
    closer = [
        r for r in cells if _num(r, "select_mse_teacher_fit") < _num(r, "select_mse_teacher_base")
    ]
    assert len(closer) >= 30
    for r in cells:
        assert _num(r, "fd_digits_dode") <= _num(r, "fd_digits_base") + 3 * _num(
            r, "fd_digits_diff_std"
        ), r
        if r["solver"] == "DDIM" and int(r["nfe"]) <= 6:
            assert _num(r, "fd_digits_dode") <= 0.5 * _num(r, "fd_digits_base"), r
