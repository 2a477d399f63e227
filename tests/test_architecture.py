"""The package's import structure: no cycle, no function-local import of a kronaxis_lab module, no private
name used across packages. Read from the source with `ast`, so a new module is checked with no list to edit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PKG = ROOT / "kronaxis_lab"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def resolve(node: ast.ImportFrom, mod: str, is_pkg: bool) -> str:
    """Absolute module of a `from X import ...` (relative imports resolved against `mod`)."""
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path) -> list[tuple[ast.AST, str, list[str], bool]]:
    """(node, imported module, imported names, at module level?) for every import of a kronaxis_lab module.
    Imports under `if TYPE_CHECKING:` are skipped (they never run)."""
    mod = module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    out = []

    def walk(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.split(".")[0] == "kronaxis_lab":
                        out.append((child, a.name, [], top))
            elif isinstance(child, ast.ImportFrom):
                target = resolve(child, mod, path.name == "__init__.py")
                if target.split(".")[0] == "kronaxis_lab":
                    out.append((child, target, [a.name for a in child.names], top))
            walk(child, inner)

    walk(tree, True)
    return out


def package_of(mod: str) -> str:
    """kronaxis_lab.<package> (or the top-level module itself)."""
    parts = mod.split(".")
    return ".".join(parts[:2])


def test_no_function_local_imports_of_the_package():
    bad = [f"{p.relative_to(ROOT)}:{n.lineno} imports {m} inside a function"
           for p in MODULES.values() for n, m, _, top in imports(p) if not top]
    assert not bad, "move the shared piece to where both sides can import it at the top:\n" + "\n".join(bad)


def test_no_private_names_across_packages():
    bad = []
    for mod, p in MODULES.items():
        for n, target, names, _ in imports(p):
            if package_of(target) == package_of(mod):
                continue
            private_module = any(part.startswith("_") and not part.startswith("__") for part in target.split("."))
            private_names = [x for x in names if x.startswith("_") and not x.startswith("__")]
            if private_module or private_names:
                bad.append(f"{p.relative_to(ROOT)}:{n.lineno} uses {target} {private_names or ''}")
        # attribute access to a private name of an imported kronaxis_lab module alias (M._x)
        tree = ast.parse(p.read_text())
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                   if a.name.startswith("kronaxis_lab")}
        aliases |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    and (n.module or "").startswith("kronaxis_lab") for a in n.names}
        for n in ast.walk(tree):
            if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
                    and n.attr.startswith("_") and not n.attr.startswith("__")):
                bad.append(f"{p.relative_to(ROOT)}:{n.lineno} uses {n.value.id}.{n.attr}")
    assert not bad, "make it public where it lives, or move it:\n" + "\n".join(bad)


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, p in MODULES.items():
        for _, target, names, top in imports(p):
            if not top:
                continue
            deps = {target} if target in MODULES else set()
            deps |= {f"{target}.{x}" for x in names if f"{target}.{x}" in MODULES}  # from pkg import module
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = target.split(".")
            # (except the packages holding `mod` itself: they are already being initialised)
            deps |= {q for q in (".".join(parts[:i]) for i in range(2, len(parts)))
                     if q in MODULES and not mod.startswith(q + ".")}
            graph[mod] |= deps - {mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_checks_can_fail(tmp_path):
    """The cycle finder and the local-import check see what they are meant to see."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    f = PKG / "routing" / "_probe_for_test.py"
    f.write_text("def f():\n    from kronaxis_lab.metrics import aiq\n    return aiq\n")
    try:
        found = imports(f)
        assert [(m, top) for _, m, _, top in found] == [("kronaxis_lab.metrics", False)]
    finally:
        f.unlink()


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_every_module_imports(mod):
    """Each module imports on its own (optional heavy dependencies are imported lazily inside functions)."""
    __import__(mod)
