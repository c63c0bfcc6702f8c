"""Issue 17's table, row by row, through the CLIs: every bad input is one ``error:`` line naming it, the right exit
code, no partial output, and the other inputs of the run still processed and counted."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from data import shapes
from multimodal.checkpoint import save_export
from multimodal.gpt import GPT, GPTConfig


def error_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.strip().splitlines() if line.startswith("error: ")]


def one_error(err: str, *needles: str) -> str:
    """The only line on stderr is one ``error:`` line holding every needle (notes and warnings aside)."""
    lines = error_lines(err)
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def bomb_png(path: Path, side: int = 40000) -> Path:
    """A small file whose PNG header claims ``side`` x ``side`` pixels (a decompression bomb's header)."""
    Image.new("RGB", (8, 8)).save(path)
    raw = bytearray(path.read_bytes())
    ihdr = raw[12:29]  # b"IHDR" + 13 bytes of fields
    fields = struct.pack(">II", side, side) + bytes(ihdr[12:17])
    raw[16:29] = fields
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + fields))
    path.write_bytes(bytes(raw))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from dalle_helpers import dalle_export, tiny_clip_export

    from data.judge import JudgeModule

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    gpt = save_export(
        GPT(GPTConfig(vocab_size=257, context_length=32, backbone={"width": 32, "layers": 1, "heads": 2})), root / "gpt"
    )
    return {
        "gpt": gpt,
        "dalle": dalle_export(root / "dalle"),
        "clip": tiny_clip_export(root / "clip"),
        "judge": save_export(JudgeModule(width=4).model, root / "judge"),
    }


def broken_copy(src: Path, dst: Path, edit) -> Path:
    dst.mkdir(parents=True)
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    meta = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(edit(meta)))
    return dst


def judge_folder(directory: Path, n: int = 3) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = shapes.make_sample(0, "val", i, 1)
        s["image"].save(directory / f"{i}.png")
        (directory / f"{i}.txt").write_text(s["caption"])
    return directory


# -- counts, numbers and seeds -------------------------------------------------------------------------------


@pytest.mark.parametrize("num", ["0", "-1"])
def test_generate_num_below_one_is_an_error(models, capsys, num):
    from multimodal.gpt.generate import main

    assert main(["1+1=", "--checkpoint", str(models["gpt"]), "--num", num]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    one_error(err, "--num")


def test_dalle_sample_huge_num_is_refused_before_loading(models, tmp_path, capsys, monkeypatch):
    from dalle import sample

    monkeypatch.setattr(sample, "load_model", lambda *a, **k: pytest.fail("loaded a model for a refused --num"))
    assert sample.main(["a red circle", "--checkpoint", str(models["dalle"]), "--num", "100000"]) == 2
    one_error(capsys.readouterr().err, "--num", "4096")


@pytest.mark.parametrize("flag", ["--temperature", "--guidance", "--top-p"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_dalle_sample_non_finite_flags(models, tmp_path, capsys, flag, value):
    from dalle.sample import main

    out = tmp_path / "g.png"
    assert main(["a red circle", "--checkpoint", str(models["dalle"]), flag, value, "--out", str(out)]) == 2
    one_error(capsys.readouterr().err, flag.lstrip("-").replace("-", "_") if flag == "--top-p" else flag.lstrip("-"))
    assert not out.exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_generate_non_finite_temperature(models, capsys, value):
    from multimodal.gpt.generate import main

    assert main(["1+1=", "--checkpoint", str(models["gpt"]), f"--temperature={value}"]) == 2
    one_error(capsys.readouterr().err, "--temperature")


def test_any_integer_seed_is_reduced_mod_2_64(models, capsys):
    from multimodal.gpt.generate import main
    from multimodal.sampling import SEED_MODULUS, reduce_seed

    huge = 99999999999999999999999
    assert reduce_seed(huge) == huge % 2**64 and reduce_seed(-1) == 2**64 - 1 and SEED_MODULUS == 2**64
    runs = []
    for seed in (huge, huge % 2**64, huge + 2**64):
        assert main(["1+1=", "--checkpoint", str(models["gpt"]), "--seed", str(seed), "--max-tokens", "6"]) == 0
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1] == runs[2] and runs[0].startswith("1+1=")


def test_dalle_sample_huge_and_negative_seeds(models, tmp_path, capsys):
    from dalle.sample import main

    args = ["a red circle", "--checkpoint", str(models["dalle"]), "--num", "2", "--no-progress"]
    assert main([*args, "--seed", "-1", "--out", str(tmp_path / "a.png")]) == 0
    assert main([*args, "--seed", str(2**64 - 1), "--out", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


# -- output locations checked before the work ----------------------------------------------------------------


@pytest.mark.parametrize("where", ["--out", "--out-dir"])
def test_dalle_sample_unwritable_output_is_refused_before_sampling(models, tmp_path, capsys, monkeypatch, where):
    from dalle import sample

    monkeypatch.setattr(sample, "load_model", lambda *a, **k: pytest.fail("sampled for an unwritable output"))
    target = tmp_path / "ro" / ("g.png" if where == "--out" else "samples")
    (tmp_path / "ro").mkdir()
    real_access = __import__("os").access
    # a read-only mount (root ignores permission bits, so the refusal is simulated where it is asked)
    monkeypatch.setattr(
        "multimodal.cli.os.access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real_access(p, mode)
    )
    assert sample.main(["a red circle", "--checkpoint", str(models["dalle"]), where, str(target)]) == 2
    one_error(capsys.readouterr().err, str(target), "cannot write")


def test_dalle_sample_output_under_a_file_is_refused(models, tmp_path, capsys):
    from dalle.sample import main

    (tmp_path / "file").write_text("x")
    assert main(["a red circle", "--checkpoint", str(models["dalle"]), "--out", str(tmp_path / "file/g.png")]) == 2
    one_error(capsys.readouterr().err, "cannot write")


# -- one pixel limit for every tool --------------------------------------------------------------------------


def test_dalle_sample_bomb_image_prompt_is_one_line(models, tmp_path, capsys):
    from dalle.sample import main

    bomb = bomb_png(tmp_path / "bomb.png")
    args = ["a red circle", "--checkpoint", str(models["dalle"]), "--image-prompt", str(bomb)]
    assert main([*args, "--out", str(tmp_path / "g.png")]) == 2
    one_error(capsys.readouterr().err, "bomb.png", "too large")
    assert not (tmp_path / "g.png").exists()


def test_the_same_bomb_is_refused_by_judge_and_zeroshot_and_the_rest_is_scored(models, tmp_path, capsys):
    from clip.zeroshot import main as zeroshot
    from data.judge import main as judge

    folder = judge_folder(tmp_path / "gen")
    bomb_png(folder / "bomb.png", side=12000)  # 144 megapixels: over the one limit (64M), under PIL's own
    (folder / "bomb.txt").write_text("a red circle")
    assert judge(["--checkpoint", str(models["judge"]), str(folder), "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["images"] == 3 and json.loads(out)["unreadable"] == 1
    one_error(err, "bomb.png", "too large")
    assert zeroshot(["--checkpoint", str(models["clip"]), "--labels", "a,b", str(folder), "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 3
    one_error(err, "bomb.png", "too large")


# -- data.judge ----------------------------------------------------------------------------------------------


def test_judge_non_utf8_prompt_is_one_line_and_the_others_are_scored(models, tmp_path, capsys):
    from data.judge import main

    folder = judge_folder(tmp_path / "gen")
    (folder / "1.txt").write_bytes("a r\xe9d circle".encode("latin-1"))
    assert main(["--checkpoint", str(models["judge"]), str(folder), "--json"]) == 1
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["images"] == 2 and result["unreadable"] == 1
    assert {r["file"] for r in result["per_image"]} == {"0.png", "2.png"}
    one_error(err, "1.txt", "UTF-8")


def test_judge_reads_gif_exif_and_transparency_like_every_tool(models, tmp_path, capsys):
    from data.judge import main, read_folder

    folder = judge_folder(tmp_path / "gen", n=1)
    prompt = (folder / "0.txt").read_text()
    upright = Image.open(folder / "0.png").convert("RGB")
    upright.save(folder / "g.gif")
    # EXIF orientation 6 ("rotate 90 CW to view") on a non-square picture: the stored pixels are the upright
    # picture turned back, so a reader that ignores the tag returns another size and other pixels
    wide = upright.crop((0, 8, 64, 48))
    exif = Image.Exif()
    exif[0x0112] = 6
    wide.rotate(90, expand=True).save(folder / "r.png", exif=exif)
    # transparency whose hidden pixels are white: only compositing on black gives the original back
    rgba = Image.new("RGBA", upright.size, (255, 255, 255, 0))
    rgba.paste(upright.convert("RGBA"), mask=Image.eval(upright.convert("L"), lambda v: 255 if v > 0 else 0))
    rgba.save(folder / "t.png")
    for name in ("g", "r", "t"):
        (folder / f"{name}.txt").write_text(prompt)
    images, _, names, skipped, unreadable = read_folder(folder)
    assert names == ["0.png", "g.gif", "r.png", "t.png"] and skipped == unreadable == 0
    assert all(im.mode == "RGB" for im in images)
    read = dict(zip(names, images))
    assert read["r.png"].size == wide.size == (64, 40)
    assert read["r.png"].tobytes() == wide.tobytes()  # upright, pixel for pixel
    assert read["t.png"].tobytes() == upright.tobytes()  # hidden pixels composited on black
    assert read["g.gif"].tobytes() == upright.tobytes()  # the shapes world's few colours fit a palette exactly
    assert main(["--checkpoint", str(models["judge"]), str(folder)]) == 0
    assert "4 images scored" in capsys.readouterr().out


def test_judge_given_a_file_says_not_a_directory(models, tmp_path, capsys):
    from data.judge import main

    (tmp_path / "x.png").write_bytes(b"")
    assert main(["--checkpoint", str(models["judge"]), str(tmp_path / "x.png")]) == 2
    one_error(capsys.readouterr().err, "not a directory")
    assert main(["--checkpoint", str(models["judge"]), str(tmp_path / "nope")]) == 2
    one_error(capsys.readouterr().err, "no such directory")


# -- config.json checked field by field, in every tool that reads a checkpoint -------------------------------

EDITS = {
    "wrong type": lambda kind: lambda m: {**m, "config": {**m["config"], FIELD[kind][0]: "four"}},
    "JSON list": lambda kind: lambda m: [m],
    "config a string": lambda kind: lambda m: {**m, "config": "oops"},
}
# a field of each kind's config, as config.json names it (nested for CLIP: the vision tower's backbone width)
FIELD = {
    "gpt": ("vocab_size", "config.vocab_size"),
    "dalle": ("backbone", "config.backbone"),
    "judge": ("width", "config.width"),
}


def _tool_cases(models: dict, broken: dict, tmp_path: Path) -> dict:
    folder = judge_folder(tmp_path / "imgs", n=1)
    image = folder / "0.png"
    (tmp_path / "cls" / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "cls" / "a" / "x.png")
    return {
        "generate": ("multimodal.gpt.generate", ["1+1=", "--checkpoint", broken["gpt"]]),
        "score": ("multimodal.gpt.score", ["some text", "--checkpoint", broken["gpt"]]),
        "fewshot": ("multimodal.gpt.fewshot", ["--checkpoint", broken["gpt"], "--n", "1", "--tasks", "add2"]),
        "clip.zeroshot": ("clip.zeroshot", ["--checkpoint", broken["clip"], "--labels", "a,b", str(image)]),
        "clip.evaluate": ("clip.evaluate", ["--checkpoint", broken["clip"], str(tmp_path / "cls")]),
        "clip.openclip export": (
            "clip.openclip",
            ["export", "--checkpoint", broken["clip"], "--out", str(tmp_path / "oc.safetensors")],
        ),
        "dalle.sample --clip": (
            "dalle.sample",
            [
                "a red circle",
                "--checkpoint",
                str(models["dalle"]),
                "--clip",
                broken["clip"],
                "--out",
                str(tmp_path / "g.png"),
            ],
        ),
        "dalle.evaluate --judge": (
            "dalle.evaluate",
            ["--checkpoint", str(models["dalle"]), "--judge", broken["judge"], "--prompts", "1", "--candidates", "1"],
        ),
        "data.judge": ("data.judge", ["--checkpoint", broken["judge"], str(folder)]),
    }


TOOLS = [
    "generate",
    "score",
    "fewshot",
    "clip.zeroshot",
    "clip.evaluate",
    "clip.openclip export",
    "dalle.sample --clip",
    "dalle.evaluate --judge",
    "data.judge",
]


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_every_tool_names_the_bad_config_field(models, tmp_path, capsys, edit):
    import importlib

    clip_edit = {
        "wrong type": lambda m: {
            **m,
            "config": {
                **m["config"],
                "vision": {**m["config"]["vision"], "backbone": {**m["config"]["vision"]["backbone"], "width": "four"}},
            },
        },
        "JSON list": lambda m: [m],
        "config a string": lambda m: {**m, "config": "oops"},
    }[edit]
    broken = {
        "gpt": str(broken_copy(models["gpt"], tmp_path / "gpt", EDITS[edit]("gpt"))),
        "judge": str(broken_copy(models["judge"], tmp_path / "judge", EDITS[edit]("judge"))),
        "clip": str(broken_copy(models["clip"], tmp_path / "clip", clip_edit)),
    }
    expected = {
        "wrong type": {
            "gpt": "config.vocab_size: expected int",
            "clip": "config.vision.backbone.width: expected int",
            "judge": "config.width: expected int",
        },
        "JSON list": dict.fromkeys(("gpt", "clip", "judge"), "expected a JSON object, got a list"),
        "config a string": dict.fromkeys(("gpt", "clip", "judge"), "'config' must be an object"),
    }[edit]
    for tool, (module, argv) in _tool_cases(models, broken, tmp_path).items():
        kind = "gpt" if tool in ("generate", "score", "fewshot") else "judge" if "judge" in tool else "clip"
        rc = importlib.import_module(module).main(argv)
        err = capsys.readouterr().err
        assert rc == 2, (tool, err)
        one_error(err, expected[kind], broken[kind])


# -- checkpoints: messages that say what is wrong ------------------------------------------------------------


def test_random_bytes_are_not_called_a_pickle(models, tmp_path, capsys):
    import random

    from multimodal.gpt.generate import main

    for seed in range(20):  # many draws of random bytes: none is called a pickle
        (tmp_path / "random.ckpt").write_bytes(random.Random(seed).randbytes(4096))
        assert main(["x", "--checkpoint", str(tmp_path / "random.ckpt")]) == 2
        line = one_error(capsys.readouterr().err, "random.ckpt", "not a checkpoint")
        assert "pickled" not in line


def test_a_bad_device_is_blamed_on_the_device_not_the_checkpoint(models, capsys):
    from multimodal.gpt.generate import main
    from multimodal.gpt.score import main as score

    for tool, argv in ((main, ["x"]), (score, ["x"])):
        assert tool([*argv, "--checkpoint", str(models["gpt"]), "--device", "cuda:7"]) == 2
        line = one_error(capsys.readouterr().err, "--device cuda:7")
        assert str(models["gpt"]) not in line
        assert tool([*argv, "--checkpoint", str(models["gpt"]), "--device", "potato"]) == 2
        one_error(capsys.readouterr().err, "--device 'potato'")


def test_clip_config_weights_mismatch_names_the_tensor_and_shapes(models, tmp_path, capsys):
    from clip.zeroshot import main

    def wider(m):
        m["config"]["vision"]["backbone"]["width"] = 64
        return m

    bad = broken_copy(models["clip"], tmp_path / "clip", wider)
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16)).save(image)
    assert main(["--checkpoint", str(bad), "--labels", "a,b", str(image)]) == 2
    line = one_error(capsys.readouterr().err, "weights do not match")
    assert "32" in line and "64" in line and "config wants" in line, line


def test_train_ckpt_path_missing_or_carrying_code_is_one_line_and_no_run_folder(tmp_path, capsys):
    from multimodal.train import main

    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))

    torch.save({"state_dict": {}, "x": Evil()}, tmp_path / "evil.ckpt")
    config = str(Path(__file__).resolve().parents[1] / "configs/gpt/tiny.yaml")
    root = tmp_path / "run"
    for ckpt, needle in ((tmp_path / "missing.ckpt", "no such file"), (tmp_path / "evil.ckpt", "refused")):
        argv = ["fit", "--config", config, f"--trainer.default_root_dir={root}", f"--ckpt_path={ckpt}"]
        assert main(argv) == 2
        out, err = capsys.readouterr()
        one_error(err, str(ckpt), needle)
        assert "this ran" not in out
    assert not root.exists()


def test_zeroshot_transparent_background_is_black_like_the_shapes_world(tmp_path, capsys):
    """A red circle on a transparent background whose hidden pixels are white: composited on white it is another
    picture ("blue square 1.000" before issue 12); on black it is the shapes world's red circle."""
    from clip.zeroshot import main
    from data.shapes import render

    rgb = render([{"shape": "circle", "color": "red", "size": "large", "position": "center"}])
    alpha = Image.eval(rgb.convert("L"), lambda v: 255 if v > 8 else 0)
    rgba = Image.new("RGBA", rgb.size, (255, 255, 255, 0))
    rgba.paste(rgb, mask=alpha)
    rgba.save(tmp_path / "circle.png")
    assert (
        main(["--model", "shapes", "--labels", "red circle,blue square", str(tmp_path / "circle.png"), "--json"]) == 0
    )
    probs = json.loads(capsys.readouterr().out)["probs"]
    assert probs["red circle"] > 0.9, probs
