"""``python -m dalle.vae reconstruct | tokenize | convert``: the dVAE's command-line tools."""

from __future__ import annotations

import argparse
import glob
import io
import json
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dalle.vae.model import DiscreteVAE, load_image_tokenizer, psnr
from dalle.vae.openai import convert_openai_state, load_openai_state
from data.shards import tar_damage
from multimodal.checkpoint import CheckpointError, save_export
from multimodal.cli import UsageError, fail, resolve_device, warn
from multimodal.images import ImageError, image_grid, is_image_path, load_image, save_png

CODES_MEMBER = "codes.npy"


def _load_vae(path: str, device: torch.device) -> DiscreteVAE:
    return load_image_tokenizer(path).to(device).eval()


def cmd_reconstruct(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    model = _load_vae(args.checkpoint, device)
    size = args.size or model.config.image_size
    if size % model.config.downsample:
        raise UsageError(f"--size {size} is not a multiple of the model's downsampling {model.config.downsample}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: expected a .png path")
    images = torch.stack([load_image(p, size) for p in args.images]).to(device)
    with torch.inference_mode():
        recon, ids = [], []
        for chunk in images.split(args.batch_size):
            i = model.encode(chunk)
            ids.append(i)
            recon.append(model.decode(i))
        recon, ids = torch.cat(recon), torch.cat(ids)
    scores = psnr(recon, images).tolist()
    save_png(image_grid([images, recon]), out)
    result = {
        "checkpoint": str(args.checkpoint),
        "grid": str(out),
        "image_size": size,
        "codes": list(ids.shape[1:]),
        "images": [
            {"path": str(p), "psnr": round(s, 3), "distinct_codes": int(i.unique().numel())}
            for p, s, i in zip(args.images, scores, ids)
        ],
        "mean_psnr": round(sum(scores) / len(scores), 3),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for r in result["images"]:
            print(f"{r['psnr']:7.2f} dB  {r['path']}")
        print(
            f"mean PSNR {result['mean_psnr']:.2f} dB over {len(scores)} images, {size}x{size} -> "
            f"{ids.shape[1]}x{ids.shape[2]} codes; grid (originals above reconstructions): {out}"
        )
    return 0


def _expand_shards(patterns: Sequence[str]) -> list[Path]:
    from braceexpand import braceexpand

    paths: list[Path] = []
    for pattern in patterns:
        for p in braceexpand(pattern):
            hits = sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
            if not hits:
                raise UsageError(f"{p}: no shard matches")
            for h in hits:
                if not Path(h).is_file():
                    raise UsageError(f"{h}: no such shard")
                paths.append(Path(h))
    if not paths:
        raise UsageError("no shards given")
    return paths


def _split_key(name: str) -> tuple[str, str]:
    # webdataset's convention: the key is the path up to the first dot of the file name
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext


def iter_tar_samples(
    path: Path, damage: list[str] | None = None
) -> Iterator[tuple[str, list[tuple[tarfile.TarInfo, bytes]]]]:
    """(key, [(member, data), ...]) for each sample of a webdataset shard, in order.

    A shard that cannot be opened, or breaks off part-way (cut short, corrupt header), yields the samples before
    the damage; why it is damaged is appended to ``damage`` (a ``UsageError`` when no list is given)."""

    def broken(why: str) -> None:
        if damage is None:
            raise UsageError(f"{path}: {why}")
        damage.append(why)

    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        broken(f"not a readable tar shard ({str(e).splitlines()[0][:120]})")
        return
    with tar:
        key, members = None, []
        try:
            for info in tar:
                if not info.isfile():
                    continue
                k, _ = _split_key(info.name)
                if key is not None and k != key:
                    yield key, members
                    members = []
                key = k
                members.append((info, tar.extractfile(info).read()))
        except (tarfile.TarError, OSError, EOFError) as e:
            broken(f"damaged tar shard ({str(e).splitlines()[0][:120]}); the samples after the damage are lost")
            return  # the sample being read when the shard broke off is incomplete: left out
        why = tar_damage(path)
        if why is not None:
            broken(f"{why}; the samples after it are lost")
            return
        if key is not None:
            yield key, members


def _write_samples(
    out_tar: tarfile.TarFile,
    pending: list[tuple[str, list, Tensor | None]],
    model: DiscreteVAE,
    device: torch.device,
    dtype: type,
    drop_images: bool,
    mtime: float,
) -> int:
    """Encode the images of ``pending`` samples in one batch; write each sample's members plus
    ``{key}.codes.npy``; returns how many were encoded. Samples without a usable image are left out
    (DALL·E cannot train on them)."""
    todo = [p for p in pending if p[2] is not None]
    if not todo:
        return 0
    batch = torch.stack([p[2] for p in todo]).to(device)
    with torch.inference_mode():
        ids = model.encode(batch).cpu().numpy().astype(dtype)  # [B, h, w]
    for (key, members, _), codes in zip(todo, ids):
        for info, data in members:
            if drop_images and is_image_path("x." + _split_key(info.name)[1]):
                continue
            out_tar.addfile(info, io.BytesIO(data))
        buf = io.BytesIO()
        np.save(buf, codes)
        info = tarfile.TarInfo(f"{key}.{CODES_MEMBER}")
        info.size, info.mtime, info.mode = buf.tell(), int(mtime), 0o644
        buf.seek(0)
        out_tar.addfile(info, buf)
    return len(todo)


def _output_shards(shards: list[Path], out_dir: Path, overwrite: bool) -> list[Path]:
    """Where each input shard's tokenized copy goes (same file name under ``out_dir``), refused before any work
    when two would collide, one would overwrite its input, or one exists without ``--overwrite``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir}: exists and is not a directory")
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise UsageError("two input shards share a file name; they would collide in --out")
    targets = [out_dir / n for n in names]
    for s, t in zip(shards, targets):
        if t.exists() and t.resolve() == s.resolve():
            raise UsageError(f"--out would overwrite the input shard {s}")
        if t.exists() and not overwrite:
            raise UsageError(f"{t} exists; pass --overwrite to replace it")
    return targets


def _sample_image(members: list, size: int, totals: dict[str, int]) -> Tensor | None:
    """The sample's image at ``size``, or ``None`` (counted as without image / unreadable): nothing to encode."""
    image_member = next((d for i, d in members if is_image_path("x." + _split_key(i.name)[1])), None)
    if image_member is None:
        totals["no_image"] += 1
        return None
    try:
        return load_image(image_member, size)
    except ImageError:
        totals["bad_image"] += 1
        return None


def _report_tokenize(
    args: argparse.Namespace,
    model: DiscreteVAE,
    size: int,
    dtype: type,
    targets: list[Path],
    totals: dict[str, int],
    damaged: list[str],
    started: float,
) -> None:
    """Write ``codes.json`` beside the shards (what a DALL·E run needs to read them) and print the summary."""
    out_dir = Path(args.out)
    manifest = {
        "checkpoint": str(args.checkpoint),
        "member": CODES_MEMBER,
        "dtype": np.dtype(dtype).name,
        "codebook_size": model.config.codebook_size,
        "image_size": size,
        "grid": [size // model.config.downsample] * 2,
        "preprocess": "shorter side resized (bicubic) then centre crop",
        "shards": [str(t) for t in targets],
        **totals,
        "damaged_shards": damaged,
        "seconds": round(time.time() - started, 2),
    }
    (out_dir / "codes.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print(
            f"encoded {totals['encoded']} of {totals['samples']} samples into {len(targets)} shards under {out_dir} "
            f"({manifest['grid'][0]}x{manifest['grid'][1]} codes as {{key}}.{CODES_MEMBER}; skipped "
            f"{totals['no_image']} without image, {totals['bad_image']} unreadable"
            + (f"; {len(damaged)} damaged shards, named above)" if damaged else ")")
        )


def cmd_tokenize(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    shards = _expand_shards(args.shards)
    out_dir = Path(args.out)
    targets = _output_shards(shards, out_dir, args.overwrite)
    device = resolve_device(args.device)
    model = _load_vae(args.checkpoint, device)
    size = args.size or model.config.image_size
    if size % model.config.downsample:
        raise UsageError(f"--size {size} is not a multiple of the model's downsampling {model.config.downsample}")
    dtype = np.int16 if model.config.codebook_size <= np.iinfo(np.int16).max + 1 else np.int32
    out_dir.mkdir(parents=True, exist_ok=True)
    totals = {"samples": 0, "encoded": 0, "no_image": 0, "bad_image": 0}
    started = time.time()
    bar = tqdm(desc="tokenize", unit="img", disable=args.no_progress or args.json or not sys.stderr.isatty())
    damaged: list[str] = []
    messages: list[str] = []
    for shard, target in zip(shards, targets):
        samples_before = totals["samples"]
        tmp = target.with_name(target.name + ".tmp")
        try:
            with tarfile.open(tmp, "w") as out_tar:
                pending: list[tuple[str, list, Tensor | None]] = []

                damage: list[str] = []
                for key, members in iter_tar_samples(shard, damage):
                    totals["samples"] += 1
                    pending.append((key, members, _sample_image(members, size, totals)))
                    if len(pending) >= args.batch_size:
                        n = _write_samples(out_tar, pending, model, device, dtype, args.drop_images, started)
                        bar.update(n)
                        totals["encoded"] += n
                        pending = []
                n = _write_samples(out_tar, pending, model, device, dtype, args.drop_images, started)
                bar.update(n)
                totals["encoded"] += n
            if damage:
                damaged.append(str(shard))
                messages.append(f"{shard}: {damage[0]}")
            if damage and totals["samples"] == samples_before:
                continue  # nothing could be read: no output shard
            tmp.replace(target)
        finally:
            if tmp.exists():
                tmp.unlink()
    bar.close()
    if damaged and totals["samples"] == 0:
        for m in messages[:-1]:
            warn(m)
        raise UsageError(messages[-1])  # nothing at all could be read: no output, bad input
    for m in messages:
        warn(m)
    _report_tokenize(args, model, size, dtype, targets, totals, damaged, started)
    return 1 if damaged else 0


def cmd_convert(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / "config.json").exists() and not args.overwrite:
        raise UsageError(f"{out} already holds a model export; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    enc = load_openai_state(args.encoder, args.trust_pickle)
    dec = load_openai_state(args.decoder, args.trust_pickle)
    model = convert_openai_state(enc, dec, image_size=args.image_size)
    save_export(model, out, {"source": "openai dall_e", "encoder": str(args.encoder), "decoder": str(args.decoder)})
    c = model.config
    info = {"out": str(out), "config": asdict(c), "parameters": sum(p.numel() for p in model.parameters())}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(
            f"wrote {out}: {c.codebook_size} codes, {c.downsample}x down, hidden {c.hidden}, "
            f"{c.blocks_per_group} blocks/group, {info['parameters'] / 1e6:.1f}M parameters"
        )
    return 0


TOKENIZER_HELP = "the image tokenizer: a dVAE export directory or Lightning .ckpt, or a DALL·E's own (e.g. dalle)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dalle.vae", description="DALL·E's discrete VAE: images <-> code ids.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("reconstruct", help="encode and decode images; grid of originals above reconstructions, PSNR")
    r.add_argument("--checkpoint", required=True, help=TOKENIZER_HELP)
    r.add_argument("images", nargs="+", help="image files")
    r.add_argument("--out", required=True, help="grid PNG to write")
    r.add_argument("--size", type=int, default=None, help="resize/crop to this size (default: the model's image_size)")
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(func=cmd_reconstruct)

    t = sub.add_parser(
        "tokenize", help="write copies of webdataset shards with each image's code ids ({key}.codes.npy)"
    )
    t.add_argument("--checkpoint", required=True, help=TOKENIZER_HELP)
    t.add_argument("--shards", nargs="+", required=True, help="tar shards: paths, globs or brace patterns {000..009}")
    t.add_argument("--out", required=True, help="directory for the new shards (same file names) and codes.json")
    t.add_argument("--size", type=int, default=None, help="resize/crop to this size (default: the model's image_size)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--drop-images", action="store_true", help="leave the image members out of the new shards")
    t.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    t.add_argument("--json", action="store_true", help="print the manifest as JSON")
    t.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    t.set_defaults(func=cmd_tokenize)

    c = sub.add_parser("convert", help="convert OpenAI's dVAE (dall_e Encoder + Decoder) to our export format")
    c.add_argument("--encoder", required=True, help="encoder.pkl or a state-dict file of a dall_e Encoder")
    c.add_argument("--decoder", required=True, help="decoder.pkl or a state-dict file of a dall_e Decoder")
    c.add_argument("--out", required=True, help="export directory to write")
    c.add_argument("--image-size", type=int, default=256, help="image_size recorded in the config (paper: 256)")
    c.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling OpenAI's released .pkl files (whole pickled modules: loading runs code from the file)",
    )
    c.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_convert)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, CheckpointError, ValueError) as e:
        return fail(e)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
