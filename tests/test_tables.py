"""The paper-table runner: the dry run of every table target, cell-by-cell resume, make wiring."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import tables  # noqa: E402

from dode.solvers import get_solver  # noqa: E402


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """Run every table's dry run once, into a temporary folder."""
    root = tmp_path_factory.mktemp("tables")
    for name in tables.table_names():
        tables.run_table(
            name,
            dry_run=True,
            results_dir=root / "results",
            work_dir=root / "work",
            progress=False,
            use_wandb=False,
        )
    return root


@pytest.mark.parametrize("name", tables.table_names())
def test_dry_run_fills_every_cell(dry_runs, name):
    spec = tables.load_table(name, dry_run=True)
    results = dry_runs / "results"
    md = (results / f"{name}.md").read_text()
    assert "DRY RUN" in md
    rows = {}
    for line in md.splitlines():
        m = re.match(r"\| (.+?) \| (.+) \|$", line)
        if m and m.group(1) not in ("Solver", "---"):
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    header = next(line for line in md.splitlines() if line.startswith("| Solver |"))
    assert header == "| Solver | " + " | ".join(map(str, spec["nfe"])) + " |"
    for entry in spec["solvers"]:
        solver = get_solver(entry["solver"], **(entry.get("options") or {}))
        reachable = {solver.nfe(n) for n in range(solver.min_steps(), 12)}
        for label in (entry["label"], "D-" + entry["label"]):
            vals = rows[label]
            assert len(vals) == len(spec["nfe"])
            for nfe, v in zip(spec["nfe"], vals):
                if nfe in reachable:
                    assert float(v) >= 0, (label, nfe, v)  # filled with a number
                else:
                    assert v == tables.UNREACHABLE, (label, nfe, v)
        for nfe in spec["nfe"]:
            cell = json.loads(
                (
                    results / name / "cells" / f"{tables.slug(entry['label'])}-nfe{nfe}.json"
                ).read_text()
            )
            if nfe in reachable:
                assert cell["status"] == "done"
                assert cell["base"]["metric"] == "fd_pixels" == cell["dode"]["metric"]
                assert cell["fit"]["lambdas"][0] == 0.0 and len(cell["fit"]["lambdas"]) == nfe
                assert (results / name / "solvers" / cell["fit"]["file"]).is_file()
            else:
                assert cell["status"] == "unreachable"
    with open(results / f"{name}.csv") as f:
        table = list(csv.reader(f))
    assert table[0] == ["solver", *[f"nfe{k}" for k in spec["nfe"]]]
    assert len(table) == 1 + 2 * len(spec["solvers"])


def test_rerun_skips_finished_cells_and_redoes_only_missing_parts(dry_runs, monkeypatch):
    name = "cifar10-edm"
    root = dry_runs
    before = (root / "results" / f"{name}.md").read_text()

    def no_fit(*a, **k):
        raise AssertionError("a finished cell was refitted")

    evaluated = []

    def fake_eval(spec, file, base, out, denoiser, opts):
        evaluated.append((file.name, base))
        return {"metric": "fd_pixels", "value": 1.0, "num_samples": 8}

    monkeypatch.setattr(tables, "fit_cell", no_fit)
    monkeypatch.setattr(tables, "_eval_cell", fake_eval)
    kw = dict(dry_run=True, results_dir=root / "results", work_dir=root / "work", progress=False)
    tables.run_table(name, use_wandb=False, **kw)
    assert evaluated == [] and (root / "results" / f"{name}.md").read_text() == before

    cell_file = root / "results" / name / "cells" / "edm-heun-nfe3.json"
    cell = json.loads(cell_file.read_text())
    del cell["dode"], cell["status"]  # as if interrupted after the base evaluation
    cell_file.write_text(json.dumps(cell))
    tables.run_table(name, use_wandb=False, **kw)
    assert evaluated == [("edm-heun-nfe3.safetensors", False)]


def test_real_table_without_reference_statistics_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("DODE_REFS", str(tmp_path))
    with pytest.raises(ValueError) as e:
        tables.run_table("cifar10", results_dir=tmp_path / "r", work_dir=tmp_path / "w")
    msg = str(e.value)
    assert str(tmp_path / "cifar10-32x32.npz") in msg
    assert "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz" in msg
    assert not (tmp_path / "r").exists()


def test_make_help_lists_every_table_target_with_its_needs():
    out = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in tables.table_names():
        line = next(ln for ln in out.stdout.splitlines() if ln.split()[:1] == [f"table-{name}"])
        assert "GPU" in line and "Downloads" in line, line
        dry = subprocess.run(
            ["make", "-n", f"table-{name}"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert f"experiments/tables.py {name}" in dry.stdout
    assert any(ln.split()[:1] == ["tables-dry"] for ln in out.stdout.splitlines())
