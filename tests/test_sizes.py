"""Sizes a reader can hold in their head: no file of the suite over 600 lines, no function over 80 lines.

A CLI's ``main`` (a function named ``main`` or ``main…``) is exempt: it is a flat list of flags and calls.
Lengths are measured with ``ast`` (``end_lineno - lineno + 1``, the ``def`` line to the last line of the body).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("multimodal", "clip", "dalle", "data", "bench")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def is_cli_main(name: str) -> bool:
    return name.startswith("main")


def oversized(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """One line per file or function over its limit, with where it is and how long it is."""
    out = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            text = path.read_text()
            where = path.relative_to(root).as_posix()
            lines = len(text.splitlines())
            if lines > MAX_FILE_LINES:
                out.append(f"{where}: file has {lines} lines (limit {MAX_FILE_LINES})")
            for node in ast.walk(ast.parse(text, str(path))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or is_cli_main(node.name):
                    continue
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(
                        f"{where}:{node.lineno}: function {node.name} has {length} lines (limit {MAX_FUNCTION_LINES})"
                    )
    return out


def test_no_file_or_function_is_over_its_limit():
    offenders = oversized()
    assert offenders == [], "split these by job:\n" + "\n".join(offenders)


def test_the_checker_sees_long_files_and_functions(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(80))  # with the def line: 81 lines
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "sub" / "long.py").write_text(
        f"def run():\n{body}\n\nclass A:\n    async def method(self):\n{body.replace('    ', '        ')}"
    )
    (tmp_path / "pkg" / "cli.py").write_text(f"def main():\n{body}\n\ndef main_build():\n{body}")  # CLIs: exempt
    (tmp_path / "pkg" / "ok.py").write_text(f"def fits():\n{body[: body.rindex('    x79')]}")  # 80 lines: fits
    (tmp_path / "pkg" / "big.py").write_text("x = 1\n" * 601)
    assert oversized(tmp_path, ("pkg",)) == [
        "pkg/big.py: file has 601 lines (limit 600)",
        "pkg/sub/long.py:1: function run has 81 lines (limit 80)",
        "pkg/sub/long.py:85: function method has 81 lines (limit 80)",
    ]
