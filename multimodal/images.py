"""The suite's one image module: every tool opens, converts, resizes and writes images through it.

- ``open_image``: any image PIL reads (RGBA, LA, palette with transparency, grayscale, 16-bit, CMYK,
  EXIF-rotated) as upright 8-bit RGB. Transparent pixels are composited on ``BACKGROUND`` (black: the
  shapes world's background, and what a model trained on it expects; a white composite turns "red circle on
  transparent" into a different picture). Images over ``MAX_IMAGE_PIXELS`` are refused from their header,
  before any pixel is decoded, without touching PIL's global ``Image.MAX_IMAGE_PIXELS``.
- ``Preprocess`` + ``preprocess``: a model's own eval transform (open_clip's ``resize_mode`` "shortest" |
  "longest" | "squash", interpolation, mean / std), built on torchvision's functional ops exactly as
  open_clip's transform is.
- tensors <-> PIL (``to_tensor``, ``to_pil``, ``pil_batch``), ``image_grid`` / ``save_png`` (atomic, unique
  temporary name), ``png_bytes`` (in memory), ``grid_png`` (labelled grid with frames), ``gallery_png`` (labelled
  images in columns), ``bar_chart_png``.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torch import Tensor

# What the suite reads as images, in folders and shards (lower-case suffixes, with the dot).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"})
# Refuse images over this many pixels (a 8000 x 8000 photo); PIL's own limit (89M warn, 179M error) is global.
MAX_IMAGE_PIXELS = 64_000_000
T = TypeVar("T")
# Transparent pixels are composited on this colour (see the module docstring).
BACKGROUND = (0, 0, 0)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("shortest", "longest", "squash")


class ImageError(ValueError):
    """An input that cannot be used as an image; the message is one line naming it."""


ImageSource = str | os.PathLike | bytes | Image.Image


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def expand_image_paths(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; folders -> their image files (recursively, sorted)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_path(f)))
        else:
            out.append(p)
    return out


def open_image(source: ImageSource, name: str | None = None) -> Image.Image:
    """A file path, encoded bytes or a PIL image -> upright RGB (see the module docstring).

    Raises ``ImageError`` with one line naming ``name`` (default: the path, or "image bytes")."""
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source) if source.getexif() else source)
    name = name or ("image bytes" if isinstance(source, bytes) else str(source))
    return _read(source, name, lambda im: to_rgb(ImageOps.exif_transpose(im)))  # exif_transpose loads the pixels


def image_format(data: bytes, name: str = "image bytes") -> str:
    """Encoded image bytes -> their format (``"png"``, ``"jpeg"``, ``"webp"`` …) once every pixel has decoded,
    under the same pixel limit as ``open_image``; ``ImageError`` (one line naming ``name``) otherwise."""

    def fmt(im: Image.Image) -> str:
        im.load()
        return (im.format or "").lower()

    return _read(data, name, fmt)


def _read(source: str | os.PathLike | bytes, name: str, use: Callable[[Image.Image], T]) -> T:
    """Open ``source`` with PIL, refuse it from its header when over ``MAX_IMAGE_PIXELS``, return ``use(im)``;
    every failure is an ``ImageError`` naming ``name``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError("")
                return use(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{name}: refused: image too large (over {MAX_IMAGE_PIXELS // 1_000_000}M pixels; decompression bomb?)"
        ) from None
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # PIL.UnidentifiedImageError is an OSError
        msg = str(e).split("\n")[0][:160] or type(e).__name__
        raise ImageError(f"{name}: not a readable image ({msg})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16/32-bit grey scaled (not clipped) to 8 bits, alpha composited on ``BACKGROUND``."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im).astype("float64")
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        im = Image.fromarray((a / top * 255).clip(0, 255).astype("uint8"), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (*BACKGROUND, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")  # palette, grayscale, CMYK, YCbCr, 1-bit ...


# -- a model's preprocessing -------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """A model's eval-time image transform (the fields of open_clip's ``preprocess_cfg``)."""

    image_size: int
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    interpolation: str = "bicubic"  # bicubic | bilinear | nearest
    resize_mode: str = "shortest"  # shortest: resize + centre crop | longest: resize + pad | squash

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"interpolation must be bicubic | bilinear | nearest, got {self.interpolation!r}")


def resize(im: Image.Image, pre: Preprocess) -> Image.Image:
    """``im`` at ``pre.image_size`` square, as open_clip's eval transform makes it (pixels, not normalised)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    s, mode = pre.image_size, InterpolationMode(pre.interpolation)
    if im.size == (s, s):
        return im
    if pre.resize_mode == "squash":
        return TF.resize(im, [s, s], interpolation=mode)
    if pre.resize_mode == "longest":  # open_clip's ResizeKeepRatio(longest=1) then CenterCropOrPad(fill 0)
        w, h = im.size
        ratio = max(h / s, w / s)
        im = TF.resize(im, [round(h / ratio), round(w / ratio)], interpolation=mode)
        return TF.center_crop(im, [s, s])  # pads with 0 (black) where the image is smaller
    return TF.center_crop(TF.resize(im, s, interpolation=mode), [s, s])


def to_tensor(im: Image.Image) -> Tensor:
    """RGB image -> ``[3, H, W]`` float in [0, 1]."""
    return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1).contiguous()


def normalize(x: Tensor, pre: Preprocess) -> Tensor:
    """``[..., 3, H, W]`` in [0, 1] -> normalised by the model's mean / std."""
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def preprocess(source: ImageSource, pre: Preprocess) -> Tensor:
    """One image (path, bytes or PIL) -> the model's input ``[3, S, S]``."""
    return normalize(to_tensor(resize(open_image(source), pre)), pre)


def resize_tensor(x: Tensor, pre: Preprocess) -> Tensor:
    """Generated images ``[B, 3, H, W]`` in [0, 1] -> the model's input size (bicubic, antialiased), normalised."""
    s = pre.image_size
    x = x.float().clamp(0, 1)
    if x.shape[-2:] != (s, s):
        x = torch.nn.functional.interpolate(x, size=(s, s), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp(0, 1)
    return normalize(x, pre)


def load_image(source: ImageSource, size: int) -> Tensor:
    """An image -> ``[3, size, size]`` in [0, 1]: shorter side resized (bicubic), centre crop. For the dVAE."""
    return to_tensor(resize(open_image(source), Preprocess(size)))


def to_pil(image: Tensor) -> Image.Image:
    """``[3, H, W]`` (or ``[1, H, W]``) in [0, 1] -> PIL image."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


def pil_batch(images: Sequence[Image.Image]) -> Tensor:
    """RGB images of one size -> ``[B, 3, H, W]`` in [0, 1]."""
    return torch.stack([to_tensor(im) for im in images])


# -- writing -----------------------------------------------------------------------------------------


def save_png(image: Tensor | Image.Image, path: str | os.PathLike) -> Path:
    """A tensor ``[C, H, W]`` in [0, 1] or a PIL image -> PNG file, written under a unique temporary name in the
    same folder then renamed, so readers and concurrent writers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = image if isinstance(image, Image.Image) else to_pil(image)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            im.save(f, format="PNG")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def png_bytes(image: Tensor | Image.Image) -> bytes:
    """A tensor ``[C, H, W]`` in [0, 1] or a PIL image -> PNG bytes (what a web service sends)."""
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else to_pil(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def image_grid(rows: Sequence[Tensor], pad: int = 2) -> Tensor:
    """Rows of images ``[N, C, H, W]`` (same N, H, W) -> one image ``[C, rows*(H+pad)+pad, N*(W+pad)+pad]``."""
    n, c, h, w = rows[0].shape
    grid = torch.ones(c, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for r, row in enumerate(rows):
        for i, img in enumerate(row):
            y, x = pad + r * (h + pad), pad + i * (w + pad)
            grid[:, y : y + h, x : x + w] = img.detach().float().cpu().clamp(0, 1)
    return grid


def tile(images: Tensor, cols: int = 8) -> Tensor:
    """``[N, 3, H, W]`` -> a grid image of ``cols`` columns, the last row padded with white."""
    cols = max(1, min(len(images), cols))
    rows = [images[i : i + cols] for i in range(0, len(images), cols)]
    if len(rows) > 1 and len(rows[-1]) < cols:
        rows[-1] = torch.cat([rows[-1], torch.ones(cols - len(rows[-1]), *images.shape[1:])])
    return image_grid(rows)


def font(size: int = 14) -> ImageFont.ImageFont:
    """A readable font at ``size`` px: DejaVu Sans where installed, else PIL's scalable default."""
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


# What to draw instead of a character the font has no glyph for (it would render as a box: "16⊠1").
ASCII_FALLBACK = {"→": "->", "←": "<-", "×": "x", "·": ".", "–": "-", "—": "-", "…": "...", "⁄": "/"}


def drawable(text: str, f: ImageFont.ImageFont) -> str:
    """``text`` with every character ``f`` would draw as its missing-glyph box replaced (``→`` -> ``->``)."""

    def mask(ch: str) -> bytes | None:
        try:
            return np.asarray(f.getmask(ch)).tobytes()
        except (UnicodeError, ValueError):  # a bitmap font outside its encoding
            return None

    missing = mask("\U0010ffff")  # a private-use code point: the font's .notdef box
    return "".join(ASCII_FALLBACK[ch] if ch in ASCII_FALLBACK and mask(ch) in (None, missing) else ch for ch in text)


def grid_png(
    rows: list[list[Image.Image]],
    labels: list[str],
    path: str | os.PathLike,
    scale: int = 2,
    highlight: list[int] | None = None,
    header: list[str] | None = None,
    text_size: int = 16,
    label_above: bool = False,
) -> Path:
    """One row of images per label; ``highlight[r]`` gets a green frame (e.g. CLIP's pick).

    ``label_above`` writes each label above its row instead of in a column on the left: a long caption then
    costs height, not width (16 samples of 64 px fit a 1280-px page with their captions at full size)."""
    cell = rows[0][0].width * scale
    f = font(text_size)
    pad, top = 6, text_size + 8 if header else 0
    labels = [drawable(label[:64], f) for label in labels]
    header = [drawable(h, f) for h in header] if header else header
    label_w = 0 if label_above else 20 + max(int(f.getlength(label)) for label in labels)
    label_h = text_size + 8 if label_above else 0
    cols = max(len(r) for r in rows)
    row_h = label_h + cell + pad
    canvas = Image.new("RGB", (label_w + cols * (cell + pad) + pad, top + len(rows) * row_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(header or []):
        draw.text((label_w + pad + c * (cell + pad), 2), text, fill="black", font=f)
    for r, (images, label) in enumerate(zip(rows, labels)):
        y = top + pad + r * row_h + label_h
        if label_above:
            draw.text((pad, y - label_h + 2), label, fill="black", font=f)
        else:
            draw.text((pad, y + cell // 2 - text_size // 2), label, fill="black", font=f)
        for c, im in enumerate(images):
            x = label_w + pad + c * (cell + pad)
            canvas.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (x, y))
            if highlight is not None and highlight[r] == c:
                draw.rectangle([x - 3, y - 3, x + cell + 2, y + cell + 2], outline=(0, 180, 0), width=3)
    return save_png(canvas, path)


def gallery_png(
    images: list[Image.Image],
    labels: list[str],
    path: str | os.PathLike,
    columns: int = 4,
    scale: int = 2,
    text_size: int = 14,
) -> Path:
    """Images in ``columns`` columns, each with its label (lines split at ``\\n``) underneath: a short list of
    labelled images as a compact block instead of one tall column."""
    f = font(text_size)
    lines = [[drawable(t, f) for t in label.split("\n")] for label in labels]
    cell = images[0].width * scale
    pad, line_h = 8, text_size + 4
    col_w = max([cell] + [int(f.getlength(t)) for ls in lines for t in ls]) + 2 * pad
    row_h = cell + pad + line_h * max(len(ls) for ls in lines) + pad
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (min(columns, len(images)) * col_w, rows * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (im, ls) in enumerate(zip(images, lines)):
        x, y = (i % columns) * col_w, (i // columns) * row_h
        canvas.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (x + (col_w - cell) // 2, y + pad))
        for j, text in enumerate(ls):
            tx = x + (col_w - int(f.getlength(text))) // 2
            draw.text((tx, y + pad + cell + 4 + j * line_h), text, fill="black", font=f)
    return save_png(canvas, path)


def bar_chart_png(values: dict[str, float], title: str, path: str | os.PathLike, text_size: int = 15) -> Path:
    """Horizontal bars of accuracies in [0, 1]."""
    f = font(text_size)
    values = {drawable(name, f): v for name, v in values.items()}
    title = drawable(title, f)
    bar_h = text_size + 12
    label_w = 24 + max([int(f.getlength(name)) for name in values] + [120])
    w = label_w + 420
    h = 44 + len(values) * (bar_h + 8)
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 10), title, fill="black", font=f)
    span = w - label_w - 80
    for i, (name, v) in enumerate(values.items()):
        y = 40 + i * (bar_h + 8)
        draw.text((10, y + 5), name, fill="black", font=f)
        draw.rectangle([label_w, y, label_w + span, y + bar_h], outline=(200, 200, 200))
        draw.rectangle([label_w, y, label_w + int(span * max(0.0, min(1.0, v))), y + bar_h], fill=(60, 110, 200))
        draw.text((label_w + span + 8, y + 5), f"{100 * v:.1f}%", fill="black", font=f)
    return save_png(canvas, path)
