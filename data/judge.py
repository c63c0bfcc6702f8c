"""The attribute judge: a small CNN that reads a shapes-world image back into objects, so generated
images can be scored against the prompt that asked for them.

The CNN predicts, for each of the 3×3 grid cells, whether it holds nothing / a small / a large
object, and that object's shape and colour. One or two objects are handled alike: the N cells most
likely occupied are the N objects (N = objects the prompt names). Their cell is their position.

    python -m multimodal.train fit --config configs/judge/shapes.yaml      # trains, exports runs/judge/
    python -m data.judge --checkpoint runs/judge DIR [--json]              # DIR: x.png + x.txt prompts

Python: ``Judge.from_checkpoint("runs/judge").score(images, prompts)`` with images a list of PIL
images or a float tensor ``[B, 3, H, W]`` in [0, 1] (``value_range=(-1, 1)`` for signed ones).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from data.shapes import COLORS, POSITIONS, SHAPES, SIZES, parse_caption, relation
from multimodal.checkpoint import CheckpointError, load_model, register
from multimodal.cli import UsageError, add_device_flag, fail, resolve_device, warn
from multimodal.images import ImageError, is_image_path, open_image
from multimodal.lightning import ModelModule

ATTRIBUTES = ("shape", "color", "size", "position")


@dataclass
class JudgeConfig:
    image_size: int = 64
    width: int = 32  # channels of the patch stem; doubled after it
    grid: int = 3
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    colors: list[str] = field(default_factory=lambda: list(COLORS))
    sizes: list[str] = field(default_factory=lambda: list(SIZES))


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register("judge")
class ShapesJudge(nn.Module):
    """[B, 3, H, W] in [0, 1] -> per-cell logits: occupancy (empty + sizes), shape, colour."""

    config_class = JudgeConfig

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        # a 4×4 patch stem then three 3×3 convs at H/4: receptive field 28 px, enough for one
        # grid cell of a 64 px image, and cheap enough to train on a CPU in minutes
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=4),  # [B, w, H/4, W/4]
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            *_conv(w, 2 * w),
            *_conv(2 * w, 2 * w),
            *_conv(2 * w, 2 * w),
        )
        self.pool = nn.AdaptiveAvgPool2d(config.grid)  # one feature vector per grid cell
        self.n_occ, self.n_shape, self.n_color = 1 + len(config.sizes), len(config.shapes), len(config.colors)
        self.head = nn.Sequential(
            nn.Conv2d(2 * w, 2 * w, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, self.n_occ + self.n_shape + self.n_color, 1),
        )

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        s = self.config.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        h = self.head(self.pool(self.features((x - 0.5) / 0.25)))  # [B, K, g, g]
        h = h.flatten(2).transpose(1, 2)  # [B, g*g, K], cells row-major
        occ, shape, color = h.split([self.n_occ, self.n_shape, self.n_color], dim=-1)
        return {"occupancy": occ, "shape": shape, "color": color}

    def targets(self, metas: Sequence[dict], device: torch.device | None = None) -> dict[str, Tensor]:
        """Per-cell targets from the attribute JSON: occupancy 0 = empty, 1 + size index; shape and
        colour -100 (ignored) where a cell is empty."""
        g = self.config.grid
        occ = torch.zeros(len(metas), g * g, dtype=torch.long)
        shape = torch.full_like(occ, -100)
        color = torch.full_like(occ, -100)
        for i, meta in enumerate(metas):
            for o in meta["objects"]:
                cell = o["row"] * g + o["col"]
                occ[i, cell] = 1 + self.config.sizes.index(o["size"])
                shape[i, cell] = self.config.shapes.index(o["shape"])
                color[i, cell] = self.config.colors.index(o["color"])
        return {k: v.to(device) for k, v in {"occupancy": occ, "shape": shape, "color": color}.items()}

    @torch.no_grad()
    def predict(self, x: Tensor, n: int | Sequence[int] | None = None) -> list[list[dict]]:
        """Objects in each image: the ``n`` cells most likely occupied (or, with ``n=None``, every cell
        whose most likely state is occupied), each ``{"shape", "color", "size", "position", "row", "col",
        "p_occupied"}``, ordered by cell."""
        out = self(x)
        p_occ = 1 - out["occupancy"].softmax(-1)[..., 0]  # [B, cells]
        counts = [n] * len(x) if n is None or isinstance(n, int) else list(n)
        g = self.config.grid
        result = []
        for i, k in enumerate(counts):
            if k is None:
                cells = [c for c in range(g * g) if out["occupancy"][i, c].argmax() != 0]
            else:
                cells = sorted(p_occ[i].topk(min(k, g * g)).indices.tolist())
            objs = []
            for c in cells:
                row, col = divmod(c, g)
                objs.append(
                    {
                        "shape": self.config.shapes[out["shape"][i, c].argmax()],
                        "color": self.config.colors[out["color"][i, c].argmax()],
                        "size": self.config.sizes[out["occupancy"][i, c, 1:].argmax()],
                        "position": POSITIONS[c] if g == 3 else f"{row},{col}",
                        "row": row,
                        "col": col,
                        "p_occupied": round(float(p_occ[i, c]), 4),
                    }
                )
            result.append(objs)
        return result


def judge_loss(model: ShapesJudge, out: dict[str, Tensor], tgt: dict[str, Tensor]) -> dict[str, Tensor]:
    parts = {k: F.cross_entropy(out[k].flatten(0, 1), tgt[k].flatten(), ignore_index=-100) for k in out}
    parts["loss"] = parts["occupancy"] + parts["shape"] + parts["color"]
    return parts


def object_accuracy(model: ShapesJudge, x: Tensor, metas: Sequence[dict]) -> dict[str, Tensor]:
    """Per-object accuracy of each attribute against the ground-truth JSON (n = objects in the image)."""
    preds = model.predict(x, [len(m["objects"]) for m in metas])
    hits = {a: [] for a in (*ATTRIBUTES, "all")}
    for pred, meta in zip(preds, metas):
        for o, p in _match(pred, meta["objects"]):
            ok = {a: (p is not None and p[a] == o[a]) for a in ATTRIBUTES}
            for a in ATTRIBUTES:
                hits[a].append(ok[a])
            hits["all"].append(all(ok.values()))
    return {a: torch.tensor(v, dtype=torch.float) for a, v in hits.items()}


def _match(pred: list[dict], want: list[dict]) -> list[tuple[dict, dict | None]]:
    """Pair requested objects with predicted ones, the assignment that agrees on most attributes."""
    if not want:
        return []
    best, best_score = None, -1
    slots = pred + [None] * max(0, len(want) - len(pred))
    for perm in itertools.permutations(slots, len(want)):
        score = sum(p is not None and p[a] == o.get(a) for o, p in zip(want, perm) for a in ATTRIBUTES)
        if "relation" in want[0] and len(perm) == 2 and None not in perm:  # two alike objects: the order that fits
            score += relation(perm[0], perm[1]) == want[0]["relation"]
        if score > best_score:
            best, best_score = list(zip(want, perm)), score
    return best


# ---------------------------------------------------------------------------------------------
# Scoring images against prompts


class Judge:
    """Scores images against the attributes their prompts ask for (see ``score``)."""

    def __init__(self, model: ShapesJudge, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> Judge:
        return cls(load_model(path, "judge"), device)

    def _tensor(self, images: Tensor | Sequence[Image.Image], value_range: tuple[float, float]) -> Tensor:
        if isinstance(images, Tensor):
            x = images.float()
            if images.dtype == torch.uint8:
                x = x / 255
            else:
                lo, hi = value_range
                x = (x - lo) / (hi - lo)
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
            return x.clamp(0, 1)
        s = self.model.config.image_size
        rows = []
        for im in images:
            im = im.convert("RGB")
            if im.size != (s, s):
                im = im.resize((s, s), Image.Resampling.BICUBIC)
            rows.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(s, s, 3).permute(2, 0, 1))
        return torch.stack(rows).float() / 255

    @torch.no_grad()
    def score(
        self,
        images: Tensor | Sequence[Image.Image],
        prompts: Sequence[str],
        value_range: tuple[float, float] = (0.0, 1.0),
        batch_size: int = 256,
    ) -> dict:
        """Accuracy of each requested attribute (shape, color, size, position, relation) over the
        images whose prompt asks for it (right when every object asking for it got it right), and
        ``all``: the fraction of images whose every requested attribute is right. Prompts the parser cannot read are counted in ``unparsed`` and left out.

        Returns ``{"images": n, "unparsed": k, "accuracy": {attr: float | None}, "counts": {attr: int},
        "per_image": [{"prompt", "requested", "predicted", "correct": {attr: bool}, "all": bool}]}``.
        """
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        x = self._tensor(images, value_range)
        wanted = [parse_caption(p) for p in prompts]
        keep = [i for i, w in enumerate(wanted) if w]
        per_image = []
        for start in range(0, len(keep), batch_size):
            idx = keep[start : start + batch_size]
            preds = self.model.predict(x[idx].to(self.device), [len(wanted[i]) for i in idx])
            for i, pred in zip(idx, preds):
                per_image.append(_score_one(prompts[i], wanted[i], pred))
        keys = (*ATTRIBUTES, "relation")
        counts = {a: sum(a in r["correct"] for r in per_image) for a in keys}
        acc = {
            a: (sum(r["correct"][a] for r in per_image if a in r["correct"]) / counts[a] if counts[a] else None)
            for a in keys
        }
        counts["all"] = len(per_image)
        acc["all"] = sum(r["all"] for r in per_image) / len(per_image) if per_image else None
        return {
            "images": len(per_image),
            "unparsed": len(prompts) - len(keep),
            "accuracy": acc,
            "counts": counts,
            "per_image": per_image,
        }


def _score_one(prompt: str, want: list[dict], pred: list[dict]) -> dict:
    pairs = _match(pred, want)
    correct: dict[str, list[bool]] = {}
    for o, p in pairs:
        for a in ATTRIBUTES:
            if a in o:
                correct.setdefault(a, []).append(p is not None and p[a] == o[a])
    if "relation" in want[0] and len(pairs) == 2 and all(p is not None for _, p in pairs):
        correct["relation"] = [relation(pairs[0][1], pairs[1][1]) == want[0]["relation"]]
    flat = {a: all(v) for a, v in correct.items()}
    strip = lambda o: {k: v for k, v in o.items() if k not in ("row", "col")}
    return {
        "prompt": prompt,
        "requested": [strip(o) for o in want],
        # in the order of the requested objects they were matched to (None: nothing left to match)
        "predicted": [strip(p) if p is not None else None for _, p in pairs],
        "correct": flat,
        "all": all(flat.values()),
    }


# ---------------------------------------------------------------------------------------------
# Training


class JudgeModule(ModelModule):
    """Trains ``ShapesJudge`` on shapes-world shards (use ``normalize: unit`` in the DataModule)."""

    def __init__(
        self,
        image_size: int = 64,
        width: int = 32,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        warmup_steps: int = 50,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = ShapesJudge(JudgeConfig(image_size=image_size, width=width))

    def _step(self, batch: dict, stage: str) -> Tensor:
        x = batch["image"]  # [B, 3, H, W] in [0, 1]
        out = self.model(x)
        parts = judge_loss(self.model, out, self.model.targets(batch["meta"], x.device))
        for k, v in parts.items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "loss", batch_size=len(x), sync_dist=stage != "train")
        return parts["loss"]

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def _eval(self, batch: dict, stage: str) -> None:
        self._step(batch, stage)
        acc = object_accuracy(self.model, batch["image"], batch["meta"])
        for a, v in acc.items():
            self.log(f"{stage}/acc_{a}", v.mean(), prog_bar=a == "all", batch_size=len(v), sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval(batch, "val" if dataloader_idx == 0 else "heldout")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval(batch, "test")

    def configure_optimizers(self):
        h = self.hparams
        return self.adamw_with_schedule(h.lr, h.weight_decay, (0.9, 0.999), h.warmup_steps, min_lr_ratio=0.0)


# ---------------------------------------------------------------------------------------------
# CLI


def read_folder(directory: Path) -> tuple[list[Image.Image], list[str], list[str], int, int]:
    """Images with a sidecar prompt (``x.png`` + ``x.txt``), opened by ``multimodal.images`` (EXIF orientation,
    alpha on black, the suite's one pixel limit). Returns ``(images, prompts, names, skipped, unreadable)``:
    an image without a prompt file is skipped with a ``warning:`` line; an image or prompt that cannot be read
    (damaged, too large, prompt not UTF-8) gets an ``error:`` line and is counted in ``unreadable``."""
    images, prompts, names, skipped, unreadable = [], [], [], 0, 0
    for p in sorted(directory.iterdir()):
        if not p.is_file() or not is_image_path(p):
            continue
        txt = p.with_suffix(".txt")
        if not txt.is_file():
            print(f"warning: {p.name}: no prompt file {txt.name}; skipped", file=sys.stderr)
            skipped += 1
            continue
        try:
            prompt = txt.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as e:
            warn(f"{txt}: not UTF-8 text (byte {e.start}); {p.name} skipped")
            unreadable += 1
            continue
        except OSError as e:
            warn(f"{txt}: cannot read ({e.strerror or type(e).__name__}); {p.name} skipped")
            unreadable += 1
            continue
        try:
            image = open_image(p)
        except ImageError as e:
            warn(e)
            unreadable += 1
            continue
        images.append(image)
        prompts.append(prompt)
        names.append(p.name)
    return images, prompts, names, skipped, unreadable


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m data.judge",
        description="Score images of the shapes world against their prompts (x.png + x.txt) with the attribute judge.",
        epilog="Exit code 0 when every image with a prompt was scored, 1 when some could not be read (each gets an "
        "error line; the others are still scored), 2 for bad flags, a bad checkpoint or no scorable image.",
    )
    ap.add_argument("directory", help="folder of images with sidecar .txt prompts")
    ap.add_argument("--checkpoint", required=True, help="judge export directory or Lightning .ckpt")
    ap.add_argument("--json", action="store_true", help="print the full result as JSON (with per-image details)")
    add_device_flag(ap)
    args = ap.parse_args(argv)
    directory = Path(args.directory)
    if not directory.exists():
        return fail(f"{directory}: no such directory")
    if not directory.is_dir():
        return fail(f"{directory}: not a directory (pass the folder holding the images and their .txt prompts)")
    try:
        judge = Judge.from_checkpoint(args.checkpoint, resolve_device(args.device))
    except (UsageError, CheckpointError) as e:
        return fail(e)
    images, prompts, names, skipped, unreadable = read_folder(directory)
    if not images:
        return fail(f"{directory}: no readable images with a .txt prompt found")
    result = judge.score(images, prompts)
    for name, row in zip([n for n, p in zip(names, prompts) if parse_caption(p)], result["per_image"]):
        row["file"] = name
    result["skipped"] = skipped
    result["unreadable"] = unreadable
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['images']} images scored ({skipped} without a prompt skipped, {unreadable} unreadable, "
            f"{result['unparsed']} prompts not understood)"
        )
        for a, v in result["accuracy"].items():
            if v is not None:
                print(f"  {a:9s} {v:7.2%}  ({result['counts'][a]} requested)")
    return 1 if unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
