"""The Lightning CLI on configs/gpt/tiny.yaml: training lowers validation loss; DDP on 2 CPU processes."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _train(tmp_path, *extra, steps=60):
    cmd = [
        sys.executable,
        "-m",
        "multimodal.train",
        "fit",
        "--config",
        str(ROOT / "configs/gpt/tiny.yaml"),
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps // 2}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=CSVLogger",
        f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
        "--trainer.callbacks+=multimodal.callbacks.ExportModel",
        f"--trainer.callbacks.directory={tmp_path / 'export'}",
        "--data.synthetic_docs=4000",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)


def _val_losses(tmp_path):
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    return [float(r["val_loss"]) for r in rows if r.get("val_loss")]


def test_tiny_config_lowers_val_loss_and_exports(tmp_path):
    r = _train(tmp_path, steps=60)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = _val_losses(tmp_path)
    # an untrained model sits at ln(257) = 5.55 nats per byte; training must fall far below and keep falling
    assert len(losses) >= 2 and losses[-1] < losses[0] and losses[-1] < 0.5 * 5.55
    # a Lightning checkpoint loads with weights_only=True and training resumes from it
    # the README's resume line: the config's ModelCheckpoint writes last.ckpt periodically, in Lightning's layout
    ckpt = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    assert ckpt.is_file(), sorted(str(p) for p in tmp_path.rglob("*.ckpt"))
    assert "hyper_parameters" not in torch.load(ckpt, weights_only=True)
    saved_at = torch.load(ckpt, weights_only=True)["global_step"]
    assert saved_at == 50  # every_n_train_steps: 50
    r = _train(tmp_path, f"--ckpt_path={ckpt}", "--trainer.log_every_n_steps=1", steps=70)
    assert r.returncode == 0, r.stderr[-3000:]
    # the resumed run (the logger's version_1) starts at the checkpoint's step and takes only the steps left
    rows = list(csv.DictReader((tmp_path / "lightning_logs/version_1/metrics.csv").open()))
    trained = sorted({int(r["step"]) for r in rows if r.get("train_loss")})
    assert trained == list(range(saved_at, 70)), trained
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "multimodal.generate",
            "12+3=",
            "--checkpoint",
            str(tmp_path / "export"),
            "--max-tokens",
            "5",
            "--temperature",
            "0",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout.splitlines()[0])
    assert record["prompt"] == "12+3=" and record["finish_reason"] in ("eot", "length")


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    r = _train(tmp_path, "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", steps=20)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "export" / "model.safetensors").is_file()
    # two processes, each a rank of one world, and they trained: the loss is well under an untrained model's
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in r.stderr and "GLOBAL_RANK: 1, MEMBER: 2/2" in r.stderr, r.stderr[-2000:]
    losses = _val_losses(tmp_path)
    assert len(losses) == 2 and losses[-1] < losses[0] < 0.6 * 5.55  # ln(257) = 5.55: untrained (2.9, 2.7 measured)


def test_a_run_prints_its_steps_and_no_notices(tmp_path):
    """What a user sees: no LightningCLI "args parameter" warning, no tensorboardX notice, no litlogger tip, no
    LeafSpec deprecation; the progress bar counts steps of max_steps (not ``Epoch 2/-2``) with no ``v_num``;
    the CSV log lands under default_root_dir as before."""
    cmd = [
        sys.executable,
        "-m",
        "multimodal.train",
        "fit",
        "--config",
        str(ROOT / "configs/gpt/tiny.yaml"),
        "--trainer.max_steps=12",
        "--trainer.val_check_interval=6",
        "--trainer.log_every_n_steps=4",
        f"--trainer.default_root_dir={tmp_path}",
        "--model.init_args.config.backbone.width=32",
        "--data.synthetic_docs=2000",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-3000:]
    for noise in ("args parameter", "tensorboardX", "litlogger", "LeafSpec", "v_num", "Epoch ", "Warning"):
        assert noise not in text, f"{noise!r} in the output:\n{text[-3000:]}"
    assert "Steps" in text and "12/12" in text, text[-3000:]
    assert (tmp_path / "lightning_logs/version_0/metrics.csv").is_file()
