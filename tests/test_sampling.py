import pytest
import torch

from multimodal.sampling import SamplingSettings, decode, filter_logits, sample_next


def test_top_k_keeps_k_best():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    out = filter_logits(logits, 1.0, top_k=2)
    assert torch.isfinite(out).tolist() == [[False, True, True, False]]


def test_top_p_keeps_smallest_set_covering_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_logits(probs.log(), 1.0, top_p=0.75)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    # the most likely token always survives, however small p is
    assert torch.isfinite(filter_logits(probs.log(), 1.0, top_p=0.01)).tolist() == [[True, False, False, False]]


def test_temperature_zero_is_argmax_and_seed_reproducible():
    logits = torch.randn(3, 50)
    assert torch.equal(sample_next(logits, SamplingSettings(temperature=0)), logits.argmax(-1))
    s = SamplingSettings(temperature=1.0, seed=7)
    a = sample_next(logits, s, s.generator())
    b = sample_next(logits, s, s.generator())
    assert torch.equal(a, b)


def test_decode_stops_when_done():
    logits = torch.zeros(1, 5)
    logits[0, 3] = 10
    out = decode(lambda tok, i: logits, logits, 10, SamplingSettings(temperature=0), is_done=lambda t: t[:, -1] == 3)
    assert out.tolist() == [[3]]


def test_invalid_settings():
    with pytest.raises(ValueError):
        SamplingSettings(temperature=-1)
    with pytest.raises(ValueError):
        SamplingSettings(top_p=0)
