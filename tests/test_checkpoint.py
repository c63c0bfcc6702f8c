import json

import pytest
import torch

from multimodal.checkpoint import CheckpointError, load_model, save_export


def test_export_roundtrip(tiny_gpt, tmp_path):
    out = save_export(tiny_gpt, tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "gpt" and meta["config"]["width"] == 32
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(load_model(out, "gpt")(ids), tiny_gpt(ids))


def test_missing_truncated_and_wrong_kind(tiny_gpt, tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nope")
    out = save_export(tiny_gpt, tmp_path / "m")
    with pytest.raises(CheckpointError, match="expected 'clip'"):
        load_model(out, "clip")
    w = out / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError) as e:
        load_model(out)
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)
    assert not marker.exists()


def test_truncated_lightning_ckpt(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"a": torch.ones(100)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_model(path)


def test_foreign_lightning_ckpt(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"a": torch.ones(2)}}, path)
    with pytest.raises(CheckpointError, match="not written by this suite"):
        load_model(path)
