"""Two-object scenes: attribute swaps of captions, CLIP hard negatives, `python -m clip.binding`, and the
tokenizer's foreground-weighted error."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from clip import binding
from clip.loss import ClipLoss
from data import shapes
from multimodal.checkpoint import load_model
from tests.clip_helpers import tiny_config, tiny_export


def test_swapped_captions_keep_the_words_and_change_the_binding():
    swaps = shapes.swapped_captions("a red circle above a blue square")
    assert swaps == {
        "color": "a blue circle above a red square",
        "shape": "a red square above a blue circle",
        "relation": "a red circle below a blue square",
    }
    # articles follow the new first word; positions move with their phrase
    assert shapes.swapped_captions("an orange star and a red cross")["color"] == "a red star and an orange cross"
    full = "a large red circle in the top left and a small blue square in the center"
    assert shapes.swapped_captions(full)["position"] == (
        "a large red circle in the center and a small blue square in the top left"
    )
    assert shapes.swapped_captions("a red circle") == {}
    assert "color" not in shapes.swapped_captions("a red circle to the left of a red square")


def test_every_two_object_caption_has_a_swap_that_reads_as_another_scene():
    for i in range(200):
        s = shapes.make_sample(0, "train", i, 2, 16)
        swaps = shapes.swapped_captions(s["caption"])
        want = shapes.parse_caption(s["caption"])
        if want[0] == want[1]:  # "a green circle and a green circle": nothing to swap
            assert swaps == {}
            continue
        assert swaps, s["caption"]
        for kind, text in swaps.items():
            assert text != s["caption"]
            got = shapes.parse_caption(text)
            assert got != want, (kind, text)
            if kind != "relation":  # the same words, bound differently
                assert Counter(text.replace("an ", "a ").split()) == Counter(s["caption"].replace("an ", "a ").split())


def test_hard_negatives_enter_the_image_to_text_loss_only():
    torch.manual_seed(0)
    image, text = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    loss = ClipLoss()
    plain = loss(image, text, scale)
    assert torch.allclose(loss(image, text, scale, None), plain)
    assert torch.allclose(loss(image, text, scale, text[:0]), plain)
    # a negative as close to image 0 as its own caption makes the loss larger, far more than an opposite one
    near, far = loss(image, text, scale, text[:1]), loss(image, text, scale, -image[:1])
    assert near > plain + 0.05 and near - plain > 3 * (far - plain) >= 0
    negative = torch.randn(2, 8, requires_grad=True)
    loss(image, text, scale, F.normalize(negative, dim=-1)).backward()
    assert negative.grad is not None and negative.grad.abs().sum() > 0


def test_clip_module_trains_with_hard_negatives():
    from clip.module import CLIPModule

    config = tiny_config()
    kw = dict(embed_dim=config.embed_dim, vision=vars(config.vision), text=vars(config.text), zeroshot_labels=None)
    captions = ["a red circle above a blue square", "a green star", "a white cross and a pink diamond", "a red star"]
    images = torch.randn(4, 3, 32, 32)
    losses = {}
    for hard in (False, True):
        torch.manual_seed(0)
        module = CLIPModule(**kw, hard_negatives=hard)
        module.log = lambda *a, **k: None
        batch = {"image": images, "text": module.model.tokenize(captions), "caption": captions}
        losses[hard] = module.training_step(batch, 0)
        assert torch.isfinite(losses[hard])
    assert losses[True] > losses[False]  # five more captions to rank below


def test_clip_module_fine_tunes_an_export_with_its_own_shape(tmp_path):
    from clip.module import CLIPModule

    start = tiny_export(tmp_path / "clip")
    module = CLIPModule(embed_dim=999, init_from=str(start), zeroshot_labels=None, hard_negatives=True)
    loaded = load_model(start, "clip")
    assert module.model.config.embed_dim == loaded.config.embed_dim  # the export's shape, not the arguments'
    assert all(torch.equal(a, b) for a, b in zip(module.model.state_dict().values(), loaded.state_dict().values()))
    module.log = lambda *a, **k: None
    captions = ["a red circle above a blue square", "a green star"]
    size = loaded.config.vision.image_size
    batch = {"image": torch.randn(2, 3, size, size), "text": module.model.tokenize(captions), "caption": captions}
    module.training_step(batch, 0).backward()
    assert all(p.grad is not None for p in module.model.parameters())  # every weight trains


def test_hard_negatives_can_be_limited_to_some_swap_kinds():
    from clip.module import CLIPModule

    config = tiny_config()
    kw = dict(embed_dim=config.embed_dim, vision=vars(config.vision), text=vars(config.text), zeroshot_labels=None)
    captions = ["a red circle above a blue square", "a white cross and a pink diamond", "a red star"]
    module = CLIPModule(**kw, hard_negatives=["relation"])
    seen = []
    module.model.tokenize = lambda texts: seen.extend(texts) or torch.zeros(len(texts), 8, dtype=torch.long)
    module._hard_negatives(captions)
    assert seen == ["a red circle below a blue square"]  # the one relation flip; no colour or shape swaps
    assert CLIPModule(**kw, hard_negatives=True).swap_kinds == shapes.SWAPS
    assert CLIPModule(**kw, hard_negatives=False).swap_kinds == ()
    with pytest.raises(ValueError, match="unknown swap kind.*'colour'"):
        CLIPModule(**kw, hard_negatives=["colour"])


class _Scenes:
    """A fake CLIP whose text features say which scene a caption describes: an oracle when ``binds``,
    otherwise a bag of words (a caption and its swaps are the same vector)."""

    def __init__(self, captions: list[str], binds: bool) -> None:
        self.captions, self.binds = captions, binds
        self.words = sorted({w for c in captions for s in [c, *shapes.swapped_captions(c).values()] for w in s.split()})

    def embed_images(self, images):
        return torch.stack([self._vec(self.captions[i]) for i in images])

    def embed_texts(self, texts):
        return torch.stack([self._vec(t) for t in texts])

    def _vec(self, text: str) -> torch.Tensor:
        v = torch.zeros(len(self.words) + len(self.captions))
        if self.binds and text in self.captions:
            v[len(self.words) + self.captions.index(text)] = 1.0
        for w in text.split():
            v[self.words.index(w)] += 0.1
        return v


def test_binding_accuracy_tells_an_oracle_from_a_bag_of_words():
    _, captions = binding.binding_scenes("val", 12, size=16)
    images = list(range(len(captions)))
    oracle = binding.binding_accuracy(_Scenes(captions, True), images, captions, batch_size=5)
    bag = binding.binding_accuracy(_Scenes(captions, False), images, captions, batch_size=5)
    assert oracle["scenes"] == 12 and oracle["top1"] == 1.0 and oracle["all_swaps"] == 1.0
    assert set(oracle["by_swap"]) <= set(shapes.SWAPS) and "color" in oracle["by_swap"]
    # a swap keeps the words (ties count as misses); only relation flips change one word
    assert bag["by_swap"]["color"]["top1"] == 0.0 and bag["all_swaps"] == 0.0


def test_binding_cli(tmp_path, capsys):
    model = tiny_export(tmp_path / "clip")
    assert (
        binding.main(["--checkpoint", str(model), "--scenes", "6", "--splits", "heldout", "--json", "--no-progress"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    r = out["splits"]["heldout"]
    assert r["scenes"] == 6 and 0.0 <= r["top1"] <= 1.0 and r["pairs"] >= 6
    assert binding.main(["--checkpoint", str(model), "--scenes", "4", "--markdown", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| split | scenes | top-1") and "| heldout | 4 |" in table


@pytest.mark.parametrize("argv", [["--scenes", "0"], ["--checkpoint", "no/such/dir"]])
def test_binding_cli_bad_input_is_one_line(tmp_path, capsys, argv):
    assert binding.main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err


def test_foreground_error_counts_only_the_shapes():
    from dalle.vae.module import foreground_error

    target = torch.zeros(1, 3, 8, 8)
    target[:, :, 2:4, 2:4] = 1.0  # a 2x2 white square: 4 of 64 pixels
    assert foreground_error(torch.zeros_like(target), target).item() == pytest.approx(4 / 64)
    wrong_background = target.clone()
    wrong_background[:, :, 6:, 6:] = 1.0  # errors on black pixels are the plain MSE's job
    assert foreground_error(wrong_background, target).item() == 0.0
