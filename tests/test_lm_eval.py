"""Our scores equal lm-evaluation-harness's on an exported random GPT: its ``hf`` model loads the export and its
``loglikelihood_rolling`` (perplexity tasks) and ``loglikelihood`` (multiple choice, with ``add_bos_token=True``)
agree with ``GPT.score`` and few-shot's choice log-likelihoods within 1e-4, for texts shorter and longer than
the context."""

from __future__ import annotations

import pytest
import torch

from multimodal.checkpoint import load_model
from multimodal.gpt import GPT, GPTConfig
from multimodal.gpt.fewshot import _prompt_ids, choice_logprobs
from multimodal.gpt.hf import export_hf_gpt2

CONTEXT = 32
TEXTS = [
    "hello world",  # short
    "x" * CONTEXT,  # exactly the context: one window
    "y" * (CONTEXT + 1),  # one token past it
    "the quick brown fox jumps over the lazy dog. " * 4,  # several windows, the last overlapping
]
# the last context is longer than the context window (cut from the left on both sides); none ends with a space,
# which the harness would move into the continuation (few-shot prompts end with "=>", never a space)
PAIRS = [("Q: 2+2 =", " 4"), ("cheese =>", " fromage"), ("the quick brown fox jumps over the lazy dog." * 3, " end")]


@pytest.fixture(scope="module", params=["byte", "bpe"])
def exported(request, tmp_path_factory, gpt2_dir):
    if request.param == "byte":
        torch.manual_seed(0)
        model = GPT(
            GPTConfig(vocab_size=257, context_length=CONTEXT, backbone={"width": 32, "layers": 2, "heads": 4})
        ).eval()
    else:  # GPT-2 BPE (context 64 in the fixture)
        model = load_model(gpt2_dir)
    return model, export_hf_gpt2(model, tmp_path_factory.mktemp("lm-eval") / "hf")


def _requests(kind: str, args: list[tuple]) -> list:
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_rolling_loglikelihood_equals_score(exported, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.models.huggingface import HFLM

    model, directory = exported
    lm = HFLM(pretrained=str(directory), device="cpu", batch_size=4)  # lm-eval's defaults
    theirs = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(t,) for t in TEXTS]), disable_tqdm=True)
    for text, total in zip(TEXTS, theirs):
        ours = model.score(text)
        assert len(ours["logprobs"]) == len(model.tokenizer.encode(text))  # every token scored once
        assert abs(ours["total_logprob"] - total) < 1e-4, text
    assert model.score("x" * model.config.context_length)["windows"] == 1


def test_choice_loglikelihood_equals_fewshot_with_add_bos_token(exported, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.models.huggingface import HFLM

    model, directory = exported
    tok, n_ctx = model.tokenizer, model.config.context_length
    lm = HFLM(pretrained=str(directory), device="cpu", batch_size=4, add_bos_token=True)
    theirs = lm.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
    choices = [tok.encode(c) for _, c in PAIRS]
    prompts = [_prompt_ids(tok, ctx, n_ctx - len(c) + 1)[0] for (ctx, _), c in zip(PAIRS, choices)]
    ours = choice_logprobs(model, prompts, choices)
    for (ll, _greedy), lp in zip(theirs, ours):
        assert abs(ll - float(lp.sum())) < 1e-4
