"""``python -m clip.evaluate``: metrics on known inputs, image folders and labelled shards, --json."""

from __future__ import annotations

import json
import tarfile

import pytest
import torch

from clip.evaluate import classification_metrics, main, retrieval_metrics
from tests.clip_helpers import shape_image, tiny_export


def test_metrics_on_known_inputs():
    logits = torch.tensor([[3.0, 1, 0], [0, 3, 1], [3, 0, 1], [0, 1, 3]])
    m = classification_metrics(logits, torch.tensor([0, 1, 1, 2]), ["a", "b", "c"])
    assert m["top1"] == 0.75 and m["per_class_recall"] == {"a": 1.0, "b": 0.5, "c": 1.0}
    assert abs(m["mean_per_class_recall"] - 2.5 / 3) < 1e-6 and m["top5"] == 1.0
    f = torch.nn.functional.normalize(torch.randn(12, 8), dim=-1)
    r = retrieval_metrics(f, f)
    assert r["image_to_text_R@1"] == 1.0 and r["text_to_image_R@1"] == 1.0
    # similarities built so that image i's caption has exactly i captions above it (row i: 1 before the
    # diagonal, 0.5 on it, 0 after) and caption j's image exactly 11 - j images above it
    sim = torch.tril(torch.ones(12, 12), -1) + 0.5 * torch.eye(12)
    r = retrieval_metrics(torch.eye(12), sim.t())
    for k in (1, 5, 10):
        assert r[f"image_to_text_R@{k}"] == pytest.approx(k / 12) == r[f"text_to_image_R@{k}"], (k, r)


def test_folder_and_shards(tmp_path, capsys):
    from data.shapes import write_shards

    export = tiny_export(tmp_path / "m")
    for c, color in (("red_thing", (220, 30, 30)), ("blue_thing", (30, 80, 230))):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(2):
            shape_image(color=color, box=(4 + i, 10, 30, 40)).save(tmp_path / "f" / c / f"{i}.png")
    assert main(["--checkpoint", str(export), str(tmp_path / "f"), "--json", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)["zeroshot"]
    recalls = res["per_class_recall"]
    assert res["samples"] == 4 and set(recalls) == {"red thing", "blue thing"}  # one class per sub-folder
    assert all(v in (0.0, 0.5, 1.0) for v in recalls.values())  # 2 images each
    assert res["mean_per_class_recall"] == pytest.approx(sum(recalls.values()) / 2)
    assert res["top1"] == pytest.approx(res["mean_per_class_recall"])  # equal class sizes
    write_shards(tmp_path / "s", "val", 24, size=32, shard_size=12, progress=False)
    code = main(
        [
            "--checkpoint",
            str(export),
            "--labels",
            "shapes",
            "--retrieval",
            str(tmp_path / "s" / "val-*.tar"),
            "--json",
            "--quiet",
        ]
    )
    res = json.loads(capsys.readouterr().out)
    assert code == 0 and res["zeroshot"]["samples"] == 24 and res["zeroshot"]["classes"] == 48
    assert res["retrieval"]["samples"] == 24
    # the same recalls by hand from the shards' images and captions
    from multimodal.checkpoint import load_model

    images, captions = [], []
    for shard in sorted((tmp_path / "s").glob("val-*.tar")):
        with tarfile.open(shard) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
        for name in sorted(n for n in members if n.endswith(".png")):
            images.append(members[name])
            captions.append(members[name[: -len("png")] + "txt"].decode())
    model = load_model(export, "clip")
    want = retrieval_metrics(model.embed_images(images), model.embed_texts(captions))
    for key, value in want.items():
        assert res["retrieval"][key] == pytest.approx(value, abs=1e-6), key
    assert main(["--checkpoint", str(export), str(tmp_path / "nothing-*.tar"), "--labels", "a,b"]) == 2
    assert capsys.readouterr().err.startswith("error:")
