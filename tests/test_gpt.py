import math

import pytest
import torch

from multimodal.gpt import GPT, PRESETS, GPTConfig, preset


def test_generate_greedy_matches_uncached_argmax(tiny_gpt):
    ids = torch.tensor([[5, 9, 200, 33]])
    new = tiny_gpt.generate_ids(ids, 6, None)  # default temperature 1: use explicit greedy below
    from multimodal.sampling import SamplingSettings

    new = tiny_gpt.generate_ids(ids, 6, SamplingSettings(temperature=0))[0].tolist()
    seq = ids[0].tolist()
    for _ in range(6):  # the slow way: a full forward for every token
        seq.append(int(tiny_gpt(torch.tensor([seq]))[0, -1].argmax()))
    assert new == seq[4:]


def test_seed_reproducible_and_top_k_1_is_greedy(tiny_gpt):
    a = tiny_gpt.generate("abc", 10, temperature=1.0, seed=3, stop_at_eot=False)
    b = tiny_gpt.generate("abc", 10, temperature=1.0, seed=3, stop_at_eot=False)
    c = tiny_gpt.generate("abc", 10, temperature=1.0, seed=4, stop_at_eot=False)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    greedy = tiny_gpt.generate("abc", 10, temperature=0, stop_at_eot=False)
    assert tiny_gpt.generate("abc", 10, temperature=1.0, top_k=1, seed=1, stop_at_eot=False).tokens == greedy.tokens


def test_stop_string_cuts_output(tiny_gpt):
    full = tiny_gpt.generate("xy", 12, temperature=0, stop_at_eot=False)
    stop = full.text[3:5]
    cut = tiny_gpt.generate("xy", 12, temperature=0, stop=[stop], stop_at_eot=False)
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert len(cut.tokens) < len(full.tokens)


def test_long_prompt_cut_from_left_with_warning(tiny_gpt):
    with pytest.warns(UserWarning, match="cut from the left"):
        out = tiny_gpt.generate("z" * 100, 8, temperature=0)
    assert out.truncated_prompt and out.prompt_tokens == 32 - 8 + 1


def test_score_sums_token_logprobs(tiny_gpt):
    s = tiny_gpt.score("hello")
    assert len(s["logprobs"]) == 5 and s["tokens"] == list("hello")
    assert math.isclose(s["total_logprob"], sum(s["logprobs"]), rel_tol=1e-6)
    ids = torch.tensor([[256] + list(b"hello")])
    logp = tiny_gpt(ids)[0, :-1].log_softmax(-1)
    expected = sum(logp[i, ids[0, i + 1]].item() for i in range(5))
    assert math.isclose(s["total_logprob"], expected, rel_tol=1e-5)
    assert math.isclose(s["perplexity"], math.exp(-expected / 5), rel_tol=1e-5)


def test_score_longer_than_context_uses_windows(tiny_gpt):
    text = "the quick brown fox jumps over the lazy dog " * 2  # 88 bytes > context 32
    s = tiny_gpt.score(text)
    ids = [256] + list(text.encode())
    assert len(s["logprobs"]) == len(ids) - 1 == 88 and s["windows"] == 3
    # by hand: tokens 1-32 see the context from the start, 33-64 from token 32 (the second window), and the last
    # window is full, so tokens 65-88 see it from 88 - 32 = 56
    with torch.no_grad():
        for t in range(1, len(ids)):
            start = 0 if t <= 32 else 32 if t <= 64 else len(ids) - 1 - 32
            want = tiny_gpt(torch.tensor([ids[start:t]]))[0, -1].log_softmax(-1)[ids[t]].item()
            assert math.isclose(s["logprobs"][t - 1], want, rel_tol=1e-4, abs_tol=1e-5), t


def test_lm_head_tied_and_presets():
    m = GPT(GPTConfig(vocab_size=100, context_length=8, backbone={"width": 16, "layers": 1, "heads": 2}))
    assert m.lm_head.weight.data_ptr() == m.token_embedding.weight.data_ptr()
    assert preset("gpt3-13b").backbone.layers == 40 and preset("gpt3-small").context_length == 2048
    assert set(PRESETS) >= {"gpt2", "gpt2-medium", "gpt3-small", "gpt3-xl", "gpt3-13b"}
    # GPT-2 small has 124M parameters (with the position table)
    meta = GPT.__new__(GPT)
    del meta
    cfg = preset("gpt2")
    w = cfg.backbone.width
    n = cfg.vocab_size * w + cfg.context_length * w + cfg.backbone.layers * (12 * w**2 + 13 * w) + 2 * w
    assert round(n / 1e6) == 124


def test_generate_never_cuts_a_prompt_that_fits(tiny_gpt):
    import warnings

    prompt = "x" * 30  # 30 byte tokens; the context is 32: room for 3 new tokens (the last is never fed back)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cut from the left" warning
        out = tiny_gpt.generate(prompt, max_tokens=20, temperature=0, stop_at_eot=False)
    assert not out.truncated_prompt and out.prompt_tokens == 30 and len(out.tokens) == 3
    with pytest.warns(UserWarning, match="cut from the left"):
        longer = tiny_gpt.generate("y" * 40, max_tokens=4, temperature=0, stop_at_eot=False)
    assert longer.truncated_prompt and len(longer.tokens) == 4


def test_generate_takes_max_tokens_like_the_cli_and_the_service(tiny_gpt):
    """One name everywhere: ``max_tokens`` (``--max-tokens``, the service's field); ``max_new_tokens`` still works
    for old callers, with a DeprecationWarning."""
    out = tiny_gpt.generate("ab", max_tokens=3, temperature=0, stop_at_eot=False)
    assert len(out.tokens) == 3 and out.finish_reason == "length"
    with pytest.warns(DeprecationWarning, match="use max_tokens"):
        old = tiny_gpt.generate("ab", max_new_tokens=3, temperature=0, stop_at_eot=False)
    assert old.tokens == out.tokens
