"""Voice activity detection with Silero VAD (its ONNX model, run in onnxruntime; no torch).

The model scores 32 ms chunks (512 samples at 16 kHz, each preceded by 64 samples of context) and carries
an LSTM state between chunks. :class:`Hysteresis` turns the scores into speech on/off decisions, for whole
recordings (:func:`speech_spans`, used by the transcriber) and for live streams (the assistant's endpointer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgemm.runtime import cancel
from edgemm.runtime.sessions import create_session

SAMPLE_RATE = 16000
CHUNK = 512  # samples scored at once (32 ms)
BLOCK_MS = 1000 * CHUNK / SAMPLE_RATE
CONTEXT = 64  # samples of the previous chunk the model sees
STATE_SHAPE = (2, 1, 128)
CHECK_EVERY = 256  # chunks (8 s of audio, tens of milliseconds of work) between cancellation checks


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
        probs = np.empty(n, np.float32)
        stream = VADStream(self)
        for i in range(n):
            if i % CHECK_EVERY == 0:
                cancel.check()
            chunk = samples[i * CHUNK : (i + 1) * CHUNK]
            probs[i] = stream(np.pad(chunk, (0, CHUNK - len(chunk))) if len(chunk) < CHUNK else chunk)
        return probs

    def speech_regions(self, samples: np.ndarray, options: VADOptions = VADOptions()) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` sample offsets of speech, padded and merged."""
        return speech_spans(self.probabilities(samples), len(samples), options)


def blocks_for(ms: float) -> int:
    """How many 32 ms blocks make at least ``ms`` milliseconds (at least one)."""
    return max(1, math.ceil(ms / BLOCK_MS - 1e-9))


class Hysteresis:
    """Speech on/off from a stream of per-block speech probabilities, with two thresholds.

    Speech starts after ``start_blocks`` blocks in a row at or above ``threshold``, and ends after ``end_blocks``
    blocks in a row below ``neg_threshold``; blocks in between keep the current state. ``update`` returns
    ``"start"`` or ``"end"`` on the block where the state changes; ``start`` is then the index of the first speech
    block and ``end`` the index of the first silent block that ended it. ``silent`` counts the silent blocks in a row.
    """

    def __init__(self, threshold: float, neg_threshold: float, start_blocks: int = 1, end_blocks: int = 1):
        self.threshold, self.neg_threshold = threshold, neg_threshold
        self.start_blocks, self.end_blocks = start_blocks, end_blocks
        self.blocks = 0  # blocks seen
        self.start = self.end = 0
        self.reset()

    def reset(self) -> None:
        """Back to silence (the block count goes on)."""
        self.speaking = False
        self.voiced = self.silent = 0

    def update(self, p: float) -> str | None:
        i = self.blocks
        self.blocks += 1
        if not self.speaking:
            self.voiced = self.voiced + 1 if p >= self.threshold else 0
            if self.voiced >= self.start_blocks:
                self.speaking, self.silent, self.start = True, 0, i - self.voiced + 1
                return "start"
            return None
        self.silent = self.silent + 1 if p < self.neg_threshold else 0
        if self.silent >= self.end_blocks:
            self.speaking, self.voiced, self.end = False, 0, i - self.silent + 1
            return "end"
        return None


def speech_spans(probs: np.ndarray, n_samples: int, options: VADOptions = VADOptions()) -> list[tuple[int, int]]:
    """Sample offsets of speech from block probabilities: regions shorter than ``min_speech_ms`` dropped, the rest
    padded by ``pad_ms`` on each side and merged where they touch."""
    state = Hysteresis(options.threshold, options.neg_threshold, end_blocks=blocks_for(options.min_silence_ms))
    regions = []
    for p in probs:
        if state.update(p) == "end":
            regions.append((state.start, state.end))
    if state.speaking:
        regions.append((state.start, len(probs)))
    pad = int(options.pad_ms * SAMPLE_RATE / 1000)
    spans: list[tuple[int, int]] = []
    for a, b in regions:
        if (b - a) * BLOCK_MS < options.min_speech_ms:
            continue
        a, b = max(0, a * CHUNK - pad), min(n_samples, b * CHUNK + pad)
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
