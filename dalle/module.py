"""Training DALL·E: ``DALLEModule`` (LightningModule) and ``CodesDataModule`` (pre-tokenized shards).

Images are turned into codes by a frozen dVAE (``vae: runs/vae-shapes``, an export of ``dalle.vae``)
on the fly; the codes of each sample key are kept in memory (``cache_codes``), so from the second
epoch on the dVAE no longer runs. Batches that already carry ``codes`` (``CodesDataModule`` reading the
``{key}.codes.npy`` members ``python -m dalle.vae tokenize`` writes) skip the dVAE altogether.

    python -m multimodal.train fit --config configs/dalle/shapes.yaml
"""

from __future__ import annotations

import io
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from dalle.model import DALLE, DALLEConfig
from dalle.pipeline import generate_images
from multimodal.checkpoint import CheckpointError, load_model
from multimodal.lightning import ModelModule
from multimodal.sampling import SamplingSettings


class DALLEModule(ModelModule):
    """Train (or fine-tune) a ``DALLE``.

    Args:
        config: the model's shape (``vae`` is filled from the dVAE export).
        vae: export directory (or .ckpt) of the frozen dVAE; required unless ``init_from`` carries one. With
            ``init_from`` it replaces that model's dVAE (same code grid and codebook size), e.g. one whose decoder
            was fine-tuned on frozen codes (``VAEModule(decoder_only=True)``).
        init_from: a DALL·E checkpoint to continue from (``config`` is then ignored).
        text_length: with ``init_from``, the text ids per sample of the fine-tuned model (``DALLE.with_text_length``:
            longer captions than the checkpoint was trained on).
        init_from_gpt: a GPT checkpoint of the suite whose backbone (and text embeddings) start the model.
        caption_dropout: probability of training a sample on the empty caption (for guidance).
        val_captions: prompts whose samples are drawn as a grid after each validation.
        samples_per_caption: images per caption in that grid.
    """

    def __init__(
        self,
        config: DALLEConfig | None = None,
        vae: str | None = None,
        init_from: str | None = None,
        init_from_gpt: str | None = None,
        text_length: int | None = None,
        caption_dropout: float = 0.0,
        cache_codes: bool = True,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.96),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        val_captions: list[str] | None = None,
        samples_per_caption: int = 4,
        sample_temperature: float = 1.0,
        sample_top_k: int | None = None,
        log_samples: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):  # from a checkpoint's hyper-parameters
            config = DALLEConfig(**DALLEConfig.upgrade(config))
        if init_from is not None:
            self.model = load_model(init_from, "dalle")
            if text_length is not None:
                self.model = self.model.with_text_length(text_length)
            if vae is not None:
                self.model.replace_vae(load_model(vae, "vae"))
            self.model.train()
        else:
            if text_length is not None:
                raise ValueError("text_length resizes an init_from checkpoint; without one set config.text_length")
            config = config or DALLEConfig()
            vae_model = None
            if vae is not None:
                vae_model = load_model(vae, "vae")
                config.vae = asdict(vae_model.config)
                config.image_vocab_size = vae_model.config.codebook_size
                config.image_grid = vae_model.config.grid_size
            self.model = DALLE(config)
            if vae_model is not None:
                self.model.vae.load_state_dict(vae_model.state_dict())
            if init_from_gpt is not None:
                self.model.load_gpt(load_model(init_from_gpt, "gpt"))
        if not 0 <= caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {caption_dropout}")
        self.save_hyperparameters(
            {
                "config": asdict(self.model.config),
                "vae": vae,
                "init_from": init_from,
                "init_from_gpt": init_from_gpt,
                "text_length": text_length,
                "caption_dropout": caption_dropout,
                "cache_codes": cache_codes,
                "lr": lr,
                "weight_decay": weight_decay,
                "betas": list(betas),
                "warmup_steps": warmup_steps,
                "min_lr_ratio": min_lr_ratio,
                "val_captions": list(val_captions or []),
                "samples_per_caption": samples_per_caption,
                "sample_temperature": sample_temperature,
                "sample_top_k": sample_top_k,
                "log_samples": log_samples,
            }
        )
        self._codes: dict[str, Tensor] = {}  # sample key -> codes [h, w] (int16, CPU)
        self._rng = random.Random(0)

    # -- batches --------------------------------------------------------------------------------
    def codes(self, batch: dict[str, Any]) -> Tensor:
        """The image codes ``[B, h, w]`` of a batch: given, cached, or encoded by the frozen dVAE."""
        if "codes" in batch:
            return batch["codes"].long().to(self.device)
        if self.model.vae is None:
            raise CheckpointError("batches carry images but the model has no dVAE; pass `vae:`")
        keys = batch.get("key")
        cache = self.hparams.cache_codes and keys is not None
        if cache and all(k in self._codes for k in keys):
            return torch.stack([self._codes[k] for k in keys]).long().to(self.device)
        with torch.no_grad():
            ids = self.model.vae.encode(batch["image"].float())  # [B, h, w]
        if cache:
            for k, row in zip(keys, ids.to("cpu", torch.int16)):
                self._codes[k] = row
        return ids

    def text(self, batch: dict[str, Any], dropout: float = 0.0) -> Tensor:
        captions = list(batch["caption"])
        if dropout > 0:
            captions = ["" if self._rng.random() < dropout else c for c in captions]
        return self.model.tokenize(captions, warn=False).to(self.device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.model.loss(self.text(batch, self.hparams.caption_dropout), self.codes(batch))
        b = len(batch["caption"])
        self.log("train_loss", out["loss"], prog_bar=True, batch_size=b)
        self.log("train/text_loss", out["text_loss"], batch_size=b)
        self.log("train/image_loss", out["image_loss"], prog_bar=True, batch_size=b)
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        out = self.model.loss(self.text(batch), self.codes(batch))
        stage = "val" if dataloader_idx == 0 else "heldout"
        b = len(batch["caption"])
        self.log(f"{stage}_loss", out["loss"], prog_bar=True, batch_size=b, sync_dist=True, add_dataloader_idx=False)
        self.log(f"{stage}/image_loss", out["image_loss"], batch_size=b, sync_dist=True, add_dataloader_idx=False)
        self.log(f"{stage}/text_loss", out["text_loss"], batch_size=b, sync_dist=True, add_dataloader_idx=False)

    # -- sample grid ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self) -> Tensor | None:
        """One row per validation caption, ``samples_per_caption`` images each (fixed seed)."""
        hp = self.hparams
        if not hp.val_captions or self.model.vae is None:
            return None
        from multimodal.images import image_grid

        settings = SamplingSettings(temperature=hp.sample_temperature, top_k=hp.sample_top_k, seed=0)
        samples = generate_images(self.model, list(hp.val_captions), hp.samples_per_caption, settings)
        return image_grid([s.images for s in samples])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.hparams.log_samples or not self.trainer.is_global_zero:
            return
        grid = self.sample_grid()
        if grid is None:
            return
        step, logger = self.global_step, self.logger
        experiment = getattr(logger, "experiment", None) if logger else None
        if logger is not None and hasattr(logger, "log_image"):  # W&B, Neptune, Comet
            logger.log_image(key="val/samples", images=[grid], step=step)
        elif experiment is not None and hasattr(experiment, "add_image"):  # TensorBoard
            experiment.add_image("val/samples", grid, step)
        else:
            from multimodal.images import save_png

            root = Path(getattr(logger, "log_dir", None) or self.trainer.default_root_dir)
            save_png(grid, root / "samples" / f"step_{step:07d}.png")

    def configure_optimizers(self):

        hp = self.hparams
        trainable = torch.nn.ModuleDict({k: m for k, m in self.model.named_children() if k != "vae"})
        return self.adamw_with_schedule(
            hp.lr, hp.weight_decay, tuple(hp.betas), hp.warmup_steps, hp.min_lr_ratio, module=trainable
        )


# -------------------------------------------------------------------------------------------------
# Pre-tokenized shards (``python -m dalle.vae tokenize`` output)
# -------------------------------------------------------------------------------------------------


def _decode_codes(sample: dict) -> dict | None:
    raw = sample.get("codes.npy")
    text = next((sample[k] for k in ("txt", "text", "caption") if k in sample), None)
    if raw is None or text is None:
        return None
    return {
        "codes": torch.from_numpy(np.load(io.BytesIO(raw)).astype(np.int64)),
        "caption": text.decode("utf-8").strip(),
        "key": sample["__key__"],
    }


def _collate(rows: list[dict]) -> dict:
    return {
        "codes": torch.stack([r["codes"] for r in rows]),
        "caption": [r["caption"] for r in rows],
        "key": [r["key"] for r in rows],
    }


class CodesDataModule(L.LightningDataModule):
    """Batches ``{"codes": [B, h, w], "caption": [...], "key": [...]}`` from shards holding
    ``{key}.codes.npy`` + ``{key}.txt`` (images not needed). Single process; brace patterns allowed."""

    def __init__(
        self,
        train: str,
        val: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        shuffle_buffer: int = 2000,
        epoch_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_urls, self.val_urls = train, val
        self.batch_size, self.num_workers = batch_size, num_workers
        self.shuffle_buffer, self.epoch_samples, self.seed = shuffle_buffer, epoch_samples, seed

    def _loader(self, urls: str, train: bool):
        import webdataset as wds

        from data.datamodule import expand_urls

        ds = wds.WebDataset(
            expand_urls(urls),
            shardshuffle=100 if train else False,
            nodesplitter=wds.split_by_node,
            empty_check=False,
            seed=self.seed,
        )
        if train:
            ds = ds.repeat()
        ds = ds.map(_decode_codes).select(lambda s: s is not None)
        if train:
            ds = ds.shuffle(self.shuffle_buffer)
        ds = ds.batched(self.batch_size, collation_fn=_collate, partial=not train)
        if train and self.epoch_samples:
            ds = ds.with_epoch(max(1, self.epoch_samples // self.batch_size))
        return wds.WebLoader(ds, batch_size=None, num_workers=self.num_workers)

    def train_dataloader(self):
        return self._loader(self.train_urls, True)

    def val_dataloader(self):
        if self.val_urls is None:
            return []
        return self._loader(self.val_urls, False)
