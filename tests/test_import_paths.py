"""The wings' public names and the old paths of the modules that moved into wings."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dode.cli import ENTRY_POINTS
from dode.import_paths import MOVED, REMOVAL_VERSION

ROOT = Path(__file__).resolve().parents[1]

#: wing -> the modules whose ``__all__`` it hands out
WINGS = {
    "dode.grids": ("schedules", "standard", "learned"),
    "dode.files": ("solver_file", "cache", "images"),
    "dode.hosts": ("diffusers", "export", "k_diffusion"),
    "dode.digits": ("classifier",),
    "dode.evaluation": ("config", "run", "store"),
}

_PROBE = r"""
import importlib, json, sys, warnings
warnings.simplefilter("always")
out = {}
for old, new in json.loads(sys.argv[1]).items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    out[old] = {
        "same": module is importlib.import_module(new),
        "warnings": [(w.category.__name__, str(w.message), w.filename) for w in caught],
    }
print(json.dumps(out))
"""


def test_every_old_path_is_the_new_module_with_one_warning_at_the_importer(tmp_path):
    """In a fresh interpreter, ``import <old path>`` gives the module it moved to (the same
    object) and one DeprecationWarning naming the new path and the removal version, attributed
    to the line that wrote the import (not to importlib or dode)."""
    script = tmp_path / "probe.py"
    script.write_text(_PROBE)
    run = subprocess.run(
        [sys.executable, str(script), json.dumps(MOVED)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # the checkout, whatever is installed
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    for old, new in MOVED.items():
        assert seen[old]["same"], old
        deprecations = [w for w in seen[old]["warnings"] if w[0] == "DeprecationWarning"]
        assert len(deprecations) == 1, (old, seen[old]["warnings"])
        _, message, filename = deprecations[0]
        assert f"{old} moved to {new}" in message and f"dode {REMOVAL_VERSION}" in message
        assert Path(filename) == script, (old, filename)


def test_old_paths_have_no_file_but_the_entry_point_shims():
    """A moved module's old path is served by ``dode.import_paths`` and keeps a file only where
    ``python -m dode.<name>`` needs one; every new path is a module of a wing."""
    for old, new in MOVED.items():
        name = old.removeprefix("dode.")
        assert (ROOT / "dode" / f"{name}.py").exists() == (name in ENTRY_POINTS), old
        assert (ROOT / (new.replace(".", "/") + ".py")).is_file(), new


def test_the_facade_hands_out_old_module_names_with_the_warning():
    import dode

    with pytest.warns(
        DeprecationWarning, match=r"dode\.artifact moved to dode\.files\.solver_file"
    ):
        old = dode.artifact
    assert old is importlib.import_module("dode.files.solver_file")
    with pytest.raises(AttributeError, match="no attribute 'no_such_module'"):
        dode.no_such_module  # noqa: B018


@pytest.mark.parametrize("wing", sorted(WINGS))
def test_a_wing_hands_out_every_public_name_of_its_modules(wing):
    """``from dode.<wing> import name`` gives the object of the module that defines it; no name
    is public in two of a wing's modules (one would shadow the other); other names fail."""
    package = importlib.import_module(wing)
    owners: dict[str, str] = {}
    for sub in WINGS[wing]:
        module = importlib.import_module(f"{wing}.{sub}")
        for name in module.__all__:
            assert name not in owners, f"{wing}: {name} is public in {owners[name]} and {sub}"
            owners[name] = sub
            # a name that is also a module of the wing (dode.hosts.export) is that module
            expect = sys.modules[f"{wing}.{name}"] if name in WINGS[wing] else getattr(module, name)
            assert getattr(package, name) is expect, f"{wing}.{name}"
    assert owners, wing
    with pytest.raises(AttributeError, match=f"module '{wing}' has no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018


def test_importing_the_grid_formulas_runs_no_fit_code():
    """The point of lazy wings: ``import dode`` (which needs the grid formulas) does not import
    the standard grid family or the learned grids that sit beside them in ``dode/grids/``."""
    code = "import sys, dode; print(sorted(m for m in sys.modules if m.startswith('dode.grids')))"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "['dode.grids', 'dode.grids.schedules']"


@pytest.mark.parametrize(
    "name", ["evaluate", "EvalConfig", "SampleStore", "build_grid", "to_uint8"]
)
def test_the_names_dode_evaluate_re_exported_warn_and_are_the_evaluation_ones(name):
    import dode.evaluate
    import dode.evaluation

    with pytest.warns(
        DeprecationWarning, match=rf"dode\.evaluate\.{name} moved to dode\.evaluation\.{name}"
    ):
        old = getattr(dode.evaluate, name)
    assert old is getattr(dode.evaluation, name)


def test_the_old_grid_name_of_the_lightning_module_warns_with_the_new_name():
    import dode.lit.module
    from dode.grids.schedules import grid_for_model

    with pytest.warns(DeprecationWarning, match=r"moved to dode\.grids\.schedules\.grid_for_model"):
        assert dode.lit.module.build_grid is grid_for_model
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        dode.lit.module.no_such_name  # noqa: B018
