"""``dalle.pipeline.generate_images``: captions → images in batches of whole prompts, the rerank's order, image
prompts, progress, and the errors a caller meets first."""

from __future__ import annotations

import pytest
import torch

from dalle.pipeline import encode_image_prompt, generate_images
from multimodal.checkpoint import CheckpointError
from multimodal.sampling import SamplingSettings
from tests.dalle_helpers import tiny_dalle

PROMPTS = ["a red circle", "a blue square", "a green star"]


class Brightness:
    """A reranker whose scores a test can compute: the mean pixel of each image."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def similarity(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        self.texts.extend(texts)
        return images.mean(dim=(1, 2, 3))


@pytest.fixture(scope="module")
def model():
    return tiny_dalle()


def test_rerank_keeps_the_best_first_and_every_candidate_in_drawn_order(model):
    judge = Brightness()
    samples = generate_images(model, PROMPTS, 5, SamplingSettings(seed=3), rerank=judge, keep=3)
    assert [s.prompt for s in samples] == PROMPTS
    assert judge.texts == [p for p in PROMPTS for _ in range(5)]  # each candidate scored against its caption
    for s in samples:
        assert s.all_images.shape == (5, 3, 16, 16) and s.images.shape == (3, 3, 16, 16) and s.codes.shape == (5, 4, 4)
        torch.testing.assert_close(s.all_scores, s.all_images.mean(dim=(1, 2, 3)))
        assert s.scores.tolist() == sorted(s.all_scores.tolist(), reverse=True)[:3]
        assert s.best == int(s.all_scores.argmax())
        for rank, candidate in enumerate(s.candidates):
            assert torch.equal(s.images[rank], s.all_images[candidate])
    plain = generate_images(model, PROMPTS, 5, SamplingSettings(seed=3))
    assert all(torch.equal(a.all_images, b.all_images) for a, b in zip(samples, plain))  # reranking draws nothing
    assert all(p.candidates == [0, 1, 2, 3, 4] and p.scores is None for p in plain)


def test_batches_of_whole_prompts_report_every_token_and_repeat_for_a_seed(model):
    calls: list[int] = []
    settings = SamplingSettings(seed=1)
    # batch_size 4 with 2 candidates: 2 prompts per batch, so 2 batches of 16 codes each
    first = generate_images(model, PROMPTS, 2, settings, batch_size=4, progress=calls.append)
    assert len(calls) == 2 * 16
    again = generate_images(model, PROMPTS, 2, settings, batch_size=4)
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(first, again))
    forwarded = model.generate_images(PROMPTS, 2, settings, batch_size=4)  # the model's API forwards here
    assert all(torch.equal(a.codes, b.codes) for a, b in zip(first, forwarded))


def test_image_prompt_rows_are_kept_and_the_rest_sampled(model):
    image = torch.rand(3, 16, 16)
    given = encode_image_prompt(model, image[None], 2)  # [1, 2 rows · 4]
    (s,) = generate_images(model, PROMPTS[:1], 3, SamplingSettings(seed=0), image_prompt=image[None], prompt_rows=2)
    assert all(torch.equal(codes[:2].flatten(), given[0]) for codes in s.codes)
    with pytest.raises(ValueError, match="2 image prompts for 3 prompts"):
        generate_images(model, PROMPTS, 1, image_prompt=[image, image])
    with pytest.raises(ValueError, match="prompt rows must be in"):
        generate_images(model, PROMPTS, 1, image_prompt=image[None], prompt_rows=5)


def test_bad_requests_fail_before_sampling():
    with pytest.raises(CheckpointError, match="no dVAE"):
        generate_images(tiny_dalle(with_vae=False), PROMPTS, 1)
    model = tiny_dalle()
    with pytest.raises(ValueError, match="num must be >= 1"):
        generate_images(model, PROMPTS, 0)
    with pytest.raises(ValueError, match="keep must be in"):
        generate_images(model, PROMPTS, 2, keep=3)
