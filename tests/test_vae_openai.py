"""OpenAI's dVAE (the ``dall-e`` package) maps exactly onto ours; its pickles need --trust-pickle."""

from __future__ import annotations

import dall_e
import pytest
import torch
import torch.nn.functional as F

from dalle.vae.cli import main
from dalle.vae.openai import convert_openai_state, load_openai_state
from multimodal.checkpoint import CheckpointError, load_model


def _peer(seed: int = 0):
    torch.manual_seed(seed)
    # the smallest sizes their validators allow: n_hid >= 64, vocab >= 512
    enc = dall_e.Encoder(n_hid=64, n_blk_per_group=1, vocab_size=512)
    dec = dall_e.Decoder(n_init=32, n_hid=64, n_blk_per_group=1, vocab_size=512)
    for m in (enc, dec):  # their biases start at zero: randomise them so a bias mix-up cannot hide
        for name, p in m.named_parameters():
            if name.endswith(".b"):
                p.data.normal_(std=0.1)
    return enc.eval(), dec.eval()


@pytest.fixture(scope="module")
def peer_files(tmp_path_factory):
    enc, dec = _peer()
    d = tmp_path_factory.mktemp("dalle")
    torch.save(enc.state_dict(), d / "encoder.pt")
    torch.save(dec.state_dict(), d / "decoder.pt")
    return enc, dec, d


def test_parity_with_dall_e(peer_files):
    enc, dec, d = peer_files
    model = convert_openai_state(load_openai_state(d / "encoder.pt"), load_openai_state(d / "decoder.pt"), 32)
    c = model.config
    assert (c.codebook_size, c.downsample, c.hidden, c.blocks_per_group, c.init_channels) == (512, 8, 64, 1, 32)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        theirs = enc(dall_e.map_pixels(x))
        ours = model.encode_logits(x)
        assert ours.shape == theirs.shape == (2, 512, 4, 4)
        assert (ours - theirs).abs().max() < 1e-4
        ids = ours.argmax(1)
        one_hot = F.one_hot(ids, 512).permute(0, 3, 1, 2).float()
        theirs_img = dall_e.unmap_pixels(torch.sigmoid(dec(one_hot)[:, :3]))
        ours_img = model.decode(ids)
    assert ours_img.shape == theirs_img.shape == (2, 3, 32, 32)
    assert (ours_img - theirs_img).abs().max() < 1e-4
    assert theirs_img.std() > 1e-3  # a non-trivial image, so the comparison means something


def test_every_shape_is_checked(peer_files):
    enc, dec, _ = peer_files
    state = dict(dec.state_dict())
    state["blocks.group_2.block_1.res_path.conv_2.w"] = torch.zeros(8, 8, 3, 3)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        convert_openai_state(enc.state_dict(), state)
    state = dict(enc.state_dict())
    state["blocks.extra.w"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="no place"):
        convert_openai_state(state, dec.state_dict())


def test_convert_cli_from_state_dicts(peer_files, tmp_path, capsys):
    enc, _, d = peer_files
    out = tmp_path / "export"
    assert (
        main(["convert", "--encoder", str(d / "encoder.pt"), "--decoder", str(d / "decoder.pt"), "--out", str(out)])
        == 0
    )
    model = load_model(out, kind="vae")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert (model.encode_logits(x) - enc(dall_e.map_pixels(x))).abs().max() < 1e-4
    # a second run refuses to replace the export
    assert (
        main(["convert", "--encoder", str(d / "encoder.pt"), "--decoder", str(d / "decoder.pt"), "--out", str(out)])
        == 2
    )
    assert "--overwrite" in capsys.readouterr().err


def test_pickled_modules_need_trust_pickle(tmp_path, capsys):
    enc, dec = _peer(1)
    torch.save(enc, tmp_path / "encoder.pkl")  # the layout of OpenAI's released files: whole modules
    torch.save(dec, tmp_path / "decoder.pkl")
    args = ["convert", "--encoder", str(tmp_path / "encoder.pkl"), "--decoder", str(tmp_path / "decoder.pkl")]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--trust-pickle" in err
    assert not (tmp_path / "a").exists()
    assert main([*args, "--out", str(tmp_path / "b"), "--trust-pickle"]) == 0
    model = load_model(tmp_path / "b", kind="vae")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert (model.encode_logits(x) - enc(dall_e.map_pixels(x))).abs().max() < 1e-4


def test_damaged_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "encoder.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["convert", "--encoder", str(bad), "--decoder", str(bad), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
