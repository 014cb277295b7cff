"""Bad and unusual images: one clear error, or the right RGB pixels."""

import io

import numpy as np
import pytest
from PIL import Image

from edgemm.runtime.vision.image import MAX_PIXELS, ImageError, load_image


def _save(image: Image.Image, path, **kw):
    image.save(path, **kw)
    return path


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, I am text")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ImageError, match="image file not found"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.jpg")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path, fmt):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated or damaged"):
        load_image(path)


def test_decompression_bomb_refused_from_header(tmp_path):
    # a 1-bit PNG of 20000x20000 pixels compresses to a few kB; decoding it as RGB would take 1.2 GB
    path = _save(Image.new("1", (20000, 20000)), tmp_path / "bomb.png")
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageError, match="megapixels"):
        load_image(path)
    assert 20000 * 20000 > MAX_PIXELS
    big = _save(Image.new("1", (9000, 8000)), tmp_path / "big.png")  # under Pillow's limit, over ours
    with pytest.raises(ImageError, match="72 megapixels; the limit is 64"):
        load_image(big)


def test_cmyk_16bit_palette_alpha(tmp_path):
    cmyk = load_image(_save(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), tmp_path / "c.jpg"))
    assert cmyk.mode == "RGB" and np.abs(np.asarray(cmyk)[0, 0].astype(int) - [255, 0, 0]).max() < 10
    deep = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert np.asarray(load_image(_save(deep, tmp_path / "d.png")))[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    assert np.asarray(load_image(_save(palette, tmp_path / "p.png")))[0, 0].tolist() == [0, 0, 255]
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red shows as white
    assert np.asarray(load_image(_save(clear, tmp_path / "a.png")))[0, 0].tolist() == [255, 255, 255]


def test_exif_rotation(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "r.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert np.asarray(load_image(path))[0, 0].tolist() == [255, 0, 0]


def test_tiny_and_array_inputs():
    assert load_image(np.zeros((1, 1, 3), np.uint8)).size == (1, 1)
    assert load_image(np.zeros((3, 5), np.uint8)).size == (5, 3)
    with pytest.raises(ImageError, match="uint8"):
        load_image(np.zeros((3, 5, 2), np.float32))
