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

The training module is ``dalle.vae.module``, OpenAI's converter ``dalle.vae.openai``, the CLI
``python -m dalle.vae reconstruct | tokenize | convert`` (``dalle.vae.cli``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multimodal.checkpoint import register

LOSSES = ("logit_laplace", "l1", "mse")
QUANTIZERS = ("gumbel", "vq")
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
    # gumbel: DALL·E's relaxed posterior over K codes | vq: nearest of K learned code vectors (VQ-VAE),
    # straight-through, looked up by cosine similarity in the decoder's embedding space (ViT-VQGAN)
    quantizer: str = "gumbel"

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
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
        return torch.add(self.id_path(x), h, alpha=self.post_gain)  # one pass, not a multiply then an add


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
    """``[B, C, H, W]`` pixels mapped to [eps, 1-eps] -> ``[B, K, H/f, W/f]`` logits (vq: ``[B, D, ...]``),
    in channels-last memory (``reshape``, not ``view``)."""

    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = [c.hidden * m for m in c.mults]
        self.input = _conv(c.channels, widths[0], c.input_kernel)
        self.groups = _groups(widths, widths[0], c.blocks_per_group, (3, 3, 3, 1))
        # gumbel: logits over the K codes; vq: a vector in the decoder's embedding space (init_channels)
        self.output = _conv(widths[-1], c.codebook_size if c.quantizer == "gumbel" else c.init_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        # channels-last is oneDNN's own layout for convolutions and pooling: in NCHW each conv reorders its
        # input and output, and max-pooling strides across planes (1.7x faster at 64 px on one CPU thread).
        # The logits stay channels-last (same shape and values; copying 8192 channels back costs ~10%).
        x = self.input(x.contiguous(memory_format=torch.channels_last))
        for g, group in enumerate(self.groups):
            x = group(x)
            if g < len(self.groups) - 1:
                x = F.max_pool2d(x, 2)
        return self.output(F.relu(x))


class Decoder(nn.Module):
    """``[B, K, h, w]`` (relaxed) one-hot codes -> ``[B, out_channels, h*f, w*f]`` pixel statistics.

    ``input`` is a 1x1 conv over the one-hot codes, i.e. a codebook of K embeddings of width
    ``init_channels`` plus a bias; ``embed_ids`` reads it as an embedding table so decoding ids never
    materialises a K-channel one-hot tensor. With ``quantizer="vq"`` the same table, l2-normalised per
    code, is the codebook the encoder's vectors are matched against.
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
        self.normalized_codes = c.quantizer == "vq"

    def codebook(self) -> Tensor:
        """The code embeddings ``[K, init_channels]`` (unit vectors for vq)."""
        table = self.input.weight[:, :, 0, 0].t()
        return F.normalize(table, dim=1) if self.normalized_codes else table

    def embed_vectors(self, z: Tensor) -> Tensor:
        """Code vectors ``[B, init_channels, h, w]`` -> the first group's input (adds the bias)."""
        return z + self.input.bias[None, :, None, None]

    def embed_ids(self, ids: Tensor) -> Tensor:
        # ids [B, h, w] -> [B, init_channels, h, w]; equal to input(one_hot(ids)) for gumbel
        return self.embed_vectors(F.embedding(ids, self.codebook()).permute(0, 3, 1, 2))

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
        """images ``[B, C, H, W]`` in [0, 1] -> logits ``[B, K, H/f, W/f]`` (vq: cosine similarities)."""
        if self.config.quantizer == "vq":
            return self._vq_lookup(images)[2]
        self._check_images(images)
        return self.encoder(self.map_pixels(images))

    def _vq_lookup(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """vq: the encoder's unit vectors ``z_e [B, D, h, w]``, the codebook ``[K, D]`` and their cosine
        similarities ``[B, K, h, w]`` (argmax = the nearest code)."""
        self._check_images(images)
        z_e = F.normalize(self.encoder(self.map_pixels(images)).float(), dim=1)
        codebook = self.decoder.codebook().float()
        return z_e, codebook, torch.einsum("bdhw,kd->bkhw", z_e, codebook)

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
        commitment_weight: float = 0.25,
    ) -> dict[str, Tensor]:
        """One training/evaluation pass. ``hard=True`` decodes the argmax codes (what DALL·E will see).

        Returns loss = recon + kl_weight * KL (+ diversity_weight * (log K - H(mean q))), where
        KL(q || uniform) is summed over the grid and divided by the number of sub-pixels, so both terms are
        per-dimension like the ELBO in nats/dim. ``noise_scale`` multiplies the Gumbel noise (1 = the
        paper's Gumbel-softmax; < 1 during a noise warm-up, see ``VAEModule``).
        With ``quantizer="vq"`` see ``forward_vq`` (the Gumbel arguments do not apply).
        """
        if self.config.quantizer == "vq":
            return self.forward_vq(images, commitment_weight)
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

    def forward_vq(self, images: Tensor, commitment_weight: float = 0.25) -> dict[str, Tensor]:
        """VQ-VAE pass: nearest code (cosine), straight-through gradients to the encoder.

        loss = recon + (||sg(z_e) - e||² + commitment_weight * ||z_e - sg(e)||²), summed over the grid and
        divided by the number of sub-pixels like the Gumbel path's KL. Returns ``z_e`` (the encoder's unit
        vectors) for dead-code restarts.
        """
        z_e, codebook, logits = self._vq_lookup(images)  # [B, D, h, w], [K, D], [B, K, h, w]
        z_q = F.embedding(logits.argmax(1), codebook).permute(0, 3, 1, 2)  # [B, D, h, w]
        codebook_loss = (z_q - z_e.detach()).pow(2).sum(1)
        commitment = (z_e - z_q.detach()).pow(2).sum(1)
        vq = (codebook_loss + commitment_weight * commitment).sum((1, 2)).mean() / images[0].numel()
        z = z_e + (z_q - z_e).detach()  # straight-through
        stats = self.decoder.body(self.decoder.embed_vectors(z.to(self.decoder.input.weight.dtype)))
        recon = self.recon_loss(stats, images)
        return {
            "loss": recon + vq,
            "recon_loss": recon,
            "kl": vq.detach(),  # the quantisation term, logged where the Gumbel path logs its KL
            "diversity": torch.zeros((), device=images.device),
            "logits": logits,
            "z_e": z_e,
            "reconstruction": self.stats_to_images(stats),
        }

    @torch.no_grad()
    def restart_codes(self, dead: Tensor, vectors: Tensor) -> None:
        """vq: move the ``dead`` codes ``[n]`` onto ``vectors`` ``[n, D]`` (encoder outputs), VQ-VAE-2 style."""
        self.decoder.input.weight[:, dead, 0, 0] = vectors.t().to(self.decoder.input.weight.dtype)


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


def load_image_tokenizer(path: str) -> DiscreteVAE:
    """The image tokenizer at ``path``: a dVAE (export, ``.ckpt``, packaged name) or a DALL·E's own (``"dalle"``,
    a DALL·E export), so every tool that takes a tokenizer takes a DALL·E too; a one-line ``CheckpointError`` for
    anything else."""
    from multimodal.checkpoint import CheckpointError, load_model

    model = load_model(path, ("vae", "dalle"))
    if isinstance(model, DiscreteVAE):
        return model
    if getattr(model, "vae", None) is None:
        raise CheckpointError(f"{path}: this DALL·E carries no image tokenizer (dVAE)")
    return model.vae
