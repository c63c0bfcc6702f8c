"""DALL·E model: masks, loss weighting, heads, KV-cached vs full sampling, guidance, image prefixes,
checkpoints, GPT initialisation, the Lightning module."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from dalle.model import DALLE, attention_mask
from multimodal.checkpoint import load_model, save_export
from multimodal.sampling import SamplingSettings
from tests.dalle_helpers import tiny_config, tiny_dalle

PROMPTS = ["a red circle", "a blue square"]  # within the 16 text tokens


@pytest.mark.parametrize("attention", ["causal", "row", "column", "conv", "paper"])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cached_and_uncached_sampling_give_the_same_codes(attention, guidance):
    model = tiny_dalle(with_vae=False, attention=attention)
    text = model.tokenize(PROMPTS * 2)
    settings = SamplingSettings(temperature=1.0, seed=7)
    cached = model.generate_codes(text, settings, guidance=guidance, use_cache=True)
    full = model.generate_codes(text, settings, guidance=guidance, use_cache=False)
    assert cached.shape == (4, 4, 4)
    assert torch.equal(cached, full)
    # and a different seed gives different images
    assert not torch.equal(cached, model.generate_codes(text, SamplingSettings(seed=8), guidance=guidance))


@pytest.mark.parametrize("attention", ["causal", "paper"])
def test_image_prefix_is_kept_and_completed(attention):
    model = tiny_dalle(with_vae=False, attention=attention)
    text = model.tokenize(PROMPTS)
    prefix = torch.randint(0, 16, (2, 8))  # the first two rows of the 4x4 grid
    settings = SamplingSettings(seed=3)
    out = model.generate_codes(text, settings, image_prefix=prefix)
    assert torch.equal(out[:, :2].flatten(1), prefix)
    assert torch.equal(out, model.generate_codes(text, settings, image_prefix=prefix, use_cache=False))


def test_sparse_masks_are_lower_triangular_and_see_all_text():
    L, g = 5, 4
    for kind in ("causal", "row", "column", "conv"):
        m = attention_mask(kind, L, g, 3)
        assert m.shape == (L + g * g, L + g * g)
        assert not m.triu(1).any(), kind  # no position attends to a later one: the KV cache is exact
        assert m[L:, :L].all(), kind  # every image position sees the whole caption
        assert m.diagonal().all(), kind
    row, col, conv = (attention_mask(k, L, g, 3)[L:, L:] for k in ("row", "column", "conv"))
    # code (2, 3) = index 11: row sees 8, 9, 10, 11; column sees 3, 7, 11; conv sees the 3x3 window before it
    assert row[11].nonzero().flatten().tolist() == [8, 9, 10, 11]
    assert col[11].nonzero().flatten().tolist() == [3, 7, 11]
    assert conv[11].nonzero().flatten().tolist() == [6, 7, 10, 11]
    assert tiny_config(attention="paper", layers=5).layer_kinds() == ["row", "column", "row", "row", "conv"]
    with pytest.raises(ValueError):
        tiny_config(attention="diagonal")


def test_loss_is_the_weighted_mean_of_text_and_image_cross_entropy():
    model = tiny_dalle(with_vae=False)
    text = model.tokenize(PROMPTS)
    image = torch.randint(0, 16, (2, 4, 4))
    out = model.loss(text, image)
    text_logits, image_logits = model(text, image)
    assert image_logits.shape == (2, 16, 16) and text_logits.shape == (2, 15, 258)
    targets = text[:, 1:]
    keep = targets != model.config.pad_id  # padding is not a target
    ce_text = F.cross_entropy(text_logits[keep], targets[keep])
    ce_image = F.cross_entropy(image_logits.flatten(0, 1), image.flatten())
    torch.testing.assert_close(out["text_loss"], ce_text)
    torch.testing.assert_close(out["image_loss"], ce_image)
    torch.testing.assert_close(out["loss"], (ce_text + 7 * ce_image) / 8)
    model.config.loss_text_weight, model.config.loss_image_weight = 1.0, 1.0
    torch.testing.assert_close(model.loss(text, image)["loss"], (ce_text + ce_image) / 2)
    model.config.loss_text_weight = 0.0  # image only: the text head is skipped
    torch.testing.assert_close(model.loss(text, image)["loss"], ce_image)


def test_image_positions_only_predict_image_codes():
    model = tiny_dalle(with_vae=False, text_vocab_size=257)
    text = model.tokenize(PROMPTS)
    settings = SamplingSettings(seed=1)
    codes = model.generate_codes(text, settings)
    assert codes.min() >= 0 and codes.max() < model.config.image_vocab_size
    with torch.no_grad():  # a text head that screams for text ids changes nothing in the image
        model.text_head.weight.fill_(100.0)
    assert torch.equal(codes, model.generate_codes(text, settings))


def test_text_tokenization_pads_and_truncates():
    model = tiny_dalle(with_vae=False)
    ids = model.tokenize(["ab"])
    assert ids[0, :3].tolist() == [97, 98, 256] and (ids[0, 3:] == model.config.pad_id).all()
    with pytest.warns(UserWarning, match="truncated"):
        long = model.tokenize(["x" * 100])
    assert long.shape == (1, 16) and long[0, -1] == 256


@pytest.mark.parametrize("tokenizer, vocab", [("byte", 257), ("clip", 49408)])
def test_caption_ids_are_what_tokenize_fits_or_cuts(tokenizer, vocab):
    """``caption_ids`` counts what ``tokenize`` writes (CLIP's BPE adds a start-of-text id), so the service's
    length check and the demo's count of cut captions agree with the cut itself."""
    model = tiny_dalle(with_vae=False, tokenizer=tokenizer, text_vocab_size=vocab)
    L = model.config.text_length
    for words in range(1, 40):
        caption = " ".join(["red"] * words)
        ids = model.caption_ids(caption)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            row = model.tokenize([caption])[0]
        assert bool(caught) == (len(ids) > L), (tokenizer, words)
        if len(ids) <= L:
            assert row[: len(ids)].tolist() == ids and (row[len(ids) :] == model.config.pad_id).all()


def test_export_roundtrip_samples_the_same_images(tmp_path):
    model = tiny_dalle(attention="paper")
    out = save_export(model, tmp_path / "dalle")
    loaded = load_model(out, "dalle")
    assert isinstance(loaded, DALLE) and loaded.vae is not None
    s = SamplingSettings(seed=5)
    a = model.generate_images(PROMPTS, 1, s)
    b = loaded.generate_images(PROMPTS, 1, s)
    assert [x.prompt for x in a] == list(PROMPTS)
    assert all(torch.equal(x.codes, y.codes) and torch.equal(x.images, y.images) for x, y in zip(a, b))
    assert a[0].images.shape == (1, 3, 16, 16) and 0 <= a[0].images.min() and a[0].images.max() <= 1


def test_init_from_gpt_copies_the_backbone():
    from multimodal.gpt import GPT, GPTConfig

    gpt = GPT(
        GPTConfig(
            vocab_size=257, context_length=32, backbone={"width": 32, "layers": 4, "heads": 4, "activation": "gelu"}
        )
    )
    model = tiny_dalle(with_vae=False, activation="gelu")
    copied = model.load_gpt(gpt)
    assert "transformer" in copied and "text_embedding" in copied
    for (k, a), b in zip(model.transformer.state_dict().items(), gpt.transformer.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(model.text_embedding.weight[:257], gpt.token_embedding.weight)
    with pytest.raises(Exception, match="width"):
        tiny_dalle(with_vae=False, width=64).load_gpt(gpt)


@pytest.mark.parametrize(
    "gpt_fields",
    [
        {"vocab_size": 257, "context_length": 32},  # every part fits: all copied
        {"vocab_size": 300, "context_length": 8},  # a larger vocabulary and a shorter context
        {"vocab_size": 200, "context_length": 64, "tokenizer": "clip"},  # ids of another tokenizer: no embeddings
    ],
)
def test_init_from_gpt_reads_only_the_gpts_warm_start_and_copies_it_exactly(gpt_fields):
    """``load_gpt`` goes through ``GPT.warm_start`` (a stand-in offering nothing else works) and gives, tensor by
    tensor, the GPT's blocks, final norm and the parts of its embeddings that fit; the rest stays as it was."""
    from multimodal.gpt import GPT, GPTConfig

    torch.manual_seed(1)
    gpt = GPT(GPTConfig(**gpt_fields, backbone={"width": 32, "layers": 4, "heads": 4, "activation": "gelu"}))

    class OnlyWarmStart:
        def warm_start(self):
            return gpt.warm_start()

    model = tiny_dalle(with_vae=False, activation="gelu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copied = model.load_gpt(OnlyWarmStart())
    want = dict(before)
    want.update({f"transformer.{k}": v for k, v in gpt.transformer.state_dict().items()})
    want.update({f"ln_final.{k}": v for k, v in gpt.ln_final.state_dict().items()})
    vocab, n = gpt.config.vocab_size, min(gpt.config.context_length, model.config.text_length)
    if vocab <= model.config.text_vocab_size and gpt.config.tokenizer == model.config.tokenizer:
        for name in ("text_embedding.weight", "text_head.weight"):
            want[name] = torch.cat([gpt.token_embedding.weight.detach(), before[name][vocab:]])
    want["text_position.weight"] = torch.cat(
        [gpt.position_embedding.weight.detach()[:n], before["text_position.weight"][n:]]
    )
    got = model.state_dict()
    assert got.keys() == want.keys()
    for name in got:
        assert torch.equal(got[name], want[name]), name
    assert copied[:2] == ["transformer", "ln_final"] and copied[-1] == f"text_position[:{n}]"
    assert ("text_embedding" in copied) == (gpt_fields["vocab_size"] == 257)
    start = gpt.warm_start()  # the documented shape
    assert start.token_embedding.shape == (gpt.config.vocab_size, 32) and start.tokenizer == gpt.config.tokenizer
    assert start.position_embedding.shape == (gpt.config.context_length, 32) and set(start.final_norm) == {
        "weight",
        "bias",
    }


@pytest.mark.filterwarnings("ignore:Found \\d+ module\\(s\\) in eval mode")  # the frozen dVAE, on purpose
def test_module_trains_caches_codes_and_drops_captions(tmp_path):
    import lightning as L

    from dalle.module import DALLEModule
    from multimodal.images import save_png  # noqa: F401 - the grid writer the module uses
    from tests.dalle_helpers import tiny_vae

    vae_dir = save_export(tiny_vae(), tmp_path / "vae")
    module = DALLEModule(
        config=tiny_config(layers=2),
        vae=str(vae_dir),
        caption_dropout=0.5,
        lr=1e-3,
        warmup_steps=1,
        val_captions=["a red circle"],
        samples_per_caption=2,
    )
    assert module.model.config.vae["codebook_size"] == 16
    names = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert not any(id(p) in names for p in module.model.vae.parameters())  # the dVAE stays frozen
    torch.manual_seed(0)
    batches = [
        {
            "image": torch.rand(4, 3, 16, 16),
            "caption": [f"a red circle {i}" for i in range(4)],
            "key": [f"{j}{i}" for i in range(4)],
        }
        for j in range(2)
    ]
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=1,
        val_check_interval=2,
        check_val_every_n_epoch=None,
    )
    loader = lambda rows: torch.utils.data.DataLoader(rows, batch_size=None)  # noqa: E731 - rows are batches
    trainer.fit(module, train_dataloaders=loader(batches), val_dataloaders=loader(batches[:1]))
    assert len(module._codes) == 8  # every key encoded once, then read from the cache
    assert list(tmp_path.rglob("samples/step_*.png"))  # the validation sample grid
    texts = module.text({"caption": ["a red circle"] * 200}, dropout=0.5)
    empty = (texts == module.model.empty_text(1)).all(1).float().mean()
    assert 0.3 < empty < 0.7
    ckpt = next(tmp_path.rglob("*.ckpt"))
    loaded = load_model(ckpt, "dalle")
    torch.testing.assert_close(loaded.image_head.weight, module.model.image_head.weight)


@pytest.mark.filterwarnings("ignore:Found \\d+ module\\(s\\) in eval mode")  # the frozen dVAE, on purpose
def test_fine_tuning_on_longer_captions_keeps_every_weight_and_takes_a_new_decoder(tmp_path):
    from dalle.module import DALLEModule
    from multimodal.checkpoint import CheckpointError
    from tests.dalle_helpers import tiny_vae

    old = tiny_dalle()
    path = save_export(old, tmp_path / "dalle")
    vae = tiny_vae()
    with torch.no_grad():
        vae.decoder.output.bias.add_(0.5)  # a retrained decoder on the same encoder and codes
    vae_dir = save_export(vae, tmp_path / "vae")
    module = DALLEModule(init_from=str(path), text_length=24, vae=str(vae_dir))
    new = module.model
    assert new.config.text_length == 24 and new.tokenize(["x" * 30], warn=False).shape == (1, 24)
    assert torch.equal(new.text_position.weight[:16], old.text_position.weight)
    assert torch.equal(new.text_position.weight[16:], old.text_position.weight[-1:].expand(8, -1))
    for name in (
        "image_embedding.weight",
        "row_position.weight",
        "image_head.weight",
        "transformer.blocks.0.mlp.fc.weight",
    ):
        assert torch.equal(new.state_dict()[name], old.state_dict()[name]), name
    images = torch.rand(2, 3, 16, 16)
    codes = old.vae.encode(images)
    assert torch.equal(new.vae.encode(images), codes)  # the codes keep their meaning
    assert torch.allclose(new.vae.decode(codes), vae.decode(codes))  # and the new decoder draws them
    assert not any(p.requires_grad for p in new.vae.parameters())
    # the resized model trains and samples; its export reloads with the new length and decoder
    loss = new.loss(new.tokenize(["a red circle above a blue square"]), codes[:1])["loss"]
    loss.backward()
    assert new.text_position.weight.grad[16:].abs().sum() > 0
    reloaded = load_model(save_export(new, tmp_path / "long"), "dalle")
    assert reloaded.config.text_length == 24 and torch.allclose(reloaded.vae.decode(codes), vae.decode(codes))
    with pytest.raises(CheckpointError, match="grid of 16 codes; the model expects 4² of 32"):
        tiny_dalle(with_vae=False, image_vocab_size=32).replace_vae(vae)
    with pytest.raises(ValueError, match="text_length resizes an init_from"):
        DALLEModule(config=tiny_config(), text_length=24)
