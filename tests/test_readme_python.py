"""The README's Python API examples run as written (from the repository root, on the packaged models)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from multimodal.checkpoint import packaged_path

ROOT = Path(__file__).resolve().parents[1]
API = (ROOT / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
BLOCKS = re.findall(r"```python\n(.*?)```", API, flags=re.S)


def test_the_readme_has_one_example_per_head():
    code = "\n".join(BLOCKS)
    for call in (".classify(", ".generate_images(", ".generate("):
        assert call in code


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_example_runs(index, monkeypatch):
    code = BLOCKS[index]
    missing = [n for n in re.findall(r'multimodal\.load\("(\w+)"\)', code) if packaged_path(n) is None]
    assert not missing, f"packaged model(s) {missing} not in this checkout (python -m multimodal.demo build)"
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    if ".classify(" in code:
        assert "tensor([[" in out.getvalue()  # one row of probabilities per image
    if "circlera" in code:  # the GPT example prints what its comments say
        assert out.getvalue().split() == ["enfants", "circlera"]
