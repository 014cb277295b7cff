"""OpenAI's audio routes: ``POST /v1/audio/transcriptions`` and ``/translations`` (whole, or streamed as
``transcript.text`` events) and ``POST /v1/audio/speech``. Live transcription over a WebSocket is live.py."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgemm.runtime.server import openai
from edgemm.runtime.server.guard import MB
from edgemm.runtime.server.http import api_error, form_flag, form_number, read_json, sse
from edgemm.runtime.server.openai import APIError, bad
from edgemm.runtime.server.workers import Channel
from edgemm.runtime.speech.decoding import DecodingOptions
from edgemm.runtime.speech.transcribe import TEMPERATURES, TranscribeOptions

PCM_RATE = 24_000  # OpenAI's raw "pcm" format: 24 kHz, 16-bit signed little-endian, mono

# What the speech worker sends while a streamed transcription runs: a Delta per decoded segment, then Done.


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Done:
    result: object  # the Transcription, as unstreamed


async def transcriptions(server, request: Request) -> Response:
    return await _transcribe(server, request, "transcribe")


async def translations(server, request: Request) -> Response:
    return await _transcribe(server, request, "translate")


async def _transcribe(server, request: Request, task: str) -> Response:
    transcriber = server.models.transcriber
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
            raise bad(f"response_format must be one of {', '.join(openai.TRANSCRIPTION_FORMATS)}", "response_format")
        stream = form_flag(form, "stream")
        if stream and fmt not in ("json", "text"):
            raise bad("stream=true sends transcript.text events: response_format must be json or text", "stream")
        temperature = form_number(form, "temperature", 0.0, 1.0, 0.0)
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
        return await _transcript_events(server, request, transcriber, audio, options)
    result = await server.run("speech", request, transcriber.transcribe, audio, None, options)
    body, media = openai.transcription_body(result, fmt, task)
    if isinstance(body, dict):
        return JSONResponse(body)
    return Response(body, media_type=media)


async def _transcript_events(server, request: Request, transcriber, audio: bytes, options) -> Response:
    """A transcription as OpenAI streams it: a ``transcript.text.delta`` event per segment as each 30 s window
    is decoded, then ``transcript.text.done`` with the whole text (the same as without ``stream``)."""
    deadline = time.monotonic() + server.config.timeout

    def job(channel: Channel):
        def delta(segments):
            for segment in segments:
                channel.put(Delta(segment.text))

        channel.put(Done(transcriber.transcribe(audio, None, options, on_segments=delta)))

    channel = server.start("speech", job)
    first = await server.next(channel, request, deadline)  # unreadable audio: a 400 before the stream starts

    async def events():
        item, started = first, False
        try:
            while True:
                if isinstance(item, Delta):
                    text = item.text if started else item.text.lstrip()
                    started = started or bool(text)
                    if text:
                        yield sse({"type": "transcript.text.delta", "delta": text, "logprobs": None})
                else:
                    yield sse({"type": "transcript.text.done", "text": item.result.text, "logprobs": None})
                    return
                item = await server.next(channel, request, deadline)
        except Exception as e:  # a timeout mid-stream: OpenAI's error object ends it
            yield sse(api_error(e).body())
        finally:
            channel.cancel()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def speech(server, request: Request) -> Response:
    synthesizer = server.models.synthesizer
    if synthesizer is None:
        raise APIError(
            404,
            f"this server has no voice ({server.models.why_no_voice})",
            "not_found_error",
            code="model_not_found",
        )
    body = await read_json(request)
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
    spoken = await server.run("voice", request, synthesizer.synthesize, text, speed)
    if fmt == "pcm":
        import soxr

        samples = soxr.resample(spoken.samples, spoken.sample_rate, PCM_RATE)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        return Response(pcm, media_type="audio/pcm", headers={"X-Sample-Rate": str(PCM_RATE)})
    out = io.BytesIO()
    sf.write(out, spoken.samples, spoken.sample_rate, format=fmt.upper(), subtype="PCM_16")
    return Response(out.getvalue(), media_type=f"audio/{fmt}")


ROUTES = [
    ("/v1/audio/transcriptions", transcriptions, ["POST"]),
    ("/v1/audio/translations", translations, ["POST"]),
    ("/v1/audio/speech", speech, ["POST"]),
]
