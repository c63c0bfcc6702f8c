"""Our own mutation check: for each behaviour the README promises, a mutant that removes it (the code path kept,
its effect gone) must make the tests written for it fail.

Each mutant edits the source of a fresh copy of the repository (a regular expression over the files a glob names,
which must match), and the targeted tests run there in a subprocess, the copy first on ``PYTHONPATH`` so that the
servers and training runs those tests start import the mutant too. A mutant that no longer matches the code (the
code moved or was renamed) fails here by name: point it at the new code, never delete it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COPIED = ["multimodal", "clip", "dalle", "data", "tests", "configs", "pyproject.toml", "README.md"]


@dataclass(frozen=True)
class Mutant:
    promise: str  # what the README promises, which the mutant removes
    files: str  # glob (relative to the repository root) of the files to edit
    pattern: str  # regular expression (re.M) matched at least once in those files ...
    replacement: str  # ... and replaced everywhere by this
    tests: tuple[str, ...]  # node ids: every one must fail under the mutant


MUTANTS = [
    Mutant(
        "resume: --ckpt_path is checked, then dropped (the run starts over from step 0)",
        "multimodal/train.py",
        r"^(\s+)cli\(argv\)$",
        r'\1cli([a for a in argv if not a.startswith("--ckpt_path")])',
        ("tests/test_faults.py::test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_weights",),
    ),
    Mutant(
        "precision: --precision is validated, then the models stay in fp32",
        "multimodal/cli.py",
        r"\Z",
        "\n\n_checked_precision = resolve_precision\n\n\n"
        "def resolve_precision(name, device):\n"
        "    _checked_precision(name, device)\n"
        "    return torch.float32\n",
        (
            "tests/test_precision.py::test_gpt_clis_run_in_half_precision[bf16-dtype0]",
            "tests/test_precision.py::test_clip_and_dalle_clis_in_bf16",
        ),
    ),
    Mutant(
        "EXIF orientation: the image reader ignores the tag",
        "multimodal/images.py",
        r"ImageOps\.exif_transpose\((\w+)\)",
        r"\1",
        (
            "tests/test_images.py::test_exif_rotation_palette_16_bit_and_cmyk",
            "tests/test_reliability.py::test_judge_reads_gif_exif_and_transparency_like_every_tool",
        ),
    ),
    Mutant(
        "zero-shot: only the first of the 80 ImageNet templates is used",
        "clip/pipeline.py",
        r"else imagenet_templates\(\)",
        "else imagenet_templates()[:1]",
        ("tests/test_clip_zeroshot.py::test_default_is_the_80_template_ensemble_computed_by_hand",),
    ),
    Mutant(
        "seeded sampling: the generator is seeded from the clock, not from --seed",
        "multimodal/sampling.py",
        r"\.manual_seed\(reduce_seed\(seed\)\)",
        ".seed()",
        (
            "tests/test_gpt.py::test_seed_reproducible_and_top_k_1_is_greedy",
            "tests/test_dalle_sample.py::test_same_seed_same_png_bytes_and_progress_bar",
            "tests/test_generation.py::test_a_seed_beyond_64_bits_samples_the_same_through_generate_and_the_service",
        ),
    ),
    Mutant(
        "stop strings: generation ignores them",
        "multimodal/generation.py",
        r"\bstop_at = \[text\.find\(s\) for s in self\.stops if s and s in text\]",
        "stop_at = []",
        (
            "tests/test_gpt.py::test_stop_string_cuts_output",
            "tests/test_generation.py::test_greedy_text_and_logprobs_agree_through_generate_fewshot_and_the_service",
        ),
    ),
    Mutant(
        "the service's errors: FastAPI's {'detail': ...} instead of OpenAI's {'error': {...}}",
        "multimodal/serve/*.py",
        r"""(["'])error\1:\s*\{""",
        '"detail": {',
        ("tests/test_serve_promises.py::test_max_tokens_and_max_n_are_limits_in_openai_error_json",),
    ),
    Mutant(
        "scaling: the sweep never takes an optimizer step (its models stay untrained)",
        "multimodal/gpt/scaling.py",
        r"^(\s+)opt\.step\(\)$",
        r"\1pass",
        ("tests/test_scaling.py::test_two_sizes_write_png_csv_json",),
    ),
]


def mutated_copy(mutant: Mutant, to: Path) -> Path:
    """The repository's sources copied to ``to`` with the mutant applied; fails when its pattern matches nothing."""
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, to / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, to / name)
    edited = 0
    for path in sorted(to.glob(mutant.files)):
        source = path.read_text()
        new, n = re.subn(mutant.pattern, mutant.replacement, source, flags=re.M)
        if n:
            path.write_text(new)
            edited += n
    assert edited, f"mutant {mutant.promise!r}: /{mutant.pattern}/ matches nothing in {mutant.files}: update it"
    return to


@pytest.mark.slow
@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.promise.split(":")[0] for m in MUTANTS])
def test_the_tests_of_a_promise_fail_when_it_is_removed(mutant, tmp_path):
    root = mutated_copy(mutant, tmp_path / "repo")
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-o", "addopts=", *mutant.tests]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert "no tests ran" not in out and "ERROR: not found" not in out, out[-3000:]  # every node id still exists
    survivors = [t for t in mutant.tests if f"FAILED {t}" not in out]  # failed, not errored in a fixture
    assert r.returncode == 1 and not survivors, f"{mutant.promise}: {survivors} pass under it\n{out[-3000:]}"
