"""The public Python API on the packaged demo models: what a notebook user types."""

from __future__ import annotations

import pytest
import torch

import multimodal
from data import shapes
from multimodal.checkpoint import CheckpointError, packaged_path


def test_every_packaged_model_is_in_the_checkout():
    """The demo models ship inside the package; a test that needs one fails, never skips, when it is missing."""
    missing = [name for name in ("gpt", "clip", "dalle", "judge") if packaged_path(name) is None]
    assert not missing, f"packaged model(s) {missing} missing (python -m multimodal.demo build)"


def rendered(color: str, shape: str, size: int = 64):
    return shapes.render([{"color": color, "shape": shape, "size": "large", "position": "center"}], size)


def test_clip_classify_gives_one_row_of_label_probabilities_per_image(tmp_path):
    clip = multimodal.load("clip")
    path = tmp_path / "blue.png"
    rendered("blue", "square").save(path)
    labels = ["red circle", "blue square", "green star"]
    probs = clip.classify([rendered("red", "circle"), path], labels)  # a PIL image and a path
    assert probs.shape == (2, 3) and not probs.requires_grad
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    assert probs.argmax(1).tolist() == [0, 1]  # label order is kept
    image_emb, text_emb = clip.embed_images([path]), clip.embed_texts(labels)
    assert not image_emb.requires_grad and image_emb.shape == (1, clip.config.embed_dim)
    torch.testing.assert_close(text_emb.norm(dim=-1), torch.ones(3))
    with pytest.raises(ValueError, match="duplicate"):
        clip.classify([path], ["cat", "Cat"])


def test_dalle_generate_images_with_clip_rerank():
    dalle, clip = multimodal.load("dalle"), multimodal.load("clip")
    from multimodal.sampling import SamplingSettings

    (s,) = dalle.generate_images("a red circle", num=4, settings=SamplingSettings(seed=1), rerank=clip, keep=2)
    size = dalle.vae.config.image_size
    assert s.images.shape == (2, 3, size, size) and s.all_images.shape == (4, 3, size, size)
    assert s.scores[0] >= s.scores[1] and s.scores[0] == s.all_scores.max()  # CLIP's pick first
    assert torch.equal(s.images[0], s.all_images[s.best])
    (again,) = dalle.generate_images("a red circle", num=4, settings=SamplingSettings(seed=1))
    assert torch.equal(again.all_images, s.all_images)  # the same seed, the same images


def test_load_names_and_bad_names():
    assert multimodal.load("judge").kind == "judge"
    with pytest.raises(CheckpointError, match="no such file"):
        multimodal.load("no-such-model")
