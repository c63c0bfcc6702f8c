"""open_clip import/export: features of randomly initialised open_clip models saved to disk are
reproduced within 1e-4 (full-width configs, fewer blocks to keep the suite fast)."""

from __future__ import annotations

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from clip.openclip import (
    config_from_openclip,
    load_openclip,
    openclip_model_config,
    to_openclip_state_dict,
)
from multimodal.checkpoint import CheckpointError, load_model, save_export
from multimodal.tokenizers import ClipTokenizer
from tests.clip_helpers import openclip_config, random_openclip, write_config

TEXTS = ["a photo of a cat", "a diagram of a red circle above a blue square", ""]


def _features(model, image, ids, ours: bool):
    with torch.no_grad():
        if ours:
            return model.encode_image(image), model.encode_text(ids)
        return model.encode_image(image, normalize=True), model.encode_text(ids, normalize=True)


@pytest.mark.parametrize(
    "name,layers",
    [("ViT-B-32", 2), ("ViT-B-32-quickgelu", 2), ("ViT-B-16", 1), ("ViT-L-14", 1)],
)
def test_parity_with_open_clip(tmp_path, name, layers):
    cfg = openclip_config(name, layers)
    ref = random_openclip(cfg)
    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), weights)
    ours = load_openclip(write_config(cfg, tmp_path / f"{name}.json"), weights)
    assert ours.config.quick_gelu == name.endswith("-quickgelu")
    size = cfg["vision_cfg"]["image_size"]
    image = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    ids = open_clip.tokenize(TEXTS)
    assert torch.equal(ours.tokenize(TEXTS), ids)  # same tokenizer ids
    a_img, a_txt = _features(ref, image, ids, ours=False)
    b_img, b_txt = _features(ours, image, ids, ours=True)
    assert (a_img - b_img).abs().max() < 1e-4
    assert (a_txt - b_txt).abs().max() < 1e-4
    assert torch.allclose(ours.logit_scale.exp(), ref.logit_scale.exp())


def test_named_full_config_and_training_checkpoint(tmp_path):
    # By name, full ViT-B-32 geometry: the config comes from open_clip's shipped json.
    cfg = openclip_model_config("ViT-B-32-quickgelu")
    config = config_from_openclip(cfg)
    vb, tb = config.vision.backbone, config.text.backbone
    assert (vb.width, vb.layers, vb.heads, config.vision.patch_size) == (768, 12, 12, 32)
    assert (tb.width, tb.heads, config.embed_dim, config.quick_gelu) == (512, 8, 512, True)
    assert vb.activation == tb.activation == "quick_gelu"
    # open_clip's training checkpoints: {"epoch", "state_dict": {"module.…"}}; and .safetensors files
    cfg = openclip_config("ViT-B-32", 1)
    ref = random_openclip(cfg, seed=3)
    ckpt = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, ckpt)
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(st))
    image = torch.randn(1, 3, 224, 224)
    ids = open_clip.tokenize(["a dog"])
    a_img, a_txt = _features(ref, image, ids, ours=False)
    for path in (ckpt, st):
        ours = load_openclip(cfg, path)
        b_img, b_txt = _features(ours, image, ids, ours=True)
        assert (a_img - b_img).abs().max() < 1e-4 and (a_txt - b_txt).abs().max() < 1e-4


def test_activation_comes_from_config_and_mismatches_are_refused(tmp_path):
    cfg = openclip_config("ViT-B-32-quickgelu", 1)
    ref = random_openclip(cfg)
    weights = tmp_path / "w.bin"
    torch.save(ref.state_dict(), weights)
    plain = {**cfg, "quick_gelu": False}
    wrong = load_openclip(plain, weights)  # loads (same shapes) but is a different model: never guessed
    right = load_openclip(cfg, weights)
    image = torch.randn(1, 3, 224, 224)
    ids = open_clip.tokenize(["a cat"])
    with torch.no_grad():
        diff = max(
            (right.encode_image(image) - wrong.encode_image(image)).abs().max(),
            (right.encode_text(ids) - wrong.encode_text(ids)).abs().max(),
        )
    assert diff > 2e-4  # well above the 1e-4 parity tolerance: the wrong activation would be caught
    # wrong geometry → one-line error naming the first mismatching key
    with pytest.raises(CheckpointError, match="shape"):
        load_openclip(openclip_config("ViT-B-16", 1), weights)
    # missing keys
    state = ref.state_dict()
    state.pop("visual.proj")
    torch.save(state, weights)
    with pytest.raises(CheckpointError, match="missing"):
        load_openclip(cfg, weights)
    with pytest.raises(CheckpointError, match="unknown open_clip model"):
        openclip_model_config("ViT-Q-99")
    with pytest.raises(CheckpointError, match="not supported"):
        config_from_openclip(openclip_model_config("ViT-B-16-SigLIP"))


def test_export_back_to_open_clip_and_our_format(tmp_path):
    cfg = openclip_config("ViT-B-32", 1)
    ref = random_openclip(cfg, seed=5)
    weights = tmp_path / "w.bin"
    torch.save(ref.state_dict(), weights)
    ours = load_openclip(cfg, weights)
    # our export format round trip (nested vision/text configs rebuilt from config.json)
    again = load_model(save_export(ours, tmp_path / "export"), "clip")
    assert again.config == ours.config
    # back to open_clip through `python -m clip.openclip export` (open_clip's local-dir: layout): strict load
    import json

    from safetensors.torch import load_file

    from clip.openclip import main

    assert main(["export", "--checkpoint", str(tmp_path / "export"), "--out", str(tmp_path / "exported")]) == 0
    out = tmp_path / "exported"
    back_cfg = json.loads((out / "open_clip_config.json").read_text())
    back = open_clip.CLIP(**back_cfg["model_cfg"]).eval()
    back.load_state_dict(load_file(str(out / "open_clip_model.safetensors")), strict=True)
    image = torch.randn(1, 3, 224, 224)
    ids = ClipTokenizer().batch(["exported"], 77)
    a = _features(ref, image, ids, ours=False)
    b = _features(back, image, ids, ours=False)
    assert (a[0] - b[0]).abs().max() < 1e-5 and (a[1] - b[1]).abs().max() < 1e-5
    assert set(to_openclip_state_dict(ours)) == set(ref.state_dict())


def test_hub_reachability_goes_through_huggingface_hub(monkeypatch):
    """Asked through huggingface_hub's session (its endpoint, mirrors and proxies), never with a raw socket."""
    import socket

    import huggingface_hub.utils

    from clip.openclip import _hub_reachable

    asked = []

    class Session:
        def head(self, url, timeout):
            asked.append(url)
            if "down" in url:
                raise OSError("unreachable")

    def no_socket(*args, **kwargs):
        raise AssertionError("raw socket used")

    monkeypatch.setattr(socket, "create_connection", no_socket)
    monkeypatch.setattr(huggingface_hub.utils, "get_session", lambda: Session())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "https://hf-mirror.example")
    assert _hub_reachable() and asked == ["https://hf-mirror.example"]
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "https://down.example")
    assert not _hub_reachable()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
        assert not _hub_reachable() and len(asked) == 2  # offline: not even asked
        monkeypatch.delenv(var)


def test_openclip_import_cli_writes_an_export_with_the_peer_s_features(tmp_path, capsys):
    """``python -m clip.openclip import --model CONFIG --weights FILE --out DIR``: an export directory every
    ``--checkpoint`` takes, features equal to open_clip's own; bad input is one line, exit 2."""
    from clip.openclip import main

    cfg = openclip_config("ViT-B-32", 1)
    ref = random_openclip(cfg, seed=3)
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    config = write_config(cfg, tmp_path / "ViT-B-32-1.json")
    out = tmp_path / "imported"
    args = ["import", "--model", str(config), "--weights", str(tmp_path / "w.safetensors")]
    assert main([*args, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    ours = load_model(out, "clip")  # what --checkpoint reads
    image = torch.randn(2, 3, 224, 224)
    ids = ClipTokenizer().batch(TEXTS, 77)
    a, b = _features(ref, image, ids, ours=False), _features(ours, image, ids, ours=True)
    assert (a[0] - b[0]).abs().max() < 1e-4 and (a[1] - b[1]).abs().max() < 1e-4
    # a directory that holds something else is not written into; a weights file that is not one is named
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main([*args, "--out", str(tmp_path / "other")]) == 2
    (tmp_path / "junk.bin").write_bytes(b"not weights at all")
    bad = ["import", "--model", str(config), "--weights", str(tmp_path / "junk.bin"), "--out", str(tmp_path / "x")]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err) and "Traceback" not in "".join(err)
    assert "not a model export" in err[0] and "junk.bin" in err[1]
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]


# -- every open_clip source through the one factory ---------------------------------------------------------------
def test_multimodal_load_reads_local_dir_and_weights_with_their_model_name(tmp_path):
    import multimodal
    from clip.openclip import export_openclip, to_openclip_state_dict
    from tests.clip_helpers import tiny_model

    ours = tiny_model(seed=4)
    export_openclip(ours, tmp_path / "oc")
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in to_openclip_state_dict(ours).items()}, str(weights))
    config = tmp_path / "oc" / "open_clip_config.json"
    ids = ours.tokenize(TEXTS)
    for source, arch in ((tmp_path / "oc", None), (f"local-dir:{tmp_path / 'oc'}", None), (weights, config)):
        again = multimodal.load(source, "clip", arch=arch)
        assert again.kind == "clip" and not again.training
        with torch.no_grad():
            torch.testing.assert_close(again.encode_text(ids), ours.encode_text(ids))
    with pytest.raises(CheckpointError, match="this is a 'clip' checkpoint, expected 'gpt'"):
        multimodal.load(f"local-dir:{tmp_path / 'oc'}", "gpt")
    with pytest.raises(CheckpointError, match="open_clip weights need their model name, e.g. ViT-B-32"):
        multimodal.load(weights, "clip")  # no arch: the hint, not a guess
    with pytest.raises(CheckpointError, match="no such directory"):
        multimodal.load(f"local-dir:{tmp_path / 'missing'}")


@pytest.mark.parametrize(
    "part, field, value, says",
    [
        ("vision_cfg", "width", "wide", 'vision_cfg.width: expected int, got a string "wide"'),
        ("text_cfg", "heads", 2.5, "text_cfg.heads: expected int, got a number 2.5"),
        ("text_cfg", "no_causal_mask", "no", "text_cfg.no_causal_mask: expected bool"),
        ("vision_cfg", "norm_kwargs", {"eps": "small"}, "vision_cfg.norm_kwargs.eps: expected float"),
        ("vision_cfg", "head_width", 0, "not a valid open_clip config"),
        (None, "embed_dim", None, "embed_dim: expected int, got null"),
        (None, "vision_cfg", [], "vision_cfg: expected an object"),
    ],
)
def test_a_wrong_typed_open_clip_config_field_is_one_line_naming_it(tmp_path, part, field, value, says):
    import json

    import multimodal
    from clip.openclip import export_openclip
    from tests.clip_helpers import tiny_model

    export_openclip(tiny_model(), tmp_path / "oc")
    path = tmp_path / "oc" / "open_clip_config.json"
    cfg = json.loads(path.read_text())
    (cfg["model_cfg"][part] if part else cfg["model_cfg"])[field] = value
    path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        multimodal.load(tmp_path / "oc")
    assert str(e.value).startswith(f"{path}: ") and says in str(e.value) and "\n" not in str(e.value)
