"""Read any image a user may hand us as 8-bit RGB, or fail with one clear sentence.

Handled: every format Pillow reads; EXIF orientation; palette, bilevel, grayscale, 16-bit and float images; CMYK;
transparency (composited on white, as a viewer shows it); animated images (the first frame). Refused with an
ImageError: files that are not images, truncated or damaged files, and images over MAX_PIXELS (a decompression
bomb is refused from its header, before any pixel is decoded). :func:`load_images` reads the images of one request:
their pixels counted from the headers first, then each decoded and reduced before the next.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from edgemm.runtime import cancel
from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.limits import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_REQUEST_PIXELS,
    InputError,
    check_input_file,
    is_stream,
    read_stream,
)

MAX_PIXELS = MAX_IMAGE_PIXELS
WHITE = (255, 255, 255)
# 16-bit and float images are brought to 8 bits this many pixels at a time: 16 MB of float32, where converting a
# whole 8000x8000 image at once took 2 GB of float64 copies.
BLOCK_PIXELS = 1 << 22


class ImageError(EdgemmError):
    """The image cannot be read or is unusable."""


def _row_blocks(image: Image.Image):
    """(first row, float32 array) for blocks of about BLOCK_PIXELS pixels, top to bottom."""
    width, height = image.size
    step = max(1, BLOCK_PIXELS // width)
    for top in range(0, height, step):
        yield top, np.asarray(image.crop((0, top, width, min(height, top + step))), dtype=np.float32)


def _finite_range(image: Image.Image) -> tuple[float, float]:
    """The lowest and highest finite values of a float image."""
    lo, hi = image.getextrema()
    if math.isfinite(lo) and math.isfinite(hi):
        return lo, hi
    lo, hi = math.inf, -math.inf  # NaN or infinities: scan for the finite ones
    for _, rows in _row_blocks(image):
        rows = rows[np.isfinite(rows)]
        if rows.size:
            lo, hi = min(lo, float(rows.min())), max(hi, float(rows.max()))
    return (lo, hi) if lo <= hi else (0.0, 0.0)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer images scaled by 65535 when a value is over 255, float images by their own finite
    range (NaN as the lowest value); one block of rows at a time, so the extra memory is the 8-bit result."""
    if image.mode == "F":
        lo, hi = _finite_range(image)
    else:
        lo, hi = 0.0, 65535.0 if image.getextrema()[1] > 255 else 255.0
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.empty((image.height, image.width), np.uint8)
    for top, rows in _row_blocks(image):
        rows = np.nan_to_num(rows, nan=lo, posinf=hi, neginf=lo)
        out[top : top + len(rows)] = np.clip(np.rint((rows - lo) * scale), 0, 255)
    return Image.fromarray(out, "L")


def _fitted(size: tuple[int, int], side: int) -> tuple[int, int]:
    """``size`` scaled (aspect kept) so that its longer side is ``side``."""
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _shrunk(image: Image.Image, side: int) -> Image.Image:
    """``image`` within ``side`` pixels a side (bilinear, as the models resize); bilevel and palette images first
    become grayscale, RGB or (with transparency) RGBA, which Pillow resizes."""
    if max(image.size) <= side:
        return image
    if image.mode in ("1", "P", "PA"):
        transparent = image.mode == "PA" or "transparency" in image.info
        image = image.convert("L" if image.mode == "1" else "RGBA" if transparent else "RGB")
    return image.resize(_fitted(image.size, side), Image.Resampling.BILINEAR)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image (already loaded) as RGB, transparency composited on white; an RGB image as it is."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _first_line(error: Exception) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def _read_path(path: Path) -> Path | bytes:
    """The path of a regular file, or the bytes of a pipe or device; a one-line ImageError for anything else."""
    try:
        info = check_input_file(path, "image file")
        if is_stream(info):
            return read_stream(path, "image", MAX_IMAGE_BYTES)
    except InputError as e:
        raise ImageError(str(e)) from None
    if info.st_size == 0:
        raise ImageError(f"{path}: the file is empty")
    return path


def _from_array(source: np.ndarray) -> Image.Image:
    if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (1, 3, 4)):
        raise ImageError(
            f"an image array must be uint8 [H, W], [H, W, 3] or [H, W, 4], not {source.dtype} {source.shape}"
        )
    return Image.fromarray(source.squeeze(2) if source.ndim == 3 and source.shape[2] == 1 else source)


@dataclass
class _Opened:
    image: Image.Image | None  # its header read, no pixel decoded yet; None once decoding has taken it
    name: str  # what errors call it: the path, "image data" or "image"


def _open(source, max_pixels: int) -> _Opened:
    """The image with its header read, refused when over ``max_pixels``."""
    if isinstance(source, np.ndarray):
        source = _from_array(source)
    if isinstance(source, (str, Path)):
        source, name = _read_path(Path(source).expanduser()), str(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        source, name = bytes(source), "image data"
        if len(source) > MAX_IMAGE_BYTES:
            raise ImageError(f"the image data is {len(source) >> 20} MB; the limit is {MAX_IMAGE_BYTES >> 20} MB")
    elif not isinstance(source, Image.Image):
        raise ImageError(
            f"an image must be a file path, encoded bytes, a Pillow image or a uint8 array, not {type(source).__name__}"
        )
    if isinstance(source, Image.Image):
        image, name = source, "image"
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image (or a format Pillow cannot read)") from None
        except Image.DecompressionBombError:  # Pillow's own header check, far above ours
            raise ImageError(f"{name}: far over {max_pixels / 1e6:.0f} megapixels, the limit") from None
        except MemoryError:
            raise
        except Exception as e:  # a damaged header or metadata chunk (OSError, ValueError, SyntaxError, EOFError...)
            raise ImageError(f"{name}: cannot read the image ({_first_line(e)})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: the image is empty ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels; the limit is {max_pixels / 1e6:.0f}"
        )
    return _Opened(image, name)


def _decode(opened: _Opened, max_side: int | None) -> Image.Image:
    """The opened image decoded as RGB (upright, the first frame), reduced within ``max_side`` pixels a side as soon
    as it is decoded (a JPEG is decoded at a reduced scale directly). It is taken out of ``opened``, so that each
    full-size stage is freed as soon as the next is made."""
    image, name, opened.image = opened.image, opened.name, None
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated GIF / WebP / PNG: the first frame
        if max_side and max(image.size) > max_side:
            image.draft(image.mode, _fitted(image.size, max_side))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
                image = ImageOps.exif_transpose(image)
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):
            image = _to_8bit(image)
        return to_rgb(_shrunk(image, max_side) if max_side else image)
    except MemoryError:
        raise
    except Exception as e:  # Pillow's decoders fail in many ways on a damaged file
        raise ImageError(f"{name}: the image is truncated or damaged ({_first_line(e)})") from None


def load_image(
    source: str | Path | bytes | Image.Image | np.ndarray, max_pixels: int = MAX_PIXELS, max_side: int | None = None
) -> Image.Image:
    """An RGB Pillow image from a path, encoded bytes, a Pillow image or an [H, W(, C)] uint8 array. ``max_side``:
    an image larger than that is reduced (bilinear) to it as soon as it is decoded."""
    return _decode(_open(source, max_pixels), max_side)


def checked_images(sources: list, max_side: int = 64) -> list:
    """``sources`` checked as :func:`load_images` reads them, but quickly (decoded at ``max_side`` pixels a side), so
    that a bad one is refused before slow work starts; returned as they can be read again: a pipe's or device's
    bytes in place of its path."""
    sources = [_read_path(Path(s).expanduser()) if isinstance(s, (str, Path)) else s for s in sources]
    load_images(sources, max_side=max_side)
    return sources


def load_images(sources: list, max_side: int | None = None, max_pixels: int = MAX_REQUEST_PIXELS) -> list[Image.Image]:
    """The images of one request as :func:`load_image` gives them. All are opened first and refused together when
    their pixels add up to more than ``max_pixels``, before any is decoded; then they are decoded one at a time,
    each reduced within ``max_side`` before the next, so that one image at most is ever held at full size."""
    opened = [_open(source, MAX_PIXELS) for source in sources]
    total = sum(item.image.width * item.image.height for item in opened)
    if total > max_pixels:
        raise ImageError(
            f"the {len(opened)} images have {total / 1e6:.0f} megapixels together; the limit for one request "
            f"is {max_pixels / 1e6:.0f}"
        )
    images = []
    for item in opened:
        cancel.check()
        images.append(_decode(item, max_side))
    return images
