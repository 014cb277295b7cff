"""Image classification with an ImageNet ``vision`` bundle (MobileNetV2): top-k labels with probabilities."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgemm.runtime.bundle import Bundle, open_bundle
from edgemm.runtime.errors import BundleError
from edgemm.runtime.limits import check_memory_for
from edgemm.runtime.sessions import create_session
from edgemm.runtime.vision.image import load_image

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def preprocess(image, resize_shorter: int = 256, crop: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """torchvision's ImageNet evaluation transform: shorter side to 256 (bilinear, antialiased), centre 224 crop,
    0..1, normalized; [1, 3, crop, crop] float32."""
    image = load_image(image)
    w, h = image.size
    if w <= h:
        size = (resize_shorter, int(resize_shorter * h / w))
    else:
        size = (int(resize_shorter * w / h), resize_shorter)
    image = image.resize(size, Image.BILINEAR)
    w, h = image.size
    left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    x = np.asarray(image, np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


@dataclass(frozen=True)
class Label:
    name: str  # e.g. "tabby, tabby cat"
    score: float  # softmax probability
    index: int


def _is_name(label) -> bool:
    return isinstance(label, str) and bool(label)


class ImageClassifier:
    """Top-k ImageNet labels of a photo. Safe to share between threads: it only runs one onnxruntime session."""

    def __init__(self, bundle: Bundle, threads: int | None = None):
        m = bundle.manifest
        check_memory_for(*bundle.graph_files())
        self.bundle = bundle
        self.session = create_session(bundle.file(m["graphs"]["classifier"]), threads)
        self.labels = bundle.json(m["labels"])
        classes = m["model"]["classes"]
        outputs = self.session.get_outputs()[0].shape[-1]
        if not (isinstance(self.labels, list) and len(self.labels) == classes and all(map(_is_name, self.labels))):
            raise BundleError(f"bundle {bundle.path}: {m['labels']} is not a list of {classes} class names")
        if isinstance(outputs, int) and outputs != classes:
            raise BundleError(f"bundle {bundle.path}: the classifier gives {outputs} classes, the manifest {classes}")
        self.pre = m["preprocessing"]

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int | None = None) -> ImageClassifier:
        return cls(open_bundle(path, "vision"), threads=threads)

    def classify(self, image, k: int = 5) -> list[Label]:
        p = self.pre
        x = preprocess(image, p["resize_shorter"], p["crop"], p["mean"], p["std"])
        logits = self.session.run(None, {"pixel_values": x})[0][0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        top = np.argsort(-probs)[:k]
        return [Label(self.labels[i], float(probs[i]), int(i)) for i in top]
