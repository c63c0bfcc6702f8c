import hashlib
import json
import random
import tarfile

import pytest
from data_helpers import write_shapes

from data import shapes
from data.shapes import COLORS, HELDOUT_PAIRS, SHAPES, caption_for, parse_caption


def _digest(paths):
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def _members(paths):
    """(name, bytes) of every member of the shards, in order."""
    out = []
    for p in paths:
        with tarfile.open(p) as tf:
            out += [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    return out


def test_vocabulary_and_heldout_list():
    assert len(SHAPES) >= 6 and len(COLORS) >= 8 and len(shapes.POSITIONS) == 9
    assert len(set(HELDOUT_PAIRS)) == len(HELDOUT_PAIRS) == len(SHAPES) * len(COLORS) // 6
    assert {c for c, _ in HELDOUT_PAIRS} == set(COLORS)  # every colour keeps seen shapes too
    assert all(c in COLORS and s in SHAPES for c, s in HELDOUT_PAIRS)


def test_same_seed_byte_identical_shards(tmp_path):
    a = write_shapes(tmp_path / "a", count=25, shard_size=10, objects="mixed")
    b = write_shapes(tmp_path / "b", count=25, shard_size=10, objects="mixed")
    c = write_shapes(tmp_path / "c", count=25, shard_size=10, seed=1, objects="mixed")
    assert len(a) == 3
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    # a sample does not depend on the shard size: 25 samples cut 10 + 10 + 5 or 7 + 7 + 7 + 4 hold the same
    # members (names and bytes) in the same order
    d = write_shapes(tmp_path / "d", count=25, shard_size=7, objects="mixed")
    assert len(d) == 4
    assert _members(d) == _members(a) and len(_members(a)) == 25 * 3  # png, txt, json per sample


@pytest.mark.parametrize("objects", ["1", "2"])
def test_splits_respect_heldout_pairs(objects):
    held = set(HELDOUT_PAIRS)
    for split in ("train", "val", "heldout"):
        pairs = set()
        for i in range(600):
            for o in shapes.make_sample(3, split, i, objects)["meta"]["objects"]:
                pairs.add((o["color"], o["shape"]))
        if split == "heldout":
            assert pairs == held
        else:
            assert not pairs & held, f"{split} shows held-out pairs {pairs & held}"
            assert len(pairs) >= 35  # and covers (nearly) every seen pair


def test_two_objects_in_distinct_cells_and_json_shape():
    for i in range(200):
        meta = shapes.make_sample(0, "train", i, 2)["meta"]
        objs = meta["objects"]
        assert len(objs) == 2 and (objs[0]["row"], objs[0]["col"]) != (objs[1]["row"], objs[1]["col"])
        assert set(objs[0]) == {"shape", "color", "size", "position", "row", "col"}
        assert set(meta) == {"objects", "caption", "split", "seed", "index"}
        assert shapes.POSITIONS[objs[0]["row"] * 3 + objs[0]["col"]] == objs[0]["position"]


def test_parse_caption_round_trips_every_template():
    rng = random.Random(0)
    for n, templates in ((1, shapes.TEMPLATES_1), (2, shapes.TEMPLATES_2)):
        for t in range(len(templates)):
            for _ in range(40):
                objs = shapes.sample(rng, "all", n)
                text = caption_for(objs, t)
                got = parse_caption(text)
                assert len(got) == n, text
                for want, o in zip(objs, got):
                    for k, v in o.items():
                        if k != "relation":
                            assert want[k] == v, (text, k)
                if "{rel}" in templates[t]:
                    assert got[0]["relation"] == shapes.relation(*objs), text
    assert parse_caption("An ORANGE star, big") == [{"shape": "star", "color": "orange"}]
    assert parse_caption("a big red circle")[0]["size"] == "large"
    assert parse_caption("a photo of a dog") == []


def test_render_is_pure_and_sized():
    obj = [{"shape": "star", "color": "red", "size": "large", "position": "center"}]
    a, b = shapes.render(obj, 48), shapes.render(obj, 48)
    assert a.size == (48, 48) and a.tobytes() == b.tobytes()
    assert a.getpixel((24, 24)) == COLORS["red"] and a.getpixel((2, 2)) == shapes.BACKGROUND


def test_cli_writes_shards_and_summary(tmp_path, capsys):
    assert (
        shapes.main(["--out", str(tmp_path), "--split", "heldout", "--count", "12", "--shard-size", "5", "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards"] == ["heldout-000000.tar", "heldout-000001.tar", "heldout-000002.tar"]
    assert summary["count"] == 12 and sum(summary["counts"]["objects"].values()) == 12
    assert json.loads((tmp_path / "heldout-summary.json").read_text())["heldout_pairs"] == [
        list(p) for p in HELDOUT_PAIRS
    ]
    # existing shards are not silently replaced; bad input is a one-line error
    assert shapes.main(["--out", str(tmp_path), "--split", "heldout", "--count", "3"]) == 2
    assert shapes.main(["--out", str(tmp_path), "--split", "train", "--count", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err
