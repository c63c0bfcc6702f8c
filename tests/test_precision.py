"""``--precision fp32|bf16|fp16`` on the inference CLIs and ``multimodal.load(dtype=...)``: the weights stay in
that dtype and the results stay close to fp32's (bf16 and fp16 both run on a CPU with this torch)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import multimodal
from multimodal.checkpoint import save_export
from multimodal.cli import UsageError, resolve_precision
from tests.fewshot_helpers import tiny_gpt


def run(main, capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def weight_dtypes(monkeypatch) -> set[torch.dtype]:
    """The dtypes of the weights every linear layer and convolution computes with while the test runs: what
    ``--precision`` promises, seen inside the CLI rather than guessed from how close its output is to fp32's."""
    seen: set[torch.dtype] = set()
    linear, conv2d = F.linear, F.conv2d

    def spy_linear(x, weight, bias=None):
        seen.add(weight.dtype)
        return linear(x, weight, bias)

    def spy_conv2d(x, weight, *args, **kwargs):
        seen.add(weight.dtype)
        return conv2d(x, weight, *args, **kwargs)

    monkeypatch.setattr(F, "linear", spy_linear)
    monkeypatch.setattr(F, "conv2d", spy_conv2d)
    return seen


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    return save_export(tiny_gpt(), tmp_path_factory.mktemp("gpt") / "m")


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_load_keeps_the_dtype_and_scores_stay_close(gpt_dir, precision, dtype):
    model = multimodal.load(str(gpt_dir), dtype=precision)
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert model.lm_head.weight is model.token_embedding.weight  # still tied
    full = multimodal.load(str(gpt_dir)).score("the cat sat on the mat")["total_logprob"]
    half = model.score("the cat sat on the mat")["total_logprob"]
    assert half == pytest.approx(full, rel=0.02)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_gpt_clis_run_in_half_precision(gpt_dir, capsys, weight_dtypes, precision, dtype):
    from multimodal.gpt import fewshot, generate, score

    code, out, err = run(score.main, capsys, "a red circle", "--checkpoint", gpt_dir, "--json")
    full = json.loads(out)["total_logprob"]
    assert weight_dtypes == {torch.float32}  # the default
    weight_dtypes.clear()
    code, out, err = run(
        score.main, capsys, "a red circle", "--checkpoint", gpt_dir, "--json", "--precision", precision
    )
    assert code == 0, err
    assert weight_dtypes == {dtype}, "score"
    assert json.loads(out)["total_logprob"] == pytest.approx(full, rel=0.02)
    weight_dtypes.clear()
    code, out, err = run(generate.main, capsys, "12+3=", "--checkpoint", gpt_dir, "--max-tokens", 4,
                         "--temperature", 0, "--precision", precision)  # fmt: skip
    assert code == 0 and out.startswith("12+3="), err
    assert weight_dtypes == {dtype}, "generate"
    weight_dtypes.clear()
    code, out, err = run(fewshot.main, capsys, "--checkpoint", gpt_dir, "--tasks", "add2", "--n", 3, "--shots", "0",
                         "--json", "--no-progress", "--precision", precision)  # fmt: skip
    assert code == 0 and json.loads(out)["n"] == {"add2": 3}, err
    assert weight_dtypes == {dtype}, "fewshot"


def test_clip_and_dalle_clis_in_bf16(tmp_path, capsys, weight_dtypes):
    from clip import zeroshot
    from dalle import sample
    from tests.clip_helpers import shape_image, tiny_export
    from tests.dalle_helpers import dalle_export

    clip_dir = tiny_export(tmp_path / "clip", seed=1)
    dalle_dir = dalle_export(tmp_path / "dalle")
    shape_image().save(tmp_path / "img.png")
    probs = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        weight_dtypes.clear()
        code, out, err = run(zeroshot.main, capsys, "--checkpoint", clip_dir, "--labels", "red square,blue circle",
                             "--template", "a {}.", "--json", "--precision", precision, tmp_path / "img.png")  # fmt: skip
        assert code == 0, err
        assert weight_dtypes == {dtype}, precision
        probs[precision] = json.loads(out)["probs"]
    assert probs["bf16"]["red square"] == pytest.approx(probs["fp32"]["red square"], abs=0.02)
    weight_dtypes.clear()
    code, out, err = run(sample.main, capsys, "a red circle", "--checkpoint", dalle_dir,
                         "--num", 2, "--rerank", 1, "--clip", clip_dir, "--seed", 0, "--precision", "bf16",
                         "--out", tmp_path / "g.png", "--json", "--no-progress")  # fmt: skip
    assert code == 0 and (tmp_path / "g.png").is_file(), err
    assert weight_dtypes == {torch.bfloat16}  # the transformer, the dVAE's decoder and the reranking CLIP


def test_unsupported_precision_is_one_line(monkeypatch, capsys, gpt_dir):
    from multimodal.gpt import score

    def refuse(*args, **kwargs):
        raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'\nmore")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", refuse)  # as on an older torch
    with pytest.raises(UsageError, match="--precision fp16: not supported on cpu"):
        resolve_precision("fp16", "cpu")
    code, out, err = run(score.main, capsys, "hi", "--checkpoint", gpt_dir, "--precision", "fp16")
    assert code == 2 and out == "" and err.count("\n") == 1 and "--precision fp16" in err
    assert resolve_precision("fp32", "cpu") == torch.float32  # fp32 needs no check
