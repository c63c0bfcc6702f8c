import json

import pytest
import torch

from multimodal.checkpoint import CheckpointError, load_model, save_export


def test_export_roundtrip(tiny_gpt, tmp_path):
    out = save_export(tiny_gpt, tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["kind"] == "gpt" and meta["config"]["backbone"]["width"] == 32
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


def flatten_backbone(config: dict) -> dict:
    """A head config as exports wrote it before the backbone was nested."""
    out = {k: v for k, v in config.items() if k != "backbone"}
    return {**out, **config.get("backbone", {})}


def test_exports_written_before_the_nesting_still_load(tiny_gpt, tmp_path):
    from clip.model import CLIP
    from tests.clip_helpers import tiny_model as tiny_clip
    from tests.dalle_helpers import tiny_dalle

    gpt = tiny_gpt
    clip = tiny_clip(quick_gelu=True)
    dalle = tiny_dalle()
    for name, model in (("gpt", gpt), ("clip", clip), ("dalle", dalle)):
        out = save_export(model, tmp_path / name)
        meta = json.loads((out / "config.json").read_text())
        config = meta["config"]
        if name == "clip":  # towers flat, activation / eps once for both
            shared = {"quick_gelu": True, "norm_eps": config["vision"]["backbone"]["norm_eps"]}
            for tower in ("vision", "text"):
                blocks = config[tower].pop("backbone")
                config[tower].update({k: blocks[k] for k in ("width", "layers", "heads", "mlp_ratio")})
            config.update(shared)
        else:
            config = flatten_backbone(config)
        assert "backbone" not in config
        (out / "config.json").write_text(json.dumps({**meta, "config": config}))
        loaded = load_model(out, name)
        assert loaded.config == model.config  # the one conversion rebuilt today's nested config
        for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(a, b), k
    assert isinstance(loaded, type(dalle)) and CLIP.config_class.upgrade({"embed_dim": 8}) == {"embed_dim": 8}
