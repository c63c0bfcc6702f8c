"""Zero-shot classification with a CLIP: images + labels → label probabilities, in one place.

    labels × templates ─format_prompt─▶ texts ─text tower─▶ [K · T, E] ─mean per label, normalise─▶ classifier [K, E]
    images ─image tower─▶ [N, E] ─(· classifierᵀ) · scale, softmax─▶ probabilities [N, K]

``zero_shot_classifier`` builds the classifier weights once (as open_clip's ``build_zero_shot_classifier``);
``label_probs`` turns image embeddings into probabilities with it; ``classify`` does both for a list of images.
``python -m clip.zeroshot``, ``clip.evaluate``, the training module's validation, the demo and the service's
``/v1/classifications`` all go through these functions; ``CLIP.classify`` forwards to ``classify``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # clip.model imports this module (CLIP.classify forwards here): no cycle at run time
    from clip.model import CLIP
    from multimodal.images import ImageSource


# -- labels and templates -------------------------------------------------------------------------
def format_prompt(template: str, label: str) -> str:
    """``template`` with ``{}`` → label and optional ``{article}`` → "a"/"an" for the label."""
    return template.format(label, article="an" if label[:1].lower() in "aeiou" else "a")


def check_labels(labels: Sequence[str], relative: bool = False) -> list[str]:
    """Labels as given, refusing an empty list, empty labels, duplicates (case-insensitive) and, when the
    probabilities will be ``relative`` to the other labels (the CLI, the service), fewer than two, with one line."""
    labels = [str(x).strip() for x in labels]
    if not labels or not all(labels):
        raise ValueError("labels must be a non-empty list of non-empty strings")
    seen: set[str] = set()
    dups = [x for x in labels if x.lower() in seen or seen.add(x.lower())]
    if dups:
        raise ValueError(f"duplicate labels: {', '.join(dict.fromkeys(dups))}")
    if relative and len(labels) < 2:
        raise ValueError("give at least two labels (probabilities are relative to the other labels)")
    return labels


def check_templates(templates: Sequence[str] | None) -> None:
    """Refuse a template without ``{}`` for the label, or one ``str.format`` cannot fill, with one line."""
    for t in templates or []:
        if "{}" not in t:
            raise ValueError(f"template {t!r} has no {{}} for the label")
        try:
            format_prompt(t, "x")
        except (IndexError, KeyError, ValueError) as e:
            raise ValueError(f"template {t!r} is not a valid pattern ({e})") from None


def imagenet_templates() -> list[str]:
    """OpenAI's 80 ImageNet prompt templates as ``str.format`` patterns (``"a photo of a {}."``), read from
    open_clip's own file."""
    from multimodal.tokenizers import openclip_file_module

    meta = openclip_file_module("zero_shot_metadata")
    return [t("{}") for t in meta.OPENAI_IMAGENET_TEMPLATES]


# -- the classifier ---------------------------------------------------------------------------------
@torch.no_grad()
def zero_shot_classifier(model: CLIP, labels: Sequence[str], templates: Sequence[str] | None = None) -> Tensor:
    """Zero-shot classifier weights ``[K, E]`` (float32, on the model's device): each label put in every
    template (``{}`` = the label, ``{article}`` = a / an), the normalised text embeddings averaged per label
    and normalised again. ``templates`` None: OpenAI's 80 ImageNet templates (as open_clip ships them)."""
    templates = list(templates) if templates is not None else imagenet_templates()
    feats = model.embed_texts([format_prompt(t, label) for label in labels for t in templates])
    return F.normalize(feats.view(len(labels), len(templates), -1).mean(1), dim=-1)


@torch.no_grad()
def label_probs(model: CLIP, image_embeddings: Tensor, classifier: Tensor) -> Tensor:
    """``softmax(scale · images · classifierᵀ)`` → ``[N, K]`` on the CPU; ``scale`` is the model's learned
    temperature (100 for open_clip's and OpenAI's weights; capped at 100 as in training)."""
    scale = float(model.logit_scale.exp().clamp(max=100.0))
    return (scale * image_embeddings.float() @ classifier.float().T).softmax(-1).cpu()


@torch.no_grad()
def classify(
    model: CLIP,
    images: Sequence[ImageSource] | Tensor,
    labels: Sequence[str],
    templates: Sequence[str] | None = None,
    batch_size: int = 32,
) -> Tensor:
    """Zero-shot label probabilities ``[N, K]`` (CPU): one row per image, in label order, summing to 1.

    ``images``: what ``CLIP.embed_images`` reads (paths, bytes, PIL images or pixels ``[N, 3, H, W]``)."""
    classifier = zero_shot_classifier(model, check_labels(labels), templates)
    return label_probs(model, model.embed_images(images, batch_size), classifier)
