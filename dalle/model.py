"""DALL·E: one transformer over text ids then image code ids (Ramesh et al. 2021).

    caption ─tokenizer─▶ text ids [B, L] (fixed length; padding after end-of-text)  ┐
    image ─dVAE─▶ code ids [B, h, w] ─raster order─▶ [B, N = h·w]                   ├─▶ one sequence [B, L + N]
                                                                                    ┘
    text:  text_embedding(id)  + text_position(t)             t in [0, L)
    image: image_embedding(id) + row_position(r) + col_position(c)   (r, c) of the grid
    ─▶ multimodal.transformer.Transformer (causal, or per layer a sparse mask) ─▶ ln_final
    ─▶ text_head at text positions, image_head at image positions (so an image position can only ever
       predict an image code, and a text position a text id)

Loss: ``(w_text · CE_text + w_image · CE_image) / (w_text + w_image)`` with the paper's 1 and 7.
Padding is its own id (``text_vocab_size``); with the learned text positions that is the paper's
"one padding token per position". Padding targets are left out of CE_text.

Sparse attention (paper, appendix B.1): every mask lets text attend causally to text and every image
position attend to all text; among image positions

- ``row``:    a code sees the earlier codes of its own row;
- ``column``: a code sees the earlier codes of its own column;
- ``conv``:   a code sees the earlier codes of a ``conv_kernel`` × ``conv_kernel`` window around it;
- ``causal``: every earlier code (dense).

Every pattern is lower-triangular (no position sees a later one), so the backbone's KV cache gives the
same logits as a full pass: cached and uncached sampling produce the same codes for a seed.
``attention: paper`` is the paper's layer pattern (column attention where ``(i - 2) mod 4 == 0``, row
attention elsewhere, convolutional attention in the last layer).

Sampling goes through ``multimodal.sampling.decode`` (the suite's one decode loop) with a KV cache;
classifier-free guidance runs the conditional and the unconditional (empty caption) rows in one batch
of 2N and mixes their logits in the step function. Captions → images (batches, the dVAE's decoding, the
CLIP rerank) is ``dalle.pipeline.generate_images``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimodal.checkpoint import CheckpointError, register
from multimodal.images import ImageSource
from multimodal.sampling import SamplingSettings, decode
from multimodal.tokenizers import get_tokenizer
from multimodal.transformer import Transformer, TransformerConfig, nest_backbone

if TYPE_CHECKING:
    from dalle.pipeline import ImageSamples, Reranker
    from multimodal.gpt.model import GPT

MASK_KINDS = ("causal", "row", "column", "conv")


@dataclass
class DALLEConfig:
    # text
    text_length: int = 256  # L: text ids per sample (paper 256 BPE tokens)
    text_vocab_size: int = 16384  # the tokenizer's vocabulary (padding gets one more id)
    tokenizer: str = "clip"  # byte | clip (see multimodal.tokenizers)
    # image
    image_grid: int = 32  # h = w: code grid side (paper 32 × 32)
    image_vocab_size: int = 8192  # K: dVAE codebook size
    # the shared backbone's shape (width, layers, heads, activation, …)
    backbone: TransformerConfig = field(default_factory=TransformerConfig)
    # attention per layer: "causal" | "paper" | one of MASK_KINDS | a list with one kind per layer
    attention: str | list[str] = "causal"
    conv_kernel: int = 11  # side of the convolutional mask's window (paper 11)
    # loss weights (paper: 1/8 text, 7/8 image)
    loss_text_weight: float = 1.0
    loss_image_weight: float = 7.0
    # classifier-free guidance scale the sampling CLIs use when none is given (1 = off; > 1 needs a model
    # trained with caption dropout); like a generation config, it travels with the export
    guidance: float = 1.0
    # the frozen dVAE that turns images into codes and back (its VAEConfig as a dict); None = codes only
    vae: dict | None = field(default=None)

    def __post_init__(self) -> None:
        self.backbone = TransformerConfig.coerce(self.backbone, TransformerConfig())
        if self.text_length < 1 or self.image_grid < 1:
            raise ValueError("text_length and image_grid must be >= 1")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd and >= 1, got {self.conv_kernel}")
        if (
            self.loss_text_weight < 0
            or self.loss_image_weight < 0
            or self.loss_text_weight + self.loss_image_weight <= 0
        ):
            raise ValueError("loss weights must be >= 0 and not both 0")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")
        self.layer_kinds()  # validates `attention`

    @property
    def image_length(self) -> int:
        return self.image_grid * self.image_grid

    @property
    def pad_id(self) -> int:
        return self.text_vocab_size

    @property
    def total_length(self) -> int:
        return self.text_length + self.image_length

    def layer_kinds(self) -> list[str]:
        """The attention kind of every layer."""
        a = self.attention
        if isinstance(a, str):
            if a == "paper":
                kinds = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, self.backbone.layers + 1)]
                kinds[-1] = "conv"
                return kinds
            a = [a] * self.backbone.layers
        kinds = list(a)
        if len(kinds) != self.backbone.layers:
            raise ValueError(f"attention lists {len(kinds)} kinds for {self.backbone.layers} layers")
        bad = [k for k in kinds if k not in MASK_KINDS]
        if bad:
            raise ValueError(f"unknown attention kind(s) {bad}; known: paper, {', '.join(MASK_KINDS)}")
        return kinds

    @staticmethod
    def upgrade(data: dict) -> dict:
        """Exports written before the backbone was nested (``width``, ``layers``, … beside ``text_length``)."""
        return nest_backbone(data, TransformerConfig())


def attention_mask(kind: str, text_length: int, grid: int, conv_kernel: int = 11) -> Tensor:
    """Boolean ``[T, T]`` (T = text_length + grid²; True = may attend) for one layer."""
    L, N = text_length, grid * grid
    T = L + N
    mask = torch.ones(T, T).tril().bool()  # causal everywhere; sparse kinds thin out image → image
    if kind == "causal":
        return mask
    idx = torch.arange(N)
    r, c = idx // grid, idx % grid
    earlier = idx[None, :] <= idx[:, None]  # [N, N] key j not after query i
    if kind == "row":
        keep = r[:, None] == r[None, :]
    elif kind == "column":
        keep = c[:, None] == c[None, :]
    elif kind == "conv":
        h = conv_kernel // 2
        keep = ((r[:, None] - r[None, :]).abs() <= h) & ((c[:, None] - c[None, :]).abs() <= h)
    else:
        raise ValueError(f"unknown attention kind {kind!r}")
    mask[L:, L:] = earlier & keep
    return mask


@register("dalle")
class DALLE(nn.Module):
    config_class = DALLEConfig

    def __init__(self, config: DALLEConfig):
        super().__init__()
        self.config = config
        c = config
        b = c.backbone
        self.text_embedding = nn.Embedding(c.text_vocab_size + 1, b.width)  # + padding
        self.text_position = nn.Embedding(c.text_length, b.width)
        self.image_embedding = nn.Embedding(c.image_vocab_size, b.width)
        self.row_position = nn.Embedding(c.image_grid, b.width)
        self.col_position = nn.Embedding(c.image_grid, b.width)
        self.drop = nn.Dropout(b.dropout)
        self.transformer = Transformer(b)
        self.ln_final = nn.LayerNorm(b.width, eps=b.norm_eps, bias=b.bias)
        self.text_head = nn.Linear(b.width, c.text_vocab_size + 1, bias=False)
        self.image_head = nn.Linear(b.width, c.image_vocab_size, bias=False)
        kinds = c.layer_kinds()
        self._mask_kinds: list[str] | None = None  # None: every layer causal, SDPA's fused causal path
        if any(k != "causal" for k in kinds):
            built = {k: attention_mask(k, c.text_length, c.image_grid, c.conv_kernel) for k in set(kinds)}
            for k, m in built.items():
                self.register_buffer(f"mask_{k}", m, persistent=False)
            self._mask_kinds = kinds
        self.vae = None
        if c.vae is not None:
            from dalle.vae import DiscreteVAE, VAEConfig

            vae = DiscreteVAE(VAEConfig(**c.vae))
            mismatch = self._vae_mismatch(vae.config)
            if mismatch:
                raise ValueError(mismatch)
            self.vae = vae.requires_grad_(False).eval()  # frozen: trained separately, as in the paper
        self.init_weights()
        self._tokenizer = None

    @torch.no_grad()
    def init_weights(self) -> None:
        self.transformer.init_weights()
        for emb in (self.text_embedding, self.image_embedding, self.text_head, self.image_head):
            nn.init.normal_(emb.weight, std=0.02)
        for pos in (self.text_position, self.row_position, self.col_position):
            nn.init.normal_(pos.weight, std=0.01)
        nn.init.ones_(self.ln_final.weight)
        if self.ln_final.bias is not None:
            nn.init.zeros_(self.ln_final.bias)

    def train(self, mode: bool = True) -> DALLE:
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()  # always frozen
        return self

    def masks(self) -> list[Tensor] | str:
        if self._mask_kinds is None:
            return "causal"
        return [getattr(self, f"mask_{k}") for k in self._mask_kinds]

    @property
    def device(self) -> torch.device:
        return self.text_embedding.weight.device

    def num_params(self) -> int:
        """Parameters of the transformer model (the frozen dVAE not counted)."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("vae."))

    # -- text -----------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer(self.config.tokenizer)
        return self._tokenizer

    def caption_ids(self, text: str) -> list[int]:
        """A caption's ids before any cut: (start-of-text for CLIP's BPE) tokens, end-of-text. More than
        ``text_length`` of them and ``tokenize`` cuts the caption."""
        tok = self.tokenizer
        sot = [tok.sot_id] if hasattr(tok, "sot_id") else []
        return sot + tok.encode(text) + [tok.eot_id]

    def tokenize(self, texts: Sequence[str], warn: bool = True) -> Tensor:
        """Captions → ``[B, L]``: ``caption_ids``, then padding ids.

        A caption longer than ``L`` is cut (keeping the end-of-text token) with a warning.
        """
        tok, L = self.tokenizer, self.config.text_length
        out = torch.full((len(texts), L), self.config.pad_id, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.caption_ids(t)
            if len(ids) > L:
                if warn:
                    warnings.warn(f"prompt of {len(ids)} tokens truncated to the model's {L} text tokens", stacklevel=2)
                ids = ids[: L - 1] + [tok.eot_id]
            if max(ids) >= self.config.text_vocab_size:
                raise ValueError(f"tokenizer {tok.name!r} gives ids beyond the model's text vocabulary")
            out[i, : len(ids)] = torch.tensor(ids)
        return out

    def empty_text(self, batch: int) -> Tensor:
        """The unconditional caption (what caption dropout trains, what guidance contrasts with)."""
        return self.tokenize([""] * batch).to(self.device)

    # -- forward ----------------------------------------------------------------------------------
    def embed(self, text: Tensor | None, image: Tensor | None, image_start: int = 0) -> Tensor:
        """Embeddings of ``text [B, l ≤ L]`` (from position 0) then ``image [B, n]`` codes at raster
        positions ``[image_start, image_start + n)`` → ``[B, l + n, C]``."""
        parts = []
        if text is not None:
            pos = torch.arange(text.shape[1], device=text.device)
            parts.append(self.text_embedding(text) + self.text_position(pos))
        if image is not None and image.shape[1]:
            g = self.config.image_grid
            idx = torch.arange(image_start, image_start + image.shape[1], device=image.device)
            parts.append(self.image_embedding(image) + self.row_position(idx // g) + self.col_position(idx % g))
        return self.drop(torch.cat(parts, dim=1))

    def hidden(self, x: Tensor, cache=None, pos: int = 0) -> Tensor:
        return self.ln_final(self.transformer(x, self.masks(), cache, pos))

    def forward(self, text: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher forcing. ``text [B, L]``, ``image [B, N]`` codes (or ``[B, h, w]``) →
        (text logits ``[B, L-1, text_vocab+1]`` predicting text[:, 1:] (empty if ``loss_text_weight`` is 0),
         image logits ``[B, N, K]`` predicting image)."""
        L = self.config.text_length
        image = image.flatten(1)
        if text.shape[1] != L or image.shape[1] != self.config.image_length:
            raise ValueError(
                f"expected text [B, {L}] and image [B, {self.config.image_length}], got "
                f"{tuple(text.shape)} and {tuple(image.shape)}"
            )
        h = self.hidden(self.embed(text, image[:, :-1]))  # [B, L + N - 1, C]
        # with a zero text weight the text logits are never used: skip the text head
        text_logits = self.text_head(h[:, : L - 1]) if self.config.loss_text_weight > 0 else h.new_zeros(0)
        return text_logits, self.image_head(h[:, L - 1 :])

    def loss(self, text: Tensor, image: Tensor) -> dict[str, Tensor]:
        """``{"loss", "text_loss", "image_loss"}``: the weighted mean of the two cross-entropies."""
        c = self.config
        text_logits, image_logits = self(text, image)
        targets = text[:, 1:].masked_fill(text[:, 1:] == c.pad_id, -100)
        if c.loss_text_weight > 0 and bool((targets != -100).any()):
            text_loss = F.cross_entropy(text_logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        else:
            text_loss = image_logits.new_zeros(())
        image_loss = F.cross_entropy(image_logits.flatten(0, 1).float(), image.flatten().long())
        wt, wi = c.loss_text_weight, c.loss_image_weight
        loss = (wt * text_loss + wi * image_loss) / (wt + wi)
        return {"loss": loss, "text_loss": text_loss, "image_loss": image_loss}

    # -- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_codes(
        self,
        text: Tensor,
        settings: SamplingSettings | None = None,
        guidance: float | None = None,
        image_prefix: Tensor | None = None,
        use_cache: bool = True,
        progress: Callable[[int], None] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Codes ``[B, h, w]`` for captions ``text [B, L]``.

        ``image_prefix [B, p]``: the first p codes (raster order) are given (image prompts) and the rest
        is sampled. ``guidance`` s ≠ 1 mixes ``uncond + s · (cond − uncond)`` logits, the unconditional
        rows (empty caption) running in the same batch; None takes the config's ``guidance``. ``use_cache=False`` recomputes the whole
        sequence at every step (slow; for checking the cache).
        """
        c = self.config
        settings = settings or SamplingSettings()
        B, L, N = text.shape[0], c.text_length, c.image_length
        device = self.device
        text = text.to(device)
        prefix = (image_prefix if image_prefix is not None else text.new_zeros(B, 0)).flatten(1).to(device)
        p = prefix.shape[1]
        if p >= N:
            return prefix[:, :N].view(B, c.image_grid, c.image_grid)
        guidance = c.guidance if guidance is None else guidance
        guided = guidance != 1.0
        if guided:
            text = torch.cat([text, self.empty_text(B)])  # [2B, L]: cond rows, then uncond rows
            prefix = torch.cat([prefix, prefix])
        was_training = self.training
        self.eval()
        generator = generator if generator is not None else settings.generator(device)

        def mix(logits: Tensor) -> Tensor:  # [B or 2B, K] -> [B, K]
            if not guided:
                return logits
            cond, uncond = logits.float().chunk(2)
            return uncond + guidance * (cond - uncond)

        if use_cache:
            cache = self.transformer.make_cache(text.shape[0], L + N - 1, device, self.text_embedding.weight.dtype)
            h = self.hidden(self.embed(text, prefix), cache, 0)  # [b, L + p, C]
            first = mix(self.image_head(h[:, -1]))

            def step(token: Tensor, i: int) -> Tensor:
                token = torch.cat([token, token]) if guided else token  # [b, 1]
                x = self.embed(None, token, p + i)
                return mix(self.image_head(self.hidden(x, cache, L + p + i)[:, -1]))

        else:
            codes = [prefix]

            def full(extra: list[Tensor]) -> Tensor:
                seq = torch.cat(codes + extra, dim=1)
                return mix(self.image_head(self.hidden(self.embed(text, seq))[:, -1]))

            first = full([])
            new: list[Tensor] = []

            def step(token: Tensor, i: int) -> Tensor:
                new.append(torch.cat([token, token]) if guided else token)
                return full(new)

        out = decode(step, first, N - p, settings, generator, progress=progress)  # [B, N - p]
        self.train(was_training)
        return torch.cat([prefix[:B], out], dim=1).view(B, c.image_grid, c.image_grid)

    def generate_images(
        self,
        prompts: str | Sequence[str],
        num: int = 1,
        settings: SamplingSettings | None = None,
        guidance: float | None = None,
        image_prompt: ImageSource | Sequence[ImageSource] | Tensor | None = None,
        prompt_rows: int | None = None,
        rerank: Reranker | None = None,
        keep: int | None = None,
        batch_size: int = 128,
        progress: bool | Callable[[int], None] = False,
    ) -> list[ImageSamples]:
        """``dalle.pipeline.generate_images`` with this model (captions → ``ImageSamples``, optionally reranked
        by a CLIP); kept for the Python API, the tools call the pipeline."""
        from dalle.pipeline import generate_images  # the pipeline builds on the model, not the other way round

        return generate_images(
            self, prompts, num, settings, guidance, image_prompt, prompt_rows, rerank, keep, batch_size, progress
        )

    # -- fine-tuning on longer captions ------------------------------------------------------------
    @torch.no_grad()
    def with_text_length(self, text_length: int) -> DALLE:
        """A copy of this model that reads ``text_length`` text ids. Every weight is kept; the learned text
        positions are kept up to the shorter length, and new ones start as the last learned position (a padding
        position in a model whose captions were shorter). A start for fine-tuning on longer captions, not the same
        model: image positions now also attend to the new padding positions. Image positions are per row and
        column, so they do not move."""
        if text_length == self.config.text_length:
            return self
        grown = DALLE(replace(self.config, text_length=text_length)).to(self.device)
        state = self.state_dict()
        old = state.pop("text_position.weight")
        positions = old[-1:].repeat(text_length, 1)
        n = min(len(old), text_length)
        positions[:n] = old[:n]
        grown.load_state_dict({**state, "text_position.weight": positions})
        return grown.train(self.training)

    def _vae_mismatch(self, vae_config) -> str | None:
        """Why a dVAE of ``vae_config`` cannot be this model's tokenizer (None: it can)."""
        v, c = vae_config, self.config
        if v.codebook_size != c.image_vocab_size or v.grid_size != c.image_grid:
            return (
                f"dVAE gives a {v.grid_size}² grid of {v.codebook_size} codes; the model expects "
                f"{c.image_grid}² of {c.image_vocab_size}"
            )
        return None

    def replace_vae(self, vae: nn.Module) -> None:
        """Use ``vae`` (a ``DiscreteVAE``) as this model's frozen image tokenizer; it must give the same code grid
        and codebook size. The codes keep their meaning only if its encoder and codebook are the old ones (a
        decoder fine-tuned on frozen codes)."""
        mismatch = self._vae_mismatch(vae.config)
        if mismatch:
            raise CheckpointError(mismatch)
        self.config.vae = asdict(vae.config)
        self.vae = vae.to(self.device).requires_grad_(False).eval()

    # -- initialisation from a GPT of the suite ---------------------------------------------------
    @torch.no_grad()
    def load_gpt(self, gpt: GPT) -> list[str]:
        """Copy a ``GPT``'s backbone and final norm (and, where shapes allow, its token / position embeddings into
        the text ones), read through ``GPT.warm_start``; returns the names of what was copied."""
        start = gpt.warm_start()
        c = self.config
        for f in ("width", "layers", "heads", "mlp_ratio", "bias"):
            ours, theirs = getattr(c.backbone, f), getattr(start.backbone, f)
            if ours != theirs:
                raise CheckpointError(f"GPT backbone.{f} {theirs} differs from this DALL·E's {ours}")
        self.transformer.load_state_dict(start.blocks)
        copied = ["transformer"]
        self.ln_final.load_state_dict(start.final_norm)
        copied.append("ln_final")
        vocab, context = len(start.token_embedding), len(start.position_embedding)
        if vocab <= c.text_vocab_size and start.tokenizer == c.tokenizer:
            self.text_embedding.weight[:vocab] = start.token_embedding
            self.text_head.weight[:vocab] = start.token_embedding  # GPT's head is tied
            copied.append("text_embedding")
        n = min(context, c.text_length)
        self.text_position.weight[:n] = start.position_embedding[:n]
        copied.append(f"text_position[:{n}]")
        return copied
