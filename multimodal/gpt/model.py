"""GPT language model: token + position embeddings, the shared backbone under a causal mask, a final
LayerNorm and an LM head tied to the token embedding (GPT-2's layout).

``generate`` decodes with a KV cache through ``multimodal.generation`` (the suite's one generation module);
``score`` gives the log-probability of a text token by token ("a language model gives the probability of a
sequence").
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from multimodal.checkpoint import register
from multimodal.generation import (
    GENERATE_START,
    SCORING_START,
    Completion,
    PromptStart,
    TextStream,
    TokenInfo,
    complete,
    prompt_ids,
)
from multimodal.sampling import SamplingSettings, decode
from multimodal.tokenizers import GPT2Tokenizer, Tokenizer, get_tokenizer
from multimodal.transformer import Transformer, TransformerConfig, nest_backbone


def gpt2_backbone() -> TransformerConfig:
    """GPT-2 small's blocks: width 768, 12 layers of 12 heads, GELU (tanh form)."""
    return TransformerConfig(width=768, layers=12, heads=12, activation="gelu_tanh")


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    context_length: int = 1024
    tokenizer: str = "byte"  # byte | clip | gpt2 (files saved beside the weights)
    backbone: TransformerConfig = field(default_factory=gpt2_backbone)

    def __post_init__(self) -> None:
        self.backbone = TransformerConfig.coerce(self.backbone, gpt2_backbone())

    @staticmethod
    def upgrade(data: dict) -> dict:
        """Exports written before the backbone was nested (``width``, ``layers``, … beside ``vocab_size``)."""
        return nest_backbone(data, gpt2_backbone())


@dataclass
class WarmStart:
    """What another head of the suite copies from a GPT (``GPT.warm_start``), named by role rather than by the
    GPT's attribute names. C is the backbone's width.

    - ``blocks``: the backbone's state dict (the keys of ``multimodal.transformer.Transformer``);
    - ``final_norm``: the final LayerNorm's state dict (``weight [C]``, and ``bias [C]`` when the backbone has biases);
    - ``token_embedding [vocab_size, C]``: also the LM head (tied, as GPT-2);
    - ``position_embedding [context_length, C]``.

    The tensors are the model's own (detached, not copied): copy them, never write into them."""

    backbone: TransformerConfig
    tokenizer: str  # the name the ids of ``token_embedding`` are in (``multimodal.tokenizers``)
    blocks: dict[str, Tensor]
    final_norm: dict[str, Tensor]
    token_embedding: Tensor
    position_embedding: Tensor


def _size(layers: int, width: int, heads: int, context: int) -> dict:
    return {"layers": layers, "width": width, "heads": heads, "context_length": context}


# Model sizes of the GPT-2 and GPT-3 papers (GPT-3: Table 2.1, context 2048).
PRESETS: dict[str, dict] = {
    "gpt2": _size(12, 768, 12, 1024),
    "gpt2-medium": _size(24, 1024, 16, 1024),
    "gpt2-large": _size(36, 1280, 20, 1024),
    "gpt2-xl": _size(48, 1600, 25, 1024),
    "gpt3-small": _size(12, 768, 12, 2048),
    "gpt3-medium": _size(24, 1024, 16, 2048),
    "gpt3-large": _size(24, 1536, 16, 2048),
    "gpt3-xl": _size(24, 2048, 16, 2048),  # the paper lists 24 heads of 128, which cannot make 2048
    "gpt3-2.7b": _size(32, 2560, 32, 2048),
    "gpt3-6.7b": _size(32, 4096, 32, 2048),
    "gpt3-13b": _size(40, 5120, 40, 2048),  # the paper prints 5140, not divisible by 40 heads of 128
}


def preset(name: str, **overrides) -> GPTConfig:
    """``GPTConfig`` of a named paper size (``gpt2``, ``gpt3-small`` … ``gpt3-13b``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    size = dict(PRESETS[name])
    context = size.pop("context_length")
    backbone = overrides.pop("backbone", None) or {}
    backbone = dataclasses.asdict(backbone) if isinstance(backbone, TransformerConfig) else dict(backbone)
    backbone = TransformerConfig(**{**dataclasses.asdict(gpt2_backbone()), **backbone, **size})
    return GPTConfig(**{"context_length": context, **overrides, "backbone": backbone})


@dataclass
class Generation:
    text: str
    tokens: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (a stop string), "eot" (end-of-text) or "length"
    truncated_prompt: bool = False
    logprobs: list[TokenInfo] | None = None  # each token's log-prob and top alternatives, when asked


@register("gpt")
class GPT(nn.Module):
    config_class = GPTConfig

    def __init__(self, config: GPTConfig, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.config = config
        b = config.backbone
        self.token_embedding = nn.Embedding(config.vocab_size, b.width)
        self.position_embedding = nn.Embedding(config.context_length, b.width)
        self.drop = nn.Dropout(b.dropout)
        self.transformer = Transformer(b)
        self.ln_final = nn.LayerNorm(b.width, eps=b.norm_eps, bias=b.bias)
        self.lm_head = nn.Linear(b.width, config.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight  # tied, as GPT-2
        self.init_weights()
        self.tokenizer = tokenizer if tokenizer is not None else self._default_tokenizer()

    def _default_tokenizer(self) -> Tokenizer | None:
        try:
            return get_tokenizer(self.config.tokenizer) if self.config.tokenizer != "gpt2" else None
        except Exception:  # noqa: BLE001 - the model works on ids without a tokenizer
            return None

    @torch.no_grad()
    def init_weights(self) -> None:
        self.transformer.init_weights()
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)
        nn.init.ones_(self.ln_final.weight)
        if self.ln_final.bias is not None:
            nn.init.zeros_(self.ln_final.bias)

    # -- export hooks (multimodal.checkpoint) --------------------------------------------------
    def save_extra_files(self, directory: Path) -> None:
        if isinstance(self.tokenizer, GPT2Tokenizer):
            self.tokenizer.save(directory)

    def load_extra_files(self, directory: Path) -> None:
        if self.config.tokenizer == "gpt2" and (directory / "vocab.json").is_file():
            self.tokenizer = GPT2Tokenizer.from_directory(directory)

    # -- forward --------------------------------------------------------------------------------
    def hidden(self, ids: Tensor, cache=None, pos: int | Tensor = 0) -> Tensor:
        """``ids [B, T]`` at positions ``[pos, pos+T)`` → final-norm hidden states ``[B, T, C]``.

        ``pos`` a tensor ``[B]`` (with a cache): each row at its own position (a ragged decode batch)."""
        T = ids.shape[1]
        end = (int(pos.max()) if isinstance(pos, Tensor) else pos) + T
        if end > self.config.context_length:
            raise ValueError(f"sequence of {end} tokens exceeds the context of {self.config.context_length}")
        if isinstance(pos, Tensor):
            positions = pos[:, None] + torch.arange(T, device=ids.device)  # [B, T]
        else:
            positions = torch.arange(pos, pos + T, device=ids.device)  # [T]
        x = self.drop(self.token_embedding(ids) + self.position_embedding(positions))  # [B, T, C]
        x = self.transformer(x, "causal", cache, pos)
        return self.ln_final(x)

    def forward(self, ids: Tensor, cache=None, pos: int | Tensor = 0) -> Tensor:
        """``ids [B, T]`` → logits ``[B, T, V]``."""
        return self.lm_head(self.hidden(ids, cache, pos))

    def loss(self, ids: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean next-token cross-entropy of ``ids [B, T]`` (positions where ``mask [B, T]`` is False on the
        target are ignored)."""
        logits = self(ids[:, :-1])
        targets = ids[:, 1:]
        if mask is not None:
            targets = targets.masked_fill(~mask[:, 1:], -100)
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.position_embedding.weight.numel() if non_embedding else n

    def warm_start(self) -> WarmStart:
        """This model's backbone, final norm and embeddings for another head to start from (DALL·E's
        ``load_gpt``), in the documented shape of ``WarmStart``."""
        return WarmStart(
            backbone=self.config.backbone,
            tokenizer=self.config.tokenizer,
            blocks=self.transformer.state_dict(),
            final_norm=self.ln_final.state_dict(),
            token_embedding=self.token_embedding.weight.detach(),
            position_embedding=self.position_embedding.weight.detach(),
        )

    # -- scoring --------------------------------------------------------------------------------
    @torch.no_grad()
    def token_logprobs(self, ids: Tensor) -> Tensor:
        """``ids [B, T]`` → log p(ids[:, t] | ids[:, :t]) for t ≥ 1, shape ``[B, T-1]``."""
        logp = self(ids[:, :-1]).float().log_softmax(-1)
        return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)

    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass token ids")
        return self.tokenizer

    @torch.no_grad()
    def score(self, text: str, stride: int | None = None) -> dict:
        """Log-probability of ``text``: per token, total (nats) and perplexity.

        Conventions (those of lm-evaluation-harness's ``loglikelihood_rolling``): the text is preceded by the
        end-of-text token (GPT-2's document separator), so its first token is scored as the start of a document;
        no normalisation (``total_logprob`` is a sum, ``perplexity`` is per token). A text longer than the context
        is scored in full windows of ``context_length`` inputs, every token exactly once: the first window scores
        its ``context_length`` tokens, each later one its last ``stride`` tokens (default ``context_length``, as
        the harness); the last window is always full, so its tokens see as much context as fits. A smaller
        ``stride`` gives every token at least ``context_length - stride + 1`` tokens of context, at more cost.
        """
        tok = self._require_tokenizer()
        n_ctx = self.config.context_length
        stride = n_ctx if stride is None else stride
        if not 1 <= stride <= n_ctx:
            raise ValueError(f"stride {stride} must be between 1 and the context length {n_ctx}")
        ids = prompt_ids(tok, text, SCORING_START).ids  # end-of-text, then the text
        n = len(ids) - 1  # tokens to score: ids[1:]
        device = self.token_embedding.weight.device
        scored = min(n_ctx, n)
        logprobs = self.token_logprobs(torch.tensor([ids[: scored + 1]], device=device))[0].tolist() if n else []
        windows = 1 if n else 0
        while scored < n:
            new = min(n - scored, stride)
            end = scored + new  # window ids[end - n_ctx : end + 1]: n_ctx inputs, the last `new` targets kept
            lp = self.token_logprobs(torch.tensor([ids[end - n_ctx : end + 1]], device=device))[0]
            logprobs.extend(lp[-new:].tolist())
            scored, windows = end, windows + 1
        total = float(sum(logprobs))
        tokens = [tok.decode([i]) for i in ids[1:]]
        return {
            "text": text,
            "tokens": tokens,
            "token_ids": ids[1:],
            "logprobs": logprobs,
            "total_logprob": total,
            "perplexity": math.exp(-total / max(len(logprobs), 1)),
            "document_start_id": tok.eot_id,
            "stride": stride,
            "windows": windows,
        }

    # -- generation -----------------------------------------------------------------------------
    @contextmanager
    def _decoding(self, prompt: Tensor, max_new_tokens: int) -> Iterator[tuple[Tensor, Callable]]:
        """A KV-cached decode of ``prompt [B, T]`` in eval mode: → (logits after the prompt ``[B, V]``, ``step(token
        [B, 1], i)`` → the logits after the i-th new token); the training mode comes back after it."""
        B, T = prompt.shape
        if T == 0:
            raise ValueError("empty prompt")
        total = T + max_new_tokens - 1
        if total > self.config.context_length:
            raise ValueError(
                f"prompt ({T}) + {max_new_tokens} new tokens exceed the context ({self.config.context_length})"
            )
        was_training = self.training
        self.eval()
        weight = self.token_embedding.weight
        cache = self.transformer.make_cache(B, max(total, T), weight.device, weight.dtype)
        first = self.lm_head(self.hidden(prompt, cache, 0)[:, -1])  # only the last position's logits

        def step(token: Tensor, i: int) -> Tensor:
            return self(token, cache, T + i)[:, -1]

        try:
            yield first, step
        finally:
            self.train(was_training)

    @torch.no_grad()
    def generate_ids(
        self,
        prompt: Tensor,
        max_new_tokens: int,
        settings: SamplingSettings | None = None,
        is_done=None,
        progress=None,
    ) -> Tensor:
        """KV-cached decoding: ``prompt [B, T]`` → new tokens ``[B, n]`` with n ≤ ``max_new_tokens``.

        ``prompt + max_new_tokens`` must fit in the context (``generate`` cuts the prompt for you).
        """
        settings = settings or SamplingSettings()
        with self._decoding(prompt, max_new_tokens) as (first, step):
            generator = settings.generator(self.token_embedding.weight.device)
            return decode(step, first, max_new_tokens, settings, generator, is_done, progress)

    @torch.no_grad()
    def complete(
        self,
        ids: Sequence[int],
        max_tokens: int,
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = (),
        stop_at_eot: bool = True,
        logprobs: int | None = None,
    ) -> Completion:
        """Continue the token ids ``ids`` (read as they are: see ``generate`` for text) by at most ``max_tokens``
        tokens through ``multimodal.generation.complete``: stop strings, end-of-text, log-probs with ``logprobs``
        alternatives per token (None: none). ``ids + max_tokens`` must fit in the context."""
        settings = settings or SamplingSettings()
        stream = TextStream(self._require_tokenizer(), max_tokens, [s for s in stop if s], logprobs, stop_at_eot)
        device = self.token_embedding.weight.device
        with self._decoding(torch.tensor([list(ids)], device=device), max_tokens) as (first, step):
            return complete(first, step, stream, settings, settings.generator(device))

    @torch.no_grad()
    def generate(
        self,
        prompt: str,
        max_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        stop_at_eot: bool = True,
        document_start: bool = True,
        max_new_tokens: int | None = None,
        logprobs: int | None = None,
    ) -> Generation:
        """Continue ``prompt`` by at most ``max_tokens`` new tokens (the name of ``--max-tokens`` and of the
        service's ``max_tokens``; ``max_new_tokens`` is its deprecated alias); stops at a stop string (excluded
        from the text), end-of-text, or length. ``logprobs``: each new token's log-probability and that many top
        alternatives (``Generation.logprobs``, as the service's ``logprobs``); None: none.

        ``document_start``: the prompt follows the end-of-text token, GPT-2's document separator, as in ``score``
        and ``fewshot`` (``multimodal.generation.PromptStart``): the model reads it as the start of a document,
        not as text cut from the middle of one (a training row starts at an arbitrary place). It is not counted
        in ``prompt_tokens``, and it is left out when the prompt fills the room the context leaves. The service
        continues a prompt as given: ``document_start=False`` gives its text.

        A prompt that fits the context is never cut: at most the tokens that fit after it are generated
        (``finish_reason`` "length" when that is fewer than ``max_tokens``). Only a prompt longer than the
        context is cut from the left (with a warning).
        """
        if max_new_tokens is not None:
            warnings.warn(
                "GPT.generate: max_new_tokens is deprecated; use max_tokens", DeprecationWarning, stacklevel=2
            )
            max_tokens = max_new_tokens
        tok = self._require_tokenizer()
        n_ctx = self.config.context_length
        if max_tokens >= n_ctx:
            warnings.warn(f"max_tokens {max_tokens} capped at {n_ctx - 1} (the context)", stacklevel=2)
            max_tokens = n_ctx - 1
        ids = tok.encode(prompt)
        fits = n_ctx + 1 - max(len(ids), 1)  # new tokens that fit after the whole prompt (the last is never fed back)
        if fits >= 1:
            max_tokens = min(max_tokens, fits)
        room = n_ctx - max_tokens + 1
        start = GENERATE_START if document_start else PromptStart.AS_GIVEN
        read = prompt_ids(tok, ids, start, room)
        if read.cut:
            warnings.warn(
                f"prompt of {read.cut + room} tokens cut from the left to {room} to fit the context of {n_ctx}",
                stacklevel=2,
            )
        settings = SamplingSettings(temperature, top_k, top_p, seed)
        out = self.complete(read.ids, max_tokens, settings, stop, stop_at_eot, logprobs)
        return Generation(out.text, out.tokens, read.prompt_tokens, out.finish_reason, read.cut > 0, out.logprobs)


def checkpoint_or_packaged(checkpoint: str | None) -> str:
    """``checkpoint``, or when it is None the packaged GPT, announced by one stderr line saying what it
    knows; a one-line ``CheckpointError`` when none is packaged."""
    import sys

    from multimodal.checkpoint import CheckpointError, packaged_note, packaged_path

    if checkpoint is not None:
        return checkpoint
    path = packaged_path("gpt")
    if path is None:
        raise CheckpointError(
            "no --checkpoint given and no GPT is packaged; build it with `python -m multimodal.demo build` "
            "or train configs/gpt/tasks.yaml and pass --checkpoint runs/gpt-tasks/export"
        )
    print(packaged_note("gpt"), file=sys.stderr)
    return str(path)


def require_tokenizer(model: GPT, source: str) -> GPT:
    """``model``, or a one-line ``CheckpointError`` when it cannot read text (no tokenizer files)."""
    from multimodal.checkpoint import CheckpointError

    if model.tokenizer is None:
        raise CheckpointError(f"{source}: the checkpoint has no tokenizer files (vocab.json + merges.txt)")
    return model


def load_text_model(checkpoint: str, device: str = "cpu", dtype: torch.dtype | str | None = None) -> GPT:
    """``multimodal.load(checkpoint, "gpt")`` that must read text: a GPT with its tokenizer."""
    import multimodal

    return require_tokenizer(multimodal.load(checkpoint, "gpt", device=device, dtype=dtype), checkpoint)


def load_cli_models(checkpoints: Sequence[str | None], device: str, precision: str) -> list[tuple[str, GPT]]:
    """What the GPT tools' ``--checkpoint`` (None: the packaged GPT, announced by its note), ``--device`` and
    ``--precision`` name → ``(path, model)`` pairs. Raises ``UsageError`` / ``CheckpointError`` (one line)."""
    from multimodal.cli import resolve_device, resolve_precision

    resolved = resolve_device(device)
    dtype = resolve_precision(precision, resolved)
    paths = [checkpoint_or_packaged(c) for c in (list(checkpoints) or [None])]
    return [(path, load_text_model(path, resolved, dtype)) for path in paths]
