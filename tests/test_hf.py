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


def hf_copy(gpt2_dir, tmp_path, **fields):
    """``gpt2_dir`` copied, its ``config.json`` fields replaced by ``fields``."""
    out = tmp_path / "hf"
    out.mkdir()
    for f in gpt2_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, **fields}))
    return out


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("n_embd", "64", 'n_embd: expected int, got a string "64"'),
        ("n_layer", 2.5, "n_layer: expected int"),
        ("n_head", None, "n_head: expected int, got null"),
        ("layer_norm_epsilon", "tiny", "layer_norm_epsilon: expected float"),
        ("n_inner", [256], "n_inner: expected int | null, got a list"),
        ("activation_function", 3, "activation_function: expected str"),
        ("n_positions", -1, "n_positions: expected int | null, got a number -1"),
    ],
)
def test_a_wrong_typed_hf_config_field_is_one_line_naming_it(gpt2_dir, tmp_path, capsys, field, value, says):
    """``generate`` and ``score`` on a Hugging Face directory whose config.json has a field of the wrong type:
    one ``error:`` line naming the file and the field, exit 2 (it was a traceback)."""
    import multimodal
    from multimodal.gpt.generate import main as generate
    from multimodal.gpt.score import main as score

    bad = hf_copy(gpt2_dir, tmp_path, **{field: value})
    with pytest.raises(CheckpointError, match="config.json: " + says.split(":")[0]) as e:
        multimodal.load(bad)
    assert says in str(e.value) and "\n" not in str(e.value)
    for tool, args in ((generate, ["the cat", "--max-tokens", "2"]), (score, ["the cat"])):
        assert tool([*args, "--checkpoint", str(bad)]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert err.startswith("error:") and "\n" not in err and says in err and captured.out == ""


def test_the_generate_alias_prints_no_traceback_for_a_bad_hf_config(gpt2_dir, tmp_path):
    """``python -m multimodal.generate`` itself, as a user runs it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    bad = hf_copy(gpt2_dir, tmp_path, n_head="four")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "multimodal.generate", "hi", "--checkpoint", str(bad)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        f'error: {bad / "config.json"}: n_head: expected int, got a string "four"'
    ]


def test_an_hf_config_that_cannot_be_built_is_one_line(gpt2_dir, tmp_path):
    bad = hf_copy(gpt2_dir, tmp_path, n_head=3)  # 64 is not divisible by 3
    with pytest.raises(CheckpointError, match="not a valid GPT-2 config: width 64 is not divisible by heads 3"):
        load_model(bad)


def test_the_service_loads_through_the_same_factory_and_names_the_flag(gpt2_dir, tmp_path):
    """``python -m multimodal.serve --gpt HFDIR``: the same one-line error, prefixed by the flag that named it."""
    pytest.importorskip("fastapi", reason="the service's extra (pip install 'multimodal-suite[serve]')")
    from multimodal.serve.cli import build_parser, load_models

    bad = hf_copy(gpt2_dir, tmp_path, n_embd="64")
    with pytest.raises(CheckpointError) as e:
        load_models(build_parser().parse_args(["--gpt", str(bad), "--no-packaged"]), torch.device("cpu"))
    assert str(e.value) == f'--gpt: {bad / "config.json"}: n_embd: expected int, got a string "64"'
    (served,) = load_models(build_parser().parse_args(["--gpt", str(gpt2_dir), "--no-packaged"]), torch.device("cpu"))
    try:
        assert served.kind == "gpt" and served.source == str(gpt2_dir) and served.model.tokenizer is not None
    finally:
        served.engine.close()
