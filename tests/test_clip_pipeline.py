"""``clip.pipeline``: zero-shot classification in one place; the CLI, the evaluator and ``CLIP.classify`` give its
numbers."""

from __future__ import annotations

import json

import pytest
import torch

from clip.pipeline import check_labels, check_templates, classify, format_prompt, label_probs, zero_shot_classifier
from tests.clip_helpers import shape_image, tiny_export

LABELS = ["red square", "blue circle", "orange star"]
COLORS = {"red square": (220, 30, 30), "blue circle": (30, 30, 220), "orange star": (240, 140, 20)}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("clip") / "tiny", seed=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """One sub-folder per label (what ``clip.evaluate`` reads), two images each."""
    root = tmp_path_factory.mktemp("images")
    for label, color in COLORS.items():
        (root / label.replace(" ", "_")).mkdir()
        for i in range(2):
            shape_image(color=color, box=(4 + 6 * i, 8, 30, 40)).save(root / label.replace(" ", "_") / f"{i}.png")
    return root


def test_classifier_averages_the_templates_and_probabilities_follow_the_temperature(export):
    from multimodal.checkpoint import load_model

    model = load_model(export, "clip")
    templates = ["a {}.", "{article} {} drawn"]
    weights = zero_shot_classifier(model, LABELS, templates)
    assert weights.shape == (3, model.config.embed_dim)
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(3))
    texts = model.embed_texts([format_prompt(t, "orange star") for t in templates])
    assert format_prompt(templates[1], "orange star") == "an orange star drawn"
    mean = texts.mean(0)
    torch.testing.assert_close(weights[2], mean / mean.norm())
    images = torch.nn.functional.normalize(torch.randn(4, model.config.embed_dim), dim=-1)
    with torch.no_grad():
        model.logit_scale.fill_(0.0)  # temperature 1: probabilities are a softmax of the cosines
    torch.testing.assert_close(label_probs(model, images, weights), (images @ weights.T).softmax(-1))


def test_the_cli_the_evaluator_and_clip_classify_give_the_pipelines_numbers(export, folder, capsys):
    from clip.evaluate import main as evaluate
    from clip.zeroshot import main as zeroshot
    from multimodal.checkpoint import load_model

    model = load_model(export, "clip")
    paths = sorted(folder.rglob("*.png"))  # class folders in label order: blue_circle, orange_star, red_square
    want = classify(model, paths, LABELS, ["a {}."])
    assert torch.equal(model.classify(paths, LABELS, ["a {}."]), want)
    assert zeroshot(["--checkpoint", str(export), "--labels", ",".join(LABELS), "--template", "a {}.", "--json",
                     "--no-progress", *map(str, paths)]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == list(map(str, paths))
    for row, probs in zip(rows, want):
        assert [row["probs"][label] for label in LABELS] == pytest.approx(probs.tolist(), abs=1e-6)
    assert evaluate(["--checkpoint", str(export), "--template", "a {}.", "--json", "--quiet", str(folder)]) == 0
    result = json.loads(capsys.readouterr().out)["zeroshot"]
    truth = torch.tensor([LABELS.index(p.parent.name.replace("_", " ")) for p in paths])
    assert result["top1"] == pytest.approx(float((want.argmax(1) == truth).float().mean()))


def test_labels_and_templates_are_refused_with_one_line():
    assert check_labels([" cat ", "dog"]) == ["cat", "dog"]
    for bad, message in ((["cat", "Cat"], "duplicate"), ([], "non-empty"), (["cat", ""], "non-empty")):
        with pytest.raises(ValueError, match=message):
            check_labels(bad)
    with pytest.raises(ValueError, match="at least two"):
        check_labels(["cat"], relative=True)
    with pytest.raises(ValueError, match="has no"):
        check_templates(["a photo"])
    with pytest.raises(ValueError, match="not a valid pattern"):
        check_templates(["a {} of {size}"])
    check_templates(None)
