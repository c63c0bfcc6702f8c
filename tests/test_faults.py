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

import pytest
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
        "--model.warmup_steps=5",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=false",
        "--trainer.callbacks.every_n_train_steps=5",
        "--model.config.backbone.width=32",
        "--model.config.backbone.layers=2",
        "--model.config.context_length=32",
        "--data.context_length=32",
        "--data.batch_size=8",
        "--data.synthetic_docs=1200",
        *extra,
    ]


def _steps_saved(root: Path) -> int:
    names = [p.stem for p in root.rglob("epoch=*-step=*.ckpt")]
    return max((int(n.rsplit("step=", 1)[1]) for n in names), default=0)


def _record_steps(monkeypatch) -> list[tuple[int, float]]:
    """Every training step the in-process run takes: (global step, a fingerprint of its batch)."""
    from multimodal.gpt.lm import GPTModule

    seen: list[tuple[int, float]] = []
    step = GPTModule.training_step

    def recording(self, batch, batch_idx):
        seen.append((self.global_step, float((batch.double() * torch.arange(1, batch.shape[1] + 1)).sum())))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(GPTModule, "training_step", recording)
    return seen


# resuming into the killed run's folder mid-epoch is the point: Lightning's two notices about it are expected
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_weights(tmp_path, monkeypatch):
    from multimodal.train import main

    full, killed = tmp_path / "full", tmp_path / "killed"
    seen = _record_steps(monkeypatch)
    assert main(_train_cmd(full)[3:]) == 0  # in-process where no kill is needed: no interpreter start-up
    uninterrupted = list(seen)
    assert [s for s, _ in uninterrupted] == list(range(STEPS))
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

    seen.clear()
    assert main(_train_cmd(killed, f"--ckpt_path={last}")[3:]) == 0
    # the resumed run starts at the checkpoint's step, takes only the steps left, and sees the batches the
    # uninterrupted run saw at those steps (the sampler resumes mid-epoch)
    assert [s for s, _ in seen] == list(range(stopped_at, STEPS)), f"resumed at {seen[0][0]}, not {stopped_at}"
    assert seen == uninterrupted[stopped_at:]
    a, b = load_file(full / "export/model.safetensors"), load_file(killed / "export/model.safetensors")
    assert a.keys() == b.keys()
    # same seed, same data order (the sampler resumes mid-epoch), same optimizer and schedule state: same weights
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=f"{k} differs after resuming at {stopped_at}")


# -- damaged shards: skipped, counted and named by every reader ------------------------------------------------


def _three_shards(directory: Path, size: int = 32) -> list[Path]:
    """Three shards of 8 samples; the second cut at 40 % of its bytes, the third not a tar at all."""
    from data.shapes import shard_paths, write_shards

    write_shards(directory, "val", 24, size=size, shard_size=8, progress=False)
    paths = shard_paths(directory, "val")
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) * 4 // 10])
    paths[2].write_bytes(b"this is not a tar file " * 40)
    return paths


def test_training_datamodule_names_and_counts_damaged_shards(tmp_path):
    import warnings

    from data.datamodule import ImageTextDataModule

    paths = _three_shards(tmp_path)
    dm = ImageTextDataModule(val=str(tmp_path / "val-*.tar"), batch_size=4, num_workers=0, tokenizer="none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = [k for batch in dm.loader("val") for k in batch["key"]]
    messages = [str(w.message) for w in caught]
    assert 8 <= len(keys) < 16  # the whole first shard, the part of the second before the cut
    assert dm.damaged_shards == 2
    for damaged in paths[1:]:
        assert any(f"damaged shard {damaged}" in m for m in messages), messages


def test_clip_evaluate_retrieval_names_damaged_shards_and_scores_the_rest(tmp_path, capsys):
    import json

    from clip_helpers import tiny_export

    from clip.evaluate import main

    paths = _three_shards(tmp_path / "s")
    export = tiny_export(tmp_path / "m")
    code = main(["--checkpoint", str(export), "--retrieval", str(tmp_path / "s" / "val-*.tar"), "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 1, err  # some input was lost: not a clean exit
    result = json.loads(out)
    assert 8 <= result["retrieval"]["samples"] < 16 and result["errors"] >= 2  # + the sample cut in half
    lines = err.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines) and "Traceback" not in err
    assert any(str(paths[1]) in line for line in lines) and any(str(paths[2]) in line for line in lines)


def test_vae_tokenize_names_damaged_shards_and_encodes_the_others(tmp_path, capsys):
    import json

    from vae_helpers import blocks_images, read_tar, shard_members, tiny_vae, write_shard

    from dalle.vae.cli import main
    from multimodal.checkpoint import save_export

    ckpt = save_export(tiny_vae(), tmp_path / "vae")
    good = write_shard(tmp_path / "in" / "a.tar", shard_members(blocks_images(4), "a"))
    cut = write_shard(tmp_path / "in" / "b.tar", shard_members(blocks_images(6, seed=1), "b"))
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "codes"
    code = main(["tokenize", "--checkpoint", str(ckpt), "--shards", str(good), str(cut), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    manifest = json.loads(captured.out)
    assert code == 1
    assert captured.err.startswith(f"error: {cut}: ") and captured.err.count("\n") == 1
    assert manifest["damaged_shards"] == [str(cut)]
    assert sum(k.endswith(".codes.npy") for k in read_tar(out / "a.tar")) == 4
    assert 0 < sum(k.endswith(".codes.npy") for k in read_tar(out / "b.tar")) < 6  # what came before the cut


# -- concurrent writers --------------------------------------------------------------------------------------


def _export_many(args: tuple[str, int]) -> int:
    from multimodal.checkpoint import save_export
    from multimodal.gpt import GPT, GPTConfig

    directory, seed = args
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=257, context_length=16, backbone={"width": 16, "layers": 1, "heads": 2}))
    for _ in range(25):
        save_export(model, directory, {"writer": seed})
    return seed


def test_concurrent_exports_to_one_directory_all_succeed_and_leave_a_whole_export(tmp_path):
    import multiprocessing as mp

    from multimodal.checkpoint import load_model

    target = tmp_path / "export"
    with mp.get_context("fork").Pool(2) as pool:
        assert sorted(pool.map(_export_many, [(str(target), 1), (str(target), 2)])) == [1, 2]
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    load_model(target, "gpt")  # whole files (config and weights may come from different writers: same shapes)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "model.safetensors"):
        assert (target / name).stat().st_mode & 0o777 == 0o666 & ~umask
