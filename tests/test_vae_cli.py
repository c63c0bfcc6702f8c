"""``python -m dalle.vae reconstruct | tokenize``: results a user sees, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from dalle.vae.cli import main
from multimodal.checkpoint import save_export
from tests.vae_helpers import (
    blocks_images,
    load_npy,
    read_tar,
    shard_members,
    tiny_vae,
    to_png_bytes,
    write_pngs,
    write_shard,
)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    model = tiny_vae(seed=2)
    return model, save_export(model, tmp_path_factory.mktemp("ckpt") / "vae")


def test_reconstruct_grid_and_psnr(export, tmp_path, capsys):
    model, ckpt = export
    images = blocks_images(3, 16, seed=5)
    paths = write_pngs(tmp_path / "in", images)
    out = tmp_path / "grid.png"
    assert main(["reconstruct", "--checkpoint", str(ckpt), *map(str, paths), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["images"]) == 3 and result["codes"] == [4, 4]
    expected = torch.stack([torch.tensor(0.0)])  # PSNR of what the model itself gives
    recon = model.decode(model.encode(images))
    expected = 10 * torch.log10(1 / (recon - images).pow(2).flatten(1).mean(1))
    assert [r["psnr"] for r in result["images"]] == pytest.approx(expected.tolist(), abs=0.05)
    with Image.open(out) as im:  # originals above reconstructions
        assert im.size == (3 * 18 + 2, 2 * 18 + 2)


def test_reconstruct_bad_inputs(export, tmp_path, capsys):
    _, ckpt = export
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    cases = [
        ["--checkpoint", str(ckpt), str(tmp_path / "broken.png")],
        ["--checkpoint", str(ckpt), str(tmp_path / "missing.png")],
        ["--checkpoint", str(tmp_path / "nope"), str(tmp_path / "broken.png")],
    ]
    for case in cases:
        assert main(["reconstruct", *case, "--out", str(tmp_path / "g.png")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "g.png").exists()


def test_tokenize_writes_codes_beside_captions(export, tmp_path, capsys):
    model, ckpt = export
    images = blocks_images(5, 16, seed=7)
    members = shard_members(images)
    members += [("bad.png", b"garbage"), ("bad.txt", b"broken image")]  # skipped, counted
    write_shard(tmp_path / "in" / "shard-000000.tar", members)
    out = tmp_path / "codes"
    args = ["tokenize", "--checkpoint", str(ckpt), "--shards", str(tmp_path / "in" / "shard-{000000..000000}.tar")]
    assert main([*args, "--out", str(out), "--batch-size", "2", "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["encoded"] == 5 and manifest["bad_image"] == 1 and manifest["grid"] == [4, 4]
    assert json.loads((out / "codes.json").read_text())["encoded"] == 5
    written = read_tar(out / "shard-000000.tar")
    assert written["000003.txt"] == b"caption 3" and "000003.png" in written and "bad.txt" not in written
    codes = torch.from_numpy(load_npy(written["000003.codes.npy"]).astype("int64"))
    assert codes.shape == (4, 4)
    assert torch.equal(codes, model.encode(images[3:4])[0])
    # webdataset reads the member back as an array keyed "codes.npy"
    import webdataset as wds

    sample = next(iter(wds.WebDataset(str(out / "shard-000000.tar"), shardshuffle=False).decode()))
    assert sample["codes.npy"].shape == (4, 4) and sample["txt"] == "caption 0"
    # the user's files are never replaced silently
    assert main([*args, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--out", str(out), "--overwrite", "--drop-images"]) == 0
    assert "000003.png" not in read_tar(out / "shard-000000.tar")


def test_tokenize_bad_shard(export, tmp_path, capsys):
    _, ckpt = export
    (tmp_path / "x.tar").write_bytes(to_png_bytes(blocks_images(1)[0]))
    for shards in (str(tmp_path / "x.tar"), str(tmp_path / "none-*.tar")):
        assert main(["tokenize", "--checkpoint", str(ckpt), "--shards", shards, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "reconstruct" in out and "tokenize" in out and "convert" in out


def test_a_dalle_is_taken_for_its_tokenizer(tmp_path, capsys):
    """``--checkpoint dalle`` (the packaged DALL·E) reconstructs through the DALL·E's own tokenizer, as
    ``dalle.evaluate --vae dalle`` scores it; a model with no tokenizer is one error line."""
    from dalle.vae.cli import main

    image = Path(__file__).parent / "data/red_circle.png"
    assert main(["reconstruct", "--checkpoint", "dalle", str(image), "--out", str(tmp_path / "r.png"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (tmp_path / "r.png").is_file() and result["mean_psnr"] > 25
    assert main(["reconstruct", "--checkpoint", "judge", str(image), "--out", str(tmp_path / "j.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
