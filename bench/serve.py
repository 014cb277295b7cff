"""``edgemm bench serve``: a live ``edgemm serve`` under load, clients that hang up, and a hostile mix of requests and
idle connections; every request answered or cleanly refused, none hanging. The server runs in a subprocess started
by :class:`ServerProcess` (the tests use it too). What is measured and how: docs/BENCHMARKS.md ("Server" and "The
hostile mix").
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import random
import resource
import select
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np

from edgemm.bench.process import LoggedProcess
from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.server.connections import raise_descriptor_limit
from edgemm.runtime.server.models import CACHE_SLOTS

if TYPE_CHECKING:
    from edgemm.bench.commands import ModelOptions

START_TIMEOUT_S = 180
MAX_QUEUE = 12  # the server's queue per model in this bench: all 10 streaming clients of the disconnect test fit
REQUEST_TIMEOUT_S = 300


class ServerProcess(LoggedProcess):
    """``edgemm serve --port 0 ARGS`` in a subprocess: ``url`` once it listens, ``pid``, ``stop()``."""

    def __init__(self, *args: str, env: dict | None = None, max_files: int | None = None):
        """``max_files``: the server's limit on open descriptors (soft and hard), as ``ulimit -n`` sets it."""
        command = [sys.executable, "-m", "edgemm.runtime.cli", "serve", "--port", "0", *args]

        def limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

        super().__init__(command, "edgemm-serve-", env, preexec_fn=limit if max_files else None)
        self.url = self._wait_ready()

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = Path(self.log.name).read_text()
            for line in text.splitlines():
                if line.startswith("edgemm serve: http"):
                    return line.split()[2]
            if self.proc.poll() is not None:
                raise EdgemmError(f"edgemm serve exited ({self.proc.returncode}): {text.strip()[-500:]}")
            time.sleep(0.2)
        self.stop()
        raise EdgemmError(f"edgemm serve did not start in {START_TIMEOUT_S} s")


def request(url: str, path: str, body=None, headers: dict | None = None, timeout: float = REQUEST_TIMEOUT_S):
    """(status, headers, body bytes) of one request (headers: a case-insensitive mapping); ``body``: a dict (sent as
    JSON) or bytes."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = dict(headers or {})
    if isinstance(body, dict):
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url + path, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type; ``files``: name -> (filename, bytes)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def health(url: str, headers: dict | None = None) -> dict:
    status, _, body = request(url, "/health", headers=headers, timeout=10)
    if status != 200:
        raise EdgemmError(f"/health answered {status}")
    return json.loads(body)


def _chat(url: str, i: int, headers: dict) -> int:
    body = {"model": "any", "messages": [{"role": "user", "content": f"Count from {i} to {i + 5}."}], "max_tokens": 24}
    status, got, _ = request(url, "/v1/chat/completions", body, headers)
    if status == 429 and "Retry-After" not in got:
        return -429  # refused without saying when to retry
    return status


def _transcribe(url: str, audio: bytes, headers: dict) -> int:
    data, kind = multipart({"model": "whisper-1"}, {"file": ("clip.wav", audio)})
    return request(url, "/v1/audio/transcriptions", data, {**headers, "Content-Type": kind})[0]


def load(server: ServerProcess, audio: bytes, chats: int = 64, transcriptions: int = 16, headers=None) -> dict:
    """Send ``chats`` + ``transcriptions`` requests at once; see the module's docstring."""
    headers = headers or {}
    url = server.url
    # Warm-up: the server's steady state, i.e. its kept KV caches filled with distinct conversations and a first
    # transcription's buffers allocated. "Idle" is measured after it.
    for i in range(CACHE_SLOTS):
        _chat(url, 1000 + i, headers)
    _transcribe(url, audio, headers)
    time.sleep(1.0)
    idle = server.rss_mb()
    peak, health_s, health_failures = idle, [], 0
    done = threading.Event()

    def watch():
        nonlocal peak, health_failures
        while not done.is_set():
            start = time.perf_counter()
            try:
                health(url, headers)
                health_s.append(time.perf_counter() - start)
            except (OSError, EdgemmError):
                health_failures += 1
            peak = max(peak, server.rss_mb())
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=chats + transcriptions) as pool:
        chat_futures = [pool.submit(_chat, url, i, headers) for i in range(chats)]
        asr_futures = [pool.submit(_transcribe, url, audio, headers) for _ in range(transcriptions)]
        chat_status = [f.result() for f in chat_futures]
        asr_status = [f.result() for f in asr_futures]
    wall = time.perf_counter() - start
    done.set()
    watcher.join()
    time.sleep(2.0)  # let freed memory settle
    after = server.rss_mb()

    def counts(statuses):
        return {
            "answered": statuses.count(200),
            "refused_429": statuses.count(429),
            "refused_503": statuses.count(503),
            "other": sorted(s for s in statuses if s not in (200, 429, 503)),
        }

    return {
        "chats": counts(chat_status),
        "transcriptions": counts(asr_status),
        "wall_s": round(wall, 2),
        "health_polls": len(health_s),
        "health_failures": health_failures,
        "health_max_s": round(max(health_s, default=0.0), 3),
        "rss_idle_mb": round(idle, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_after_mb": round(after, 1),
    }


def _hang_up_after_first_piece(url: str, headers: dict, max_tokens: int) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=REQUEST_TIMEOUT_S)
    body = {
        "model": "any",
        "stream": True,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Write a very long story about a cat who travels the world."}],
    }
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {**headers, "Content-Type": "application/json"})
    response = conn.getresponse()
    pieces = 0
    while pieces < 2:  # the role chunk, then the first text piece
        line = response.fp.readline()
        if not line:
            break
        pieces += line.startswith(b"data: ")
    conn.sock.shutdown(2)
    conn.close()


def disconnect(server: ServerProcess, clients: int = 10, max_tokens: int = 1000, headers=None) -> dict:
    """``clients`` streaming chats that hang up after their first piece; see the module's docstring."""
    headers = headers or {}
    before = health(server.url, headers)["workers"]["llm"]["done"]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(lambda _: _hang_up_after_first_piece(server.url, headers, max_tokens), range(clients)))
    hung_up = time.perf_counter()
    while True:
        llm = health(server.url, headers)["workers"]["llm"]
        if llm["pending"] == 0:
            break
        if time.perf_counter() - hung_up > 120:
            raise EdgemmError("the llm worker was still busy 120 s after every client hung up")
        time.sleep(0.05)
    return {
        "clients": clients,
        "max_tokens_each": max_tokens,
        "jobs_finished": llm["done"] - before,
        "worker_free_after_s": round(time.perf_counter() - hung_up, 2),
        "all_clients_s": round(time.perf_counter() - start, 2),
    }


IDLE_CONNECTIONS = 1100
REOPEN_S = (15.0, 1.0)  # the flood reopens closed connections: as slowloris does by default, and as a storm
HOSTILE_FILES = 1024  # the server's descriptor limit in the hostile mix (a common default of `ulimit -n`)


class IdleFlood:
    """``count`` connections to ``url`` that never send a byte, until stop(); every ``reopen_s`` those the server
    closed are opened again."""

    def __init__(self, url: str, count: int, reopen_s: float):
        parts = urlsplit(url)
        self.address, self.count, self.reopen_s, self.reopened = (parts.hostname, parts.port), count, reopen_s, 0
        raise_descriptor_limit(count + 256)  # this process holds them all
        self.sockets: list[socket.socket | None] = [self._open() for _ in range(count)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True)
        self._thread.start()

    def _open(self) -> socket.socket:
        return socket.create_connection(self.address, timeout=10)

    def _keep(self) -> None:
        while not self._stop.wait(self.reopen_s):
            poller = select.poll()
            index = {s.fileno(): i for i, s in enumerate(self.sockets) if s is not None}
            for fd in index:
                poller.register(fd, select.POLLIN)
            closed = [index[fd] for fd, _ in poller.poll(0)]  # readable: the server closed it
            for i in closed + [i for i, s in enumerate(self.sockets) if s is None]:
                if self._stop.is_set():
                    return
                if self.sockets[i] is not None:
                    self.sockets[i].close()
                    self.sockets[i] = None
                with contextlib.suppress(OSError):
                    self.sockets[i] = self._open()
                    self.reopened += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.sockets:
            if s is not None:
                s.close()


def sixteen_bit_png(side: int = 8000) -> bytes:
    """A ``side`` x ``side`` 16-bit grayscale PNG of a few hundred KB (a vertical gradient compresses well)."""
    from PIL import Image

    rows = (np.arange(side, dtype=np.uint32) * 65535 // (side - 1)).astype(np.uint16)
    image = Image.fromarray(np.repeat(rows[:, None], side, axis=1))  # uint16: mode I;16
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _timed(fn, *args) -> dict:
    """The status ``fn(*args)`` returns (the name of the error when the request itself failed) and its seconds."""
    start = time.perf_counter()
    try:
        status = fn(*args)
    except OSError as e:  # refused, reset, or no answer within REQUEST_TIMEOUT_S
        status = type(e).__name__
    return {"status": status, "s": round(time.perf_counter() - start, 2)}


def hostile(server: ServerProcess, reopen_s: float) -> dict:
    """The hostile mix (see the module's docstring) against ``server``, the silent connections reopened every
    ``reopen_s`` seconds."""
    url = server.url
    png = "data:image/png;base64," + base64.b64encode(sixteen_bit_png()).decode()
    images = {
        "model": "any",
        "max_tokens": 16,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "What is in these photos?"}]
                + [{"type": "image_url", "image_url": {"url": png}}] * 16,
            }
        ],
    }
    stops = {**_chat_body("Say hi."), "stop": ["x" * 1_500_000] * 4}
    words = " ".join(random.Random(0).choice(["alpha", "river", "stone", "light", "music"]) for _ in range(700))
    speech = {"model": "tts-1", "voice": "alloy", "input": words[:4096]}
    flood = IdleFlood(url, IDLE_CONNECTIONS, reopen_s)
    peak, health_s, health_failures, done = server.rss_mb(), [], 0, threading.Event()

    def watch():
        nonlocal peak, health_failures
        while not done.is_set():
            start = time.perf_counter()
            try:
                health(url)
                health_s.append(time.perf_counter() - start)
            except (OSError, EdgemmError):  # no answer within 10 s, or the connection refused or reset
                health_failures += 1
            peak = max(peak, server.rss_mb())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            hostile_requests = {
                "stop_6mb": pool.submit(_timed, lambda: request(url, "/v1/chat/completions", stops)[0]),
                "pngs_16": pool.submit(_timed, lambda: request(url, "/v1/chat/completions", images)[0]),
                "speech_4096": pool.submit(_timed, lambda: request(url, "/v1/audio/speech", speech)[0]),
            }
            time.sleep(0.5)
            chat = _timed(lambda: request(url, "/v1/chat/completions", _chat_body("What is the capital of France?"))[0])
            results = {name: future.result() for name, future in hostile_requests.items()}
    finally:
        done.set()
        watcher.join()
        flood.stop()
    return {
        "idle_connections": IDLE_CONNECTIONS,
        "reopen_s": reopen_s,
        "reopened": flood.reopened,
        "health_polls": len(health_s),
        "health_max_ms": round(max(health_s, default=0.0) * 1000, 1),
        "health_median_ms": round(float(np.median(health_s)) * 1000, 1) if health_s else None,
        "health_over_100ms": sum(s > 0.1 for s in health_s),
        "health_failures": health_failures,
        "chat": chat,
        **results,
        "rss_peak_mb": round(peak, 1),
        "log_bytes": len(server.output()),
    }


def _chat_body(text: str) -> dict:
    return {"model": "any", "messages": [{"role": "user", "content": text}], "max_tokens": 24}


def run_bench_serve(args: ModelOptions) -> int:
    from edgemm.export.evaluation.clips import dev_clips

    clips = dev_clips()
    if not clips:
        raise EdgemmError("no dev clips: install Debian pocketsphinx-testdata (make setup does)")
    audio = Path(clips[0].path).read_bytes()
    extra = ["--threads", str(args.threads), "--max-queue", str(MAX_QUEUE)]
    if args.model:
        extra += ["--model", str(args.model)]
    with ServerProcess(*extra) as server:
        report = {"load": load(server, audio), "disconnect": disconnect(server)}
    report["hostile"] = []
    for reopen_s in REOPEN_S:
        with ServerProcess(*extra, max_files=HOSTILE_FILES) as server:
            report["hostile"].append(hostile(server, reopen_s))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    lo, dc = report["load"], report["disconnect"]
    print(
        f"edgemm bench serve: {args.threads} threads, 64 chats + 16 transcriptions at once (max queue {MAX_QUEUE} per model)"
    )
    for kind in ("chats", "transcriptions"):
        c = lo[kind]
        print(
            f"  {kind:15s} answered {c['answered']:3d}  refused 429 {c['refused_429']:3d}  503 {c['refused_503']:3d}"
            f"  other {c['other']}"
        )
    print(
        f"  /health: {lo['health_polls']} polls during the load, slowest {lo['health_max_s'] * 1000:.0f} ms, "
        f"{lo['health_failures']} failed; load drained in {lo['wall_s']} s"
    )
    print(f"  RSS MB: idle {lo['rss_idle_mb']}, peak {lo['rss_peak_mb']}, after {lo['rss_after_mb']}")
    print(
        f"  {dc['clients']} streaming clients hung up after one piece (asking {dc['max_tokens_each']} tokens each): "
        f"worker free {dc['worker_free_after_s']} s after the last, {dc['all_clients_s']} s for all "
        "(they run one after another: each is cancelled when its client leaves)"
    )
    for h in report["hostile"]:
        print(
            f"  hostile mix (server limited to {HOSTILE_FILES} descriptors): {h['idle_connections']} silent "
            f"connections, those closed reopened every {h['reopen_s']:g} s ({h['reopened']} times)"
        )
        for name in ("stop_6mb", "pngs_16", "speech_4096", "chat"):
            print(f"    {name:12s} status {h[name]['status']}  {h[name]['s']} s")
        print(
            f"    /health: {h['health_polls']} polls, median {h['health_median_ms']} ms, slowest "
            f"{h['health_max_ms']} ms, {h['health_over_100ms']} over 100 ms, {h['health_failures']} failed; "
            f"server RSS peak {h['rss_peak_mb']} MB; "
            f"its log {h['log_bytes']} bytes"
        )
    return 0
