"""The README tells the truth: every command it quotes names a module, subcommand, flags and files that exist, and
the examples whose output it shows print that output (offline ones run here; the ViT-B-32 example needs a
download, so its output format is checked with the packaged model; the GPT example's numbers belong to the packaged
GPT's own test)."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# modules whose first argument is a subcommand (its own --help lists its flags)
SUBCOMMANDS = {"dalle.vae": "dalle.vae.cli", "clip.openclip": "clip.openclip", "multimodal.demo": "multimodal.demo"}
# packages whose `python -m` runs a main() that lives in a submodule
ENTRY_POINTS = {**SUBCOMMANDS, "multimodal.serve": "multimodal.serve.cli"}


def readme_commands() -> list[list[str]]:
    """``python -m ...`` commands in the README's bash blocks and inline code, as argument lists."""
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S) + re.findall(r"`(python -m [^`]+)`", README)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():  # a trailing backslash continues the command
            line = line.split("  #")[0].strip()
            for part in re.split(r"\s&&\s", line):
                part = part.strip()
                if part.startswith(("python -m ", "srun python -m ")) and not part.startswith("python -m pytest"):
                    commands.append(shlex.split(part.removeprefix("srun "))[2:])
    return commands


COMMANDS = readme_commands()


def help_text(module: str, sub: str | None, capsys) -> str:
    name = ENTRY_POINTS.get(module, module)
    mod = importlib.import_module(name)
    with pytest.raises(SystemExit) as e:
        mod.main([sub, "--help"] if sub else ["--help"])
    assert e.value.code in (0, None)
    return capsys.readouterr().out


def test_the_readme_quotes_commands():
    modules = {c[0] for c in COMMANDS}
    assert {"multimodal.train", "multimodal.generate", "clip.zeroshot", "dalle.sample", "data.judge"} <= modules


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_quoted_command_uses_real_flags_and_files(command, capsys):
    module, args = command[0], command[1:]
    if module == "multimodal.train":  # a LightningCLI: its flags come from the config; the configs must exist
        for i, a in enumerate(args):
            if a == "--config":
                assert (ROOT / args[i + 1]).is_file(), args[i + 1]
        return
    sub = args[0] if module in SUBCOMMANDS and args and not args[0].startswith("-") else None
    text = help_text(module, sub, capsys)
    for a in args:
        if a.startswith("--"):
            assert re.search(rf"{re.escape(a.split('=')[0])}\b", text), f"{module} {sub or ''}: no flag {a}"
    for a in args:
        if a.startswith("configs/"):
            assert (ROOT / a).is_file(), a


def test_the_resume_line_names_the_file_the_config_writes():
    """The README's resume path is Lightning's layout for configs/gpt/tiny.yaml (its ModelCheckpoint saves
    ``last.ckpt`` periodically; tests/test_train_gpt.py resumes from that very path)."""
    resume = next(c for c in COMMANDS if c[0] == "multimodal.train" and any(a.startswith("--ckpt_path") for a in c))
    path = resume[resume.index("--ckpt_path") + 1]
    assert path == "runs/gpt-tiny/lightning_logs/version_0/checkpoints/last.ckpt"
    config = (ROOT / "configs/gpt/tiny.yaml").read_text()
    assert "default_root_dir: runs/gpt-tiny" in config and "save_last: true" in config
    assert "every_n_train_steps" in config


def _red_circle(path: Path) -> Path:
    from data.shapes import render

    render([{"shape": "circle", "color": "red", "size": "large", "position": "center"}]).save(path)
    return path


def test_zeroshot_shapes_example_prints_what_the_readme_shows(tmp_path, capsys, monkeypatch):
    from clip.zeroshot import main

    shown = re.search(r"--labels \"red circle,blue square\" img.png[^\n]*\n# (img.png: .*)", README)
    assert shown, "the README shows the output of the shapes zero-shot example"
    monkeypatch.chdir(tmp_path)
    _red_circle(tmp_path / "img.png")
    assert main(["--model", "shapes", "--labels", "red circle,blue square", "img.png"]) == 0
    out, err = capsys.readouterr()
    pattern = r"img.png: red circle ([01]\.\d{3}), blue square ([01]\.\d{3})"
    want, got = re.fullmatch(pattern, shown.group(1)), re.fullmatch(pattern, out.strip())
    assert want and got, out
    assert float(got.group(1)) > 0.9 and abs(float(got.group(1)) - float(want.group(1))) < 0.05
    assert "knows only the synthetic shapes world" in err


def test_zeroshot_json_example_has_the_shown_format(tmp_path, capsys, monkeypatch):
    """The ViT-B-32 example downloads its weights; the same flags on the packaged model print the same form."""
    from clip.zeroshot import main

    shown = json.loads(re.search(r"\n# (\{\"image\": \"image.jpg\".*\})\n", README).group(1))
    monkeypatch.chdir(tmp_path)
    _red_circle(tmp_path / "image.jpg")
    args = ["--model", "shapes", "--labels", "cat,dog", "--template", "a photo of a {}.", "--top-k", "1", "--json"]
    assert main([*args, "image.jpg"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == set(shown) and got["image"] == shown["image"] and len(got["probs"]) == 1


def test_dalle_sample_example_writes_dalle_png_in_the_working_directory(tmp_path, capsys, monkeypatch):
    from dalle.sample import main

    assert 'python -m dalle.sample "a red circle in the top left"' in README
    monkeypatch.chdir(tmp_path)
    assert main(["a red circle in the top left", "--num", "2", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "dalle.png").is_file() and "written to dalle.png" in out
    assert "knows only the synthetic shapes world" in err
    assert "/dalle.png" in (ROOT / ".gitignore").read_text().split()


def test_the_test_command_prints_its_summary_and_skip_reasons():
    """``python -m pytest -q`` (the README's and CI's command): addopts must not add another -q (that hides the
    "N passed" line) and must show why a test was skipped (-rs)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    assert "-q" not in addopts.split() and "-rs" in addopts.split()
    assert "python -m pytest -q" in (ROOT / ".ci/run").read_text()
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert any(d.startswith("dall-e") for d in test_extra)  # the dVAE parity tests run on the README's install


def test_timings_say_where_they_were_measured():
    """The demo's time is a measurement with its place (it took 10 s to 6 min on one shared machine), not a promise."""
    flat = " ".join(README.split())
    demo = re.search(r"Offline, on a CPU[^.]*\.[^.]*\.", flat).group(0)
    assert "measured on" in demo and re.search(r"\d+ s", demo), demo
    for claim in re.findall(r"[^.]*\bin about \d+ s(?:econds)?[^.]*", flat):
        assert "measured" in claim or "machine" in claim, claim
