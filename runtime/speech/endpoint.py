"""Endpointing for a live stream: cut utterances out of 32 ms blocks as they arrive.

Fed one 512-sample block at a time, an :class:`Endpointer` scores it (Silero VAD, or any callable giving a speech
probability), runs the VAD hysteresis and returns an :class:`Utterance` when speech has ended. A little audio from
before the onset is kept (the first syllable), over-long utterances are cut, and blips (clicks, coughs) are dropped.
A caller that knows more (the assistant judges whether the words so far are a complete request) can end the
utterance at a pause with :meth:`Endpointer.cut` or wait longer through it with :meth:`Endpointer.hold`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgemm.runtime.speech.vad import BLOCK_MS, CHUNK, SAMPLE_RATE, Hysteresis, blocks_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EndpointOptions:
    threshold: float = 0.5  # a block at or above this probability is speech
    neg_threshold: float = 0.35  # ... and below this, silence
    start_ms: int = 96  # speech this long starts an utterance (3 blocks)
    end_silence_ms: int = 640  # silence this long ends it (unless the caller holds it open longer)
    max_utterance_s: float = 15.0  # an utterance is cut here
    pre_roll_ms: int = 256  # audio kept from before the start (the first syllable)
    min_utterance_ms: int = 300  # shorter ones (clicks, coughs) are dropped
    # For a caller that judges its words (the assistant): a pause this long is judged; judged complete (probability
    # >= ``complete``) it ends the utterance, else silence must last ``hold_silence_ms``. ``complete=None``: no
    # judging. Partial transcripts every ``partial_every_s`` of speech.
    judge_silence_ms: int = 160
    complete: float | None = 0.1
    hold_silence_ms: int = 960
    partial_every_s: float = 0.4


@dataclass
class Utterance:
    samples: np.ndarray
    start: float  # stream seconds
    end: float
    silent_tail: int = 0  # samples at the end that the VAD heard as silence


class Endpointer:
    """``feed(block)`` returns an Utterance when one ends; ``started`` tells whether speech began in that block."""

    def __init__(self, score: Callable[[np.ndarray], float], options: EndpointOptions = EndpointOptions()):
        self.score, self.o = score, options
        self.state = Hysteresis(
            options.threshold, options.neg_threshold, blocks_for(options.start_ms), blocks_for(options.end_silence_ms)
        )
        self.pre_roll = deque(maxlen=max(1, int(options.pre_roll_ms / BLOCK_MS)))
        self.t = 0.0  # stream seconds read
        self.blocks: list[np.ndarray] | None = None  # the utterance being recorded
        self.start = 0.0
        self.started = False  # onset seen in the last feed

    @property
    def recording(self) -> bool:
        """Whether an utterance is being recorded."""
        return self.blocks is not None

    @property
    def silent_ms(self) -> float:
        """Milliseconds of silence at the end of the utterance being recorded (0 while speech goes on)."""
        return self.state.silent * BLOCK_MS if self.recording else 0.0

    def audio(self) -> np.ndarray:
        """The utterance recorded so far (with its pre-roll)."""
        return np.concatenate(self.blocks) if self.blocks else np.zeros(0, np.float32)

    def hold(self, silence_ms: float) -> None:
        """End the utterance being recorded only after ``silence_ms`` of silence (instead of ``end_silence_ms``)."""
        self.state.end_blocks = blocks_for(silence_ms)

    def feed(self, block: np.ndarray) -> Utterance | None:
        change = self.state.update(self.score(block))
        self.t += CHUNK / SAMPLE_RATE
        self.started = change == "start"
        if self.blocks is None:
            self.pre_roll.append(block)
            if self.started:
                self.blocks = list(self.pre_roll)
                self.start = self.t - len(self.blocks) * CHUNK / SAMPLE_RATE
            return None
        self.blocks.append(block)
        long = len(self.blocks) * CHUNK / SAMPLE_RATE >= self.o.max_utterance_s
        if change != "end" and not long:
            return None
        if long:
            log.info("utterance cut at %.0f s", self.o.max_utterance_s)
        return self._end(self.state.silent)

    def restart(self, since: float) -> None:
        """Keep only the audio from stream second ``since`` on in the utterance being recorded (what came before
        was something else: the wake word); it goes on recording."""
        if self.recording:
            keep = max(0, min(len(self.blocks), int(np.ceil((self.t - since) * SAMPLE_RATE / CHUNK))))
            self.blocks = self.blocks[len(self.blocks) - keep :]
            self.start = self.t - keep * CHUNK / SAMPLE_RATE

    def cut(self) -> Utterance | None:
        """End the utterance being recorded now (at a pause the caller judged to end it)."""
        return self._end(self.state.silent) if self.recording else None

    def _end(self, silent: int) -> Utterance | None:
        self.state.reset()
        self.state.end_blocks = blocks_for(self.o.end_silence_ms)
        blocks, self.blocks = self.blocks, None
        self.pre_roll.clear()
        if (len(blocks) - silent) * BLOCK_MS < self.o.min_utterance_ms:
            return None
        return Utterance(np.concatenate(blocks), self.start, self.t, silent * CHUNK)
