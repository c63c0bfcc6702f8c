import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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


# -- heads register themselves: the core names none ------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
HEAD_KINDS = {"gpt", "gpt_classifier", "clip", "vae", "dalle", "judge"}


def test_pyproject_names_every_head_and_each_registers_its_kinds_and_packaged_model():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    from multimodal import registry

    heads = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["multimodal.heads"]
    assert heads == {"gpt": "multimodal.gpt", "clip": "clip", "dalle": "dalle", "judge": "data"}
    for module in heads.values():
        importlib.import_module(module)
    assert HEAD_KINDS <= set(registry.known_kinds())
    assert sorted(registry.packaged_names()) == ["clip", "dalle", "gpt", "judge"]


def test_a_kind_no_head_registers_is_one_line_naming_it(tiny_gpt, tmp_path):
    out = save_export(tiny_gpt, tmp_path / "m")
    meta = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**meta, "kind": "nonesuch"}))
    with pytest.raises(CheckpointError) as e:
        load_model(out)
    msg = str(e.value)
    assert f"{out}: unknown model kind 'nonesuch'" in msg and "gpt, gpt_classifier" in msg and "pip install -e ." in msg
    assert "\n" not in msg


def test_without_installed_heads_the_core_knows_no_kind_and_says_to_install(monkeypatch, tmp_path):
    """The core finds the heads only through the entry points: with none installed, a CLIP export is a kind
    it does not know, and the error says to install the package."""
    from multimodal import registry
    from tests.clip_helpers import tiny_export

    export = tiny_export(tmp_path / "clip")
    for table in ("_CLASSES", "_KIND_MODULES", "_DIRECTORY_FORMATS", "_SCHEMES", "_WEIGHTS_FORMATS", "_PACKAGED"):
        monkeypatch.setattr(registry, table, {})
    monkeypatch.setattr(registry, "_heads_loaded", False)
    monkeypatch.setattr(registry, "entry_points", lambda group: [])
    with pytest.raises(CheckpointError, match=r"unknown model kind 'clip': no head is registered .*pip install -e \."):
        load_model(export)
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_model("local-dir:" + str(tmp_path / "oc"))  # no head registers the scheme: a path like any other


TOY_MODEL = """
from dataclasses import dataclass

from torch import nn

from multimodal.registry import register


@dataclass
class ToyConfig:
    width: int = 3


@register("toy")
class Toy(nn.Module):
    config_class = ToyConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.width, 1)
"""


def test_a_new_head_registers_itself_through_its_entry_point(tmp_path):
    """A head outside the suite: a package that declares its kind and an entry point in ``multimodal.heads``.
    ``multimodal.load`` reads its exports, and no file of the core names it."""
    (tmp_path / "toyhead").mkdir()
    (tmp_path / "toyhead" / "__init__.py").write_text(
        "from multimodal import registry\n\nregistry.declare_kind('toy', 'toyhead.model')\n"
    )
    (tmp_path / "toyhead" / "model.py").write_text(TOY_MODEL)
    dist = tmp_path / "toyhead-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyhead\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[multimodal.heads]\ntoy = toyhead\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")])}

    def python(code: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)

    made = python("from toyhead.model import Toy, ToyConfig\nfrom multimodal.checkpoint import save_export\n"
                  "save_export(Toy(ToyConfig(width=5)), 'toy-export')")  # fmt: skip
    assert made.returncode == 0, made.stderr
    loaded = python("import sys, multimodal\nm = multimodal.load('toy-export', 'toy')\n"
                    "print(type(m).__name__, m.config.width, 'toyhead.model' in sys.modules)")  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["Toy", "5", "True"]
    shutil.rmtree(dist)  # the head uninstalled: its exports are a kind nobody registers
    gone = python("import multimodal\nmultimodal.load('toy-export')")
    last = gone.stderr.strip().splitlines()[-1]
    assert "CheckpointError: toy-export: unknown model kind 'toy' (known: clip, dalle" in last
    assert "is the package of its head installed?" in last
