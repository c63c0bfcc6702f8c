"""Where shards are and how many samples they hold: URL patterns -> shard lists, sample counts."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path


def expand_urls(urls: str | list[str]) -> list[str]:
    """``a-{000..009}.tar::b.tar`` or a list -> a flat list of shard URLs (local globs expanded too)."""
    import braceexpand

    items = urls if isinstance(urls, (list, tuple)) else str(urls).split("::")
    out: list[str] = []
    for item in items:
        for u in braceexpand.braceexpand(str(item)):
            if not re.match(r"^(https?|pipe|gs|s3):", u) and any(c in u for c in "*?["):
                out.extend(sorted(str(p) for p in Path().glob(u)) if not Path(u).is_absolute() else _abs_glob(u))
            elif not re.match(r"^[a-z0-9]+:", u) and Path(u).is_dir():
                out.extend(sorted(str(p) for p in Path(u).glob("*.tar")))
            else:
                out.append(u)
    return out


def _abs_glob(pattern: str) -> list[str]:
    p = Path(pattern)
    return sorted(str(x) for x in Path(p.anchor).glob(str(p.relative_to(p.anchor))))


def count_samples(urls: list[str]) -> int | None:
    """Samples in local shards, from our ``<split>-summary.json``, img2dataset's ``*_stats.json``, or
    the tar headers. ``None`` for remote shards (pass ``train_samples`` / ``val_samples`` then)."""
    if not urls or any(re.match(r"^[a-z0-9]+:", u) for u in urls):
        return None
    total = 0
    for u in urls:
        p = Path(u)
        stats = p.with_name(p.stem + "_stats.json")  # img2dataset
        if stats.is_file():
            try:
                total += int(json.loads(stats.read_text())["successes"])
                continue
            except (ValueError, KeyError, OSError):
                pass
        total += _count_tar(p)
    return total


def _count_tar(path: Path) -> int:
    import tarfile

    keys = set()
    try:
        with tarfile.open(path) as tf:
            for m in tf:
                if m.isfile():
                    d, _, base = m.name.rpartition("/")
                    keys.add((d, base.split(".", 1)[0]))
    except (OSError, tarfile.TarError) as e:
        warnings.warn(f"{path}: cannot count samples ({e})", stacklevel=2)
    return len(keys)
