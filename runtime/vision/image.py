"""Read any image a user may hand us as 8-bit RGB, or fail with one clear sentence.

Handled: every format Pillow reads; EXIF orientation; palette, bilevel, grayscale, 16-bit and float images; CMYK;
transparency (composited on white, as a viewer shows it); animated images (the first frame). Refused with an
ImageError: files that are not images, truncated or damaged files, and images over MAX_PIXELS (a decompression
bomb is refused from its header, before any pixel is decoded).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.limits import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    InputError,
    check_input_file,
    is_stream,
    read_stream,
)

MAX_PIXELS = MAX_IMAGE_PIXELS
WHITE = (255, 255, 255)


class ImageError(EdgemmError):
    """The image cannot be read or is unusable."""


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float single-channel images, scaled to 0..255 by their own range."""
    array = np.asarray(image, dtype=np.float64)
    lo, hi = float(array.min()), float(array.max())
    if image.mode.startswith("I;16") or image.mode == "I":
        lo, hi = 0.0, 65535.0 if hi > 255 else 255.0
    scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image (already loaded) as RGB, transparency composited on white."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGB


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


def load_image(source: str | Path | bytes | Image.Image | np.ndarray, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB Pillow image from a path, encoded bytes, a Pillow image or an [H, W(, C)] uint8 array."""
    if isinstance(source, np.ndarray):
        if (
            source.dtype != np.uint8
            or source.ndim not in (2, 3)
            or (source.ndim == 3 and source.shape[2] not in (1, 3, 4))
        ):
            raise ImageError(
                f"an image array must be uint8 [H, W], [H, W, 3] or [H, W, 4], not {source.dtype} {source.shape}"
            )
        source = Image.fromarray(source.squeeze(2) if source.ndim == 3 and source.shape[2] == 1 else source)
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
        except OSError as e:
            raise ImageError(f"{name}: cannot read the image ({e})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{name}: the image is empty ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels; the limit is {max_pixels / 1e6:.0f}"
        )
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated GIF / WebP / PNG: the first frame
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{name}: the image is truncated or damaged ({e})") from None
