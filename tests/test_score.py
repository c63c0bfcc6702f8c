"""python -m multimodal.score: log-probs that add up, perplexity, --json, one-line errors."""

import json
import math

import pytest
import torch

from multimodal.checkpoint import save_export
from multimodal.gpt.score import main
from tests.fewshot_helpers import always_predicts, tiny_gpt


def test_json_totals_and_perplexity(tmp_path, capsys):
    model = tiny_gpt()
    ckpt = save_export(model, tmp_path / "m")
    assert main(["sea otter", "--checkpoint", str(ckpt), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["tokens"] == list("sea otter") and r["num_tokens"] == 9
    assert r["total_logprob"] == pytest.approx(sum(r["logprobs"]), abs=1e-4)
    assert r["perplexity"] == pytest.approx(math.exp(-r["total_logprob"] / 9), rel=1e-5)
    # the first token is scored after end-of-text, the document boundary
    ids = torch.tensor([[256, *b"sea otter"]])
    manual = model(ids[:, :-1]).log_softmax(-1)[0, torch.arange(9), ids[0, 1:]]
    assert r["logprobs"] == pytest.approx(manual.tolist(), abs=1e-4)


def test_constructed_model_is_confident_on_its_text(tmp_path, capsys):
    ckpt = save_export(always_predicts("a"), tmp_path / "a")
    assert main(["aaaa", "--checkpoint", str(ckpt)]) == 0
    likely = capsys.readouterr().out
    assert "perplexity: 1.00" in likely
    assert main(["abab", "--checkpoint", str(ckpt), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"] > 100


@pytest.mark.parametrize("case", ["missing", "empty", "no_text", "missing_file"])
def test_bad_input_one_line_exit_2(case, tmp_path, capsys):
    ckpt = str(save_export(tiny_gpt(), tmp_path / "m"))
    args = {
        "missing": ["hi", "--checkpoint", str(tmp_path / "nope")],
        "empty": ["", "--checkpoint", ckpt],
        "no_text": ["--checkpoint", ckpt],
        "missing_file": ["--file", str(tmp_path / "none.txt"), "--checkpoint", ckpt],
    }[case]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_hf_gpt2_directory(gpt2_dir, capsys):
    assert main(["the cat sat", "--checkpoint", str(gpt2_dir), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert "".join(r["tokens"]) == "the cat sat" and r["num_tokens"] < 11  # BPE: fewer tokens than bytes
    assert r["total_logprob"] == pytest.approx(sum(r["logprobs"]), abs=1e-4)


def test_file_keeps_crlf_and_long_text_windows(tmp_path, capsys):
    model = tiny_gpt(context_length=16)
    ckpt = save_export(model, tmp_path / "m")
    (tmp_path / "crlf.txt").write_bytes(b"one\r\ntwo\r\n")
    assert main(["--file", str(tmp_path / "crlf.txt"), "--checkpoint", str(ckpt), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["num_tokens"] == 10 and r["tokens"][3:5] == ["\r", "\n"]  # scored as written, not as LF
    assert r["conventions"]["document_start_id"] == 256 and r["conventions"]["windows"] == 1
    text = "the cat sat on the mat and then some more"  # 41 tokens, context 16
    assert main([text, "--checkpoint", str(ckpt), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["num_tokens"] == 41 and r["conventions"]["windows"] == 3 and r["conventions"]["stride"] == 16
    assert main([text, "--checkpoint", str(ckpt), "--json", "--stride", "4"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert small["num_tokens"] == 41 and small["conventions"]["windows"] == 1 + 7  # 16, then 25 tokens 4 at a time
    assert small["logprobs"][:16] == pytest.approx(r["logprobs"][:16], abs=1e-5)  # the first window is the same
    # past it, a window of 16 inputs scores its last 4 tokens: the first of them sees the 13 tokens before it
    ids = torch.tensor([[256, *text.encode()]])
    manual = model(ids[:, 4:17]).log_softmax(-1)[0, -1, ids[0, 17]].item()
    assert small["logprobs"][16] == pytest.approx(manual, abs=1e-4)
    assert main([text, "--checkpoint", str(ckpt), "--stride", "17"]) == 2
    assert "--stride" in capsys.readouterr().err
