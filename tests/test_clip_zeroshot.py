"""``python -m clip.zeroshot``: label and input errors, every image mode, batching, JSON output, and the
offline default model."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from clip import zeroshot
from multimodal.images import preprocess
from tests.clip_helpers import shape_image, tiny_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("clip") / "tiny", seed=1)


def run(capsys, *argv):
    code = zeroshot.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def probs_of(capsys, export, path, labels="red square,blue circle,green star"):
    code, out, err = run(capsys, "--checkpoint", export, "--labels", labels, "--template", "a {}.", "--json", path)
    assert code == 0, err
    return json.loads(out)["probs"]


def test_json_lines_topk_and_folders(tmp_path, capsys, export):
    for i in range(3):
        shape_image(color=(200, 10 * i, 0)).save(tmp_path / f"{i}.png")
    code, out, err = run(
        capsys, "--checkpoint", export, "--labels", "cat,dog,bird", "--json", "--batch-size", "2", tmp_path
    )
    assert code == 0, err
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["image"] for x in lines] == [str(tmp_path / f"{i}.png") for i in range(3)]
    for x in lines:
        assert set(x["probs"]) == {"cat", "dog", "bird"}
        assert abs(sum(x["probs"].values()) - 1) < 1e-4
        assert list(x["probs"].values()) == sorted(x["probs"].values(), reverse=True)
    code, out, _ = run(capsys, "--checkpoint", export, "--labels", "cat,dog,bird", "--top-k", "1", tmp_path / "0.png")
    assert code == 0 and out.count(",") == 0 and out.startswith(str(tmp_path / "0.png"))


def test_probabilities_match_the_model(tmp_path, capsys, export):
    from clip.pipeline import zero_shot_classifier
    from multimodal.checkpoint import load_model

    shape_image().save(tmp_path / "a.png")
    got = probs_of(capsys, export, tmp_path / "a.png", "cat,dog")
    model = load_model(export, "clip")
    with torch.no_grad():
        x = preprocess(Image.open(tmp_path / "a.png"), model.config.vision.preprocess)[None]
        cls = zero_shot_classifier(model, ["cat", "dog"], ["a {}."])
        want = (model.logit_scale.exp() * model.encode_image(x) @ cls.t()).softmax(-1)[0]
    assert abs(got["cat"] - float(want[0])) < 1e-4


def test_default_is_the_80_template_ensemble_computed_by_hand(tmp_path, capsys, export):
    """No ``--template``: each label in OpenAI's 80 ImageNet templates (open_clip's own list), every text
    embedding normalised, averaged per label and normalised again, as in CLIP's zero-shot notebook."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from multimodal.checkpoint import load_model

    shape_image().save(tmp_path / "a.png")
    labels = ["red square", "blue circle"]
    code, out, err = run(capsys, "--checkpoint", export, "--labels", ",".join(labels), "--json", tmp_path / "a.png")
    assert code == 0, err
    got = json.loads(out)["probs"]
    model = load_model(export, "clip")
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
    with torch.no_grad():
        pixels = preprocess(tmp_path / "a.png", model.config.vision.preprocess)[None]
        image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)[0]
        weights, first_only = [], []
        for label in labels:
            texts = [template(label) for template in OPENAI_IMAGENET_TEMPLATES]
            each = torch.stack([model.embed_texts([t])[0] for t in texts])  # [80, E], each normalised
            assert torch.allclose(each.norm(dim=-1), torch.ones(80), atol=1e-5)
            mean = each.mean(0)
            weights.append(mean / mean.norm())
            first_only.append(each[0])
        scale = model.logit_scale.exp().clamp(max=100)
        want = (scale * image @ torch.stack(weights).T).softmax(-1)
        one = (scale * image @ torch.stack(first_only).T).softmax(-1)
    assert abs(float(want[0] - one[0])) > 1e-3  # the ensemble is not the first template alone: the check can fail
    for k, label in enumerate(labels):
        assert got[label] == pytest.approx(float(want[k]), abs=1e-5), label


def test_image_modes_and_exif_rotation(tmp_path, capsys, export):
    base = shape_image()
    base.save(tmp_path / "rgb.png")
    want = probs_of(capsys, export, tmp_path / "rgb.png")
    rgba = base.convert("RGBA")
    rgba.save(tmp_path / "rgba.png")
    base.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    base.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    # EXIF orientation 6 ("rotate 90 CW to view"): the stored pixels are the upright picture turned back
    exif = Image.Exif()
    exif[0x0112] = 6
    base.rotate(90, expand=True).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    base.save(tmp_path / "plain.jpg", quality=100)
    for name in ("rgba.png", "palette.png"):
        got = probs_of(capsys, export, tmp_path / name)
        assert all(abs(got[k] - want[k]) < 2e-3 for k in want), name
    jpg = probs_of(capsys, export, tmp_path / "plain.jpg")
    for name in ("rotated.jpg", "cmyk.jpg"):
        got = probs_of(capsys, export, tmp_path / name)
        assert all(abs(got[k] - jpg[k]) < 2e-2 for k in want), name
    # grayscale 8 and 16 bit give the same result
    gray = base.convert("L")
    gray.save(tmp_path / "gray.png")
    Image.frombytes("I;16", gray.size, bytes(b for v in gray.tobytes() for b in (v, v))).save(tmp_path / "g16.png")
    g8, g16 = probs_of(capsys, export, tmp_path / "gray.png"), probs_of(capsys, export, tmp_path / "g16.png")
    assert all(abs(g8[k] - g16[k]) < 2e-3 for k in g8)


def test_bad_inputs(tmp_path, capsys, export, monkeypatch):
    shape_image().save(tmp_path / "ok.png")
    (tmp_path / "text.png").write_text("not an image")
    buf = io.BytesIO()
    shape_image().save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:60])
    for labels in ("", "cat", "cat,,dog", "cat,dog,Cat"):
        code, out, err = run(capsys, "--checkpoint", export, "--labels", labels, tmp_path / "ok.png")
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, (labels, err)
    code, out, err = run(
        capsys,
        "--checkpoint",
        export,
        "--labels",
        "cat,dog",
        tmp_path / "missing.png",
        tmp_path / "text.png",
        tmp_path / "cut.png",
        tmp_path / "ok.png",
    )
    assert code == 1  # the README: each unreadable image its own error line, exit code 1 at the end
    assert out.count("\n") == 1 and out.startswith(str(tmp_path / "ok.png"))  # the good image is still classified
    assert len(err.strip().splitlines()) == 3 and "no such file" in err and "not a readable image" in err
    # a decompression bomb: refused before its pixels are decoded
    monkeypatch.setattr("multimodal.images.MAX_IMAGE_PIXELS", 1000)
    code, out, err = run(capsys, "--checkpoint", export, "--labels", "cat,dog", tmp_path / "ok.png")
    assert code == 1 and "too large" in err and out == ""
    monkeypatch.undo()
    code, _, err = run(capsys, "--checkpoint", tmp_path / "nowhere", "--labels", "cat,dog", tmp_path / "ok.png")
    assert code == 2 and err.count("\n") == 1
    code, _, err = run(
        capsys, "--checkpoint", export, "--labels", "cat,dog", "--template", "no slot", tmp_path / "ok.png"
    )
    assert code == 2 and "{}" in err


def test_default_model_offline_and_shapes_hook(tmp_path, capsys, monkeypatch):
    shape_image().save(tmp_path / "ok.png")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without network and an empty cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    code, out, err = run(capsys, "--labels", "cat,dog", tmp_path / "ok.png")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "offline" in err and "--checkpoint" in err
    monkeypatch.setattr("multimodal.packaged.PACKAGED_DIR", tmp_path / "no-demo")
    code, out, err = run(capsys, "--model", "shapes", "--labels", "a,b", tmp_path / "ok.png")
    assert code == 2 and "packaged 'clip' model" in err and "multimodal.demo build" in err
