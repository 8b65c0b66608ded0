"""The import graph of ``src/``: no circles, and the layers only import downwards.

The graph is read from the source with ``ast`` (nothing is imported), so an import inside a
function or a ``__main__`` block counts as much as one at the top: either can run. Imports under
``if TYPE_CHECKING:`` never run and are left out. The implicit import of a parent package
(``import s3od.errors`` first runs ``s3od/__init__.py``) is left out too: it would make every
package with an ``__init__`` that imports its submodules look circular.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = ("s3od", "synth_sod")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((SRC / pkg).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those guarded by ``TYPE_CHECKING``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports, resolved to the module files that run."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from a import b``: the module a.b when it exists, else a name inside a.
            targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules
                       else prefix for alias in node.names]
        for target in targets:
            while target and target not in modules:  # ``import a.b.c`` of a non-module c
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_reader_sees_function_level_and_main_block_imports(tmp_path: Path) -> None:
    """The checker itself: a circle closed only inside a function or ``__main__`` is found."""
    a = tmp_path / "a.py"
    b = tmp_path / "b.py"
    a.write_text("def f():\n    from pkg.b import g\n")
    b.write_text("if __name__ == '__main__':\n    import pkg.a\n")
    c = tmp_path / "c.py"
    c.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    modules = {"pkg.a": a, "pkg.b": b, "pkg.c": c}
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": set()}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_relative_imports_resolve_to_modules(tmp_path: Path) -> None:
    init = tmp_path / "__init__.py"
    init.write_text("from .sub import thing\nfrom . import other\n")
    modules = {"pkg": init, "pkg.sub": tmp_path / "sub.py", "pkg.other": tmp_path / "other.py"}
    assert imports_of("pkg", init, modules) == {"pkg.sub", "pkg.other"}


def test_no_import_circles_in_src() -> None:
    found = cycles(import_graph())
    assert not found, "import circles in src/ (module-level or inside functions):\n" + "\n".join(
        " <-> ".join(c) for c in found)


@pytest.mark.parametrize(("lower", "upper"), [("s3od", "synth_sod")])
def test_inference_package_never_imports_the_layer_above(lower: str, upper: str) -> None:
    """``s3od`` is the floor: it runs without the training and data-generation code."""
    offenders = sorted(f"{m} -> {t}" for m, targets in import_graph().items()
                       if m.split(".")[0] == lower for t in targets
                       if t.split(".")[0] == upper)
    assert not offenders, offenders


def test_step_module_runs_as_its_cli_command(tmp_path: Path) -> None:
    """``python -m <step module>`` still works now that it hands over instead of importing
    the CLI: same options, same clean exit code 2 on a user error."""
    import subprocess
    import sys

    from synth_sod.data_generation.module_entry import step_argv

    assert step_argv("export", ["--x"])[1:] == ["-m", "synth_sod.data_generation", "export",
                                                "--x"]
    done = subprocess.run([sys.executable, "-m", "synth_sod.data_generation.export",
                           "--input_dir", str(tmp_path / "missing"), "--output_dir",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "input folder not found" in done.stderr and "Traceback" not in done.stderr
