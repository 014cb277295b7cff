"""Endpointing for a live stream: cut utterances out of 32 ms blocks as they arrive.

Fed one 512-sample block at a time, an :class:`Endpointer` scores it (Silero VAD, or any callable giving a speech
probability), runs the VAD hysteresis and returns an :class:`Utterance` when speech has ended. A little audio from
before the onset is kept (the first syllable), blips (clicks, coughs) are dropped, and an over-long utterance is cut
in its longest pause of the last few seconds (not in the middle of a word: Silero VAD too splits speech past
``max_speech_duration_s`` at a silence); the audio after the cut starts the next utterance.
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
    max_utterance_s: float = 15.0  # an utterance is cut here, at its longest pause of the last cut_search_s
    cut_search_s: float = 4.0
    pre_roll_ms: int = 256  # audio kept from before the start (the first syllable)
    min_utterance_ms: int = 300  # shorter ones (clicks, coughs) are dropped
    # For a caller that judges its words (the assistant): a pause this long is judged; judged complete (probability
    # >= ``complete``) it ends the utterance, else silence must last ``hold_silence_ms``. ``complete=None``: no
    # judging. The words are decoded and judged after ``judge_early_ms`` of the pause, so that the judgement is
    # ready when the pause is long enough to decide. Partial transcripts every ``partial_every_s`` of speech.
    judge_silence_ms: int = 160
    judge_early_ms: int = 32
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
        self.probs: list[float] = []  # the speech probability of each block recorded (pre-roll included)
        self.carry: tuple[list, list] | None = None  # blocks after a long utterance's cut: the next one's start
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
        p = self.score(block)
        change = self.state.update(p)
        self.t += CHUNK / SAMPLE_RATE
        self.started = change == "start"
        if self.carry is not None:  # speech went on past a long utterance's cut: the next one starts there
            (self.blocks, self.probs), self.carry = self.carry, None
            self.start = self.t - (len(self.blocks) + 1) * CHUNK / SAMPLE_RATE
            self.started = True
        elif self.blocks is None:
            self.pre_roll.append((block, p))
            if self.started:
                self.blocks, self.probs = [b for b, _ in self.pre_roll], [q for _, q in self.pre_roll]
                self.start = self.t - len(self.blocks) * CHUNK / SAMPLE_RATE
            return None
        self.blocks.append(block)
        self.probs.append(p)
        if change == "end":
            return self._end(self.state.silent)
        if len(self.blocks) * CHUNK / SAMPLE_RATE >= self.o.max_utterance_s:
            return self._cut_long()
        return None

    def _cut_long(self) -> Utterance | None:
        """End an over-long utterance in the middle of its longest pause of the last ``cut_search_s`` (the latest
        of equals), or after its quietest block there when it has none; the blocks after the cut are kept to start
        the next utterance."""
        search = max(1, min(len(self.blocks), int(self.o.cut_search_s * SAMPLE_RATE / CHUNK)))
        tail, first = self.probs[-search:], len(self.blocks) - search
        runs, run = [], 0  # (length, last block) of each run of silent blocks
        for i, q in enumerate(tail):
            run = run + 1 if q < self.o.neg_threshold else 0
            if run:
                runs.append((run, i))
        if runs:
            length, last = max(runs)
            keep = first + last - length + 1 + (length + 1) // 2  # the pause's first half ends this one
        else:
            keep = first + max(range(search), key=lambda i: (-tail[i], i)) + 1
        rest = (self.blocks[keep:], self.probs[keep:])
        self.blocks, self.probs = self.blocks[:keep], self.probs[:keep]
        silent = next((i for i, q in enumerate(reversed(self.probs)) if q >= self.o.neg_threshold), len(self.probs))
        end = self.t - len(rest[0]) * CHUNK / SAMPLE_RATE
        log.info("utterance cut at %.1f s, in a pause" if runs else "utterance cut at %.1f s", end - self.start)
        utterance = self._finish(silent, end)
        if self.state.speaking:  # the rest goes on from where this one was cut
            self.carry = rest
        return utterance

    def restart(self, since: float) -> None:
        """Keep only the audio from stream second ``since`` on in the utterance being recorded (what came before
        was something else: the wake word); it goes on recording."""
        if self.recording:
            keep = max(0, min(len(self.blocks), int(np.ceil((self.t - since) * SAMPLE_RATE / CHUNK))))
            self.blocks = self.blocks[len(self.blocks) - keep :]
            self.probs = self.probs[len(self.probs) - keep :]
            self.start = self.t - keep * CHUNK / SAMPLE_RATE

    def cut(self) -> Utterance | None:
        """End the utterance being recorded now (at a pause the caller judged to end it)."""
        return self._end(self.state.silent) if self.recording else None

    def _end(self, silent: int) -> Utterance | None:
        self.state.reset()
        return self._finish(silent, self.t)

    def _finish(self, silent: int, end: float) -> Utterance | None:
        self.state.end_blocks = blocks_for(self.o.end_silence_ms)
        blocks, self.blocks, self.probs = self.blocks, None, []
        self.pre_roll.clear()
        if (len(blocks) - silent) * BLOCK_MS < self.o.min_utterance_ms:
            return None
        return Utterance(np.concatenate(blocks), self.start, end, silent * CHUNK)
