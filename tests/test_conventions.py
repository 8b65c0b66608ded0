"""House rules that a linter does not check, read from the source with ``ast``.

* Loggers are named after their module (``logging.getLogger(__name__)``), so a user can tune
  ``s3od.hub`` apart from ``s3od.serving`` and the package logger still covers both.
* Library code reports through logging, not ``print``: only command-line modules (``cli``
  packages and modules) and a module's ``main()`` entry point print.
* Every ``type: ignore`` names the error code it silences.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
FILES = sorted(p for pkg in ("s3od", "synth_sod") for p in (SRC / pkg).rglob("*.py"))


def _module(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


def _is_cli(module: str) -> bool:
    return any(part == "cli" for part in module.split("."))


def _calls(tree: ast.AST, inside: tuple[str, ...] = ()) -> list[tuple[ast.Call, tuple[str, ...]]]:
    """Every call with the names of the functions enclosing it."""
    out = []
    for node in ast.iter_child_nodes(tree):
        scope = inside
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            scope = (*inside, node.name)
        if isinstance(node, ast.Call):
            out.append((node, inside))
        out.extend(_calls(node, scope))
    return out


def logger_names(source: str) -> list[str]:
    """Literal names passed to ``getLogger`` (``__name__`` and variables are fine)."""
    return [call.args[0].value for call, _ in _calls(ast.parse(source))
            if isinstance(call.func, ast.Attribute | ast.Name)
            and getattr(call.func, "attr", getattr(call.func, "id", "")) == "getLogger"
            and call.args and isinstance(call.args[0], ast.Constant)]


def stray_prints(source: str, module: str) -> list[int]:
    """Lines of ``print(...)`` outside CLI modules and ``main()`` functions."""
    if _is_cli(module):
        return []
    return [call.lineno for call, scope in _calls(ast.parse(source))
            if isinstance(call.func, ast.Name) and call.func.id == "print"
            and "main" not in scope]


def bare_type_ignores(source: str) -> list[int]:
    comments = (t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type == tokenize.COMMENT)
    return [t.start[0] for t in comments if re.search(r"type:\s*ignore(?!\[)", t.string)]


def test_rules_catch_what_they_should():
    source = ("import logging\nlog = logging.getLogger('s3od')\nok = logging.getLogger(__name__)\n"
              "def f():\n    print('x')\ndef main():\n    print('y')\n"
              "a = 1  # type: ignore\nb = 2  # type: ignore[assignment]\n")
    assert logger_names(source) == ["s3od"]
    assert stray_prints(source, "s3od.hub") == [5]
    assert stray_prints(source, "s3od.cli.remove") == []
    assert bare_type_ignores(source) == [8]


def test_loggers_are_named_after_their_module():
    found = {_module(p): names for p in FILES if (names := logger_names(p.read_text()))}
    assert not found, found


def test_library_code_does_not_print():
    found = {_module(p): lines for p in FILES
             if (lines := stray_prints(p.read_text(), _module(p)))}
    assert not found, found


def test_every_type_ignore_names_its_error_code():
    found = {_module(p): lines for p in FILES if (lines := bare_type_ignores(p.read_text()))}
    assert not found, found
