"""Turn a folder of captioned images into webdataset shards (the layout ``data.shapes`` writes).

    python -m data.shards IMAGES --out DIR                       # x.jpg + x.txt sidecar captions
    python -m data.shards IMAGES --captions list.csv --out DIR   # CSV / JSONL with path + caption

Writes ``DIR/<prefix>-000000.tar ...`` with ``<key>.<jpg|png|webp>`` (the original bytes, checked to
decode), ``<key>.txt`` and ``<key>.json`` (``{"source": path, "caption": ..., other CSV columns}``),
and ``DIR/<prefix>-summary.json``. Unreadable images and missing captions are skipped with a warning
and counted.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from multimodal.images import ImageError, image_format

IMAGE_EXTS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}


def tar_damage(path: str | Path) -> str | None:
    """Why the local, uncompressed tar shard ``path`` is damaged (cut short, corrupt header, unreadable), or
    ``None`` when every member is whole and the end-of-archive marker is there (other files: ``None``, unchecked).
    Reads only the member headers (a seek per member), cheap beside reading the shard.

    Readers stream shards, and a stream that stops early looks like a short shard: this names the shard whose
    remaining samples were lost."""
    import tarfile

    path = Path(path)
    if path.suffix != ".tar" or not path.is_file():
        return None
    members = 0
    try:
        size = path.stat().st_size
        with tarfile.open(path, "r:") as tf:  # not the stream mode, which stops silently at a cut
            while (info := tf.next()) is not None:
                members += 1
                if info.offset_data + info.size > size:
                    raise tarfile.ReadError(f"member {info.name} cut short")
            tf.fileobj.seek(tf.offset)
            if len(tf.fileobj.read(tarfile.BLOCKSIZE)) < tarfile.BLOCKSIZE:  # a whole tar ends in zero blocks
                raise tarfile.ReadError("no end-of-archive marker: the file was cut short")
    except (tarfile.TarError, OSError, EOFError) as e:
        where = f"after {members} whole members" if members else "at its start"
        return f"damaged or truncated {where}: {str(e).splitlines()[0][:80] or type(e).__name__}"
    return None


def _sidecar_items(src: Path) -> Iterator[tuple[Path, str | None, dict]]:
    for p in sorted(src.rglob("*")):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file():
            txt = p.with_suffix(".txt")
            yield p, (txt.read_text(encoding="utf-8", errors="replace").strip() if txt.is_file() else None), {}


def _table_items(src: Path, table: Path, path_col: str, caption_col: str) -> Iterator[tuple[Path, str | None, dict]]:
    if table.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(table.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    warnings.warn(f"{table.name}:{n}: not valid JSON; skipped", stacklevel=2)
                    rows.append({})
    else:
        with table.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, dialect="excel-tab" if table.suffix.lower() == ".tsv" else "excel"))
        if rows and (path_col not in rows[0] or caption_col not in rows[0]):
            raise ValueError(f"{table}: needs columns {path_col!r} and {caption_col!r}, has {list(rows[0])}")
    for row in rows:
        rel = row.get(path_col)
        if not rel:
            yield Path("?"), None, {}
            continue
        p = Path(rel)
        cap = row.get(caption_col)
        extra = {k: v for k, v in row.items() if k not in (path_col, caption_col)}
        yield (p if p.is_absolute() else src / p), (str(cap).strip() if cap is not None else None), extra


def _check_image(data: bytes, name: str) -> str:
    """The member extension for valid image bytes; raises ``ImageError`` for anything that does not fully decode
    or is over the suite's one pixel limit (``multimodal.images``)."""
    fmt = image_format(data, name)
    ext = {"jpeg": "jpg", "png": "png", "webp": "webp"}.get(fmt)
    if ext is None:
        raise ImageError(f"{name}: unsupported image format {fmt or '?'} (png, jpeg or webp)")
    return ext


def write_folder(
    src: str | Path,
    out: str | Path,
    captions: str | Path | None = None,
    prefix: str = "shard",
    shard_size: int = 1000,
    path_column: str = "path",
    caption_column: str = "caption",
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    import webdataset as wds
    from tqdm import tqdm

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such directory")
    if captions is not None and not Path(captions).is_file():
        raise FileNotFoundError(f"{captions}: no such file")
    out.mkdir(parents=True, exist_ok=True)
    old = [p for p in out.glob(f"{prefix}-*.tar") if re.fullmatch(rf"{re.escape(prefix)}-\d{{6}}\.tar", p.name)]
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds {len(old)} {prefix}-*.tar shards; pass --overwrite to replace them")
    for p in old:
        p.unlink()
    items = list(
        _sidecar_items(src) if captions is None else _table_items(src, Path(captions), path_column, caption_column)
    )
    written, skipped, reasons = 0, 0, {}
    start = time.perf_counter()

    def skip(path: Path, why: str) -> None:
        nonlocal skipped
        skipped += 1
        reasons[why] = reasons.get(why, 0) + 1
        warnings.warn(f"{path}: {why}; skipped", stacklevel=3)

    with wds.ShardWriter(str(out / f"{prefix}-%06d.tar"), maxcount=shard_size, verbose=0, mtime=0.0) as sink:
        for path, caption, extra in tqdm(items, desc="shards", unit="img", disable=not progress, file=sys.stderr):
            if not caption:
                skip(path, "no caption")
                continue
            try:
                data = path.read_bytes()
                ext = _check_image(data, str(path))
            except ImageError as e:
                skip(path, str(e).removeprefix(f"{path}: "))
                continue
            except OSError as e:
                skip(path, f"unreadable file ({e.strerror or type(e).__name__})")
                continue
            try:
                source = str(path.relative_to(src))
            except ValueError:
                source = str(path)
            meta = {"source": source, "caption": caption, **extra}
            sink.write(
                {"__key__": f"{written:09d}", ext: data, "txt": caption.encode(), "json": json.dumps(meta).encode()}
            )
            written += 1
    seconds = time.perf_counter() - start
    shards = sorted(
        p.name for p in out.glob(f"{prefix}-*.tar") if re.fullmatch(rf"{re.escape(prefix)}-\d{{6}}\.tar", p.name)
    )
    if written == 0:
        for name in shards:  # ShardWriter leaves an empty tar behind
            (out / name).unlink()
        shards = []
    summary = {
        "source": str(src),
        "captions": str(captions) if captions else "sidecar .txt",
        "count": written,
        "skipped": skipped,
        "skipped_reasons": reasons,
        "shards": shards,
        "shard_size": shard_size,
        "seconds": round(seconds, 3),
    }
    (out / f"{prefix}-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m data.shards", description="Write webdataset shards from a folder of captioned images."
    )
    ap.add_argument("source", help="folder of images (with x.txt sidecar captions unless --captions is given)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--captions", help="CSV / TSV / JSONL listing image path (relative to SOURCE) and caption")
    ap.add_argument("--path-column", default="path")
    ap.add_argument("--caption-column", default="caption")
    ap.add_argument("--prefix", default="shard", help="shard name prefix (default: shard)")
    ap.add_argument("--shard-size", type=int, default=1000, help="samples per tar file")
    ap.add_argument("--overwrite", action="store_true", help="replace existing <prefix>-*.tar shards in --out")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = ap.parse_args(argv)
    if args.shard_size < 1:
        print("error: --shard-size must be positive", file=sys.stderr)
        return 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = write_folder(
                args.source,
                args.out,
                args.captions,
                args.prefix,
                args.shard_size,
                args.path_column,
                args.caption_column,
                args.overwrite,
                progress=not args.no_progress,
            )
        except (FileNotFoundError, FileExistsError, ValueError, OSError, csv.Error) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    for w in caught[:20]:
        print(f"warning: {w.message}", file=sys.stderr)
    if len(caught) > 20:
        print(f"warning: ... and {len(caught) - 20} more", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"wrote {summary['count']} samples in {len(summary['shards'])} shards to {args.out} ({summary['skipped']} skipped)"
        )
    if summary["count"] == 0:
        print("error: no usable image + caption pairs found", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
