"""The layout shows the dependency direction: a test parses every import and fails on a wrong-way arrow.

core (``multimodal/`` minus the GPT head and the applications) imports no head and not ``data``; ``data``
imports no head; ``clip`` imports neither the GPT head nor ``dalle``; the GPT head imports neither ``clip`` nor
``dalle``; ``dalle`` may import ``clip`` (the rerank) and the GPT head (the warm start); nothing imports the
applications (the demo, the service, the exporter, the CLI aliases). The README's layout table says the same
(``tests/test_readme_layout.py`` compares the two).
"""

from __future__ import annotations

import ast
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
