"""multimodal.images: the one place images are opened, converted, resized and written."""

from __future__ import annotations

import io
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from multimodal import images
from multimodal.images import BACKGROUND, ImageError, Preprocess, open_image, preprocess


def red_circle_on_transparent(size: int = 32) -> Image.Image:
    im = Image.new("RGBA", (size, size), (0, 0, 255, 0))  # fully transparent *blue* pixels
    for y in range(size):
        for x in range(size):
            if (x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 4) ** 2:
                im.putpixel((x, y), (255, 0, 0, 255))
    return im


def test_transparency_is_composited_on_the_documented_background(tmp_path):
    src = red_circle_on_transparent()
    src.save(tmp_path / "rgba.png")
    rgb = open_image(tmp_path / "rgba.png")
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == BACKGROUND == (0, 0, 0)  # not the hidden blue, not white
    assert rgb.getpixel((16, 16)) == (255, 0, 0)
    src.convert("LA").save(tmp_path / "la.png")
    assert open_image(tmp_path / "la.png").getpixel((0, 0)) == BACKGROUND
    pal = src.convert("P")  # palette with a transparent index
    pal.info["transparency"] = pal.getpixel((0, 0))
    pal.save(tmp_path / "p.png", transparency=pal.getpixel((0, 0)))
    assert open_image(tmp_path / "p.png").getpixel((0, 0)) == BACKGROUND


def test_the_same_transparent_png_gives_the_same_tensor_in_every_reader(tmp_path):
    path = tmp_path / "rgba.png"
    red_circle_on_transparent().save(path)
    opaque = open_image(path)
    pre = Preprocess(16)
    want = images.to_tensor(images.resize(opaque, pre))
    # path, bytes and an already-open PIL image all read the same pixels
    assert torch.equal(images.load_image(path, 16), want)
    assert torch.equal(images.load_image(path.read_bytes(), 16), want)
    assert torch.equal(images.load_image(Image.open(path), 16), want)
    assert torch.equal(preprocess(path, pre), images.normalize(want, pre))


def test_exif_rotation_palette_16_bit_and_cmyk(tmp_path):
    im = Image.new("RGB", (40, 20), "white")
    im.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    up = open_image(tmp_path / "rot.jpg")
    assert up.size == (20, 40)
    r, g, b = up.getpixel((10, 2))  # the red band is now at the top
    assert r > 200 and g < 60 and b < 60
    deep = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))  # 16-bit white, not clipped to 255
    deep.save(tmp_path / "deep.png")
    assert open_image(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)
    half = Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16))
    half.save(tmp_path / "half.png")
    assert open_image(tmp_path / "half.png").getpixel((0, 0))[0] in (127, 128)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    r, g, b = open_image(tmp_path / "cmyk.jpg").getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_bad_files_are_one_line_errors_and_bombs_are_refused_from_the_header(tmp_path, monkeypatch):
    (tmp_path / "text.png").write_text("not an image")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[:60])
    for name, message in (("missing.png", "no such file"), ("text.png", "not a readable image"), ("cut.png", None)):
        with pytest.raises(ImageError, match=message) as e:  # a cut file: any one-line message naming it
            open_image(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value)
    before = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match="too large"):
        open_image(buf.getvalue())
    assert Image.MAX_IMAGE_PIXELS == before  # PIL's global limit is left alone


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocess_equals_open_clips_eval_transform(mode, interpolation):
    from open_clip.transform import image_transform

    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8))
    pre = Preprocess(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), interpolation, mode)
    theirs = image_transform(32, False, pre.mean, pre.std, resize_mode=mode, interpolation=interpolation)(im)
    torch.testing.assert_close(preprocess(im, pre), theirs, atol=1e-6, rtol=0)


def test_save_png_is_atomic_and_follows_the_umask(tmp_path):
    target = tmp_path / "out" / "grid.png"
    old = os.umask(0o022)
    try:
        images.save_png(torch.rand(3, 8, 8), target)
    finally:
        os.umask(old)
    assert Image.open(target).size == (8, 8)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["grid.png"]  # no temporary file left behind
    tensor = torch.rand(3, 8, 8)
    images.save_png(tensor, target)  # over an existing file
    back = images.to_tensor(Image.open(target))
    assert (back - tensor).abs().max() <= 0.5 / 255 + 1e-6


def test_grids_and_charts_label_readably(tmp_path):
    cell = Image.new("RGB", (16, 16), "red")
    png = images.grid_png([[cell, cell], [cell]], ["a red circle", "a blue star"], tmp_path / "g.png", highlight=[1, 0])
    grid = Image.open(png)
    assert grid.height >= 2 * 32 and grid.getpixel((0, 0)) == (255, 255, 255)
    chart = Image.open(images.bar_chart_png({"CLIP rerank 16→1": 0.5}, "scores", tmp_path / "c.png"))
    assert chart.width > 400
    f = images.font(16)  # the arrow is drawn as an arrow, not as the missing-glyph box ("16⊠1")
    if "DejaVu" not in " ".join(getattr(f, "getname", lambda: ("",))()):
        pytest.skip("no DejaVu font on this machine (.ci/run installs fonts-dejavu-core)")
    assert np.asarray(f.getmask("→")).tobytes() != np.asarray(f.getmask("\ue000")).tobytes()


def test_characters_the_font_lacks_are_drawn_in_ascii():
    from PIL import ImageFont

    bitmap = ImageFont.load_default_imagefont()  # PIL's old bitmap font: Latin-1 only, no arrow
    assert images.drawable("CLIP rerank 16→1", bitmap) == "CLIP rerank 16->1"
    f = images.font(16)
    if "DejaVu" in " ".join(getattr(f, "getname", lambda: ("",))()):
        assert images.drawable("16→1", f) == "16→1"  # a font that has the glyph keeps it
