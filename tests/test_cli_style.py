"""One command-line style for every ``python -m dode.<name>``: the implementation is
``dode/cli/<name>.py``, ``dode/<name>.py`` only runs its ``main()``, ``-h`` prints a usage with
every option described, flags are spelled with underscores (no dashed spelling is accepted)."""

from __future__ import annotations

import ast
import importlib
import re
import runpy
import sys
import warnings
from pathlib import Path

import pytest

import dode
from dode.cli import ENTRY_POINTS

PKG = Path(dode.__file__).resolve().parent


def _help(name: str, capsys, argv: list[str] | None = None) -> str:
    """``python -m dode.<name> -h`` in this process: its stdout (the usage and options)."""
    mod = importlib.import_module(f"dode.cli.{name}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(SystemExit) as e:
            mod.main([*(argv or []), "-h"])
    assert e.value.code in (0, None)
    return capsys.readouterr().out


def _main_blocks(path: Path) -> list[ast.If]:
    tree = ast.parse(path.read_text())
    return [
        n
        for n in tree.body
        if isinstance(n, ast.If)
        and isinstance(n.test, ast.Compare)
        and isinstance(n.test.ops[0], ast.Eq)
        and getattr(n.test.left, "id", None) == "__name__"
        and getattr(n.test.comparators[0], "value", None) == "__main__"
    ]


def test_entry_points_are_the_cli_modules():
    modules = {p.stem for p in (PKG / "cli").glob("*.py")} - {"__init__", "common"}
    assert modules == set(ENTRY_POINTS)
    for name in ENTRY_POINTS:
        assert callable(importlib.import_module(f"dode.cli.{name}").main)


def test_every_script_module_outside_cli_is_a_shim():
    """Every ``if __name__ == "__main__"`` block outside ``dode/cli`` only imports ``main``
    from ``dode.cli.<its own name>`` and calls it."""
    shims = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith("cli/") or not _main_blocks(path):
            continue
        (block,) = _main_blocks(path)
        # a package's __main__.py is what ``python -m dode.<package>`` runs
        name = path.parent.name if path.stem == "__main__" else path.stem
        imports = [n for n in ast.walk(block) if isinstance(n, ast.ImportFrom)]
        targets = [i.module for i in imports if i.module and i.module.startswith("dode")]
        assert targets == [f"dode.cli.{name}"], f"dode/{rel}: {targets}"
        assert [a.name for i in imports for a in i.names if i.module == targets[0]] == ["main"]
        assert len(ast.unparse(block).splitlines()) <= 5, f"dode/{rel} does more than a shim"
        shims[name] = rel.removesuffix("/__main__.py").removesuffix(".py")
    assert set(shims) == set(ENTRY_POINTS)
    assert all(rel.replace("/", ".") == n for n, rel in shims.items())


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_python_m_runs_the_cli_main(name, monkeypatch):
    """``python -m dode.<name>`` (run here with runpy) calls ``dode.cli.<name>.main``."""
    calls = []
    cli = importlib.import_module(f"dode.cli.{name}")
    monkeypatch.setattr(cli, "main", lambda *a: calls.append(a) or 0)
    script = f"dode.{name}"
    monkeypatch.setattr(sys, "argv", [script.replace(".", "/") + ".py", "--some_flag"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules" (runpy)
        try:
            runpy.run_module(script, run_name="__main__", alter_sys=False)
        except SystemExit as e:
            assert e.code in (0, None)
    assert calls == [()]


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_style_and_underscore_flags(name, capsys):
    sub = ["ref"] if name == "fid" else []
    text = _help(name, capsys, sub)
    assert text.startswith(f"usage: python -m dode.{name}"), text[:200]
    flags = set(re.findall(r"(?<![\w-])--[A-Za-z][\w.+-]*", text))
    dashed = {f for f in flags if "-" in f[2:]}
    assert not dashed, f"{name}: dashed flags {sorted(dashed)}; spell them with underscores"


def _actions(parser):
    import argparse

    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for p in a.choices.values():
                yield from _actions(p)
        elif a.option_strings:
            yield a


@pytest.mark.parametrize("name", [n for n in ENTRY_POINTS if n not in ("train", "pretrain")])
def test_every_option_is_described(name):
    parser = importlib.import_module(f"dode.cli.{name}").parser()
    for a in _actions(parser):
        assert a.help and a.help.strip() and not a.help.startswith("(type:"), (name, a)
        long = [s for s in a.option_strings if s.startswith("--")]
        assert all("-" not in f[2:] for f in long), f"{name}: {long} is not the underscore spelling"


@pytest.mark.parametrize(
    ("name", "own"),
    [
        ("train", ["--run_dir", "--solver_file", "--ckpt_path", "--wandb_mode", "--name"]),
        ("pretrain", ["--output", "--results", "--curve_name"]),
    ],
)
def test_lightning_entry_points_describe_their_own_options(name, own, capsys):
    text = _help(name, capsys)
    for flag in own:
        m = re.search(rf"^  {re.escape(flag)} \S+\s*\n?\s+(\S.*)$", text, re.M)
        assert m and not m.group(1).startswith("(type:"), f"{name}: {flag} has no description"


def test_dashed_spellings_are_refused(capsys):
    from dode.cli import export, sample

    given = ["--solver_file", "f", "--out", "o"]
    for parser, dashed in ((sample.parser(), "--batch-size"), (export.parser(), "--solver-file")):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([*given, dashed, "3"])
        assert e.value.code == 2
        assert f"unrecognized arguments: {dashed}" in capsys.readouterr().err


def test_fid_cli_writes_and_scores_through_its_functions(tmp_path, capsys):
    """``python -m dode.fid ref`` / ``score`` with the pixel stand-in (mean colour of 16 cells
    in [0, 1]): a folder scored against its own statistics is at distance 0; the same images
    brightened by 120 levels are at ``48 (120/255)²`` (equal covariances, shifted means)."""
    import json

    import numpy as np
    from PIL import Image

    from dode.cli.fid import main

    images = np.random.default_rng(0).integers(0, 120, (12, 16, 16, 3), dtype=np.uint8)
    for name, shift in (("a", 0), ("b", 120)):
        (tmp_path / name).mkdir()
        for i, im in enumerate(images):
            Image.fromarray(im + np.uint8(shift)).save(tmp_path / name / f"{i}.png")
    opts = ["--features", "pixels", "--device", "cpu", "--batch_size", "5"]
    assert (
        main(["ref", "--images", str(tmp_path / "a"), "--out", str(tmp_path / "a.npz"), *opts]) == 0
    )
    assert "48-d" in capsys.readouterr().out
    scores = {}
    for name in ("a", "b"):
        assert (
            main(
                ["score", "--images", str(tmp_path / name), "--ref", str(tmp_path / "a.npz"), *opts]
            )
            == 0
        )
        scores[name] = json.loads(capsys.readouterr().out)
    assert scores["a"]["num_images"] == 12 and abs(scores["a"]["fd_pixels"]) < 1e-6
    assert scores["b"]["fd_pixels"] == pytest.approx(48 * (120 / 255) ** 2, rel=1e-6)
    code = main(
        ["score", "--images", str(tmp_path / "a.npz"), "--ref", str(tmp_path / "a.npz"), *opts]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is not a folder of images" in err[0]


def test_digits_cli_bad_input_is_one_line(capsys):
    from dode.cli.digits import main

    with pytest.raises(SystemExit) as e:
        main(["--epochs", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == [
        "dode.digits: error: epochs and batch_size must be positive integers."
    ]
