"""Continuous batching for GPT completions over the backbone's KV cache.

One thread owns the model and one KV cache of ``max_batch`` rows ("slots"). Every iteration it

1. admits waiting sequences into free slots: their prompts run together (right-padded, each row under its own
   causal mask) into the cache rows after the running ones (``KVCache.narrow``);
2. samples one token for every running sequence from its pending logits: rows with the same settings go
   through ``multimodal.sampling.filter_logits`` together, then each row draws from its own
   ``torch.Generator`` (seeded per request), so a seed gives the same text alone or in any company (up to the
   rounding of different batch shapes in the matrix products, which can move a draw only when it falls within
   about 1e-6 of a boundary);
3. releases finished or cancelled sequences (the last running row moves into the freed slot with
   ``KVCache.copy_row``, keeping the running rows contiguous);
4. feeds the new token of every running sequence in one forward pass, each row at its own position
   (``Transformer.forward(pos=tensor)``) → the next pending logits.

Requests therefore join and leave the running batch between decode steps. Results travel back as ``Event``s
through a callback the caller makes thread-safe (the server posts them onto its event loop).
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from multimodal.gpt.model import GPT
from multimodal.sampling import SamplingSettings, filter_logits


@dataclass
class TokenInfo:
    """One token of a choice, as OpenAI's ``logprobs`` object lists it."""

    token: str
    logprob: float | None  # None for the first prompt token (nothing before it to condition on)
    top: dict[str, float] | None
    offset: int  # where the token's text starts in the choice's text (echoed prompt included)


@dataclass
class Event:
    """What a sequence produced since the last event: released text, its tokens, and the end."""

    text: str
    tokens: list[TokenInfo]
    finish_reason: str | None = None  # "stop" (end-of-text or a stop string) | "length"; None: more to come
    completion_tokens: int = 0  # generated tokens so far (usage), set on the last event
    error: str | None = None


@dataclass(eq=False)  # identity: choices are compared by ``in``, and their fields hold tensors
class Choice:
    """One choice to generate (a request has ``len(prompts) × n``): a prompt (token ids), how to continue it."""

    ids: list[int]
    max_tokens: int
    settings: SamplingSettings
    emit: Callable[[Event], None]
    generator: torch.Generator | None = None
    stops: Sequence[str] = ()
    logprobs: int | None = None  # top-k alternatives per token; None: no logprobs
    echo: bool = False  # first event carries the prompt (and, with logprobs, its tokens' log-probs)
    prompt_text: str | None = None  # the prompt as the client sent it (echo); None: decoded from ids
    cancelled: bool = False
    # state, owned by the engine thread
    new: list[int] = field(default_factory=list)
    pending: Tensor | None = None  # logits [V] for the next token
    cached: int = 0  # positions of this sequence in the cache
    released: int = 0  # characters of generated text already sent
    prefix_len: int = 0  # characters of echoed prompt before the generated text

    def cancel(self) -> None:
        """Ask the engine to drop this sequence at its next step (e.g. the client went away)."""
        self.cancelled = True


class Engine:
    """Runs GPT completions for many clients in one continuously batched decode loop (see the module doc)."""

    def __init__(self, model: GPT, max_batch: int = 16, max_waiting: int = 1024):
        if model.tokenizer is None:
            raise ValueError("the GPT has no tokenizer")
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        weight = model.token_embedding.weight
        self.device = weight.device
        self.cache = model.transformer.make_cache(max_batch, model.config.context_length, self.device, weight.dtype)
        self._views: dict[int, list] = {}
        self.running: list[Choice] = []  # row i of the cache holds running[i]
        self.waiting: deque[Choice] = deque()
        self.generated_tokens = 0
        self.steps = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="gpt-engine", daemon=True)
        self._thread.start()

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    def cache_megabytes(self) -> float:
        return sum(c.k.numel() * c.k.element_size() * 2 for c in self.cache) / 2**20

    def stats(self) -> dict:
        return {
            "running": len(self.running),
            "waiting": len(self.waiting),
            "slots": self.max_batch,
            "generated_tokens": self.generated_tokens,
            "steps": self.steps,
        }

    def submit(self, sequences: list[Choice]) -> bool:
        """Queue sequences; False when the queue is full (the caller answers "busy")."""
        with self._cond:
            if len(self.waiting) + len(sequences) > self.max_waiting:
                return False
            self.waiting.extend(sequences)
            self._cond.notify()
        return True

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=5)

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                while not self._stop and not self.waiting and not self.running:
                    self._cond.wait()
                if self._stop:
                    return
                admitted = []
                while self.waiting and len(self.running) + len(admitted) < self.max_batch:
                    seq = self.waiting.popleft()
                    if not seq.cancelled:
                        admitted.append(seq)
                # scoring-only requests need no slot; take them even when every slot is busy
                rest = deque()
                while self.waiting:
                    seq = self.waiting.popleft()
                    (admitted if seq.max_tokens == 0 else rest).append(seq)
                self.waiting = rest
            try:
                with torch.inference_mode():
                    self._iteration(admitted)
            except Exception as e:  # noqa: BLE001 - one bad batch must not stop the server
                traceback.print_exc(file=sys.stderr)
                message = f"generation failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                for seq in self.running + [s for s in admitted if s not in self.running]:
                    seq.emit(Event("", [], "error", len(seq.new), error=message))
                self.running = []

    def _iteration(self, admitted: list[Choice]) -> None:
        if admitted:
            self._prefill(admitted)
        self._compact()
        if not self.running:
            return
        self._sample()
        self._compact()
        if self.running:
            self._decode()

    def _views_for(self, start: int, length: int) -> list:
        if start == 0:
            if length not in self._views:
                self._views[length] = [c.narrow(0, length) for c in self.cache]
            return self._views[length]
        return [c.narrow(start, length) for c in self.cache]

    def _prefill(self, seqs: list[Choice]) -> None:
        """Run new prompts into the cache rows after the running ones, several in one forward pass: prompts are
        padded on the right, each row's causal mask stops at its own end, and the padding's keys are overwritten
        by the row's own tokens before any query can see them."""
        scoring = [s for s in seqs if s.max_tokens == 0]
        for seq in scoring:  # no slot, no cache
            self._finish_prefill(seq, self.model.hidden(torch.tensor([seq.ids], device=self.device))[0])
        rest = sorted((s for s in seqs if s.max_tokens > 0), key=lambda s: len(s.ids))
        while rest:
            group = [rest.pop(0)]
            # keep the padding small: a group's padded size stays within twice its real tokens (+ 64)
            while (
                rest
                and len(rest[0].ids) * (len(group) + 1) <= 2 * (sum(len(s.ids) for s in group) + len(rest[0].ids)) + 64
            ):
                group.append(rest.pop(0))
            width = max(len(s.ids) for s in group)
            ids = torch.full((len(group), width), self.tokenizer.eot_id, dtype=torch.long, device=self.device)
            for i, s in enumerate(group):
                ids[i, : len(s.ids)] = torch.tensor(s.ids, device=self.device)
            start = len(self.running)
            views = self._views_for(start, len(group))
            zeros = torch.zeros(len(group), dtype=torch.long, device=self.device)
            hidden = self.model.hidden(ids, views, zeros)  # [g, width, C]
            for i, s in enumerate(group):
                s.cached = len(s.ids)
                self.running.append(s)
                self._finish_prefill(s, hidden[i, : len(s.ids)])

    def _finish_prefill(self, seq: Choice, hidden: Tensor) -> None:
        """``hidden [T, C]`` of ``seq``'s prompt → its pending logits, and the echoed prompt if asked."""
        if seq.echo:
            seq.prompt_text = seq.prompt_text if seq.prompt_text is not None else self.tokenizer.decode(seq.ids)
            seq.prefix_len = len(seq.prompt_text)
        tokens = []
        if seq.echo and seq.logprobs is not None:
            logits = self.model.lm_head(hidden)  # [T, V]
            seq.pending = logits[-1]
            tokens = self._prompt_tokens(seq, logits[:-1].float().log_softmax(-1))
        else:
            seq.pending = self.model.lm_head(hidden[-1])
        if seq.echo:
            seq.emit(Event(seq.prompt_text, tokens))
        if seq.max_tokens == 0:
            seq.emit(Event("", [], "length", 0))

    def _prompt_tokens(self, seq: Choice, logp: Tensor) -> list[TokenInfo]:
        """Log-probs of prompt tokens 1.. given the ones before (``logp [T-1, V]``); token 0 has none."""
        ids = seq.ids
        chosen = logp.gather(-1, torch.tensor(ids[1:], device=logp.device)[:, None])[:, 0].tolist()
        tops = self._tops(logp, [seq.logprobs] * (len(ids) - 1), ids[1:])
        pieces = _pieces(self.tokenizer, ids)
        offsets = _offsets(self.tokenizer, ids)
        out = [TokenInfo(pieces[0], None, None, offsets[0])]
        for i in range(1, len(ids)):
            out.append(TokenInfo(pieces[i], chosen[i - 1], tops[i - 1], offsets[i]))
        return out

    def _tops(self, logp: Tensor, ks: list[int], chosen: list[int]) -> list[dict[str, float]]:
        """Row r of ``logp [N, V]``: its ``ks[r]`` most likely tokens plus the chosen one (as OpenAI and vLLM)."""
        tok = self.tokenizer
        k = min(max(ks), logp.shape[-1])
        values, index = logp.topk(k, dim=-1) if k else (logp[:, :0], logp[:, :0].long())
        picked = logp.gather(-1, torch.tensor(chosen, device=logp.device)[:, None])[:, 0].tolist()
        out = []
        for row_v, row_i, row_k, c, lp in zip(values.tolist(), index.tolist(), ks, chosen, picked):
            top = {tok.decode([i]): v for i, v in zip(row_i[:row_k], row_v[:row_k])}
            top.setdefault(tok.decode([c]), lp)
            out.append(top)
        return out

    def _sample(self) -> None:
        seqs = self.running
        logits = torch.stack([s.pending for s in seqs])  # [n, V]
        tokens = [0] * len(seqs)
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(seqs):
            st = s.settings
            groups.setdefault((st.temperature, st.top_k, st.top_p), []).append(i)
        for (temperature, top_k, top_p), rows in groups.items():
            if temperature == 0:  # greedy, as multimodal.sampling.sample_next
                picked = logits[rows].argmax(-1).tolist()
            else:
                probs = filter_logits(logits[rows], temperature, top_k, top_p).softmax(-1)
                picked = [
                    int(torch.multinomial(probs[j : j + 1], 1, generator=seqs[r].generator)) for j, r in enumerate(rows)
                ]
            for r, t in zip(rows, picked):
                tokens[r] = t
        want = [i for i, s in enumerate(seqs) if s.logprobs is not None]
        infos: dict[int, tuple[float, dict]] = {}
        if want:
            logp = logits[want].float().log_softmax(-1)
            chosen = [tokens[i] for i in want]
            tops = self._tops(logp, [seqs[i].logprobs for i in want], chosen)
            lps = logp.gather(-1, torch.tensor(chosen, device=logp.device)[:, None])[:, 0].tolist()
            infos = {i: (lps[j], tops[j]) for j, i in enumerate(want)}
        self.steps += 1
        for i, s in enumerate(seqs):
            self.generated_tokens += 1
            self._advance(s, tokens[i], infos.get(i))

    def _advance(self, seq: Choice, token: int, info: tuple[float, dict] | None) -> None:
        """Append ``token`` to ``seq``, release the text that is safe to show, and finish it when done."""
        tok = self.tokenizer
        seq.new.append(token)
        seq.pending = None
        eot = token == tok.eot_id
        ids = seq.new[:-1] if eot else seq.new
        text = tok.decode(ids)
        finish = None
        stop_at = [text.find(s) for s in seq.stops if s and s in text]
        if stop_at:
            text, finish = text[: min(stop_at)], "stop"
        elif eot:
            finish = "stop"
        elif len(seq.new) >= seq.max_tokens:
            finish = "length"
        if finish is None:
            safe = len(text)
            while safe > seq.released and text[safe - 1] == "\ufffd":  # maybe half a UTF-8 character
                safe -= 1
            for s in seq.stops:  # hold back a tail that may become a stop string
                for k in range(min(len(s) - 1, safe - seq.released), 0, -1):
                    if text[:safe].endswith(s[:k]):
                        safe -= k
                        break
        else:
            safe = len(text)
        delta = text[seq.released : max(safe, seq.released)]
        seq.released = max(safe, seq.released)
        tokens = []
        if info is not None and not eot:
            offset = len(tok.decode(seq.new[:-1]))
            if finish != "stop" or offset < len(text):  # a token wholly inside the stop string is not shown
                tokens.append(TokenInfo(tok.decode([token]), info[0], info[1], seq.prefix_len + offset))
        if finish is not None:
            seq.emit(Event(delta, tokens, finish, len(seq.new)))
            seq.cancelled = True  # leaves at the next compaction
        else:
            seq.emit(Event(delta, tokens))

    def _compact(self) -> None:
        """Drop finished / cancelled rows; the last running row moves into each freed slot."""
        i = 0
        while i < len(self.running):
            if self.running[i].cancelled:
                last = len(self.running) - 1
                if i != last:
                    moved = self.running[last]
                    for c in self.cache:
                        c.copy_row(last, i, moved.cached)
                    self.running[i] = moved
                self.running.pop()
            else:
                i += 1

    def _decode(self) -> None:
        seqs = self.running
        n = len(seqs)
        ids = torch.tensor([[s.new[-1]] for s in seqs], device=self.device)  # [n, 1]
        pos = torch.tensor([s.cached for s in seqs], device=self.device)  # [n]
        logits = self.model(ids, self._views_for(0, n), pos)[:, -1]  # [n, V]
        for s, row in zip(seqs, logits):
            s.pending = row
            s.cached += 1


def _pieces(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def _offsets(tokenizer, ids: list[int]) -> list[int]:
    """Character offset of each token's text in ``decode(ids)``."""
    return [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]


def new_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one choice: seeded when the request gives a seed, from fresh entropy otherwise."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g
