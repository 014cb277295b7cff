"""The voice + camera assistant: endpointing, one turn per utterance, spoken answers, barge-in.

A turn: the endpointer (Silero VAD on 32 ms blocks) cuts an utterance -> Whisper transcribes it -> when the question
is about the scene (or camera mode is on) a frame is grabbed and the image path answers, else the text LLM with the
conversation's memory -> the answer streams as text and is spoken sentence by sentence.

Time is the microphone's: ``samples read / 16 kHz``. A live microphone delivers it at wall-clock pace, a file as fast
as it is read, so the same logic runs on hardware and in tests. Speech that starts while an answer is still being
spoken (in microphone time) stops the speaker and starts a new turn: barge-in.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edgemm.runtime.chat import Chat, PromptError
from edgemm.runtime.generate import GenerationOptions
from edgemm.runtime.llm import ContextError
from edgemm.runtime.vad import CHUNK, SAMPLE_RATE, VADStream

log = logging.getLogger(__name__)

# Questions about what the camera sees ("what is this", "what do you see", "read the sign", ...).
SCENE = re.compile(
    r"\b(this|that|these|those|here|picture|photo|image|see|seeing|look|looking|camera|front of|holding|sign|read|"
    r"wearing)\b",
    re.IGNORECASE,
)
NO_CAMERA = "I cannot see anything: no camera is connected."


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
    start: float  # microphone seconds
    end: float


class Endpointer:
    """Feed 512-sample blocks; ``feed`` returns an Utterance when one ends. ``started`` is set on speech onset."""

    def __init__(self, vad, options: EndpointOptions = EndpointOptions()):
        self.stream, self.o = VADStream(vad), options
        self.block_ms = 1000 * CHUNK / SAMPLE_RATE
        self.pre_roll = deque(maxlen=max(1, int(options.pre_roll_ms / self.block_ms)))
        self.t = 0.0  # microphone seconds read
        self.voiced = self.silent = 0
        self.blocks: list[np.ndarray] | None = None  # the utterance being recorded
        self.start = 0.0
        self.started = False  # onset seen in the last feed

    def feed(self, block: np.ndarray) -> Utterance | None:
        p = self.stream(block)
        self.t += CHUNK / SAMPLE_RATE
        self.started = False
        if self.blocks is None:
            self.pre_roll.append(block)
            self.voiced = self.voiced + 1 if p >= self.o.threshold else 0
            if self.voiced * self.block_ms >= self.o.start_ms:
                self.blocks, self.silent, self.started = list(self.pre_roll), 0, True
                self.start = self.t - len(self.blocks) * CHUNK / SAMPLE_RATE
            return None
        self.blocks.append(block)
        self.silent = self.silent + 1 if p < self.o.neg_threshold else 0
        long = len(self.blocks) * CHUNK / SAMPLE_RATE >= self.o.max_utterance_s
        if self.silent * self.block_ms < self.o.end_silence_ms and not long:
            return None
        if long:
            log.info("utterance cut at %.0f s", self.o.max_utterance_s)
        blocks, self.blocks, self.voiced = self.blocks, None, 0
        self.pre_roll.clear()
        samples = np.concatenate(blocks)
        if (len(blocks) - self.silent) * self.block_ms < self.o.min_utterance_ms:
            return None
        return Utterance(samples, self.start, self.t)


@dataclass
class Turn:
    transcript: str
    answer: str = ""
    looked: bool = False  # the camera was used
    interrupted: bool = False  # barge-in stopped the spoken answer
    latency: dict = field(default_factory=dict)  # seconds from the end of speech: transcript, first_token, first_audio


class Assistant:
    def __init__(
        self,
        transcriber,
        lm,
        describer=None,
        synthesizer=None,
        speaker=None,
        camera=None,
        camera_mode: bool = False,
        options: GenerationOptions | None = None,
        endpoint: EndpointOptions = EndpointOptions(),
    ):
        if transcriber.vad is None:
            raise ValueError("the speech bundle has no VAD model")
        self.transcriber, self.describer = transcriber, describer
        self.synthesizer, self.speaker, self.camera = synthesizer, speaker, camera
        self.camera_mode = camera_mode
        self.chat = Chat(lm, options=options or GenerationOptions(max_new_tokens=96))
        self.endpointer = Endpointer(transcriber.vad, endpoint)
        self.speaking_until = 0.0  # microphone time when the current spoken answer ends
        self.turns: list[Turn] = []
        self.on_transcript = None  # callback(text) when an utterance has been transcribed
        self.on_text = None  # callback(piece) for streaming the answer text

    def run(self, microphone):
        """Yield each Turn as soon as its answer is done (spoken answers may still be playing)."""
        for block in microphone.blocks():
            utterance = self.endpointer.feed(block)
            talking = self.endpointer.t < self.speaking_until or getattr(self.speaker, "busy", False)
            if self.endpointer.started and talking:
                self._barge_in()
            if utterance is not None:
                turn = self.answer(utterance)
                if turn is not None:
                    yield turn
        if self.speaker is not None:
            self.speaker.wait()

    def _barge_in(self) -> None:
        log.info("barge-in: the answer is cut")
        if self.speaker is not None:
            self.speaker.stop()
        self.speaking_until = 0.0
        if self.turns:
            self.turns[-1].interrupted = True

    def answer(self, utterance: Utterance) -> Turn | None:
        """Transcribe an utterance and answer it; None when it held no words."""
        t0 = time.perf_counter()
        transcript = self.transcriber.transcribe(utterance.samples, SAMPLE_RATE).text.strip()
        if not transcript:
            return None
        turn = Turn(transcript)
        turn.latency["transcript"] = time.perf_counter() - t0
        if self.on_transcript:
            self.on_transcript(transcript)
        return self.respond(turn, utterance, t0)

    def respond(self, turn: Turn, utterance: Utterance, t0: float | None = None) -> Turn:
        """Answer ``turn.transcript``: look first when it is about the scene (or in camera mode)."""
        t0 = time.perf_counter() if t0 is None else t0
        question = turn.transcript
        if self.camera_mode or SCENE.search(question):
            if self.camera is None or self.describer is None:
                return self._finish(turn, NO_CAMERA, t0, utterance)
            from edgemm.runtime.describe import grounded_question

            question = grounded_question(turn.transcript, [self.describer.facts(self.camera.grab())])
            turn.looked = True
        try:
            generation = self.chat.send(question)
        except (PromptError, ContextError) as e:
            return self._finish(turn, f"Sorry, I cannot answer that ({e}).", t0, utterance)
        return self._finish(turn, generation, t0, utterance)

    def _finish(self, turn: Turn, answer, t0: float, utterance: Utterance) -> Turn:
        """Stream ``answer`` (text or a Generation) as text, speaking each sentence as it completes."""
        from edgemm.runtime.tts import sentences

        pieces = [answer] if isinstance(answer, str) else answer

        def stream():
            for piece in pieces:
                if "first_token" not in turn.latency:
                    turn.latency["first_token"] = time.perf_counter() - t0
                turn.answer += piece
                if self.on_text:
                    self.on_text(piece)
                yield piece

        spoken = 0.0
        for sentence in sentences(stream()):
            if self.synthesizer is None or self.speaker is None:
                continue
            speech = self.synthesizer.synthesize(sentence)
            self.speaker.wait()
            self.speaker.play(speech.samples, speech.sample_rate)
            turn.latency.setdefault("first_audio", time.perf_counter() - t0)
            spoken += speech.seconds
        turn.answer = turn.answer.strip()
        # The answer plays from the end of the utterance on (in microphone time).
        self.speaking_until = utterance.end + spoken
        self.turns.append(turn)
        return turn
