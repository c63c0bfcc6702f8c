"""The shapes world: coloured shapes at named places, with exact ground truth.

A tiny synthetic world where every model of the suite can be scored on a CPU in minutes:

- 6 shapes, 8 colours with fixed RGB, 2 sizes, 9 positions on a 3×3 grid, 1 or 2 objects per image
  on a black background.
- captions from several templates ("a red circle", "a small red circle in the top left",
  "a red circle above a blue square", ...); ``parse_caption`` recovers the attributes of any of them.
- **held-out compositions**: ``HELDOUT_PAIRS`` lists 8 of the 48 colour × shape pairs (one in six,
  one per colour, every shape at least once). They never appear in the ``train`` split; the
  ``heldout`` split is made only of them; ``val`` only of seen pairs. ``all`` draws from every pair
  and is meant for measuring instruments (the judge), never for a model under test.
- same seed → byte-identical shards: sample ``i`` of a split is drawn from its own RNG seeded by
  ``(seed, split, i)``, so it does not depend on shard size or on the other samples.

    python -m data.shapes --out runs/data/shapes --split train --count 20000 --seed 0

writes ``DIR/train-000000.tar ...`` (``000000123.png`` + ``.txt`` + ``.json`` per sample) and
``DIR/train-summary.json``. Attribute JSON of a sample::

    {"objects": [{"shape": "circle", "color": "red", "size": "small", "position": "top left",
                  "row": 0, "col": 0}, ...],
     "caption": "...", "split": "train", "seed": 0, "index": 123}
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 0),
    "yellow": (240, 225, 30),
    "green": (30, 170, 50),
    "blue": (30, 80, 230),
    "purple": (140, 50, 190),
    "pink": (250, 130, 200),
    "white": (245, 245, 245),
}
SIZES: tuple[str, ...] = ("small", "large")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLS: tuple[str, ...] = ("left", "center", "right")
# Position names, row-major: POSITIONS[row * 3 + col]. Every name is unique in a caption.
POSITIONS: tuple[str, ...] = (
    "top left",
    "top center",
    "top right",
    "middle left",
    "center",
    "middle right",
    "bottom left",
    "bottom center",
    "bottom right",
)
BACKGROUND = (0, 0, 0)
# (colour, shape) pairs never drawn in `train`: one per colour, each shape at least once (8 of 48).
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("orange", "circle"),
    ("yellow", "diamond"),
    ("green", "square"),
    ("blue", "triangle"),
    ("purple", "cross"),
    ("pink", "square"),
    ("white", "circle"),
)
SPLITS = ("train", "val", "heldout", "all")
OBJECTS_CHOICES = ("1", "2", "mixed")

# Half-extent of a shape as a fraction of a grid cell, and the largest random shift of its centre.
SIZE_FRACTION = {"small": 0.26, "large": 0.43}
JITTER = 0.05
SUPERSAMPLE = 4

# Caption templates. One object: {o} is its phrase; two objects: {a}, {b} and {rel}.
TEMPLATES_1: tuple[str, ...] = (
    "{article} {color} {shape}",
    "{article} {size} {color} {shape}",
    "{article} {color} {shape} in the {position}",
    "{article} {size} {color} {shape} in the {position}",
    "a picture of {article} {size} {color} {shape} in the {position}",
)
TEMPLATES_2: tuple[str, ...] = ("{a} and {b}", "{a} {rel} {b}", "{a_full} and {b_full}")
RELATIONS = ("above", "below", "to the left of", "to the right of")


def pair_heldout(color: str, shape: str) -> bool:
    return (color, shape) in _HELDOUT_SET


_HELDOUT_SET = frozenset(HELDOUT_PAIRS)
_SEEN_PAIRS = tuple((c, s) for c in COLORS for s in SHAPES if (c, s) not in _HELDOUT_SET)
_ALL_PAIRS = tuple((c, s) for c in COLORS for s in SHAPES)


# ---------------------------------------------------------------------------------------------
# Sampling


def sample(rng: random.Random, split: str = "train", objects: int | str = 1) -> list[dict]:
    """Draw the objects of one image for ``split``: a list of attribute dicts (distinct grid cells)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    n = rng.choice((1, 2)) if str(objects) == "mixed" else int(objects)
    if n not in (1, 2):
        raise ValueError(f"objects must be 1, 2 or 'mixed', got {objects!r}")
    pairs = {"train": _SEEN_PAIRS, "val": _SEEN_PAIRS, "heldout": HELDOUT_PAIRS, "all": _ALL_PAIRS}[split]
    cells = rng.sample(range(9), n)
    out = []
    for cell in cells:
        color, shape = rng.choice(pairs)
        row, col = divmod(cell, 3)
        out.append(
            {
                "shape": shape,
                "color": color,
                "size": rng.choice(SIZES),
                "position": POSITIONS[cell],
                "row": row,
                "col": col,
                # sub-cell offset of the centre (fractions of a cell); not part of the captioned truth
                "dx": round(rng.uniform(-JITTER, JITTER), 4),
                "dy": round(rng.uniform(-JITTER, JITTER), 4),
            }
        )
    return out


def public(objects: Sequence[dict]) -> list[dict]:
    """The attribute dicts without rendering details (what the JSON member carries)."""
    keys = ("shape", "color", "size", "position", "row", "col")
    return [{k: o[k] for k in keys} for o in objects]


def sample_rng(seed: int, split: str, index: int) -> random.Random:
    # str seeds go through sha512 in CPython: stable across runs and machines (unlike hash()).
    return random.Random(f"shapes/{seed}/{split}/{index}")


def make_sample(seed: int, split: str, index: int, objects: int | str = 1, size: int = 64) -> dict:
    """Sample ``index`` of ``split``: ``{"image": PIL, "caption": str, "meta": dict}``."""
    rng = sample_rng(seed, split, index)
    objs = sample(rng, split, objects)
    caption = caption_for(objs, rng)
    meta = {"objects": public(objs), "caption": caption, "split": split, "seed": seed, "index": index}
    return {"image": render(objs, size), "caption": caption, "meta": meta}


# ---------------------------------------------------------------------------------------------
# Rendering


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85  # a square of the same half-extent looks much heavier than a circle
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * 1.05 * math.sin(a) + 0.2 * r) for a in _angles(3, -math.pi / 2)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    if shape == "star":
        pts = []
        for k, a in enumerate(_angles(10, -math.pi / 2)):
            rr = r if k % 2 == 0 else 0.42 * r
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if shape == "cross":
        w = 0.34 * r
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
            (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
            (cx - r, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


def _angles(n: int, start: float) -> list[float]:
    return [start + 2 * math.pi * k / n for k in range(n)]


def render(objects: Sequence[dict], size: int = 64) -> Image.Image:
    """Draw ``objects`` (dicts with shape, color, size, row, col; optional dx, dy) on a ``size``² RGB image.

    Drawn at 4× and downsampled with a box filter: anti-aliased edges, still deterministic.
    """
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(img)
    cell = big / 3
    for o in objects:
        if o["shape"] not in SHAPES or o["color"] not in COLORS or o["size"] not in SIZES:
            raise ValueError(f"unknown attributes in {o}")
        row, col = (o["row"], o["col"]) if "row" in o else divmod(POSITIONS.index(o["position"]), 3)
        cx = (col + 0.5 + o.get("dx", 0.0)) * cell
        cy = (row + 0.5 + o.get("dy", 0.0)) * cell
        r = SIZE_FRACTION[o["size"]] * cell
        fill = COLORS[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_polygon(o["shape"], cx, cy, r), fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)  # PIL's PNG writer is deterministic
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(o: dict, full: bool) -> str:
    words = [o["size"], o["color"], o["shape"]] if full else [o["color"], o["shape"]]
    text = f"{_article(words[0])} {' '.join(words)}"
    return f"{text} in the {o['position']}" if full else text


def relation(a: dict, b: dict) -> str:
    """Where ``a`` is relative to ``b`` (rows first: "above" beats "to the left of")."""
    ra, ca = (a["row"], a["col"]) if "row" in a else divmod(POSITIONS.index(a["position"]), 3)
    rb, cb = (b["row"], b["col"]) if "row" in b else divmod(POSITIONS.index(b["position"]), 3)
    if ra != rb:
        return "above" if ra < rb else "below"
    return "to the left of" if ca < cb else "to the right of"


def caption_for(objects: Sequence[dict], rng: random.Random | int | None = None) -> str:
    """A caption of ``objects``; ``rng`` picks the template, or pass a template index (int)."""
    templates = TEMPLATES_1 if len(objects) == 1 else TEMPLATES_2
    if len(objects) not in (1, 2):
        raise ValueError("captions cover 1 or 2 objects")
    if isinstance(rng, int):
        t = templates[rng % len(templates)]
    else:
        t = (rng or random).choice(templates)
    if len(objects) == 1:
        o = objects[0]
        first = o["size"] if "{article} {size}" in t else o["color"]
        return t.format(
            article=_article(first), color=o["color"], shape=o["shape"], size=o["size"], position=o["position"]
        )
    a, b = objects
    return t.format(
        a=_phrase(a, False), b=_phrase(b, False), a_full=_phrase(a, True), b_full=_phrase(b, True), rel=relation(a, b)
    )


_POS_RE = "|".join(sorted((re.escape(p) for p in POSITIONS), key=len, reverse=True))
_OBJ_RE = re.compile(
    rf"\b(?:(?P<size>{'|'.join(SIZES)}|big)\s+)?(?P<color>{'|'.join(COLORS)})\s+(?P<shape>{'|'.join(SHAPES)})s?\b"
    rf"(?:\s+(?:in|at)\s+the\s+(?P<position>{_POS_RE})\b)?"
)
_REL_RE = re.compile(r"\b(above|below|to the left of|to the right of)\b")


def parse_caption(text: str) -> list[dict]:
    """Recover the attributes a caption asks for: one dict per object, with only the keys it names
    (shape, color, and where given size, position with row and col). A relation between two objects
    ("a red circle above a blue square") is returned on the first object as ``"relation": "above"``
    (meaning: object 0 is above object 1). Returns ``[]`` when no object is recognised."""
    t = " ".join(text.lower().replace(",", " ").split())
    objs, spans = [], []
    for m in _OBJ_RE.finditer(t):
        o = {"shape": m["shape"], "color": m["color"]}
        if m["size"]:
            o["size"] = "large" if m["size"] == "big" else m["size"]
        if m["position"]:
            o["position"] = m["position"]
            o["row"], o["col"] = divmod(POSITIONS.index(m["position"]), 3)
        objs.append(o)
        spans.append(m.span())
    if len(objs) == 2:
        between = t[spans[0][1] : spans[1][0]]
        rel = _REL_RE.search(between)
        if rel:
            objs[0]["relation"] = rel.group(1)
    return objs


# What a swap of attributes between the two objects of a caption changes; each keeps the caption's words
# and only their binding, so a bag-of-words text encoder cannot tell the pair apart.
SWAPS: tuple[str, ...] = ("color", "shape", "relation", "position")
_FLIP = {"above": "below", "below": "above", "to the left of": "to the right of", "to the right of": "to the left of"}


def swapped_captions(text: str) -> dict[str, str]:
    """The hard negatives of a two-object caption: ``{swap kind: caption}`` for each kind of ``SWAPS`` that
    changes it ("a red circle above a blue square" -> color: "a blue circle above a red square", shape:
    "a red square above a blue circle", relation: "a red circle below a blue square"). Captions that do not
    name two objects give ``{}``."""
    t = " ".join(text.lower().replace(",", " ").split())
    found = list(_OBJ_RE.finditer(t))
    if len(found) != 2:
        return {}
    objs = [{k: m[k] for k in ("size", "color", "shape", "position")} for m in found]
    out = {}
    for kind in ("color", "shape", "position"):
        if objs[0][kind] and objs[1][kind] and objs[0][kind] != objs[1][kind]:
            swapped = [dict(o) for o in objs]
            swapped[0][kind], swapped[1][kind] = objs[1][kind], objs[0][kind]
            out[kind] = _respell(t, found, swapped)
    rel = _REL_RE.search(t, found[0].end(), found[1].start())
    if rel:
        out["relation"] = t[: rel.start()] + _FLIP[rel[1]] + t[rel.end() :]
    return {k: out[k] for k in SWAPS if k in out}


def _respell(text: str, spans: list[re.Match], objs: list[dict]) -> str:
    """``text`` with each matched object phrase rewritten from ``objs``, its article agreeing."""
    pieces, last = [], 0
    for m, o in zip(spans, objs):
        words = " ".join(w for w in (o["size"], o["color"], o["shape"]) if w)
        phrase = words + (f" in the {o['position']}" if o["position"] else "")
        head = text[last : m.start()]
        head = re.sub(r"\b(a|an) $", _article(words) + " ", head)
        pieces += [head, phrase]
        last = m.end()
    return "".join(pieces) + text[last:]


# ---------------------------------------------------------------------------------------------
# Shards


def vocabulary() -> dict:
    return {
        "shapes": list(SHAPES),
        "colors": {k: list(v) for k, v in COLORS.items()},
        "sizes": list(SIZES),
        "positions": list(POSITIONS),
        "background": list(BACKGROUND),
    }


def shard_paths(out: str | Path, split: str) -> list[Path]:
    return sorted(p for p in Path(out).glob(f"{split}-*.tar") if re.fullmatch(rf"{split}-\d{{6}}\.tar", p.name))


def write_shards(
    out: str | Path,
    split: str,
    count: int,
    seed: int = 0,
    size: int = 64,
    objects: int | str = 1,
    shard_size: int = 1000,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Render ``count`` samples of ``split`` into ``out/<split>-000000.tar ...``; returns the summary
    (also written as ``out/<split>-summary.json``). Existing shards of the split are only replaced
    with ``overwrite=True`` (so a stale extra shard can never mix into a new set)."""
    import webdataset as wds
    from tqdm import tqdm

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (one of {', '.join(SPLITS)})")
    if str(objects) not in OBJECTS_CHOICES:
        raise ValueError(f"objects must be 1, 2 or mixed, got {objects!r}")
    if count < 1 or shard_size < 1 or size < 8:
        raise ValueError("count and shard size must be positive and size at least 8")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old = shard_paths(out, split)
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds {len(old)} {split} shards; pass --overwrite to replace them")
    for p in old:
        p.unlink()
    objects = str(objects) if str(objects) == "mixed" else int(objects)
    counts: dict[str, Counter] = {k: Counter() for k in ("shape", "color", "size", "position", "objects")}
    start = time.perf_counter()
    # mtime/user/group fixed: same seed -> byte-identical tar files
    with wds.ShardWriter(
        str(out / f"{split}-%06d.tar"), maxcount=shard_size, verbose=0, mtime=0.0, user="shapes", group="shapes"
    ) as sink:
        for i in tqdm(range(count), desc=f"{split} shards", unit="img", disable=not progress, file=sys.stderr):
            s = make_sample(seed, split, i, objects, size)
            sink.write(
                {
                    "__key__": f"{i:09d}",
                    "png": png_bytes(s["image"]),
                    "txt": s["caption"].encode(),
                    "json": json.dumps(s["meta"], sort_keys=False).encode(),
                }
            )
            counts["objects"][str(len(s["meta"]["objects"]))] += 1
            for o in s["meta"]["objects"]:
                for k in ("shape", "color", "size", "position"):
                    counts[k][o[k]] += 1
    seconds = time.perf_counter() - start
    summary = {
        "split": split,
        "count": count,
        "seed": seed,
        "size": size,
        "objects": objects,
        "shard_size": shard_size,
        "shards": [p.name for p in shard_paths(out, split)],
        "counts": {k: dict(sorted(v.items())) for k, v in counts.items()},
        "vocabulary": vocabulary(),
        "heldout_pairs": [list(p) for p in HELDOUT_PAIRS],
        "templates": {"one_object": list(TEMPLATES_1), "two_objects": list(TEMPLATES_2)},
        "seconds": round(seconds, 3),
        "images_per_second": round(count / max(seconds, 1e-9), 1),
    }
    (out / f"{split}-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m data.shapes", description="Render the shapes world into webdataset shards."
    )
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument(
        "--split", required=True, choices=SPLITS, help="train / val use seen pairs, heldout only held-out pairs"
    )
    p.add_argument("--count", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--objects", default="1", choices=OBJECTS_CHOICES, help="objects per image (default 1)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per tar file (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards of this split in --out")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = p.parse_args(argv)
    try:
        summary = write_shards(
            args.out,
            args.split,
            args.count,
            args.seed,
            args.size,
            args.objects,
            args.shard_size,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except (ValueError, FileExistsError, OSError) as e:
        from multimodal.cli import fail  # here, so rendering shards does not import torch

        return fail(e)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"wrote {summary['count']} {args.split} images in {len(summary['shards'])} shards to {args.out} "
            f"({summary['images_per_second']:.0f} images/s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
