"""The discrete VAE: shapes of the tokenizer interface, losses, schedules, training, export."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dalle.vae import DiscreteVAE, VAEConfig, code_usage, psnr
from dalle.vae.module import VAEModule, cosine_ramp
from multimodal.checkpoint import load_model, save_export
from tests.vae_helpers import blocks_images, tiny_config, tiny_vae


@pytest.mark.parametrize("downsample", [4, 8, 16])
def test_encode_decode_shapes(downsample):
    model = tiny_vae(downsample=downsample, image_size=32)
    images = blocks_images(2, 32)
    logits = model.encode_logits(images)
    assert logits.shape == (2, 16, 32 // downsample, 32 // downsample)
    ids = model.encode(images)
    assert ids.shape == (2, 32 // downsample, 32 // downsample) and ids.dtype == torch.long
    assert torch.equal(ids, logits.argmax(1))
    out = model.decode(ids)
    assert out.shape == (2, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1


def test_decode_ids_equals_decoder_on_one_hot():
    # decode reads the input conv as an embedding table; it must equal the conv over one-hot codes
    model = tiny_vae()
    torch.nn.init.normal_(model.decoder.input.bias)
    ids = torch.randint(0, 16, (2, 4, 4))
    one_hot = F.one_hot(ids, 16).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        a = model.stats_to_images(model.decoder(one_hot))
    assert torch.allclose(model.decode(ids), a, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    model = tiny_vae()
    with pytest.raises(ValueError, match="multiple of the downsampling"):
        model.encode(torch.rand(1, 3, 18, 18))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model.encode(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="code ids must be in"):
        model.decode(torch.full((1, 4, 4), 16))
    with pytest.raises(ValueError, match="power of 2"):
        VAEConfig(downsample=6)
    with pytest.raises(ValueError, match="halvings"):
        VAEConfig(downsample=8, channel_mults=[1, 2])


def test_logit_laplace_decoder_has_mu_and_scale():
    model = tiny_vae()
    assert model.decoder.output.out_channels == 6
    assert tiny_vae(loss="mse").decoder.output.out_channels == 3


def test_logit_laplace_loss_prefers_the_true_image():
    model = tiny_vae()
    x = blocks_images(2)
    xm = model.map_pixels(x)
    mu = torch.log(xm) - torch.log1p(-xm)
    exact = torch.cat([mu, torch.full_like(mu, -3.0)], 1)
    off = torch.cat([mu + 0.5, torch.full_like(mu, -3.0)], 1)
    assert model.recon_loss(exact, x) < model.recon_loss(off, x)
    # mean of the exact prediction unmaps to the image itself
    assert torch.allclose(model.stats_to_images(exact), x, atol=1e-5)


def test_kl_to_uniform_prior():
    model = tiny_vae()
    x = blocks_images(2)
    with torch.no_grad():
        # zero logits = the uniform posterior: KL 0
        model.encoder.output.weight.zero_()
        model.encoder.output.bias.zero_()
        assert model(x)["kl"].abs() < 1e-6
        # one confident code everywhere: KL = log K per cell, over sub-pixels
        model.encoder.output.bias[3] = 100.0
        kl = model(x)["kl"]
    assert math.isclose(float(kl), 4 * 4 * math.log(16) / (3 * 16 * 16), rel_tol=1e-4)


@pytest.mark.parametrize("straight_through", [False, True])
def test_gumbel_gradients_reach_the_encoder(straight_through):
    model = tiny_vae().train()
    out = model(blocks_images(4), temperature=0.5, kl_weight=1.0, straight_through=straight_through)
    out["loss"].backward()
    assert model.encoder.input.weight.grad.abs().sum() > 0
    assert model.decoder.input.weight.grad.abs().sum() > 0


def test_schedules_follow_the_paper():
    module = VAEModule(tiny_config(), temperature_steps=100, kl_warmup_steps=50, kl_weight=6.6)
    assert module.temperature(0) == 1.0 and module.temperature(100) == 1 / 16
    assert 1 / 16 < module.temperature(50) < 1.0
    assert module.kl_weight(0) == 0.0 and math.isclose(module.kl_weight(50), 6.6)
    assert module.kl_weight(10) < module.kl_weight(40)
    assert cosine_ramp(5, 0, 1.0, 2.0) == 2.0


def test_metrics():
    a = torch.rand(2, 3, 8, 8)
    assert torch.isinf(psnr(a, a)).logical_not().all() and psnr(a, a).min() >= 99
    assert math.isclose(float(psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1))), 20.0, rel_tol=1e-5)
    ppl, used = code_usage(torch.tensor([5, 5, 0, 0]))
    assert math.isclose(ppl, 2.0, rel_tol=1e-6) and used == 0.5


def test_export_round_trip(tmp_path):
    model = tiny_vae(seed=1, channel_mults=[1, 1, 2])
    save_export(model, tmp_path / "vae")
    loaded = load_model(tmp_path / "vae", kind="vae")
    assert isinstance(loaded, DiscreteVAE) and loaded.config == model.config
    x = blocks_images(3)
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.allclose(loaded.decode(model.encode(x)), model.decode(model.encode(x)))


def test_training_learns_and_logs(tmp_path):
    """A few Lightning steps on a tiny set: loss falls, metrics and the recon grid are logged,
    the .ckpt reloads with weights_only through load_model."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    images = blocks_images(16, 16, seed=3)
    loader = _image_loader(images)
    torch.manual_seed(0)
    module = VAEModule(tiny_config(), lr=3e-3, temperature_steps=40, kl_warmup_steps=20, kl_weight=1.0, grid_images=4)
    with torch.no_grad():
        before = module.model(images, hard=True)["recon_loss"].item()
    trainer = L.Trainer(
        max_steps=60,
        logger=CSVLogger(tmp_path, name="vae"),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader, loader)
    module.eval()
    with torch.no_grad():
        after = module.model(images, hard=True)["recon_loss"].item()
    assert after < before - 0.1
    metrics = trainer.logged_metrics
    for key in ("val/psnr", "val/codebook_used", "val/perplexity", "train/temperature", "train/kl_weight"):
        assert key in metrics, key
    assert 0 < float(metrics["val/codebook_used"]) <= 1
    grids = list((tmp_path / "vae").rglob("reconstructions/*.png"))
    assert grids, "no reconstruction grid written"
    from PIL import Image

    with Image.open(grids[0]) as im:  # 4 originals above 4 reconstructions
        assert im.size == (4 * 18 + 2, 2 * 18 + 2)
    ckpt = next((tmp_path / "vae").rglob("*.ckpt"))
    loaded = load_model(ckpt, kind="vae")
    assert torch.equal(loaded.encode(images), module.model.encode(images))


def test_gumbel_noise_warm_up():
    # noise scale 0: the relaxed codes are a plain softmax of the logits (deterministic), so the decoder
    # sees what the encoder says before the noise is switched on; scale 1 is the paper's Gumbel-softmax
    model = tiny_vae().train()
    x = blocks_images(2)
    a = model(x, temperature=0.5, noise_scale=0.0)["recon_loss"]
    b = model(x, temperature=0.5, noise_scale=0.0)["recon_loss"]
    assert torch.equal(a, b)
    torch.manual_seed(0)
    c = model(x, temperature=0.5, noise_scale=0.5)["recon_loss"]
    assert not torch.equal(a, c)
    module = VAEModule(tiny_config(), gumbel_noise_steps=100)
    assert module.noise_scale(0) == 0.0 and module.noise_scale(100) == 1.0 and 0 < module.noise_scale(50) < 1
    assert VAEModule(tiny_config()).noise_scale(0) == 1.0  # default: the paper, full noise from step 0


def test_diversity_term_measures_batch_code_usage():
    model = tiny_vae()
    x = blocks_images(2)
    with torch.no_grad():
        model.encoder.output.weight.zero_()
        model.encoder.output.bias.zero_()
        assert model(x)["diversity"].abs() < 1e-5  # uniform posterior: every code equally used
        model.encoder.output.bias[3] = 100.0  # every cell on one code: log K
        out = model(x, diversity_weight=2.0)
        plain = model(x)
    assert math.isclose(float(out["diversity"]), math.log(16), rel_tol=1e-4)
    assert math.isclose(float(out["loss"] - plain["loss"]), 2 * math.log(16), rel_tol=1e-3)


# -- the VQ tokenizer (quantizer="vq") ------------------------------------------------------------------


def test_vq_encode_is_the_nearest_code_and_decode_matches_training_pass():
    model = tiny_vae(quantizer="vq", loss="mse").eval()
    x = blocks_images(3)
    z = F.normalize(model.encoder(model.map_pixels(x)), dim=1)  # [B, D, h, w]
    codebook = model.decoder.codebook()  # unit vectors [K, D]
    assert torch.allclose(codebook.norm(dim=1), torch.ones(16), atol=1e-5)
    dist = torch.cdist(z.permute(0, 2, 3, 1).flatten(0, 2), codebook)  # euclidean on the sphere = cosine order
    ids = model.encode(x)
    assert torch.equal(ids.flatten(), dist.argmin(1))
    with torch.no_grad():
        out = model(x)
    # what DALL·E decodes from the ids is exactly what the training pass reconstructs
    assert torch.allclose(model.decode(ids), out["reconstruction"], atol=1e-6)
    assert model.encoder.output.out_channels == model.config.init_channels


def test_vq_straight_through_gradients_and_loss_terms():
    model = tiny_vae(quantizer="vq", loss="mse").train()
    x = blocks_images(2)
    out = model(x, commitment_weight=0.0)
    heavy = model(x, commitment_weight=10.0)
    assert float(heavy["loss"].detach()) > float(out["loss"].detach())  # the commitment term counts
    out["loss"].backward()
    assert model.encoder.input.weight.grad.abs().sum() > 0  # through the straight-through estimator
    assert model.decoder.input.weight.grad.abs().sum() > 0  # the codebook learns
    with pytest.raises(ValueError, match="quantizer"):
        VAEConfig(quantizer="fsq")


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")  # train only
def test_vq_training_restarts_dead_codes_and_learns(tmp_path):
    images = blocks_images(16, 16, seed=3)
    loader = _image_loader(images)
    torch.manual_seed(0)
    module = VAEModule(tiny_config(quantizer="vq", loss="mse"), lr=3e-3, restart_every=10, grid_images=4)
    with torch.no_grad():
        before = module.model(images)["recon_loss"].item()
        used_before = module.model.encode(images).unique().numel()
    _fit(module, loader, 60, tmp_path)
    module.eval()
    with torch.no_grad():
        after = module.model(images)["recon_loss"].item()
        used_after = module.model.encode(images).unique().numel()
    assert after < 0.7 * before
    assert used_after > used_before  # restarts put unused codes where the encoder's outputs are
    save_export(module.model, tmp_path / "vq")
    loaded = load_model(tmp_path / "vq", kind="vae")
    assert loaded.config.quantizer == "vq" and torch.equal(loaded.encode(images), module.model.encode(images))


def _fit(module: VAEModule, loader, steps: int, root) -> None:
    """``steps`` optimiser steps of ``module`` on ``loader``, no logging, checkpoints or validation."""
    import lightning as L

    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=root,
    )
    trainer.fit(module, loader)


def _image_loader(images: torch.Tensor, batch_size: int = 8):
    """Batches ``{"image": [B, 3, H, W]}`` of ``images``, as the shapes DataModule gives them."""
    from torch.utils.data import DataLoader

    rows = [{"image": img} for img in images]
    return DataLoader(rows, batch_size=batch_size, collate_fn=lambda b: {"image": torch.stack([r["image"] for r in b])})


def test_decoder_only_fine_tuning_keeps_the_codes_and_improves_the_decoder(tmp_path):
    images = blocks_images(16, 16, seed=3)
    torch.manual_seed(0)
    start = tiny_vae(quantizer="vq", loss="mse")
    save_export(start, tmp_path / "start")
    codes = start.encode(images)
    module = VAEModule(init_from=str(tmp_path / "start"), decoder_only=True, lr=3e-3, restart_every=10, grid_images=4)
    trained = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert not any(id(p) in trained for p in module.model.encoder.parameters())
    assert id(module.model.decoder.input.weight) not in trained  # the codebook is what codes are matched against
    with torch.no_grad():
        before = module.model(images)["recon_loss"].item()
    _fit(module, _image_loader(images), 80, tmp_path)
    module.eval()
    with torch.no_grad():
        after = module.model(images)["recon_loss"].item()
    assert torch.equal(module.model.encode(images), codes)  # no restarts either: every code means what it meant
    assert after < 0.85 * before
    with pytest.raises(ValueError, match="decoder_only fine-tunes"):
        VAEModule(tiny_config(quantizer="vq"), decoder_only=True)
