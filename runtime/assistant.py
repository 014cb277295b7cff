"""The voice + camera assistant: one turn per utterance, spoken answers, barge-in.

:meth:`Assistant.run` listens to a microphone (a speaker and a camera optional), :meth:`Assistant.respond` answers a
typed question; both yield events as they happen (:class:`Hearing`, :class:`Transcript`, :class:`AnswerText`,
:class:`AnswerAudio`, :class:`TurnEnd`, :class:`TimerDone`, :class:`Woke`, :class:`Asleep`). A turn is transcribed
while it is spoken and ended where the LLM judges the words complete (:class:`_Live`); a skill, the camera or the
LLM answers, and the first clause is spoken as soon as it is ready. Time is the microphone's (samples read / 16 kHz),
so a file runs the same logic as hardware. The turn's path, the endpointing and the latencies are in
docs/ASSISTANT.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.limits import release_memory
from edgemm.runtime.llm import Chat, ContextError, GenerationOptions, LanguageModel, PromptError, system_prompt
from edgemm.runtime.llm.model import CacheBusyError
from edgemm.runtime.llm.tools import CallStream, ToolCall, parse_tools
from edgemm.runtime.profiles import active_profile
from edgemm.runtime.skills import Clock, SkillCall, SkillError, Skills, SystemClock, Timer
from edgemm.runtime.speech import Transcriber
from edgemm.runtime.speech.audio import load_audio
from edgemm.runtime.speech.endpoint import Endpointer, EndpointOptions, Utterance
from edgemm.runtime.speech.stream import MAX_STREAM_S
from edgemm.runtime.speech.vad import SAMPLE_RATE, VADStream
from edgemm.runtime.speech.wake import WakeWord
from edgemm.runtime.tts import NothingToSay, SentenceSplitter, Speech

log = logging.getLogger(__name__)

NO_CAMERA = "I cannot see anything: no camera is connected."
# The tools the LLM is offered: ``look`` only. The skills' own commands go through the matcher; offering the LLM
# every skill made its prompt 1,300 tokens instead of 200 and the 0.5B model pick wrong tools (docs/SKILLS.md).
LLM_TOOLS = ("look",)
# The first words of an answer are spoken as soon as a clause or this many words are complete, not a whole sentence.
FIRST_WORDS = 6
# Partials only while the microphone's audio and the wall clock stay within this of each other (nothing queued).
LIVE_SLACK_S = 0.15
# While a question is spoken the camera's frame is described and the LLM reads the description (when the photo
# models stay loaded: :class:`_LookAhead`), this many tokens at a time: a step takes no longer than a partial.
LOOK_AHEAD_TOKENS = 32
# With a wake word: a question is answered when it starts within this many seconds of the wake word, and a follow-up
# when it starts within this many seconds of the end of the answer.
FOLLOW_UP_S = 5.0
KEEP_TURNS = 100  # the latest turns kept in Assistant.turns (the chat's own history is bounded separately)
# The question's audio starts this long before the wake word's detection, which may fire in the next word's first
# syllable; what is left of the phrase is taken off the transcript (:func:`without_phrase`).
WAKE_MARGIN_S = 0.16


def _capitalized(text: str) -> str:
    """``text`` with a capital first letter. Whisper starts a sentence with one; the student sometimes does not (a
    question heard from its first syllable), and the LLM reads "name a colour of the sky" as unfinished where "Name
    a colour of the sky" is a request. Words that are capitals inside ("iPhone") are left as they are."""
    if text[:1].islower() and not text[1:2].isupper():
        return text[0].upper() + text[1:]
    return text


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


def _apology(turn: Turn, error: BaseException) -> str:
    """What the assistant says when a part fails; the details go to the log."""
    log.warning("a turn failed: %s", _first_line(error))  # the user's words only with -v
    log.debug("the failed turn's question: %r", turn.transcript, exc_info=error)
    what = "look at the camera's picture" if turn.looked else "answer that"
    return f"Sorry, I could not {what} ({_first_line(error)})."


def _guarded(pieces, turn: Turn):
    """The answer's pieces; an error while generating them ends the answer with an apology."""
    try:
        yield from pieces
    except Exception as e:  # a failing model ends this turn only
        yield (" " if turn.answer else "") + _apology(turn, e)


@dataclass
class Turn:
    transcript: str  # the question (heard or typed)
    answer: str = ""
    looked: bool = False  # the camera was used
    skill: str | None = None  # the skill that answered (None: the language model)
    interrupted: bool = False  # barge-in stopped the spoken answer
    mute: bool = False  # the voice failed: the rest of this answer is text only
    # Seconds from the endpointer's cut (or a typed question's arrival): transcript, first_token, first_speech (the
    # first sentence or clause ready to speak), first_audio (its audio handed to the speaker).
    latency: dict = field(default_factory=dict)
    heard: tuple[float, float] | None = None  # microphone seconds where the utterance starts and is cut (run only)
    # Speech came back after the judged pause that ended this question, sooner than an unjudged pause would have
    # ended it: the question went on, and was answered again as a whole by the next turn (run only).
    superseded: bool = False


@dataclass(frozen=True)
class Hearing:
    """The words heard so far while the person speaks (a partial transcript); ``stable``: its start, which stays."""

    text: str
    stable: str


@dataclass(frozen=True)
class Transcript:
    """What was heard in an utterance (not sent for typed questions)."""

    text: str


@dataclass(frozen=True)
class AnswerText:
    """A piece of the answer's text, as soon as it is generated."""

    text: str


@dataclass(frozen=True)
class AnswerAudio:
    """One spoken sentence of the answer (already queued on the speaker, when there is one)."""

    speech: Speech


@dataclass(frozen=True)
class TimerDone:
    """A timer or an alarm went off; ``text`` is its announcement (spoken too, when there is a voice)."""

    timer: Timer
    text: str


@dataclass(frozen=True)
class Woke:
    """The wake word was heard: what is said next is answered."""

    word: str


@dataclass(frozen=True)
class Asleep:
    """Nothing followed the wake word or the last answer in time: only ``phrases`` wake the assistant now (also
    sent when listening starts)."""

    phrases: tuple[str, ...]


@dataclass(frozen=True)
class TurnEnd:
    """The answer is complete (its audio may still be playing)."""

    turn: Turn


Event = Hearing | Transcript | AnswerText | AnswerAudio | TurnEnd | TimerDone | Woke | Asleep


class AssistantClock:
    """The skills' clock: the time of day from ``base``; the timers' time from the microphone while listening
    (samples read / 16 kHz, so a recording fires a timer where it would have rung), else from ``base``."""

    def __init__(self, base: Clock):
        self.base, self.microphone = base, None

    def now(self):
        return self.base.now()

    def monotonic(self) -> float:
        return self.microphone if self.microphone is not None else self.base.monotonic()


class Assistant:
    def __init__(
        self,
        transcriber: Transcriber,
        lm: LanguageModel,
        images=None,
        synthesizer=None,
        camera_mode: bool = False,
        options: GenerationOptions | None = None,
        endpoint: EndpointOptions | None = None,
        clock: Clock | None = None,
        wake: WakeWord | None = None,
        follow_up_s: float = FOLLOW_UP_S,
        history: int | None = None,
    ):
        """``images``: an ImageQuestion for scene questions (None: the assistant cannot look); ``synthesizer``: a
        tts.Synthesizer for spoken answers (None: text only); ``clock``: the time the skills read (tests inject a
        FixedClock); ``wake``: when listening, answer only after its words (and ``follow_up_s`` after answers)."""
        if transcriber.vad is None:
            raise ValueError("the speech bundle has no VAD model")
        self.transcriber, self.images, self.synthesizer = transcriber, images, synthesizer
        self.camera_mode, self.endpoint = camera_mode, endpoint or EndpointOptions()
        if not 0 < follow_up_s <= 3600:
            raise ValueError(f"follow_up_s must be in (0, 3600], not {follow_up_s}")
        self.wake, self.follow_up_s = wake, follow_up_s
        options = options or GenerationOptions(max_new_tokens=96)
        self.chat = Chat(lm, system=system_prompt(), options=options, history=history)
        self.speaking_until = 0.0  # microphone time when the current spoken answer ends
        self.turns: list[Turn] = []
        self._busy = threading.Lock()
        self._described: tuple[bytes, list] | None = None  # the last camera frame described, and its facts
        self.clock = AssistantClock(clock or SystemClock())
        self.skills = Skills(self.clock, identity={"models": self._model_names()}, can_look=images is not None)
        offered = [t for t in self.skills.tools() if t["function"]["name"] in LLM_TOOLS]
        self.tools = parse_tools(offered) if offered else None
        if self.tools is not None:  # the first question then waits neither for the grammar nor for the tools' text
            self.chat.prepare(self.tools)

    def _model_names(self) -> dict:
        names = {"llm": self.chat.lm.name, "speech": self.transcriber.bundle.manifest.get("name")}
        if self.images is not None:
            names["vision"] = self.images.model_name
        if self.synthesizer is not None:
            names["voice"] = getattr(self.synthesizer, "name", None)
        return {k: v for k, v in names.items() if v}

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        speech_model: str | Path | None = None,
        vision_model: str | Path | None = None,
        threads: int | None = None,
        context: int | None = None,
        vision: bool = True,
        speak: bool = True,
        camera_mode: bool = False,
        endpoint: EndpointOptions | None = None,
        wake_words: list[str] | None = None,
        wake_model: str | Path | None = None,
        follow_up_s: float = FOLLOW_UP_S,
    ) -> Assistant:
        """The default bundles (or the ones named). ``vision``: load the image path (only useful with a camera);
        ``speak``: load the voice (the tts extra; without it answers are text only, with one logged line);
        ``wake_words``: answer only after one of these (from ``wake_model``, default the default wake bundle)."""
        from edgemm.runtime.parts import Parts

        wake = WakeWord.load(wake_model, wake_words) if wake_words else None  # a wrong word fails before the rest
        parts = Parts.load(model, speech_model, vision_model, threads, context, vision=vision, voice=speak)
        return cls(
            parts.transcriber,
            parts.lm,
            parts.images,
            parts.synthesizer,
            camera_mode,
            endpoint=endpoint,
            wake=wake,
            follow_up_s=follow_up_s,
            history=active_profile().history,
        )

    @contextmanager
    def _one_at_a_time(self):
        """One session: a second thread running or responding meanwhile gets CacheBusyError."""
        if not self._busy.acquire(blocking=False):
            raise CacheBusyError("this assistant is busy in another thread: give each session its own Assistant")
        try:
            yield
        finally:
            self._busy.release()

    def run(self, microphone, speaker=None, camera=None) -> Iterator[Event]:
        """Listen to ``microphone`` until it ends, answering every utterance; yields each turn's events."""
        with self._one_at_a_time():
            yield from self._listen(microphone, speaker, camera)

    def respond(self, text: str, speaker=None, camera=None) -> Iterator[Event]:
        """Answer a typed question (same memory, camera and voice as spoken ones)."""
        with self._one_at_a_time():
            yield from self._answer(Turn(text.strip()), time.perf_counter(), speaker, camera)

    def hear(self, audio, sample_rate: int | None = None, speaker=None, camera=None) -> Iterator[Event]:
        """Answer one utterance the caller has already cut (push-to-talk, or a browser's own VAD): yields its
        Transcript and the answer's events, or nothing when it holds no speech. ``audio``: as for
        ``Transcriber.transcribe`` (a file, encoded bytes, or samples with their ``sample_rate``); audio that cannot
        be read raises AudioError."""
        rate = self.transcriber.sample_rate
        samples = load_audio(audio, sample_rate, rate)
        with self._one_at_a_time():
            yield from self._hear(samples, rate, speaker, camera)

    def _listen(self, microphone, speaker, camera) -> Iterator[Event]:
        endpointer = Endpointer(VADStream(self.transcriber.vad), self.endpoint)
        gate = _Gate(self.wake, self.follow_up_s)
        self.speaking_until = 0.0
        self.clock.microphone = 0.0
        live = None  # the utterance being heard
        cut, resumed = None, None  # the last question ended at a judged pause; the one the current speech continues
        before = None  # the audio of ``resumed`` up to where the current speech starts
        if gate.phrases:
            yield Asleep(gate.phrases)
        try:
            for block in microphone.blocks():
                utterance = endpointer.feed(block)
                self.clock.microphone = endpointer.t
                woke = gate.listen(block, endpointer.t)
                if woke is not None:  # the question starts here: an utterance holding the wake word is not it
                    yield Woke(woke.word)
                    endpointer.restart(woke.seconds - WAKE_MARGIN_S)
                    utterance = None
                    live = _Live(self, endpointer, camera) if endpointer.recording else None
                    resumed = None
                talking = endpointer.t < self.speaking_until or getattr(speaker, "busy", False)
                if endpointer.started and talking:
                    self._barge_in(speaker)
                if endpointer.started:
                    resumed, cut = self._continues(cut, endpointer), None
                    before = None if resumed is None else resumed.audio_until(endpointer.start)
                    live = _Live(self, endpointer, camera, before) if gate.open(endpointer.start) else None
                judged = False
                if live is not None and utterance is None and endpointer.recording:
                    utterance = yield from live.follow()
                    judged = utterance is not None
                if utterance is not None and resumed is not None:
                    utterance, resumed = self._resume(resumed, before, utterance), None
                if utterance is not None and not gate.open(utterance.start):
                    log.debug("not answered: %.1f-%.1f s came without the wake word", utterance.start, utterance.end)
                elif utterance is not None:
                    heard = (utterance.start, utterance.end)
                    final = None if live is None else (lambda live=live, utterance=utterance: live.final(utterance))
                    seen, live = None if live is None else live.seen, None
                    last, remembered = self._last(self.turns), self._last(self.chat.turns)
                    spoken = yield from self._hear(utterance.samples, SAMPLE_RATE, speaker, camera, heard, final, seen)
                    turn = self._last(self.turns)
                    if judged and turn is not last and turn.skill is None:
                        exchange = self._last(self.chat.turns)
                        cut = _Cut(utterance, turn, None if exchange is remembered else exchange)
                    # The answer plays from the end of the utterance on (in microphone time).
                    self.speaking_until = utterance.end + spoken
                    gate.answered(self.speaking_until)
                    self._read_memory(camera)
                if gate.dozes(endpointer.t, endpointer.recording):
                    yield Asleep(gate.phrases)
                if not endpointer.started:  # between utterances: timers that went off are announced
                    spoken = yield from self.timers_done(speaker)
                    if spoken:  # the announcement plays after what is playing now (barge-in stops it too)
                        self.speaking_until = max(self.speaking_until, endpointer.t) + spoken
            left = self.skills.timers.cancel()
            if left:
                log.info("the microphone ended with %d timer(s) still running", len(left))
        finally:
            self.clock.microphone = None
        if speaker is not None:
            speaker.wait()

    def _read_memory(self, camera) -> None:
        """While the answer plays: the conversation so far is run into the cache where the next question is judged,
        which would otherwise read it in the pause after that question."""
        try:
            self.chat.prepare(self.tools if camera is not None else None)
        except EdgemmError as e:
            log.debug("cannot read the conversation ahead: %s", _first_line(e))

    def timers_done(self, speaker=None) -> Iterator[TimerDone | AnswerAudio]:
        """Announce the timers and alarms that have gone off (spoken on ``speaker`` when there is a voice); returns
        the seconds of speech. ``run`` calls it between utterances; a caller of ``respond``/``hear`` calls it
        when it likes (the web page polls it)."""
        spoken = 0.0
        for timer in self.skills.timers.due():
            text = timer.announcement()
            yield TimerDone(timer, text)
            spoken += yield from self._speak(text, Turn(text), time.perf_counter(), speaker)
        return spoken

    def judge(self, words: str, tools=None) -> float | None:
        """How complete ``words`` (what was heard so far) read as a request, 0-1: 1 for a skill's request, else the
        LLM's probability that the user's message ends there (its prompt stays in the chat's cache for the answer;
        ``tools``: those the answer will be offered). None when there is nothing to judge."""
        if not words.strip():
            return None
        words = _capitalized(words.strip())  # as the transcript will be
        if self.skills.match(words) is not None:  # a skill answers without the LLM
            return 1.0
        try:
            return self.chat.anticipate(words, tools)
        except EdgemmError as e:  # too long for the context window, say: the answer will tell
            log.debug("cannot anticipate the answer: %s", _first_line(e))
            return None

    @staticmethod
    def _last(items: list):
        return items[-1] if items else None

    def _continues(self, cut: _Cut | None, endpointer: Endpointer) -> _Cut | None:
        """``cut`` when the speech starting now continues it: it began before an unjudged pause (``hold_silence_ms``
        of silence) would have ended that question, so the judged pause was not its end."""
        if cut is None:
            return None
        onset = endpointer.t - self.endpoint.start_ms / 1000  # the first block heard as speech
        pause = onset - (cut.utterance.end - cut.utterance.silent_tail / SAMPLE_RATE)
        return cut if pause < self.endpoint.hold_silence_ms / 1000 else None

    def _resume(self, cut: _Cut, before: np.ndarray, utterance: Utterance) -> Utterance:
        """The question ``cut`` (``before``: its audio up to ``utterance``'s start, as the live stream heard it) and
        its continuation ``utterance`` as one utterance; the answer to the first part is taken back (it was stopped
        by the barge-in, and leaves the memory)."""
        log.info("speech came back after a judged pause, before an unjudged one would have ended: the question goes on")
        cut.turn.superseded = True
        if cut.turn in self.turns:
            self.turns.remove(cut.turn)
        if cut.exchange is not None and self._last(self.chat.turns) is cut.exchange:  # still the last one
            self.chat.forget_last()
        return Utterance(np.concatenate([before, utterance.samples]), cut.utterance.start, utterance.end,
                         utterance.silent_tail)  # fmt: skip

    def _barge_in(self, speaker) -> None:
        """Speech began while the answer was still due to be heard (in microphone time): the turn is marked
        interrupted and the speaker stops. Only sound still playing is cut, and only then is it said: a file
        speaker has written the whole answer at once."""
        if getattr(speaker, "busy", False):
            log.info("barge-in: the answer is cut")
        else:
            log.debug("barge-in: speech began before the answer's end, with nothing left playing")
        if speaker is not None:
            speaker.stop()
        self.speaking_until = 0.0
        if self.turns:
            self.turns[-1].interrupted = True

    def _hear(self, audio, sample_rate: int | None, speaker, camera, heard=None, final=None, seen=None):
        """Transcribe and answer one utterance (``heard``: its microphone seconds; ``final()``: its transcript from
        the live transcription, None when there is none; ``seen``: the camera's frame at its end, when it asked to
        look); returns the seconds of speech of the answer (0 when none)."""
        t0 = time.perf_counter()
        try:
            transcript = final() if final is not None else None
            if transcript is None:
                transcript = self.transcriber.transcribe(audio, sample_rate).text
            transcript = transcript.strip()
            if self.wake is not None:  # what was heard of the wake phrase before the question
                transcript = without_phrase(transcript, [m.phrase for m in self.wake.models])
            transcript = _capitalized(transcript)
        except Exception as e:  # an utterance that cannot be transcribed is skipped, not fatal
            log.warning("cannot transcribe an utterance: %s", _first_line(e))
            return 0.0
        release_memory()  # the encoder's 30 s window of activations, before the answer's models run
        if not transcript:
            return 0.0
        turn = Turn(transcript, heard=heard)
        turn.latency["transcript"] = time.perf_counter() - t0
        yield Transcript(transcript)
        return (yield from self._answer(turn, t0, speaker, camera, seen))

    def _start(self, turn: Turn, camera, seen: _Seen | None = None):
        """The answer to ``turn.transcript``: text pieces (a streaming Generation), or a whole sentence."""
        question = turn.transcript
        call = self.skills.match(question)
        if call is not None and call.name != "look":
            return self._skill(turn, call)
        if call is not None or self.camera_mode:
            return self._look(turn, question, camera, seen)
        if camera is None or self.tools is None:
            return self.chat.send(question)
        return self._with_tools(turn, self.chat.send(question, tools=self.tools), camera)

    def _look(self, turn: Turn, question: str, camera, seen: _Seen | None = None):
        """``seen``: the frame grabbed (and described) at the end of the question, else one is grabbed now."""
        if camera is None or self.images is None:
            return NO_CAMERA
        turn.looked = True
        if seen is None and self.looks_ahead(camera):
            seen = self._grabbed(camera)
        if seen is None:
            return self.images.ask(question, [camera.grab()], chat=self.chat).generation
        if seen.error is not None:
            raise seen.error
        return self.images.ask(question, [seen.frame], chat=self.chat, facts=seen.facts).generation

    def looks_ahead(self, camera) -> bool:
        """Whether the camera's frame is described while a question is spoken (:class:`_LookAhead`)."""
        return camera is not None and self.images is not None and self.images.describes_ahead

    def get_ready(self, words: str, camera, tools=None) -> _Seen | None:
        """The pause after ``words`` will end the question: what its answer needs is done while the pause is waited
        out. A question for the LLM: its whole prompt is run (``tools``: those the answer is offered); a request to
        look: the camera's frame is grabbed and described and the answer's whole prompt run, and the frame and its
        facts are returned for the answer. A skill needs nothing. Returns None when nothing was seen (the answer
        then does all of it, and says what fails)."""
        words = _capitalized(words.strip())
        call = self.skills.match(words)
        if call is not None and call.name != "look":
            return None
        try:
            if call is not None or self.camera_mode:
                return self._see(words, camera)
            self.chat.read_ahead(words, tools, answer=True)
        except Exception as e:
            log.debug("cannot get the answer ready: %s", _first_line(e))
        return None

    def _see(self, question: str, camera) -> _Seen | None:
        """The question's frame, grabbed now (once: a camera that fails here fails the answer, which says so)."""
        if not self.looks_ahead(camera):
            return None
        seen = self._grabbed(camera)
        if seen.error is None:
            self.images.read_ahead(seen.facts, self.chat, question)
        return seen

    def _grabbed(self, camera) -> _Seen:
        """The camera's frame now and its facts, or the error that kept them."""
        try:
            frame = camera.grab()
            return _Seen(frame, self.describe(frame))
        except Exception as e:
            return _Seen(None, [], e)

    def describe(self, frame) -> list:
        """The facts of the camera's ``frame`` (the offline route's): described once per distinct frame, so a still
        scene (a file, a snapshot camera) is not described again for the answer."""
        key = hashlib.blake2b(np.ascontiguousarray(np.asarray(frame)).tobytes(), digest_size=16).digest()
        if self._described is None or self._described[0] != key:
            self._described = key, self.images.facts_of([frame])
        return self._described[1]

    def _with_tools(self, turn: Turn, generation, camera):
        """The answer's text pieces; a tool call in it is carried out once the model has finished writing it."""
        stream, calls = CallStream(), []

        def items():
            for piece in generation:  # streamed: text is passed on as it comes
                yield from stream.feed(piece)
            yield from stream.finish()

        for item in items():
            if isinstance(item, ToolCall):
                calls.append(item)
            else:
                yield item
        if calls:
            self.chat.forget_last()  # the call is not the answer: the answer below joins the memory instead
        for call in calls[:1]:  # one question, one tool
            yield from self._tool(turn, call, camera)

    def _tool(self, turn: Turn, call: ToolCall, camera):
        arguments = json.loads(call.arguments)
        if call.name == "look":
            turn.skill = call.name
            answer = self._look(turn, arguments.get("question") or turn.transcript, camera)
            yield from [answer] if isinstance(answer, str) else answer
            return
        yield self._skill(turn, SkillCall(call.name, arguments))

    def _skill(self, turn: Turn, call: SkillCall) -> str:
        """The skill's sentence (or the reason it cannot), remembered as the turn's answer."""
        try:
            text = self.skills.run(call).text
        except SkillError as e:
            text = str(e)
        turn.skill = call.name
        self.chat.remember(turn.transcript, text)
        return text

    def _answer(self, turn: Turn, t0: float, speaker, camera, seen: _Seen | None = None):
        """Stream the answer to ``turn.transcript`` as text, speaking each sentence as it completes; returns the
        seconds of speech. A failing part (an unreadable camera frame, a model error) ends the turn with an apology,
        never the session."""
        try:
            answer = self._start(turn, camera, seen)
        except (PromptError, ContextError) as e:
            answer = f"Sorry, I cannot answer that ({e})."
        except Exception as e:  # any failing component ends this turn only
            answer = _apology(turn, e)
        splitter, spoken = SentenceSplitter(first_words=FIRST_WORDS), 0.0
        for piece in _guarded([answer] if isinstance(answer, str) else answer, turn):
            turn.latency.setdefault("first_token", time.perf_counter() - t0)
            turn.answer += piece
            yield AnswerText(piece)
            for sentence in splitter.push(piece):
                spoken += yield from self._speak(sentence, turn, t0, speaker)
        for sentence in splitter.flush():
            spoken += yield from self._speak(sentence, turn, t0, speaker)
        turn.answer = turn.answer.strip()
        self.turns.append(turn)
        del self.turns[:-KEEP_TURNS]  # an assistant left running for days keeps the latest only
        release_memory()  # the turn's freed activations: not kept resident under the next turn's
        yield TurnEnd(turn)
        return spoken

    def _speak(self, sentence: str, turn: Turn, t0: float, speaker):
        if self.synthesizer is None or turn.mute:
            return 0.0
        turn.latency.setdefault("first_speech", time.perf_counter() - t0)
        chunks, rate = [], self.synthesizer.sample_rate
        try:
            for chunk in self.synthesizer.stream(sentence):  # the speaker starts on the first chunk
                if speaker is not None:
                    if not chunks:
                        speaker.wait()
                    speaker.play(chunk.samples, rate, more=True)
                chunks.append(chunk.samples)
                turn.latency.setdefault("first_audio", time.perf_counter() - t0)
        except NothingToSay:  # a piece of only punctuation ("..."): the next one is spoken
            return 0.0
        except Exception as e:  # the answer stays in text; the next turn tries to speak again
            log.warning("cannot speak the answer: %s", _first_line(e))
            turn.mute = True
            chunks = chunks if speaker is not None else []  # what was played is heard
        finally:
            if chunks and speaker is not None:
                speaker.play(np.zeros(0, np.float32), rate)  # the sentence ends
        if not chunks:
            return 0.0
        speech = Speech(np.concatenate(chunks), rate)
        yield AnswerAudio(speech)
        return speech.seconds


@dataclass
class _Cut:
    """A question ended at a judged pause, and what its answer added: the turn, and the chat's exchange (None: the
    answer added none)."""

    utterance: Utterance
    turn: Turn
    exchange: tuple[str, str] | None

    def audio_until(self, start: float) -> np.ndarray:
        """Its audio and the silence after it up to microphone second ``start`` (where its continuation starts)."""
        gap = np.zeros(max(0, round((start - self.utterance.end) * SAMPLE_RATE)), np.float32)
        return np.concatenate([self.utterance.samples, gap])


@dataclass(frozen=True)
class _Seen:
    """A camera frame grabbed at the end of a question, and what the photo models found in it (or why not)."""

    frame: object
    facts: list
    error: Exception | None = None


class _LookAhead:
    """The camera's frame described, and the description read by the LLM into the chat's cache, while a question is
    spoken: step by step (the frame's facts, then LOOK_AHEAD_TOKENS of the prompt at a time), in the time partials
    leave. A question about the scene then finds most of its prompt read; the answer still describes the frame
    grabbed at the question's end, and only a changed description is read again."""

    def __init__(self, assistant: Assistant, camera):
        self.assistant, self.camera = assistant, camera
        self.facts = None
        self.done = False

    def step(self) -> None:
        try:
            if self.facts is None:
                self.facts = self.assistant.describe(self.camera.peek())
            else:
                self.done = self.assistant.images.read_ahead(
                    self.facts, self.assistant.chat, max_tokens=LOOK_AHEAD_TOKENS
                )
        except Exception as e:  # the answer grabs its own frame, and says what fails
            log.debug("cannot look ahead: %s", _first_line(e))
            self.done = True


class _Live:
    """One utterance while it is spoken: its transcription stream, a partial whenever ``partial_every_s`` of speech
    arrived, the microphone is not ahead of us (a file read faster than real time, or a backlog: then catching up
    comes first) and the decoder rested as long as the last partial took (at most half of its time goes to partials:
    a pause seldom waits for one to end), and at each pause of ``judge_silence_ms`` a judgement of the words so far. The judgement runs them
    into the chat's KV cache as the user's message (the answer then runs only what follows) and reads the LLM's
    probability that the message ends there: at ``complete`` or above the pause ends the utterance, else the
    endpointer waits ``hold_silence_ms`` of silence. Method and error rates: docs/BENCHMARKS.md ("Endpointing")."""

    def __init__(self, assistant: Assistant, endpointer: Endpointer, camera, before: np.ndarray | None = None):
        self.assistant, self.endpointer, self.o = assistant, endpointer, assistant.endpoint
        max_s = min(MAX_STREAM_S, self.o.max_utterance_s + 1 + (0 if before is None else before.size / SAMPLE_RATE))
        self.stream = assistant.transcriber.stream(every_s=self.o.partial_every_s, max_s=max_s)
        self.tools = assistant.tools if camera is not None else None  # as the answer will be asked
        self.camera = camera
        # Only a camera that can show its frame without taking it: looking ahead must not skip a folder's frames.
        peeks = callable(getattr(camera, "peek", None))
        self.look = _LookAhead(assistant, camera) if peeks and assistant.looks_ahead(camera) else None
        self.seen: _Seen | None = None  # the frame at this pause, when its words (judged complete) ask to look
        self.fed = 0  # the endpointer's blocks given to the stream
        self.judged = False  # this pause's words were judged (early in it) ...
        self.done: float | None = None  # ... this complete
        self.decided = False  # ... and the pause was ended or held
        self.broken = False  # the stream failed: the utterance is transcribed whole at its end, as before
        self.started = (time.perf_counter(), endpointer.t)
        self.rest_until = 0.0  # no partial while the person speaks before this (perf_counter)
        if before is not None:  # the question this speech continues: heard as one with it
            try:
                self.stream.feed(before, partial=False)
            except EdgemmError as e:
                log.warning("cannot transcribe while listening: %s", _first_line(e))
                self.broken = True

    def _in_step(self) -> bool:
        """Whether the microphone delivers in real time and we keep up with it (no audio waiting)."""
        wall, heard = time.perf_counter() - self.started[0], self.endpointer.t - self.started[1]
        return abs(wall - heard) <= LIVE_SLACK_S

    def follow(self):
        """Feed the stream what was recorded since the last call; yields Hearing events; returns the Utterance when a
        judged pause ends it here (else None)."""
        if self.broken:
            return None
        blocks = self.endpointer.blocks[self.fed :]
        self.fed += len(blocks)
        try:
            for block in blocks:
                self.stream.feed(block, partial=False)
            if self.endpointer.silent_ms == 0:  # speech goes on
                self.judged = self.decided = False
                self.seen = None
                if not self._in_step():
                    return None
                if self.stream.due and time.perf_counter() >= self.rest_until:
                    t0 = time.perf_counter()
                    yield from self._partial()
                    now = time.perf_counter()
                    self.rest_until = now + (now - t0)  # as long again: a pause finds the decoder free half the time
                elif self.look is not None and not self.look.done:  # steps short enough not to need a rest
                    self.look.step()
                return None
            silent = self.endpointer.silent_ms
            if self.decided or self.o.complete is None or silent < min(self.o.judge_early_ms, self.o.judge_silence_ms):
                return None
            if not self.judged:  # early in the pause: the words are ready when it is long enough to decide
                self.judged = True
                self.done = yield from self._partial(judge=True)
            if silent < self.o.judge_silence_ms:
                return None
            self.decided = True
        except Exception as e:  # a live transcript is a bonus: without it the turn goes on as before
            log.warning("cannot transcribe while listening: %s", _first_line(e))
            self.broken = True
            return None
        if self.done is not None and self.done >= self.o.complete:
            return self.endpointer.cut()
        self.endpointer.hold(self.o.hold_silence_ms)
        return None

    def _partial(self, judge: bool = False):
        partial = self.stream.partial()
        if partial.text:
            yield Hearing(partial.text, partial.stable)
        done = self.assistant.judge(partial.text if judge else partial.stable, self.tools)
        if judge and done is not None and self.o.complete is not None and done >= self.o.complete:
            self.seen = self.assistant.get_ready(partial.text, self.camera, self.tools)
        return done

    def final(self, utterance) -> str | None:
        """The utterance's transcript, from the stream (None when it failed)."""
        if self.broken:
            return None
        try:
            n = utterance.samples.size
            if n < self.stream.size:  # a long utterance cut in a pause before the audio heard so far
                if not np.array_equal(self.stream.audio()[:n], utterance.samples):
                    return None
                self.stream.keep(n)
            rest = utterance.samples[self.stream.size :]
            if rest.size:
                self.stream.feed(rest, partial=False)
            return self.stream.finish(silent_tail=utterance.silent_tail).text
        except Exception as e:
            log.warning("cannot transcribe an utterance: %s", _first_line(e))
            return None


class _Gate:
    """Which utterances are answered: without a wake word all of them; with one, those that start within
    ``follow_up_s`` after it is detected, or after an answer ends (microphone seconds)."""

    def __init__(self, wake: WakeWord | None, follow_up_s: float):
        self.wake, self.follow_up_s = wake, follow_up_s
        self.until = math.inf if wake is None else -math.inf
        self.phrases = tuple(m.phrase for m in wake.models) if wake is not None else ()
        self.awake = wake is None
        if wake is not None:
            wake.reset()

    def open(self, t: float) -> bool:
        return t < self.until

    def listen(self, block, t: float):
        """Feed ``block`` (ending at stream second ``t``) to the wake word detector; its Detection, if any."""
        if self.wake is None:
            return None
        found = self.wake.feed(block)
        if not found:
            return None
        self.until, self.awake = t + self.follow_up_s, True
        return found[0]

    def answered(self, end: float) -> None:
        """An answer ends at microphone second ``end``: a follow-up may start until ``follow_up_s`` later."""
        self.until = max(self.until, end + self.follow_up_s)

    def dozes(self, t: float, recording: bool) -> bool:
        """Whether the assistant falls asleep at ``t`` (once per waking; not while a question is being recorded)."""
        if not self.awake or self.open(t) or recording:
            return False
        self.awake = False
        return True


def without_phrase(text: str, phrases: list[str]) -> str:
    """``text`` without the start of a wake phrase it begins with ("Jarvis, what time is it?" -> "What time is it?"
    for "hey jarvis"): the question's audio starts a little before the detection, so its end may be heard."""
    for phrase in phrases:
        words = phrase.split()
        for n in range(len(words), 0, -1):
            pattern = r"^\W*" + r"\W+".join(re.escape(w) for w in words[-n:]) + r"\b\W*"
            rest = re.sub(pattern, "", text, count=1, flags=re.IGNORECASE)
            if rest != text:
                return rest[:1].upper() + rest[1:] if rest else rest
    return text
