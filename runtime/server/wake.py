"""``/v1/assistant/wake``: the server's wake words, for the web page's wake-word option.

``GET`` answers ``{"words": [{"name", "phrase"}]}`` (empty when the server has no wake bundle). The WebSocket takes
the microphone's audio all the time, as 16-bit little-endian mono PCM binary messages at the ``rate`` query parameter
(8000-96000, default 16000), for the words in ``words`` (comma-separated, default all), and answers
``{"type": "detection", "name", "seconds"}`` for each word heard (``seconds``: where, in the audio sent so far).
Each connection runs its own detector (its buffers are its own), in a thread: a step takes a few milliseconds;
MAX_LISTENERS at once, one more gets an error and is closed (1013).
Errors as on ``/v1/audio/live``: a message it cannot use closes the connection (1003), a minute without audio too
(1000), after an ``{"type": "error", "message"}``.
"""

from __future__ import annotations

import asyncio

import numpy as np
import soxr
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.server.live import MAX_MESSAGE_BYTES, LiveError, next_message, rate_param, send_error
from edgemm.runtime.speech.wake import SAMPLE_RATE, WakeWord, word_models

MAX_LISTENERS = 16  # sockets at once (a detector each: its graphs' sessions, ~10 MB); one more is told busy


async def wake_words(server) -> JSONResponse:
    wake = server.models.wake
    words = [] if wake is None else [{"name": m.word, "phrase": m.phrase} for m in word_models(wake)]
    return JSONResponse({"words": words})


async def wake_detection(server, websocket: WebSocket) -> None:
    """One client's wake-word detection (see the module)."""
    await websocket.accept()
    if server.wake_listeners >= MAX_LISTENERS:
        await send_error(websocket, f"this server listens for wake words on {MAX_LISTENERS} sockets at once")
        await websocket.close(1013)
        return
    server.wake_listeners += 1
    try:
        if server.models.wake is None:
            raise LiveError("this server has no wake words (build them: edgemm export wake)")
        rate = rate_param(websocket.query_params.get("rate", str(SAMPLE_RATE)))
        words = [w for w in websocket.query_params.get("words", "").split(",") if w] or None
        try:
            detector = await asyncio.to_thread(WakeWord, server.models.wake, words)
        except EdgemmError as e:  # an unknown word
            raise LiveError(str(e)) from None
        resampler = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
        while (message := await next_message(server, websocket, "the wake-word detection")) is not None:
            data = message.get("bytes")
            if data is None or len(data) % 2 or len(data) > MAX_MESSAGE_BYTES:
                raise LiveError(f"send audio as binary 16-bit PCM messages of at most {MAX_MESSAGE_BYTES} bytes")
            samples = resampler.resample_chunk(np.frombuffer(data, "<i2").astype(np.float32) / 32768)
            for found in await asyncio.to_thread(detector.feed, samples):
                await websocket.send_json({"type": "detection", "name": found.word, "seconds": found.seconds})
    except LiveError as e:
        await send_error(websocket, str(e))
        await websocket.close(1003)
    except (WebSocketDisconnect, RuntimeError):  # the client left while we answered
        return
    finally:
        server.wake_listeners -= 1
