"""The suite's one decode loop and one logits filter, shared by the GPT LM and DALL·E, and the sampling of rows
that each draw from their own generator (``multimodal.generation`` and the service's batching engine)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

# torch.Generator.manual_seed takes 64-bit seeds; any Python int is reduced into [0, 2**64) modulo 2**64.
SEED_MODULUS = 2**64


def reduce_seed(seed: int) -> int:
    """Any Python integer -> a seed the generator takes: ``seed mod 2**64`` (so seeds in ``[0, 2**64)`` are used
    as they are, ``-1`` becomes ``2**64 - 1``, and ``2**64 + 5`` samples what ``5`` samples)."""
    return int(seed) % SEED_MODULUS


def new_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator of its own: seeded with ``reduce_seed(seed)``, or from fresh entropy when ``seed`` is None."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(reduce_seed(seed))
    return g


@dataclass
class SamplingSettings:
    """``temperature`` 0 means greedy; ``top_k`` / ``top_p`` of None (or 0 / 1.0) switch them off; ``seed`` any
    Python integer (see ``reduce_seed``) or None (the global RNG). Bad values raise ``ValueError`` naming the
    setting, here at the boundary, rather than a "probability tensor contains nan" deep in sampling."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:  # also false for nan
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        """The seeded generator of a decode; None when unseeded (then torch's global RNG draws)."""
        return None if self.seed is None else new_generator(self.seed, device)

    def row_generator(self, index: int = 0, device: torch.device | str = "cpu") -> torch.Generator | None:
        """The generator of the ``index``-th choice drawn with these settings, when every row draws from its own
        (``sample_rows``): seeded with ``seed + index``, or from fresh entropy when unseeded (rows in a shared
        batch must not share torch's global RNG); None when greedy (nothing is drawn)."""
        if self.temperature == 0:
            return None
        return new_generator(None if self.seed is None else self.seed + index, device)

    def batch_key(self) -> tuple:
        """What rows must share to be sampled together (``sample_rows``): every setting but the seed, which each
        row's own generator carries. A new field joins the key by itself."""
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "seed")

    def probabilities(self, logits: Tensor) -> Tensor:
        """``logits [B, V]`` → the distribution a token is drawn from (temperature, top-k and top-p applied)."""
        return filter_logits(logits, self.temperature, self.top_k, self.top_p).softmax(-1)


def filter_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """Scale ``logits [B, V]`` by 1/temperature and set what top-k / nucleus filtering drops to -inf."""
    logits = logits.float() / max(temperature, 1e-8)
    if top_k:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already cover top_p; the first always stays (also when top_p
        # rounds to 0 in float32: a filter never leaves a row with no token to draw)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: Tensor, settings: SamplingSettings, generator: torch.Generator | None = None) -> Tensor:
    """One token per row of ``logits [B, V]`` → ``[B]``."""
    if settings.temperature == 0:
        return logits.argmax(-1)
    return torch.multinomial(settings.probabilities(logits), 1, generator=generator).squeeze(-1)


def sample_rows(logits: Tensor, settings: SamplingSettings, generators: Sequence[torch.Generator | None]) -> list[int]:
    """One token per row of ``logits [n, V]``, row ``i`` drawn from ``generators[i]``: a row draws the same token
    alone or in any batch (``sample_next`` of one row with its generator draws the same)."""
    if settings.temperature == 0:
        return logits.argmax(-1).tolist()
    probs = settings.probabilities(logits)
    return [int(torch.multinomial(probs[j : j + 1], 1, generator=g)) for j, g in enumerate(generators)]


def decode(
    step: Callable[[Tensor, int], Tensor],
    first_logits: Tensor,
    max_new_tokens: int,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    is_done: Callable[[Tensor], Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """Sample up to ``max_new_tokens`` tokens; returns ``[B, n]``.

    ``first_logits [B, V]`` are the logits after the prompt; ``step(token [B, 1], i)`` feeds the i-th
    new token (0-based) and returns the next logits ``[B, V]`` (a KV-cached forward). ``is_done(tokens
    [B, n])`` → ``[B]`` bool ends decoding early once every row is done; ``progress(i)`` is called after
    each token.
    """
    logits = first_logits
    out: list[Tensor] = []
    for i in range(max_new_tokens):
        token = sample_next(logits, settings, generator)  # [B]
        out.append(token)
        if progress is not None:
            progress(i)
        tokens = torch.stack(out, dim=1)
        if is_done is not None and bool(is_done(tokens).all()):
            return tokens
        if i + 1 < max_new_tokens:
            logits = step(token[:, None], i)
    if not out:
        return first_logits.new_zeros((first_logits.shape[0], 0), dtype=torch.long)
    return torch.stack(out, dim=1)
