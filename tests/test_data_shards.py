import json
import tarfile

from data_helpers import encode

from data import shapes
from data.datamodule import ImageTextDataModule
from data.shards import main


def _folder(tmp_path, n=4):
    src = tmp_path / "images"
    src.mkdir()
    for i in range(n):
        s = shapes.make_sample(0, "train", i)
        s["image"].save(src / f"img{i}.png")
        (src / f"img{i}.txt").write_text(s["caption"])
    (src / "broken.jpg").write_bytes(encode(shapes.make_sample(0, "train", 9)["image"], "JPEG")[:200])
    (src / "broken.txt").write_text("a red circle")
    shapes.make_sample(0, "train", 10)["image"].save(src / "nocaption.png")
    return src


def test_folder_with_sidecars_to_shards(tmp_path, capsys):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    assert main([str(src), "--out", str(out), "--shard-size", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["count"] == 4
        and summary["skipped"] == 2
        and summary["shards"] == ["shard-000000.tar", "shard-000001.tar"]
    )
    with tarfile.open(out / "shard-000000.tar") as tf:
        assert tf.getnames()[:3] == ["000000000.json", "000000000.png", "000000000.txt"]
    dm = ImageTextDataModule(val=str(out), batch_size=2, num_workers=0, tokenizer="byte")
    batches = list(dm.val_dataloader())
    assert sorted(m["source"] for b in batches for m in b["meta"]) == [f"img{i}.png" for i in range(4)]
    # existing shards are kept unless --overwrite
    assert main([str(src), "--out", str(out)]) == 2
    assert main([str(src), "--out", str(out), "--overwrite"]) == 0


def test_csv_and_jsonl_captions(tmp_path, capsys):
    src = _folder(tmp_path)
    (tmp_path / "list.csv").write_text(
        "path,caption,license\nimg0.png,first one,cc-by\nimg1.png,,cc0\nmissing.png,x,cc0\nimg2.png,third,cc0\n"
    )
    assert main([str(src), "--captions", str(tmp_path / "list.csv"), "--out", str(tmp_path / "a"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["count"] == 2 and s["skipped"] == 2
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tf:
        meta = json.load(tf.extractfile("000000000.json"))
        assert tf.extractfile("000000000.txt").read() == b"first one"
    assert meta == {"source": "img0.png", "caption": "first one", "license": "cc-by"}
    (tmp_path / "list.jsonl").write_text('{"file": "img3.png", "text": "fourth"}\n')
    args = [
        str(src),
        "--captions",
        str(tmp_path / "list.jsonl"),
        "--out",
        str(tmp_path / "b"),
        "--path-column",
        "file",
        "--caption-column",
        "text",
    ]
    assert main(args) == 0
    assert (
        main(
            [
                str(src),
                "--captions",
                str(tmp_path / "list.csv"),
                "--out",
                str(tmp_path / "c"),
                "--caption-column",
                "nope",
            ]
        )
        == 2
    )
    assert main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")]) == 2
    assert "Traceback" not in capsys.readouterr().err
