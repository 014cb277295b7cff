"""The HTTP application: OpenAI's routes, the web assistant's route and the page, behind an API key and size limits.

Routes: ``GET /`` (the page), ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/audio/transcriptions`` and ``/translations``, ``POST /v1/audio/speech``, ``POST /v1/assistant`` (one
turn of the web assistant: a spoken or typed question, optionally with a camera frame, answered as server-sent
events), and the WebSocket ``/v1/audio/live`` (partial transcripts while the page's user speaks: live.py).

Every request's model work runs on that model's worker thread (models.py); this module waits for it without
blocking the event loop, stops it when the client goes away or the request times out, and turns every error into
OpenAI's error JSON with its status code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import io
import ipaddress
import json
import logging
import re
import socket
import time
from dataclasses import dataclass, replace
from importlib import resources

import numpy as np
import soundfile as sf
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from edgemm.runtime.errors import AudioError, BundleError, EdgemmError
from edgemm.runtime.llm import ContextError, Generation
from edgemm.runtime.llm.chat import ChatTemplate, with_system
from edgemm.runtime.llm.choose import first_tool
from edgemm.runtime.llm.constrain import GrammarError
from edgemm.runtime.llm.tools import CallStream, split_calls, template_messages
from edgemm.runtime.server import openai
from edgemm.runtime.server.connections import (
    LISTEN_BACKLOG,
    BoundedH11Protocol,
    BoundedServer,
    RateLimitedErrors,
    raise_descriptor_limit,
)
from edgemm.runtime.server.guard import MB, Access, Guard
from edgemm.runtime.server.live import live_transcription
from edgemm.runtime.server.models import ServerModels
from edgemm.runtime.server.openai import APIError, bad
from edgemm.runtime.server.wake import wake_detection, wake_words
from edgemm.runtime.server.workers import Busy, Channel, Closed
from edgemm.runtime.speech.decoding import DecodingOptions
from edgemm.runtime.speech.transcribe import TEMPERATURES, TranscribeOptions
from edgemm.runtime.tts import NothingToSay, TTSError
from edgemm.runtime.vision.image import ImageError

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a waiting request checks that its client is still there
PCM_RATE = 24_000  # OpenAI's raw "pcm" format: 24 kHz, 16-bit signed little-endian, mono


@dataclass(frozen=True)
class ServerConfig:
    api_key: str | None = None
    timeout: float = 300.0  # seconds one request may take, queueing included
    allow_hosts: tuple[str, ...] = ()  # Host names besides IP addresses, localhost and the listening host
    allow_origins: tuple[str, ...] = ()  # other sites whose pages may use the server (CORS is answered for them)
    idle_timeout: float = 60.0  # seconds a live transcription may send nothing before it is closed


# ---- errors ----


def api_error(error: BaseException) -> APIError:
    """OpenAI's error for a library error (one sentence, the right status)."""
    if isinstance(error, APIError):
        return error
    message = (str(error).splitlines() or [type(error).__name__])[0]
    if isinstance(error, ClientDisconnect):  # it left while sending: nobody reads this answer, nothing to log
        return APIError(499, "the client closed the request")
    if isinstance(error, Busy):
        return APIError(
            429, message, "requests", code="rate_limit_exceeded", headers={"Retry-After": str(error.retry_after)}
        )
    if isinstance(error, Closed):
        return APIError(503, message, "server_error", code="unavailable", headers={"Retry-After": "5"})
    if isinstance(error, GrammarError):
        return APIError(400, message, param=error.param, code="invalid_schema")
    if isinstance(error, ContextError):
        return APIError(400, message, param="messages", code="context_length_exceeded")
    if isinstance(error, ImageError):
        return APIError(400, message, param="messages", code="invalid_image")
    if isinstance(error, AudioError):
        return APIError(400, message, param="file", code="invalid_audio")
    if isinstance(error, NothingToSay):
        return APIError(400, message, param="input", code="nothing_to_say")
    if isinstance(error, TTSError):
        return APIError(503, message, "server_error", code="voice_unavailable")
    if isinstance(error, BundleError):
        return APIError(500, message, "server_error", code="bundle_error")
    if isinstance(error, EdgemmError):
        return APIError(400, message)
    log.error("internal error: %s", message, exc_info=error)
    return APIError(500, f"internal error: {message}", "server_error")


def error_response(error: BaseException) -> JSONResponse:
    e = api_error(error)
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _on_http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    kinds = {404: "not_found_error", 405: "invalid_request_error"}
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    e = APIError(
        exc.status_code,
        message.get(exc.status_code, str(exc.detail)),
        kinds.get(exc.status_code, "invalid_request_error"),
    )
    return JSONResponse(e.body(), status_code=e.status, headers=exc.headers)


# ---- helpers ----


def _parse_json(raw: bytes):
    try:
        return json.loads(raw)
    except RecursionError:
        raise bad("the request body's JSON is nested too deeply") from None
    except json.JSONDecodeError as e:
        raise bad(f"the request body is not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise bad("the request body is not valid JSON (not UTF-8 text)") from None
    except ValueError:  # an integer past Python's 4,300 digits
        raise bad("the request body holds a number too long to read") from None


async def _json(request: Request, check=None, *args):
    """The body's JSON, checked by ``check(body, *args)`` if given; both run on a thread, so that a large body
    (up to the route's limit) never holds up the event loop."""
    raw = await request.body()
    return await run_in_threadpool(lambda: check(_parse_json(raw), *args) if check else _parse_json(raw))


def _sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _event(name: str, data) -> str:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _wav(samples: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def _owner(request: Request, name: str | None = None) -> str:
    """Whose KV caches and conversations a request may use: its API key (or none), and ``name`` (the client's own,
    e.g. prompt_cache_key), else its connection (peer address and port)."""
    auth = request.headers.get("authorization", "")
    who = name if name is not None else "%s:%s" % (request.client or ("?", "?"))
    return hashlib.sha256(f"{auth}\0{who}".encode()).hexdigest()[:24]


PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",  # no other site may frame the page (and click its buttons for the user)
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _inline_hashes(html: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


def page_policy(html: str) -> str:
    """The page's Content-Security-Policy: its own inline script and style (by hash) and nothing else from
    anywhere; requests only to this server; camera frames and recorded audio as blob:/data: URLs; never framed."""
    return (
        f"default-src 'none'; script-src {_inline_hashes(html, 'script')}; style-src {_inline_hashes(html, 'style')}; "
        "img-src 'self' blob: data:; media-src 'self' blob: mediastream:; connect-src 'self'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )


class _Frame:
    """The camera of a web turn: the frame the page sent with the question."""

    def __init__(self, image: bytes):
        self.image = image

    def grab(self) -> bytes:
        return self.image


class Server:
    def __init__(self, models: ServerModels, config: ServerConfig):
        self.models, self.config = models, config
        self.template = ChatTemplate(models.lm.chat_template, models.lm.special)
        self.started = time.time()
        self.html = resources.files("edgemm.runtime.server").joinpath("web/index.html").read_text(encoding="utf-8")
        self.csp = page_policy(self.html)
        self.wake_listeners = 0  # open /v1/assistant/wake sockets (each runs its own detector)

    # -- waiting for workers --

    async def _next(self, channel: Channel, request: Request, deadline: float):
        """The next item of a job: waits while the job queues, and cancels it if the client leaves or time runs
        out (504)."""
        while True:
            try:
                return await channel.next(timeout=min(POLL_S, max(0.0, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    channel.cancel()
                    raise APIError(
                        504, f"the request took longer than {self.config.timeout:g} s", "server_error", code="timeout"
                    ) from None
                if await request.is_disconnected():
                    channel.cancel()
                    raise APIError(499, "the client closed the request") from None
            except BaseException:
                channel.cancel()
                raise

    def _start(self, worker: str, job) -> Channel:
        channel = Channel()
        self.models.workers[worker].submit(channel.run, job)
        return channel

    # -- routes --

    async def page(self, request: Request) -> Response:
        return HTMLResponse(self.html, headers=PAGE_HEADERS | {"Content-Security-Policy": self.csp})

    async def health(self, request: Request) -> Response:
        m = self.models
        return JSONResponse(
            {
                "status": "ok",
                "uptime_s": round(time.time() - self.started, 1),
                "models": m.names(),
                "workers": {name: w.status() for name, w in m.workers.items()},
                "image_route": m.images.route if m.images is not None else None,
            }
        )

    async def list_models(self, request: Request) -> Response:
        created = int(self.started)
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "edgemm"} for name in self.models.names()
        ]
        return JSONResponse({"object": "list", "data": data})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in self.models.names():
            raise APIError(
                404, f"no model {name!r} here (see /v1/models)", "not_found_error", "model", "model_not_found"
            )
        return JSONResponse({"id": name, "object": "model", "created": int(self.started), "owned_by": "edgemm"})

    def _generation(self, req: openai.ChatRequest, owner: str) -> tuple[Generation, str]:
        """Start the answer to a chat request of client ``owner`` (on the llm worker's thread)."""
        m = self.models
        if req.images:
            answer = m.images.ask(req.question, req.images, req.options, system=req.system)
            return answer.generation, m.images.model_name
        messages, specs = template_messages(with_system(req.messages), req.tools, m.lm.chat_template)
        prompt = self.template.encode(m.lm.tokenizer, messages, tools=specs)
        if len(prompt) >= m.lm.context:
            raise ContextError(
                f"the messages are {len(prompt)} tokens; the context window is {m.lm.context} (send fewer or shorter)"
            )
        cache, options = m.cache_pool.take(prompt, owner), req.options
        if req.tools and req.messages[-1]["role"] == "user":
            options = replace(options, grammar=first_tool(m.lm, cache, prompt, options.grammar, req.question))
        return Generation(m.lm, cache, prompt, options), m.lm.name

    async def chat_completions(self, request: Request) -> Response:
        deadline = time.monotonic() + self.config.timeout
        req = await _json(request, openai.chat_request, self.models.lm.context)
        if req.images and self.models.images is None:
            raise bad("this server answers no image questions (it was started without a vision model)", "messages")

        owner = _owner(request, req.cache_key)

        def job(channel: Channel):
            generation, model = self._generation(req, owner)
            channel.on_cancel(generation.close)
            try:
                channel.put(("start", model))
                for piece in generation:
                    channel.put(("text", piece))
            finally:  # a reader that left stops the answer here: its KV cache is free for the next request at once
                generation.close()
            stats = generation.stats
            channel.put(
                (
                    "end",
                    generation.finish_reason,
                    openai.usage(stats.prompt_tokens, stats.new_tokens, stats.prompt_tokens - stats.prefilled_tokens),
                )
            )

        channel = self._start("llm", job)
        _, model = await self._next(channel, request, deadline)
        cid = openai.completion_id()
        if req.stream:
            return StreamingResponse(
                self._chat_events(channel, request, cid, model, req, deadline),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text, finish, usage = "", None, None
        while True:
            try:
                item = await self._next(channel, request, deadline)
            except StopAsyncIteration:
                break
            if item[0] == "text":
                text += item[1]
            else:
                finish, usage = item[1], item[2]
        text, calls = split_calls(text) if req.tools else (text, [])
        return JSONResponse(openai.completion(cid, model, text, finish, usage, calls))

    async def _chat_events(self, channel, request, cid, model, req: openai.ChatRequest, deadline):
        usage, calls = None, CallStream() if req.tools else None
        index = 0  # of the next tool call

        def deltas(items):  # text pieces and whole calls as OpenAI's deltas
            nonlocal index
            for item in items:
                if isinstance(item, str):
                    yield {"content": item}
                else:
                    yield from openai.call_deltas(index, item)
                    index += 1

        try:
            yield _sse(openai.chunk(cid, model, {"role": "assistant", "content": ""}))
            while True:
                try:
                    item = await self._next(channel, request, deadline)
                except StopAsyncIteration:
                    break
                except Exception as e:  # a timeout, or the model failed mid-answer: OpenAI's error object ends it
                    yield _sse(api_error(e).body())
                    break
                if item[0] == "text":
                    for delta in deltas(calls.feed(item[1]) if calls else [item[1]]):
                        yield _sse(openai.chunk(cid, model, delta))
                else:
                    usage = item[2]
                    for delta in deltas(calls.finish() if calls else []):
                        yield _sse(openai.chunk(cid, model, delta))
                    finish = "tool_calls" if index else openai.FINISH.get(item[1], "stop")
                    yield _sse(openai.chunk(cid, model, {}, finish))
            if req.include_usage and usage is not None:
                yield _sse(openai.chunk(cid, model, {}, usage_=usage))
            yield "data: [DONE]\n\n"
        finally:  # also when the client disconnects: the generation stops after its current token
            channel.cancel()

    async def _run(self, worker: str, request: Request, fn, *args):
        """``fn(*args)`` on a worker, with the request's timeout and cancellation."""

        def job(channel: Channel):
            channel.put(fn(*args))

        channel = self._start(worker, job)
        return await self._next(channel, request, time.monotonic() + self.config.timeout)

    async def transcriptions(self, request: Request) -> Response:
        return await self._transcribe(request, "transcribe")

    async def translations(self, request: Request) -> Response:
        return await self._transcribe(request, "translate")

    async def _transcribe(self, request: Request, task: str) -> Response:
        transcriber = self.models.transcriber
        if transcriber is None:
            raise APIError(404, "this server has no speech model", "not_found_error", code="model_not_found")
        form = await request.form(max_files=1, max_fields=32)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise bad("send the audio as the multipart field 'file'", "file")
            audio = await upload.read(openai.MAX_AUDIO_BYTES + 1)
            if len(audio) > openai.MAX_AUDIO_BYTES:
                raise APIError(
                    413,
                    f"the audio file is over {openai.MAX_AUDIO_BYTES // MB} MB",
                    param="file",
                    code="file_too_large",
                )
            if not audio:
                raise bad("the audio file is empty", "file")
            fmt = form.get("response_format") or "json"
            if fmt not in openai.TRANSCRIPTION_FORMATS:
                raise bad(
                    f"response_format must be one of {', '.join(openai.TRANSCRIPTION_FORMATS)}", "response_format"
                )
            stream = _form_flag(form, "stream")
            if stream and fmt not in ("json", "text"):
                raise bad("stream=true sends transcript.text events: response_format must be json or text", "stream")
            temperature = _form_number(form, "temperature", 0.0, 1.0, 0.0)
            options = TranscribeOptions(
                decoding=DecodingOptions(
                    task=task, language=(form.get("language") or None) if task == "transcribe" else None
                ),
                temperatures=TEMPERATURES if temperature == 0 else (temperature,),
                initial_prompt=form.get("prompt") or None,
            )
        finally:
            await form.close()
        if stream:
            return await self._transcript_events(request, transcriber, audio, options)
        result = await self._run("speech", request, transcriber.transcribe, audio, None, options)
        body, media = openai.transcription_body(result, fmt, task)
        if isinstance(body, dict):
            return JSONResponse(body)
        return Response(body, media_type=media)

    async def _transcript_events(self, request: Request, transcriber, audio: bytes, options) -> Response:
        """A transcription as OpenAI streams it: a ``transcript.text.delta`` event per segment as each 30 s window
        is decoded, then ``transcript.text.done`` with the whole text (the same as without ``stream``)."""
        deadline = time.monotonic() + self.config.timeout

        def job(channel: Channel):
            def delta(segments):
                for segment in segments:
                    channel.put(("delta", segment.text))

            channel.put(("done", transcriber.transcribe(audio, None, options, on_segments=delta)))

        channel = self._start("speech", job)
        first = await self._next(channel, request, deadline)  # unreadable audio: a 400 before the stream starts

        async def events():
            item, started = first, False
            try:
                while True:
                    if item[0] == "delta":
                        text = item[1] if started else item[1].lstrip()
                        started = started or bool(text)
                        if text:
                            yield _sse({"type": "transcript.text.delta", "delta": text, "logprobs": None})
                    else:
                        yield _sse({"type": "transcript.text.done", "text": item[1].text, "logprobs": None})
                        return
                    item = await self._next(channel, request, deadline)
            except Exception as e:  # a timeout mid-stream: OpenAI's error object ends it
                yield _sse(api_error(e).body())
            finally:
                channel.cancel()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    async def speech(self, request: Request) -> Response:
        synthesizer = self.models.synthesizer
        if synthesizer is None:
            raise APIError(
                404,
                f"this server has no voice ({self.models.why_no_voice})",
                "not_found_error",
                code="model_not_found",
            )
        body = await _json(request)
        if not isinstance(body, dict):
            raise bad("the request body must be a JSON object")
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise bad("'input' must be a non-empty text", "input")
        if len(text) > openai.MAX_SPEECH_INPUT:
            raise bad(f"'input' is over {openai.MAX_SPEECH_INPUT} characters", "input")
        fmt = body.get("response_format") or "wav"
        if fmt not in openai.SPEECH_FORMATS:
            raise bad(f"response_format must be one of {', '.join(openai.SPEECH_FORMATS)}", "response_format")
        speed = openai.number(body, "speed", 0.25, 4.0, 1.0)
        speech = await self._run("voice", request, synthesizer.synthesize, text, speed)
        if fmt == "pcm":
            import soxr

            samples = soxr.resample(speech.samples, speech.sample_rate, PCM_RATE)
            pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
            return Response(pcm, media_type="audio/pcm", headers={"X-Sample-Rate": str(PCM_RATE)})
        out = io.BytesIO()
        sf.write(out, speech.samples, speech.sample_rate, format=fmt.upper(), subtype="PCM_16")
        return Response(out.getvalue(), media_type=f"audio/{fmt}")

    async def assistant(self, request: Request) -> Response:
        """One turn of the web assistant: multipart ``session`` (the page's conversation id), ``audio`` (an
        utterance the page cut) or ``text``, and optionally ``image`` (the camera frame at the time of the
        question; the assistant looks at it only when the question is about the scene). Answers as server-sent
        events: ``transcript``, ``answer`` (text pieces), ``audio`` (a WAV per spoken sentence), ``done`` (the
        turn with its latencies) or ``nothing`` (no speech heard), ``error``."""
        from edgemm.runtime.assistant import AnswerAudio, AnswerText, Transcript, TurnEnd

        m = self.models
        if m.transcriber is None:
            raise APIError(404, "the assistant needs a speech model", "not_found_error")
        deadline = time.monotonic() + self.config.timeout
        form = await request.form(max_files=2, max_fields=16)
        try:
            session = form.get("session")
            if not isinstance(session, str) or not 8 <= len(session) <= 64:
                raise bad("'session' must be the page's conversation id (8 to 64 characters)", "session")
            audio = await _upload(form, "audio", openai.MAX_AUDIO_BYTES)
            image = await _upload(form, "image", openai.MAX_IMAGE_BYTES)
            text = form.get("text")
            if audio is None and not (isinstance(text, str) and text.strip()):
                raise bad("send 'audio' (a recorded question) or 'text'", "text")
        finally:
            await form.close()
        received = time.perf_counter()
        owner = _owner(request, request.client.host if request.client else "?")

        def job(channel: Channel):
            assistant = m.assistant(session, owner)
            camera = _Frame(image) if image else None
            events = (
                assistant.hear(audio, camera=camera) if audio is not None else assistant.respond(text, camera=camera)
            )
            try:
                for event in events:
                    channel.put(event)
            finally:
                events.close()

        channel = self._start("llm", job)
        # The first event (the transcript, or the answer's start for a typed question) comes before the response
        # starts: unreadable audio or a bad image is a 400 like anywhere else, not an event in a 200 stream.
        try:
            first = [await self._next(channel, request, deadline)]
        except StopAsyncIteration:
            first = []

        async def items():
            for item in first:
                yield item
            if first:
                while True:
                    try:
                        yield await self._next(channel, request, deadline)
                    except StopAsyncIteration:
                        return

        async def events():
            heard = False
            try:
                async for item in items():
                    if isinstance(item, Transcript):
                        heard = True
                        yield _event("transcript", {"text": item.text})
                    elif isinstance(item, AnswerText):
                        yield _event("answer", {"text": item.text})
                    elif isinstance(item, AnswerAudio):
                        wav = _wav(item.speech.samples, item.speech.sample_rate)
                        yield _event("audio", {"wav": base64.b64encode(wav).decode(), "seconds": item.speech.seconds})
                    elif isinstance(item, TurnEnd):
                        heard = True
                        turn = item.turn
                        latency = {k: round(v, 3) for k, v in turn.latency.items()}
                        latency["server_s"] = round(time.perf_counter() - received, 3)
                        yield _event("done", {"answer": turn.answer, "looked": turn.looked, "latency": latency})
                if not heard:
                    yield _event("nothing", {"message": "no speech heard"})
            except Exception as e:  # a part failed mid-turn (the assistant itself apologises for model errors)
                yield _event("error", api_error(e).body()["error"])
            finally:
                channel.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def wake_words(self, request: Request) -> Response:
        return await wake_words(self)

    async def assistant_timers(self, request: Request) -> Response:
        """The timers and alarms of a web assistant conversation that have gone off: JSON ``{"session"}`` ->
        ``{"announcements": [{"text", "wav"}]}`` (``wav``: the announcement spoken, or null). The page polls it;
        a poll with nothing due costs no model time."""
        from edgemm.runtime.assistant import AnswerAudio, TimerDone

        session = await _json(request, _session_of)
        owner = _owner(request, request.client.host if request.client else "?")
        assistant = self.models.ringing(session, owner)
        if assistant is None:
            return JSONResponse({"announcements": []})

        def announce():
            announcements = []
            for event in assistant.timers_done():
                if isinstance(event, TimerDone):
                    announcements.append({"text": event.text, "wav": None})
                elif isinstance(event, AnswerAudio) and announcements:
                    wav = _wav(event.speech.samples, event.speech.sample_rate)
                    announcements[-1]["wav"] = base64.b64encode(wav).decode()
            return announcements

        announcements = await self._run("llm", request, announce)
        return JSONResponse({"announcements": announcements}, headers={"Cache-Control": "no-store"})


def _session_of(body) -> str:
    session = body.get("session") if isinstance(body, dict) else None
    if not isinstance(session, str) or not 8 <= len(session) <= 64:
        raise bad("'session' must be the page's conversation id (8 to 64 characters)", "session")
    return session


async def _upload(form, name: str, limit: int) -> bytes | None:
    upload = form.get(name)
    if upload is None or upload == "":
        return None
    if not isinstance(upload, UploadFile):
        raise bad(f"'{name}' must be a file", name)
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise APIError(413, f"'{name}' is over {limit // MB} MB", param=name, code="file_too_large")
    return data or None


def _form_flag(form, name: str) -> bool:
    """A boolean field of a multipart form ("true" / "false", as OpenAI's clients send it)."""
    value = form.get(name)
    if value in (None, "", "false", "False", "0"):
        return False
    if value in ("true", "True", "1"):
        return True
    raise bad(f"'{name}' must be true or false", name)


def _form_number(form, name: str, low: float, high: float, default: float) -> float:
    """A number field of a multipart form (text), checked as openai.number checks JSON fields."""
    value = form.get(name)
    if value in (None, ""):
        return default
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise bad(f"{name} must be a number, not {value!r}", name) from None
    return openai.number({name: value}, name, low, high)


def _answering_errors(endpoint):
    """Every failure of ``endpoint`` becomes OpenAI's error JSON with its status: no traceback, no dropped
    connection."""

    @functools.wraps(endpoint)
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HTTPException as e:  # e.g. a malformed multipart body
            return error_response(APIError(e.status_code, str(e.detail)))
        except Exception as e:
            return error_response(e)

    return wrapped


def create_app(models: ServerModels, config: ServerConfig | None = None, host: str = "127.0.0.1"):
    """The ASGI application serving ``models`` (run it with uvicorn; ``edgemm serve`` does); ``host``: the address
    it listens on (a name given there is one clients may use)."""
    config = config or ServerConfig()
    server = Server(models, config)
    routes = [
        ("/", server.page, ["GET"]),
        ("/health", server.health, ["GET"]),
        ("/v1/models", server.list_models, ["GET"]),
        ("/v1/models/{model:path}", server.get_model, ["GET"]),
        ("/v1/chat/completions", server.chat_completions, ["POST"]),
        ("/v1/audio/transcriptions", server.transcriptions, ["POST"]),
        ("/v1/audio/translations", server.translations, ["POST"]),
        ("/v1/audio/speech", server.speech, ["POST"]),
        ("/v1/assistant", server.assistant, ["POST"]),
        ("/v1/assistant/timers", server.assistant_timers, ["POST"]),
        ("/v1/assistant/wake", server.wake_words, ["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        asyncio.get_running_loop().set_exception_handler(RateLimitedErrors())
        yield
        models.shutdown()

    async def live(websocket):
        await live_transcription(server, websocket)

    async def wake(websocket):
        await wake_detection(server, websocket)

    app = Starlette(
        routes=[Route(path, _answering_errors(endpoint), methods=methods) for path, endpoint, methods in routes]
        + [WebSocketRoute("/v1/audio/live", live), WebSocketRoute("/v1/assistant/wake", wake)],
        exception_handlers={HTTPException: _on_http_exception},
        lifespan=lifespan,
    )
    app.state.server = server
    guarded = Guard(app, Access(config.api_key, host, config.allow_hosts, config.allow_origins))
    if not config.allow_origins:
        return guarded
    # Pages of the allowed sites read the answers too: CORS, preflight requests included (answered before the key
    # is asked for: they carry none).
    return CORSMiddleware(
        guarded,
        allow_origins=list(config.allow_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"],
    )


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one); a clear error when it cannot be had."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except (OSError, OverflowError) as e:
        raise EdgemmError(f"cannot listen on {host}:{port}: {getattr(e, 'strerror', None) or e}") from None
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(
    models: ServerModels, host: str = "127.0.0.1", port: int = 8000, config: ServerConfig | None = None, ready=None
) -> None:
    """Serve ``models`` over HTTP until interrupted. ``ready(url)`` is called once the socket listens."""
    import uvicorn

    config = config or ServerConfig()
    if not config.api_key and not is_loopback(host):
        log.warning(
            "listening on %s without an API key: anyone who can reach this machine can use it (set --api-key)", host
        )
    sock = listen_socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    raise_descriptor_limit()
    uv = BoundedServer(
        uvicorn.Config(
            create_app(models, config, host),
            http=BoundedH11Protocol,
            backlog=LISTEN_BACKLOG,
            log_level="warning",
            timeout_keep_alive=5,
            lifespan="on",
        )
    )
    if ready is not None:
        ready(f"http://{shown}:{bound}")
    uv.run(sockets=[sock])
