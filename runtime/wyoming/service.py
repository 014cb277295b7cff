"""The Wyoming service: what is loaded as the protocol's ``info``, the events read with bounded sizes, and the
server (the ``wyoming`` package's own) handing each connection to an :class:`EventHandler`."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlparse

from wyoming.event import Event
from wyoming.info import (
    AsrModel,
    AsrProgram,
    Attribution,
    HandleModel,
    HandleProgram,
    Info,
    TtsProgram,
    TtsVoice,
    WakeModel,
    WakeProgram,
)
from wyoming.server import AsyncServer

from edgemm.runtime.errors import EdgemmError, OptionsError
from edgemm.runtime.limits import check_float

log = logging.getLogger(__name__)

ATTRIBUTION = Attribution(name="edgemm", url="https://huggingface.co/edgemm")
MAX_EVENT_BYTES = 4 << 20  # one event's data or payload: 4 MiB (Home Assistant sends 2 KiB chunks)
MAX_HEADER_BYTES = 1 << 16  # one event's JSON line (asyncio's own limit for a line)
BODY_TIMEOUT_S = 30.0  # seconds an event's data and payload may take to arrive after its header
MAX_CLIENTS = 64  # connections at once (satellites keep theirs open); one more is told "busy" and closed


@dataclass
class Clients:
    """The connections open now (one event loop counts them: no lock)."""

    open: int = 0


class ProtocolError(EdgemmError):
    """Bytes that are not a Wyoming event, or one over the size limits."""


@dataclass(frozen=True)
class WyomingOptions:
    uri: str = "tcp://127.0.0.1:10300"  # where to listen: tcp://HOST:PORT or unix://PATH
    transcript_streaming: bool = True  # send transcript-start/-chunk/-stop around each transcript (and say so)
    timeout: float = 120.0  # seconds one request may take on the models (queueing included), then an error event
    max_event_bytes: int = MAX_EVENT_BYTES  # an event's data or payload over this closes the connection
    max_clients: int = MAX_CLIENTS  # connections served at once

    def __post_init__(self):
        scheme = urlparse(self.uri).scheme
        if scheme not in ("tcp", "unix"):
            raise OptionsError(f"--uri must be tcp://HOST:PORT or unix://PATH, not {self.uri!r}")
        if scheme == "tcp" and not (_port(self.uri) and urlparse(self.uri).hostname):
            raise OptionsError(f"--uri must name a host and a port from 1 to 65535: tcp://HOST:PORT, not {self.uri!r}")
        check_float(self.timeout, "timeout", 0.0, low_open=True)
        if not 1 <= self.max_clients <= 4096:
            raise OptionsError(f"--max-clients must be from 1 to 4096, not {self.max_clients}")


def _port(uri: str) -> int | None:
    try:
        return urlparse(uri).port
    except ValueError:
        return None


def _version() -> str | None:
    try:
        return version("edgemm")
    except PackageNotFoundError:
        return None


def _language(espeak_voice: str) -> str:
    """A Piper voice's language as Home Assistant names it: ``en-us`` -> ``en_US``."""
    family, _, region = espeak_voice.partition("-")
    return f"{family}_{region.upper()}" if region else family


def describe(models, options: WyomingOptions) -> Info:
    """What this server holds, for ``describe``: speech to text, the voice, the assistant (``handle``) and the wake
    words of ``models.wake`` (a wake bundle, or None)."""
    common = dict(attribution=ATTRIBUTION, installed=True, version=_version())
    info = Info()
    if models.wake is not None:
        from edgemm.runtime.speech.wake import word_models

        words = [
            WakeModel(name=m.word, description=m.phrase, phrase=m.phrase, languages=["en"], **common)
            for m in word_models(models.wake)
        ]
        info.wake = [WakeProgram(name="edgemm", description="edgemm wake words (openWakeWord)", models=words, **common)]
    if models.transcriber is not None:
        t = models.transcriber
        name = t.bundle.manifest.get("name") or t.bundle.path.name
        languages = sorted(t.tokenizer.special.languages) or ["en"]
        model = AsrModel(name=name, description=f"edgemm {name}", languages=languages, **common)
        info.asr = [
            AsrProgram(
                name="edgemm",
                description="edgemm speech to text (Whisper on onnxruntime)",
                models=[model],
                supports_transcript_streaming=options.transcript_streaming,
                **common,
            )
        ]
    if models.synthesizer is not None:
        s = models.synthesizer
        voice = TtsVoice(
            name=s.name, description=f"Piper {s.name}", languages=[_language(s.voice.config.espeak_voice)], **common
        )
        info.tts = [
            TtsProgram(
                name="edgemm",
                description="edgemm speech (Piper)",
                voices=[voice],
                supports_synthesize_streaming=True,
                **common,
            )
        ]
    if models.transcriber is not None:  # the assistant needs the speech bundle's VAD
        model = HandleModel(name=models.lm.name, description="edgemm assistant", languages=["en"], **common)
        info.handle = [HandleProgram(name="edgemm", description="edgemm assistant", models=[model], **common)]
    return info


def _length(header: dict, key: str, limit: int) -> int:
    n = header.get(key) or 0
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= limit:
        raise ProtocolError(f"an event's {key} must be a byte count from 0 to {limit}, not {n!r}")
    return n


async def read_event(reader: asyncio.StreamReader, limit: int = MAX_EVENT_BYTES) -> Event | None:
    """The next event, as the protocol frames it (a JSON line, then its extra data and payload), refusing a data or
    payload over ``limit`` bytes before reading it; None when the client has gone (also in the middle of an event).
    Raises ProtocolError for bytes that are not an event."""
    try:
        line = await reader.readline()
    except ValueError:  # asyncio's LimitOverrunError: no newline within its 64 KiB
        raise ProtocolError(f"an event header is over {MAX_HEADER_BYTES} bytes") from None
    if not line:
        return None
    try:
        header = json.loads(line)
    except ValueError:
        raise ProtocolError("an event header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("an event header must be a JSON object with a 'type'")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise ProtocolError("an event's data must be a JSON object")
    size, payload_size = _length(header, "data_length", limit), _length(header, "payload_length", limit)
    try:
        if size:
            extra = json.loads(await asyncio.wait_for(reader.readexactly(size), BODY_TIMEOUT_S))
            if not isinstance(extra, dict):
                raise ProtocolError("an event's data must be a JSON object")
            data.update(extra)
        payload = await asyncio.wait_for(reader.readexactly(payload_size), BODY_TIMEOUT_S) if payload_size else None
    except asyncio.IncompleteReadError:  # the client left in the middle of an event
        return None
    except TimeoutError:
        raise ProtocolError(f"an event's data or payload did not arrive within {BODY_TIMEOUT_S:g} s") from None
    except ValueError:
        raise ProtocolError("an event's data is not JSON") from None
    return Event(type=header["type"], data=data, payload=payload)


def serve(models, options: WyomingOptions, ready=None) -> None:
    """Serve Wyoming clients at ``options.uri`` until interrupted; ``ready(uri)`` once it listens. ``detect`` listens
    for the words of ``models.wake`` (None: no wake words)."""
    asyncio.run(_serve(models, options, ready))


async def _serve(models, options: WyomingOptions, ready) -> None:
    from functools import partial

    from edgemm.runtime.wyoming.handler import EventHandler

    info = describe(models, options).event()
    server = AsyncServer.from_uri(options.uri)
    factory = partial(EventHandler, models, options, info, Clients())
    try:
        await server.start(factory)
        if ready is not None:
            ready(options.uri)
        await asyncio.Event().wait()  # until interrupted
    finally:
        await server.stop()
        models.shutdown()
