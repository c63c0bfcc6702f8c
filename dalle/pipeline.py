"""Captions → images, with an optional CLIP rerank: the one pipeline every tool calls.

    captions ─DALLE.tokenize─▶ text ids [P, L]
    (image prompt ─dVAE encoder─▶ its first code rows [P, p])
    for each batch of whole prompts, ``num`` rows per prompt:
        text ids ─DALLE.generate_codes (KV cache, guidance)─▶ codes [b, h, w]
        codes ─dVAE decoder─▶ images [b, 3, H, W] in [0, 1]
        images + captions ─CLIP.similarity─▶ scores [b]           (rerank only)
    ─▶ one ``ImageSamples`` per caption: every candidate, their scores, the kept ones best first

``python -m dalle.sample``, ``python -m dalle.evaluate``, the training module's sample grid, the demo and the
service's ``/v1/images/generations`` call ``generate_images``; ``DALLE.generate_images`` forwards to it. The
model keeps the forward pass and the sampling of codes; batching, the progress bar, the dVAE's decoding and
the rerank live here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from multimodal.checkpoint import CheckpointError
from multimodal.images import ImageSource, load_image
from multimodal.sampling import SamplingSettings

if TYPE_CHECKING:
    from dalle.model import DALLE

Progress = Callable[[int], None]


class Reranker(Protocol):
    """What can rerank candidates: a CLIP (``clip.model.CLIP``), or anything scoring image i against text i."""

    def similarity(self, images: Tensor, texts: Sequence[str]) -> Tensor: ...


@dataclass
class ImageSamples:
    """What ``generate_images`` gives for one prompt."""

    prompt: str
    images: Tensor  # [k, 3, H, W] in [0, 1]: the kept candidates, CLIP's best first when reranked
    candidates: list[int]  # index among the drawn candidates of each kept image
    scores: Tensor | None  # [k] CLIP cosine similarity of each kept image with the prompt (rerank only)
    all_images: Tensor  # [num, 3, H, W] every candidate, in the order drawn
    all_scores: Tensor | None  # [num]
    codes: Tensor  # [num, h, w] every candidate's codes

    @classmethod
    def of(
        cls, prompt: str, images: Tensor, codes: Tensor, scores: Tensor | None, part: slice, keep: int | None
    ) -> ImageSamples:
        own = scores[part] if scores is not None else None
        order = list(range(len(images)))
        if own is not None:
            order = sorted(order, key=lambda i: -float(own[i]))
        order = order[:keep] if keep is not None else order
        return cls(prompt, images[order], order, own[order] if own is not None else None, images, own, codes)

    @property
    def best(self) -> int:
        """Index of CLIP's pick among the drawn candidates (the first when not reranked)."""
        return self.candidates[0]


@torch.no_grad()
def generate_images(
    model: DALLE,
    prompts: str | Sequence[str],
    num: int = 1,
    settings: SamplingSettings | None = None,
    guidance: float | None = None,
    image_prompt: ImageSource | Sequence[ImageSource] | Tensor | None = None,
    prompt_rows: int | None = None,
    rerank: Reranker | None = None,
    keep: int | None = None,
    batch_size: int = 128,
    progress: bool | Progress = False,
) -> list[ImageSamples]:
    """``num`` candidates per prompt, decoded by the dVAE, optionally scored by a CLIP (``rerank``) and cut to
    the ``keep`` best.

    ``image_prompt``: one image for every prompt, or one per prompt; its first ``prompt_rows`` code rows
    (default half the grid) are kept and the rest sampled. ``guidance`` None: the model config's. Rows are
    sampled ``batch_size`` at a time (whole prompts per batch) from one generator seeded by ``settings.seed``,
    so the same call gives the same images. ``progress``: True for a bar over the image tokens, or a callback
    called after every sampled token (the service's, to stop when its client leaves). Returns one
    ``ImageSamples`` per prompt, in order."""
    if model.vae is None:
        raise CheckpointError("this DALL·E model carries no dVAE; it can sample codes but not images")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if keep is not None and not 1 <= keep <= num:
        raise ValueError(f"keep must be in [1, num={num}], got {keep}")
    settings = settings or SamplingSettings()
    text = model.tokenize(prompts)  # [P, L], once per caption
    prefix = image_prompt_codes(model, image_prompt, prompt_rows, len(prompts))  # [P, p] or None
    generator = settings.generator(model.device)  # one for the whole call: batches do not restart the seed
    per = max(1, batch_size // num)  # whole prompts per batch
    batches = [list(range(start, min(len(prompts), start + per))) for start in range(0, len(prompts), per)]
    todo = model.config.image_length - (prefix.shape[1] if prefix is not None else 0)
    out: list[ImageSamples] = []
    with token_progress(progress, todo * len(batches)) as step:
        for batch in batches:
            rows = torch.tensor(batch).repeat_interleave(num)  # one row per candidate
            given = prefix[rows] if prefix is not None else None
            codes = model.generate_codes(text[rows], settings, guidance, given, progress=step, generator=generator)
            images = model.vae.decode(codes).clamp(0, 1).float().cpu()  # [b, 3, H, W]
            captions = [prompts[i] for i in rows.tolist()]
            scores = rerank.similarity(images, captions).float().cpu() if rerank is not None else None
            for j, i in enumerate(batch):
                part = slice(j * num, (j + 1) * num)
                out.append(ImageSamples.of(prompts[i], images[part], codes[part].cpu(), scores, part, keep))
    return out


@contextmanager
def token_progress(progress: bool | Progress, total: int) -> Iterator[Progress | None]:
    """What ``generate_codes`` calls after each sampled code: a tqdm bar over ``total`` codes (``progress``
    True, closed on the way out), the caller's own callback, or nothing."""
    if progress is not True:
        yield progress or None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc="image tokens", unit="tok", leave=False)
    try:
        yield lambda i: bar.update(1)
    finally:
        bar.close()


def image_prompt_codes(
    model: DALLE,
    image_prompt: ImageSource | Sequence[ImageSource] | Tensor | None,
    rows: int | None,
    count: int,
) -> Tensor | None:
    """The given codes of ``count`` prompts → ``[count, rows · grid]`` (None without an image prompt).

    ``image_prompt``: one image for every prompt or one per prompt; ``rows`` None: half the grid."""
    if image_prompt is None:
        return None
    many = isinstance(image_prompt, Tensor) and image_prompt.dim() == 4
    many = many or (isinstance(image_prompt, Sequence) and not isinstance(image_prompt, (str, bytes)))
    sources = image_prompt if many else [image_prompt]
    if len(sources) not in (1, count):
        raise ValueError(f"{len(sources)} image prompts for {count} prompts")
    rows = model.config.image_grid // 2 if rows is None else rows
    prefix = encode_image_prompt(model, sources, rows)  # [1 or count, rows · grid]
    return prefix.expand(count, -1) if len(prefix) == 1 else prefix


@torch.no_grad()
def encode_image_prompt(model: DALLE, images: Sequence[ImageSource] | Tensor, rows: int) -> Tensor:
    """The first ``rows`` rows of the dVAE codes of each image → ``[n, rows · grid]``.

    ``images``: paths, bytes or PIL images (read with ``multimodal.images``, shorter side resized to the
    dVAE's size, centre crop), or pixels ``[n, 3, H, W]`` in [0, 1] at the dVAE's size."""
    if model.vae is None:
        raise CheckpointError("this DALL·E model carries no dVAE; image prompts need one")
    grid = model.config.image_grid
    if not 1 <= rows <= grid:
        raise ValueError(f"prompt rows must be in [1, {grid}] (the code grid has {grid} rows), got {rows}")
    size = model.vae.config.image_size
    if not isinstance(images, Tensor):
        images = torch.stack([x if isinstance(x, Tensor) else load_image(x, size) for x in images])
    return model.vae.encode(images.to(model.device))[:, :rows].flatten(1)
