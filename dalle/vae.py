"""The discrete VAE of DALL·E: an image <-> a grid of code ids.

A convolutional encoder maps an image ``[B, 3, H, W]`` to logits over ``K`` codes for every cell of an
``h x w = H/f x W/f`` grid; a decoder maps a (relaxed) one-hot grid back to pixels. Training follows the
DALL·E paper (Ramesh et al. 2021, appendix A):

- the posterior over codes is relaxed with Gumbel-softmax, its temperature annealed from 1 to 1/16
  (optionally straight-through: hard one-hot forward, soft gradients backward);
- the KL divergence to a uniform prior over the K codes is weighted by beta, warmed up from 0 (paper:
  0 -> 6.6 over the first 5000 updates);
- the reconstruction loss is the logit-Laplace likelihood: pixels are mapped to [eps, 1-eps] (eps = 0.1)
  and the decoder predicts, per channel, a location mu (in logit space) and a log-scale; L1 / MSE are
  options for quick experiments.

The layout is OpenAI's released dVAE (``dall_e.Encoder`` / ``dall_e.Decoder``) generalised: groups of
bottleneck residual blocks whose residual branch is scaled by ``1 / n_layers**2``, a max-pool (encoder)
or nearest upsample (decoder) between groups, one more group for each factor 2 of downsampling. With
``downsample=8, hidden=256, blocks_per_group=2, codebook_size=8192, init_channels=128`` it is exactly
their model, and ``convert_openai_state`` maps their weights onto ours (``python -m dalle.vae convert``).

A conv VAE has no attention, so this is the one model of the suite that does not run the transformer
backbone.

CLI: ``python -m dalle.vae reconstruct | tokenize | convert`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import math
import re
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimodal.checkpoint import CheckpointError, load_model, load_state_file, register, save_export
from multimodal.cli import fail
from multimodal.lightning import ModelModule

LOSSES = ("logit_laplace", "l1", "mse")
DEFAULT_MULTS = {4: [1, 2, 4], 8: [1, 2, 4, 8], 16: [1, 2, 4, 8, 8], 32: [1, 2, 4, 8, 8, 8]}


@dataclass
class VAEConfig:
    image_size: int = 256  # training resolution; any multiple of `downsample` encodes
    channels: int = 3
    codebook_size: int = 8192  # K, the image vocabulary of DALL·E
    downsample: int = 8  # f: image H x W -> grid H/f x W/f
    hidden: int = 256  # width of the first encoder group (OpenAI's n_hid); group g has hidden * mults[g]
    channel_mults: list[int] | None = None  # one per group, len = log2(downsample) + 1; default doubles to 8
    blocks_per_group: int = 2
    init_channels: int = 128  # decoder: width of a code's embedding (OpenAI's n_init)
    input_kernel: int = 7  # encoder's first conv
    loss: str = "logit_laplace"  # logit_laplace | l1 | mse
    eps: float = 0.1  # logit-Laplace: pixels are mapped to [eps, 1 - eps]

    def __post_init__(self) -> None:
        if self.downsample < 1 or self.downsample & (self.downsample - 1):
            raise ValueError(f"downsample must be a power of 2, got {self.downsample}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.channel_mults is not None:
            self.channel_mults = [int(m) for m in self.channel_mults]
        mults = self.mults
        if len(mults) != int(math.log2(self.downsample)) + 1:
            raise ValueError(
                f"channel_mults {mults} gives {len(mults) - 1} halvings, downsample {self.downsample} needs "
                f"{int(math.log2(self.downsample))}"
            )
        if any((self.hidden * m) % 4 for m in mults):
            raise ValueError("hidden * every channel mult must be divisible by 4 (bottleneck width n_out / 4)")
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} is not a multiple of downsample {self.downsample}")
        if self.codebook_size < 2 or self.input_kernel % 2 == 0:
            raise ValueError("codebook_size must be >= 2 and input_kernel odd")
        if not 0 <= self.eps < 0.5:
            raise ValueError(f"eps must be in [0, 0.5), got {self.eps}")

    @property
    def mults(self) -> list[int]:
        if self.channel_mults is not None:
            return list(self.channel_mults)
        if self.downsample not in DEFAULT_MULTS:
            raise ValueError(f"no default channel_mults for downsample {self.downsample}; set channel_mults")
        return DEFAULT_MULTS[self.downsample]

    @property
    def grid_size(self) -> int:
        return self.image_size // self.downsample

    @property
    def out_channels(self) -> int:
        # logit-Laplace predicts (mu, log-scale) per channel
        return 2 * self.channels if self.loss == "logit_laplace" else self.channels


def _conv(n_in: int, n_out: int, k: int) -> nn.Conv2d:
    conv = nn.Conv2d(n_in, n_out, k, padding=(k - 1) // 2)
    # OpenAI's init: N(0, 1/fan_in), zero bias (the residual branch is scaled down by post_gain instead).
    nn.init.normal_(conv.weight, std=1 / math.sqrt(n_in * k * k))
    nn.init.zeros_(conv.bias)
    return conv


class ResBlock(nn.Module):
    """``id_path(x) + post_gain * res(x)``; res = 4 x (ReLU, conv) through a bottleneck of n_out / 4."""

    def __init__(self, n_in: int, n_out: int, kernels: Sequence[int], post_gain: float):
        super().__init__()
        hid = n_out // 4
        widths = [n_in, hid, hid, hid, n_out]
        self.id_path = _conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.convs = nn.ModuleList(_conv(widths[i], widths[i + 1], k) for i, k in enumerate(kernels))
        self.post_gain = post_gain

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for conv in self.convs:
            h = conv(F.relu(h))
        return self.id_path(x) + self.post_gain * h


def _groups(widths: list[int], n_in: int, blocks: int, kernels: Sequence[int]) -> nn.ModuleList:
    post_gain = 1 / (len(widths) * blocks) ** 2
    groups = []
    for w in widths:
        group = []
        for _ in range(blocks):
            group.append(ResBlock(n_in, w, kernels, post_gain))
            n_in = w
        groups.append(nn.Sequential(*group))
    return nn.ModuleList(groups)


class Encoder(nn.Module):
    """``[B, C, H, W]`` pixels mapped to [eps, 1-eps] -> ``[B, K, H/f, W/f]`` logits."""

    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = [c.hidden * m for m in c.mults]
        self.input = _conv(c.channels, widths[0], c.input_kernel)
        self.groups = _groups(widths, widths[0], c.blocks_per_group, (3, 3, 3, 1))
        self.output = _conv(widths[-1], c.codebook_size, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input(x)
        for g, group in enumerate(self.groups):
            x = group(x)
            if g < len(self.groups) - 1:
                x = F.max_pool2d(x, 2)
        return self.output(F.relu(x))


class Decoder(nn.Module):
    """``[B, K, h, w]`` (relaxed) one-hot codes -> ``[B, out_channels, h*f, w*f]`` pixel statistics.

    ``input`` is a 1x1 conv over the one-hot codes, i.e. a codebook of K embeddings of width
    ``init_channels`` plus a bias; ``embed_ids`` reads it as an embedding table so decoding ids never
    materialises a K-channel one-hot tensor.
    """

    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = [c.hidden * m for m in reversed(c.mults)]
        self.input = _conv(c.codebook_size, c.init_channels, 1)
        # OpenAI's N(0, 1/fan_in) would give each code an embedding of norm ~sqrt(n_init / K): the decoder
        # barely sees which code it got and training starts by collapsing onto a few codes. Unit-variance
        # entries (an nn.Embedding's init) make codes distinguishable from step 0.
        nn.init.normal_(self.input.weight, std=1.0)
        self.groups = _groups(widths, c.init_channels, c.blocks_per_group, (1, 3, 3, 3))
        self.output = _conv(widths[-1], c.out_channels, 1)

    def embed_ids(self, ids: Tensor) -> Tensor:
        # ids [B, h, w] -> [B, init_channels, h, w]; equal to input(one_hot(ids))
        table = self.input.weight[:, :, 0, 0].t()  # [K, init_channels]
        return (F.embedding(ids, table) + self.input.bias).permute(0, 3, 1, 2)

    def body(self, h: Tensor) -> Tensor:
        for g, group in enumerate(self.groups):
            h = group(h)
            if g < len(self.groups) - 1:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.output(F.relu(h))

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.input(z))


@register("vae")
class DiscreteVAE(nn.Module):
    config_class = VAEConfig

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    # -- pixels <-> the spaces the networks see -------------------------------------------------------
    def map_pixels(self, x: Tensor) -> Tensor:
        """[0, 1] -> [eps, 1 - eps] (where the logit-Laplace density is finite)."""
        return (1 - 2 * self.config.eps) * x + self.config.eps

    def unmap_pixels(self, x: Tensor) -> Tensor:
        return ((x - self.config.eps) / (1 - 2 * self.config.eps)).clamp(0, 1)

    def stats_to_images(self, stats: Tensor) -> Tensor:
        """Decoder output -> images in [0, 1] (the mean of the logit-Laplace, or the prediction)."""
        c = self.config.channels
        if self.config.loss == "logit_laplace":
            return self.unmap_pixels(torch.sigmoid(stats[:, :c].float()))
        return stats[:, :c].float().clamp(0, 1)

    # -- the tokenizer interface DALL·E uses ---------------------------------------------------------
    def encode_logits(self, images: Tensor) -> Tensor:
        """images ``[B, C, H, W]`` in [0, 1] -> logits ``[B, K, H/f, W/f]``."""
        self._check_images(images)
        return self.encoder(self.map_pixels(images))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """images ``[B, C, H, W]`` in [0, 1] -> code ids ``[B, H/f, W/f]`` (argmax of the posterior)."""
        return self.encode_logits(images).argmax(dim=1)

    def decode_stats(self, ids: Tensor) -> Tensor:
        if ids.dim() != 3:
            raise ValueError(f"expected code ids [B, h, w], got shape {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.codebook_size):
            raise ValueError(
                f"code ids must be in [0, {self.config.codebook_size}), got [{int(ids.min())}, {int(ids.max())}]"
            )
        return self.decoder.body(self.decoder.embed_ids(ids.long()))

    @torch.no_grad()
    def decode(self, ids: Tensor) -> Tensor:
        """code ids ``[B, h, w]`` -> images ``[B, C, h*f, w*f]`` in [0, 1]."""
        return self.stats_to_images(self.decode_stats(ids))

    def _check_images(self, images: Tensor) -> None:
        c, f = self.config.channels, self.config.downsample
        if images.dim() != 4 or images.shape[1] != c:
            raise ValueError(f"expected images [B, {c}, H, W], got shape {tuple(images.shape)}")
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"image size {tuple(images.shape[2:])} is not a multiple of the downsampling {f}")

    # -- training -------------------------------------------------------------------------------------
    def recon_loss(self, stats: Tensor, images: Tensor) -> Tensor:
        """Negative log-likelihood (logit-Laplace, nats per sub-pixel) or L1 / MSE, averaged."""
        c = self.config.channels
        stats, x = stats.float(), images.float()
        if self.config.loss == "l1":
            return (stats[:, :c] - x).abs().mean()
        if self.config.loss == "mse":
            return (stats[:, :c] - x).pow(2).mean()
        # p(x | mu, b) = exp(-|logit(x) - mu| / b) / (2 b x (1 - x)) on x in (0, 1), with x mapped to [eps, 1-eps]
        mu, log_b = stats[:, :c], stats[:, c:]
        xm = self.map_pixels(x).clamp(1e-6, 1 - 1e-6)
        logit = torch.log(xm) - torch.log1p(-xm)
        nll = math.log(2.0) + log_b + torch.log(xm * (1 - xm)) + (logit - mu).abs() * torch.exp(-log_b)
        return nll.mean()

    def forward(
        self,
        images: Tensor,
        temperature: float = 1.0,
        kl_weight: float = 0.0,
        straight_through: bool = False,
        hard: bool = False,
        noise_scale: float = 1.0,
        diversity_weight: float = 0.0,
    ) -> dict[str, Tensor]:
        """One training/evaluation pass. ``hard=True`` decodes the argmax codes (what DALL·E will see).

        Returns loss = recon + kl_weight * KL (+ diversity_weight * (log K - H(mean q))), where
        KL(q || uniform) is summed over the grid and divided by the number of sub-pixels, so both terms are
        per-dimension like the ELBO in nats/dim. ``noise_scale`` multiplies the Gumbel noise (1 = the
        paper's Gumbel-softmax; < 1 during a noise warm-up, see ``VAEModule``).
        """
        logits = self.encode_logits(images).float()  # [B, K, h, w]
        if hard:
            z = F.one_hot(logits.argmax(1), self.config.codebook_size).permute(0, 3, 1, 2).to(logits.dtype)
        elif noise_scale >= 1.0:
            z = F.gumbel_softmax(logits, tau=temperature, hard=straight_through, dim=1)
        else:
            z = _scaled_gumbel_softmax(logits, temperature, noise_scale, straight_through)
        stats = self.decoder(z.to(self.decoder.input.weight.dtype))  # a no-op under autocast (fp32 weights)
        recon = self.recon_loss(stats, images)
        log_q = F.log_softmax(logits, dim=1)
        kl_cells = (log_q.exp() * log_q).sum(1) + math.log(self.config.codebook_size)  # [B, h, w]
        kl = kl_cells.sum((1, 2)).mean() / images[0].numel()
        # batch-level code usage: log K - entropy of the batch-averaged posterior (0 = every code equally used)
        q_mean = log_q.exp().mean((0, 2, 3))  # [K]
        diversity = math.log(self.config.codebook_size) + (q_mean * torch.log(q_mean.clamp_min(1e-12))).sum()
        loss = recon + kl_weight * kl
        if diversity_weight:
            loss = loss + diversity_weight * diversity
        return {
            "loss": loss,
            "recon_loss": recon,
            "kl": kl,
            "diversity": diversity,
            "logits": logits,
            "reconstruction": self.stats_to_images(stats),
        }


# -------------------------------------------------------------------------------------------------
# Metrics and image grids
# -------------------------------------------------------------------------------------------------


def _scaled_gumbel_softmax(logits: Tensor, tau: float, noise_scale: float, hard: bool) -> Tensor:
    """Gumbel-softmax over dim 1 with the noise multiplied by ``noise_scale`` (0 = a plain softmax)."""
    gumbels = -torch.empty_like(logits).exponential_().log()
    y = F.softmax((logits + noise_scale * gumbels) / tau, dim=1)
    if hard:  # straight-through: one-hot forward, soft gradients backward
        one_hot = F.one_hot(y.argmax(1), y.shape[1]).permute(0, 3, 1, 2).to(y.dtype)
        y = one_hot - y.detach() + y
    return y


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [0, 1]: ``[B, C, H, W] x 2 -> [B]``."""
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def code_usage(counts: Tensor) -> tuple[float, float]:
    """From a histogram of code ids: (perplexity = exp(entropy), fraction of codes used at least once)."""
    p = counts.double() / counts.sum().clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
    return float(entropy.exp()), float((counts > 0).double().mean())


def image_grid(rows: Sequence[Tensor], pad: int = 2) -> Tensor:
    """Rows of images ``[N, C, H, W]`` (same N, H, W) -> one image ``[C, rows*(H+pad)+pad, N*(W+pad)+pad]``."""
    n, c, h, w = rows[0].shape
    grid = torch.ones(c, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for r, row in enumerate(rows):
        for i, img in enumerate(row):
            y, x = pad + r * (h + pad), pad + i * (w + pad)
            grid[:, y : y + h, x : x + w] = img.detach().float().cpu().clamp(0, 1)
    return grid


def save_png(image: Tensor, path: str | Path) -> Path:
    """``[C, H, W]`` in [0, 1] -> PNG file (written to a temporary name first)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(tmp, format="PNG")
    tmp.replace(path)
    return path


# -------------------------------------------------------------------------------------------------
# Training
# -------------------------------------------------------------------------------------------------


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
    optional batch code-usage term ``diversity_weight * (log K - H(mean posterior))``, learning rate linear warm-up then cosine decay to
    ``lr * min_lr_ratio`` at the end of training (paper 1e-4 -> 1.25e-6).
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
        grid_images: int = 8,
        log_images: bool = True,
    ) -> None:
        args = dict(locals())
        super().__init__()
        if isinstance(config, dict):  # from a checkpoint's hyper-parameters
            config = VAEConfig(**config)
        if init_from is not None:  # fine-tune an export (e.g. OpenAI's converted dVAE)
            self.model = load_model(init_from, "vae")
            self.model.train()
        else:
            self.model = DiscreteVAE(config or VAEConfig())
        hp = {k: v for k, v in args.items() if k not in ("self", "config", "__class__")}
        hp["betas"] = list(betas)
        # plain types only, so .ckpt files stay loadable with weights_only=True
        self.save_hyperparameters({"config": asdict(self.model.config), **hp})
        self._val_counts: Tensor | None = None
        self._val_grid: Tensor | None = None

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
        )
        with torch.no_grad():
            ids = out["logits"].argmax(1)
            counts = torch.bincount(ids.flatten(), minlength=self.model.config.codebook_size)
            perplexity, _ = code_usage(counts)
            p = psnr(out["reconstruction"], images).mean()
        log = {
            "train/loss": out["loss"],
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
        return out["loss"]

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
        decay, no_decay = [], []
        for p in self.model.parameters():
            (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": h.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=h.lr, betas=tuple(h.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self.trainer else 1

        def factor(step: int) -> float:
            if step < h.warmup_steps:
                return (step + 1) / h.warmup_steps
            return cosine_ramp(step - h.warmup_steps, total - h.warmup_steps, 1.0, h.min_lr_ratio)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _images(batch: Any) -> Tensor:
    images = batch["image"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch
    return images.float().contiguous(memory_format=torch.channels_last)


# -------------------------------------------------------------------------------------------------
# OpenAI's released dVAE (the `dall-e` package) -> ours
# -------------------------------------------------------------------------------------------------

_OPENAI_KEY = re.compile(
    r"^blocks\.(?:(input)|(output)\.conv|group_(\d+)\.block_(\d+)\.(?:(id_path)|res_path\.conv_(\d+)))\.(w|b)$"
)


def _openai_to_ours(key: str, prefix: str) -> str | None:
    m = _OPENAI_KEY.match(key)
    if m is None:
        return None
    inp, outp, g, i, id_path, j, wb = m.groups()
    name = "weight" if wb == "w" else "bias"
    if inp or outp:
        return f"{prefix}.{'input' if inp else 'output'}.{name}"
    block = f"{prefix}.groups.{int(g) - 1}.{int(i) - 1}"
    return f"{block}.id_path.{name}" if id_path else f"{block}.convs.{int(j) - 1}.{name}"


def openai_config(
    encoder_state: dict[str, Tensor], decoder_state: dict[str, Tensor], image_size: int = 256
) -> VAEConfig:
    """The ``VAEConfig`` holding exactly the architecture of these ``dall_e`` Encoder/Decoder state dicts."""
    try:
        w_in = encoder_state["blocks.input.w"]  # [n_hid, C, k, k]
        hidden, channels, kernel = w_in.shape[0], w_in.shape[1], w_in.shape[2]
        groups = sorted({int(m.group(3)) for k in encoder_state if (m := _OPENAI_KEY.match(k)) and m.group(3)})
        blocks = sorted({int(m.group(4)) for k in encoder_state if (m := _OPENAI_KEY.match(k)) and m.group(3) == "1"})
        widths = [encoder_state[f"blocks.group_{g}.block_1.res_path.conv_4.w"].shape[0] for g in groups]
        vocab = encoder_state["blocks.output.conv.w"].shape[0]
        init_channels = decoder_state["blocks.input.w"].shape[0]
        out_channels = decoder_state["blocks.output.conv.w"].shape[0]
    except (KeyError, AttributeError, IndexError) as e:
        raise CheckpointError(f"not a dall_e Encoder/Decoder state dict (missing {e})") from None
    if not groups or groups != list(range(1, len(groups) + 1)) or any(w % hidden for w in widths):
        raise CheckpointError(f"unexpected dall_e layout: groups {groups}, widths {widths}")
    if out_channels != 2 * channels:
        raise CheckpointError(
            f"dall_e decoder outputs {out_channels} channels, expected {2 * channels} (logit-Laplace)"
        )
    mults = [w // hidden for w in widths]
    try:
        return VAEConfig(
            image_size=image_size,
            channels=channels,
            codebook_size=vocab,
            downsample=2 ** (len(groups) - 1),
            hidden=hidden,
            channel_mults=mults,
            blocks_per_group=len(blocks),
            init_channels=init_channels,
            input_kernel=kernel,
            loss="logit_laplace",
            eps=0.1,
        )
    except ValueError as e:
        raise CheckpointError(f"dall_e weights describe an unsupported architecture: {e}") from None


def convert_openai_state(
    encoder_state: dict[str, Tensor], decoder_state: dict[str, Tensor], image_size: int = 256
) -> DiscreteVAE:
    """Build our ``DiscreteVAE`` from ``dall_e`` Encoder and Decoder state dicts, checking every key and shape."""
    config = openai_config(encoder_state, decoder_state, image_size)
    model = DiscreteVAE(config)
    own = model.state_dict()
    mapped: dict[str, Tensor] = {}
    for prefix, state in (("encoder", encoder_state), ("decoder", decoder_state)):
        for key, value in state.items():
            ours = _openai_to_ours(key, prefix)
            if ours is None or ours not in own:
                raise CheckpointError(f"dall_e {prefix} key {key!r} has no place in our model")
            if tuple(value.shape) != tuple(own[ours].shape):
                raise CheckpointError(
                    f"shape mismatch: dall_e {prefix} {key} {tuple(value.shape)} vs ours {ours} {tuple(own[ours].shape)}"
                )
            mapped[ours] = value.detach().float()
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise CheckpointError(f"dall_e weights leave {len(missing)} of our parameters unset, e.g. {missing[:3]}")
    model.load_state_dict(mapped)
    return model.eval()


_PICKLE_REFUSAL = (
    "{path}: a pickled Python object (OpenAI's released encoder.pkl/decoder.pkl are whole pickled modules); "
    "unpickling runs code stored in the file, so it is refused; pass --trust-pickle only for files from a "
    "source you trust (needs the dall-e package installed)"
)


def load_openai_state(path: str | Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """A ``dall_e`` Encoder/Decoder state dict from a weights file (safe) or, with ``trust_pickle``, from
    OpenAI's pickled module. Without ``trust_pickle`` nothing is ever unpickled."""
    path = Path(path)
    try:
        obj: Any = load_state_file(path)
    except CheckpointError as e:
        if "refused to load" not in str(e):
            raise
        with open(path, "rb") as f:  # a torch.save zip or a raw pickle (protocol 2+ starts with 0x80)
            looks_pickled = zipfile.is_zipfile(f) or (f.seek(0) == 0 and f.read(1) == b"\x80")
        if not looks_pickled:
            raise CheckpointError(f"{path}: neither a weights file nor a pickled dall_e module") from None
        if not trust_pickle:
            raise CheckpointError(_PICKLE_REFUSAL.format(path=path)) from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)  # the user vouched for this file
        except ModuleNotFoundError as e:
            raise CheckpointError(f"{path}: unpickling needs the module {e.name!r} (pip install dall-e)") from None
        except Exception as e:  # noqa: BLE001 - anything a foreign pickle raises becomes one line
            raise CheckpointError(f"{path}: could not unpickle: {type(e).__name__}: {str(e)[:160]}") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path}: expected a dall_e Encoder/Decoder or its state dict, found {type(obj).__name__}"
        )
    return dict(obj)


# -------------------------------------------------------------------------------------------------
# Command-line tools
# -------------------------------------------------------------------------------------------------

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp")
CODES_MEMBER = "codes.npy"


class UsageError(Exception):
    """Bad input from the command line; printed as one line, exit code 2."""


def load_image(source: str | Path | bytes, size: int) -> Tensor:
    """An image file (or its bytes) -> ``[3, size, size]`` in [0, 1]: shorter side resized to ``size``
    (bicubic), then centre-cropped."""
    from PIL import Image, UnidentifiedImageError

    name = "image bytes" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            arr = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UsageError(
            f"{name}: not a readable image ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
        ) from None
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"bad --device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device available")
    return device


def _load_vae(path: str, device: torch.device) -> DiscreteVAE:
    model = load_model(path, kind="vae")
    return model.to(device).eval()


def cmd_reconstruct(args: argparse.Namespace) -> int:
    device = _device(args.device)
    model = _load_vae(args.checkpoint, device)
    size = args.size or model.config.image_size
    if size % model.config.downsample:
        raise UsageError(f"--size {size} is not a multiple of the model's downsampling {model.config.downsample}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: expected a .png path")
    images = torch.stack([load_image(p, size) for p in args.images]).to(device)
    with torch.inference_mode():
        recon, ids = [], []
        for chunk in images.split(args.batch_size):
            i = model.encode(chunk)
            ids.append(i)
            recon.append(model.decode(i))
        recon, ids = torch.cat(recon), torch.cat(ids)
    scores = psnr(recon, images).tolist()
    save_png(image_grid([images, recon]), out)
    result = {
        "checkpoint": str(args.checkpoint),
        "grid": str(out),
        "image_size": size,
        "codes": list(ids.shape[1:]),
        "images": [
            {"path": str(p), "psnr": round(s, 3), "distinct_codes": int(i.unique().numel())}
            for p, s, i in zip(args.images, scores, ids)
        ],
        "mean_psnr": round(sum(scores) / len(scores), 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for r in result["images"]:
            print(f"{r['psnr']:7.2f} dB  {r['path']}")
        print(
            f"mean PSNR {result['mean_psnr']:.2f} dB over {len(scores)} images, {size}x{size} -> "
            f"{ids.shape[1]}x{ids.shape[2]} codes; grid (originals above reconstructions): {out}"
        )
    return 0


def _expand_shards(patterns: Sequence[str]) -> list[Path]:
    from braceexpand import braceexpand

    paths: list[Path] = []
    for pattern in patterns:
        for p in braceexpand(pattern):
            hits = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
            if not hits:
                raise UsageError(f"{p}: no shard matches")
            for h in hits:
                if not Path(h).is_file():
                    raise UsageError(f"{h}: no such shard")
                paths.append(Path(h))
    if not paths:
        raise UsageError("no shards given")
    return paths


def _split_key(name: str) -> tuple[str, str]:
    # webdataset's convention: the key is the path up to the first dot of the file name
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext


def iter_tar_samples(path: Path) -> Iterator[tuple[str, list[tuple[tarfile.TarInfo, bytes]]]]:
    """(key, [(member, data), ...]) for each sample of a webdataset shard, in order."""
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise UsageError(f"{path}: not a readable tar shard ({e})") from None
    with tar:
        key, members = None, []
        try:
            for info in tar:
                if not info.isfile():
                    continue
                k, _ = _split_key(info.name)
                if key is not None and k != key:
                    yield key, members
                    members = []
                key = k
                members.append((info, tar.extractfile(info).read()))
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UsageError(f"{path}: damaged tar shard ({e})") from None
        if key is not None:
            yield key, members


def _write_samples(
    out_tar: tarfile.TarFile,
    pending: list[tuple[str, list, Tensor | None]],
    model: DiscreteVAE,
    device: torch.device,
    dtype: type,
    drop_images: bool,
    mtime: float,
) -> int:
    """Encode the images of ``pending`` samples in one batch; write each sample's members plus
    ``{key}.codes.npy``; returns how many were encoded. Samples without a usable image are left out
    (DALL·E cannot train on them)."""
    todo = [p for p in pending if p[2] is not None]
    if not todo:
        return 0
    batch = torch.stack([p[2] for p in todo]).to(device)
    with torch.inference_mode():
        ids = model.encode(batch).cpu().numpy().astype(dtype)  # [B, h, w]
    for (key, members, _), codes in zip(todo, ids):
        for info, data in members:
            if drop_images and _split_key(info.name)[1].lower() in IMAGE_EXTS:
                continue
            out_tar.addfile(info, io.BytesIO(data))
        buf = io.BytesIO()
        np.save(buf, codes)
        info = tarfile.TarInfo(f"{key}.{CODES_MEMBER}")
        info.size, info.mtime, info.mode = buf.tell(), int(mtime), 0o644
        buf.seek(0)
        out_tar.addfile(info, buf)
    return len(todo)


def cmd_tokenize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    shards = _expand_shards(args.shards)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: exists and is not a directory")
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise UsageError("two input shards share a file name; they would collide in --out")
    targets = [out_dir / n for n in names]
    for s, t in zip(shards, targets):
        if t.exists() and t.resolve() == s.resolve():
            raise UsageError(f"--out would overwrite the input shard {s}")
        if t.exists() and not args.overwrite:
            raise UsageError(f"{t} exists; pass --overwrite to replace it")
    device = _device(args.device)
    model = _load_vae(args.checkpoint, device)
    size = args.size or model.config.image_size
    if size % model.config.downsample:
        raise UsageError(f"--size {size} is not a multiple of the model's downsampling {model.config.downsample}")
    dtype = np.int16 if model.config.codebook_size <= np.iinfo(np.int16).max + 1 else np.int32
    out_dir.mkdir(parents=True, exist_ok=True)
    totals = {"samples": 0, "encoded": 0, "no_image": 0, "bad_image": 0}
    started = time.time()
    bar = tqdm(desc="tokenize", unit="img", disable=args.json or not sys.stderr.isatty())
    for shard, target in zip(shards, targets):
        tmp = target.with_name(target.name + ".tmp")
        try:
            with tarfile.open(tmp, "w") as out_tar:
                pending: list[tuple[str, list, Tensor | None]] = []

                for key, members in iter_tar_samples(shard):
                    totals["samples"] += 1
                    image_member = next((d for i, d in members if _split_key(i.name)[1].lower() in IMAGE_EXTS), None)
                    if image_member is None:
                        totals["no_image"] += 1
                        pending.append((key, members, None))
                    else:
                        try:
                            pending.append((key, members, load_image(image_member, size)))
                        except UsageError:
                            totals["bad_image"] += 1
                            pending.append((key, members, None))
                    if len(pending) >= args.batch_size:
                        n = _write_samples(out_tar, pending, model, device, dtype, args.drop_images, started)
                        bar.update(n)
                        totals["encoded"] += n
                        pending = []
                n = _write_samples(out_tar, pending, model, device, dtype, args.drop_images, started)
                bar.update(n)
                totals["encoded"] += n
            tmp.replace(target)
        finally:
            if tmp.exists():
                tmp.unlink()
    bar.close()
    manifest = {
        "checkpoint": str(args.checkpoint),
        "member": CODES_MEMBER,
        "dtype": np.dtype(dtype).name,
        "codebook_size": model.config.codebook_size,
        "image_size": size,
        "grid": [size // model.config.downsample] * 2,
        "preprocess": "shorter side resized (bicubic) then centre crop",
        "shards": [str(t) for t in targets],
        **totals,
        "seconds": round(time.time() - started, 2),
    }
    (out_dir / "codes.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print(
            f"encoded {totals['encoded']} of {totals['samples']} samples into {len(targets)} shards under {out_dir} "
            f"({manifest['grid'][0]}x{manifest['grid'][1]} codes as {{key}}.{CODES_MEMBER}; skipped "
            f"{totals['no_image']} without image, {totals['bad_image']} unreadable)"
        )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / "config.json").exists() and not args.overwrite:
        raise UsageError(f"{out} already holds a model export; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    enc = load_openai_state(args.encoder, args.trust_pickle)
    dec = load_openai_state(args.decoder, args.trust_pickle)
    model = convert_openai_state(enc, dec, image_size=args.image_size)
    save_export(model, out, {"source": "openai dall_e", "encoder": str(args.encoder), "decoder": str(args.decoder)})
    c = model.config
    info = {"out": str(out), "config": asdict(c), "parameters": sum(p.numel() for p in model.parameters())}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(
            f"wrote {out}: {c.codebook_size} codes, {c.downsample}x down, hidden {c.hidden}, "
            f"{c.blocks_per_group} blocks/group, {info['parameters'] / 1e6:.1f}M parameters"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dalle.vae", description="DALL·E's discrete VAE: images <-> code ids.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("reconstruct", help="encode and decode images; grid of originals above reconstructions, PSNR")
    r.add_argument("--checkpoint", required=True, help="export directory or Lightning .ckpt of a 'vae' model")
    r.add_argument("images", nargs="+", help="image files")
    r.add_argument("--out", required=True, help="grid PNG to write")
    r.add_argument("--size", type=int, default=None, help="resize/crop to this size (default: the model's image_size)")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(func=cmd_reconstruct)

    t = sub.add_parser(
        "tokenize", help="write copies of webdataset shards with each image's code ids ({key}.codes.npy)"
    )
    t.add_argument("--checkpoint", required=True, help="export directory or Lightning .ckpt of a 'vae' model")
    t.add_argument("--shards", nargs="+", required=True, help="tar shards: paths, globs or brace patterns {000..009}")
    t.add_argument("--out", required=True, help="directory for the new shards (same file names) and codes.json")
    t.add_argument("--size", type=int, default=None, help="resize/crop to this size (default: the model's image_size)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--drop-images", action="store_true", help="leave the image members out of the new shards")
    t.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    t.add_argument("--json", action="store_true", help="print the manifest as JSON")
    t.set_defaults(func=cmd_tokenize)

    c = sub.add_parser("convert", help="convert OpenAI's dVAE (dall_e Encoder + Decoder) to our export format")
    c.add_argument("--encoder", required=True, help="encoder.pkl or a state-dict file of a dall_e Encoder")
    c.add_argument("--decoder", required=True, help="decoder.pkl or a state-dict file of a dall_e Decoder")
    c.add_argument("--out", required=True, help="export directory to write")
    c.add_argument("--image-size", type=int, default=256, help="image_size recorded in the config (paper: 256)")
    c.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling OpenAI's released .pkl files (whole pickled modules: loading runs code from the file)",
    )
    c.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_convert)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, CheckpointError, ValueError) as e:
        return fail(e)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
