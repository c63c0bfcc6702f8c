"""Continuous batching for GPT completions over the backbone's KV cache.

One thread owns the model and one KV cache of ``max_batch`` rows ("slots"). Every iteration it

1. admits waiting sequences into free slots: their prompts run together (right-padded, each row under its own
   causal mask) into the cache rows after the running ones (``KVCache.narrow``);
2. samples one token for every running sequence from its pending logits: rows with the same settings
   (``SamplingSettings.batch_key``) go through ``multimodal.sampling.sample_rows`` together, each row drawing
   from its own ``torch.Generator`` (seeded per request), so a seed gives the same text alone or in any company
   (up to the rounding of different batch shapes in the matrix products, which can move a draw only when it
   falls within about 1e-6 of a boundary);
3. releases finished or cancelled sequences (the last running row moves into the freed slot with
   ``KVCache.copy_row``, keeping the running rows contiguous);
4. feeds the new token of every running sequence in one forward pass, each row at its own position
   (``Transformer.forward(pos=tensor)``) → the next pending logits.

Requests therefore join and leave the running batch between decode steps. What a token means for its sequence
(end-of-text, stop strings, the text safe to release, log-probs) is ``multimodal.generation``'s ``TextStream``,
the same as ``GPT.generate``'s: the engine only batches and schedules. Results travel back as ``Event``s
through a callback the caller makes thread-safe (the server posts them onto its event loop).

No request can hurt another: ``submit`` checks every choice (ids, lengths, settings) and refuses a bad one with a
``ValueError`` before it joins; and when a batched step raises all the same, the step is run again one row at a
time, so only the rows that fail alone end with an error event while the others go on.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from multimodal.generation import TextStream, TokenInfo, prompt_logprobs, token_logprobs
from multimodal.gpt.model import GPT
from multimodal.sampling import SamplingSettings, sample_rows

# OpenAI's finish reasons: end-of-text is a "stop" as a stop string is
FINISH_REASONS = {"eot": "stop"}


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
    stream: TextStream | None = None  # the generated tokens and text (from the prefill on)
    pending: Tensor | None = None  # logits [V] for the next token
    cached: int = 0  # positions of this sequence in the cache

    @property
    def new(self) -> list[int]:
        """The tokens generated so far."""
        return self.stream.new if self.stream is not None else []

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
        self.failed = 0  # choices ended by an error of their own
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
            "failed": self.failed,
        }

    def check(self, seq: Choice) -> None:
        """Raise ``ValueError`` for a choice the loop could not run (the server answers 400)."""
        vocab, context = self.model.config.vocab_size, self.context_length
        if not seq.ids:
            raise ValueError("empty prompt")
        bad = [t for t in seq.ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token id {bad[0]!r} is outside the vocabulary [0, {vocab})")
        if seq.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {seq.max_tokens}")
        if len(seq.ids) + max(seq.max_tokens - 1, 0) > context:
            raise ValueError(
                f"{len(seq.ids)} prompt tokens + {seq.max_tokens} new ones exceed the context of {context}"
            )
        if seq.logprobs is not None and not 0 <= seq.logprobs <= vocab:
            raise ValueError(f"logprobs must be in [0, {vocab}], got {seq.logprobs}")
        seq.settings.__post_init__()  # the settings' own checks, again: they may have changed since

    def submit(self, sequences: list[Choice]) -> bool:
        """Queue sequences; False when the queue is full (the caller answers "busy"). A choice that fails
        ``check`` raises ``ValueError`` and none of them is queued."""
        for seq in sequences:
            self.check(seq)
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
            except Exception as e:  # noqa: BLE001 - a bug outside the per-row guards: end what is running
                for seq in self.running + [s for s in admitted if s not in self.running]:
                    self._fail(seq, e)
                self.running = []

    def _fail(self, seq: Choice, e: Exception) -> None:
        """End ``seq`` with an error event (its traceback to the server's log); the others go on."""
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        self.failed += 1
        seq.cancelled = True
        message = f"generation failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        try:
            seq.emit(Event("", [], "error", len(seq.new), error=message))
        except Exception:  # noqa: BLE001 - its client's callback is broken too; nothing more to tell it
            traceback.print_exc(file=sys.stderr)

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
            try:
                self._finish_prefill(seq, self.model.hidden(torch.tensor([seq.ids], device=self.device))[0])
            except Exception as e:  # noqa: BLE001 - this request's own failure
                self._fail(seq, e)
        rest = sorted((s for s in seqs if s.max_tokens > 0), key=lambda s: len(s.ids))
        while rest:
            group = [rest.pop(0)]
            # keep the padding small: a group's padded size stays within twice its real tokens (+ 64)
            while (
                rest
                and len(rest[0].ids) * (len(group) + 1) <= 2 * (sum(len(s.ids) for s in group) + len(rest[0].ids)) + 64
            ):
                group.append(rest.pop(0))
            try:
                self._prefill_group(group)
            except Exception as e:  # noqa: BLE001 - find the prompt that fails on its own
                if len(group) == 1:
                    self._fail(group[0], e)
                    continue
                for s in group:
                    try:
                        self._prefill_group([s])
                    except Exception as e1:  # noqa: BLE001
                        self._fail(s, e1)

    def _prefill_group(self, group: list[Choice]) -> None:
        """One forward pass over ``group``'s prompts into the cache rows after the running ones; the rows join
        ``running`` only once it succeeded (a failed pass leaves nothing that a retry would not overwrite)."""
        width = max(len(s.ids) for s in group)
        ids = torch.full((len(group), width), self.tokenizer.eot_id, dtype=torch.long, device=self.device)
        for i, s in enumerate(group):
            ids[i, : len(s.ids)] = torch.tensor(s.ids, device=self.device)
        views = self._views_for(len(self.running), len(group))
        zeros = torch.zeros(len(group), dtype=torch.long, device=self.device)
        hidden = self.model.hidden(ids, views, zeros)  # [g, width, C]
        for i, s in enumerate(group):
            s.cached = len(s.ids)
            self.running.append(s)
            try:
                self._finish_prefill(s, hidden[i, : len(s.ids)])
            except Exception as e:  # noqa: BLE001 - its row stays until the next compaction, then leaves
                self._fail(s, e)

    def _finish_prefill(self, seq: Choice, hidden: Tensor) -> None:
        """``hidden [T, C]`` of ``seq``'s prompt → its pending logits, and the echoed prompt if asked."""
        prefix = 0  # characters of echoed prompt before the generated text
        if seq.echo:
            seq.prompt_text = seq.prompt_text if seq.prompt_text is not None else self.tokenizer.decode(seq.ids)
            prefix = len(seq.prompt_text)
        seq.stream = TextStream(self.tokenizer, seq.max_tokens, seq.stops, seq.logprobs, offset=prefix)
        tokens = []
        if seq.echo and seq.logprobs is not None:
            logits = self.model.lm_head(hidden)  # [T, V]
            seq.pending = logits[-1]
            tokens = prompt_logprobs(self.tokenizer, seq.ids, logits[:-1], seq.logprobs)
        else:
            seq.pending = self.model.lm_head(hidden[-1:])[0]  # 2-D: int8 Linear layers take no 1-D input
        if seq.echo:
            seq.emit(Event(seq.prompt_text, tokens))
        if seq.max_tokens == 0:
            seq.emit(Event("", [], "length", 0))

    def _sample(self) -> None:
        """One token for every running row: batched by settings; a row whose logits are not finite, or whose
        group fails, is sampled alone (and fails alone)."""
        seqs = self.running
        logits = torch.stack([s.pending for s in seqs])  # [n, V]
        finite = torch.isfinite(logits).all(-1).tolist()
        tokens: dict[int, int] = {}
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(seqs):
            if not finite[i]:
                self._fail(s, FloatingPointError("the model gave non-finite logits for this sequence"))
                continue
            groups.setdefault(s.settings.batch_key(), []).append(i)
        for rows in groups.values():
            try:
                tokens.update(zip(rows, self._pick(logits, rows)))
            except Exception:  # noqa: BLE001 - find the row that fails on its own
                for r in rows:
                    try:
                        tokens[r] = self._pick(logits, [r])[0]
                    except Exception as e:  # noqa: BLE001
                        self._fail(seqs[r], e)
        want = [i for i in tokens if seqs[i].logprobs is not None]
        infos: dict[int, tuple[float, dict]] = {}
        if want:
            chosen, ks = [tokens[i] for i in want], [seqs[i].logprobs for i in want]
            infos = dict(zip(want, token_logprobs(self.tokenizer, logits[want], chosen, ks)))
        self.steps += 1
        for i, token in tokens.items():
            self.generated_tokens += 1
            try:
                self._advance(seqs[i], token, infos.get(i))
            except Exception as e:  # noqa: BLE001 - e.g. its client's callback
                self._fail(seqs[i], e)

    def _pick(self, logits: Tensor, rows: list[int]) -> list[int]:
        """Tokens for ``rows`` of ``logits`` (same settings): greedy, or each row from its own generator."""
        gens = [self.running[r].generator for r in rows]
        return sample_rows(logits[rows], self.running[rows[0]].settings, gens)

    def _advance(self, seq: Choice, token: int, info: tuple[float, dict] | None) -> None:
        """Append ``token`` to ``seq`` (its ``TextStream``), send the text it releases, and finish it when done."""
        released = seq.stream.push(token, info)
        finish = FINISH_REASONS.get(released.finish_reason, released.finish_reason)
        if finish is not None:
            seq.emit(Event(released.text, released.tokens, finish, len(seq.new)))
            seq.cancelled = True  # leaves at the next compaction
        else:
            seq.emit(Event(released.text, released.tokens))

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
        """Feed every running row its new token in one forward pass; if the pass fails, row by row (a row's
        cache entries at its position are simply written again), and only a row that fails alone is ended."""
        try:
            self._forward(0, self.running)
        except Exception:  # noqa: BLE001
            for i, seq in enumerate(self.running):
                try:
                    self._forward(i, [seq])
                except Exception as e:  # noqa: BLE001
                    self._fail(seq, e)

    def _forward(self, start: int, seqs: list[Choice]) -> None:
        ids = torch.tensor([[s.new[-1]] for s in seqs], device=self.device)  # [n, 1]
        pos = torch.tensor([s.cached for s in seqs], device=self.device)  # [n]
        logits = self.model(ids, self._views_for(start, len(seqs)), pos)[:, -1]  # [n, V]
        for s, row in zip(seqs, logits):
            s.pending = row
            s.cached += 1
