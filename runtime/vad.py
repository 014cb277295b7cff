"""Voice activity detection with Silero VAD (its ONNX model, run in onnxruntime; no torch).

The model scores 32 ms chunks (512 samples at 16 kHz, each preceded by 64 samples of context) and carries
an LSTM state between chunks; :meth:`SileroVAD.speech_regions` turns the scores into speech spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemm.runtime.sessions import create_session

SAMPLE_RATE = 16000
CHUNK = 512  # samples scored at once (32 ms)
CONTEXT = 64  # samples of the previous chunk the model sees
STATE_SHAPE = (2, 1, 128)


@dataclass(frozen=True)
class VADOptions:
    threshold: float = 0.5  # speech starts when a chunk's probability reaches this
    neg_threshold: float = 0.35  # ... and ends when it stays below this
    min_speech_ms: int = 250  # shorter bursts are dropped
    min_silence_ms: int = 100  # silence needed to close a region
    pad_ms: int = 200  # kept on each side of a region


class SileroVAD:
    def __init__(self, model_path: Path):
        self.session = create_session(model_path, threads=1)

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability of every 32 ms chunk of 16 kHz ``samples``."""
        n = (len(samples) + CHUNK - 1) // CHUNK
        padded = np.zeros(n * CHUNK, np.float32)
        padded[: len(samples)] = samples
        stream = VADStream(self)
        return np.array([stream(padded[i * CHUNK : (i + 1) * CHUNK]) for i in range(n)], np.float32)

    def speech_regions(self, samples: np.ndarray, options: VADOptions = VADOptions()) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` sample offsets of speech, padded and merged."""
        probs = self.probabilities(samples)
        ms_per_chunk = 1000 * CHUNK / SAMPLE_RATE
        regions, start, silent = [], None, 0
        for i, p in enumerate(probs):
            if start is None:
                if p >= options.threshold:
                    start, silent = i, 0
            elif p < options.neg_threshold:
                silent += 1
                if silent * ms_per_chunk >= options.min_silence_ms:
                    regions.append((start, i - silent + 1))
                    start = None
            else:
                silent = 0
        if start is not None:
            regions.append((start, len(probs)))
        pad = int(options.pad_ms * SAMPLE_RATE / 1000)
        spans: list[tuple[int, int]] = []
        for a, b in regions:
            if (b - a) * ms_per_chunk < options.min_speech_ms:
                continue
            a, b = max(0, a * CHUNK - pad), min(len(samples), b * CHUNK + pad)
            if spans and a <= spans[-1][1]:
                spans[-1] = (spans[-1][0], b)
            else:
                spans.append((a, b))
        return spans


class VADStream:
    """Scores a live stream chunk by chunk (512 samples at 16 kHz), carrying the model's state and context."""

    def __init__(self, vad: SileroVAD):
        self.vad = vad
        self.reset()

    def reset(self) -> None:
        self.state = np.zeros(STATE_SHAPE, np.float32)
        self.context = np.zeros(CONTEXT, np.float32)

    def __call__(self, chunk: np.ndarray) -> float:
        if len(chunk) != CHUNK:
            raise ValueError(f"a VAD chunk is {CHUNK} samples, not {len(chunk)}")
        window = np.concatenate([self.context, chunk.astype(np.float32)])[None]
        out, self.state = self.vad.session.run(
            ["output", "stateN"], {"input": window, "state": self.state, "sr": np.array(SAMPLE_RATE, np.int64)}
        )
        self.context = window[0, -CONTEXT:]
        return float(out[0, 0])
