"""Shared fixtures: tiny models and files built on the fly (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

# In CI (.ci/run exports MULTIMODAL_CI=1) a skip is a failure: a skip there would hide a broken import, a missing
# browser, font or curl, or a missing packaged model. Only skips whose reason contains one of these strings, reasons
# a CPU-only CI machine cannot meet, stay skips.
CI_ALLOWED_SKIPS = (
    "needs a GPU",
    "needs CUDA",
    "tomllib is in the standard library from Python 3.11",  # CI's python3 may be 3.10 (requires-python >= 3.10)
)


def ci_refuses(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    """The reason of a skip that CI must count as a failure, or None (not in CI, not a skip, or allowed)."""
    if os.environ.get("MULTIMODAL_CI") != "1" or not report.skipped or hasattr(report, "wasxfail"):
        return None
    longrepr = report.longrepr
    reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")
    return None if any(allowed in reason for allowed in CI_ALLOWED_SKIPS) else reason


def fail_refused_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = ci_refuses(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped in CI (MULTIMODAL_CI=1), where a skip is a failure: {reason}\n"
            "(install what it needs in .ci/run, or add a reason CI cannot meet to CI_ALLOWED_SKIPS in tests/conftest.py)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fail_refused_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    fail_refused_skip(outcome.get_result())  # a module-level skip (pytest.importorskip, pytestmark)


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
    import transformers
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
