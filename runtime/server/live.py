"""``/v1/audio/live`` (WebSocket): live transcription of microphone audio, for the web page's partial transcripts.

The client sends 16-bit little-endian mono PCM as binary messages, at the rate given by the ``rate`` query parameter
(8000-96000, default 16000), and ``{"type": "end"}`` when an utterance ends (its own endpointer decides;
``{"type": "reset"}`` drops it without a final transcript). The server
answers ``{"type": "partial", "text", "stable"}`` as audio arrives (:class:`TranscriptionStream`: ``stable`` is the
start that later partials keep; a partial only when the speech model is idle, and at most half of its time), ``{"type": "final", "text"}`` after each end, and ``{"type": "error", "message"}``
for what it cannot use: an utterance over 30 s starts over; a message that is not audio or JSON closes the
connection (1003), as does a minute without audio (1000). Decoding runs on the speech model's worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np
import soxr
from starlette.websockets import WebSocket, WebSocketDisconnect

from edgemm.runtime.errors import AudioError, EdgemmError
from edgemm.runtime.server.openai import APIError
from edgemm.runtime.server.workers import Channel

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 20  # one binary message: 2.7 s at 96 kHz
RATES = (8000, 96000)


class LiveError(EdgemmError):
    """A message the live transcription cannot use (its text goes back to the client)."""


async def live_transcription(server, websocket: WebSocket) -> None:
    """One client's live transcription (see the module); ``server``: the app's Server (models, workers, timeout)."""
    await websocket.accept()
    session = None
    try:
        transcriber = server.models.transcriber
        if transcriber is None:
            raise LiveError("this server has no speech model")
        session = _Session(server, transcriber, rate_param(websocket.query_params.get("rate", "16000")))
        while (message := await next_message(server, websocket, "the live transcription")) is not None:
            for reply in await session.handle(message):
                await websocket.send_json(reply)
    except LiveError as e:
        await send_error(websocket, str(e))
        await websocket.close(1003 if session is not None else 1008)
    except (WebSocketDisconnect, RuntimeError):  # the client left while we answered
        return
    finally:
        if session is not None:
            session.close()


async def next_message(server, websocket: WebSocket, what: str) -> dict | None:
    """The client's next message; None when it has left, or sent nothing for the server's idle timeout (it is then
    told that ``what`` is closed, and the socket closes with 1000)."""
    try:
        message = await asyncio.wait_for(websocket.receive(), server.config.idle_timeout)
    except TimeoutError:
        await send_error(websocket, f"no audio for {server.config.idle_timeout:g} s: {what} is closed")
        await websocket.close(1000)
        return None
    return None if message["type"] == "websocket.disconnect" else message


async def send_error(websocket: WebSocket, message: str) -> None:
    try:
        await websocket.send_json({"type": "error", "message": message})
    except (WebSocketDisconnect, RuntimeError):
        pass


def rate_param(value: str) -> int:
    try:
        rate = int(value)
    except ValueError:
        rate = 0
    if not RATES[0] <= rate <= RATES[1]:
        raise LiveError(f"rate must be a sample rate in Hz from {RATES[0]} to {RATES[1]}, not {value!r}")
    return rate


class _Session:
    """One connection's utterance being transcribed, its resampler, and the decode running for it."""

    def __init__(self, server, transcriber, rate: int):
        self.server, self.transcriber, self.rate = server, transcriber, rate
        self.channel: Channel | None = None
        self.worker = server.models.workers["speech"]
        self.rest_until = 0.0  # time.monotonic() before which no partial starts
        self._new()

    def _new(self) -> None:
        self.stream = self.transcriber.stream()
        self.resampler = soxr.ResampleStream(self.rate, self.transcriber.sample_rate, 1, dtype="float32")

    async def handle(self, message: dict) -> list[dict]:
        """The replies to one message."""
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            return await self._audio(data)
        try:
            kind = json.loads(text).get("type") if text else None
        except (ValueError, AttributeError):
            kind = None
        if kind not in ("end", "reset"):
            raise LiveError('send audio as binary 16-bit PCM messages and {"type": "end"} at the end of an utterance')
        stream = self.stream
        self._new()
        self.rest_until = 0.0  # the next utterance's first partial comes as soon as it is due
        if kind == "reset":
            return []
        final = await self._decode(stream.finish)
        return [{"type": "final", "text": final.text.strip()}]

    async def _audio(self, data: bytes) -> list[dict]:
        if len(data) % 2 or len(data) > MAX_MESSAGE_BYTES:
            raise LiveError(f"an audio message must be 16-bit samples, at most {MAX_MESSAGE_BYTES} bytes")
        samples = self.resampler.resample_chunk(np.frombuffer(data, "<i2").astype(np.float32) / 32768)
        if not samples.size:
            return []
        try:
            self.stream.feed(samples, partial=False)
        except AudioError as e:  # over 30 s without an end: that utterance is dropped, the next starts
            self._new()
            return [{"type": "error", "message": str(e)}]
        if not self.stream.due or time.monotonic() < self.rest_until or self.worker.pending:
            return []  # partials take at most half the speech model's time, and never wait behind other work
        started = time.monotonic()
        partial = await self._decode(self.stream.partial)
        self.rest_until = 2 * time.monotonic() - started
        return [{"type": "partial", "text": partial.text, "stable": partial.stable}] if partial.text else []

    async def _decode(self, fn):
        """``fn()`` on the speech worker, within the server's request timeout."""

        def job(channel: Channel):
            channel.put(fn())

        try:
            self.channel = self.server.start("speech", job)
            return await self.channel.next(timeout=self.server.config.timeout)
        except TimeoutError:
            raise LiveError(f"transcribing took longer than {self.server.config.timeout:g} s") from None
        except (EdgemmError, APIError) as e:  # a full queue, a closing server, audio it cannot transcribe
            raise LiveError(str(e).splitlines()[0]) from None
        finally:
            if self.channel is not None:
                self.channel.cancel()
            self.channel = None

    def close(self) -> None:
        if self.channel is not None:
            self.channel.cancel()
