import json

import numpy as np
import pytest
import torch
from PIL import Image

from data import shapes
from data.judge import Judge, JudgeConfig, JudgeModule, ShapesJudge, judge_loss, main
from multimodal.checkpoint import load_model, save_export


class Oracle(ShapesJudge):
    """Predicts exactly what a lookup table says an image holds (tests the scoring, not the CNN)."""

    def __init__(self, truth):
        super().__init__(JudgeConfig(width=4))
        self.truth = truth

    def predict(self, x, n=None):
        return [self.truth[int(img[0, 0, 0] * 255 + 0.5)] for img in x]


def _images(metas):
    # mark each image with its index in pixel (0, 0) so the oracle knows which it is
    ims = []
    for i, m in enumerate(metas):
        im = shapes.render(m).copy()
        im.putpixel((0, 0), (i, 0, 0))
        ims.append(im)
    return ims


def test_score_counts_each_requested_attribute():
    a = {"shape": "star", "color": "red", "size": "large", "position": "top left", "row": 0, "col": 0}
    b = {"shape": "circle", "color": "blue", "size": "small", "position": "bottom right", "row": 2, "col": 2}
    judge = Judge(Oracle({0: [a], 1: [a], 2: [a, b], 3: [b]}))
    prompts = [
        "a large red star in the top left",  # all right
        "a small red star",  # size wrong
        "a blue circle above a red star",  # relation wrong (the circle is below), colours and shapes right
        "hello world",  # not understood
    ]
    r = judge.score(_images([[a], [a], [a, b], [b]]), prompts)
    assert r["images"] == 3 and r["unparsed"] == 1
    assert r["accuracy"]["shape"] == 1.0 and r["accuracy"]["color"] == 1.0 and r["accuracy"]["position"] == 1.0
    assert r["accuracy"]["size"] == 0.5 and r["accuracy"]["relation"] == 0.0
    assert r["accuracy"]["all"] == pytest.approx(1 / 3)
    assert [row["all"] for row in r["per_image"]] == [True, False, False]


def test_targets_and_training_reduce_loss():
    torch.manual_seed(0)
    model = ShapesJudge(JudgeConfig(width=8))
    metas = [shapes.make_sample(0, "all", i, "mixed")["meta"] for i in range(8)]
    x = torch.stack([torch.from_numpy(np.array(shapes.render(m["objects"]))).permute(2, 0, 1) for m in metas]) / 255
    t = model.targets(metas)
    assert t["occupancy"].shape == (8, 9) and (t["occupancy"] > 0).sum() == sum(len(m["objects"]) for m in metas)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(8):
        loss = judge_loss(model, model(x), t)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    out = model.predict(x[:3], [1, 2, 1])
    assert [len(o) for o in out] == [1, 2, 1] and set(out[0][0]) >= {"shape", "color", "size", "position"}


def test_cli_scores_a_folder_and_rejects_bad_input(tmp_path, capsys):
    module = JudgeModule(width=4)
    ckpt = save_export(module.model, tmp_path / "judge")
    assert isinstance(load_model(ckpt, "judge"), ShapesJudge)
    d = tmp_path / "gen"
    d.mkdir()
    for i in range(4):
        s = shapes.make_sample(0, "heldout", i, 1 + i % 2)
        s["image"].save(d / f"{i}.png")
        (d / f"{i}.txt").write_text(s["caption"])
    Image.new("RGB", (64, 64)).save(d / "noprompt.png")
    (d / "notes.md").write_text("ignored")
    assert main(["--checkpoint", str(ckpt), str(d), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 4 and r["skipped"] == 1
    assert set(r["accuracy"]) == {"shape", "color", "size", "position", "relation", "all"}
    # each rate is the share of the per-image verdicts (a None where no prompt asked for the attribute)
    rows = r["per_image"]
    assert all(row["all"] == all(row["correct"].values()) for row in rows)
    for attr, rate in r["accuracy"].items():
        flags = [
            row["all"] if attr == "all" else row["correct"][attr] for row in rows if attr in {"all", *row["correct"]}
        ]
        assert rate == (pytest.approx(sum(flags) / len(flags)) if flags else None), attr
    assert {row["file"] for row in r["per_image"]} == {"0.png", "1.png", "2.png", "3.png"}
    assert main(["--checkpoint", str(ckpt), str(d)]) == 0
    assert "all" in capsys.readouterr().out
    # bad inputs: one-line errors, exit code 2
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(tmp_path / "bad.ckpt"), str(d)]) == 2
    assert main(["--checkpoint", str(ckpt), str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["--checkpoint", str(ckpt), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 3 and "Traceback" not in err


@pytest.mark.parametrize("split", ["val", "heldout"])
def test_packaged_judge_reads_two_object_scenes(split):
    # the measuring instrument of the two-object targets: on rendered scenes (the truth) it must be right
    from data.judge import Judge
    from data.shapes import make_sample

    samples = [make_sample(7, split, i, 2, 64) for i in range(200)]
    result = Judge.from_checkpoint("judge").score([s["image"] for s in samples], [s["caption"] for s in samples])
    assert result["images"] == 200
    assert result["accuracy"]["all"] >= 0.99, result["accuracy"]
    with_relation = [r for r in result["per_image"] if "relation" in r["correct"]]
    assert with_relation and all(r["correct"]["relation"] for r in with_relation)


def test_predictions_come_back_in_the_order_of_the_requested_objects():
    from data.judge import _score_one

    want = [{"shape": "circle", "color": "red", "relation": "above"}, {"shape": "square", "color": "blue"}]
    square = {"shape": "square", "color": "blue", "size": "small", "position": "center", "row": 1, "col": 1}
    circle = {"shape": "circle", "color": "red", "size": "small", "position": "top center", "row": 0, "col": 1}
    scored = _score_one("a red circle above a blue square", want, [square, circle])  # the judge's own order
    assert [p["shape"] for p in scored["predicted"]] == ["circle", "square"] and scored["all"]
