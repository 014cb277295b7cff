"""Hostile images: small files that decode to gigabytes, and damaged metadata. Each case runs in its own process,
bounded in time and peak memory, and ends with the right result or one ImageError sentence."""

from __future__ import annotations

import io
import struct
import sys
import textwrap
import threading
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from edgemm.runtime import cancel
from edgemm.runtime.limits import MAX_REQUEST_PIXELS
from edgemm.runtime.vision.describe import WORK_SIDE, describe_in_stages
from edgemm.runtime.vision.image import ImageError, load_image
from tests.harness import bounded

SIDE = 8000  # 64 megapixels: MAX_IMAGE_PIXELS


def _python(code: str, timeout: float = 120):
    return bounded([sys.executable, "-c", textwrap.dedent(code)], timeout=timeout)


def _make(path, code: str):
    """Write a test image in a process of its own: the pytest process stays small, and the memory each case's
    process reports (ru_maxrss) counts from the size of the process that started it."""
    ran = _python(f"""
        import numpy as np
        from PIL import Image
        row = np.arange({SIDE}, dtype=np.uint32)
        {code}
    """)
    assert ran.returncode == 0, ran.stderr[-2000:]
    return path


@pytest.fixture(scope="module")
def deep_png(tmp_path_factory):
    """A 16-bit 8000x8000 gradient: a few hundred kB of PNG."""
    path = tmp_path_factory.mktemp("images") / "deep.png"
    _make(path, f"Image.fromarray(((row[:, None] + row[None, :]) * 4).astype(np.uint16)).save({str(path)!r})")
    assert path.stat().st_size < 1 << 20
    return path


@pytest.fixture(scope="module")
def float_tiff(tmp_path_factory):
    """A float32 8000x8000 TIFF (deflate): about 1 MB that decodes to 256 MB."""
    path = tmp_path_factory.mktemp("images") / "float.tif"
    values = "(row[:, None] // 500 + row[None, :] // 500).astype(np.float32) / 7"
    _make(path, f"Image.fromarray({values}, 'F').save({str(path)!r}, compression='tiff_adobe_deflate')")
    assert path.stat().st_size < 2 << 20
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_oversize_text_chunk_is_one_sentence():
    """A zTXt chunk that inflates past Pillow's MAX_TEXT_CHUNK, before the pixels (Image.open raises ValueError: a
    traceback and a 500 from the server at git HEAD) or after them (the decoder raises it)."""
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    text = _chunk(b"zTXt", b"k\0\0" + zlib.compress(b"a" * (PngImagePlugin.MAX_TEXT_CHUNK + 1)))
    pixels = _chunk(b"IDAT", zlib.compress(b"\0\0"))
    for body in (header + text + pixels, header + pixels + text):
        data = b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b"")
        assert len(data) < 4096
        with pytest.raises(ImageError, match="Decompressed data too large") as error:
            load_image(data)
        assert "\n" not in str(error.value)


def test_16bit_png_converts_without_float64_copies(deep_png):
    """8000x8000 16-bit: 2.2 GB of float64 copies at git HEAD; now the 8-bit image and blocks of 16 MB."""
    ran = _python(f"""
        from edgemm.runtime.vision.image import load_image
        image = load_image({str(deep_png)!r})
        print(image.size, image.getpixel((0, 0)), image.getpixel((7999, 7999)), image.getpixel((0, 4000)))
    """)
    assert ran.returncode == 0, ran.stderr[-2000:]
    # 65535 scale: 0 -> 0, 63992 -> 249, 16000 -> 62
    assert ran.stdout.split("\n")[0] == "(8000, 8000) (0, 0, 0) (249, 249, 249) (62, 62, 62)", ran.stdout
    assert ran.peak_mb < 600, ran.peak_mb
    assert ran.seconds < 60


def test_float_tiff_converts_without_float64_copies(float_tiff):
    """A float32 8000x8000 TIFF: 2.3 GB at git HEAD; scaled by its own range."""
    ran = _python(f"""
        from edgemm.runtime.vision.image import load_image
        image = load_image({str(float_tiff)!r})
        print(image.size, image.getpixel((0, 0)), image.getpixel((7999, 7999)))
    """)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split("\n")[0] == "(8000, 8000) (0, 0, 0) (255, 255, 255)", ran.stdout
    assert ran.peak_mb < 650, ran.peak_mb
    assert ran.seconds < 60


def test_float_image_with_nan_and_infinity():
    values = np.array([[np.nan, 0.0], [1.0, np.inf]], np.float32)
    assert np.asarray(load_image(Image.fromarray(values, "F")))[..., 0].tolist() == [[0, 0], [255, 255]]


# A question whose classifier only notes the size of each image it is given: the image path without any model.
QUESTION = """
    import sys
    from edgemm.runtime.vision.describe import SceneDescriber
    from edgemm.runtime.vision.image import ImageError
    from edgemm.runtime.vision.question import ImageQuestion

    class Classifier:
        def classify(self, image, k=5):
            print(image.size)
            return []

    try:
        ImageQuestion(describer=SceneDescriber(Classifier()), lm=object()).ask("What is this?", {paths!r})
    except ImageError as e:
        print(e)
    except AttributeError:  # the answer needs a language model: the images were all described
        print("described")
"""


def test_sixteen_big_images_are_refused_from_their_headers(deep_png):
    """16 images of 64 Mpx in one question (2.6 MB of PNGs): all decoded and held at git HEAD (6 GB, 25 s); now
    refused before any pixel is decoded."""
    ran = _python(QUESTION.format(paths=[str(deep_png)] * 16))
    assert ran.returncode == 0, ran.stderr[-2000:]
    limit = MAX_REQUEST_PIXELS / 1e6
    assert (
        ran.stdout.strip() == f"the 16 images have 1024 megapixels together; the limit for one request is {limit:.0f}"
    )
    assert ran.peak_mb < 200, ran.peak_mb
    assert ran.seconds < 20


def test_largest_question_within_limits_is_bounded(deep_png, tmp_path):
    """As many 64 Mpx 16-bit images as the request limit allows, described one after the other: each is decoded
    and reduced to WORK_SIDE before the next (2.8 GB for three at git HEAD)."""
    count = MAX_REQUEST_PIXELS // SIDE**2
    ran = _python(QUESTION.format(paths=[str(deep_png)] * count))
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split() == ["(2000,", "2000)"] * count + ["described"], ran.stdout
    assert WORK_SIDE == 2000
    assert ran.peak_mb < 600, ran.peak_mb
    assert ran.seconds < 90


def test_large_photo_is_described_as_its_smaller_self(deep_png, tmp_path):
    """A real photo scaled up to 7900x5200 beside a 16-bit 8000x8000 image, with the real classifier: the photo gets
    the labels of the original, and the question stays within a bound (HEAD held both at full size)."""
    from edgemm.runtime.bundle import default_bundle

    skdata = pytest.importorskip("skimage.data")
    if not (default_bundle("vision") / "manifest.json").exists():
        pytest.skip(f"the default vision bundle is missing at {default_bundle('vision')}: run `make setup`")
    small, big = tmp_path / "cat.png", tmp_path / "cat-big.jpg"
    Image.fromarray(skdata.chelsea()).save(small)
    _make(big, f"Image.open({str(small)!r}).resize((7900, 5200), Image.Resampling.BICUBIC).save({str(big)!r})")
    ran = _python(
        f"""
        from edgemm.runtime.vision.describe import SceneDescriber
        describer = SceneDescriber.load(ocr=False)
        original = describer.facts({str(small)!r})
        facts = describer.facts_of([{str(big)!r}, {str(deep_png)!r}])
        print(original.labels[0].name)
        print(facts[0].labels[0].name)
    """,
        timeout=150,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    original, scaled = ran.stdout.splitlines()[:2]
    assert "cat" in original and scaled == original, ran.stdout
    assert ran.peak_mb < 800, ran.peak_mb


def test_description_stops_between_images_once_cancelled():
    """The job's event is set while the first image is described: the second is not."""
    event, seen = threading.Event(), []

    class Classifier:
        def classify(self, image, k=5):
            seen.append(image.size)
            event.set()
            return []

    images = [Image.new("RGB", (8, 8)), Image.new("RGB", (9, 9))]
    with cancel.scope(event), pytest.raises(cancel.Cancelled):
        describe_in_stages(images, lambda: Classifier())
    assert seen == [(8, 8)]


def test_request_limit_counts_headers_only():
    """Over the request's pixels, refused before any image is decoded: a truncated file is not even reached."""
    from edgemm.runtime.vision.image import load_images

    big = io.BytesIO()
    Image.new("1", (8000, 8000)).save(big, "PNG")
    broken = big.getvalue()[:200]  # its header is whole, its pixels are not
    with pytest.raises(ImageError, match="the limit for one request is 192"):
        load_images([broken] * 4)
    with pytest.raises(ImageError, match="truncated or damaged"):
        load_images([broken])
