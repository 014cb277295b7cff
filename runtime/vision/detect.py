"""Objects in a photo: a NanoDet detector (COCO's 80 classes) in the ``vision`` bundle, as boxes with labels.

NanoDet scores every cell of three grids (strides 8, 16 and 32 pixels of its 416 px input) for each class, and gives
each cell's box as four distances (left, top, right, bottom) from the cell's centre, each a probability distribution
over 0..reg_max strides whose expectation is the distance (the "general focal loss" box head). Boxes above the
manifest's score threshold go through per-class non-maximum suppression, so one object is counted once.

The photo is letterboxed (scaled to fit, padded with the normalization mean) rather than stretched: stretching a
3:2 close-up of a cat by 1.5 made it score as a person.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from edgemm.runtime.bundle import Bundle
from edgemm.runtime.errors import BundleError
from edgemm.runtime.sessions import create_session
from edgemm.runtime.vision.image import load_image

IOU_LIMIT = 0.5  # boxes of one class overlapping more than this are one object


@dataclass(frozen=True)
class Detection:
    label: str  # e.g. "cup"
    score: float  # the class's sigmoid score, 0..1
    box: tuple[float, float, float, float]  # left, top, right, bottom as fractions of the image's width and height

    @property
    def centre(self) -> tuple[float, float]:
        left, top, right, bottom = self.box
        return (left + right) / 2, (top + bottom) / 2


def iou(a: tuple, b: tuple) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0) * max(h, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def letterbox(image: Image.Image, size: int, fill: tuple[int, int, int]) -> tuple[np.ndarray, float]:
    """The image scaled to fit ``size`` x ``size`` (top-left, the rest ``fill``) as an RGB array, and the scale."""
    w, h = image.size
    scale = size / max(w, h)
    resized = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(resized, (0, 0))
    return np.asarray(canvas, np.float32), scale


def detector_input(image: Image.Image, size: int, mean, std, bgr: bool) -> tuple[np.ndarray, float]:
    """[1, 3, size, size] float32: letterboxed, channels in the model's order, normalized; and the scale."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    fill = mean[::-1] if bgr else mean  # padding in the mean colour is zero after normalization
    pixels, scale = letterbox(image.convert("RGB"), size, tuple(int(round(float(v))) for v in fill))
    if bgr:
        pixels = pixels[..., ::-1]
    x = (pixels - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32), scale


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_limit: float = IOU_LIMIT) -> list[int]:
    """Indices of the boxes kept, best first: each drops the later ones that overlap it by more than the limit."""
    order = list(np.argsort(-scores))
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    kept = []
    while order:
        best = order.pop(0)
        kept.append(best)
        rest = np.asarray(order, dtype=np.int64)
        if not rest.size:
            break
        left = np.maximum(boxes[best, 0], boxes[rest, 0])
        top = np.maximum(boxes[best, 1], boxes[rest, 1])
        right = np.minimum(boxes[best, 2], boxes[rest, 2])
        bottom = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = (right - left).clip(0) * (bottom - top).clip(0)
        iou = inter / np.maximum(area[best] + area[rest] - inter, 1e-9)
        order = [int(i) for i, overlap in zip(rest, iou, strict=True) if overlap <= iou_limit]
    return kept


class ObjectDetector:
    """Objects in a photo. Safe to share between threads: it only runs one onnxruntime session."""

    def __init__(self, bundle: Bundle, threads: int | None = None):
        m = bundle.manifest["detector"]
        self.session = create_session(bundle.file(m["graph"]), threads)
        self.labels = bundle.json(m["labels"])
        if not (isinstance(self.labels, list) and all(isinstance(x, str) and x for x in self.labels)):
            raise BundleError(f"bundle {bundle.path}: {m['labels']} is not a list of class names")
        self.size, self.strides, self.reg_max = m["input_size"], m["strides"], m["reg_max"]
        self.mean, self.std = np.asarray(m["mean"], np.float32), np.asarray(m["std"], np.float32)
        self.bgr = m["channel_order"] == "BGR"
        self.min_score = m["min_score"]
        names = {o.name for o in self.session.get_outputs()}
        missing = [f"{kind}_{s}" for s in self.strides for kind in ("scores", "distances")]
        missing = [name for name in missing if name not in names]
        if missing:
            raise BundleError(f"bundle {bundle.path}: the detector graph lacks outputs {', '.join(missing)}")

    def detect(self, image, min_score: float | None = None) -> list[Detection]:
        """The objects found, best first, boxes as fractions of the image's size; ``min_score``: report classes from
        this score on (default: the manifest's)."""
        min_score = self.min_score if min_score is None else min_score
        image = load_image(image)
        x, scale = detector_input(image, self.size, self.mean, self.std, self.bgr)
        names = [o.name for o in self.session.get_outputs()]
        outputs = dict(zip(names, self.session.run(names, {"input_1:0": x}), strict=True))
        boxes, scores, classes = [], [], []
        bins = np.arange(self.reg_max + 1, dtype=np.float32)
        for stride in self.strides:
            cell_scores = outputs[f"scores_{stride}"][0]  # [cells, classes]
            cells, cls = np.nonzero(cell_scores >= min_score)
            if not cells.size:
                continue
            logits = outputs[f"distances_{stride}"][0][cells].reshape(len(cells), 4, self.reg_max + 1)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            distances = (p / p.sum(-1, keepdims=True)) @ bins * stride  # [n, 4] in input pixels
            grid = self.size // stride
            cx, cy = (cells % grid + 0.5) * stride, (cells // grid + 0.5) * stride
            boxes.append(np.stack([cx, cy, cx, cy], 1) + distances * np.array([-1, -1, 1, 1], np.float32))
            scores.append(cell_scores[cells, cls])
            classes.append(cls)
        if not boxes:
            return []
        boxes, scores, classes = np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes)
        w, h = image.size
        found = []
        for c in np.unique(classes):
            mine = np.nonzero(classes == c)[0]
            for i in non_max_suppression(boxes[mine], scores[mine]):
                left, top, right, bottom = (boxes[mine[i]] / scale / np.array([w, h, w, h])).clip(0, 1)
                if right > left and bottom > top:
                    found.append(Detection(self.labels[c], float(scores[mine[i]]), (left, top, right, bottom)))
        return sorted(found, key=lambda d: -d.score)
