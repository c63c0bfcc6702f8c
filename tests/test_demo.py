"""The demo on tiny random models: it must run end to end, write a browsable page and report scores."""

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from multimodal.checkpoint import packaged_path as demo_path
from multimodal.checkpoint import save_export
from multimodal.demo import main, package


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from clip.model import CLIP, CLIPConfig, TextConfig, VisionConfig
    from dalle.model import DALLE, DALLEConfig
    from dalle.vae import DiscreteVAE, VAEConfig
    from data.judge import JudgeConfig, ShapesJudge

    root = tmp_path_factory.mktemp("demo-models")
    torch.manual_seed(0)
    vae = DiscreteVAE(
        VAEConfig(image_size=64, codebook_size=16, downsample=8, hidden=8, blocks_per_group=1, init_channels=8)
    )
    dalle = DALLE(
        DALLEConfig(
            text_length=48,
            text_vocab_size=257,
            tokenizer="byte",
            image_grid=8,
            image_vocab_size=16,
            backbone={"width": 32, "layers": 2, "heads": 4},
            vae=asdict(vae.config),
        )
    )
    dalle.vae.load_state_dict(vae.state_dict())
    save_export(dalle, root / "dalle")
    clip = CLIP(
        CLIPConfig(
            embed_dim=16,
            vision=VisionConfig(image_size=64, patch_size=16, backbone={"width": 32, "layers": 1, "heads": 4}),
            text=TextConfig(
                context_length=32,
                vocab_size=257,
                tokenizer="byte",
                pool_type="last",
                backbone={"width": 32, "heads": 4, "layers": 1},
            ),
        )
    )
    save_export(clip, root / "clip")
    save_export(ShapesJudge(JudgeConfig(width=8)), root / "judge")
    from multimodal.gpt import GPT, GPTConfig

    save_export(
        GPT(GPTConfig(vocab_size=257, context_length=128, backbone={"width": 16, "layers": 1, "heads": 2})),
        root / "gpt",
    )
    return root


@pytest.fixture(scope="module")
def demo_page(tiny_models, tmp_path_factory):
    """The demo on the tiny models with 16 candidates per caption (the default page's widest grid)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    args = ["--models", str(tiny_models), "--out", str(out), "--prompts", "2", "--candidates", "16", "--json"]
    return out, main(args)


def test_demo_writes_page_and_scores(demo_page, capsys):
    out, code = demo_page
    assert code == 0
    page = (out / "index.html").read_text()
    for png in (
        "dalle-val.png",
        "dalle-heldout.png",
        "dalle-heldout-2-objects.png",
        "clip-val.png",
        "clip-heldout.png",
        "image-prompts.png",
        "scores.png",
        "gpt-fewshot.png",
    ):
        assert (out / png).stat().st_size > 0 and png in page
    assert "two objects of held-out pairs" in page and "Relation drawn as asked:" in page
    # the language section: prompts at k = 0 and k = 4 with the GPT's answers
    assert "GPT: in-context learning" in page and "lexicon" in page
    table = page[page.index("<h2>Scores</h2>") : page.index("<h2>DALL·E")]
    assert "GPT k=4" in table and "CLIP zero-shot heldout" in table  # every score in the top table and chart
    for row in re.findall(r"<tr><td>[^<]+</td><td>([\d.]+)%</td></tr>", table):
        assert 0 <= float(row) <= 100


def test_demo_json_scores(tiny_models, tmp_path, capsys):
    code = main(["--models", str(tiny_models), "--out", str(tmp_path), "--prompts", "1", "--candidates", "2", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert all(0.0 <= v <= 1.0 for v in result["scores"].values()) and 0 <= result["scores"]["GPT k=4"] <= 1
    assert {"CLIP zero-shot heldout", "DALL·E image-prompt completion"} <= set(result["scores"])
    # the two-object results: the judge's score of two-object captions and CLIP's binding of attributes
    assert {"DALL·E heldout 2 objects: random sample", "CLIP binding val: caption vs its swaps"} <= set(
        result["scores"]
    )


def test_how_trained_is_a_table():
    from multimodal.demo import trained_table

    html = trained_table(
        {"vae": {"config": "configs/vae/shapes.yaml", "steps": 5000, "seconds": 2588, "psnr_db": {"val": 36.4}}},
        {"vae": 1.5},
    )
    assert html.startswith("<table>") and "{" not in html  # no raw JSON
    assert "<td>5000 steps, 43 min</td>" in html and "psnr db: val 36.4" in html and "1.5 MB" in html


# -- the page in a browser: 1280 px (a laptop) and 390 px (a phone) -------------------------------------------


def _chromium_page(path: Path, width: int, shots: dict[str, Path] | None = None) -> dict:
    """Open ``path`` at ``width`` px in chromium: what overflows, where each image sits, screenshots of the
    images named in ``shots`` (src -> file)."""
    from tests.test_serve import CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            facts = page.evaluate(
                """() => ({
                page: [document.documentElement.scrollWidth, document.documentElement.clientWidth],
                scrollers: [...document.querySelectorAll('body *')].filter(e => e.scrollWidth > e.clientWidth + 1
                    && ['auto', 'scroll'].includes(getComputedStyle(e).overflowX)).map(e => e.tagName),
                images: [...document.images].map(e => ({src: e.getAttribute('src'), natural: e.naturalWidth,
                    shown: e.clientWidth, right: e.getBoundingClientRect().right}))})"""
            )
            for src, file in (shots or {}).items():
                page.locator(f"img[src='{src}']").screenshot(path=str(file))
            page.screenshot(path=str(path.parent / f"page-{width}.png"), full_page=True)
        finally:
            browser.close()
    return facts


@pytest.mark.parametrize("width", [1280, 390])
def test_page_never_scrolls_sideways(demo_page, width):
    out, code = demo_page
    assert code == 0
    facts = _chromium_page(out / "index.html", width)
    scroll, client = facts["page"]
    assert scroll <= client, f"the page is {scroll} px wide in a {client} px window (see page-{width}.png)"
    assert facts["scrollers"] == [], f"boxes that scroll sideways: {facts['scrollers']}"
    for im in facts["images"]:
        assert im["natural"] > 0, f"{im['src']} did not load"
        assert im["right"] <= client, f"{im['src']} runs past the window ({im['right']} > {client})"
        if width == 1280 and im["src"].startswith(("dalle-", "image-prompts", "clip-")):
            # captions are drawn into the grids at 16 px: a laptop screen shows them at their own size
            assert im["shown"] == im["natural"], f"{im['src']} shown {im['shown']} px wide, drawn {im['natural']}"


def test_no_chart_line_hides_another(demo_page, tmp_path):
    """The tiny GPT scores 0% on every task at every k: four equal curves. In the chart as the browser shows it,
    each must keep its own visible line (its colour covers many pixels of the plot area), not one on top."""
    from PIL import Image

    from multimodal.gpt.fewshot import PALETTE

    out, code = demo_page
    assert code == 0
    shot = tmp_path / "chart.png"
    _chromium_page(out / "index.html", 1280, {"gpt-fewshot.png": shot})
    plot = np.asarray(Image.open(shot).convert("RGB"), dtype=int)[45:424, 66:555]  # the plot area, no legend
    tasks = len(re.findall(r"<td>(\w+)</td><td>0</td>", (out / "index.html").read_text()))
    assert tasks == 4
    for i, colour in enumerate(PALETTE[:tasks]):
        pixels = int((np.abs(plot - np.array(colour)).max(axis=2) < 40).sum())
        assert pixels > 300, f"series {i} (colour {colour}) has {pixels} visible pixels: hidden by another line"


def test_plot_accuracy_keeps_equal_curves_apart(tmp_path):
    """Drawn alone or among three equal curves, a curve keeps most of its pixels."""
    from PIL import Image

    from multimodal.gpt.fewshot import PALETTE, plot_accuracy

    curve = {0: 0.0, 1: 0.5, 2: 0.5, 4: 0.9}

    def visible(curves: dict, colour) -> int:
        img = np.asarray(Image.open(plot_accuracy(curves, tmp_path / "c.png", "t")).convert("RGB"), dtype=int)
        return int((np.abs(img[45:424, 66:555] - np.array(colour)).max(axis=2) < 40).sum())

    alone = visible({"a": curve}, PALETTE[0])
    together = {name: dict(curve) for name in "abc"}
    for i in range(3):
        assert visible(together, PALETTE[i]) > 0.5 * alone


def test_missing_models_is_one_line_error(tmp_path, capsys):
    assert main(["--models", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "multimodal.demo build" in err
    assert not (tmp_path / "o" / "index.html").exists()


def test_package_halves_weights_and_loads(tiny_models, tmp_path):
    record = package({k: tiny_models / k for k in ("clip", "dalle", "judge")}, tmp_path, half=True, info={"x": 1})
    assert record["total_megabytes"] > 0 and json.loads((tmp_path / "demo.json").read_text())["x"] == 1
    from safetensors.torch import load_file

    assert all(v.dtype != torch.float32 for v in load_file(str(tmp_path / "clip" / "model.safetensors")).values())
    assert demo_path("clip", tmp_path) is not None and demo_path("vae", tmp_path) is None
    from multimodal.checkpoint import load_model

    m = load_model(tmp_path / "clip", "clip")
    assert next(m.parameters()).dtype == torch.float32


def test_repackaging_one_model_keeps_the_record_of_the_others(tiny_models, tmp_path):
    package({k: tiny_models / k for k in ("clip", "judge")}, tmp_path, info={"trained": {"clip": {"seconds": 5}}})
    record = package({"dalle": tiny_models / "dalle"}, tmp_path, info={"trained": {"dalle": {"seconds": 7}}})
    assert set(record["megabytes"]) == {"clip", "judge", "dalle"}
    assert record["trained"] == {"clip": {"seconds": 5}, "dalle": {"seconds": 7}}
    assert record["total_megabytes"] == round(sum(record["megabytes"].values()), 2)


def test_build_refuses_unknown_names_in_one_line(capsys):
    assert main(["build", "--only", "dalle,unicorn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "unicorn" in err and "\n" not in err.strip()


def test_packaged_models_work_with_no_flags(tmp_path, capsys):
    """The shipped shapes-world models: `dalle.sample` with no model flags, `clip.zeroshot --model shapes`."""
    if demo_path("dalle") is None or demo_path("clip") is None:
        pytest.fail("the demo models are not packaged (python -m multimodal.demo build)")
    from PIL import Image

    from clip.zeroshot import main as zeroshot
    from dalle.sample import main as sample
    from data.shapes import render

    out = tmp_path / "grid.png"
    assert sample(["a red circle in the top left", "--num", "4", "--out", str(out), "--no-progress", "--json"]) == 0
    captured = capsys.readouterr()
    assert "only the synthetic shapes world" in captured.err
    result = json.loads(captured.out)
    assert Image.open(out).size[0] > 0 and all(r["clip_score"] is not None for r in result["images"])
    image = tmp_path / "blue_square.png"
    render([{"shape": "square", "color": "blue", "size": "large", "position": "center", "row": 1, "col": 1}], 64).save(
        image
    )
    assert zeroshot(["--model", "shapes", "--labels", "red circle,blue square", "--json", str(image)]) == 0
    probs = json.loads(capsys.readouterr().out)["probs"]
    assert probs["blue square"] > probs["red circle"]
