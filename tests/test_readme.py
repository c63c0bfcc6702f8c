"""The README tells the truth: every command it quotes names a module, subcommand, flags and files that exist, and
the examples whose output it shows print that output (offline ones run here; the ViT-B-32 example needs a
download, so its output format is checked with the packaged model; the GPT example's numbers belong to the packaged
GPT's own test)."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
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
    inline = [c.replace("\n", " ") for c in re.findall(r"`(python -m [^`]+)`", README)]  # may wrap a line
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S) + inline
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


# -- every quoted command runs ------------------------------------------------------------------------------------
# Each command of the README either runs below, in a fresh folder holding the inputs it names, with its shown
# output compared, or is skipped here with the reason (a training of minutes, a download, a server). A new command
# in the README fails test_every_command_is_run_or_skipped_with_a_reason until it is placed in one of the two.

SKIPPED = {  # command prefix -> why it is not run by the tests
    "multimodal.demo build": "trains every demo model (hours)",
    "multimodal.demo": "the demo on the packaged models takes 30 s to minutes; tests/test_demo.py runs it on tiny models",
    "multimodal.train fit --config configs/gpt/tiny.yaml --print_config": "",  # run below
    "multimodal.train fit --config configs/gpt/finetune-compare.yaml": "",  # run below (its missing checkpoint)
    "multimodal.train": "a training run (1.5 to 45 minutes); tests/test_train_gpt.py trains tiny.yaml for 60 steps",
    "multimodal.generate 12+35= --checkpoint runs/gpt-tiny/export": "needs the 1.5-minute tiny.yaml training run",
    "multimodal.scaling": "trains or scores a sweep of GPTs (minutes)",
    "data.bpe --out data/tokenizers/tasks": "rewrites the shipped tokenizer from 100000 documents (20 s); "
    "tests/test_gpt_knowledge.py runs data.bpe on 2000 and checks the shipped one",
    "multimodal.fewshot --checkpoint runs/": "needs the 20-minute configs/gpt/tasks*.yaml trainings",
    "multimodal.serve": "a server: tests/test_serve.py runs it",
    "clip.zeroshot --labels cat,dog image.jpg": "downloads ViT-B-32 weights",
    "clip.zeroshot --model ViT-B-32": "needs ViT-B-32 weights (a download); its output format is compared below",
    "clip.openclip import": "needs open_clip's ViT-B-16 weights (a download)",
    "dalle.vae convert": "needs OpenAI's released dVAE pickles (a download)",
    "dalle.vae tokenize --checkpoint runs/": "needs the 43-minute configs/vae/shapes.yaml run; run below with dalle",
    "dalle.evaluate --markdown": "2 minutes per split on the packaged models",
    "dalle.evaluate --objects 2": "2 minutes per split on the packaged models",
    "dalle.evaluate --checkpoint runs/": "needs the shapes configs' trainings (minutes to 45 minutes each)",
    "dalle.evaluate --vae runs/": "needs the 43-minute configs/vae/shapes.yaml run",
    "dalle.evaluate --vae dalle": "512 reconstructions per split (a minute)",
    "dalle.evaluate": "",  # the bare module name in prose
    "clip.evaluate --checkpoint clip": "",  # run below
    "clip.binding": "1000 two-object scenes on a trained CLIP (a minute); tests/test_binding.py runs it on a tiny CLIP",
}


def _skip_reason(command: list[str]) -> str | None:
    line = shlex.join(command)
    for prefix in sorted(SKIPPED, key=len, reverse=True):  # the longest prefix decides
        if line.startswith(prefix):
            return SKIPPED[prefix] or None
    return None


def _run(command: list[str], capsys) -> tuple[int, str, str]:
    """``python -m MODULE ARGS`` in this process (the module's main); exit code, stdout, stderr."""
    module, args = command[0], command[1:]
    mod = importlib.import_module(ENTRY_POINTS.get(module, module))
    try:
        code = mod.main(args)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code or 0, out, err


def _shown_output(command_text: str) -> str | None:
    """The ``# ...`` line the README prints right under a command, if any."""
    m = re.search(re.escape(command_text) + r"[^\n]*\n# ([^\n]*)", README)
    return m.group(1) if m else None


def _command(prefix: str) -> list[str]:
    matches = [c for c in COMMANDS if shlex.join(c).startswith(prefix)]
    assert matches, f"the README no longer quotes {prefix!r}"
    return matches[0]


def _gpt2(gpt2_dir: Path, where: Path) -> None:
    (where / "path/to").mkdir(parents=True, exist_ok=True)
    (where / "path/to/hf-gpt2").symlink_to(gpt2_dir, target_is_directory=True)


def _write_red_circle(where: Path) -> None:
    (where / "tests/data").mkdir(parents=True, exist_ok=True)
    (where / "tests/data/red_circle.png").write_bytes((ROOT / "tests/data/red_circle.png").read_bytes())


def _render(objects: list[dict], path: Path) -> None:
    from data.shapes import render

    path.parent.mkdir(parents=True, exist_ok=True)
    render(objects).save(path)


def _tiny_gpt_export(where: Path) -> None:
    from multimodal.checkpoint import save_export
    from multimodal.gpt import GPT, GPTConfig

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=257, context_length=64, backbone={"width": 32, "layers": 2, "heads": 4}))
    save_export(model, where / "runs/gpt-tiny/export")


def test_every_command_is_run_or_skipped_with_a_reason():
    ran = {prefix for prefix, _ in RUNS}
    for command in COMMANDS:
        line = shlex.join(command)
        if _skip_reason(command) is None:
            assert any(line.startswith(p) for p in ran) or line.endswith(("--help", "--json")) or len(command) < 3, (
                f"README command not run by tests/test_readme.py nor skipped with a reason: {line}"
            )


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_red_circle(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    return tmp_path


def test_gpt_examples(workdir, gpt2_dir, capsys):
    """--stop "\n" stops at the end of the line; the Hugging Face GPT-2 examples run on a GPT-2 directory."""
    # the shell's $'...' gives real newlines; shlex read it as '$...' with backslash-n: run what bash passes
    command = _command("multimodal.generate '$salad => saladra")
    prompt = command[1][1:].replace("\\n", "\n")
    code, out, _ = _run(["multimodal.generate", prompt, *command[2:]], capsys)
    assert code == 0 and command[command.index("--stop") + 1] == "\\n"
    assert out.startswith(prompt) and "\n" not in out.rstrip("\n")[len(prompt) :]  # stopped at the line's end
    _gpt2(gpt2_dir, workdir)
    code, out, _ = _run(_command("multimodal.generate 'Once upon a time'"), capsys)
    record = json.loads(out)
    assert code == 0 and record["prompt"] == "Once upon a time" and "\n" not in record["completion"]
    code, out, _ = _run(_command("multimodal.score 'the cat sat on the mat'"), capsys)
    assert code == 0 and {"total_logprob", "perplexity"} <= set(json.loads(out))


def test_training_examples_that_run_in_seconds(workdir, capsys):
    """``--print_config`` prints the resolved config; the fine-tuning config without its pre-trained GPT is the
    one ``error:`` line and exit code 2 the README promises for a missing checkpoint."""
    code, out, _ = _run(_command("multimodal.train fit --config configs/gpt/tiny.yaml --print_config"), capsys)
    assert code == 0 and "default_root_dir: runs/gpt-tiny" in out and "class_path: multimodal.gpt.lm.GPTModule" in out
    # as a user runs it (in-process, Lightning's log handler would write to an earlier test's closed stream)
    command = _command("multimodal.train fit --config configs/gpt/finetune-compare.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, env=env, timeout=300)
    code, err = r.returncode, r.stderr
    errors = [line for line in err.splitlines() if line.strip() and not line.startswith("Seed set")]
    assert code == 2 and errors == ["error: runs/gpt-tasks/export: no such file or directory"], err[-2000:]
    assert "Traceback" not in err


def test_clip_examples(workdir, capsys):
    code, out, err = _run(_command("clip.zeroshot --model shapes"), capsys)
    assert code == 0 and out.strip() == _shown_output("tests/data/red_circle.png   # the packaged demo model, offline")
    # the ViT-B-32 example's output, in form: the same flags on the packaged model (its weights are a download)
    vit = _command("clip.zeroshot --model ViT-B-32")
    shown = json.loads(re.search(r"\n# (\{\"image\": \"image.jpg\".*?\})\s", README).group(1))
    args = [a for a in vit[1:] if a not in ("ViT-B-32", "open_clip_weights.bin", "--checkpoint")]
    _render([{"shape": "circle", "color": "red", "size": "large", "position": "center"}], workdir / "image.jpg")
    code, out, _ = _run(["clip.zeroshot", "--model", "shapes", *args[1:]], capsys)
    got = json.loads(out)
    assert code == 0 and got["image"] == shown["image"] and len(got["probs"]) == len(shown["probs"]) == 1
    for label, shape, color in (("red_circle", "circle", "red"), ("blue_square", "square", "blue")):
        for i, position in enumerate(("center", "top left")):
            obj = {"shape": shape, "color": color, "size": "large", "position": position}
            _render([obj], workdir / "val_images" / label / f"{i}.png")
    code, out, _ = _run(_command("clip.evaluate --checkpoint clip val_images/"), capsys)
    assert code == 0 and json.loads(out)["zeroshot"]["top1"] == 1.0
    assert (
        _run(["data.shapes", "--out", "shards/", "--split", "val", "--count", "80", "--shard-size", "20"], capsys)[0]
        == 0
    )
    code, out, _ = _run(_command("clip.evaluate --checkpoint clip --retrieval"), capsys)
    assert code == 0 and "image to text: R@1" in out and "(80 pairs)" in out
    # the shapes-world table's CLIP row: its command pair, on fewer images (the quoted 1000 take a minute)
    shapes_cmd = _command("data.shapes --out shards/ --split heldout --count 1000")
    count = shapes_cmd.index("--count") + 1
    assert _run([*shapes_cmd[:count], "100", *shapes_cmd[count + 1 :]], capsys)[0] == 0
    code, out, _ = _run(_command("clip.evaluate --checkpoint clip --labels shapes"), capsys)
    assert code == 0 and out.startswith("zero-shot: top-1 ") and "(100 images, " in out
    code, _, _ = _run(_command("multimodal.export --checkpoint clip --format open_clip"), capsys)
    assert code == 0
    (workdir / "exported-open-clip").symlink_to(workdir / "runs/clip-open-clip", target_is_directory=True)
    _render([{"shape": "circle", "color": "red", "size": "large", "position": "center"}], workdir / "img.png")
    code, out, _ = _run(_command("clip.zeroshot --checkpoint exported-open-clip/"), capsys)
    assert code == 0 and out.startswith("img.png: ")


def test_dalle_examples(workdir, capsys):
    code, out, _ = _run(_command("dalle.sample 'a large red circle in the top left' --checkpoint dalle"), capsys)
    result = json.loads(out)
    assert code == 0 and (workdir / "grid.png").is_file() and len(result["images"]) == 4
    # --out into folders that do not exist yet: created (checked writable before sampling)
    code, out, _ = _run(
        ["dalle.sample", "a red circle", "--num", "2", "--no-progress", "--out", "new/dir/g.png"], capsys
    )
    assert code == 0 and (workdir / "new/dir/g.png").is_file()
    code, out, _ = _run(_command("dalle.sample 'a large red circle' --image-prompt"), capsys)
    assert code == 0 and len(list((workdir / "samples").glob("*.png"))) >= 1
    code, out, _ = _run(_command("dalle.vae reconstruct --checkpoint dalle"), capsys)
    assert code == 0 and "dB" in out and (workdir / "recon.png").is_file()
    # tokenize, through the DALL·E's tokenizer, the quoted train shards (fewer images in the same 20 shard names)
    shapes_cmd = _command("data.shapes --out shards/ --split train")
    count = shapes_cmd.index("--count") + 1
    assert _run([*shapes_cmd[:count], "200", *shapes_cmd[count + 1 :], "--shard-size", "10"], capsys)[0] == 0
    tokenize = _command("dalle.vae tokenize")
    code, out, err = _run([*tokenize[:3], "dalle", *tokenize[4:]], capsys)
    assert code == 0 and len(list((workdir / "codes").glob("*.tar"))) == 20, err
    # the judge on DALL·E's drawings (image.png + image.txt)
    (workdir / "generated").mkdir()
    for i, png in enumerate(sorted((workdir / "samples").glob("*.png"))):
        (workdir / "generated" / f"{i}.png").write_bytes(png.read_bytes())
        (workdir / "generated" / f"{i}.txt").write_text("a large red circle")
    code, out, _ = _run(_command("data.judge --checkpoint judge generated/"), capsys)
    assert code == 0 and json.loads(out)["images"] == len(list((workdir / "samples").glob("*.png")))


def test_data_shards_example(workdir, capsys):
    for i, color in enumerate(("red", "blue")):
        _render(
            [{"shape": "circle", "color": color, "size": "large", "position": "center"}], workdir / f"images/{i}.png"
        )
    (workdir / "captions.csv").write_text("path,caption\n0.png,a red circle\n1.png,a blue circle\n")
    code, out, err = _run(_command("data.shards --out shards/ --captions captions.csv images/"), capsys)
    assert code == 0 and list((workdir / "shards").glob("*.tar")), err


def test_packaged_gpt_examples_print_what_the_readme_shows(workdir, capsys):
    """The seed's prompt, a made-up word read from the prompt and a fact in prose, each compared with the line the
    README prints under it (or beside it); the no-flags command samples, so it runs here with a fixed seed."""
    for prefix in (
        "multimodal.generate 'sky = ciel; dog = chien; cat = chat; children =' --temperature",
        "multimodal.generate 'blor",
    ):
        command = _command(prefix)
        code, out, _ = _run(command, capsys)
        shown = _shown_output(shlex.join(command).split(" ", 1)[1].split(" --")[0].strip("'"))
        assert code == 0 and shown is not None and out.strip() == shown.split("   ")[0].strip(), (out, shown)
    code, out, _ = _run(_command("multimodal.generate 'The German for house is'"), capsys)
    assert code == 0 and out.strip() == "The German for house is Haus"
    bare = [c for c in COMMANDS if c == ["multimodal.generate", "sky = ciel; dog = chien; cat = chat; children ="]]
    assert bare, "the README no longer quotes the seed's prompt with no flags"
    firsts = []
    for seed in range(20):  # the README: 96 of 100 seeds start with enfants / enfant
        code, out, _ = _run([*bare[0], "--seed", str(seed), "--max-tokens", "3"], capsys)
        firsts.append(code == 0 and out[len(bare[0][1]) :].replace(";", " ").split()[:1] in (["enfants"], ["enfant"]))
    assert sum(firsts) >= 18, firsts
    code, out, _ = _run([*_command("multimodal.fewshot --tasks dictionary"), "--n", "5", "--json"], capsys)
    assert code == 0 and set(json.loads(out)["accuracy"]) == {"french", "spanish", "german"}


def test_fewshot_example(workdir, capsys):
    """The packaged GPT on the in-context tasks (5 queries per task here: the default 100 take a minute)."""
    code, out, _ = _run([*_command("multimodal.fewshot --tasks incontext"), "--n", "5"], capsys)
    accuracy = json.loads(out)["accuracy"]
    from data.tasks import GROUPS

    assert code == 0 and (workdir / "acc.png").is_file() and set(accuracy) == set(GROUPS["incontext"])


def test_export_examples(workdir, capsys):
    _tiny_gpt_export(workdir)
    code, _, err = _run(_command("multimodal.export --checkpoint runs/gpt-tiny/export --format hf"), capsys)
    assert code == 0 and (workdir / "runs/gpt-hf/config.json").is_file(), err


RUNS = [  # (command prefix, the test that runs it)
    ("multimodal.generate '$salad", test_gpt_examples),
    ("multimodal.generate 'Once upon a time'", test_gpt_examples),
    ("multimodal.score 'the cat sat", test_gpt_examples),
    ("multimodal.generate 'sky = ciel", test_packaged_gpt_examples_print_what_the_readme_shows),
    ("multimodal.generate 'blor", test_packaged_gpt_examples_print_what_the_readme_shows),
    ("multimodal.generate 'The German for house is'", test_packaged_gpt_examples_print_what_the_readme_shows),
    ("multimodal.fewshot --tasks dictionary", test_packaged_gpt_examples_print_what_the_readme_shows),
    ("multimodal.fewshot --tasks incontext", test_fewshot_example),
    ("multimodal.train fit --config configs/gpt/tiny.yaml --print_config", test_training_examples_that_run_in_seconds),
    ("multimodal.train fit --config configs/gpt/finetune-compare.yaml", test_training_examples_that_run_in_seconds),
    ("clip.zeroshot --model shapes", test_clip_examples),
    ("clip.zeroshot --checkpoint exported-open-clip/", test_clip_examples),
    ("clip.evaluate", test_clip_examples),
    ("data.shapes", test_clip_examples),
    ("multimodal.export --checkpoint clip", test_clip_examples),
    ("dalle.sample", test_dalle_examples),
    ("dalle.vae reconstruct", test_dalle_examples),
    ("dalle.vae tokenize", test_dalle_examples),
    ("data.judge", test_dalle_examples),
    ("data.shards", test_data_shards_example),
    ("multimodal.export --checkpoint runs/gpt-tiny/export", test_export_examples),
]
