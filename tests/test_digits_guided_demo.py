"""``make demo-guided`` and ``make demo-flow`` end to end on reduced settings: the bundled
class-conditional digits DDPM (with classifier-free guidance) and rectified-flow model, fitted
with the core API and judged with the shipped classifier.

What must hold for any correct pipeline: the table has one row per (guidance, solver, NFE) cell
plus the reference rows, with every column; on the fit's own objective (final-sample MSE to the
fit's teacher, on the fit seeds) the fitted λ do not do worse than the base solver; the reported
D-solver is the fitted one scaled by the α that scored best on the α-selection seeds; the
accuracies are fractions; a bad config is one clear error.
"""

from __future__ import annotations

import csv
import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import digits_flow_demo  # noqa: E402
import digits_guided_demo  # noqa: E402

REDUCED = [
    "--nfes=[3]",
    "--fit_seeds=0-99",
    "--judge_seeds=1000000-1000299",
    "--select_seeds=3000000-3000149",
    "--reference_nfe=12",
    "--bootstrap=3",
    "--grid_nfe=3",
    "--threads=1",
    "--workers=0",
]


def _read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _check_table(out: Path, cells: list[tuple[str, str, int]], teachers: list[str]) -> None:
    for name in ("table.md", "table.csv", "fd_digits_vs_nfe.png", "samples.png"):
        assert (out / name).stat().st_size > 0, name
    rows = _read(out / "table.csv")
    assert list(rows[0]) == digits_guided_demo.COLUMNS
    ok = [r for r in rows if r["status"] == "ok"]
    refs = [r for r in rows if r["status"] == "reference"]
    assert [(r["guidance"], r["solver"], int(r["nfe"])) for r in ok] == cells
    assert [r["guidance"] for r in refs] == [*teachers, ""]  # a teacher per w, then real digits
    for r in ok:
        for col in ("fd_digits_base", "fd_digits_dode", "fit_mse_base", "mse_teacher_base"):
            assert math.isfinite(float(r[col])) and float(r[col]) >= 0, col
        for col in ("acc_base", "acc_dode"):
            assert 0 <= float(r[col]) <= 1
        # The fit's own objective, on the fit seeds: the fitted λ do not do worse than base.
        assert float(r["fit_mse_dode"]) <= float(r["fit_mse_base"])
        assert len(r["lambdas"].split()) == int(r["nfe"]) - (r["solver"] == "Euler")
        alpha = float(r["lambda_scale"])
        scores = dict(kv.split(":") for kv in r["select_scores"].split())
        assert set(scores) == {"0", "0.5", "1"}
        assert min(scores, key=lambda a: float(scores[a])) == f"{alpha:g}"
        if alpha == 0:  # the base solver itself
            assert r["fd_digits_dode"] == r["fd_digits_base"]
            assert r["acc_dode"] == r["acc_base"]
    md = (out / "table.md").read_text()
    assert md.count("\n| ") == 1 + len(ok) + len(refs)  # header row, cells, reference rows


def test_guided_demo_reduced(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "guided"
    digits_guided_demo.main(
        [
            "-c",
            "configs/demo/digits-guided.yaml",
            "--solvers=[{label: DDIM, name: ddim, schedule: time_uniform, "
            "schedule_options: {spacing: leading}}]",
            "--guidance_scales=[2]",
            *REDUCED,
            f"--out={out}",
        ]
    )
    _check_table(out, [("2.0", "DDIM", 3)], ["2.0"])


def test_flow_demo_reduced(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "flow"
    digits_flow_demo.main(
        [
            "-c",
            "configs/demo/digits-flow.yaml",
            "--solvers=[{label: Euler, name: euler, schedule: flux}]",
            *REDUCED,
            f"--out={out}",
        ]
    )
    # NFE 3 on the flow: the start call at t = 1 plus two Euler calls, so two λ.
    _check_table(out, [("1.0", "Euler", 3)], ["1.0"])


@pytest.mark.parametrize(
    "module,args,message",
    [
        (digits_flow_demo, ["--guidance_scales=[1, 2]"], "use guidance_scales: \\[1\\]"),
        (digits_guided_demo, ["--model=digits"], "unknown model 'digits'"),
        (digits_guided_demo, ["--judge_seeds=0-9"], "fit_seeds and judge_seeds overlap"),
        (digits_guided_demo, ["--scales=[0, 0.5]"], "scales must contain 1"),
        (digits_flow_demo, ["--nfes=[1, 3]"], "nfes must be integers >= 2"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, monkeypatch, capsys, module, args, message):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as e:
        module.main([*args, f"--out={tmp_path / 'out'}", "--workers=0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()  # nothing written
