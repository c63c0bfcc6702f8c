"""``python -m dalle.evaluate``: judge scores with and without CLIP reranking (tiny random models)."""

from __future__ import annotations

import json

import torch

from dalle.evaluate import main, shapes_prompts
from tests.dalle_helpers import dalle_export, tiny_clip_export


def test_prompts_come_from_the_right_split():
    from data.shapes import HELDOUT_PAIRS, parse_caption

    held = set(HELDOUT_PAIRS)
    for split, inside in (("val", False), ("heldout", True)):
        for p in shapes_prompts(split, 20):
            o = parse_caption(p)[0]
            assert ((o["color"], o["shape"]) in held) == inside, p


def test_evaluate_reports_random_and_reranked_accuracy(tmp_path, capsys):
    from data.judge import JudgeConfig, ShapesJudge
    from multimodal.checkpoint import save_export

    torch.manual_seed(0)
    judge = save_export(ShapesJudge(JudgeConfig(image_size=16, width=4)).eval(), tmp_path / "judge")
    ckpt = dalle_export(tmp_path / "dalle", text_length=64)
    clip = tiny_clip_export(tmp_path / "clip")
    argv = ["--checkpoint", ckpt, "--judge", judge, "--clip", clip, "--prompts", 3, "--candidates", 4, "--json"]
    assert main([str(a) for a in argv]) == 0
    out = json.loads(capsys.readouterr().out)
    for split in ("val", "heldout"):
        r = out["splits"][split]
        assert r["random"]["images"] == 12 and r["rerank"]["images"] == 3
        assert 0 <= r["random"]["accuracy"]["all"] <= 1 and "color" in r["random"]["accuracy"]
        # every candidate counted once under the shape its caption asked for
        assert sum(e["images"] for e in r["random"]["by_shape"].values()) == 12
        for e in r["random"]["by_shape"].values():
            assert sum(e["drawn_as"].values()) == round(e["images"] * (1 - e["shape"]))
        ip = r["image_prompt"]  # the split's own 3 images, 4 completions each from the top half of the grid
        assert ip["images"] == 12 and ip["rows_given"] == ip["rows"] // 2 and 0 <= ip["accuracy"]["all"] <= 1
    # --markdown: the README's tables, one row per split and one per requested shape
    argv = ["--checkpoint", ckpt, "--judge", judge, "--clip", clip, "--prompts", 2, "--candidates", 2]
    assert main([str(a) for a in argv + ["--image-prompts", 1, "--prompt-rows", 1, "--markdown"]]) == 0
    table = capsys.readouterr().out
    assert "| seen pairs (val) |" in table and "| held-out pairs |" in table and "image prompt (1 of 4 rows)" in table
    assert "CLIP rerank 2→1" in table and "| requested shape |" in table
    assert main([str(a) for a in argv + ["--no-rerank", "--image-prompts", 0, "--json"]]) == 0
    r = json.loads(capsys.readouterr().out)["splits"]["val"]
    assert "rerank" not in r and "image_prompt" not in r
    assert main([str(a) for a in argv + ["--prompt-rows", 4]]) == 2
    assert "--prompt-rows" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "nope"), "--judge", str(judge)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_vae_mode_scores_reconstructions_against_the_originals(tmp_path, capsys):
    from data.judge import JudgeConfig, ShapesJudge
    from multimodal.checkpoint import save_export
    from tests.dalle_helpers import tiny_vae

    torch.manual_seed(0)
    judge = save_export(ShapesJudge(JudgeConfig(image_size=16, width=4)).eval(), tmp_path / "judge")
    vae = save_export(tiny_vae(), tmp_path / "vae")
    assert main(["--vae", str(vae), "--judge", str(judge), "--prompts", "5", "--splits", "val", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["splits"]["val"]
    assert r["images"] == 5 and 0 < r["codebook_used"] <= 1 and r["psnr"] > 0
    assert set(r["accuracy"]) >= {"color", "shape", "all"} and 0 <= r["originals_all"] <= 1
    assert main(["--vae", str(vae), "--judge", str(judge), "--prompts", "2", "--splits", "heldout"]) == 0
    assert "PSNR" in capsys.readouterr().out
    # a DALL·E export: its own tokenizer is scored; a judge is neither: one line, exit 2
    assert main(["--vae", str(dalle_export(tmp_path / "d")), "--judge", str(judge), "--prompts", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["val"]["images"] == 2
    assert main(["--vae", str(judge), "--judge", str(judge)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_a_perfect_tokenizer_scores_what_the_judge_scores_on_the_originals():
    from types import SimpleNamespace

    from dalle.evaluate import evaluate_reconstructions
    from data.judge import Judge, JudgeConfig, ShapesJudge

    class Lossless:  # decodes exactly the images it last encoded
        config = SimpleNamespace(image_size=16, codebook_size=4)

        def encode(self, images):
            self.images = images
            return (images[:, 0] * 3).round().long()  # [B, H, W] ids in [0, 4)

        def decode(self, ids):
            return self.images

    torch.manual_seed(0)
    judge = Judge(ShapesJudge(JudgeConfig(image_size=16, width=4)).eval())
    r = evaluate_reconstructions(Lossless(), judge, "val", 6, progress=False)
    assert r["images"] == 6 and r["accuracy"]["all"] == r["originals_all"] and r["psnr"] >= 99


def test_summary_and_tables_give_per_relation_accuracy():
    from dalle.evaluate import markdown, summarize

    def row(rel: str, drawn: bool, rest: bool = True) -> dict:
        want = [{"shape": "circle", "color": "red", "relation": rel}, {"shape": "square", "color": "blue"}]
        return {
            "requested": want,
            "predicted": want,
            "correct": {"relation": drawn, "color": rest},
            "all": drawn and rest,
        }

    rows = [row("above", True), row("above", False), row("below", True, rest=False), row("to the left of", True)]
    s = summarize(rows)
    assert s["by_relation"] == {
        "above": {"images": 2, "all": 0.5, "relation": 0.5},
        "below": {"images": 1, "all": 0.0, "relation": 1.0},
        "to the left of": {"images": 1, "all": 1.0, "relation": 1.0},
    }
    table = markdown({"splits": {"heldout": {"candidates": 1, "random": s}}})
    assert "| relation |" in table and "| above | 50.0% of 2 | 50.0% |" in table
    assert "to the right of" not in table  # relations nobody asked for get no row
