"""The CLIP model: shapes and normalisation, exact padding-independence of the text tower, the logit
scale, and our export / Lightning checkpoint round trips (nested configs rebuilt)."""

from __future__ import annotations

import math

import torch

from clip.model import CLIP, CLIPConfig, TextConfig, VisionConfig
from multimodal.checkpoint import config_from_dict, load_model, save_export
from tests.clip_helpers import tiny_config, tiny_model


def test_features_are_normalised_and_scale_is_clip_init():
    model = tiny_model()
    img, txt, scale = model(torch.randn(3, 3, 32, 32), model.tokenize(["a red circle", "a dog", "x"]))
    assert img.shape == txt.shape == (3, 32)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    assert math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-5)
    assert model.encode_image(torch.randn(1, 3, 32, 32), normalize=False).norm() != 1


def test_text_features_do_not_depend_on_padding_or_batch():
    model = tiny_model()
    ids = model.tokenize(["a small red circle in the top left", "a dog"])  # [2, 32]
    together = model.encode_text(ids)
    alone = model.encode_text(ids[1:, :5])  # "a dog" + EOT needs 4 tokens
    assert torch.allclose(together[1], alone[0], atol=1e-6)
    # a change after the end-of-text token changes nothing (causal, pooled at EOT)
    noisy = ids.clone()
    noisy[1, 10:] = 7
    noisy[1, 3] = 49407
    assert torch.allclose(model.encode_text(noisy[1:])[0], model.encode_text(ids[1:, :4])[0], atol=1e-6)


def test_image_features_depend_on_the_image():
    model = tiny_model()
    a, b = torch.randn(2, 3, 32, 32)
    fa, fb = model.encode_image(torch.stack([a, b]))
    assert (fa - fb).abs().max() > 1e-3
    assert torch.allclose(model.encode_image(a[None])[0], fa, atol=1e-6)


def test_nested_config_round_trips(tmp_path):
    config = tiny_config(quick_gelu=True)
    rebuilt = config_from_dict(CLIP, __import__("dataclasses").asdict(config))
    assert isinstance(rebuilt.vision, VisionConfig) and isinstance(rebuilt.text, TextConfig)
    assert rebuilt == config
    model = tiny_model()
    loaded = load_model(save_export(model, tmp_path / "m"), "clip")
    assert isinstance(loaded.config.vision, VisionConfig) and loaded.config == model.config
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.encode_image(x), model.encode_image(x))
    # dicts given directly are converted too
    assert isinstance(CLIPConfig(vision={"image_size": 32, "patch_size": 8}).vision, VisionConfig)
