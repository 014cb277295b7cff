"""Text in photos: PP-OCR's text detector, direction classifier and recogniser, without OpenCV.

The three ONNX models are the ones rapidocr-onnxruntime ships (the ``ocr`` extra), run through our sessions; the steps
around them follow rapidocr 1.4.4 with its default settings, with Pillow, numpy, shapely and pyclipper doing what it
does with OpenCV. rapidocr imports OpenCV, and that library mapped into the assistant's process cost about 40 MB of
its 450 MB (78 MB while its files were fresh in the page cache), far more than the OCR models themselves
(docs/BENCHMARKS.md).

1. Detection: the photo, its sides rounded to multiples of 32, gives a text probability per pixel. Pixels over
   ``BINARY_THRESHOLD``, grown by one pixel up and left, form 8-connected regions; each region's smallest rotated
   rectangle is kept when the mean probability inside it reaches ``BOX_THRESHOLD``, then widened by
   ``area * UNCLIP_RATIO / perimeter`` (text regions are predicted shrunk) and scaled back to the photo.
2. Each box is cut out straightened, rotated upright when it is much taller than wide, and turned half a turn when
   the direction classifier is sure it is upside down.
3. The recogniser reads each cut (48 px high) into characters by CTC: the best class per column, repeats merged,
   blanks dropped; the confidence is the mean probability of the characters kept.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.packages import installed, package_file
from edgemm.runtime.sessions import create_session
from edgemm.runtime.vision.image import load_image

PACKAGE = "rapidocr_onnxruntime"
MODELS = {
    "det": "ch_PP-OCRv4_det_infer.onnx",
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "rec": "ch_PP-OCRv4_rec_infer.onnx",
}
MAX_SIDE, MIN_SIDE = 2000, 30  # photos are first brought within these
LETTERBOX_HEIGHT, LETTERBOX_RATIO = 30, 8  # lower or wider photos get black bands above and below
BINARY_THRESHOLD, BOX_THRESHOLD, UNCLIP_RATIO = 0.3, 0.5, 1.6
MIN_BOX_SIDE = 3
MAX_CANDIDATES = 1000
UPRIGHT_RATIO = 1.5  # a cut this much taller than wide is text running vertically: rotated a quarter turn
CLS_SHAPE, CLS_THRESHOLD = (48, 192), 0.9
REC_HEIGHT, REC_MIN_WIDTH = 48, 320
BATCH = 6
SAME_LINE_PX = 10  # boxes whose tops differ by less than this read left to right


class TextReader:
    """Reads the text in a photo: ``read(image)`` gives (text, confidence) per line found, top to bottom.

    ``on_demand``: each model is loaded for its step and dropped after it (the recogniser and direction classifier
    only when the detector found text): a photo without text then costs the detector's memory alone, and one with
    text the largest model's, not the three together's (machine profile ``pi``).
    Safe to share between threads (its sessions are; each read keeps its own arrays)."""

    def __init__(self, threads: int | None = None, on_demand: bool = False):
        self.paths = {name: package_file(PACKAGE, "models", file) for name, file in MODELS.items()}
        if missing := [MODELS[name] for name, path in self.paths.items() if path is None]:
            raise EdgemmError(f"OCR models missing ({', '.join(missing)}): pip install 'edgemm[ocr]'")
        self.threads, self.characters = threads, None
        self.sessions = {} if on_demand else {name: self._load(name) for name in MODELS}

    def _load(self, name: str):
        session = create_session(Path(self.paths[name]), self.threads)
        if name == "rec" and self.characters is None:
            characters = session.get_modelmeta().custom_metadata_map.get("character")
            if not characters:
                raise EdgemmError(f"{MODELS['rec']} has no character list in its metadata")
            self.characters = ["", *characters.splitlines(), " "]  # CTC blank first, space last
        return session

    def _session(self, name: str):
        """The model of step ``name``: the one loaded with the reader, or one loaded for this step."""
        return self.sessions.get(name) or self._load(name)

    @staticmethod
    def available() -> bool:
        return installed(PACKAGE) and installed("shapely") and installed("pyclipper")

    def read(self, image) -> list[tuple[str, float]]:
        photo = _within_limits(load_image(image).convert("RGB"))
        photo = _letterboxed(photo)
        boxes = self._detect(photo)
        if not boxes:
            return []
        cuts = self._upright([_cut(photo, box) for box in boxes])
        return self._recognise(cuts)

    def _detect(self, photo: Image.Image) -> list[np.ndarray]:
        w, h = photo.size
        size = (round(w / 32) * 32, round(h / 32) * 32)
        if min(size) <= 0:
            return []
        det = self._session("det")
        probability = det.run(None, {det.get_inputs()[0].name: _normalised(photo.resize(size))})[0][0, 0]
        return _sorted(_boxes(probability, (w, h)))

    def _upright(self, cuts: list[Image.Image]) -> list[Image.Image]:
        height, width = CLS_SHAPE
        cls = self._session("cls")
        for batch in _batches(cuts):
            pixels = np.stack([_padded(cuts[i], height, width) for i in batch])
            probabilities = cls.run(None, {cls.get_inputs()[0].name: pixels})[0]
            for i, p in zip(batch, probabilities, strict=True):
                if int(p.argmax()) == 1 and p[1] > CLS_THRESHOLD:  # labels "0", "180"
                    cuts[i] = cuts[i].transpose(Image.Transpose.ROTATE_180)
        return cuts

    def _recognise(self, cuts: list[Image.Image]) -> list[tuple[str, float]]:
        lines: list[tuple[str, float]] = [("", 0.0)] * len(cuts)
        rec = self._session("rec")
        for batch in _batches(cuts):
            ratio = max(REC_MIN_WIDTH / REC_HEIGHT, *(cuts[i].width / cuts[i].height for i in batch))
            pixels = np.stack([_padded(cuts[i], REC_HEIGHT, int(REC_HEIGHT * ratio)) for i in batch])
            probabilities = rec.run(None, {rec.get_inputs()[0].name: pixels})[0]
            for i, p in zip(batch, probabilities, strict=True):
                lines[i] = self._ctc(p)
        return lines

    def _ctc(self, probabilities: np.ndarray) -> tuple[str, float]:
        best, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
        keep = best != 0
        keep[1:] &= best[1:] != best[:-1]
        text = "".join(self.characters[i] for i in best[keep])
        return text, float(confidence[keep].mean()) if keep.any() else 0.0


def _within_limits(photo: Image.Image) -> Image.Image:
    """At most MAX_SIDE, then at least MIN_SIDE px a side (each resize rounds the sides to multiples of 32)."""
    if max(photo.size) > MAX_SIDE:
        photo = _scaled(photo, MAX_SIDE / max(photo.size))
    if min(photo.size) < MIN_SIDE:
        photo = _scaled(photo, MIN_SIDE / min(photo.size))
    return photo


def _scaled(photo: Image.Image, scale: float) -> Image.Image:
    w, h = (max(32, round(int(side * scale) / 32) * 32) for side in photo.size)
    return photo.resize((w, h), Image.Resampling.BILINEAR)


def _letterboxed(photo: Image.Image) -> Image.Image:
    w, h = photo.size
    if h > LETTERBOX_HEIGHT and w / h <= LETTERBOX_RATIO:
        return photo
    band = abs(max(int(w / LETTERBOX_RATIO), LETTERBOX_HEIGHT) * 2 - h) // 2
    framed = Image.new("RGB", (w, h + 2 * band))
    framed.paste(photo, (0, band))
    return framed


def _normalised(photo: Image.Image) -> np.ndarray:
    """[1, 3, H, W] float32 in [-1, 1], channels in BGR order (PP-OCR's training order)."""
    pixels = np.asarray(photo, np.float32)[:, :, ::-1] / 127.5 - 1.0
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def _padded(cut: Image.Image, height: int, width: int) -> np.ndarray:
    """A cut scaled to ``height`` (at most ``width`` wide), normalised, zero-padded on the right to ``width``."""
    scaled = min(width, math.ceil(height * cut.width / cut.height))
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :scaled] = _normalised(cut.resize((scaled, height), Image.Resampling.BILINEAR))[0]
    return out


def _batches(cuts: list[Image.Image]):
    """Indices of ``cuts`` in batches of similar width to height ratio."""
    order = sorted(range(len(cuts)), key=lambda i: cuts[i].width / cuts[i].height)
    for start in range(0, len(order), BATCH):
        yield order[start : start + BATCH]


def _regions(bitmap: np.ndarray) -> list[np.ndarray]:
    """The 8-connected regions of ``bitmap``, each as the end points (x, y) of its horizontal runs of pixels: a
    region's convex hull, all that its smallest rotated rectangle depends on."""
    edges = np.diff(np.pad(bitmap, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1] - 1  # last pixel of each run (runs come row by row, left to right)
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(bitmap.shape[0] + 1))  # runs of row y: first[y]:first[y + 1]
    for y in range(1, bitmap.shape[0]):
        above, here = slice(first[y - 1], first[y]), slice(first[y], first[y + 1])
        if above.start == above.stop or here.start == here.stop:
            continue
        # Runs touch (8-connected) when each starts at most one pixel past the other's end.
        lo = np.searchsorted(ends[above], starts[here] - 1) + above.start
        hi = np.searchsorted(starts[above], ends[here] + 1, side="right") + above.start
        for run, a, b in zip(range(here.start, here.stop), lo, hi, strict=True):
            for other in range(a, b):
                parent[root(other)] = root(run)
    groups: dict[int, list[int]] = {}
    for run in range(len(rows)):
        groups.setdefault(root(run), []).append(run)
    regions = []
    for runs in groups.values():
        runs = np.asarray(runs)
        xs = np.concatenate([starts[runs], ends[runs]])
        regions.append(np.stack([xs, np.concatenate([rows[runs], rows[runs]])], axis=1).astype(np.float64))
    return regions


def _min_rectangle(points: np.ndarray) -> tuple[np.ndarray, float]:
    """The smallest rotated rectangle around ``points``, its corners clockwise from the top-left, and its shorter
    side (0 for points on a line)."""
    from shapely import MultiPoint, Polygon

    rectangle = MultiPoint(points).minimum_rotated_rectangle
    if not isinstance(rectangle, Polygon):
        return np.zeros((4, 2)), 0.0
    corners = np.asarray(rectangle.exterior.coords[:4])
    sides = np.linalg.norm(corners - np.roll(corners, -1, axis=0), axis=1)
    return _clockwise(corners), float(sides.min())


def _box_score(probability: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside ``box`` (its pixels and outline)."""
    h, w = probability.shape
    x0, x1 = np.clip([math.floor(box[:, 0].min()), math.ceil(box[:, 0].max())], 0, w - 1)
    y0, y1 = np.clip([math.floor(box[:, 1].min()), math.ceil(box[:, 1].max())], 0, h - 1)
    mask = Image.new("L", (int(x1 - x0 + 1), int(y1 - y0 + 1)))
    corners = (box - [x0, y0]).astype(np.int32)
    ImageDraw.Draw(mask).polygon([tuple(map(int, p)) for p in corners], fill=1, outline=1)
    inside = np.asarray(mask, bool)
    return float(probability[y0 : y1 + 1, x0 : x1 + 1][inside].mean()) if inside.any() else 0.0


def _unclipped(box: np.ndarray) -> np.ndarray:
    """``box`` grown by area * UNCLIP_RATIO / perimeter (round corners), as points."""
    import pyclipper
    from shapely import Polygon

    polygon = Polygon(box)
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box.tolist(), pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    grown = offset.Execute(polygon.area * UNCLIP_RATIO / polygon.length)
    return np.concatenate([np.asarray(path, np.float64) for path in grown]) if grown else np.zeros((0, 2))


def _boxes(probability: np.ndarray, size: tuple[int, int]) -> list[np.ndarray]:
    """Text boxes (4 corners, clockwise from top-left) in the coordinates of a photo of ``size`` (w, h)."""
    bitmap = probability > BINARY_THRESHOLD
    grown = bitmap.copy()  # grown by one pixel up and left (rapidocr dilates with a 2x2 kernel)
    grown[1:] |= bitmap[:-1]
    grown[:, 1:] |= grown[:, :-1].copy()
    h, w = bitmap.shape
    dest_w, dest_h = size
    boxes = []
    for points in _regions(grown)[:MAX_CANDIDATES]:
        box, short = _min_rectangle(points)
        if short < MIN_BOX_SIDE or _box_score(probability, box) < BOX_THRESHOLD:
            continue
        grown_points = _unclipped(box)
        if len(grown_points) < 3:
            continue
        box, short = _min_rectangle(grown_points)
        if short < MIN_BOX_SIDE + 2:
            continue
        box = np.clip(np.round(box * [dest_w / w, dest_h / h]), 0, [dest_w - 1, dest_h - 1])  # whole pixels inside
        box = _clockwise(box.astype(np.float32))
        if int(np.linalg.norm(box[0] - box[1])) > MIN_BOX_SIDE and int(np.linalg.norm(box[0] - box[3])) > MIN_BOX_SIDE:
            boxes.append(box)
    return boxes


def _clockwise(points: np.ndarray) -> np.ndarray:
    """[top-left, top-right, bottom-right, bottom-left]: the two leftmost points by height, then the two rightmost."""
    by_x = points[np.argsort(points[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.array([left[0], right[0], right[1], left[1]], points.dtype)


def _sorted(boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Top to bottom; boxes on the same line (tops within SAME_LINE_PX) left to right."""
    boxes = sorted(boxes, key=lambda b: (b[0][1], b[0][0]))
    for i in range(len(boxes) - 1):
        for j in range(i, -1, -1):
            if abs(boxes[j + 1][0][1] - boxes[j][0][1]) < SAME_LINE_PX and boxes[j + 1][0][0] < boxes[j][0][0]:
                boxes[j], boxes[j + 1] = boxes[j + 1], boxes[j]
            else:
                break
    return boxes


def _cut(photo: Image.Image, box: np.ndarray) -> Image.Image:
    """The box's content as an upright rectangle (bicubic), rotated a quarter turn when it is much taller than
    wide."""
    top_left, top_right, bottom_right, bottom_left = box
    width = int(max(np.linalg.norm(top_left - top_right), np.linalg.norm(bottom_right - bottom_left)))
    height = int(max(np.linalg.norm(top_left - bottom_left), np.linalg.norm(top_right - bottom_right)))
    quad = [float(v) for corner in (top_left, bottom_left, bottom_right, top_right) for v in corner]
    cut = photo.transform((max(width, 1), max(height, 1)), Image.Transform.QUAD, quad, Image.Resampling.BICUBIC)
    return cut.transpose(Image.Transpose.ROTATE_90) if cut.height >= UPRIGHT_RATIO * cut.width else cut
