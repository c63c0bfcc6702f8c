"""GPT-1 fine-tuning: the auxiliary LM term, training beats the untrained head, data files, checkpoints."""

import csv
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from multimodal.checkpoint import CheckpointError, load_model, save_export
from multimodal.gpt import GPTConfig
from multimodal.gpt.finetune import (
    ClassificationDataModule,
    ClassifierModule,
    GPTClassifier,
    GPTClassifierConfig,
    encode,
    encode_batch,
    task_kind,
)
from tests.fewshot_helpers import tiny_gpt

TINY = GPTConfig(vocab_size=257, context_length=64, backbone={"width": 32, "layers": 2, "heads": 4})


def _batch(model):
    tok = model.tokenizer
    ids, mask = encode_batch([encode(tok, t, 64) for t in ["12+3=15", "a much longer line of text", "hi"]], tok.eot_id)
    return ids, mask, torch.tensor([0, 1, 1])


def test_lm_weight_adds_the_language_model_loss():
    torch.manual_seed(0)
    model = GPTClassifier(GPTClassifierConfig(TINY, num_classes=2)).eval()
    ids, mask, labels = _batch(model)
    with torch.no_grad():
        pure = model.losses(ids, mask, labels, lm_weight=0.0)
        half = model.losses(ids, mask, labels, lm_weight=0.5)
        one = model.losses(ids, mask, labels, lm_weight=1.0)
        gpt_loss = float(model.gpt.loss(ids, mask))
    assert "lm_loss" not in pure and torch.equal(pure["loss"], pure["task_loss"])  # λ = 0: pure task loss
    assert float(half["loss"]) == pytest.approx(float(half["task_loss"] + 0.5 * half["lm_loss"]), rel=1e-6)
    assert float(one["loss"] - half["loss"]) == pytest.approx(0.5 * float(half["lm_loss"]), rel=1e-5)
    # L1 is the GPT's own next-token loss on the same (unpadded) tokens; untrained: about ln(257)
    assert float(half["lm_loss"]) == pytest.approx(gpt_loss, rel=1e-5)
    assert 5.0 < float(half["lm_loss"]) < 6.0


def test_gradient_reaches_the_lm_head_only_through_l1():
    torch.manual_seed(0)
    model = GPTClassifier(GPTClassifierConfig(TINY, num_classes=2)).eval()
    ids, mask, labels = _batch(model)
    unused = sorted(set(range(257)) - set(ids[mask].tolist()))  # tokens absent from the input
    grads = {}
    for lam in (0.0, 0.5):
        model.zero_grad()
        model.losses(ids, mask, labels, lm_weight=lam)["loss"].backward()
        grads[lam] = model.gpt.lm_head.weight.grad[unused].abs().sum()  # tied to the token embedding
    assert grads[0.0] == 0  # the task loss never touches the rows of tokens not in the input
    assert grads[0.5] > 0  # the LM loss's softmax reaches every row of the LM head


def _accuracy(model, rows):
    was_training = model.training
    model.eval()
    preds = model.classify([t for t, _ in rows])
    model.train(was_training)  # fine-tuning after this runs with dropout on, as it would without the measure
    names = model.config.labels
    return sum(names[p] == y for p, (_, y) in zip(preds, rows)) / len(rows)


def test_finetuning_beats_untrained_head_from_jsonl_and_csv(tmp_path):
    rows = task_kind(700, seed=1)
    train, val = tmp_path / "train.jsonl", tmp_path / "val.csv"
    train.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in rows[:600]))
    val.write_text("text,label\n" + "\n".join(f'"{t}",{y}' for t, y in rows[600:]))
    gpt_dir = save_export(tiny_gpt(context_length=64), tmp_path / "gpt")  # init from a GPT checkpoint of ours
    dm = ClassificationDataModule(train=str(train), val=str(val), batch_size=16)
    assert dm.label_names == ["arithmetic", "translation", "words"]
    module = ClassifierModule(num_classes=3, init_from=str(gpt_dir), lr=3e-3, warmup_steps=5)
    assert torch.equal(module.model.gpt.token_embedding.weight, load_model(gpt_dir, "gpt").token_embedding.weight)
    held_out = rows[600:]
    module.model.config.labels = dm.label_names
    before = _accuracy(module.model, held_out)
    trainer = L.Trainer(
        max_steps=30,
        accelerator="cpu",
        logger=CSVLogger(tmp_path),  # a logger merges module and data hparams: they must not clash
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=2,
        val_check_interval=30,
        check_val_every_n_epoch=None,
    )
    trainer.fit(module, dm)
    after = _accuracy(module.model, held_out)
    logged = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    assert any(r.get("val_lm_loss") for r in logged) and any(r.get("val_task_loss") for r in logged)
    assert after > 0.9 and after > before + 0.3, (before, after)
    # the Lightning checkpoint and the export both rebuild the classifier (labels included)
    ckpt = next(tmp_path.rglob("*.ckpt"))
    again = load_model(ckpt, "gpt_classifier")
    assert again.config.labels == dm.label_names and _accuracy(again, held_out) == after
    out = save_export(module.model, tmp_path / "clf")
    assert load_model(out, "gpt_classifier").classify(["12 + 3 => 15"]) == module.model.classify(["12 + 3 => 15"])
    with pytest.raises(CheckpointError):
        load_model(out, "gpt")


def test_data_errors_are_clear(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("sentence,label\nhello,1\n")
    with pytest.raises(ValueError, match="header needs columns 'text'"):
        ClassificationDataModule(train=str(bad))
    good = tmp_path / "y.jsonl"
    good.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 10}\n{"text": "c", "label": 2}\n')
    assert ClassificationDataModule(train=str(good)).label_names == ["1", "2", "10"]  # integers sort numerically
    with pytest.raises(ValueError, match="lm_weight"):
        ClassifierModule(config=TINY, lm_weight=-1)


def test_read_examples_keeps_unicode_line_separators_inside_records(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"text": "first\u2028line", "label": "a"}, {"text": "second\u0085one", "label": "b"}]
    path.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n", encoding="utf-8")
    from multimodal.gpt.finetune import read_examples

    assert read_examples(path) == [("first\u2028line", "a"), ("second\u0085one", "b")]


def test_compare_validates_on_the_queries_fewshot_asks():
    """The few-shot vs fine-tuning comparison: val rows are the held-out `compare` queries of the harness."""
    from multimodal.gpt.fewshot import load_tasks

    dm = ClassificationDataModule(synthetic="compare", synthetic_examples=300, val_examples=50, batch_size=8)
    queries, _ = load_tasks("compare", 50)["compare"]
    assert dm.val_rows == [(q["prompt"], q["completion"]) for q in queries]
    assert not set(dm.val_rows) & set(dm.train_rows) and dm.label_names == ["less", "more"]
