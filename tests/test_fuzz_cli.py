"""A fuzz test per CLI: random flags and file contents (a fixed random corpus: the same cases every run) must give
exit 0 with valid output, or ``error:`` lines and a non-zero exit, never a traceback.

Each tool's ``main`` runs in-process (no interpreter start-up per case). Counts and sizes are drawn from small
pools so that a case that happens to be valid stays cheap. Not fuzzed here: ``multimodal.train`` beyond its
``--ckpt_path`` check (any valid draw would train), ``multimodal.scaling`` and ``multimodal.demo`` (each valid run
trains or renders for minutes). ``--flag=--`` is left out of the pools: Python 3.11's argparse turns that value into
an empty list before any tool sees it (fixed in later Pythons)."""

from __future__ import annotations

import importlib
import io
import json
import os
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from data import shapes
from multimodal.checkpoint import save_export
from multimodal.gpt import GPT, GPTConfig

CASES_PER_TOOL = 12
GOOD_SHARE = 0.6  # how often a value is drawn among a pool's valid ones (marked "+"): valid runs get fuzzed too
INTS = ["0", "-1", "+1", "+2", "abc", "", "1.5", "+99999999999999999999999"]
SMALL_INTS = ["0", "-1", "+1", "+2", "abc", ""]
FLOATS = ["+0", "-1", "+0.5", "+1", "nan", "inf", "-inf", "1e400", "x", ""]
TEXTS = ["", "+a red circle", "+1+1=", "\x00", "+" + "ü" * 300, "-", "+{}", "+a,b", "+a\\,b,c"]
DEVICES = ["+cpu", "+auto", "cuda:9", "potato", ""]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Named inputs, good and bad: checkpoints of each kind, damaged files, images, folders."""
    from dalle_helpers import dalle_export, tiny_clip_export
    from vae_helpers import blocks_images, shard_members, tiny_vae, write_shard

    from data.judge import JudgeModule

    root = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    f = {
        "GPT": save_export(
            GPT(GPTConfig(vocab_size=257, context_length=16, backbone={"width": 16, "layers": 1, "heads": 2})),
            root / "gpt",
        ),
        "DALLE": dalle_export(root / "dalle"),
        "CLIP": tiny_clip_export(root / "clip"),
        "JUDGE": save_export(JudgeModule(width=4).model, root / "judge"),
        "VAE": save_export(tiny_vae(), root / "vae"),
    }
    bad = root / "badcfg"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((f["GPT"] / "model.safetensors").read_bytes())
    (bad / "config.json").write_text(json.dumps({"kind": "gpt", "config": {"width": "wide", "layers": [1]}}))
    f["BADCFG"] = bad
    (root / "random.bin").write_bytes(random.Random(0).randbytes(3000))
    f["RANDOM"] = root / "random.bin"
    (root / "latin1.txt").write_bytes("caf\xe9 a red circle".encode("latin-1"))
    f["NONUTF8"] = root / "latin1.txt"
    (root / "empty").write_bytes(b"")
    f["EMPTY"] = root / "empty"
    f["MISSING"] = root / "does-not-exist"
    f["DIR"] = root / "dir"
    f["DIR"].mkdir()
    gen = root / "gen"
    gen.mkdir()
    for i in range(2):
        s = shapes.make_sample(0, "val", i, 1)
        s["image"].save(gen / f"{i}.png")
        (gen / f"{i}.txt").write_text(s["caption"])
    (gen / "bad.png").write_bytes(b"not a png")
    (gen / "bad.txt").write_text("a red circle")
    f["IMAGES"] = gen
    f["IMG"] = gen / "0.png"
    f["BADIMG"] = gen / "bad.png"
    cls = root / "cls" / "red_circle"
    cls.mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 0, 0)).save(cls / "x.png")
    f["CLASSES"] = root / "cls"
    f["SHARD"] = write_shard(root / "shards" / "s-000000.tar", shard_members(blocks_images(3)))
    cut = write_shard(root / "shards" / "s-000001.tar", shard_members(blocks_images(3)))
    cut.write_bytes(cut.read_bytes()[:1500])
    f["CUTSHARD"] = cut
    f["OUT"] = root / "out"
    return {k: str(v) for k, v in f.items()}


def good(pool: list[str], *valid: str) -> list[str]:
    """``pool`` with ``valid`` marked as the values a valid run uses."""
    return [f"+{v}" if v in valid else v for v in pool]


CHECKPOINTS = ["GPT", "DALLE", "CLIP", "JUDGE", "VAE", "BADCFG", "RANDOM", "EMPTY", "MISSING", "DIR"]
PATHS = ["IMG", "BADIMG", "IMAGES", "NONUTF8", "RANDOM", "MISSING", "DIR", "EMPTY"]

# tool -> (module, fixed leading args, required {flag: pool}, optional {flag: pool | None for a switch}, positionals)
TOOLS: dict[str, tuple] = {
    "generate": (
        "multimodal.gpt.generate",
        [],
        {"--checkpoint": good(CHECKPOINTS, "GPT")},
        {
            "--max-tokens": INTS,
            "--temperature": FLOATS,
            "--top-k": INTS,
            "--top-p": FLOATS,
            "--seed": INTS,
            "--num": SMALL_INTS,
            "--stop": TEXTS,
            "--device": DEVICES,
            "--json": None,
        },
        [TEXTS],
    ),
    "score": (
        "multimodal.gpt.score",
        [],
        {"--checkpoint": good(CHECKPOINTS, "GPT")},
        {"--file": PATHS, "--device": DEVICES, "--json": None, "--tokens": None},
        [TEXTS],
    ),
    "fewshot": (
        "multimodal.gpt.fewshot",
        ["--n", "2"],
        {"--checkpoint": good(CHECKPOINTS, "GPT")},
        {
            "--tasks": ["+add2", "nope", "", "NONUTF8", "RANDOM", "EMPTY", "+add2,reverse"],
            "--shots": ["+0", "+0,1", "-1", "x", "", "1,,2"],
            "--batch-size": SMALL_INTS,
            "--max-tokens": SMALL_INTS,
            "--json": None,
            "--no-progress": None,
        },
        [],
    ),
    "clip.zeroshot": (
        "clip.zeroshot",
        ["--no-progress"],
        {"--checkpoint": good(CHECKPOINTS, "CLIP")},
        {
            "--labels": TEXTS,
            "--labels-file": PATHS,
            "--template": ["+{}", "+a photo of {}", "{0} {1}", "{x}", "no braces", ""],
            "--top-k": SMALL_INTS,
            "--batch-size": SMALL_INTS,
            "--device": DEVICES,
            "--json": None,
        },
        [good(PATHS, "IMG", "IMAGES")],
    ),
    "clip.evaluate": (
        "clip.evaluate",
        ["--quiet"],
        {"--checkpoint": good(CHECKPOINTS, "CLIP")},
        {
            "--labels": ["+shapes", "+a,b", "", "+red circle,blue square"],
            "--retrieval": None,
            "--limit": SMALL_INTS,
            "--batch-size": SMALL_INTS,
            "--template": ["{}", "{x}", ""],
            "--json": None,
        },
        [["+CLASSES", "+SHARD", "CUTSHARD", "MISSING", "DIR", "RANDOM"]],
    ),
    "clip.openclip export": (
        "clip.openclip",
        ["export"],
        {
            "--checkpoint": good(CHECKPOINTS, "CLIP"),
            "--out": ["+OUT/c.safetensors", "+OUT/c.bin", "DIR", "RANDOM/x.bin", "OUT/c.txt"],
        },
        {},
        [],
    ),
    "dalle.sample": (
        "dalle.sample",
        ["--no-progress"],
        {"--checkpoint": good(CHECKPOINTS, "DALLE"), "--out": ["+OUT/g.png", "OUT/g.jpg", "DIR", "RANDOM/g.png", ""]},
        {
            "--num": SMALL_INTS,
            "--rerank": SMALL_INTS,
            "--clip": good(CHECKPOINTS, "CLIP"),
            "--seed": INTS,
            "--temperature": FLOATS,
            "--top-k": INTS,
            "--top-p": FLOATS,
            "--guidance": FLOATS,
            "--image-prompt": good(PATHS, "IMG"),
            "--prompt-rows": SMALL_INTS,
            "--out-dir": ["+OUT/samples", "RANDOM", "IMG"],
            "--batch-size": SMALL_INTS,
            "--device": DEVICES,
            "--json": None,
        },
        [TEXTS],
    ),
    "dalle.vae tokenize": (
        "dalle.vae.cli",
        ["tokenize"],
        {
            "--checkpoint": good(CHECKPOINTS, "VAE"),
            "--shards": ["+SHARD", "CUTSHARD", "MISSING", "RANDOM", "DIR", "nothing-*.tar"],
            "--out": ["+OUT/codes", "IMG", "RANDOM"],
        },
        {"--size": SMALL_INTS, "--batch-size": SMALL_INTS, "--overwrite": None, "--drop-images": None, "--json": None},
        [],
    ),
    "dalle.vae reconstruct": (
        "dalle.vae.cli",
        ["reconstruct"],
        {"--checkpoint": good(CHECKPOINTS, "VAE"), "--out": ["+OUT/r.png", "OUT/r.jpg", "DIR"]},
        {"--size": ["0", "-1", "+8", "+16", "3", "x"], "--batch-size": SMALL_INTS, "--json": None},
        [good(PATHS, "IMG")],
    ),
    "dalle.evaluate": (
        "dalle.evaluate",
        ["--no-progress", "--splits", "val"],
        {"--checkpoint": good(CHECKPOINTS, "DALLE"), "--judge": good(CHECKPOINTS, "JUDGE")},
        {
            "--prompts": SMALL_INTS,
            "--candidates": SMALL_INTS,
            "--temperature": FLOATS,
            "--guidance": FLOATS,
            "--objects": ["+1", "+2", "+mixed", "3", ""],
            "--batch-rows": SMALL_INTS,
            "--json": None,
        },
        [],
    ),
    "data.shapes": (
        "data.shapes",
        [],
        {"--out": ["+OUT/shapes", "IMG", "RANDOM/x"], "--count": SMALL_INTS},
        {
            "--split": ["+train", "+val", "+heldout", "+all", "nope", ""],
            "--seed": INTS,
            "--size": ["0", "-1", "+8", "+16", "x"],
            "--objects": ["+1", "+2", "+mixed", "3"],
            "--shard-size": SMALL_INTS,
            "--overwrite": None,
            "--json": None,
        },
        [],
    ),
    "data.shards": (
        "data.shards",
        [],
        {"--out": ["+OUT/shards", "IMG", "RANDOM/x"]},
        {
            "--captions": ["NONUTF8", "RANDOM", "EMPTY", "MISSING", "DIR"],
            "--shard-size": SMALL_INTS,
            "--prefix": ["+s", "", "../up", "a/b"],
            "--overwrite": None,
            "--json": None,
        },
        [good(PATHS, "IMAGES")],
    ),
    "data.judge": (
        "data.judge",
        [],
        {"--checkpoint": good(CHECKPOINTS, "JUDGE")},
        {"--device": DEVICES, "--json": None},
        [good(PATHS, "IMAGES")],
    ),
    "multimodal.train --ckpt_path": (
        "multimodal.train",
        ["fit", "--config", str(Path(__file__).resolve().parents[1] / "configs/gpt/tiny.yaml")],
        {"--ckpt_path": ["RANDOM", "EMPTY", "MISSING", "DIR", "NONUTF8", "IMG"]},
        {},
        [],
    ),
}


def draw_argv(rng: random.Random, spec: tuple, files: dict[str, str]) -> list[str]:
    _, lead, required, optional, positionals = spec

    def value(pool: list[str]) -> str:
        good = [v[1:] for v in pool if v.startswith("+")]
        v = rng.choice(good) if good and rng.random() < GOOD_SHARE else rng.choice(pool).removeprefix("+")
        head, _, tail = v.partition("/")
        return str(Path(files[head]) / tail) if head in files and tail else files.get(v, v)

    argv = list(lead)
    for pool in positionals:
        argv.append(value(pool))
    for flag, pool in required.items():
        argv += [f"{flag}={value(pool)}"]
    for flag in rng.sample(sorted(optional), k=min(len(optional), rng.randint(0, 4))):
        pool = optional[flag]
        argv += [flag] if pool is None else [f"{flag}={value(pool)}"]
    return argv


def check_outcome(tool: str, argv: list[str], rc: int, out: str, err: str) -> None:
    case = f"{tool} {argv}"
    assert "Traceback" not in err and "Traceback" not in out, case + "\n" + err
    if rc == 0:
        if "--json" in argv and out.strip():
            text = out.strip()
            try:
                json.loads(text)
            except ValueError:
                for line in text.splitlines():  # JSON lines
                    json.loads(line)
        return
    assert rc in (1, 2), f"{case}: exit {rc}\n{err}"
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines, f"{case}: exit {rc} with nothing on stderr"
    assert any("error:" in ln for ln in lines), f"{case}: exit {rc} without an error line\n{err}"
    stray = [
        ln
        for ln in lines
        if not ln.startswith(("error:", "warning:", "note:", "usage:", " ", "\t"))
        and "error:" not in ln  # argparse / jsonargparse: "prog: error: ..."
        and not ln.startswith(("images:", "samples:", "tokenize:", "few-shot:", "shards:"))  # progress bars
    ]
    assert not stray, f"{case}: stray stderr lines {stray}\n{err}"


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_fuzz(tool, files, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # default outputs (dalle.png) land here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("sys.stdin", io.StringIO("text read from standard input"))  # score -
    monkeypatch.setattr("multimodal.packaged.PACKAGED_DIR", tmp_path / "no-packaged-models")
    rng = random.Random(f"issue-17:{tool}")
    module = importlib.import_module(TOOLS[tool][0])
    for _ in range(CASES_PER_TOOL):
        argv = draw_argv(rng, TOOLS[tool], files)
        try:
            rc = module.main(argv)
        except SystemExit as e:  # argparse / jsonargparse usage errors
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        out, err = capsys.readouterr()
        check_outcome(tool, argv, rc, out, err)
    assert os.getcwd() == str(tmp_path)
