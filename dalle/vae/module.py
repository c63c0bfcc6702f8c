"""Training the discrete VAE (``VAEModule``): the DALL·E paper's schedules on a Lightning module."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dalle.vae.model import DiscreteVAE, VAEConfig, code_usage, psnr
from multimodal.checkpoint import CheckpointError, load_model
from multimodal.images import image_grid, save_png
from multimodal.lightning import ModelModule


def cosine_ramp(step: int, steps: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at ``steps`` along a half cosine, then ``end``."""
    if steps <= 0 or step >= steps:
        return end
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / steps))


class VAEModule(ModelModule):
    """Trains ``DiscreteVAE`` as in the DALL·E paper.

    Schedules (per optimiser step): Gumbel temperature ``temperature_start -> temperature_end`` over
    ``temperature_steps`` (cosine; paper 1 -> 1/16 over 150k updates), KL weight ``0 -> kl_weight`` over
    ``kl_warmup_steps`` (cosine; paper 6.6 over 5000), Gumbel noise scale ``0 -> 1`` over
    ``gumbel_noise_steps`` (0 = the paper: full noise from step 0; a warm-up lets the encoder's logits grow
    past the noise before it is switched on: with full noise and near-zero initial logits every cell
    decodes a random code, the decoder learns the mean image and training collapses onto one code),
    optional batch code-usage term ``diversity_weight * (log K - H(mean posterior))``, learning rate linear
    warm-up then cosine decay to ``lr * min_lr_ratio`` at the end of training (paper 1e-4 -> 1.25e-6).
    With ``quantizer="vq"`` the Gumbel schedules do not apply: the loss carries ``commitment_weight``
    (VQ-VAE's beta), and every ``restart_every`` steps the codes no batch picked in that window are moved
    onto encoder outputs of the current batch (dead-code restart; 0 turns it off). ``foreground_weight``
    adds that many times the squared error on non-black pixels (see ``foreground_error``). ``decoder_only``
    (with ``init_from``) trains the decoder alone on frozen codes: the encoder and the codebook stay as they are
    (no restarts), so every code means what it meant and a DALL·E trained on them can take the new decoder
    (``DALLEModule(init_from=..., vae=...)``).
    Validation decodes the argmax codes (what DALL·E sees): PSNR, code usage, a grid of originals above
    reconstructions (to the logger when it takes images, else PNGs under the log directory).
    """

    def __init__(
        self,
        config: VAEConfig | None = None,
        init_from: str | None = None,
        lr: float = 1e-4,
        min_lr_ratio: float = 0.0125,
        warmup_steps: int = 0,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        temperature_start: float = 1.0,
        temperature_end: float = 1 / 16,
        temperature_steps: int = 150_000,
        straight_through: bool = False,
        kl_weight: float = 6.6,
        kl_warmup_steps: int = 5000,
        gumbel_noise_steps: int = 0,
        diversity_weight: float = 0.0,
        commitment_weight: float = 0.25,
        restart_every: int = 100,
        foreground_weight: float = 0.0,
        decoder_only: bool = False,
        grid_images: int = 8,
        log_images: bool = True,
    ) -> None:
        args = dict(locals())
        super().__init__()
        if isinstance(config, dict):  # from a checkpoint's hyper-parameters
            config = VAEConfig(**config)
        if init_from is not None:  # fine-tune an export (e.g. OpenAI's converted dVAE) or a DALL·E's tokenizer
            loaded = load_model(init_from, ("vae", "dalle"))
            self.model = loaded if isinstance(loaded, DiscreteVAE) else loaded.vae
            if self.model is None:
                raise CheckpointError(f"{init_from}: this DALL·E export carries no dVAE")
            self.model.requires_grad_(True)  # a DALL·E keeps its dVAE frozen
            self.model.train()
        else:
            self.model = DiscreteVAE(config or VAEConfig())
        if decoder_only:
            if init_from is None or self.model.config.quantizer != "vq":
                raise ValueError("decoder_only fine-tunes the decoder of a VQ tokenizer: give init_from a vq export")
            self.model.encoder.requires_grad_(False)
            self.model.decoder.input.weight.requires_grad_(False)  # the codebook the encoder is matched against
        hp = {k: v for k, v in args.items() if k not in ("self", "config", "__class__")}
        hp["betas"] = list(betas)
        # plain types only, so .ckpt files stay loadable with weights_only=True
        self.save_hyperparameters({"config": asdict(self.model.config), **hp})
        self._val_counts: Tensor | None = None
        self._val_grid: Tensor | None = None
        self._window_counts: Tensor | None = None  # vq: code use since the last restart
        self._last_z_e: Tensor | None = None

    def temperature(self, step: int | None = None) -> float:
        h = self.hparams
        step = self.global_step if step is None else step
        return cosine_ramp(step, h.temperature_steps, h.temperature_start, h.temperature_end)

    def kl_weight(self, step: int | None = None) -> float:
        h = self.hparams
        step = self.global_step if step is None else step
        return cosine_ramp(step, h.kl_warmup_steps, 0.0, h.kl_weight)

    def on_fit_start(self) -> None:
        # channels-last: oneDNN runs these narrow convs about 2x faster on a CPU (same weights, same keys)
        self.model.to(memory_format=torch.channels_last)

    def noise_scale(self, step: int | None = None) -> float:
        h = self.hparams
        step = self.global_step if step is None else step
        return cosine_ramp(step, h.gumbel_noise_steps, 0.0, 1.0)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images = _images(batch)
        h = self.hparams
        tau, beta, noise = self.temperature(), self.kl_weight(), self.noise_scale()
        out = self.model(
            images,
            temperature=tau,
            kl_weight=beta,
            straight_through=h.straight_through,
            noise_scale=noise,
            diversity_weight=h.diversity_weight,
            commitment_weight=h.commitment_weight,
        )
        with torch.no_grad():
            ids = out["logits"].argmax(1)
            counts = torch.bincount(ids.flatten(), minlength=self.model.config.codebook_size)
            if "z_e" in out and h.restart_every and not h.decoder_only:
                self._count_codes(counts, out["z_e"])
            perplexity, _ = code_usage(counts)
            p = psnr(out["reconstruction"], images).mean()
        loss = out["loss"]
        if h.foreground_weight:
            loss = loss + h.foreground_weight * foreground_error(out["reconstruction"], images)
        log = {
            "train/loss": loss,
            "train/recon_loss": out["recon_loss"],
            "train/kl": out["kl"],
            "train/psnr": p,
            "train/perplexity": perplexity,
            "train/temperature": tau,
            "train/kl_weight": beta,
            "train/noise_scale": noise,
            "train/diversity": out["diversity"],
        }
        self.log_dict(log, prog_bar=False, batch_size=images.shape[0])
        self.log("psnr", p, prog_bar=True, batch_size=images.shape[0], logger=False)
        return loss

    def _count_codes(self, counts: Tensor, z_e: Tensor) -> None:
        self._window_counts = counts if self._window_counts is None else self._window_counts + counts
        self._last_z_e = z_e.detach()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # after the optimiser step: moving codes inside training_step would change weights autograd still needs
        if self._window_counts is None or self.global_step % self.hparams.restart_every:
            return
        self._restart_dead_codes(self._window_counts, self._last_z_e)
        self._window_counts = None

    @torch.no_grad()
    def _restart_dead_codes(self, counts: Tensor, z_e: Tensor) -> None:
        strategy = self.trainer.strategy
        window = strategy.reduce(counts, reduce_op="sum")
        dead = (window == 0).nonzero().flatten()
        if not len(dead):
            return
        # encoder outputs of this batch, in random order; rank 0's choice is applied on every rank
        vectors = z_e.permute(0, 2, 3, 1).flatten(0, 2)
        vectors = vectors[torch.randint(len(vectors), (len(dead),), device=vectors.device)]
        vectors = strategy.broadcast(vectors, src=0)
        self.model.restart_codes(dead, vectors)
        self.log("train/restarted_codes", float(len(dead)), rank_zero_only=True)

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(self.model.config.codebook_size, dtype=torch.long, device=self.device)
        self._val_grid = None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        images = _images(batch)
        out = self.model(images, hard=True)
        ids = out["logits"].argmax(1)
        self._val_counts += torch.bincount(ids.flatten(), minlength=self.model.config.codebook_size)
        b = images.shape[0]
        self.log("val/recon_loss", out["recon_loss"], batch_size=b, sync_dist=True)
        self.log("val/psnr", psnr(out["reconstruction"], images).mean(), batch_size=b, sync_dist=True, prog_bar=True)
        if batch_idx == 0:
            n = min(self.hparams.grid_images, b)
            self._val_grid = image_grid([images[:n], out["reconstruction"][:n]])

    def on_validation_epoch_end(self) -> None:
        counts = self.trainer.strategy.reduce(self._val_counts, reduce_op="sum") if self.trainer else self._val_counts
        perplexity, used = code_usage(counts)
        self.log("val/perplexity", perplexity, rank_zero_only=True)
        self.log("val/codebook_used", used, rank_zero_only=True, prog_bar=True)
        if self._val_grid is not None and self.hparams.log_images and not self.trainer.sanity_checking:
            if self.trainer.is_global_zero:
                self._log_grid(self._val_grid)

    def _log_grid(self, grid: Tensor) -> None:
        step, logger = self.global_step, self.logger
        experiment = getattr(logger, "experiment", None) if logger else None
        if logger is not None and hasattr(logger, "log_image"):  # W&B, Neptune, Comet...
            logger.log_image(key="val/reconstructions", images=[grid], step=step)
        elif experiment is not None and hasattr(experiment, "add_image"):  # TensorBoard
            experiment.add_image("val/reconstructions", grid, step)
        else:
            root = getattr(logger, "log_dir", None) if logger else None
            root = Path(root or self.trainer.default_root_dir)
            save_png(grid, root / "reconstructions" / f"step_{step:07d}.png")

    def configure_optimizers(self):
        h = self.hparams
        return self.adamw_with_schedule(h.lr, h.weight_decay, tuple(h.betas), h.warmup_steps, h.min_lr_ratio)


def foreground_error(reconstruction: Tensor, images: Tensor, threshold: float = 0.02) -> Tensor:
    """Squared error on the pixels that are not black, averaged over all sub-pixels.

    On a dark-background world (the shapes world) a small star is ~1% of the pixels, so a plain MSE is
    mostly background; this term (``foreground_weight`` times it) puts the decoder's effort on the shapes.
    """
    mask = (images.amax(1, keepdim=True) > threshold).float()  # [B, 1, H, W]
    return ((reconstruction - images).pow(2) * mask).mean()


def _images(batch: Any) -> Tensor:
    images = batch["image"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch
    return images.float().contiguous(memory_format=torch.channels_last)
