"""Wake words: openWakeWord's three-stage models (a ``wake`` bundle) run on a stream of 16 kHz audio.

Every 80 ms chunk: the melspectrogram graph turns the chunk (with 480 samples of the one before) into 8 log-mel
frames, scaled ``x / 10 + 2``; the embedding graph turns the last 76 frames into one 96-value embedding; each word's
classifier scores the last 16 embeddings (1.28 s). This is openWakeWord's own framing (``AudioFeatures`` in
openwakeword/utils.py, 16-bit sample values in), checked against its TFLite models by the export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemm.runtime.bundle import MANIFEST, Bundle, default_bundle, open_bundle
from edgemm.runtime.errors import BundleError, OptionsError
from edgemm.runtime.sessions import create_session

SAMPLE_RATE = 16000
CHUNK = 1280  # samples per step (80 ms): 8 hops of 160 samples
MEL_CONTEXT = 480  # samples of the previous chunk the melspectrogram sees (3 hops: 1760 in, 8 frames out)
INPUT_SCALE = 32768.0  # the models take 16-bit sample values, not -1..1
MEL_SCALE, MEL_OFFSET = 0.1, 2.0  # openWakeWord's transform of the graph's dB values: x / 10 + 2
EMBEDDING_WINDOW = 76  # mel frames per embedding (775 ms)
EMBEDDING_SIZE = 96
PRIME_SECONDS = 3.0  # silence run through first so the buffers hold real features (wyoming-openwakeword's autofill)


@dataclass(frozen=True)
class WakeOptions:
    refractory_seconds: float = 2.0  # after a detection, the same word is not reported again for this long
    thresholds: tuple[tuple[str, float], ...] = ()  # (word, score) overriding the manifest's thresholds


def verify_options(options: WakeOptions) -> None:
    if not 0 <= options.refractory_seconds <= 60:
        raise OptionsError(f"refractory_seconds must be 0..60, not {options.refractory_seconds}")
    for word, score in options.thresholds:
        if not 0 < score < 1:
            raise OptionsError(f"the threshold of {word} must be in (0, 1), not {score}")


@dataclass(frozen=True)
class Detection:
    word: str
    score: float
    seconds: float  # where the chunk that crossed the threshold ends, from the start of the stream


@dataclass(frozen=True)
class WakeModel:
    """One word's classifier as the manifest describes it."""

    word: str
    phrase: str  # what to say, e.g. "hey jarvis"
    graph: Path
    window: int  # embeddings it scores at once
    threshold: float


def check_framing(bundle: Bundle) -> None:
    """The bundle's audio frontend is the one this module runs (openWakeWord's); BundleError otherwise."""
    expected = {
        "sample_rate": SAMPLE_RATE,
        "chunk_samples": CHUNK,
        "mel_context_samples": MEL_CONTEXT,
        "input_scale": INPUT_SCALE,
        "mel_scale": MEL_SCALE,
        "mel_offset": MEL_OFFSET,
        "embedding_window": EMBEDDING_WINDOW,
        "embedding_size": EMBEDDING_SIZE,
    }
    features = bundle.section("features")
    for key, value in expected.items():
        if features.get(key) != value:
            raise BundleError(
                f"bundle {bundle.path}: features.{key} is {features.get(key)!r}; this runtime runs openWakeWord's "
                f"framing ({key} {value})"
            )


def word_models(bundle: Bundle) -> list[WakeModel]:
    return [
        WakeModel(word, entry["phrase"], bundle.file(entry["graph"]), int(entry["window"]), float(entry["threshold"]))
        for word, entry in bundle.section("words").items()
    ]


class Features:
    """Audio -> embeddings, one 80 ms chunk at a time (the shared first two stages)."""

    def __init__(self, bundle: Bundle, threads: int = 1):
        self.melspectrogram = create_session(bundle.file(bundle.section("graphs")["melspectrogram"]), threads)
        self.embedding = create_session(bundle.file(bundle.section("graphs")["embedding"]), threads)
        self.reset()

    def reset(self) -> None:
        self.context = np.zeros(MEL_CONTEXT, np.float32)
        self.mels = np.ones((EMBEDDING_WINDOW, 32), np.float32)  # openWakeWord's start; the priming replaces it

    def mel_frames(self, chunk: np.ndarray) -> np.ndarray:
        """The log-mel frames of one chunk of 16-bit sample values, scaled as the embedding model expects."""
        window = np.concatenate([self.context, chunk])[None, :]
        self.context = chunk[-MEL_CONTEXT:]
        (out,) = self.melspectrogram.run(["mels"], {"audio": window})
        return out[0, 0] * MEL_SCALE + MEL_OFFSET

    def step(self, chunk: np.ndarray) -> np.ndarray:
        """One chunk of 16-bit sample values in, its embedding (96 values) out."""
        frames = self.mel_frames(chunk)
        self.mels = np.concatenate([self.mels, frames])[-EMBEDDING_WINDOW:]
        (out,) = self.embedding.run(["embedding"], {"mels": self.mels[None, :, :, None]})
        return out.reshape(EMBEDDING_SIZE)


class WakeWord:
    """Streaming detector: :meth:`feed` 16 kHz float samples, get the detections they complete."""

    def __init__(self, bundle: Bundle, words: list[str] | None = None, options: WakeOptions = WakeOptions()):
        verify_options(options)
        check_framing(bundle)
        models = word_models(bundle)
        known = [m.word for m in models]
        unknown = [w for w in words or [] if w not in known]
        if unknown:
            raise OptionsError(f"no wake word {unknown[0]!r} in {bundle.path.name}; it has: {', '.join(known)}")
        self.models = [m for m in models if not words or m.word in words]
        overrides = dict(options.thresholds)
        self.thresholds = {m.word: overrides.get(m.word, m.threshold) for m in self.models}
        self.options = options
        self.features = Features(bundle)
        self.classifiers = {m.word: create_session(m.graph, threads=1) for m in self.models}
        self.history = max(m.window for m in self.models)
        self.reset()

    @classmethod
    def load(cls, bundle: str | Path | None = None, words: list[str] | None = None, **kwargs) -> WakeWord:
        """The ``wake`` bundle at ``bundle`` (default: the default preset's), for ``words`` (default: all)."""
        return cls(open_bundle(bundle, "wake"), words, **kwargs)

    @property
    def words(self) -> list[str]:
        return [m.word for m in self.models]

    def reset(self) -> None:
        """Forget the stream: the next sample is at 0 s."""
        self.features.reset()
        self.pending = np.zeros(0, np.float32)
        self.embeddings = np.zeros((self.history, EMBEDDING_SIZE), np.float32)
        for _ in range(int(PRIME_SECONDS * SAMPLE_RATE) // CHUNK):
            self._push(np.zeros(CHUNK, np.float32))
        self.chunks = 0
        self.quiet_until = {word: -1.0 for word in self.words}

    def _push(self, chunk: np.ndarray) -> None:
        embedding = self.features.step(chunk)
        self.embeddings = np.concatenate([self.embeddings, embedding[None, :]])[-self.history :]

    def chunk_scores(self, chunk: np.ndarray) -> dict[str, float]:
        """One chunk of 1280 float samples (-1..1) in; each word's score for the stream so far out."""
        values = np.clip(np.rint(chunk * INPUT_SCALE), -32768, 32767).astype(np.float32)
        self._push(values)
        self.chunks += 1
        scores = {}
        for model in self.models:
            window = self.embeddings[-model.window :][None, :, :]
            (score,) = self.classifiers[model.word].run(["score"], {"embeddings": window})
            scores[model.word] = float(score.reshape(-1)[0])
        return scores

    def feed(self, samples: np.ndarray) -> list[Detection]:
        """16 kHz mono float32 samples in (any length); the detections of the chunks they complete out."""
        samples = np.concatenate([self.pending, np.asarray(samples, np.float32).reshape(-1)])
        whole = len(samples) // CHUNK * CHUNK
        self.pending = samples[whole:]
        found = []
        for start in range(0, whole, CHUNK):
            scores = self.chunk_scores(samples[start : start + CHUNK])
            seconds = self.chunks * CHUNK / SAMPLE_RATE
            for word, score in scores.items():
                if score >= self.thresholds[word] and seconds >= self.quiet_until[word]:
                    found.append(Detection(word, score, seconds))
                    self.quiet_until[word] = seconds + self.options.refractory_seconds
        return found

    def scores(self, samples: np.ndarray) -> np.ndarray:
        """Every chunk's scores for a whole recording, on a fresh stream: ``[chunks, words]`` in :attr:`words`
        order (the stream is reset before and after)."""
        self.reset()
        samples = np.asarray(samples, np.float32).reshape(-1)
        out = np.zeros((len(samples) // CHUNK, len(self.models)), np.float32)
        for i in range(len(out)):
            out[i] = list(self.chunk_scores(samples[i * CHUNK : (i + 1) * CHUNK]).values())
        self.reset()
        return out


def optional_bundle(path: str | Path | None, off: bool = False) -> Bundle | None:
    """The wake bundle ``path`` names, else the default one when it is built (None when ``off``, or when none is
    built and none was named): servers offer wake words when they can."""
    if off or (path is None and not (default_bundle("wake") / MANIFEST).exists()):
        return None
    return open_bundle(path, "wake")
