"""Faults survived: a training killed with SIGKILL resumes from its periodic ``last.ckpt`` to the same weights as
an uninterrupted run; damaged shards are skipped, counted and named by every reader; concurrent exports."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
STEPS = 40


def _train_cmd(root: Path, *extra: str) -> list[str]:
    """configs/gpt/tiny.yaml shrunk to seconds; its ModelCheckpoint (save_last) every 5 steps."""
    return [
        sys.executable,
        "-m",
        "multimodal.train",
        "fit",
        "--config",
        str(ROOT / "configs/gpt/tiny.yaml"),
        f"--trainer.default_root_dir={root}",
        f"--trainer.max_steps={STEPS}",
        f"--model.max_steps={STEPS}",
        "--model.warmup_steps=5",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=false",
        "--trainer.callbacks.every_n_train_steps=5",
        "--model.config.width=32",
        "--model.config.layers=2",
        "--model.config.context_length=32",
        "--data.context_length=32",
        "--data.batch_size=8",
        "--data.synthetic_docs=1200",
        *extra,
    ]


def _steps_saved(root: Path) -> int:
    names = [p.stem for p in root.rglob("epoch=*-step=*.ckpt")]
    return max((int(n.rsplit("step=", 1)[1]) for n in names), default=0)


def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_weights(tmp_path):
    from multimodal.train import main

    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(_train_cmd(full)[3:]) == 0  # in-process where no kill is needed: no interpreter start-up
    # a kill point drawn at random (fixed seed: the same test every time), between two periodic checkpoints
    kill_after = random.Random(17).randint(6, STEPS - 6)
    proc = subprocess.Popen(
        _train_cmd(killed), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while _steps_saved(killed) < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "export").exists()
    last = next(killed.rglob("last.ckpt"))
    stopped_at = torch.load(last, weights_only=True, map_location="cpu")["global_step"]
    assert 0 < stopped_at < STEPS

    assert main(_train_cmd(killed, f"--ckpt_path={last}")[3:]) == 0
    a, b = load_file(full / "export/model.safetensors"), load_file(killed / "export/model.safetensors")
    assert a.keys() == b.keys()
    # same seed, same data order (the sampler resumes mid-epoch), same optimizer and schedule state: same weights
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=f"{k} differs after resuming at {stopped_at}")
