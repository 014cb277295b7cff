"""Wyoming audio: PCM chunks at any rate, width and channel count -> the speech model's mono samples, resampled as
they arrive; speech -> 16-bit mono PCM chunks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import soxr

from edgemm.runtime.errors import AudioError
from edgemm.runtime.limits import SAMPLE_RATES
from edgemm.runtime.speech.audio import load_audio
from edgemm.runtime.speech.stream import MAX_STREAM_S
from edgemm.runtime.speech.wake import SAMPLE_RATE as WAKE_RATE

# Bytes a sample -> its numpy type: 8-bit PCM is unsigned (centred on 128), as in WAV and the protocol's own converter.
WIDTHS = {1: np.dtype(np.uint8), 2: np.dtype("<i2"), 4: np.dtype("<i4")}
MAX_CHANNELS = 16  # the channels edgemm's audio input mixes down (runtime/speech/audio.py)
MAX_UTTERANCE_S = MAX_STREAM_S  # one utterance: one Whisper window, as the HTTP live endpoint allows
CHUNK_SAMPLES = 1024  # samples per audio-chunk sent back (what wyoming-piper sends: 46 ms at 22,050 Hz)


class FormatError(AudioError):
    """Audio in a format the protocol does not allow, or a chunk that does not hold whole frames."""


def _field(data: dict, name: str, low: int, high: int, what: str) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FormatError(f"{name} must be {what}, not {value!r}")
    return value


@dataclass(frozen=True)
class PcmFormat:
    rate: int  # samples a second, per channel
    width: int  # bytes a sample: 1 (unsigned), 2 or 4 (signed little-endian)
    channels: int  # interleaved channels, mixed down to mono

    @classmethod
    def of(cls, data: dict) -> PcmFormat:
        """The format an ``audio-start`` or ``audio-chunk`` event's data announces (FormatError if it cannot be)."""
        rate = _field(data, "rate", *SAMPLE_RATES, f"a sample rate in Hz from {SAMPLE_RATES[0]} to {SAMPLE_RATES[1]}")
        if data.get("width") not in WIDTHS:
            raise FormatError(f"width must be 1, 2 or 4 bytes a sample, not {data.get('width')!r}")
        channels = _field(data, "channels", 1, MAX_CHANNELS, f"a channel count from 1 to {MAX_CHANNELS}")
        return cls(rate, data["width"], channels)

    @property
    def frame(self) -> int:
        return self.width * self.channels


def mono(payload: bytes, fmt: PcmFormat) -> np.ndarray:
    """A chunk's samples, mixed to mono float32 at its own rate."""
    if len(payload) % fmt.frame:
        raise FormatError(
            f"an audio chunk of {len(payload)} bytes is not whole frames of {fmt.frame} bytes "
            f"({fmt.width}-byte samples, {fmt.channels} channels)"
        )
    if not payload:
        return np.zeros(0, np.float32)
    samples = np.frombuffer(payload, WIDTHS[fmt.width]).reshape(-1, fmt.channels)
    return load_audio(samples, fmt.rate, fmt.rate)


class Utterance:
    """One utterance arriving in chunks of one format, resampled to the speech model's rate as it comes and fed to a
    live transcription (``stream``); over MAX_UTTERANCE_S of audio raises AudioError."""

    def __init__(self, transcriber, fmt: PcmFormat, options=None):
        self.fmt, self.rate = fmt, transcriber.sample_rate
        self.started = time.monotonic()
        self.stream = transcriber.stream(options, max_s=MAX_UTTERANCE_S)
        self.resampler = soxr.ResampleStream(fmt.rate, self.rate, 1, dtype="float32") if fmt.rate != self.rate else None

    def feed(self, fmt: PcmFormat, payload: bytes) -> None:
        if fmt != self.fmt:
            raise FormatError(f"an audio chunk is {_said(fmt)} in an utterance started as {_said(self.fmt)}")
        self._add(mono(payload, fmt))

    def end(self) -> None:
        """No more audio: the resampler's last samples join the utterance."""
        if self.resampler is not None:
            self._add(np.zeros(0, np.float32), last=True)

    def _add(self, samples: np.ndarray, last: bool = False) -> None:
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples, last=last)
        if samples.size:
            self.stream.feed(samples, partial=False)


class Listening:
    """Audio for wake-word detection, chunks of one format resampled to 16 kHz as they come and fed to ``detector``
    (a :class:`~edgemm.runtime.speech.wake.WakeWord`); it runs as long as the client streams (no length limit: the
    detector keeps only its last 1.3 s of features)."""

    def __init__(self, detector, fmt: PcmFormat):
        self.detector, self.fmt = detector, fmt
        self.resampler = soxr.ResampleStream(fmt.rate, WAKE_RATE, 1, dtype="float32") if fmt.rate != WAKE_RATE else None
        self.detected = False

    def feed(self, fmt: PcmFormat, payload: bytes) -> list:
        """The detections this chunk completes."""
        if fmt != self.fmt:
            raise FormatError(f"an audio chunk is {_said(fmt)} in audio started as {_said(self.fmt)}")
        samples = mono(payload, fmt)
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        found = self.detector.feed(samples) if samples.size else []
        self.detected = self.detected or bool(found)
        return found


def _said(fmt: PcmFormat) -> str:
    return f"{fmt.rate} Hz, {fmt.width} bytes, {fmt.channels} channels"


def pcm_chunks(samples: np.ndarray, size: int = CHUNK_SAMPLES) -> Iterator[bytes]:
    """Float samples as 16-bit little-endian PCM, ``size`` samples a chunk."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    step = 2 * size
    for start in range(0, len(pcm), step):
        yield pcm[start : start + step]
