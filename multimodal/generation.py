"""The suite's one generation module: a prompt's token ids in, tokens and text out.

Every path that turns a prompt into text goes through here: ``GPT.generate`` (and the ``generate`` CLI), the
few-shot evaluator's greedy answers and the service's batching engine, which adds only scheduling. What they
share, written once:

- ``prompt_ids``: how a prompt starts (``PromptStart``: as given, or as the start of a document, with the
  end-of-text token first) and how it is cut to the room the context leaves;
- ``TextStream``: one row's state from token to token: end-of-text, stop strings (cut from the text), length,
  and the text that is safe to release while streaming (held back while it may still be the start of a stop
  string or an incomplete UTF-8 / BPE piece), with each token's log-probability and top alternatives;
- ``token_logprobs`` / ``prompt_logprobs``: log-probabilities of chosen tokens and their ``k`` most likely
  alternatives (OpenAI's ``logprobs``), for generated tokens and for an echoed prompt;
- ``complete``: the decode of one row (``multimodal.sampling.decode``, the suite's one decode loop) into a
  ``Completion``.

Seeds go through ``multimodal.sampling.reduce_seed`` (any Python integer); the settings' grouping key for a batch
and the per-row generators are ``SamplingSettings.batch_key`` / ``row_generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import Tensor

from multimodal.sampling import SamplingSettings, decode
from multimodal.tokenizers import Tokenizer


class PromptStart(Enum):
    """How the model reads a prompt. The end-of-text token is GPT-2's document separator: after it the model
    reads the prompt as the start of a document, not as text cut from the middle of one (a training row starts
    at an arbitrary place)."""

    AS_GIVEN = "as given"  # the tokens as sent; an empty prompt is the end-of-text token alone
    DOCUMENT = "document"  # end-of-text first, unless the prompt already starts with it or fills the room
    SCORED_DOCUMENT = "scored document"  # end-of-text always first: every prompt token is read after it


# Which path reads a prompt how, decided here.
GENERATE_START = PromptStart.DOCUMENT  # GPT.generate (document_start=True) and ``python -m multimodal.generate``
SCORING_START = PromptStart.SCORED_DOCUMENT  # GPT.score and few-shot (lm-eval's rolling log-likelihood)
SERVICE_START = PromptStart.AS_GIVEN  # the OpenAI-compatible service continues a prompt as given, as OpenAI / vLLM


@dataclass(frozen=True)
class PromptIds:
    """What the model reads for a prompt."""

    ids: list[int]
    start: bool  # the end-of-text token was put first (it is not one of the prompt's tokens)
    cut: int  # prompt tokens cut from the left to fit the room
    shortened: bool  # something was left out: prompt tokens, or the document start asked for

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids) - self.start


def prompt_ids(
    tokenizer: Tokenizer, prompt: str | Sequence[int], start: PromptStart, room: int | None = None
) -> PromptIds:
    """``prompt`` (text, or token ids) → the ids the model reads, at most ``room`` of them (None: no limit): the
    end-of-text token first as ``start`` says, then the prompt cut from the left when it does not fit (the
    document start is left out first: it never costs a prompt token)."""
    eot = tokenizer.eot_id
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    if start is not PromptStart.SCORED_DOCUMENT:
        ids = ids or [eot]  # an empty prompt is the end-of-text token, itself the start of a document
    first = [eot] if start is PromptStart.SCORED_DOCUMENT or (start is PromptStart.DOCUMENT and ids[0] != eot) else []
    whole = first + ids
    if room is None or len(whole) <= room:
        return PromptIds(whole, bool(first), 0, False)
    return PromptIds(whole[-room:], False, max(len(ids) - room, 0), True)


@dataclass
class TokenInfo:
    """One token of a choice, as OpenAI's ``logprobs`` object lists it."""

    token: str
    logprob: float | None  # None for the first prompt token (nothing before it to condition on)
    top: dict[str, float] | None
    offset: int  # where the token's text starts in the choice's text (echoed prompt included)


def token_logprobs(
    tokenizer: Tokenizer, logits: Tensor, chosen: Sequence[int], ks: Sequence[int]
) -> list[tuple[float, dict[str, float]]]:
    """Row ``r`` of ``logits [N, V]`` → (log-probability of ``chosen[r]``, its ``ks[r]`` most likely tokens plus the
    chosen one, as OpenAI and vLLM list them)."""
    if not len(chosen):  # e.g. a one-token prompt has no scored token
        return []
    logp = logits.float().log_softmax(-1)
    k = min(max(ks), logp.shape[-1])
    values, index = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
    picked = logp.gather(-1, torch.tensor(list(chosen), device=logp.device)[:, None])[:, 0].tolist()
    out = []
    for row_v, row_i, row_k, c, lp in zip(values.tolist(), index.tolist(), ks, chosen, picked):
        top = {tokenizer.decode([i]): v for i, v in zip(row_i[:row_k], row_v[:row_k])}
        top.setdefault(tokenizer.decode([c]), lp)
        out.append((lp, top))
    return out


def prompt_logprobs(tokenizer: Tokenizer, ids: Sequence[int], logits: Tensor, k: int) -> list[TokenInfo]:
    """An echoed prompt's tokens: log-probs of tokens 1.. given the ones before (``logits [T-1, V]``, the model's
    logits at positions 0..T-2), with ``k`` alternatives; token 0 has none."""
    scored = token_logprobs(tokenizer, logits, ids[1:], [k] * (len(ids) - 1))
    offsets = [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]
    out = [TokenInfo(tokenizer.decode([ids[0]]), None, None, offsets[0])]
    for i, (lp, top) in enumerate(scored, start=1):
        out.append(TokenInfo(tokenizer.decode([ids[i]]), lp, top, offsets[i]))
    return out


@dataclass
class Released:
    """What one token released: text safe to show, its tokens' log-probs, and the end."""

    text: str
    tokens: list[TokenInfo]
    finish_reason: str | None = None  # "stop" (a stop string) | "eot" (end-of-text) | "length"; None: more to come


@dataclass
class TextStream:
    """One row's generation, token by token (``push``): the new tokens, the text so far and what of it is
    released. It ends at end-of-text (``stop_at_eot``), at the first stop string (cut from the text, with the
    tokens wholly inside it), or after ``max_tokens``. ``logprobs``: ``k`` alternatives per token, or None."""

    tokenizer: Tokenizer
    max_tokens: int
    stops: Sequence[str] = ()
    logprobs: int | None = None
    stop_at_eot: bool = True
    offset: int = 0  # characters before the generated text in token offsets (an echoed prompt)
    new: list[int] = field(default_factory=list)
    text: str = ""
    released: int = 0  # characters of ``text`` released
    finish_reason: str | None = None
    token_infos: list[TokenInfo] = field(default_factory=list)

    def push(self, token: int, info: tuple[float, dict[str, float]] | None = None) -> Released:
        """Append ``token`` (``info``: its log-prob and top alternatives) → what it releases."""
        tok = self.tokenizer
        self.new.append(token)
        eot = self.stop_at_eot and token == tok.eot_id
        text = tok.decode(self.new[:-1] if eot else self.new)
        stop_at = [text.find(s) for s in self.stops if s and s in text]
        if stop_at:
            text, self.finish_reason = text[: min(stop_at)], "stop"
        elif eot:
            self.finish_reason = "eot"
        elif len(self.new) >= self.max_tokens:
            self.finish_reason = "length"
        self.text = text
        safe = self._safe_end() if self.finish_reason is None else len(text)
        delta = text[self.released : max(safe, self.released)]
        self.released = max(safe, self.released)
        tokens = []
        if info is not None and not eot:
            offset = len(tok.decode(self.new[:-1]))
            if self.finish_reason != "stop" or offset < len(text):  # a token wholly inside the stop string is cut
                tokens.append(TokenInfo(tok.decode([token]), info[0], info[1], self.offset + offset))
        self.token_infos.extend(tokens)
        return Released(delta, tokens, self.finish_reason)

    def _safe_end(self) -> int:
        """How much of the text may be released while more is to come."""
        text, safe = self.text, len(self.text)
        while safe > self.released and text[safe - 1] == "\ufffd":  # maybe half a UTF-8 character
            safe -= 1
        for s in self.stops:  # hold back a tail that may become a stop string
            for k in range(min(len(s) - 1, safe - self.released), 0, -1):
                if text[:safe].endswith(s[:k]):
                    safe -= k
                    break
        return safe

    @property
    def tokens(self) -> list[int]:
        """The generated tokens, the end-of-text that ended them left out."""
        return self.new[:-1] if self.finish_reason == "eot" else list(self.new)


@dataclass
class Completion:
    """A finished row: its text (stop string excluded), tokens (end-of-text excluded), how it ended, and the
    log-probs of its tokens (None unless asked)."""

    text: str
    tokens: list[int]
    finish_reason: str  # "stop" | "eot" | "length"
    logprobs: list[TokenInfo] | None = None


def complete(
    first_logits: Tensor,
    step: Callable[[Tensor, int], Tensor],
    stream: TextStream,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
) -> Completion:
    """Decode one row: ``first_logits [1, V]`` after the prompt, ``step(token [1, 1], i)`` → the next logits (a
    KV-cached forward, as ``multimodal.sampling.decode`` takes it); tokens go into ``stream`` until it ends."""
    latest = first_logits  # the logits the last token was drawn from (its log-probs)

    def step_and_keep(token: Tensor, i: int) -> Tensor:
        nonlocal latest
        latest = step(token, i)
        return latest

    def is_done(tokens: Tensor) -> Tensor:
        token = int(tokens[0, -1])
        info = None
        if stream.logprobs is not None:
            (info,) = token_logprobs(stream.tokenizer, latest[:1], [token], [stream.logprobs])
        stream.push(token, info)
        return torch.tensor([stream.finish_reason is not None])

    decode(step_and_keep, first_logits, stream.max_tokens, settings, generator, is_done)
    logprobs = stream.token_infos if stream.logprobs is not None else None
    return Completion(stream.text, stream.tokens, stream.finish_reason or "length", logprobs)
