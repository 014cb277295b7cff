"""Text in photos without OpenCV: the geometry on drawn bitmaps, then PP-OCR's real models on rendered text."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from edgemm.runtime.vision import ocr
from edgemm.runtime.vision.ocr import TextReader

needs_models = pytest.mark.skipif(not TextReader.available(), reason="pip install 'edgemm[ocr]'")


def test_regions_are_8_connected():
    bitmap = np.zeros((8, 10), bool)
    bitmap[1, 1:4] = True  # a run
    bitmap[2, 4] = True  # touches it only at a corner: the same region
    bitmap[5:7, 6:9] = True  # a block of its own
    regions = sorted(ocr._regions(bitmap), key=lambda points: points[:, 1].min())
    assert len(regions) == 2
    assert {tuple(p) for p in regions[0]} == {(1, 1), (3, 1), (4, 2)}  # the ends of each run, (x, y)
    assert {tuple(p) for p in regions[1]} == {(6, 5), (8, 5), (6, 6), (8, 6)}
    assert ocr._regions(np.zeros((4, 4), bool)) == []


def test_smallest_rectangle_of_a_tilted_bar():
    angle = np.radians(30)
    along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    points = np.array([10, 10]) + np.array([a * along + b * across for a in range(0, 41, 4) for b in (0, 8)])
    box, short = ocr._min_rectangle(points)
    assert short == pytest.approx(8, abs=1e-6)
    sides = np.linalg.norm(box - np.roll(box, -1, axis=0), axis=1)
    assert sorted(sides) == pytest.approx([8, 8, 40, 40], abs=1e-6)
    assert box[0][0] < box[1][0] and box[0][1] < box[3][1]  # top-left first, then clockwise
    assert ocr._min_rectangle(np.array([[0, 0], [5, 0], [9, 0]]))[1] == 0  # points on a line: no box


def test_boxes_read_left_to_right_on_a_line():
    def box(x, y):
        return np.array([[x, y], [x + 20, y], [x + 20, y + 10], [x, y + 10]], np.float32)

    ordered = ocr._sorted([box(100, 52), box(10, 55), box(10, 5)])
    assert [tuple(b[0]) for b in ordered] == [(10, 5), (10, 55), (100, 52)]


def test_low_or_wide_photos_get_bands():
    assert ocr._letterboxed(Image.new("RGB", (400, 20))).size == (400, 100)  # 2 * max(400 / 8, 30)
    assert ocr._letterboxed(Image.new("RGB", (400, 200))).size == (400, 200)


def _rendered(text: str, size=(520, 140), font_size=48, turn=0) -> np.ndarray:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((20, 30), text, fill="black", font=ImageFont.load_default(size=font_size))
    return np.asarray(image.rotate(turn, expand=True))


@pytest.fixture(scope="module")
def reader():
    return TextReader(threads=1)


@needs_models
@pytest.mark.parametrize("turn", [0, 90, 180])
def test_reads_rendered_text_any_way_up(reader, turn):
    """Upright, vertical (a quarter turn: the cut is turned back) and upside down (the direction classifier)."""
    lines = reader.read(_rendered("Hello edge world", turn=turn))
    assert [text for text, _ in lines] == ["Hello edge world"], lines
    assert lines[0][1] > 0.9


@needs_models
def test_nothing_to_read(reader):
    assert reader.read(np.full((300, 400, 3), 200, np.uint8)) == []
    assert reader.read(np.zeros((1, 1, 3), np.uint8)) == []  # smaller than the detector's 32 px grid


@needs_models
def test_models_loaded_on_demand_only_for_the_steps_a_photo_needs(reader, monkeypatch):
    """A photo without text loads the detector alone; one with text loads each model for its step, and reads as
    the reader that keeps them loaded."""
    loaded = []
    create = ocr.create_session
    monkeypatch.setattr(ocr, "create_session", lambda path, threads: loaded.append(path.name) or create(path, threads))
    on_demand = TextReader(threads=1, on_demand=True)
    assert loaded == [] and on_demand.sessions == {}
    assert on_demand.read(np.full((300, 400, 3), 200, np.uint8)) == []
    assert loaded == [ocr.MODELS["det"]]
    page = _rendered("Hello edge world", turn=180)
    assert on_demand.read(page) == reader.read(page)
    assert loaded[1:] == [ocr.MODELS[name] for name in ("det", "cls", "rec")]
    assert on_demand.sessions == {}


@needs_models
def test_sessions_are_ours_and_opencv_stays_out():
    """Our session options (threads, no spin-waiting), and reading a photo never imports OpenCV: its library mapped
    into the assistant cost more memory than the OCR models (docs/BENCHMARKS.md)."""
    code = (
        "import sys, numpy as np\n"
        "from edgemm.runtime.vision.ocr import TextReader\n"
        "r = TextReader(threads=1)\n"
        "o = r.sessions['det'].get_session_options()\n"
        "assert o.intra_op_num_threads == 1, o.intra_op_num_threads\n"
        "assert o.get_session_config_entry('session.intra_op.allow_spinning') == '0'\n"
        "r.read(np.zeros((64, 64, 3), np.uint8))\n"
        "print('cv2' in sys.modules, 'rapidocr_onnxruntime' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_missing_models_are_one_clear_error(monkeypatch):
    monkeypatch.setattr(ocr, "package_file", lambda *parts: None)
    with pytest.raises(ocr.EdgemmError, match=r"OCR models missing .*pip install 'edgemm\[ocr\]'"):
        TextReader()
