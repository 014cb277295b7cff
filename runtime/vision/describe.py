"""The offline image path: an ImageNet classifier, an object detector and an optional OCR turn a photo into a short
grounded text that the language model answers from.

The description says only what the models reported: the classifier's labels, the objects found with how many of
each, where they are and their colours, the photo's main colours, and the text read in it. The prompt tells the model
to answer from it alone, and to say so when it does not tell. A question about text (a sign, what it says) is told
outright when no text could be read, and why, so that a small model does not make the text up.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field

from edgemm.runtime import cancel
from edgemm.runtime.bundle import open_bundle
from edgemm.runtime.limits import release_memory
from edgemm.runtime.vision.classify import ImageClassifier, Label
from edgemm.runtime.vision.colours import colour_names
from edgemm.runtime.vision.detect import Detection, ObjectDetector, iou
from edgemm.runtime.vision.image import load_images
from edgemm.runtime.vision.ocr import MAX_SIDE as OCR_MAX_SIDE
from edgemm.runtime.vision.ocr import TextReader

log = logging.getLogger(__name__)

MIN_SCORE = 0.05  # labels below this probability are not mentioned
MAX_LABELS = 3
MIN_OCR_CONFIDENCE = 0.5
# A lone character is more often a shape (a cup's rim read as "O") than text: kept only when read with certainty.
MIN_LONE_CHARACTER_CONFIDENCE = 0.9
# ImageNet-1k orders its classes by WordNet: 0 (tench) to 397 (puffer) are the animals, 398 (abacus) on are not.
# Saying "no animal" outright keeps a small language model from inventing one.
ANIMAL_CLASSES = range(0, 398)
# The detector and the classifier check each other. Boxes of different classes overlapping this much are rival
# names for one object; the best is kept only when it leads the next by RIVAL_MARGIN, or when the classifier's top
# label is that class (then a score from CORROBORATED_SCORE is enough). NanoDet-m alone called a close-up of a cat
# "person" 0.49 / "cat" 0.43, and saw the espresso cup at only 0.34; the ImageNet classifier was sure of both.
SAME_OBJECT_IOU = 0.7
RIVAL_MARGIN = 0.1
CORROBORATED_SCORE = 0.3
MAX_OBJECTS = 20  # a description names at most this many objects
# Why no text was read in a photo, as the description says it to a question about text.
NO_TEXT_FOUND = "no text was found"
OCR_NOT_INSTALLED = "the ocr extra is not installed"
OCR_OFF = "text reading is turned off"
OCR_FAILED = "the text reader failed on this photo"
# How a question about text is answered when no text was read (the end of the prompt's last sentence).
UNREAD_ANSWER = ', starting with "I cannot read".'
# A question about text: reading a sign or a label, what something says, is written or spells.
TEXT_QUESTION = re.compile(
    r"\b(read|reads|say|says|said|written|writing|text|words?|letters?|spell|spells|spelled|signs?|labels?|"
    r"captions?|titles?|headlines?|printed|inscriptions?)\b",
    re.IGNORECASE,
)
# Each photo is reduced to this side as soon as it is decoded: the most any model here looks at (OCR brings photos
# within it; the classifier, the detector and the colours take a few hundred pixels). 16 photos then hold 192 MB
# at most, where 16 of 8000x8000 held 3 GB.
WORK_SIDE = OCR_MAX_SIDE
# COCO classes the ImageNet classifier can confirm, by ImageNet-1k class index (WordNet order: 151..268 are the dog
# breeds, 281..285 the domestic cats).
IMAGENET_TO_COCO = {
    **dict.fromkeys(range(151, 269), "dog"),
    **dict.fromkeys(range(281, 286), "cat"),
    **dict.fromkeys((*range(7, 25), *range(80, 101), *range(127, 147)), "bird"),
    **dict.fromkeys(range(294, 298), "bear"),
    **dict.fromkeys((101, 385, 386), "elephant"),
    **dict.fromkeys((345, 346, 347), "cow"),
    **dict.fromkeys((348, 349), "sheep"),
    339: "horse",
    340: "zebra",
    **dict.fromkeys((504, 967, 968), "cup"),
    **dict.fromkeys((665, 670), "motorcycle"),
    **dict.fromkeys((444, 671), "bicycle"),
    **dict.fromkeys((436, 468, 511, 609, 627, 656, 717, 751, 817), "car"),
    **dict.fromkeys((620, 681), "laptop"),
    851: "tv",
    **dict.fromkeys((409, 892), "clock"),
    **dict.fromkeys((440, 720, 737, 898, 907), "bottle"),
}
OBJECT_CENTRE = 0.6  # an object's colours are read from the middle 60% of its box, less of the background
FILLS_PHOTO = 0.8  # a box covering this share of the photo "fills the photo" rather than having a position
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
PLURALS = {"person": "people", "mouse": "mice", "knife": "knives", "skis": "skis", "sheep": "sheep",
           "scissors": "scissors", "bus": "buses", "couch": "couches", "bench": "benches", "sandwich": "sandwiches",
           "wine glass": "wine glasses", "toothbrush": "toothbrushes", "hair drier": "hair driers"}  # fmt: skip


@dataclass(frozen=True)
class SceneObject:
    detection: Detection
    colours: list[str]  # e.g. ["orange", "brown"]

    @property
    def position(self) -> str:
        """Where it is: "filling the photo", "on the left", "at the top right", "in the centre", ..."""
        left, top, right, bottom = self.detection.box
        if (right - left) * (bottom - top) >= FILLS_PHOTO:
            return "filling the photo"
        cx, cy = self.detection.centre
        across = "left" if cx < 0.4 else "right" if cx > 0.6 else ""
        down = "top" if cy < 0.4 else "bottom" if cy > 0.6 else ""
        if across and down:
            return f"at the {down} {across}"
        if across:
            return f"on the {across}"
        return f"at the {down}" if down else "in the centre"

    @property
    def colour(self) -> str:
        return " and ".join(self.colours)


def reconcile(detections: list[Detection], top_label: Label, min_score: float) -> list[Detection]:
    """The objects to report from the detector's candidates (all classes from CORROBORATED_SCORE on, best first):
    rival names for one box are settled as the constants above say. The classifier names one main subject, so it
    lowers the bar for the best box of its class only."""
    confirmed = IMAGENET_TO_COCO.get(top_label.index)
    subject = next((d for d in detections if d.label == confirmed), None)
    kept = []
    for d in detections:
        rivals = [r for r in detections if r.label != d.label and iou(r.box, d.box) >= SAME_OBJECT_IOU]
        best_rival = max((r.score for r in rivals), default=0.0)
        if d is subject:
            keep = d.score >= best_rival - RIVAL_MARGIN
        else:
            beaten = any(r is subject for r in rivals)
            keep = d.score >= min_score and d.score >= best_rival + RIVAL_MARGIN and not beaten
        if keep:
            kept.append(d)
    return kept[:MAX_OBJECTS]


def counted(label: str, objects: list[SceneObject]) -> str:
    """'one red and grey motorcycle, in the centre'; 'two cats: a brown one on the left, a grey one on the right'."""
    n = len(objects)
    if n == 1:
        return f"one {objects[0].colour} {label}, {objects[0].position}"
    word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
    each = ", ".join(f"{'an' if o.colour[0] in 'aeiou' else 'a'} {o.colour} one {o.position}" for o in objects)
    return f"{word} {PLURALS.get(label, label + 's')}: {each}"


@dataclass
class ImageFacts:
    labels: list[Label]
    text: list[str] = field(default_factory=list)  # lines read by OCR, in reading order
    ocr: bool = False  # whether OCR ran
    unread: str = OCR_OFF  # why OCR did not run (OCR_NOT_INSTALLED, OCR_OFF, OCR_FAILED)
    objects: list[SceneObject] | None = None  # what the detector found (None: no detector ran)
    colours: list[str] = field(default_factory=list)  # the photo's main colours

    def describe_objects(self) -> str:
        """E.g. 'Objects detected: two cats: a grey one on the left, a brown one on the right; one red motorcycle, in
        the centre. Nothing else was detected.'"""
        if not self.objects:
            return "The object detector found nothing it was sure of."
        groups: dict[str, list[SceneObject]] = {}
        for obj in self.objects:
            groups.setdefault(obj.detection.label, []).append(obj)
        parts = []
        for label, objs in groups.items():
            objs.sort(key=lambda o: o.detection.centre[0])  # left to right
            parts.append(counted(label, objs))
        return f"Objects detected: {'; '.join(parts)}. Nothing else was detected."

    def describe(self, about_text: bool = False) -> str:
        """E.g. 'Objects detected: one brown cat, filling the photo. Nothing else was detected. The photo as a whole
        looks like an animal: tiger cat or tabby. There is no text in the photo.' (Without a detector: 'The photo
        shows an animal: tiger cat or tabby. ...') ``about_text``: the question asks about text, so a photo with none
        read says why ('No text could be read in the photo (the ocr extra is not installed).')."""
        kept = [lab for lab in self.labels if lab.score >= MIN_SCORE][:MAX_LABELS] or self.labels[:1]
        animals = [lab.name.split(",")[0] for lab in kept if lab.index in ANIMAL_CLASSES]
        things = [lab.name.split(",")[0] for lab in kept if lab.index not in ANIMAL_CLASSES]
        if self.objects is None:
            parts = [f"an animal: {' or '.join(animals)}"] if animals else []
            if things:
                parts.append(f"{'an object' if animals else 'no animal; objects'}: {' or '.join(things)}")
            text = "The photo shows " + "; ".join(parts) + "."
        else:
            # The counted objects lead: questions are mostly about them. The classifier's view of the whole photo
            # follows, and says outright when there is no animal, which keeps a small model from inventing one.
            text = self.describe_objects() + " The photo as a whole looks like "
            text += f"an animal: {' or '.join(animals)}." if animals else f"{' or '.join(things)}. There is no animal."
        if self.colours and not self.objects:  # objects carry their own colours; the photo's would compete
            text += f" Overall colours of the photo: {', '.join(self.colours)}."
        if self.text:
            text += f' Text in the photo: "{" ".join(self.text)}".'
        elif about_text:
            text += f" No text could be read in the photo ({NO_TEXT_FOUND if self.ocr else self.unread})."
        elif self.ocr:
            text += " There is no text in the photo."
        return text

    def to_dict(self) -> dict:
        objects = [
            {
                "label": o.detection.label,
                "score": round(o.detection.score, 4),
                "box": [round(v, 4) for v in o.detection.box],
                "position": o.position,
                "colours": o.colours,
            }
            for o in self.objects or []
        ]
        return {
            "labels": [{"name": lab.name, "score": round(lab.score, 4)} for lab in self.labels],
            "objects": objects,
            "colours": self.colours,
            "text": self.text,
        }


def _is_text(text: str, confidence: float) -> bool:
    letters = sum(c.isalnum() for c in text)
    return confidence >= (MIN_LONE_CHARACTER_CONFIDENCE if letters < 2 else MIN_OCR_CONFIDENCE)


class SceneDescriber:
    """Labels, objects, colours (and OCR text) of a photo. Safe to share between threads: its models run
    concurrently."""

    def __init__(
        self,
        classifier: ImageClassifier,
        reader: TextReader | None = None,
        detector: ObjectDetector | None = None,
        unread: str = OCR_OFF,
    ):
        """``unread``: why there is no ``reader`` (OCR_NOT_INSTALLED or OCR_OFF)."""
        self.classifier, self.reader, self.detector, self.unread = classifier, reader, detector, unread

    @classmethod
    def load(cls, path=None, threads: int | None = None, ocr: bool = True) -> SceneDescriber:
        unread = _unread(ocr)
        reader = TextReader(threads) if unread is None else None
        classifier = ImageClassifier.load(path, threads=threads)
        detector = ObjectDetector(classifier.bundle, threads=threads) if _has_detector(classifier.bundle) else None
        return cls(classifier, reader, detector, unread or OCR_OFF)

    def facts(self, image) -> ImageFacts:
        return self.facts_of([image])[0]

    def facts_of(self, images: list) -> list[ImageFacts]:
        return describe_in_stages(
            images,
            lambda: self.classifier,
            (lambda: self.reader) if self.reader else None,
            (lambda: self.detector) if self.detector else None,
            unread=self.unread,
        )


class OnDemandDescriber:
    """The photo models loaded for each photo question and dropped after it, one model at a time: the assistant
    between scene questions does without the classifier's, detector's and OCR's ~65 MB, and during one holds the
    largest of them only (the OCR's models too are loaded one step at a time, and only the detector for a photo
    without text), for ~0.3 s more per photo question (a 451x300 photo on 2 cores:
    0.49 instead of 0.20 s; machine profile ``pi``). The vision
    bundle is checked once, here, so that a missing one fails at start-up. Safe to share between threads: questions
    are described one at a time (two would hold two copies of the models)."""

    def __init__(self, path=None, threads: int | None = None, ocr: bool = True):
        bundle = open_bundle(path, "vision")
        self.path, self.threads = bundle.path, threads
        self.unread, self.detector = _unread(ocr), _has_detector(bundle)
        self.ocr = self.unread is None
        self._lock = threading.Lock()

    def facts(self, image) -> ImageFacts:
        return self.facts_of([image])[0]

    def facts_of(self, images: list) -> list[ImageFacts]:
        with self._lock:
            bundle = open_bundle(self.path, "vision")
            return describe_in_stages(
                images,
                lambda: ImageClassifier(bundle, self.threads),
                (lambda: TextReader(self.threads, on_demand=True)) if self.ocr else None,
                (lambda: ObjectDetector(bundle, self.threads)) if self.detector else None,
                release=True,
                unread=self.unread or OCR_OFF,
            )


def describe_in_stages(
    images: list, classifier, reader=None, detector=None, release: bool = False, unread: str = OCR_OFF
):
    """The facts of each image, one model at a time over all of them: labels, then text, then objects. Each model
    argument is a function that gives the model (None: that stage does not run; ``unread`` says why for the
    reader); with ``release`` each model is dropped after its stage and its memory handed back before the next one
    loads. A cancelled job stops between images and between models."""
    images = load_images(images, max_side=WORK_SIDE)

    def stage(get_model, work, *columns) -> list:
        if get_model is None:
            return [None] * len(images)
        cancel.check()
        model = get_model()
        try:
            return [_checked(work, model, *row) for row in zip(images, *columns, strict=True)]
        finally:
            del model  # the last reference when ``get_model`` made it
            if release:
                release_memory()

    labels = stage(classifier, lambda model, image: model.classify(image, k=5))
    texts = stage(reader, _read_text)  # None: no text was read (no OCR, or it failed)
    objects = stage(detector, lambda model, image, top: _objects(model, image, top[0]), labels)
    unread = unread if reader is None else OCR_FAILED  # a reader that ran left None only where it failed
    return [
        ImageFacts(top, text or [], ocr=text is not None, unread=unread, objects=found, colours=colour_names(image))
        for image, top, text, found in zip(images, labels, texts, objects, strict=True)
    ]


def _checked(work, *args):
    """``work(*args)``, unless the job was cancelled."""
    cancel.check()
    return work(*args)


def _read_text(reader: TextReader, image) -> list[str] | None:
    try:
        return [text for text, confidence in reader.read(image) if _is_text(text, confidence)]
    except Exception as e:  # OCR is best effort: a photo it cannot read leaves the rest of the description
        log.warning("could not read text in the image (%s: %s)", type(e).__name__, e)
        return None  # then the description does not claim there is no text


def _objects(detector: ObjectDetector, image, top_label: Label) -> list[SceneObject]:
    candidates = detector.detect(image, min_score=CORROBORATED_SCORE)
    return [
        SceneObject(d, colour_names(image, d.box, centre=OBJECT_CENTRE))
        for d in reconcile(candidates, top_label, detector.min_score)
    ]


def _unread(ocr: bool) -> str | None:
    """Why text in photos will not be read (None: it will be)."""
    if not ocr:
        return OCR_OFF
    if not TextReader.available():
        log.info("OCR is not installed (pip install 'edgemm[ocr]'): text in images is not read")
        return OCR_NOT_INSTALLED
    return None


def _has_detector(bundle) -> bool:
    if bundle.manifest.get("detector") is None:
        log.info(
            "%s has no object detector: objects are not counted (rebuild it with edgemm export vision)", bundle.path
        )
        return False
    return True


def asks_about_text(question: str) -> bool:
    """Whether ``question`` asks about text in the photo ("What does the sign say?", "Read the label.")."""
    return TEXT_QUESTION.search(question) is not None


def grounded_question(question: str, facts: list[ImageFacts]) -> str:
    """The user turn for the language model: what the models found, then the question. A question about text
    where none was read is told so, and how to answer: told only that no text was read, Qwen2.5-Coder-0.5B still
    answered "What does the sign say?" with 'The sign says "Motorcycle".'"""
    about_text = asks_about_text(question)
    unread = about_text and not any(f.text for f in facts)
    return (
        f"{grounded_start(facts, about_text)} {question}\n"
        f"Answer in one short sentence using only the description{UNREAD_ANSWER if unread else '.'}"
    )


def grounded_start(facts: list[ImageFacts], about_text: bool = False) -> str:
    """The start of :func:`grounded_question`, up to the question: the same for every question (but one about
    text), so the language model can read it before the question is known."""
    if len(facts) == 1:
        found = f"Photo description: {facts[0].describe(about_text)}"
    else:
        found = "\n".join(f"Photo {i + 1} description: {f.describe(about_text)}" for i, f in enumerate(facts))
    return f"{found}\nQuestion about the {'photo' if len(facts) == 1 else 'photos'}:"
