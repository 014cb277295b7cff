"""Endpointing for a live stream: cut utterances out of 32 ms blocks as they arrive.

Fed one 512-sample block at a time, an :class:`Endpointer` scores it (Silero VAD, or any callable giving a speech
probability), runs the VAD hysteresis and returns an :class:`Utterance` when speech has ended. A little audio from
before the onset is kept (the first syllable), over-long utterances are cut, and blips (clicks, coughs) are dropped.
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
    end_silence_ms: int = 640  # silence this long ends it
    max_utterance_s: float = 15.0  # an utterance is cut here
    pre_roll_ms: int = 256  # audio kept from before the start (the first syllable)
    min_utterance_ms: int = 300  # shorter ones (clicks, coughs) are dropped


@dataclass
class Utterance:
    samples: np.ndarray
    start: float  # stream seconds
    end: float


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
        silent = self.state.silent
        self.state.reset()
        blocks, self.blocks = self.blocks, None
        self.pre_roll.clear()
        if (len(blocks) - silent) * BLOCK_MS < self.o.min_utterance_ms:
            return None
        return Utterance(np.concatenate(blocks), self.start, self.t)
