"""The one transformer backbone of the suite.

GPT, CLIP's two towers and DALL·E all run this stack of pre-LN blocks. It knows nothing of tokens or
pixels: it maps ``x [B, T, C]`` to ``[B, T, C]`` under an attention mask, optionally appending to a
KV cache for incremental decoding. Every attention goes through
``torch.nn.functional.scaled_dot_product_attention``.

Parameter names per block (``ln_1``, ``attn.qkv``, ``attn.proj``, ``ln_2``, ``mlp.fc``, ``mlp.proj``)
are fixed; importers (open_clip, GPT-2) map their keys onto them and check every shape.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]
# A mask is "causal", None (every position sees every other) or a boolean tensor [T, T] or
# [B, 1|H, T, T] where True means "may attend".
Mask = Union[Literal["causal"], Tensor, None]


@dataclass
class TransformerConfig:
    width: int = 512
    layers: int = 8
    heads: int = 8
    mlp_ratio: float = 4.0
    activation: Activation = "gelu"
    norm_eps: float = 1e-5
    bias: bool = True
    dropout: float = 0.0
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.activation not in ("gelu", "gelu_tanh", "quick_gelu"):
            raise ValueError(f"unknown activation {self.activation!r}")

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)

    @classmethod
    def coerce(cls, value: TransformerConfig | dict, defaults: TransformerConfig | None = None) -> TransformerConfig:
        """A head's ``backbone`` field as given (a config, or a dict of its fields over ``defaults``)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"backbone must be a TransformerConfig or a dict of its fields, got {type(value).__name__}")
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"backbone has no fields {unknown} (TransformerConfig: width, layers, heads, …)")
        base = dataclasses.asdict(defaults) if defaults is not None else {}
        return cls(**{**base, **value})


BACKBONE_FIELDS = tuple(f.name for f in dataclasses.fields(TransformerConfig))


def nest_backbone(data: dict, defaults: TransformerConfig | None = None) -> dict:
    """An older head config, whose backbone fields sat beside the head's own (``width``, ``layers``, …), in
    today's form (``{"backbone": {...}}``). The one conversion for exports written before the nesting."""
    if "backbone" in data or not any(k in data for k in BACKBONE_FIELDS):
        return data
    out = {k: v for k, v in data.items() if k not in BACKBONE_FIELDS}
    base = dataclasses.asdict(defaults) if defaults is not None else {}
    out["backbone"] = {**base, **{k: v for k, v in data.items() if k in BACKBONE_FIELDS}}
    return out


class KVCache(nn.Module):
    """Keys and values of one attention layer for positions ``[0, max_len)``, filled as decoding goes."""

    def __init__(self, batch: int, heads: int, max_len: int, head_dim: int, device=None, dtype=None):
        super().__init__()
        shape = (batch, heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k: Tensor, v: Tensor, pos: int | Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v [B, H, t, D]`` at ``pos`` and return everything up to ``pos + t``.

        ``pos`` may be a tensor ``[B]``: row b is written at ``[pos[b], pos[b] + t)`` (a ragged batch) and
        everything up to ``max(pos) + t`` is returned; what lies past a row's own end is stale and must be
        masked (``_mask_rows`` does it for the causal mask)."""
        t = k.shape[2]
        end = (int(pos.max()) if isinstance(pos, Tensor) else pos) + t
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        if isinstance(pos, Tensor):
            rows = torch.arange(k.shape[0], device=k.device)[:, None]  # [B, 1]
            cols = pos[:, None] + torch.arange(t, device=k.device)  # [B, t]
            self.k[rows, :, cols] = k.transpose(1, 2)  # indexed view is [B, t, H, D]
            self.v[rows, :, cols] = v.transpose(1, 2)
        else:
            self.k[:, :, pos:end] = k
            self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def narrow(self, start: int, length: int) -> KVCache:
        """Rows ``[start, start + length)`` as a cache sharing this one's memory (writes go through): a
        server keeps one cache for all its slots and runs each forward on the rows in use."""
        view = KVCache.__new__(KVCache)
        nn.Module.__init__(view)
        view.register_buffer("k", self.k.narrow(0, start, length), persistent=False)
        view.register_buffer("v", self.v.narrow(0, start, length), persistent=False)
        return view

    def copy_row(self, src: int, dst: int, length: int | None = None) -> None:
        """Copy row ``src``'s first ``length`` positions (all by default) to row ``dst``."""
        n = self.max_len if length is None else length
        self.k[dst, :, :n] = self.k[src, :, :n]
        self.v[dst, :, :n] = self.v[src, :, :n]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (e.g. after choosing candidates)."""
        self.k = self.k.index_select(0, index)
        self.v = self.v.index_select(0, index)


def _quick_gelu(x: Tensor) -> Tensor:
    # OpenAI CLIP's activation; open_clip's "-quickgelu" configs depend on it.
    return x * torch.sigmoid(1.702 * x)


def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":  # GPT-2's "gelu_new"
        return lambda x: F.gelu(x, approximate="tanh")
    return _quick_gelu


def _mask_rows(mask: Mask, q_len: int, pos: int | Tensor, kv_len: int, device) -> tuple[Tensor | None, bool]:
    """The slice of ``mask`` for queries ``[pos, pos+q_len)`` against keys ``[0, kv_len)``.

    ``pos`` a tensor ``[B]`` (per-row positions, causal only) gives a mask ``[B, 1, q_len, kv_len]`` that also
    hides each row's keys past its own end. Returns ``(attn_mask, is_causal)`` in the form SDPA takes.
    """
    if isinstance(pos, Tensor):
        if not (isinstance(mask, str) and mask == "causal"):
            raise ValueError("per-row positions work with the causal mask only")
        rows = pos[:, None] + torch.arange(q_len, device=device)  # [B, q_len]: each query's position
        return (torch.arange(kv_len, device=device) <= rows[:, :, None])[:, None], False
    if mask is None:
        return None, False
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unknown mask {mask!r}")
        if pos == 0 and q_len == kv_len:
            return None, True
        if q_len == 1:  # one new token sees every cached one
            return None, False
        rows = torch.arange(pos, pos + q_len, device=device)[:, None]
        return torch.arange(kv_len, device=device)[None, :] <= rows, False
    if mask.dtype != torch.bool:
        raise TypeError("explicit attention masks are boolean (True = may attend)")
    if mask.shape[-2] < pos + q_len or mask.shape[-1] < kv_len:
        raise ValueError(f"mask {tuple(mask.shape)} is smaller than the sequence ({pos + q_len} x {kv_len})")
    return mask[..., pos : pos + q_len, :kv_len], False


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout
        # q, k, v packed in one matrix, as open_clip's in_proj_weight and GPT-2's c_attn (transposed).
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=config.bias)
        self.proj = nn.Linear(config.width, config.width, bias=config.bias)

    def forward(self, x: Tensor, mask: Mask = "causal", cache: KVCache | None = None, pos: int | Tensor = 0) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, D]
        if cache is not None:
            k, v = cache.update(k, v, pos)  # [B, H, pos+T, D]
        attn_mask, is_causal = _mask_rows(mask, T, pos if cache is not None else 0, k.shape[2], x.device)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # [B, H, T, D]
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(config.width, config.mlp_width, bias=config.bias)
        self.proj = nn.Linear(config.mlp_width, config.width, bias=config.bias)
        self.act = _activation(config.activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    """Pre-LN residual block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.width, eps=config.norm_eps, bias=config.bias)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.width, eps=config.norm_eps, bias=config.bias)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, mask: Mask = "causal", cache: KVCache | None = None, pos: int | Tensor = 0) -> Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), mask, cache, pos))
        return x + self.drop(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """A stack of ``config.layers`` pre-LN blocks (no final norm: heads add their own)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))

    def forward(
        self,
        x: Tensor,
        mask: Mask | list[Mask] = "causal",
        cache: list[KVCache] | None = None,
        pos: int | Tensor = 0,
    ) -> Tensor:
        """``x [B, T, C]`` at positions ``[pos, pos+T)`` → ``[B, T, C]``.

        ``mask`` may be one mask for every layer or a list with one per layer (DALL·E's sparse
        patterns). With ``cache``, keys and values are appended and queries see all cached positions
        the mask allows; the logits equal a full forward pass whenever no position attends to a later
        one (causal and every sparse pattern), and for any mask if the prompt is fed in one chunk.
        ``pos`` a tensor ``[B]`` (with a cache and the causal mask) puts each row at its own position: rows
        of different lengths decode in one batch (continuous batching in ``multimodal.serve``).
        """
        masks = mask if isinstance(mask, list) else [mask] * len(self.blocks)
        if len(masks) != len(self.blocks):
            raise ValueError(f"{len(masks)} masks for {len(self.blocks)} layers")
        for i, block in enumerate(self.blocks):
            layer_cache = cache[i] if cache is not None else None
            if self.config.grad_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, masks[i], None, 0, use_reentrant=False)
            else:
                x = block(x, masks[i], layer_cache, pos)
        return x

    def make_cache(self, batch: int, max_len: int, device=None, dtype=None) -> list[KVCache]:
        c = self.config
        return [KVCache(batch, c.heads, max_len, c.width // c.heads, device, dtype) for _ in self.blocks]

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """GPT-2 init: N(0, std) weights, zero biases, residual projections scaled by 1/sqrt(2·layers)."""
        proj_std = std / math.sqrt(2 * self.config.layers)
        for name, p in self.named_parameters():
            if p.dim() == 1:
                if name.endswith("bias"):
                    p.zero_()
                else:
                    p.fill_(1.0)  # LayerNorm gains
            elif name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                p.normal_(0.0, proj_std)
            else:
                p.normal_(0.0, std)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
