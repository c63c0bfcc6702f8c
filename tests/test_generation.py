"""One generation module (``multimodal.generation``): ``GPT.generate``, the few-shot evaluator's greedy answers and
the service (its engine through the app, in-process) give the same text, finish and log-probs for the same prompt
and seed, stop strings and seeds beyond 64 bits included; streaming releases only text that stays."""

from __future__ import annotations

import math

import pytest
import torch

from multimodal.generation import PromptStart, TextStream, prompt_ids
from multimodal.tokenizers import ByteTokenizer

PROMPT = "the cat sat"
MAX_TOKENS = 24
BIG_SEED = 2**80 + 7  # ≡ 7 mod 2**64: the CLI takes it, and so does the service


@pytest.fixture(scope="module")
def gpt():
    from multimodal.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=257, context_length=128, backbone={"width": 32, "layers": 2, "heads": 4})
    return GPT(config).eval()


@pytest.fixture(scope="module")
def http(gpt):
    from fastapi.testclient import TestClient

    from multimodal.serve.app import Served, create_app
    from multimodal.serve.engine import Engine

    engine = Engine(gpt, max_batch=4)
    try:
        with TestClient(create_app([Served("tiny", "gpt", gpt, "memory", engine)]), base_url="http://127.0.0.1") as c:
            yield c
    finally:
        engine.close()


def stop_inside(text: str) -> str:
    """Two characters from the middle of ``text`` (no replacement character), so that the stop string cuts it."""
    for i in range(len(text) // 3, len(text) - 1):
        if "\ufffd" not in text[i : i + 2]:
            return text[i : i + 2]
    raise AssertionError(f"no stop string to take from {text!r}")


def service(http, prompt: str | list[int], **fields) -> dict:
    """``/v1/completions`` (the service reads a prompt as given) with 2 top log-probs per token."""
    body = {"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "logprobs": 2, **fields}
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def assert_same_logprobs(generation, choice: dict) -> None:
    """``GPT.generate``'s ``TokenInfo``s against the service's ``logprobs`` object."""
    lp = choice["logprobs"]
    assert [t.token for t in generation.logprobs] == lp["tokens"]
    assert [t.offset for t in generation.logprobs] == lp["text_offset"]
    for ours, theirs, top in zip(generation.logprobs, lp["token_logprobs"], lp["top_logprobs"]):
        assert math.isclose(ours.logprob, theirs, abs_tol=1e-5)
        assert ours.top.keys() == top.keys()
        assert all(math.isclose(ours.top[k], top[k], abs_tol=1e-5) for k in top)


def test_greedy_text_and_logprobs_agree_through_generate_fewshot_and_the_service(gpt, http):
    from multimodal.gpt.fewshot import _prompt_ids, greedy, greedy_completion

    full = gpt.generate(PROMPT, MAX_TOKENS, temperature=0)
    stop = stop_inside(full.text)
    ref = gpt.generate(PROMPT, MAX_TOKENS, temperature=0, stop=[stop], logprobs=2)
    assert ref.finish_reason == "stop" and ref.text == full.text[: full.text.index(stop)]
    assert ref.logprobs and all(t.token in t.top and len(t.top) <= 3 for t in ref.logprobs)
    # few-shot reads its prompt as the start of a document, as GPT.generate does by default
    ids, cut = _prompt_ids(gpt.tokenizer, PROMPT, 128 - MAX_TOKENS + 1)
    assert not cut and ids == [gpt.tokenizer.eot_id] + gpt.tokenizer.encode(PROMPT)
    fewshot = greedy_completion(gpt, ids, MAX_TOKENS, (stop,), logprobs=2)
    assert greedy(gpt, ids, MAX_TOKENS, (stop,)) == fewshot.text == ref.text
    assert fewshot.finish_reason == "stop" and fewshot.tokens == ref.tokens
    assert [(t.token, t.offset) for t in fewshot.logprobs] == [(t.token, t.offset) for t in ref.logprobs]
    assert all(math.isclose(a.logprob, b.logprob, abs_tol=1e-6) for a, b in zip(fewshot.logprobs, ref.logprobs))
    # the service continues a prompt as given: the same ids give the same text, finish and log-probs
    choice = service(http, ids, temperature=0, stop=[stop])
    assert choice["text"] == ref.text and choice["finish_reason"] == "stop"
    assert_same_logprobs(ref, choice)


def test_a_seed_beyond_64_bits_samples_the_same_through_generate_and_the_service(gpt, http):
    full = gpt.generate(PROMPT, MAX_TOKENS, temperature=1.0, top_k=40, seed=BIG_SEED)
    stop = stop_inside(full.text)
    ref = gpt.generate(PROMPT, MAX_TOKENS, temperature=1.0, top_k=40, seed=BIG_SEED, stop=[stop], logprobs=2)
    assert ref.finish_reason == "stop" and ref.text == full.text[: full.text.index(stop)]
    # seeds are taken mod 2**64 on every path
    assert gpt.generate(PROMPT, MAX_TOKENS, temperature=1.0, top_k=40, seed=7, stop=[stop]).text == ref.text
    ids = prompt_ids(gpt.tokenizer, PROMPT, PromptStart.DOCUMENT).ids
    choice = service(http, ids, temperature=1.0, top_k=40, seed=BIG_SEED, stop=[stop])
    assert choice["text"] == ref.text and choice["finish_reason"] == "stop"
    assert_same_logprobs(ref, choice)
    # and the service's own reading of a text prompt is GPT.generate's with document_start=False
    as_given = service(http, PROMPT, temperature=1.0, top_k=40, seed=BIG_SEED)
    plain = gpt.generate(PROMPT, MAX_TOKENS, temperature=1.0, top_k=40, seed=BIG_SEED, document_start=False)
    assert as_given["text"] == plain.text


def test_streaming_holds_back_a_possible_stop_string_and_half_a_character():
    tok = ByteTokenizer()
    stream = TextStream(tok, max_tokens=100, stops=["world"])
    shown = [stream.push(t).text for t in tok.encode("hello wor")]
    assert "".join(shown) == "hello "  # "wor" may become the stop string
    shown += [stream.push(t).text for t in tok.encode("ld!")]
    assert "".join(shown) == "hello " and stream.finish_reason == "stop" and stream.text == "hello "
    stream = TextStream(tok, max_tokens=100)
    first, second = (stream.push(t).text for t in "é".encode())
    assert (first, second) == ("", "é")  # the first byte alone is half a character
    last = stream.push(tok.eot_id)
    assert last.finish_reason == "eot" and last.text == "" and stream.tokens == list("é".encode())


def test_how_each_path_starts_a_prompt():
    tok = ByteTokenizer()
    eot, ab = tok.eot_id, tok.encode("ab")
    assert prompt_ids(tok, "ab", PromptStart.AS_GIVEN).ids == ab  # the service
    assert prompt_ids(tok, "", PromptStart.AS_GIVEN).ids == [eot]  # an empty prompt is the end-of-text token
    doc = prompt_ids(tok, "ab", PromptStart.DOCUMENT)  # GPT.generate
    assert doc.ids == [eot, *ab] and doc.prompt_tokens == 2
    assert prompt_ids(tok, [eot, *ab], PromptStart.DOCUMENT).ids == [eot, *ab]  # already a document's start
    assert prompt_ids(tok, [eot, *ab], PromptStart.SCORED_DOCUMENT).ids == [eot, eot, *ab]  # score, few-shot
    # no room: the document start goes first, then the prompt is cut from the left
    full = prompt_ids(tok, "abc", PromptStart.DOCUMENT, room=3)
    assert full.ids == tok.encode("abc") and not full.cut and full.shortened
    cut = prompt_ids(tok, "abcd", PromptStart.DOCUMENT, room=3)
    assert cut.ids == tok.encode("bcd") and cut.cut == 1
