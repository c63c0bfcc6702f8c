"""python -m multimodal.gpt.scaling: two tiny sizes → CSV + log-log PNG; bad input is one line, exit 2."""

import csv
import json

import pytest
import torch
from PIL import Image

from multimodal.gpt.scaling import fit_power_law, main


def test_two_sizes_write_png_csv_json(tmp_path, capsys):
    from multimodal.checkpoint import save_export
    from multimodal.gpt import GPT
    from multimodal.gpt.scaling import parse_size

    out = tmp_path / "sweep"
    data = ["--synthetic-docs", "1500", "--context", "32", "--val-batches", "3", "--json", "--no-progress"]
    args = ["--sizes", "16x1,48x2", "--tokens", "24000", "--out", str(out), *data]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader((out / "scaling.csv").open()))
    assert [r["name"] for r in rows] == ["16x1", "48x2"]
    assert int(rows[0]["params"]) < int(rows[1]["params"]) and rows[0]["tokens"] == rows[1]["tokens"]
    # the same two sizes untrained, measured by the same tool on the same validation data
    untrained = []
    for size in ("16x1", "48x2"):
        torch.manual_seed(0)
        untrained.append(str(save_export(GPT(parse_size(size, 32, 257)[1]), tmp_path / size)))
    assert main(["--checkpoints", ",".join(untrained), "--out", str(tmp_path / "untrained"), *data]) == 0
    before = [r["val_loss"] for r in json.loads(capsys.readouterr().out)["runs"]]
    after = [float(r["val_loss"]) for r in rows]
    assert all(5.3 < loss < 5.8 for loss in before), before  # about ln(257) = 5.55
    # training lowers the loss of each size (measured 5.55 → 4.99 and 4.09), the larger model more
    assert after[0] < before[0] - 0.3 and after[1] < before[1] - 0.3, (before, after)
    assert after[1] < after[0] - 0.3, after
    with Image.open(out / "scaling.png") as img:
        assert img.format == "PNG" and img.size == (800, 560)
        assert len(img.convert("RGB").getcolors(1 << 16)) > 3  # something was drawn
    assert summary["power_law"] is not None and summary["png"].endswith("scaling.png")
    # a second run does not silently replace the first
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_power_law_fit_recovers_exponent():
    params = [1e3, 1e4, 1e5]
    a, alpha = fit_power_law(params, [5.0 * n**-0.076 for n in params])
    assert a == pytest.approx(5.0) and alpha == pytest.approx(0.076)


@pytest.mark.parametrize(
    "extra", [["--sizes", "64y2"], ["--sizes", "30x1x4"], ["--tokens", "1"], ["--synthetic", "nope"]]
)
def test_bad_input_one_line_exit_2(extra, tmp_path, capsys):
    assert main(["--out", str(tmp_path / "o"), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_fit_of_models_trained_elsewhere(tmp_path, capsys):
    """--checkpoints: the power law of exports trained by their own configs, loss measured on the same data."""
    from multimodal.checkpoint import save_export
    from multimodal.gpt import GPT, GPTConfig

    paths = []
    for width, layers in ((16, 1), (32, 2)):
        model = GPT(
            GPTConfig(vocab_size=257, context_length=32, backbone={"width": width, "layers": layers, "heads": 2})
        )
        paths.append(str(save_export(model, tmp_path / f"m{width}", {"trained_steps": 10})))
    out = tmp_path / "fit"
    args = ["--checkpoints", ",".join(paths), "--synthetic", "tasks", "--synthetic-docs", "300", "--context", "32"]
    assert main([*args, "--val-batches", "2", "--out", str(out), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in summary["runs"]] == ["16x1", "32x2"] and summary["runs"][0]["steps"] == 10
    assert summary["runs"][0]["tokens"] == 10 * 16 * 32  # steps x --batch-size x --context
    assert all(4 < r["val_loss"] < 7 for r in summary["runs"])  # untrained: near ln(257)
    assert (out / "scaling.png").stat().st_size > 0 and summary["power_law"] is not None
