"""Live transcription: audio fed as it arrives -> partial hypotheses while the person speaks -> the final transcript.

Each partial decodes the whole utterance so far (a length-adaptive bundle's encoder runs on that length only).
Words become *stable* when two hypotheses in a row agree on them (local agreement, as in Whisper-Streaming:
Machacek et al. 2023); stable words stay in every later partial. The final transcript is the batch transcription of
the same audio, so streaming costs no accuracy; when everything fed since the last partial is known to be silence,
that partial is final as it is. Method and figures: docs/BENCHMARKS.md ("Streaming transcription").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from edgemm.runtime import cancel
from edgemm.runtime.errors import AudioError, OptionsError
from edgemm.runtime.limits import check_float
from edgemm.runtime.speech.audio import load_audio
from edgemm.runtime.speech.transcribe import Transcription

PARTIAL_EVERY_S = 0.4  # seconds of new audio between partials
MAX_STREAM_S = 30.0  # one Whisper window: a longer utterance must be cut by its endpointer


@dataclass(frozen=True)
class Partial:
    text: str  # the whole hypothesis so far
    stable: str  # its first words, which later partials keep
    seconds: float  # audio heard so far


def _words(text: str) -> list[str]:
    return text.split()


def _key(word: str) -> str:
    """A word as hypotheses are compared: case and punctuation aside ("France?" and "france" agree)."""
    return re.sub(r"[^\w']", "", word.lower())


def _agreed(a: list[str], b: list[str]) -> int:
    """How many first words ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if _key(x) != _key(y):
            break
        n += 1
    return n


def continued(shown: str, text: str) -> str:
    """What a client that shows ``shown`` (stable words sent as they came) should show for the final ``text``: ``text``
    when it starts with ``shown``; else, when ``shown``'s words agree with ``text``'s first ones (case and punctuation
    aside), ``shown`` and the rest of ``text``'s words; else ``shown`` (the final replaced a shown word: the client
    gets the whole final text another way)."""
    if text.startswith(shown):
        return text
    have, words = _words(shown), _words(text)
    if _agreed(have, words) < len(have):
        return shown
    return " ".join([shown.rstrip(), *words[len(have) :]]) if len(words) > len(have) else shown


class TranscriptionStream:
    """``Transcriber.stream()``: ``feed(samples)`` as audio arrives returns a Partial every ``every_s`` seconds of new
    audio (else None); ``finish()`` returns the final Transcription. One utterance, one thread."""

    def __init__(self, transcriber, options=None, every_s: float = PARTIAL_EVERY_S, max_s: float = MAX_STREAM_S):
        self.transcriber, self.options = transcriber, options
        self.every = round(check_float(every_s, "every_s", 0.05, 30.0) * transcriber.sample_rate)
        self.limit = round(check_float(max_s, "max_s", 1.0, MAX_STREAM_S) * transcriber.sample_rate)
        self.chunks: list[np.ndarray] = []
        self.size = 0  # samples fed
        self.decoded = 0  # samples the last hypothesis heard
        self.last = None  # that hypothesis (a Transcription)
        self.previous: list[str] = []  # the words of the one before it
        self.stable: list[str] = []

    def feed(self, samples, sample_rate: int | None = None, partial: bool = True) -> Partial | None:
        """Add audio (16 kHz samples, or any array / bytes ``load_audio`` reads with its ``sample_rate``); a Partial
        when ``every_s`` of audio arrived since the last one (``partial=False``: only add it)."""
        rate = self.transcriber.sample_rate
        samples = load_audio(samples, sample_rate or rate, rate)
        if self.size + samples.size > self.limit:
            raise AudioError(
                f"the stream is over {self.limit / rate:.0f} s without a pause: cut it into utterances first"
            )
        self.chunks.append(samples)
        self.size += samples.size
        return self.partial() if partial and self.due else None

    @property
    def due(self) -> bool:
        """Whether ``every_s`` of audio arrived since the last partial."""
        return self.size - self.decoded >= self.every

    @property
    def seconds(self) -> float:
        return self.size / self.transcriber.sample_rate

    def audio(self) -> np.ndarray:
        if len(self.chunks) > 1:
            self.chunks = [np.concatenate(self.chunks)]
        return self.chunks[0] if self.chunks else np.zeros(0, np.float32)

    def partial(self) -> Partial:
        """Decode everything fed so far now: the hypothesis, with its stable start."""
        cancel.check()
        self.last = self.transcriber.transcribe(self.audio(), self.transcriber.sample_rate, self.options)
        self.decoded = self.size
        words = _words(self.last.text)
        kept = _agreed(self.stable, words)
        if kept == len(self.stable):  # the new words agree with what is stable: what the last two agree on joins
            previous = self.previous[kept:] if _agreed(self.stable, self.previous) == kept else []
            agreed = _agreed(previous, words[kept:])
            self.stable += words[kept : kept + agreed]
            kept += agreed
        self.previous = words
        text = " ".join(self.stable + words[kept:])
        return Partial(text, " ".join(self.stable), self.decoded / self.transcriber.sample_rate)

    def keep(self, size: int) -> None:
        """Drop the audio after its first ``size`` samples (an endpointer that cut a long utterance in a pause
        before the audio fed so far); a hypothesis that heard more is decoded again by ``finish``."""
        if size < self.size:
            self.chunks, self.size = [self.audio()[:size]], size
            if self.decoded > size:
                self.last, self.decoded = None, 0

    def finish(self, silent_tail: int = 0):
        """The final Transcription: the last partial's when at most the last ``silent_tail`` samples (known to hold no
        speech) came after it, else a decode of all the audio."""
        if not isinstance(silent_tail, int) or silent_tail < 0:
            raise OptionsError("silent_tail must be a count of samples >= 0")
        if self.size == 0:
            return Transcription("", [], None, 0.0)
        if self.last is None or self.size - self.decoded > silent_tail:
            self.partial()
        return self.last
