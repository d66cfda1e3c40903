"""Small pieces (STYLE.md rule 12): functions of at most 60 lines, modules of at most 400.

A function's length runs from its ``def`` line to its last line, docstring and
nested functions included. A module may be longer only when its docstring
says why, on a line that starts with ``Size:``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

from tests.conftest import REPO

FOLDERS = ("scheduler", "workers", "policies", "bench", "examples")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def sources(root: Path, folders: Iterable[str] = FOLDERS) -> list[Path]:
    return [path for folder in folders for path in sorted((root / folder).rglob("*.py"))]


def long_functions(path: Path, root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    where = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                found.append(f"{where}:{node.lineno} {node.name} is {lines} lines "
                             f"(at most {limit})")
    return sorted(found)


def long_module(path: Path, root: Path, limit: int = MAX_MODULE_LINES) -> str | None:
    text = path.read_text(encoding="utf-8")
    lines = len(text.splitlines())
    if lines <= limit:
        return None
    doc = ast.get_docstring(ast.parse(text, str(path))) or ""
    if any(line.strip().startswith("Size:") for line in doc.splitlines()):
        return None
    return (f"{path.relative_to(root).as_posix()} is {lines} lines (at most {limit}, or a "
            "'Size:' line in its docstring saying why)")


def test_no_function_is_longer_than_60_lines() -> None:
    found = [f for path in sources(REPO) for f in long_functions(path, REPO)]
    assert not found, f"{len(found)} offender(s):\n" + "\n".join(found)


def test_no_module_is_longer_than_400_lines_without_saying_why() -> None:
    found = [m for path in sources(REPO) if (m := long_module(path, REPO)) is not None]
    assert not found, f"{len(found)} offender(s):\n" + "\n".join(found)


def test_the_sources_include_every_folder() -> None:
    """A guard against a check that reads nothing."""
    found = {path.relative_to(REPO).parts[0] for path in sources(REPO)}
    assert found == set(FOLDERS)


def test_the_checks_catch_a_long_function_and_a_long_module(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(59))
    path = tmp_path / "pkg" / "mod.py"
    path.parent.mkdir()
    path.write_text(f'"""A module."""\n\n\ndef ok():\n{body}\n\ndef too_long():\n{body}'
                    "    return 1\n", encoding="utf-8")
    assert long_functions(path, tmp_path) == ["pkg/mod.py:66 too_long is 61 lines (at most 60)"]
    assert long_module(path, tmp_path) is None

    filler = "x = 1\n" * 400
    path.write_text(f'"""A module."""\n{filler}', encoding="utf-8")
    assert long_module(path, tmp_path) == ("pkg/mod.py is 401 lines (at most 400, or a 'Size:' "
                                           "line in its docstring saying why)")
    path.write_text(f'"""A module.\n\nSize: one table, kept whole.\n"""\n{filler}',
                    encoding="utf-8")
    assert long_module(path, tmp_path) is None
    path.write_text(f'"""A module; Size: not at a line\'s start."""\n{filler}', encoding="utf-8")
    assert long_module(path, tmp_path) is not None
