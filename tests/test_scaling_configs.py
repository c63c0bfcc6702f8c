"""The paper-size presets are valid shapes and the GPT configs parse under the training CLI."""

from pathlib import Path

import pytest
import torch

from multimodal.gpt import GPT, PRESETS, preset
from multimodal.train import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    with torch.device("meta"):  # shapes only: no memory for 13B parameters
        model = GPT(preset(name))
    n = model.num_params() / 1e6
    expected = {"gpt2": 124, "gpt3-small": 125, "gpt3-xl": 1300, "gpt3-13b": 13000}
    if name in expected:
        assert n == pytest.approx(expected[name], rel=0.08)


@pytest.mark.parametrize("name", ["gpt2-small", "gpt2-medium", "gpt3", "tasks", "finetune"])
def test_config_parses(name, capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(ROOT / "configs/gpt" / f"{name}.yaml"), "--print_config"])
    assert e.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed
    if name == "gpt3":
        assert "FSDPStrategy" in printed and "bf16-mixed" in printed and "grad_checkpointing: true" in printed
