"""``python -m dalle.sample``: flags, determinism, reranking, image prompts, bad input (in-process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dalle.sample import main
from tests.dalle_helpers import dalle_export, tiny_clip_export


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return dalle_export(tmp_path_factory.mktemp("dalle") / "export")


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_same_seed_same_png_bytes_and_progress_bar(ckpt, tmp_path, capsys):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    rc, out, err = run(["a red circle", "--checkpoint", ckpt, "--num", 3, "--seed", 1, "--out", a], capsys)
    assert rc == 0, err
    assert "image tokens" in err  # the tqdm bar over the 16 codes
    assert (
        run(["a red circle", "--checkpoint", ckpt, "--num", 3, "--seed", 1, "--out", b, "--no-progress"], capsys)[0]
        == 0
    )
    assert run(["a red circle", "--checkpoint", ckpt, "--num", 3, "--seed", 2, "--out", c], capsys)[0] == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    with Image.open(a) as im:  # 3 images of 16 px in one row, 2 px borders
        assert im.size == (3 * 18 + 2, 20)


def test_same_seed_same_png_bytes_in_two_processes_with_different_thread_counts(tmp_path):
    """The README's promise, as a user meets it: two runs of the command (the packaged DALL·E, reranked by the
    packaged CLIP), one on 1 thread and one on 2, write the same PNG bytes; another seed writes other bytes."""
    root = Path(__file__).resolve().parents[1]

    def sample(seed: int, threads: int) -> bytes:
        out = tmp_path / f"s{seed}-t{threads}.png"
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "dalle.sample", "a red circle in the top left", "--num", "2", "--seed",
               str(seed), "--out", str(out), "--no-progress"]  # fmt: skip
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return out.read_bytes()

    one = sample(5, threads=1)
    assert one == sample(5, threads=2)
    assert one != sample(6, threads=1)


def test_out_dir_json_sampling_flags_and_guidance(ckpt, tmp_path, capsys):
    d = tmp_path / "imgs"
    argv = ["a blue square", "--checkpoint", ckpt, "--num", 4, "--out-dir", d, "--json", "--temperature", 0.7]
    rc, out, err = run(argv + ["--top-k", 5, "--top-p", 0.9, "--guidance", 2.0], capsys)
    assert rc == 0, err
    result = json.loads(out)
    paths = [x["path"] for x in result["images"]]
    assert len(paths) == 4 and all(Image.open(p).size == (16, 16) for p in paths)
    assert sorted(p.name for p in d.iterdir()) == ["00.png", "01.png", "02.png", "03.png"]
    assert "grid" not in result  # --out-dir alone writes no grid


def test_guidance_defaults_to_the_models_own(tmp_path, capsys, monkeypatch):
    # a model exported with guidance 2 samples with it unless --guidance says otherwise
    from dalle import sample

    used = []
    real = sample.generate_images
    monkeypatch.setattr(
        sample,
        "generate_images",
        lambda m, p, n, s, guidance, **k: used.append(guidance) or real(m, p, n, s, guidance, **k),
    )
    guided = dalle_export(tmp_path / "guided", guidance=2.0)
    base = ["a red circle", "--num", 2, "--json", "--no-progress", "--out", tmp_path / "g.png"]
    for extra, want in (([], 2.0), (["--guidance", 1], 1.0), (["--guidance", 3.5], 3.5)):
        rc, out, err = run(base + ["--checkpoint", guided] + extra, capsys)
        assert rc == 0, err
        assert json.loads(out)["guidance"] == want and used[-1] == want
    rc, out, _ = run(base + ["--checkpoint", dalle_export(tmp_path / "plain")], capsys)
    assert json.loads(out)["guidance"] == 1.0  # exports without the field: guidance off


def test_clip_rerank_keeps_the_best_k(ckpt, tmp_path, capsys):
    clip = tiny_clip_export(tmp_path / "clip")
    argv = ["a red circle", "--checkpoint", ckpt, "--num", 6, "--rerank", 2, "--clip", clip]
    rc, out, err = run(argv + ["--json", "--out", tmp_path / "g.png"], capsys)
    assert rc == 0, err
    imgs = json.loads(out)["images"]
    assert len(imgs) == 2
    rc, out_all, _ = run(
        ["a red circle", "--checkpoint", ckpt, "--num", 6, "--clip", clip, "--json", "--out", tmp_path / "h.png"],
        capsys,
    )
    scores = [x["clip_score"] for x in json.loads(out_all)["images"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 6
    assert [x["clip_score"] for x in imgs] == scores[:2]


def test_image_prompt_of_another_size_is_resized(ckpt, tmp_path, capsys):
    img = tmp_path / "prompt.png"
    Image.new("RGB", (40, 30), (200, 20, 20)).save(img)
    argv = ["a red circle", "--checkpoint", ckpt, "--num", 2, "--image-prompt", img, "--prompt-rows", 2]
    rc, out, err = run(argv + ["--out", tmp_path / "g.png"], capsys)
    assert rc == 0, err
    assert "resized to 16x16" in err


def test_long_prompt_is_truncated_with_a_warning(ckpt, tmp_path, capsys):
    rc, out, err = run(["a red circle " * 10, "--checkpoint", ckpt, "--num", 1, "--out", tmp_path / "g.png"], capsys)
    assert rc == 0
    assert err.count("warning: prompt of") == 1 and "truncated" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "no demo model is packaged"),
        (["--checkpoint", "NOPE"], "no such file"),
        (["--checkpoint", "CKPT", "--rerank", "2"], "needs --clip"),
        (["--checkpoint", "CKPT", "--num", "0"], "--num"),
        (["--checkpoint", "CKPT", "--prompt-rows", "2"], "needs --image-prompt"),
        (["--checkpoint", "CKPT", "--image-prompt", "BAD"], "not a readable image"),
        (["--checkpoint", "CKPT", "--image-prompt", "NOPE.png"], "no such file"),
        (["--checkpoint", "CKPT", "--image-prompt", "IMG", "--prompt-rows", "9"], "--prompt-rows"),
        (["--checkpoint", "CKPT", "--top-p", "0"], "top_p"),
        (["--checkpoint", "GPT"], "expected 'dalle'"),
        (["--checkpoint", "CKPT", "--out", "grid.jpg"], ".png"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(ckpt, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setattr("multimodal.packaged.PACKAGED_DIR", tmp_path / "no-demo-models")
    from multimodal.checkpoint import save_export
    from multimodal.gpt import GPT, GPTConfig

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    good = tmp_path / "ok.png"
    Image.new("RGB", (16, 16)).save(good)
    gpt = save_export(
        GPT(GPTConfig(vocab_size=257, context_length=8, backbone={"width": 16, "layers": 1, "heads": 2})),
        tmp_path / "gpt",
    )
    subs = {
        "CKPT": ckpt,
        "BAD": bad,
        "IMG": good,
        "GPT": gpt,
        "NOPE": tmp_path / "nope",
        "NOPE.png": tmp_path / "nope.png",
    }
    argv = ["a red circle", "--out", tmp_path / "g.png"] + [str(subs.get(a, a)) for a in extra]
    rc, out, err = run(argv, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err
