"""CLIPModule: a few steps on a tiny shapes world log zero-shot accuracy on val and heldout, clamp the
logit scale, export a model the CLIs load; the text tower can start from a suite GPT."""

from __future__ import annotations

import math

import lightning as L
import torch

from clip.module import CLIPModule, init_text_from_gpt, shapes_label_of, shapes_labels
from multimodal.callbacks import ExportModel
from multimodal.checkpoint import load_model, save_export
from tests.clip_helpers import tiny_model

TINY = dict(
    embed_dim=32,
    vision=dict(image_size=32, patch_size=8, backbone=dict(width=32, layers=1, heads=2)),
    text=dict(context_length=32, backbone=dict(width=32, layers=1, heads=2)),
)


def test_train_validate_export(tmp_path):
    from data.datamodule import ShapesDataModule

    dm = ShapesDataModule(
        root=str(tmp_path / "shapes"),
        train_count=64,
        val_count=32,
        heldout_count=32,
        heldout_in_val=True,
        image_size=32,
        batch_size=16,
        num_workers=0,
        context_length=32,
        shard_size=64,
    )
    module = CLIPModule(**TINY, lr=1e-3, warmup_steps=1)
    with torch.no_grad():
        module.model.logit_scale.fill_(math.log(1000.0))  # must come back under ln(100) after a step
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[ExportModel(str(tmp_path / "export"))],
    )
    trainer.fit(module, dm)
    metrics = trainer.callback_metrics
    for name in ("val/zeroshot_top1", "val/zeroshot_top5", "heldout/zeroshot_top1", "val/loss", "heldout/loss"):
        assert name in metrics, sorted(metrics)
        assert 0 <= float(metrics[name]) <= (1 if "zeroshot" in name else 100)
    assert module.model.logit_scale.item() <= math.log(100.0) + 1e-6
    model = load_model(tmp_path / "export", "clip")
    assert model.config == module.model.config
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    assert torch.equal(load_model(ckpt, "clip").logit_scale, model.logit_scale)  # weights_only load works


def test_shapes_labels():
    labels = shapes_labels("all")
    assert len(labels) == 48 and len(set(labels)) == 48 and "red circle" in labels
    assert len(shapes_labels("heldout")) == 8 and not set(shapes_labels("heldout")) & set(shapes_labels("seen"))
    assert shapes_label_of({"objects": [{"color": "red", "shape": "star"}]}) == "red star"
    assert shapes_label_of({"objects": [{"color": "red", "shape": "star"}] * 2}) is None


def test_text_tower_from_gpt(tmp_path):
    from multimodal.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(
        GPTConfig(
            vocab_size=49408, context_length=64, tokenizer="clip", backbone={"width": 32, "layers": 2, "heads": 2}
        )
    )
    save_export(gpt, tmp_path / "gpt")
    model = tiny_model()
    copied = init_text_from_gpt(model, str(tmp_path / "gpt"))
    assert copied == ["transformer", "ln_final", "token_embedding", "positional_embedding"]
    assert torch.equal(model.text.transformer.blocks[1].mlp.fc.weight, gpt.transformer.blocks[1].mlp.fc.weight)
    assert torch.equal(model.text.positional_embedding, gpt.position_embedding.weight[:32])
    module = CLIPModule(
        **{**TINY, "text": dict(context_length=32, backbone=dict(width=32, layers=2, heads=2))},
        init_text_from=str(tmp_path / "gpt"),
    )
    assert torch.equal(module.model.text.token_embedding.weight, gpt.token_embedding.weight)
