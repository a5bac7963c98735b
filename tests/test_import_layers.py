"""The package's imports against the layers ``docs/architecture.md`` names.

Every ``import`` of ``dode/**.py`` (read with ``ast``, lazy imports inside functions included,
``if TYPE_CHECKING:`` blocks excluded) is an edge from one module to another. The test fails on
an import circle and on an edge that points from a layer to a later one in that page's table.
The layers are read from the page itself, so the map and the code cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dode"


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


#: the page that holds the layer table (the map a newcomer uses to find a module)
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def readme_layers() -> list[tuple[str, list[str]]]:
    """The layer table of ``docs/architecture.md``: (layer name, module paths) in order."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("### Layers", 1)
    if len(section) < 2:
        raise AssertionError("docs/architecture.md has no '### Layers' table.")
    layers = []
    for line in section[1].splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*([^|]+?)\s*\|(.*)\|\s*$", line)
        if m:
            layers.append((m.group(2), re.findall(r"`(dode/[^`]*)`", m.group(3))))
        elif layers and not line.startswith("|"):
            break
    return layers


def layer_of(mods: dict[str, tuple[Path, bool]]) -> dict[str, int]:
    """Module -> its layer index: a path ending in ``/`` holds every module under it."""
    rules = []
    for index, (_, paths) in enumerate(readme_layers()):
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


def test_the_readme_names_layers_and_every_module():
    layers = readme_layers()
    assert len(layers) >= 5, "docs/architecture.md's layer table lists fewer than five layers"
    mods = module_files()
    missing = sorted(set(mods) - set(layer_of(mods)))
    assert not missing, (
        f"modules in no layer of docs/architecture.md's table: {missing}; add each to the "
        "row of the layer it belongs to."
    )


def test_no_import_circle():
    found = circles(import_graph())
    assert not found, f"import circles: {found}"


def test_no_import_points_up():
    mods = module_files()
    layer = layer_of(mods)
    names = [name for name, _ in readme_layers()]
    up = [
        f"{a} ({names[layer[a]]}) imports {b} ({names[layer[b]]})"
        for a, targets in sorted(import_graph().items())
        for b in sorted(targets)
        if a in layer and b in layer and layer[b] > layer[a]
    ]
    assert not up, "imports that point to a later layer:\n" + "\n".join(up)


def test_a_wing_init_runs_nothing_of_a_later_layer():
    """Importing a module runs its package's ``__init__`` first: what that ``__init__`` imports
    when it runs must sit in the module's own layer or an earlier one. A wing that holds modules
    of several layers (``dode/grids/``: the grid formulas of layer 1 beside the fit code of layer
    5) therefore hands out its names on first use (``dode.import_paths.wing_exports``), and
    ``import dode.grids.schedules`` runs no fit code. (The facade, ``dode/__init__.py``, is the
    exception every package has: it runs before any of its modules.)"""
    mods = module_files()
    layer = layer_of(mods)
    names = [name for name, _ in readme_layers()]
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
    # the rule bites: an __init__ importing its fit module eagerly would be refused
    assert "dode.grids.standard" not in eager["dode.grids"]
    assert "dode.grids.standard" in import_graph()["dode.grids"]


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


def test_old_import_paths_warn_with_the_new_name():
    """``dode.dode`` and ``dode.lit.build_grid`` still work, with a DeprecationWarning that names
    the removal version and the new name."""
    import importlib

    import dode.lit
    from dode.grids.schedules import grid_for_model

    with pytest.warns(DeprecationWarning, match=r"removed in dode 0\.2.*grid_for_model"):
        assert dode.lit.build_grid is grid_for_model
    import dode.dode

    with pytest.warns(
        DeprecationWarning, match=r"dode\.dode is deprecated .* removed in dode 0\.2"
    ):
        old = importlib.reload(dode.dode)
    import dode as new

    assert old.fit_lambdas is new.fit_lambdas and old.sample is new.sample


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
