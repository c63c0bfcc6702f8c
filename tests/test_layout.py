"""The layout shows the dependency direction: a test parses every import and fails on a wrong-way arrow.

core (``multimodal/`` minus the GPT head and the applications) imports no head and not ``data``; ``data``
imports no head; ``clip`` imports neither the GPT head nor ``dalle``; the GPT head imports neither ``clip`` nor
``dalle``; ``dalle`` may import ``clip`` (the rerank) and the GPT head (the warm start); nothing imports the
applications (the demo, the service, the exporter, the CLI aliases). The README's layout table says the same
(``tests/test_readme_layout.py`` compares the two).

The core does not name a head either, not even in a string (``importlib.import_module("clip.model")`` is an
arrow the import check cannot see): the heads register themselves (``multimodal/registry.py``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("multimodal", "clip", "dalle", "data")
# Modules that combine heads or only forward to one: they may import anything, nothing imports them.
APPLICATIONS = (
    "multimodal.demo",
    "multimodal.serve",
    "multimodal.export",
    "multimodal.generate",
    "multimodal.score",
    "multimodal.fewshot",
    "multimodal.scaling",
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module.startswith(APPLICATIONS):
        return "application"
    if module.startswith("multimodal.gpt"):
        return "gpt"
    return module.split(".")[0].replace("multimodal", "core")


def imports(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, at top level or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from multimodal import images` imports multimodal.images
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


# (importer layer, imported layer) pairs that point the wrong way.
FORBIDDEN = {
    ("core", "gpt"),
    ("core", "clip"),
    ("core", "dalle"),
    ("core", "data"),
    ("data", "gpt"),
    ("data", "clip"),
    ("data", "dalle"),
    ("clip", "gpt"),
    ("clip", "dalle"),
    ("gpt", "clip"),
    ("gpt", "dalle"),
}


def resolve(name: str, modules: set[str]) -> str:
    # `from multimodal import load` names a function, not a module: judge by the module it lives in
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def wrong_way_arrows(root: Path = ROOT) -> list[str]:
    modules = {module_name(p, root) for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    out = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            src = layer(module_name(path, root))
            for target in sorted({resolve(t, modules) for t in imports(path)}):
                dst = layer(target)
                if (src, dst) in FORBIDDEN or (dst == "application" and src != "application"):
                    out.append(f"{path.relative_to(root).as_posix()} ({src}) imports {target} ({dst})")
    return out


def test_no_import_points_the_wrong_way():
    assert wrong_way_arrows() == []


def test_the_checker_sees_wrong_way_arrows(tmp_path):
    files = {
        "multimodal/__init__.py": "",
        "multimodal/sampling.py": "def f():\n    from dalle.model import DALLE  # inside a function: still an arrow\n",
        "multimodal/demo.py": "import clip.model\nimport dalle.model\n",  # an application may combine heads
        "multimodal/gpt/__init__.py": "",
        "multimodal/gpt/model.py": "from multimodal import sampling\n",
        "clip/__init__.py": "",
        "clip/loss.py": "import multimodal.gpt.model\n",
        "clip/model.py": "from multimodal.demo import x\n",
        "dalle/__init__.py": "",
        "dalle/model.py": "from multimodal.gpt import model\n",  # a head on the GPT head: allowed
        "data/__init__.py": "",
        "data/judge.py": "from multimodal.gpt.model import GPT\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert wrong_way_arrows(tmp_path) == [
        "multimodal/sampling.py (core) imports dalle.model (dalle)",
        "clip/loss.py (clip) imports multimodal.gpt.model (gpt)",
        "clip/model.py (clip) imports multimodal.demo (application)",
        "data/judge.py (data) imports multimodal.gpt.model (gpt)",
    ]


# A dotted module path (``clip.openclip``) or a file path (``data/tasks.py``, ``multimodal/gpt/``) inside a string.
DOTTED = re.compile(r"(?<![\w.])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
SLASHED = re.compile(r"(?<![\w./])[A-Za-z_]\w*(?:/[A-Za-z_]\w*)+(?:\.py)?/?")


def named_modules(text: str, modules: set[str]) -> set[str]:
    """The modules of ours a string names: a dotted path or a file path that is one of ``modules`` (so the word
    "clip" in prose, or ``data.items()`` in an example, is not one)."""
    names = set(DOTTED.findall(text))
    names |= {m.removesuffix("/").removesuffix(".py").replace("/", ".") for m in SLASHED.findall(text)}
    return {n for n in names if n in modules}


def head_names_in_core_strings(root: Path = ROOT) -> list[str]:
    """Every string constant of a core module (docstrings and f-string parts too) that names a module of a head
    or of ``data``."""
    modules = {module_name(p, root) for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    modules |= {m.rsplit(".", 1)[0] for m in modules if "." in m}  # packages without an __init__ listed
    heads = {m for m in modules if layer(m) in ("gpt", "clip", "dalle", "data")}
    out = []
    for path in sorted((root / "multimodal").rglob("*.py")):
        if layer(module_name(path, root)) != "core":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for name in sorted(named_modules(node.value, heads)):
                    out.append(f"{path.relative_to(root).as_posix()}:{node.lineno} names {name}")
    return out


def test_no_core_string_names_a_head():
    assert head_names_in_core_strings() == []


def test_the_checker_sees_head_names_in_core_strings(tmp_path):
    files = {
        "multimodal/__init__.py": "",
        "multimodal/registry.py": 'KINDS = {"clip": "clip.model"}\n',
        "multimodal/packaged.py": 'NOTE = f"knows only data/tasks.py\'s world, {1}"\n',
        "multimodal/checkpoint.py": '"""Reads ``multimodal.gpt.hf`` directories."""\n',
        "multimodal/tokenizers.py": 'NAME = "clip"  # a tokenizer\'s name, not a module\nX = "data.items()"\n',
        "multimodal/demo.py": 'import importlib\nimportlib.import_module("dalle.model")  # an application\n',
        "multimodal/gpt/__init__.py": "",
        "multimodal/gpt/hf.py": 'LOADER = "multimodal.gpt.hf:load"  # a head names itself\n',
        "clip/__init__.py": "",
        "clip/model.py": "",
        "dalle/__init__.py": "",
        "dalle/model.py": "",
        "data/__init__.py": "",
        "data/tasks.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert head_names_in_core_strings(tmp_path) == [
        "multimodal/checkpoint.py:1 names multimodal.gpt.hf",
        "multimodal/packaged.py:1 names data.tasks",
        "multimodal/registry.py:1 names clip.model",
    ]
