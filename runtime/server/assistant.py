"""The web assistant's routes: ``POST /v1/assistant`` (one turn, answered as server-sent events),
``POST /v1/assistant/timers`` (timers that went off) and ``GET /v1/assistant/wake`` (the wake words; their
WebSocket is wake.py)."""

from __future__ import annotations

import base64
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgemm.runtime.server import openai
from edgemm.runtime.server.http import api_error, owner_of, read_json, read_upload, session_of, sse_event, wav_bytes
from edgemm.runtime.server.openai import APIError, bad
from edgemm.runtime.server.wake import wake_words
from edgemm.runtime.server.workers import Channel


class _Frame:
    """The camera of a web turn: the frame the page sent with the question."""

    def __init__(self, image: bytes):
        self.image = image

    def grab(self) -> bytes:
        return self.image


async def assistant(server, request: Request) -> Response:
    """One turn of the web assistant: multipart ``session`` (the page's conversation id), ``audio`` (an
    utterance the page cut) or ``text``, and optionally ``image`` (the camera frame at the time of the
    question; the assistant looks at it only when the question is about the scene). Answers as server-sent
    events: ``transcript``, ``answer`` (text pieces), ``audio`` (a WAV per spoken sentence), ``done`` (the
    turn with its latencies) or ``nothing`` (no speech heard), ``error``. The worker sends the assistant's own
    events (edgemm.runtime.assistant)."""
    from edgemm.runtime.assistant import AnswerAudio, AnswerText, Transcript, TurnEnd

    m = server.models
    if m.transcriber is None:
        raise APIError(404, "the assistant needs a speech model", "not_found_error")
    deadline = time.monotonic() + server.config.timeout
    form = await request.form(max_files=2, max_fields=16)
    try:
        session = form.get("session")
        if not isinstance(session, str) or not 8 <= len(session) <= 64:
            raise bad("'session' must be the page's conversation id (8 to 64 characters)", "session")
        audio = await read_upload(form, "audio", openai.MAX_AUDIO_BYTES)
        image = await read_upload(form, "image", openai.MAX_IMAGE_BYTES)
        text = form.get("text")
        if audio is None and not (isinstance(text, str) and text.strip()):
            raise bad("send 'audio' (a recorded question) or 'text'", "text")
    finally:
        await form.close()
    received = time.perf_counter()
    owner = owner_of(request, request.client.host if request.client else "?")

    def job(channel: Channel):
        turns = m.assistant(session, owner)
        camera = _Frame(image) if image else None
        events = turns.hear(audio, camera=camera) if audio is not None else turns.respond(text, camera=camera)
        try:
            for event in events:
                channel.put(event)
        finally:
            events.close()

    channel = server.start("llm", job)
    # The first event (the transcript, or the answer's start for a typed question) comes before the response
    # starts: unreadable audio or a bad image is a 400 like anywhere else, not an event in a 200 stream.
    try:
        first = [await server.next(channel, request, deadline)]
    except StopAsyncIteration:
        first = []

    async def items():
        for item in first:
            yield item
        if first:
            while True:
                try:
                    yield await server.next(channel, request, deadline)
                except StopAsyncIteration:
                    return

    async def events():
        heard = False
        try:
            async for item in items():
                if isinstance(item, Transcript):
                    heard = True
                    yield sse_event("transcript", {"text": item.text})
                elif isinstance(item, AnswerText):
                    yield sse_event("answer", {"text": item.text})
                elif isinstance(item, AnswerAudio):
                    wav = wav_bytes(item.speech.samples, item.speech.sample_rate)
                    yield sse_event("audio", {"wav": base64.b64encode(wav).decode(), "seconds": item.speech.seconds})
                elif isinstance(item, TurnEnd):
                    heard = True
                    turn = item.turn
                    latency = {k: round(v, 3) for k, v in turn.latency.items()}
                    latency["server_s"] = round(time.perf_counter() - received, 3)
                    yield sse_event("done", {"answer": turn.answer, "looked": turn.looked, "latency": latency})
            if not heard:
                yield sse_event("nothing", {"message": "no speech heard"})
        except Exception as e:  # a part failed mid-turn (the assistant itself apologises for model errors)
            yield sse_event("error", api_error(e).body()["error"])
        finally:
            channel.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def timers(server, request: Request) -> Response:
    """The timers and alarms of a web assistant conversation that have gone off: JSON ``{"session"}`` ->
    ``{"announcements": [{"text", "wav"}]}`` (``wav``: the announcement spoken, or null). The page polls it;
    a poll with nothing due costs no model time."""
    from edgemm.runtime.assistant import AnswerAudio, TimerDone

    session = await read_json(request, session_of)
    owner = owner_of(request, request.client.host if request.client else "?")
    ringing = server.models.ringing(session, owner)
    if ringing is None:
        return JSONResponse({"announcements": []})

    def announce():
        announcements = []
        for event in ringing.timers_done():
            if isinstance(event, TimerDone):
                announcements.append({"text": event.text, "wav": None})
            elif isinstance(event, AnswerAudio) and announcements:
                wav = wav_bytes(event.speech.samples, event.speech.sample_rate)
                announcements[-1]["wav"] = base64.b64encode(wav).decode()
        return announcements

    announcements = await server.run("llm", request, announce)
    return JSONResponse({"announcements": announcements}, headers={"Cache-Control": "no-store"})


async def wake(server, request: Request) -> Response:
    return await wake_words(server)


ROUTES = [
    ("/v1/assistant", assistant, ["POST"]),
    ("/v1/assistant/timers", timers, ["POST"]),
    ("/v1/assistant/wake", wake, ["GET"]),
]
