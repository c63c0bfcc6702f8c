"""Zero-shot image classification with CLIP: which of the given labels does each image show?

    python -m clip.zeroshot --labels cat,dog image.jpg photos/
    python -m clip.zeroshot --checkpoint runs/clip-shapes --labels "red circle,blue square" img.png --json
    python -m clip.zeroshot --model ViT-B-32 --checkpoint open_clip_pytorch_model.bin --labels cat,dog a.jpg

Each label is put in every prompt template (by default OpenAI's 80 ImageNet templates, as open_clip
ships them), the normalised text embeddings of a label are averaged and normalised again; an image's
probabilities are ``softmax(100 · image · labelsᵀ)`` (``clip.pipeline``, the one zero-shot implementation).
Text embeddings are computed once; images are read and encoded in batches.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from clip.openclip import DEFAULT_MODEL, DEFAULT_PRETRAINED, load_clip
from clip.pipeline import check_labels, check_templates, label_probs, zero_shot_classifier
from multimodal.checkpoint import SHAPES_ONLY_NOTE, CheckpointError
from multimodal.cli import (
    add_device_flag,
    add_precision_flag,
    add_progress_flag,
    fail,
    resolve_device,
    resolve_precision,
    warn,
)
from multimodal.images import ImageError, expand_image_paths, preprocess


# -- CLI ----------------------------------------------------------------------------------------
def parse_labels(text: str | None, file: str | None = None) -> list[str]:
    """``--labels a,b`` (``\\,`` for a comma inside a label) or ``--labels-file`` (one label per line)."""
    if (text is None) == (file is None):
        raise ValueError("give the labels with --labels a,b or --labels-file FILE (one of the two)")
    if file is not None:
        try:
            raw = Path(file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"--labels-file {file}: {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
        labels = [x.strip() for x in raw if x.strip()]
    else:
        parts = text.replace("\\,", "\0").split(",")
        labels = [x.replace("\0", ",").strip() for x in parts]
        if not text.strip() or not all(labels):
            raise ValueError("--labels needs a comma-separated list of non-empty labels, e.g. --labels cat,dog")
    return check_labels(labels, relative=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clip.zeroshot",
        description="Zero-shot classification of images among the given labels with a CLIP model.",
        epilog=(
            f"With no model flags: open_clip {DEFAULT_MODEL} {DEFAULT_PRETRAINED} (downloaded once; needs network the "
            "first time). --model shapes or --checkpoint clip: the suite's packaged demo model of the shapes world. "
            "Exit code 0 when every image was classified, 1 when some could not be read (each gets an error line; "
            "the others are still classified), 2 for bad flags or a bad checkpoint."
        ),
    )
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--labels", help="comma-separated labels, e.g. cat,dog (write \\, for a comma inside a label)")
    p.add_argument("--labels-file", help="a UTF-8 text file with one label per line (instead of --labels)")
    p.add_argument("--checkpoint", help="our export dir / Lightning .ckpt, or an open_clip weights file with --model")
    p.add_argument(
        "--model", help="open_clip model name (ViT-B-32, ViT-L-14, ...) or config json; 'shapes' for the demo"
    )
    p.add_argument("--pretrained", help=f"open_clip pretrained tag (default {DEFAULT_PRETRAINED} for {DEFAULT_MODEL})")
    p.add_argument(
        "--template",
        action="append",
        help="prompt template with {} for the label (repeatable); default: OpenAI's 80 ImageNet templates",
    )
    p.add_argument("--top-k", type=int, default=None, help="print only the N most probable labels")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    add_device_flag(p)
    add_precision_flag(p)
    add_progress_flag(p)
    p.add_argument("--json", action="store_true", help='one line per image: {"image": PATH, "probs": {LABEL: P}}')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        labels = parse_labels(args.labels, args.labels_file)
        if args.top_k is not None and args.top_k < 1:
            raise ValueError("--top-k must be at least 1")
        if args.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        if args.pretrained and args.checkpoint:
            raise ValueError("--pretrained names open_clip's downloadable weights; with --checkpoint leave it out")
        check_templates(args.template)
        device = resolve_device(args.device)
        dtype = resolve_precision(args.precision, device)
        paths = expand_image_paths(args.images)
        if not paths:
            raise ValueError("no images found in the given folders")
        model = load_clip(args.checkpoint, args.model, args.pretrained).to(device, dtype).eval()
        if args.model == "shapes" or args.checkpoint == "clip":
            print(SHAPES_ONLY_NOTE, file=sys.stderr)
        with torch.inference_mode():
            classes = zero_shot_classifier(model, labels, args.template)  # [K, E], once
    except (ValueError, CheckpointError, OSError) as e:
        return fail(e)

    failures = 0
    quiet = args.no_progress or len(paths) <= args.batch_size  # one batch: nothing to follow
    bar = tqdm(total=len(paths), desc="images", unit="img", disable=quiet, file=sys.stderr)
    for start in range(0, len(paths), args.batch_size):
        ok: list[Path] = []
        tensors = []
        for path in paths[start : start + args.batch_size]:
            try:
                tensors.append(preprocess(path, model.config.vision.preprocess))
                ok.append(path)
            except ImageError as e:
                warn(e)
                failures += 1
        bar.update(len(paths[start : start + args.batch_size]))
        if not tensors:
            continue
        pixels = torch.stack(tensors)
        probs = label_probs(model, model.embed_images(pixels, args.batch_size, preprocessed=True), classes)
        for path, row in zip(ok, probs):
            order = row.argsort(descending=True).tolist()[: args.top_k or len(labels)]
            if args.json:
                print(json.dumps({"image": str(path), "probs": {labels[i]: round(float(row[i]), 6) for i in order}}))
            else:
                print(f"{path}: " + ", ".join(f"{labels[i]} {float(row[i]):.3f}" for i in order))
        sys.stdout.flush()
    bar.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
