"""Training CLIP with Lightning: ``python -m multimodal.train fit --config configs/clip/shapes.yaml``.

``CLIPModule`` builds ``clip.model.CLIP`` from plain dicts (so ``.ckpt`` files load with
``weights_only=True``), trains it with the symmetric contrastive loss (features gathered across ranks),
AdamW with linear warmup then cosine decay, the logit scale clamped at ln(100) after every step, and
logs zero-shot accuracy on the validation set(s) at the end of each epoch. The text tower can start
from a GPT checkpoint of the suite (same backbone: the blocks copy one-to-one).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from clip.loss import ClipLoss, contrastive_accuracy
from clip.model import CLIP, CLIPConfig
from clip.pipeline import zero_shot_classifier
from multimodal.checkpoint import CheckpointError, load_model
from multimodal.lightning import ModelModule

MAX_LOGIT_SCALE = math.log(100.0)


def shapes_labels(split: str = "all") -> list[str]:
    """Colour × shape labels of the shapes world ("red circle"): every pair, or those of a split."""
    from data import shapes

    pairs = [(c, s) for c in shapes.COLORS for s in shapes.SHAPES]
    if split == "heldout":
        pairs = [p for p in pairs if p in shapes.HELDOUT_PAIRS]
    elif split == "seen":
        pairs = [p for p in pairs if p not in shapes.HELDOUT_PAIRS]
    return [f"{c} {s}" for c, s in pairs]


def shapes_label_of(meta: dict) -> str | None:
    """The colour × shape label of a one-object shapes image (``None`` for other images)."""
    objs = meta.get("objects") if isinstance(meta, dict) else None
    if not objs or len(objs) != 1:
        return None
    return f"{objs[0]['color']} {objs[0]['shape']}"


class CLIPModule(ModelModule):
    def __init__(
        self,
        embed_dim: int = 512,
        vision: dict | None = None,
        text: dict | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.0,
        local_loss: bool = False,
        zeroshot_labels: str | list[str] | None = "shapes",
        zeroshot_templates: list[str] | None = None,
        val_names: list[str] | None = None,
        init_text_from: str | None = None,
        init_from: str | None = None,
        hard_negatives: bool | list[str] = False,
    ) -> None:
        """``vision`` / ``text``: fields of ``clip.model.VisionConfig`` / ``TextConfig``.

        ``zeroshot_labels``: "shapes" (the 48 colour × shape pairs; ground truth from the one-object
        images' json) or an explicit list whose ground truth is each sample's caption; None disables it.
        ``val_names``: a name per validation dataloader for the logged metrics (default val, heldout, ...).
        ``init_from``: a CLIP checkpoint (export, ``.ckpt``, packaged name) to fine-tune; its own shape then replaces
        ``embed_dim`` / ``vision`` / ``text``.
        ``hard_negatives``: each two-object caption also brings its attribute swaps (``data.shapes.swapped_captions``:
        colours, shapes, relation or positions exchanged) as extra negatives for its image, so the text tower must
        bind each attribute to its object instead of reading a bag of words. A list keeps only those kinds of
        ``data.shapes.SWAPS`` (e.g. ``[relation, position]``: only where the objects are).
        """
        super().__init__()
        self.swap_kinds = _swap_kinds(hard_negatives)
        self.save_hyperparameters()
        if init_from is None:
            self.model = CLIP(CLIPConfig(embed_dim=embed_dim, vision=dict(vision or {}), text=dict(text or {})))
        else:
            self.model = load_model(init_from, "clip").train()
        if init_text_from:
            init_text_from_gpt(self.model, init_text_from)
        self.loss = ClipLoss(local_loss=local_loss)
        if zeroshot_labels == "shapes":
            self.zs_labels = shapes_labels("all")
        else:
            self.zs_labels = list(zeroshot_labels) if zeroshot_labels else []
        self.zs_templates = list(zeroshot_templates or ["{article} {}"])
        self.val_names = list(val_names or ["val", "heldout"])
        self._zs_classes: Tensor | None = None
        self._zs_counts: dict[int, Tensor] = {}

    # -- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        image, text, scale = self.model(batch["image"], batch["text"])
        negatives = self._hard_negatives(batch["caption"]) if self.swap_kinds else None
        loss = self.loss(image, text, scale, negatives)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", scale.detach())
        self.log("train/batch_acc", contrastive_accuracy(image.detach(), text.detach()), prog_bar=True)
        return loss

    def _hard_negatives(self, captions: list[str]) -> Tensor | None:
        """Text features ``[M, E]`` of every attribute swap of the batch's captions (None when there are none)."""
        from data.shapes import swapped_captions

        texts = [t for c in captions for kind, t in swapped_captions(c).items() if kind in self.swap_kinds]
        if not texts:
            return None
        return self.model.encode_text(self.model.tokenize(texts).to(self.device))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # CLIP clamps the temperature so logits stay ≤ 100
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def configure_optimizers(self):
        hp = self.hparams
        # embeddings and the temperature are not decayed either (as open_clip)
        return self.adamw_with_schedule(
            hp.lr,
            hp.weight_decay,
            tuple(hp.betas),
            hp.warmup_steps,
            hp.min_lr_ratio,
            eps=hp.eps,
            no_decay=lambda name, p: "embedding" in name or "logit_scale" in name,
        )

    # -- validation: contrastive loss and zero-shot accuracy ------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._zs_counts = {}
        self._zs_classes = (
            zero_shot_classifier(self.model, self.zs_labels, self.zs_templates) if self.zs_labels else None
        )

    def _name(self, dataloader_idx: int) -> str:
        return self.val_names[dataloader_idx] if dataloader_idx < len(self.val_names) else f"val{dataloader_idx}"

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self._name(dataloader_idx)
        image, text, scale = self.model(batch["image"], batch["text"])
        n = image.shape[0]
        self.log(f"{name}/loss", self.loss(image, text, scale), batch_size=n, add_dataloader_idx=False, sync_dist=True)
        if self._zs_classes is None:
            return
        truth = self._truth(batch)
        keep = [i for i, t in enumerate(truth) if t is not None]
        counts = self._zs_counts.setdefault(dataloader_idx, torch.zeros(3, device=self.device))
        if not keep:
            return
        target = torch.tensor([truth[i] for i in keep], device=self.device)
        logits = image[keep] @ self._zs_classes.t()  # [b, K]
        top5 = logits.topk(min(5, logits.shape[1]), dim=-1).indices
        counts[0] += (top5[:, 0] == target).sum()
        counts[1] += (top5 == target[:, None]).any(-1).sum()
        counts[2] += len(keep)

    def _truth(self, batch: dict) -> list[int | None]:
        index = {label: i for i, label in enumerate(self.zs_labels)}
        if self.hparams.zeroshot_labels == "shapes":
            return [index.get(shapes_label_of(m)) for m in batch.get("meta", [{}] * len(batch["caption"]))]
        return [index.get(c.strip()) for c in batch["caption"]]

    def on_validation_epoch_end(self) -> None:
        for idx, counts in sorted(self._zs_counts.items()):
            counts = self.trainer.strategy.reduce(counts, reduce_op="sum") if self.trainer.world_size > 1 else counts
            if counts[2] > 0:
                name = self._name(idx)
                self.log(f"{name}/zeroshot_top1", counts[0] / counts[2], prog_bar=True, add_dataloader_idx=False)
                self.log(f"{name}/zeroshot_top5", counts[1] / counts[2], add_dataloader_idx=False)
        self._zs_classes = None

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def on_test_epoch_end(self) -> None:
        self.on_validation_epoch_end()


@torch.no_grad()
def init_text_from_gpt(model: CLIP, path: str) -> list[str]:
    """Copy a suite GPT's blocks (and, when the tokenizer and sizes agree, its token/position embeddings and
    final norm) into ``model``'s text tower. Returns the names of the parts copied."""
    gpt = load_model(path, "gpt")
    g, t = gpt.config, model.config.text
    shape = lambda b: (b.width, b.layers, b.heads, b.mlp_ratio)  # noqa: E731
    if shape(g.backbone) != shape(t.backbone):
        raise CheckpointError(
            f"{path}: GPT width/layers/heads/mlp_ratio {shape(g.backbone)} differ from the "
            f"text tower's {shape(t.backbone)}"
        )
    if not g.backbone.bias:
        raise CheckpointError(f"{path}: a GPT without biases cannot initialise CLIP's text tower")
    model.text.transformer.load_state_dict(gpt.transformer.state_dict())
    copied = ["transformer"]
    model.text.ln_final.load_state_dict(gpt.ln_final.state_dict())
    copied.append("ln_final")
    if g.tokenizer == t.tokenizer and g.vocab_size == t.vocab_size:
        model.text.token_embedding.weight.copy_(gpt.token_embedding.weight)
        copied.append("token_embedding")
    if g.context_length >= t.context_length:
        model.text.positional_embedding.copy_(gpt.position_embedding.weight[: t.context_length])
        copied.append("positional_embedding")
    return copied


def _swap_kinds(hard_negatives: bool | list[str]) -> tuple[str, ...]:
    """The swap kinds ``hard_negatives`` asks for: all of ``data.shapes.SWAPS`` for True, none for False."""
    from data.shapes import SWAPS

    if isinstance(hard_negatives, bool):
        return SWAPS if hard_negatives else ()
    unknown = sorted(set(hard_negatives) - set(SWAPS))
    if unknown:
        raise ValueError(f"hard_negatives: unknown swap kind(s) {unknown}; known: {', '.join(SWAPS)}")
    return tuple(k for k in SWAPS if k in hard_negatives)
