"""CLIP: a ViT image tower and a causal text tower on the suite's one backbone, a learned temperature.

    image [B,3,H,W] ─patch conv─▶ [B,N,C] ─(+cls, +pos, ln_pre)─▶ Transformer(mask=None) ─ln_post─▶ cls ─@proj─▶ [B,E]
    ids   [B,L]     ─token emb + pos─▶ [B,L,C] ─▶ Transformer(mask="causal") ─▶ EOT token ─ln_final─@proj─▶ [B,E]

Config fields are named as in open_clip's model configs (``embed_dim``, ``vision_cfg``/``text_cfg`` →
``vision``/``text``, ``quick_gelu``) so ``clip/openclip.py`` maps its checkpoints one-to-one.

No ``from __future__ import annotations`` here on purpose: ``checkpoint.config_from_dict`` rebuilds the
nested ``vision``/``text`` dataclasses from ``config.json`` only when the annotations are real types
(and ``CLIPConfig.__post_init__`` converts dicts as well).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clip import pipeline
from clip.pipeline import imagenet_templates  # noqa: F401 - its old home; clip.openclip re-exports it
from multimodal import images as img
from multimodal.checkpoint import register
from multimodal.images import OPENAI_MEAN, OPENAI_STD, ImageSource, Preprocess
from multimodal.tokenizers import get_tokenizer
from multimodal.transformer import Transformer, TransformerConfig, nest_backbone


@dataclass
class VisionConfig:
    image_size: int = 224
    patch_size: int = 32
    pool_type: str = "tok"  # tok (class token) | avg (mean of patch tokens)
    final_ln_after_pool: bool = False
    no_ln_pre: bool = False
    # preprocessing the weights expect (open_clip's defaults are OpenAI's statistics)
    image_mean: tuple = OPENAI_MEAN
    image_std: tuple = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"  # open_clip's: shortest (resize + centre crop) | longest (+ pad) | squash
    # the tower's blocks (open_clip: heads = width // head_width, head_width 64)
    backbone: TransformerConfig = field(default_factory=lambda: vision_backbone())

    def __post_init__(self) -> None:
        self.backbone = TransformerConfig.coerce(self.backbone, vision_backbone())
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.pool_type not in ("tok", "avg"):
            raise ValueError(f"vision pool_type {self.pool_type!r} (tok, avg)")
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def preprocess(self) -> Preprocess:
        """The eval transform these weights expect (``multimodal.images``)."""
        return Preprocess(self.image_size, self.image_mean, self.image_std, self.interpolation, self.resize_mode)


@dataclass
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    pool_type: str = "argmax"  # argmax (EOT = highest id, open_clip's default) | eos | first | last
    eos_id: int = 49407  # for pool_type "eos"
    causal: bool = True  # open_clip's ``not no_causal_mask``
    proj_bias: bool = False
    tokenizer: str = "clip"  # clip | byte (multimodal.tokenizers)
    backbone: TransformerConfig = field(default_factory=lambda: text_backbone())

    def __post_init__(self) -> None:
        self.backbone = TransformerConfig.coerce(self.backbone, text_backbone())
        if self.pool_type not in ("argmax", "eos", "first", "last"):
            raise ValueError(f"text pool_type {self.pool_type!r} (argmax, eos, first, last)")


@dataclass
class CLIPConfig:
    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = math.log(1 / 0.07)

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = _from_dict(VisionConfig, self.vision)
        if isinstance(self.text, dict):
            self.text = _from_dict(TextConfig, self.text)

    @property
    def quick_gelu(self) -> bool:
        """OpenAI's activation (open_clip's ``quick_gelu``): part of the towers' configs, never guessed."""
        return self.vision.backbone.activation == "quick_gelu"

    @staticmethod
    def upgrade(data: dict) -> dict:
        """Exports written before the backbones were nested: each tower's ``width``, ``layers``, ``heads``,
        ``mlp_ratio`` beside its own fields, and ``quick_gelu``, ``norm_eps``, ``dropout``, ``grad_checkpointing``
        once for both towers."""
        shared = {k: data[k] for k in ("quick_gelu", "norm_eps", "dropout", "grad_checkpointing") if k in data}
        if not shared and all("backbone" in (data.get(t) or {"backbone": 1}) for t in ("vision", "text")):
            return data
        out = {k: v for k, v in data.items() if k not in shared}
        common = {"activation": "quick_gelu" if shared.pop("quick_gelu", False) else "gelu", **shared}
        for tower, defaults in (("vision", vision_backbone()), ("text", text_backbone())):
            part = dict(out.get(tower) or {})
            if "backbone" not in part:
                part = nest_backbone({**part, **common, "width": part.get("width", defaults.width)}, defaults)
            out[tower] = part
        return out


def vision_backbone() -> TransformerConfig:
    """ViT-B/32's image tower blocks (open_clip's defaults)."""
    return TransformerConfig(width=768, layers=12, heads=12)


def text_backbone() -> TransformerConfig:
    """CLIP's text tower blocks (open_clip's defaults)."""
    return TransformerConfig(width=512, layers=12, heads=8)


@torch.no_grad()
def init_blocks(transformer: Transformer) -> None:
    """open_clip's text-tower init: attention std width^-0.5, MLP in (2·width)^-0.5, residual outputs
    width^-0.5·(2·layers)^-0.5. Larger than GPT-2's 0.02 at small widths, so that at initialisation the
    pooled token already depends on its inputs (with 0.02 a small CLIP starts with near-constant features
    and the contrastive loss sits at ln(batch) for a long time, or for ever)."""
    c = transformer.config
    transformer.init_weights()  # zero biases, unit LayerNorm gains
    attn_std, fc_std = c.width**-0.5, (2 * c.width) ** -0.5
    proj_std = attn_std * (2 * c.layers) ** -0.5
    for block in transformer.blocks:
        nn.init.normal_(block.attn.qkv.weight, std=attn_std)
        nn.init.normal_(block.attn.proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.proj.weight, std=proj_std)


def _from_dict(cls: type, data: dict):
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}")
    return cls(**data)


class VisionTower(nn.Module):
    def __init__(self, config: CLIPConfig):
        super().__init__()
        v = config.vision
        self.config = v
        b = v.backbone
        self.conv1 = nn.Conv2d(3, b.width, kernel_size=v.patch_size, stride=v.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(b.width))
        self.positional_embedding = nn.Parameter(torch.empty(v.grid**2 + 1, b.width))
        self.ln_pre = nn.Identity() if v.no_ln_pre else nn.LayerNorm(b.width, eps=b.norm_eps)
        self.transformer = Transformer(b)
        self.ln_post = nn.LayerNorm(b.width, eps=b.norm_eps)
        self.proj = nn.Parameter(torch.empty(b.width, config.embed_dim))

    @torch.no_grad()
    def init_weights(self) -> None:
        scale = self.config.backbone.width**-0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.proj, std=scale)
        init_blocks(self.transformer)

    def forward(self, images: Tensor) -> Tensor:
        """``images [B, 3, H, W]`` → un-normalised features ``[B, E]``."""
        x = self.conv1(images.to(self.conv1.weight.dtype))  # [B, C, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, N, C]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, C]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [B, N+1, C]
        x = self.transformer(self.ln_pre(x), mask=None)
        v = self.config
        if v.pool_type == "tok":  # LayerNorm is per token: normalising only the pooled one is exact, cheaper
            pooled = self.ln_post(x[:, 0])
        elif v.final_ln_after_pool:
            pooled = self.ln_post(x[:, 1:].mean(1))
        else:
            pooled = self.ln_post(x[:, 1:]).mean(1)  # [B, C]
        return pooled @ self.proj  # [B, E]


class TextTower(nn.Module):
    def __init__(self, config: CLIPConfig):
        super().__init__()
        t = config.text
        self.config = t
        b = t.backbone
        self.token_embedding = nn.Embedding(t.vocab_size, b.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, b.width))
        self.transformer = Transformer(b)
        self.ln_final = nn.LayerNorm(b.width, eps=b.norm_eps)
        self.text_projection = nn.Parameter(torch.empty(b.width, config.embed_dim))
        self.text_projection_bias = nn.Parameter(torch.zeros(config.embed_dim)) if t.proj_bias else None

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.config.backbone.width**-0.5)
        init_blocks(self.transformer)

    def pool_index(self, ids: Tensor) -> Tensor:
        """Index of the pooled token per row of ``ids [B, L]`` → ``[B]``."""
        t = self.config
        if t.pool_type == "argmax":  # the end-of-text id is the largest in CLIP's and the byte vocabulary
            return ids.argmax(dim=-1)
        if t.pool_type == "eos":
            return (ids == t.eos_id).int().argmax(dim=-1)
        if t.pool_type == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)

    def forward(self, ids: Tensor) -> Tensor:
        """``ids [B, L]`` (L ≤ context_length) → un-normalised features ``[B, E]``."""
        t = self.config
        if ids.shape[1] > t.context_length:
            raise ValueError(f"text of {ids.shape[1]} tokens exceeds the context of {t.context_length}")
        index = self.pool_index(ids)  # [B]
        if t.causal and t.pool_type != "last":
            # Under a causal mask the pooled token never sees later positions: drop the padding after the
            # longest text in the batch. Exact, and most of the work for short prompts padded to 77.
            ids = ids[:, : int(index.max()) + 1]
        L = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:L]  # [B, L, C]
        x = self.transformer(x, mask="causal" if t.causal else None)
        x = x[torch.arange(x.shape[0], device=x.device), index]  # [B, C]
        x = self.ln_final(x) @ self.text_projection  # [B, E]
        return x + self.text_projection_bias if self.text_projection_bias is not None else x


@register("clip")
class CLIP(nn.Module):
    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        self.visual = VisionTower(config)
        self.text = TextTower(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        if not any(p.is_meta for p in self.parameters()):  # importers build on the meta device, then assign
            self.init_weights()
        self._tokenizer = None

    @torch.no_grad()
    def init_weights(self) -> None:
        self.visual.init_weights()
        self.text.init_weights()
        self.logit_scale.fill_(self.config.init_logit_scale)

    # -- inputs ---------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.config.text.tokenizer not in ("clip", "byte"):
                raise ValueError(f"unknown CLIP tokenizer {self.config.text.tokenizer!r} (clip, byte)")
            self._tokenizer = get_tokenizer(self.config.text.tokenizer)
        return self._tokenizer

    def tokenize(self, texts: list[str]) -> Tensor:
        """Texts → ids ``[B, context_length]`` (open_clip-identical for the ``clip`` tokenizer)."""
        return self.tokenizer.batch(list(texts), self.config.text.context_length)

    # -- features -------------------------------------------------------------------------------
    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        """``images [B, 3, H, W]`` (already normalised with ``config.vision.image_mean/std``) → ``[B, E]``."""
        x = self.visual(images)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: Tensor, normalize: bool = True) -> Tensor:
        """``ids [B, L]`` → ``[B, E]``."""
        x = self.text(ids)
        return F.normalize(x, dim=-1) if normalize else x

    def forward(
        self, images: Optional[Tensor], ids: Optional[Tensor]
    ) -> tuple[Optional[Tensor], Optional[Tensor], Tensor]:
        """→ (normalised image features ``[B, E]``, normalised text features ``[B, E]``, ``exp(logit_scale)``)."""
        img = self.encode_image(images) if images is not None else None
        txt = self.encode_text(ids) if ids is not None else None
        return img, txt, self.logit_scale.exp()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the public API: PIL images or paths in, no-gradient tensors out ------------------------------
    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    @torch.no_grad()
    def embed_images(
        self, images: "Sequence[ImageSource] | Tensor", batch_size: int = 32, preprocessed: bool = False
    ) -> Tensor:
        """Normalised image embeddings ``[N, E]`` (float32, on the model's device).

        ``images``: paths, encoded bytes or PIL images (opened and preprocessed with the model's own transform,
        ``config.vision.preprocess``), or a tensor ``[N, 3, H, W]`` of pixels in [0, 1] (generated images:
        resized to the model's size, then normalised; ``preprocessed=True``: already the model's input, as
        ``multimodal.images.preprocess`` makes it). Raises ``multimodal.images.ImageError`` for an
        unreadable image."""
        pre = self.config.vision.preprocess
        if isinstance(images, Tensor):
            prep = (lambda x: x) if preprocessed else (lambda x: img.resize_tensor(x, pre))
            batches = [prep(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        else:
            items = list(images)
            batches = [
                torch.stack([img.preprocess(x, pre) for x in items[i : i + batch_size]])
                for i in range(0, len(items), batch_size)
            ]
        dtype = self.visual.conv1.weight.dtype
        out = [self.encode_image(b.to(self.device, dtype)).float() for b in batches]
        return torch.cat(out) if out else torch.empty(0, self.config.embed_dim, device=self.device)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Normalised text embeddings ``[N, E]`` (float32, on the model's device)."""
        ids = self.tokenize(list(texts))
        out = [
            self.encode_text(ids[i : i + batch_size].to(self.device)).float() for i in range(0, len(ids), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, self.config.embed_dim, device=self.device)

    @torch.no_grad()
    def classify(
        self,
        images: "Sequence[ImageSource] | Tensor",
        labels: Sequence[str],
        templates: Optional[Sequence[str]] = None,
        batch_size: int = 32,
    ) -> Tensor:
        """Zero-shot label probabilities ``[N, K]`` (CPU): ``clip.pipeline.classify`` with this model."""
        return pipeline.classify(self, images, labels, templates, batch_size)

    @torch.no_grad()
    def similarity(self, images: "Sequence[ImageSource] | Tensor", texts: Sequence[str]) -> Tensor:
        """Cosine similarity of image i with text i → ``[N]`` (CPU); texts repeated across images are encoded once."""
        unique = list(dict.fromkeys(texts))
        txt = self.embed_texts(unique)
        index = torch.tensor([unique.index(t) for t in texts], device=txt.device)
        return (self.embed_images(images) * txt[index]).sum(-1).cpu()
