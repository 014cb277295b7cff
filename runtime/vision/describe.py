"""The offline image path: an ImageNet classifier and an optional OCR turn a photo into a short grounded text that
the language model answers from.

The description says only what the two models reported (labels with their confidence, text read in the image) and
the prompt tells the model to answer from it alone, and to say so when it does not tell.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgemm.runtime.packages import installed
from edgemm.runtime.sessions import create_session
from edgemm.runtime.vision.classify import ImageClassifier, Label
from edgemm.runtime.vision.image import load_image

log = logging.getLogger(__name__)

MIN_SCORE = 0.05  # labels below this probability are not mentioned
MAX_LABELS = 3
MIN_OCR_CONFIDENCE = 0.5
# A lone character is more often a shape (a cup's rim read as "O") than text: kept only when read with certainty.
MIN_LONE_CHARACTER_CONFIDENCE = 0.9
# ImageNet-1k orders its classes by WordNet: 0 (tench) to 397 (puffer) are the animals, 398 (abacus) on are not.
# Saying "no animal" outright keeps a small language model from inventing one.
ANIMAL_CLASSES = range(0, 398)


@dataclass
class ImageFacts:
    labels: list[Label]
    text: list[str] = field(default_factory=list)  # lines read by OCR, in reading order
    ocr: bool = False  # whether OCR ran

    def describe(self) -> str:
        """E.g. 'The photo shows an animal: tiger cat or tabby. There is no text in the photo.'"""
        kept = [lab for lab in self.labels if lab.score >= MIN_SCORE][:MAX_LABELS] or self.labels[:1]
        animals = [lab.name.split(",")[0] for lab in kept if lab.index in ANIMAL_CLASSES]
        things = [lab.name.split(",")[0] for lab in kept if lab.index not in ANIMAL_CLASSES]
        parts = [f"an animal: {' or '.join(animals)}"] if animals else []
        if things:
            parts.append(f"{'an object' if animals else 'no animal; objects'}: {' or '.join(things)}")
        text = "The photo shows " + "; ".join(parts) + "."
        if self.text:
            text += f' Text in the photo: "{" ".join(self.text)}".'
        elif self.ocr:
            text += " There is no text in the photo."
        return text

    def to_dict(self) -> dict:
        return {"labels": [{"name": lab.name, "score": round(lab.score, 4)} for lab in self.labels], "text": self.text}


class TextReader:
    """PP-OCR through rapidocr-onnxruntime (the ``ocr`` extra).

    Safe to share between threads: rapidocr keeps per-image settings on its objects while it reads (its detector's
    resize), so one read runs at a time.
    """

    def __init__(self, threads: int | None = None):
        from rapidocr_onnxruntime import RapidOCR

        # Detection at the photo's own size (capped at 960 px) instead of upscaling its short side to 736 px: a 450 px
        # photo then needs 35 instead of 270 MB of activations, and reads a page of text as well.
        self.engine = RapidOCR(det_limit_type="max", det_limit_side_len=960)
        self._lock = threading.Lock()
        # Its sessions spin-wait after each run and take the cores from the LLM prefill that follows (100 instead of
        # 49 ms): recreate them with our options (rapidocr-onnxruntime 1.4.4 layout; left as they are otherwise).
        try:
            for part in (self.engine.text_det.infer, self.engine.text_cls.infer, self.engine.text_rec.session):
                part.session = create_session(Path(part.session._model_path), threads)
        except AttributeError:
            log.debug("unknown rapidocr layout: its onnxruntime sessions keep their own options")

    @staticmethod
    def available() -> bool:
        return installed("rapidocr_onnxruntime")

    def read(self, image) -> list[str]:
        pixels = np.asarray(load_image(image))
        with self._lock:
            result, _ = self.engine(pixels)
        return [text for _box, text, confidence in (result or []) if _is_text(text, float(confidence))]


def _is_text(text: str, confidence: float) -> bool:
    letters = sum(c.isalnum() for c in text)
    return confidence >= (MIN_LONE_CHARACTER_CONFIDENCE if letters < 2 else MIN_OCR_CONFIDENCE)


class SceneDescriber:
    """Labels (and OCR text) of a photo. Safe to share between threads: the classifier runs concurrently, the OCR
    one image at a time."""

    def __init__(self, classifier: ImageClassifier, reader: TextReader | None = None):
        self.classifier, self.reader = classifier, reader

    @classmethod
    def load(cls, path=None, threads: int | None = None, ocr: bool = True) -> SceneDescriber:
        reader = None
        if ocr and TextReader.available():
            reader = TextReader(threads)
        elif ocr:
            log.info("OCR is not installed (pip install 'edgemm[ocr]'): text in images is not read")
        return cls(ImageClassifier.load(path, threads=threads), reader)

    def facts(self, image) -> ImageFacts:
        image = load_image(image)
        labels = self.classifier.classify(image, k=5)
        text, ocr = [], self.reader is not None
        if self.reader:
            try:
                text = self.reader.read(image)
            except Exception as e:  # OCR is best effort: rapidocr raises its own types on extreme shapes
                log.warning("could not read text in the image (%s: %s)", type(e).__name__, e)
                ocr = False  # then the description does not claim there is no text
        return ImageFacts(labels, text, ocr=ocr)


def grounded_question(question: str, facts: list[ImageFacts]) -> str:
    """The user turn for the language model: what the models found, then the question."""
    if len(facts) == 1:
        found = f"Photo description: {facts[0].describe()}"
    else:
        found = "\n".join(f"Photo {i + 1} description: {f.describe()}" for i, f in enumerate(facts))
    return (
        f"{found}\nQuestion about the {'photo' if len(facts) == 1 else 'photos'}: {question}\n"
        "Answer in one short sentence using only the description."
    )
