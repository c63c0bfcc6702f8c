"""Evaluate a CLIP model: zero-shot classification and image↔text retrieval.

    python -m clip.evaluate --checkpoint runs/clip-shapes photos/            # one sub-folder per class
    python -m clip.evaluate --checkpoint runs/clip-shapes --labels shapes 'runs/data/clip-shapes/heldout-*.tar'
    python -m clip.evaluate --checkpoint runs/clip-shapes --retrieval 'runs/data/clip-shapes/val-*.tar' --json

Zero-shot: top-1 / top-5 accuracy and mean per-class recall. Classes are the sub-folder names of an
image folder (``_`` read as a space), or for shards ``--labels`` with each sample's class taken from a
``.cls`` member (index into the labels), a ``.json`` member's ``"label"``, or its caption when that is
one of the labels; ``--labels shapes`` means the shapes world's 48 colour × shape labels, read from the
one-object images' json. Retrieval (shards with captions): image→text and text→image recall@1/5/10 over
the first ``--limit`` samples.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from clip.openclip import load_clip
from clip.pipeline import check_templates, zero_shot_classifier
from clip.zeroshot import parse_labels
from multimodal.checkpoint import CheckpointError
from multimodal.cli import add_device_flag, fail, resolve_device, warn
from multimodal.images import ImageError, is_image_path, open_image

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")


# -- metrics ------------------------------------------------------------------------------------
def classification_metrics(logits: Tensor, target: Tensor, labels: list[str]) -> dict:
    """``logits [N, K]``, ``target [N]`` → top-1, top-5, mean per-class recall (over classes present)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=-1).indices  # [N, k]
    top1 = (top[:, 0] == target).float()
    recalls = {}
    for c in target.unique().tolist():
        recalls[labels[c]] = float(top1[target == c].mean())
    return {
        "samples": int(target.numel()),
        "classes": len(labels),
        "top1": float(top1.mean()),
        "top5": float((top == target[:, None]).any(-1).float().mean()),
        "mean_per_class_recall": sum(recalls.values()) / max(1, len(recalls)),
        "per_class_recall": recalls,
    }


def retrieval_metrics(image: Tensor, text: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Recall@k of paired ``image, text [N, E]`` (row i of each is a pair), both directions."""
    sim = image @ text.t()  # [N, N]
    target = torch.arange(sim.shape[0])
    out = {"samples": int(sim.shape[0])}
    for name, s in (("image_to_text", sim), ("text_to_image", sim.t())):
        # rank of the true pair = number of candidates scoring strictly higher
        rank = (s > s[target, target][:, None]).sum(-1)
        for k in ks:
            out[f"{name}_R@{k}"] = float((rank < k).float().mean())
    return out


# -- data ---------------------------------------------------------------------------------------
def folder_samples(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected ROOT/<class>/<images>)")
    samples = []
    for i, c in enumerate(classes):
        files = sorted(f for f in (root / c).rglob("*") if f.is_file() and is_image_path(f))
        samples.extend((f, i) for f in files)
    if not samples:
        raise ValueError(f"{root}: no images in the class folders")
    return [c.replace("_", " ") for c in classes], samples


def resolve_shards(spec: list[str]) -> list[str]:
    from data.datamodule import expand_urls

    urls = []
    for s in spec:
        urls.extend(expand_urls(s))
    if not urls:
        raise ValueError(f"no shards match {' '.join(spec)}")
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        raise ValueError(f"{missing[0]}: no such shard")
    return urls


class DamagedShard(Exception):
    """A shard whose stream broke off; the message names it."""


def shard_samples(urls: list[str], limit: int | None):
    """Yield ``(key, PIL image | ImageError | DamagedShard, caption | None, meta dict, cls | None)`` from webdataset
    shards. A damaged shard (cut short, corrupt) is yielded once as a ``DamagedShard`` (its samples before the
    damage are yielded as usual) and reading goes on with the next shard."""
    import webdataset as wds

    from data.shards import tar_damage

    broken: list[DamagedShard] = []

    def handler(exn: Exception) -> bool:
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and a != str(exn.args[0])), "a shard")
        broken.append(DamagedShard(f"{url}: damaged shard ({str(exn.args[0] if exn.args else exn)[:120]}); skipped"))
        return True

    def damage(url: str | None) -> DamagedShard | None:
        why = tar_damage(url) if url is not None and "://" not in url and not url.startswith("pipe:") else None
        return DamagedShard(f"{url}: {why}; its remaining samples are lost") if why else None

    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False, handler=handler)
    url = None
    n = 0
    for sample in ds:
        while broken:
            yield "?", broken.pop(0), None, {}, None
        if sample.get("__url__") != url:
            if (d := damage(url)) is not None:
                yield "?", d, None, {}, None
            url = sample.get("__url__")
        if limit is not None and n >= limit:
            return
        n += 1
        key = sample.get("__key__", "?")
        ext = next((e for e in ("png", "jpg", "jpeg", "webp") if e in sample), None)
        image: Image.Image | ImageError
        if ext is None:
            image = ImageError(f"{key}: no image member")
        else:
            try:
                image = open_image(sample[ext], name=f"{key}.{ext}")
            except ImageError as e:
                image = e
        caption = sample["txt"].decode("utf-8", "replace").strip() if "txt" in sample else None
        try:
            meta = json.loads(sample["json"]) if "json" in sample else {}
        except ValueError:
            meta = {}
        try:
            cls = int(sample["cls"].decode().strip()) if "cls" in sample else None
        except (ValueError, UnicodeDecodeError):
            cls = None
        yield key, image, caption, meta, cls
    while broken:
        yield "?", broken.pop(0), None, {}, None
    if (d := damage(url)) is not None:
        yield "?", d, None, {}, None


# -- evaluation ---------------------------------------------------------------------------------
def evaluate(args: argparse.Namespace) -> dict:
    model = load_clip(args.checkpoint, args.model, args.pretrained).to(resolve_device(args.device)).eval()
    templates = args.template
    if templates is None and args.labels == "shapes":
        templates = ["{article} {}"]
    result: dict = {"errors": 0}
    sources = [Path(s) for s in args.data]
    if len(sources) == 1 and sources[0].is_dir() and not any(sources[0].glob("*.tar")):
        labels, samples = folder_samples(sources[0])
        images, targets = [], []
        for path, c in tqdm(samples, desc="images", unit="img", file=sys.stderr, disable=args.quiet):
            try:
                images.append(open_image(path))
                targets.append(c)
            except ImageError as e:
                warn(e)
                result["errors"] += 1
        feats = model.embed_images(images, args.batch_size).cpu()
        classes = zero_shot_classifier(model, labels, templates).cpu()
        result["zeroshot"] = classification_metrics(feats @ classes.t(), torch.tensor(targets), labels)
        return result

    labels: list[str] | None = None
    if args.labels == "shapes":
        from clip.module import shapes_labels

        labels = shapes_labels("all")
    elif args.labels:
        labels = parse_labels(args.labels)
    index = {label: i for i, label in enumerate(labels or [])}
    images, captions, targets = [], [], []
    urls = resolve_shards(args.data)
    for _key, image, caption, meta, cls in tqdm(
        shard_samples(urls, args.limit), desc="samples", unit="img", file=sys.stderr, disable=args.quiet
    ):
        if isinstance(image, (ImageError, DamagedShard)):
            warn(image)
            result["errors"] += 1
            continue
        target = None
        if labels is not None:
            if args.labels == "shapes":
                from clip.module import shapes_label_of

                target = index.get(shapes_label_of(meta) or "")
            elif cls is not None:
                target = cls if 0 <= cls < len(labels) else None
            elif isinstance(meta.get("label"), str):
                target = index.get(meta["label"])
            elif caption is not None:
                target = index.get(caption)
        images.append(image)
        captions.append(caption)
        targets.append(target)
    if not images:
        raise ValueError("no readable samples")
    feats = model.embed_images(images, args.batch_size).cpu()
    if labels is not None:
        keep = [i for i, t in enumerate(targets) if t is not None]
        if not keep:
            raise ValueError("no sample has a class among --labels (.cls, json 'label', caption, or shapes json)")
        classes = zero_shot_classifier(model, labels, templates).cpu()
        result["zeroshot"] = classification_metrics(
            feats[keep] @ classes.t(), torch.tensor([targets[i] for i in keep]), labels
        )
        result["zeroshot"]["skipped_unlabelled"] = len(targets) - len(keep)
    if args.retrieval:
        pairs = [i for i, c in enumerate(captions) if c]
        if not pairs:
            raise ValueError("--retrieval needs captions (.txt members)")
        text = model.embed_texts([captions[i] for i in pairs]).cpu()
        result["retrieval"] = retrieval_metrics(feats[pairs], text)
    if labels is None and not args.retrieval:
        raise ValueError("shards: pass --labels (zero-shot) and/or --retrieval")
    return result


def _print(result: dict) -> None:
    if "zeroshot" in result:
        z = result["zeroshot"]
        print(
            f"zero-shot: top-1 {z['top1']:.4f}  top-5 {z['top5']:.4f}  mean per-class recall "
            f"{z['mean_per_class_recall']:.4f}  ({z['samples']} images, {z['classes']} classes)"
        )
    if "retrieval" in result:
        r = result["retrieval"]
        for d in ("image_to_text", "text_to_image"):
            print(f"{d.replace('_', ' ')}: " + "  ".join(f"R@{k} {r[f'{d}_R@{k}']:.4f}" for k in (1, 5, 10)))
        print(f"({r['samples']} pairs)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clip.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("data", nargs="+", help="an image folder (one sub-folder per class) or webdataset shards")
    p.add_argument("--checkpoint", help="our export dir / Lightning .ckpt, or an open_clip weights file with --model")
    p.add_argument("--model", help="open_clip model name or config json ('shapes' for the demo model)")
    p.add_argument("--pretrained", help="open_clip pretrained tag")
    p.add_argument("--labels", help="comma-separated class labels for shards, or 'shapes'")
    p.add_argument(
        "--template", action="append", help="prompt template with {} (repeatable); default: 80 ImageNet templates"
    )
    p.add_argument("--retrieval", action="store_true", help="image<->text recall@1/5/10 on shards with captions")
    p.add_argument("--limit", type=int, default=5000, help="at most this many shard samples (default 5000)")
    p.add_argument("--batch-size", type=int, default=64)
    add_device_flag(p)
    p.add_argument("--json", action="store_true", help="print the result as one JSON line")
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    try:
        check_templates(args.template)
        if args.limit is not None and args.limit < 1:
            raise ValueError("--limit must be at least 1")
        result = evaluate(args)
    except (ValueError, CheckpointError, OSError, KeyError, IndexError) as e:
        return fail(e)
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
