"""Parity with Hugging Face GPT-2 on a randomly initialised model saved with ``save_pretrained``."""

import json

import pytest
import torch
import transformers

from multimodal.checkpoint import CheckpointError, load_model, save_export
from multimodal.sampling import SamplingSettings


def test_logits_and_greedy_generation_match_hf(gpt2_dir):
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()
    ours = load_model(gpt2_dir, "gpt")
    ids = torch.tensor([ours.tokenizer.encode("the cat sat on the mat. a red circle")])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)
        ref = hf.generate(
            ids,
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            attention_mask=torch.ones_like(ids),
        )[0, ids.shape[1] :]
    new = ours.generate_ids(ids, 20, SamplingSettings(temperature=0))[0]
    assert new.tolist() == ref.tolist()


def test_pytorch_model_bin_and_reexport(gpt2_dir, tmp_path):
    hf = transformers.GPT2LMHeadModel.from_pretrained(gpt2_dir)
    bin_dir = tmp_path / "bin"
    hf.save_pretrained(bin_dir, safe_serialization=False)
    for f in ("vocab.json", "merges.txt"):
        (bin_dir / f).write_bytes((gpt2_dir / f).read_bytes())
    if not (bin_dir / "pytorch_model.bin").exists():
        torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")
        (bin_dir / "model.safetensors").unlink(missing_ok=True)
    a = load_model(gpt2_dir)
    b = load_model(bin_dir)
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(a(ids), b(ids))
    # our export keeps the GPT-2 tokenizer files and reloads to the same logits
    out = save_export(a, tmp_path / "export")
    assert (out / "vocab.json").is_file() and json.loads((out / "config.json").read_text())["kind"] == "gpt"
    c = load_model(out)
    torch.testing.assert_close(a(ids), c(ids))
    assert c.tokenizer.encode("the cat") == a.tokenizer.encode("the cat")


def test_hf_shape_mismatch_is_one_line_error(gpt2_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in gpt2_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["n_embd"] = 32
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape") as e:
        load_model(bad)
    assert "\n" not in str(e.value)
