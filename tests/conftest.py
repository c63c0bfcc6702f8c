"""Shared fixtures: tiny models and files built on the fly (no downloads)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one OpenMP thread is faster than two fighting data-loader workers and other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_gpt():
    from multimodal.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=257, context_length=32, backbone={"width": 32, "layers": 2, "heads": 4})).eval()


CORPUS = [
    "the cat sat on the mat. the dog sat on the log.",
    "a red circle in the top left and a blue square below it.",
    "language models give the probability of a sequence of words.",
    "12+35=47 and 20-7=13; numbers are words too.",
] * 20


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    """A randomly initialised Hugging Face GPT-2 saved with ``save_pretrained``, with a BPE trained here."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import ByteLevelBPETokenizer

    out = tmp_path_factory.mktemp("hf-gpt2")
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok.save_model(str(out))
    vocab = tok.get_vocab_size()
    cfg = transformers.GPT2Config(
        vocab_size=vocab,
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,  # <|endoftext|> is id 0 in this BPE
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(out)
    return out
