"""The two-object recipes (`configs/*/shapes-mixed.yaml`) train on one- and two-object scenes, share their shards,
and their lengths fit every caption."""

from __future__ import annotations

from pathlib import Path

import yaml

from data import shapes

ROOT = Path(__file__).resolve().parents[1]


def _config(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


def _longest_caption() -> str:
    # every template with the longest words each slot can take
    long = {"size": "small", "color": "yellow", "shape": "triangle", "position": "bottom center"}
    obj = dict(long, row=2, col=1)
    other = dict(long, position="bottom right", row=2, col=2)
    return max(
        [shapes.caption_for([obj], t) for t in range(len(shapes.TEMPLATES_1))]
        + [shapes.caption_for([obj, other], t) for t in range(len(shapes.TEMPLATES_2))],
        key=len,
    )


def test_mixed_recipes_train_on_mixed_scenes_sharing_their_shards():
    data = {
        name: _config(name)["data"]["init_args"]
        for name in ("vae/shapes-mixed", "dalle/shapes-mixed", "clip/shapes-mixed", "clip/shapes-mixed-scratch")
    }
    assert all(d["objects"] == "mixed" for d in data.values())
    # the tokenizer and DALL·E read the same shards (rendered once)
    assert data["vae/shapes-mixed"]["root"] == data["dalle/shapes-mixed"]["root"]


def test_dalle_fine_tunes_the_one_object_model_on_text_that_holds_every_caption():
    from multimodal.demo import RECIPES

    dalle = _config("dalle/shapes-mixed")["model"]["init_args"]
    longest = _longest_caption()
    assert len(longest.encode()) + 1 <= dalle["text_length"], longest  # + end of text
    # it starts from what the one-object recipe exports and keeps that model's tokenizer (no `vae:`), so its
    # codes mean what they meant; `demo build` trains that recipe first
    exports = {config: export for _, config, export in RECIPES}
    assert dalle["init_from"] == exports["configs/dalle/shapes.yaml"] and dalle.get("vae") is None
    order = [config for _, config, _ in RECIPES]
    assert order.index("configs/dalle/shapes.yaml") < order.index("configs/dalle/shapes-mixed.yaml")


def test_clip_recipes_fit_every_caption_and_name_their_hard_negatives():
    from data.shapes import SWAPS
    from multimodal.demo import RECIPES
    from multimodal.tokenizers import get_tokenizer

    tuned, scratch = _config("clip/shapes-mixed"), _config("clip/shapes-mixed-scratch")
    # the packaged recipe fine-tunes what the one-object recipe exports, with only the spatial swaps as negatives:
    # colour and shape swaps teach the seen pairs as units (the scratch recipe's header has the figures)
    model = tuned["model"]["init_args"]
    exports = {config: export for _, config, export in RECIPES}
    assert model["init_from"] == exports["configs/clip/shapes.yaml"]
    assert set(model["hard_negatives"]) == {"relation", "position"} < set(SWAPS)
    assert scratch["model"]["init_args"]["hard_negatives"] is False
    # `demo build` trains the one-object CLIP before the one that starts from it
    order = [config for _, config, _ in RECIPES]
    assert order.index("configs/clip/shapes.yaml") < order.index("configs/clip/shapes-mixed.yaml")
    for config in (tuned, scratch):
        context = config["data"]["init_args"]["context_length"]
        assert len(get_tokenizer("clip").encode(_longest_caption())) + 2 <= context
