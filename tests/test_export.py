"""``multimodal.export``: our GPT as a Hugging Face GPT-2 directory and our CLIP in open_clip's ``local-dir:``
layout, each loaded by the peer's own loader (random-init models made here, never downloads)."""

from __future__ import annotations

import json

import pytest
import torch

from multimodal.checkpoint import CheckpointError, load_model, payload, save_export
from multimodal.export import main
from multimodal.gpt import GPT, GPTConfig

TEXT = "héllo wörld 🙂\ttabs\r\nCRLF  two spaces, 12+35=47 <b>"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    backbone = {"width": 32, "layers": 2, "heads": 4}
    backbone.update({k: overrides.pop(k) for k in ("activation", "bias") if k in overrides})
    kw = dict(vocab_size=257, context_length=48, backbone=backbone)
    return GPT(GPTConfig(**{**kw, **overrides})).eval()


def lightning_ckpt(model, path):
    """What a ``ModelModule`` checkpoint holds for loading: the state under ``model.`` and our payload."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "multimodal": payload(model, {"prefix": "model."})}, path)
    return path


# -- hf ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["export", "ckpt", "hf_round_trip"])
def test_hf_export_loads_in_transformers_with_equal_logits(tmp_path, capsys, gpt2_dir, source):
    import transformers

    if source == "hf_round_trip":  # an HF GPT-2 (BPE tokenizer) in, back out
        ours, checkpoint = load_model(gpt2_dir), gpt2_dir
    else:
        ours = tiny_gpt(activation="gelu" if source == "ckpt" else "gelu_tanh")
        checkpoint = (
            save_export(ours, tmp_path / "ours") if source == "export" else lightning_ckpt(ours, tmp_path / "x.ckpt")
        )
    code, out, err = run(capsys, "--checkpoint", checkpoint, "--format", "hf", "--out", tmp_path / "hf")
    assert code == 0 and err == "" and "AutoModelForCausalLM" in out
    files = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "vocab.json", "merges.txt"} <= files
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as f:  # the tied embedding stored once
        assert "transformer.wte.weight" in f.keys() and "lm_head.weight" not in f.keys()

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = ours.tokenizer.encode(TEXT)[: ours.config.context_length]
    assert tok.encode(TEXT)[: len(ids)] == ids  # the peer's tokenizer gives our ids
    assert tok.eos_token_id == ours.tokenizer.eot_id
    x = torch.tensor([ids])
    with torch.no_grad():
        assert (hf(x).logits - ours(x)).abs().max() < 1e-4
    back = load_model(tmp_path / "hf")  # and the export comes back into the suite
    torch.testing.assert_close(back(x), ours(x))


def test_byte_tokenizer_is_an_exact_byte_level_bpe(tmp_path):
    import transformers

    from multimodal.export import export_hf

    model = tiny_gpt()
    export_hf(model, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    every_byte = bytes(range(256)).decode("latin-1")  # 256 code points, 384 UTF-8 bytes
    for text in [TEXT, every_byte, " leading space", "\n\n\u2028\x85", "日本語のテキスト", ""]:
        assert tok.encode(text) == model.tokenizer.encode(text), text
        assert tok.decode(tok.encode(text)) == text


def test_hf_refusals_name_the_field(tmp_path, capsys):
    from multimodal.gpt.hf import export_hf_gpt2

    with pytest.raises(CheckpointError, match="bias=False"):
        export_hf_gpt2(tiny_gpt(bias=False), tmp_path / "a")
    with pytest.raises(CheckpointError, match="tokenizer 'clip'"):
        export_hf_gpt2(tiny_gpt(vocab_size=49408, tokenizer="clip"), tmp_path / "b")
    from tests.clip_helpers import tiny_export

    clip_dir = tiny_export(tmp_path / "clip")
    code, out, err = run(capsys, "--checkpoint", clip_dir, "--format", "hf", "--out", tmp_path / "c")
    assert code == 2 and out == "" and err.count("\n") == 1 and "'clip' model" in err and "open_clip" in err
    code, out, err = run(capsys, "--checkpoint", tmp_path / "missing", "--format", "hf", "--out", tmp_path / "d")
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1


# -- open_clip --------------------------------------------------------------------------------------------
def test_open_clip_local_dir_features_and_preprocess(tmp_path, capsys):
    import open_clip

    from clip.openclip import load_clip
    from multimodal.images import preprocess
    from tests.clip_helpers import shape_image, tiny_model

    ours = tiny_model(
        seed=3,
        vision=dict(image_size=32, patch_size=8, resize_mode="longest", backbone=dict(width=32, layers=2, heads=2)),
    )
    code, out, err = run(capsys, "--checkpoint", save_export(ours, tmp_path / "ours"), "--format", "open_clip",
                         "--out", tmp_path / "oc")  # fmt: skip
    assert code == 0 and err == "" and "local-dir:" in out
    cfg = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    assert set(cfg) == {"model_cfg", "preprocess_cfg"} and cfg["preprocess_cfg"]["resize_mode"] == "longest"
    assert (tmp_path / "oc" / "open_clip_model.safetensors").is_file()

    peer, _, peer_preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    peer.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")
    image = shape_image().resize((50, 30))  # not square: the resize mode matters
    pixels = preprocess(image, ours.config.vision.preprocess)
    assert torch.allclose(peer_preprocess(image.convert("RGB")), pixels, atol=1e-6)
    texts = ["a red circle", "a blue square in the top left"]
    ids = tokenizer(texts)[:, : ours.config.text.context_length]
    assert torch.equal(ids, ours.tokenize(texts))
    with torch.no_grad():
        a = peer.encode_image(pixels[None], normalize=True), peer.encode_text(ids, normalize=True)
        b = ours.encode_image(pixels[None]), ours.encode_text(ids)
    assert (a[0] - b[0]).abs().max() < 1e-4 and (a[1] - b[1]).abs().max() < 1e-4
    # the local dir is a checkpoint for the suite as well
    for again in (load_model(tmp_path / "oc"), load_clip(tmp_path / "oc")):
        assert again.config == ours.config
        with torch.no_grad():
            assert (again.encode_image(pixels[None]) - b[0]).abs().max() < 1e-6


def test_open_clip_refusals(tmp_path, capsys):
    from clip.openclip import export_openclip
    from tests.clip_helpers import tiny_model

    byte_clip = tiny_model(
        text=dict(context_length=32, vocab_size=257, tokenizer="byte", backbone=dict(width=32, layers=1, heads=2))
    )
    with pytest.raises(CheckpointError, match="tokenizer"):
        export_openclip(byte_clip, tmp_path / "a")
    code, out, err = run(capsys, "--checkpoint", save_export(tiny_gpt(), tmp_path / "gpt"), "--format", "open_clip",
                         "--out", tmp_path / "b")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "'gpt' model" in err and "--format hf" in err
    from tests.dalle_helpers import tiny_dalle

    dalle = save_export(tiny_dalle(), tmp_path / "dalle")
    for fmt in ("hf", "open_clip"):
        code, out, err = run(capsys, "--checkpoint", dalle, "--format", fmt, "--out", tmp_path / "c")
        assert code == 2 and err.count("\n") == 1 and "'dalle' model" in err and "only gpt and clip" in err
    # the dVAE alone (an image tokenizer): no peer layout either, refused before anything is written
    from tests.vae_helpers import tiny_vae

    vae = save_export(tiny_vae(), tmp_path / "vae")
    for fmt in ("hf", "open_clip"):
        code, out, err = run(capsys, "--checkpoint", vae, "--format", fmt, "--out", tmp_path / "d")
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert err.startswith("error: ") and "'vae' model" in err and "only gpt and clip" in err, err
        assert not (tmp_path / "d").exists()
