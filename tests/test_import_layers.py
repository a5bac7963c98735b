"""The package's imports against its layers.

Every ``import`` of ``dode/**.py`` (read with ``ast``, lazy imports inside functions included,
``if TYPE_CHECKING:`` blocks excluded) is an edge from one module to another. The test fails on
an import circle and on an edge that points from a layer to a later one in :data:`LAYERS`, the
layer table (the README's Architecture section shows it). A package holds modules of one layer,
so its ``__init__`` imports its public names plainly.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dode"

#: the layers, first to last: (name, paths); a path ending in ``/`` holds every module under it.
#: A module imports only from its own layer or an earlier one.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "foundation: tensors, grid formulas, solvers, metrics",
        [
            "dode/version.py",
            "dode/noise.py",
            "dode/tracking.py",
            "dode/signals.py",
            "dode/metrics.py",
            "dode/grids/",
            "dode/solvers/",
        ],
    ),
    ("models", ["dode/denoisers/"]),
    (
        "core: one conversion, one correction, one replay engine, sampling",
        [
            "dode/correction.py",
            "dode/replay.py",
            "dode/sampling.py",
            "dode/conditioning.py",
            "dode/objectives.py",
        ],
    ),
    ("the solver file and what dode writes", ["dode/files/"]),
    (
        "fit",
        [
            "dode/lambda_fit.py",
            "dode/select.py",
            "dode/learned_solver.py",
            "dode/standard_grids.py",
            "dode/learned_grid.py",
            "dode/peer.py",
        ],
    ),
    ("hosts and judging", ["dode/hosts/", "dode/digits/", "dode/evaluation/"]),
    ("Lightning", ["dode/lit/"]),
    (
        "entry points",
        [
            "dode/cli/",
            "dode/train.py",
            "dode/sample.py",
            "dode/evaluate.py",
            "dode/export.py",
            "dode/fid.py",
            "dode/pretrain.py",
            "dode/bench.py",
        ],
    ),
    ("the package facade", ["dode/__init__.py"]),
]


def module_files() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package ``__init__``)."""
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _script_entry(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``: runs only under ``python -m``, never on import."""
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.ops[0], ast.Eq)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and getattr(test.comparators[0], "value", None) == "__main__"
    )


def _imports(tree: ast.AST, eager: bool = False):
    """Import nodes of a module, outside ``if TYPE_CHECKING:`` blocks and outside the
    ``if __name__ == "__main__":`` shim that hands ``python -m dode.<name>`` to ``dode.cli``;
    ``eager``: only those that run when the module is imported (none inside a function)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if _type_checking(node):
            todo.extend(node.orelse)
            continue
        if _script_entry(node):
            continue
        if eager and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        todo.extend(ast.iter_child_nodes(node))


def import_graph(eager: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports (a name imported from a package resolves to the
    submodule of that name if there is one, else to the package); ``eager``: only the imports
    that run when the module is imported."""
    mods = module_files()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        pkg = mod if is_pkg else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path)), eager):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                targets = [f"{src}.{alias.name}" for alias in node.names]
            for target in targets:
                if target == "dode" or target.startswith("dode."):
                    found = owner(target)
                    if found is not None and found != mod:
                        edges[mod].add(found)
    return edges


def layer_of(mods: dict[str, tuple[Path, bool]]) -> dict[str, int]:
    """Module -> its layer index: a path ending in ``/`` holds every module under it."""
    rules = []
    for index, (_, paths) in enumerate(LAYERS):
        for p in paths:
            rules.append((p, index))
    out = {}
    for mod, (path, _) in mods.items():
        rel = path.relative_to(ROOT).as_posix()
        for p, index in rules:
            if rel == p or (p.endswith("/") and rel.startswith(p)):
                out[mod] = index
                break
    return out


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_layer_table_names_every_module():
    mods = module_files()
    missing = sorted(set(mods) - set(layer_of(mods)))
    assert not missing, (
        f"modules in no layer of LAYERS: {missing}; add each to the row of the layer it belongs to."
    )
    paths = [p for _, ps in LAYERS for p in ps]
    assert len(paths) == len(set(paths)), "a path in two layers"
    for p in paths:
        assert (ROOT / p).exists(), f"LAYERS names {p}, which does not exist"


def test_no_import_circle():
    found = circles(import_graph())
    assert not found, f"import circles: {found}"


def test_no_import_points_up():
    mods = module_files()
    layer = layer_of(mods)
    names = [name for name, _ in LAYERS]
    up = [
        f"{a} ({names[layer[a]]}) imports {b} ({names[layer[b]]})"
        for a, targets in sorted(import_graph().items())
        for b in sorted(targets)
        if a in layer and b in layer and layer[b] > layer[a]
    ]
    assert not up, "imports that point to a later layer:\n" + "\n".join(up)


def test_a_package_holds_modules_of_one_layer():
    """Every module of a package (its ``__init__`` included, subpackages too) sits in one layer,
    so the ``__init__`` can import its public names plainly. (The facade, ``dode/__init__.py``,
    is the exception every package has: it runs before any of its modules.)"""
    mods = module_files()
    layer = layer_of(mods)
    names = [name for name, _ in LAYERS]
    mixed = []
    for package, (_, is_pkg) in sorted(mods.items()):
        if not is_pkg or package == "dode":
            continue
        inside = {m: layer[m] for m in mods if m == package or m.startswith(package + ".")}
        if len(set(inside.values())) > 1:
            mixed.append(f"{package}: " + ", ".join(f"{m} ({names[i]})" for m, i in inside.items()))
    assert not mixed, "packages that mix layers:\n" + "\n".join(mixed)


def test_a_package_init_runs_nothing_of_a_later_layer():
    """Importing a module runs its package's ``__init__`` first: what that ``__init__`` imports
    when it runs must sit in the module's own layer or an earlier one."""
    mods = module_files()
    layer = layer_of(mods)
    names = [name for name, _ in LAYERS]
    eager = import_graph(eager=True)
    bad = []
    for mod in sorted(mods):
        parts = mod.split(".")
        for depth in range(2, len(parts)):
            package = ".".join(parts[:depth])
            for target in sorted(eager[package]):
                if mod in layer and target in layer and layer[target] > layer[mod]:
                    bad.append(
                        f"importing {mod} ({names[layer[mod]]}) runs {package}/__init__, which "
                        f"imports {target} ({names[layer[target]]})"
                    )
    assert not bad, "\n".join(bad)
    # the packages import their names when they run
    assert "dode.grids.schedules" in eager["dode.grids"]
    assert "dode.files.solver_file" in eager["dode.files"]


def test_no_module_hands_out_names_lazily():
    """No module-level ``__getattr__``: a package imports its public names plainly. The one
    exception is the facade's ``dode.fit`` (:func:`dode.lit.api.fit`), imported on first use so
    that ``import dode`` does not import Lightning."""
    lazy = []
    for mod, (path, _) in sorted(module_files().items()):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body):
            lazy.append(mod)
    assert lazy == ["dode"], lazy


@pytest.mark.parametrize(
    "package",
    ["dode", "dode.grids", "dode.files", "dode.digits", "dode.denoisers", "dode.solvers",
     "dode.lit"],
)  # fmt: skip
def test_a_package_hands_out_every_name_it_lists(package):
    """Every name of a package's ``__all__`` is there, and is the object of the module that
    defines it; other names fail."""
    import importlib

    pkg = importlib.import_module(package)
    for name in pkg.__all__:
        obj = getattr(pkg, name)
        home = getattr(obj, "__module__", None)
        if home and home.startswith(package + ".") and hasattr(obj, "__qualname__"):
            assert getattr(importlib.import_module(home), obj.__qualname__) is obj, name
    with pytest.raises(AttributeError, match="no_such_name"):
        pkg.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    "source, expect",
    [
        ("import dode.sampling\n", {"dode.sampling"}),
        ("from .sampling import sample\n", {"dode.sampling"}),
        ("def f():\n    from .lit.api import fit\n", {"dode.lit.api"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .lit import api\n", set()),
    ],
)
def test_the_walk_sees_imports(tmp_path, monkeypatch, source, expect):
    """The walker itself: eager, relative and lazy imports count, TYPE_CHECKING ones do not."""
    fake = tmp_path / "dode"
    for mod in ("__init__", "sampling", "probe"):
        (fake / f"{mod}.py").parent.mkdir(parents=True, exist_ok=True)
        (fake / f"{mod}.py").write_text(source if mod == "probe" else "")
    (fake / "lit").mkdir()
    (fake / "lit" / "__init__.py").write_text("")
    (fake / "lit" / "api.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert import_graph()["dode.probe"] == expect
    assert circles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def _patches_and_borrows(source: str) -> list[str]:
    """Module-level assignments to an attribute of a class defined in ``source`` (a class
    patched after its definition) and class-body assignments of another class's function
    (``x0 = FlowDenoiser.x0``: a method borrowed by assignment)."""
    tree = ast.parse(source)
    classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id in classes
                ):
                    found.append(f"line {node.lineno}: {target.value.id}.{target.attr} = ...")
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if (
                    isinstance(item, ast.Assign)
                    and isinstance(item.value, ast.Attribute)
                    and isinstance(item.value.value, ast.Name)
                    and item.value.value.id[:1].isupper()
                    and not item.value.attr[:1].isupper()
                ):
                    names = ", ".join(ast.unparse(t) for t in item.targets)
                    found.append(
                        f"line {item.lineno}: {node.name}.{names} = {ast.unparse(item.value)}"
                    )
    return found


def test_no_class_is_patched_and_no_method_borrowed():
    """Classes are whole where they are defined: nothing is set on a class afterwards, and a
    method comes from a base class (or a wrapped object), never by assignment from another."""
    found = [
        f"{path.relative_to(ROOT)} {hit}"
        for path, _ in module_files().values()
        for hit in _patches_and_borrows(path.read_text())
    ]
    assert not found, "\n".join(found)
    bad = "class A:\n    pass\nclass B:\n    f = A.f\nA.g = 1\n"
    assert len(_patches_and_borrows(bad)) == 2


def test_the_architecture_page_shows_the_layer_table():
    """``docs/architecture.md`` (the map a newcomer reads) shows :data:`LAYERS` row by row."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    shown = []
    for line in text.split("### Layers", 1)[-1].splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|(.*)\|\s*$", line)
        if m:
            shown.append((m.group(2), re.findall(r"`(dode/[^`]*)`", m.group(3))))
        elif shown and not line.startswith("|"):
            break
    assert shown == [(name, list(paths)) for name, paths in LAYERS], (
        "docs/architecture.md's layer table differs from LAYERS; update the page."
    )


def test_sampling_and_frechet_commands_do_not_import_lightning():
    """``python -m dode.sample`` and the Fréchet distances import no Lightning (the evaluation
    package's ``__init__`` imports none of its modules, the predict loop among them)."""
    import subprocess
    import sys

    code = (
        "import sys, dode.cli.sample, dode.evaluation.fid, dode.evaluation.sample_folder; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'lightning']; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=600)


#: the files that do a fit mode's work (and the validation they share): they get their problem
#: handed to them (:class:`dode.lit.problem.FitProblem`) and use only what
#: :class:`dode.lit.problem.FitHost` lists of the module that runs them
FIT_MODE_FILES = [
    "dode/lit/fit_modes.py",
    "dode/lit/lstsq.py",
    "dode/lit/gradient.py",
    "dode/lit/end_to_end.py",
    "dode/lit/validation.py",
]


def _private_reads(source: str) -> list[str]:
    """Reads of another object's private attribute (``obj._name`` with ``obj`` not ``self``,
    ``cls`` or ``super()``; dunders excepted)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
            continue
        if node.attr.startswith("__") and node.attr.endswith("__"):
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        if (
            isinstance(owner, ast.Call)
            and isinstance(owner.func, ast.Name)
            and owner.func.id == "super"
        ):
            continue
        found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def _all_imports(tree: ast.AST, pkg: str) -> set[str]:
    """Every module an ``import`` of ``tree`` names, ``if TYPE_CHECKING:`` blocks included."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            out.add(src)
            out.update(f"{src}.{alias.name}" for alias in node.names)
    return out


def test_fit_modes_read_no_private_state():
    """A fit mode reads no private attribute of another object (the module's state comes as
    the problem object, or through what ``FitHost`` lists)."""
    found = [
        f"{rel} {hit}"
        for rel in FIT_MODE_FILES
        for hit in _private_reads((ROOT / rel).read_text(encoding="utf-8"))
    ]
    assert not found, "private attributes read:\n" + "\n".join(found)
    assert _private_reads("def f(module):\n    return module._fn, self._own\n") == [
        "line 2: module._fn"
    ]


def test_fit_modes_import_nothing_of_the_module():
    """No import from a fit-mode file to ``dode/lit/module.py``, ``if TYPE_CHECKING:`` ones
    included: the modes sit below the module that runs them."""
    bad = []
    for rel in FIT_MODE_FILES:
        path = ROOT / rel
        names = _all_imports(ast.parse(path.read_text(encoding="utf-8")), "dode.lit")
        hits = sorted(
            n for n in names if n == "dode.lit.module" or n.startswith("dode.lit.module.")
        )
        if hits:
            bad.append(f"{rel}: {hits}")
    assert not bad, "fit-mode files that import dode/lit/module.py:\n" + "\n".join(bad)
    probe = "if TYPE_CHECKING:\n    from .module import DODEModule\n"
    assert "dode.lit.module" in _all_imports(ast.parse(probe), "dode.lit")
