"""One Wyoming connection: its events in, the models' answers out, as Home Assistant's peers answer them.

Speech to text: ``transcribe`` (optional), ``audio-start``, ``audio-chunk``s, ``audio-stop`` -> ``transcript``, with
``transcript-start``, ``transcript-chunk``s (the words that later partials keep, appended) and ``transcript-stop``
around it when the service streams transcripts; then the connection closes, as wyoming-faster-whisper's does.
Speech: ``synthesize`` -> ``audio-start``, ``audio-chunk``s, ``audio-stop``; or ``synthesize-start``,
``synthesize-chunk``s, ``synthesize-stop`` -> each sentence's audio, then ``synthesize-stopped``. Audio is sent as the
voice makes it (``Synthesizer.stream``: a sentence's first ~0.74 s, then ~1.5 s at a time), not after the sentence. The assistant (``handle``): a ``transcript`` -> ``handled`` with its answer. Wake words: ``detect`` (optional
names), then audio -> a ``detection`` for each wake word heard, ``not-detected`` at ``audio-stop`` when none was; the
connection stays open for more.
Inference runs on the models' worker threads (one job at a time per model, for all clients). What a request cannot
use gets one ``error`` event (its ``code``: bad_audio, bad_request, busy, timeout, internal); audio still coming for
a refused utterance is read and dropped until its ``audio-stop``, then the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import aclosing

from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled, NotHandled
from wyoming.info import Describe
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped
from wyoming.wake import Detect, Detection, NotDetected

from edgemm.runtime.errors import AudioError, EdgemmError
from edgemm.runtime.limits import MAX_SPEECH_CHARS, InputError, check_text
from edgemm.runtime.server.workers import Busy, Channel
from edgemm.runtime.speech.decoding import DecodingOptions
from edgemm.runtime.speech.stream import continued
from edgemm.runtime.speech.transcribe import TranscribeOptions
from edgemm.runtime.tts import NothingToSay, SentenceSplitter
from edgemm.runtime.wyoming.audio import Listening, PcmFormat, Utterance, pcm_chunks
from edgemm.runtime.wyoming.service import Clients, ProtocolError, WyomingOptions, read_event

log = logging.getLogger(__name__)

POLL_S = 0.25  # seconds between checks that the client waiting for a job is still there
LIVE_SLACK_S = 0.5  # audio may run this far ahead of the wall clock and still count as spoken live
OWNER = "wyoming"  # the assistant conversations of Wyoming clients, apart from the web page's


class ClientGone(ConnectionError):
    """The client closed the connection while its request was being answered."""


class RequestError(EdgemmError):
    """A request this service cannot serve; ``code`` goes into the ``error`` event."""

    def __init__(self, message: str, code: str = "bad_request"):
        super().__init__(message)
        self.code = code


def _code(error: BaseException) -> str:
    if isinstance(error, RequestError):
        return error.code
    if isinstance(error, Busy):
        return "busy"
    return "bad_audio" if isinstance(error, AudioError) else "bad_request"


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0]


class EventHandler(AsyncEventHandler):
    def __init__(self, models, options: WyomingOptions, info: Event, clients: Clients, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.models, self.options, self.info, self.clients = models, options, info, clients
        self.detector = None  # this connection's WakeWord, once it asked to ``detect``
        self.listening: Listening | None = None  # audio being listened to for the wake word
        self.session = uuid.uuid4().hex  # this connection's assistant conversation
        self.channel: Channel | None = None  # the job running for this connection
        self.language: str | None = None  # from ``transcribe``
        self.utterance: Utterance | None = None
        self.refused = False  # the utterance was refused: its audio is dropped until audio-stop
        self.sent = ""  # transcript-chunk text sent for this utterance
        self.started = False  # transcript-start sent
        self.rest_until = 0.0  # time.monotonic() before which no partial starts
        self.splitter: SentenceSplitter | None = None  # the text of a synthesize-start stream

    # -- the connection --

    async def run(self) -> None:
        """The wyoming handler's loop, with events read by :func:`read_event` (bounded sizes)."""
        self._is_running = True
        if self.clients.open >= self.options.max_clients:
            await self._turn_away(f"this server serves {self.options.max_clients} connections at once: try again later")
            return
        self.clients.open += 1
        try:
            while self._is_running:
                try:
                    event = await read_event(self.reader, self.options.max_event_bytes)
                except ProtocolError as e:
                    await self.write_event(Error(text=str(e), code="bad_event").event())
                    break
                if event is None or not await self.handle_event(event):
                    break
        except ConnectionError:  # the client left while we answered
            pass
        finally:
            self.clients.open -= 1
            await self.disconnect()
            self.writer.close()

    async def _turn_away(self, text: str) -> None:
        """A busy error event, then the connection closed once the client has read it (what it sent meanwhile is
        read and dropped for up to 2 s: closing with unread data would reset the connection, losing the event)."""

        async def drain():
            while await self.reader.read(1 << 16):
                pass

        try:
            await self.write_event(Error(text=text, code="busy").event())
            self.writer.write_eof()
            await asyncio.wait_for(drain(), 2.0)
        except (OSError, TimeoutError):  # ConnectionError included
            pass
        finally:
            self.writer.close()

    async def disconnect(self) -> None:
        if self.channel is not None:
            self.channel.cancel()

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self.info)
            return True
        try:
            return await self._dispatch(event)
        except (KeyError, TypeError, ValueError, EdgemmError) as e:  # KeyError etc.: an event missing its fields
            message = _first_line(e) if isinstance(e, EdgemmError) else f"a {event.type} event is malformed ({e!r})"
            await self.write_event(Error(text=message, code=_code(e)).event())
        except ConnectionError:
            raise
        except Exception as e:  # a bug: the client hears of it, the server goes on
            log.exception("wyoming: %s failed", event.type)
            await self.write_event(Error(text=_first_line(e), code="internal").event())
        return self._refuse(event.type)

    def _refuse(self, kind: str) -> bool:
        """After an error: an utterance still arriving is refused (its audio dropped until audio-stop, then the
        connection closes); any other request ends the connection now."""
        self.utterance, self.splitter = None, None
        if any(t.is_type(kind) for t in (Transcribe, Detect, AudioStart, AudioChunk)):
            self.refused = True
            return True
        return False

    async def _dispatch(self, event: Event) -> bool:
        kind = event.type
        if Transcribe.is_type(kind):
            return self._transcribe(Transcribe.from_event(event))
        if AudioStart.is_type(kind):
            return self._audio_start(PcmFormat.of(event.data))
        if AudioChunk.is_type(kind):
            return await self._audio_chunk(event)
        if AudioStop.is_type(kind):
            return await self._audio_stop()
        if Synthesize.is_type(kind):
            return self.splitter is not None or await self._synthesize(Synthesize.from_event(event))
        if SynthesizeStart.is_type(kind):
            return self._synthesize_start(SynthesizeStart.from_event(event))
        if SynthesizeChunk.is_type(kind):
            return await self._synthesize_chunk(SynthesizeChunk.from_event(event).text)
        if SynthesizeStop.is_type(kind):
            return await self._synthesize_stop()
        if Transcript.is_type(kind):
            return await self._handle(Transcript.from_event(event))
        if Detect.is_type(kind):
            return await self._detect(Detect.from_event(event))
        log.debug("wyoming: ignored %s", kind)
        return True

    async def _run(self, worker: str, fn, *args):
        """``fn(*args)`` on a model's worker (see :meth:`_items`)."""
        async with aclosing(self._items(worker, lambda: [fn(*args)])) as results:
            async for result in results:
                return result

    async def _items(self, worker: str, items, *args):
        """The items of the iterable ``items(*args)``, made on a model's worker and given out as each is made,
        within the service's timeout; a client that leaves meanwhile cancels it (a queued job never starts, a
        running one stops at its next item or cancellation check)."""
        if worker not in self.models.workers:
            raise RequestError(f"this server has no {worker} model", "not_loaded")

        def job(channel: Channel):
            for item in items(*args):
                channel.put(item)

        self.channel = Channel()
        deadline = time.monotonic() + self.options.timeout
        try:
            self.models.workers[worker].submit(self.channel.run, job)
            while True:
                try:
                    yield await self.channel.next(timeout=min(POLL_S, max(0.0, deadline - time.monotonic())))
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        took = f"the {worker} model took longer than {self.options.timeout:g} s"
                        raise RequestError(took, "timeout") from None
                    if self.reader.at_eof():  # the client has gone and sent nothing more
                        raise ClientGone() from None
        finally:
            self.channel.cancel()
            self.channel = None

    # -- speech to text --

    def _transcribe(self, request: Transcribe) -> bool:
        languages = self.models.transcriber.tokenizer.special.languages if self.models.transcriber else {}
        language = (request.language or "").split("-")[0].split("_")[0].lower() or None
        if language and language not in (languages or {"en"}):
            known = ", ".join(sorted(languages or {"en"}))
            raise RequestError(f"the speech model knows {known}, not {request.language!r}")
        self.language = language if languages else None
        return True

    def _audio_start(self, fmt: PcmFormat) -> bool:
        if self.detector is not None:  # after ``detect``: the audio is listened to for the wake word
            self.listening = Listening(self.detector, fmt)
            return True
        transcriber = self.models.transcriber
        if transcriber is None:
            raise RequestError("this server has no speech model", "not_loaded")
        decoding = DecodingOptions(language=self.language)
        self.utterance = Utterance(transcriber, fmt, TranscribeOptions(decoding=decoding))
        self.refused, self.sent, self.started = False, "", False
        return True

    async def _audio_chunk(self, event: Event) -> bool:
        if self.refused:
            return True
        fmt = PcmFormat.of(event.data)
        if self.detector is not None:
            return await self._listen(fmt, event.payload or b"")
        if self.utterance is None:  # no audio-start: the first chunk says the format
            self._audio_start(fmt)
        self.utterance.feed(fmt, event.payload or b"")
        if self.options.transcript_streaming:
            await self._partial()
        return True

    async def _partial(self) -> None:
        """A partial transcript when enough new audio came, the speech model is idle and partials took at most half
        its time (as the HTTP live endpoint does), while the audio comes at the pace it is spoken (a recording sent
        at once gets its transcript sooner without them); its newly stable words go out as a transcript-chunk."""
        stream, now = self.utterance.stream, time.monotonic()
        live = stream.seconds <= now - self.utterance.started + LIVE_SLACK_S
        if not (live and stream.due) or now < self.rest_until or self.models.workers["speech"].pending:
            return
        started = time.monotonic()
        partial = await self._run("speech", stream.partial)
        self.rest_until = 2 * time.monotonic() - started
        await self._chunk(partial.stable)

    async def _chunk(self, text: str) -> None:
        """What ``text`` adds to the chunks sent so far (nothing when it does not continue them)."""
        if not self.started:
            await self.write_event(TranscriptStart(language=self.language).event())
            self.started = True
        if not text.startswith(self.sent) or len(text) == len(self.sent):
            return
        piece = text[len(self.sent) :]
        self.sent = text
        await self.write_event(TranscriptChunk(text=piece).event())

    async def _audio_stop(self) -> bool:
        if self.refused:
            return False
        if self.detector is not None:  # the end of the audio listened to: the connection stays for more
            if self.listening is None or not self.listening.detected:
                await self.write_event(NotDetected().event())
            self.listening = None
            return True
        utterance, self.utterance = self.utterance, None
        if utterance is None:  # audio-stop without audio: nothing was said
            text, language = "", self.language
        else:
            utterance.end()
            result = await self._run("speech", utterance.stream.finish)
            text, language = result.text.strip(), result.language or self.language
        if self.options.transcript_streaming:
            await self._chunk(continued(self.sent, text))
        await self.write_event(Transcript(text=text, language=language).event())
        if self.options.transcript_streaming:
            await self.write_event(TranscriptStop().event())
        return False

    # -- wake words --

    async def _detect(self, request: Detect) -> bool:
        """Listen to the audio that follows for ``request.names`` (None: every word of the wake bundle)."""
        if self.models.wake is None:
            raise RequestError("this server has no wake words (build them: edgemm export wake)", "not_loaded")
        from edgemm.runtime.speech.wake import WakeWord

        words = list(request.names) if request.names else None
        self.detector = await asyncio.to_thread(WakeWord, self.models.wake, words)
        self.listening = None
        return True

    async def _listen(self, fmt: PcmFormat, payload: bytes) -> bool:
        if self.listening is None:  # no audio-start: the first chunk says the format
            self.listening = Listening(self.detector, fmt)
        for found in await asyncio.to_thread(self.listening.feed, fmt, payload):
            await self.write_event(Detection(name=found.word, timestamp=round(found.seconds * 1000)).event())
        return True

    # -- text to speech --

    def _voice(self, request) -> object:
        synthesizer = self.models.synthesizer
        if synthesizer is None:
            raise RequestError(f"this server has no voice ({self.models.why_no_voice})", "not_loaded")
        name = request.voice.name if request.voice is not None else None
        if name not in (None, synthesizer.name):
            raise RequestError(f"this server has one voice, {synthesizer.name}, not {name!r}")
        return synthesizer

    async def _synthesize(self, request: Synthesize) -> bool:
        self._voice(request)
        splitter = SentenceSplitter()
        text = check_text(request.text, "the text to speak", MAX_SPEECH_CHARS)
        sentences = splitter.push(text) + splitter.flush()
        spoken = 0
        for sentence in sentences:
            spoken += await self._speak(sentence, start=spoken == 0)
        if not spoken:
            raise NothingToSay("there is nothing to say in the text: it has no word the voice can speak")
        await self.write_event(AudioStop().event())
        return True

    async def _speak(self, sentence: str, start: bool) -> int:
        """One sentence's audio, each chunk sent as the voice makes it (with audio-start first when ``start``); the
        samples sent."""
        spoken = 0
        try:
            async with aclosing(self._items("voice", self.models.synthesizer.stream, sentence)) as speeches:
                async for speech in speeches:
                    rate = speech.sample_rate
                    if start and not spoken:
                        await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
                    for pcm in pcm_chunks(speech.samples):
                        await self.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=pcm).event())
                    spoken += len(speech.samples)
        except NothingToSay:  # a piece of only punctuation: the next one is spoken
            pass
        return spoken

    def _synthesize_start(self, request: SynthesizeStart) -> bool:
        self._voice(request)
        self.splitter = SentenceSplitter()
        return True

    async def _synthesize_chunk(self, text: str) -> bool:
        if self.splitter is None:
            raise RequestError("a synthesize-chunk must follow a synthesize-start")
        if not isinstance(text, str) or len(text) > MAX_SPEECH_CHARS:
            raise InputError(f"a synthesize-chunk must be a text of at most {MAX_SPEECH_CHARS} characters")
        for sentence in self.splitter.push(text):
            await self._stream_sentence(sentence)
        return True

    async def _stream_sentence(self, sentence: str) -> None:
        """A streamed sentence's audio as its own audio-start ... audio-stop, as wyoming-piper sends it."""
        if await self._speak(sentence, start=True):
            await self.write_event(AudioStop().event())

    async def _synthesize_stop(self) -> bool:
        if self.splitter is None:
            raise RequestError("a synthesize-stop must follow a synthesize-start")
        for sentence in self.splitter.flush():
            await self._stream_sentence(sentence)
        self.splitter = None
        await self.write_event(SynthesizeStopped().event())
        return True

    # -- the assistant --

    async def _handle(self, request: Transcript) -> bool:
        if self.models.transcriber is None:
            raise RequestError("the assistant needs a speech model", "not_loaded")
        text = check_text(request.text, "the question").strip()
        if not text:
            await self.write_event(NotHandled(text="nothing was said").event())
            return True
        conversation = (request.context or {}).get("conversation_id")
        session = conversation if isinstance(conversation, str) and 0 < len(conversation) <= 64 else self.session
        answer = await self._run("llm", _answer, self.models, text, session)
        await self.write_event(Handled(text=answer).event())
        return True


def _answer(models, text: str, session: str) -> str:
    """The assistant's text answer to ``text`` in conversation ``session`` (skills, then the language model)."""
    from edgemm.runtime.assistant import TurnEnd

    events = models.assistant(session, OWNER, voice=False).respond(text)
    try:
        for event in events:
            if isinstance(event, TurnEnd):
                return event.turn.answer
    finally:
        events.close()
    return ""
