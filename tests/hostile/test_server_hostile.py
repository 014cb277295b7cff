"""The hostile-input probe's server cases against a live ``edgemm serve`` (the pi profile's small LLM, the default
speech, vision and voice bundles): each request is refused with one line, or answered within bounded time and
memory, and the server stays available to everybody else."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf

from edgemm.bench.serve import ServerProcess, health, multipart, request
from edgemm.runtime.bundle import default_bundle, models_dir
from edgemm.runtime.server.connections import HEADER_TIMEOUT_S, raise_descriptor_limit

pytestmark = pytest.mark.slow
SMALL_LLM = "smollm2-135m-instruct-int4"
JSON = {"Content-Type": "application/json"}
CHAT = "/v1/chat/completions"
TIMERS = "/v1/assistant/timers"
POLL = json.dumps({"session": "abcdefghij"}).encode()


def _bundles() -> list[str]:
    llm = models_dir() / SMALL_LLM
    if not (llm / "manifest.json").exists():
        pytest.skip(f"{llm} missing: run `make setup`")
    for kind in ("speech", "vision"):
        if not (default_bundle(kind) / "manifest.json").exists():
            pytest.skip(f"default {kind} bundle missing: run `make setup`")
    pytest.importorskip("starlette")
    return ["--model", str(llm)]


@pytest.fixture(scope="module")
def server():
    with ServerProcess(*_bundles(), "--max-queue", "4") as process:
        yield process


def _done(server, worker: str = "llm") -> int:
    return health(server.url)["workers"][worker]["done"]


def _idle(server, worker: str, within_s: float) -> float:
    """Seconds until ``worker`` has nothing queued or running (fails past ``within_s``)."""
    start = time.monotonic()
    while health(server.url)["workers"][worker]["pending"]:
        assert time.monotonic() - start < within_s, f"the {worker} worker is still busy after {within_s} s"
        time.sleep(0.05)
    return time.monotonic() - start


def _chat(content: str, **fields) -> dict:
    return {"model": "x", "messages": [{"role": "user", "content": content}], "max_tokens": 16, **fields}


def _error(status: int, raw: bytes) -> dict:
    error = json.loads(raw)["error"]
    assert "\n" not in error["message"] and "Traceback" not in error["message"]
    return error


# ---- 1. cross-site requests and DNS rebinding ----


def test_cross_site_and_rebinding_requests_never_run_a_model(server):
    before = _done(server)
    body = json.dumps(_chat("What is the capital of France?")).encode()
    cases = [
        ({"Content-Type": "text/plain"}, CHAT, body, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, "/v1/assistant", b"session=abcdefghij&text=hi", 415),
        ({**JSON, "Origin": "https://evil.example"}, CHAT, body, 403),
        ({**JSON, "Host": f"rebind.evil.example:{urlsplit(server.url).port}"}, CHAT, body, 403),
        ({"Content-Type": "text/plain"}, TIMERS, POLL, 415),
        ({**JSON, "Origin": "https://evil.example"}, TIMERS, POLL, 403),
        ({**JSON, "Host": f"rebind.evil.example:{urlsplit(server.url).port}"}, TIMERS, POLL, 403),
    ]
    for headers, path, data, status in cases:
        got, _, raw = request(server.url, path, data, headers, timeout=30)
        assert got == status, (headers, raw)
        assert _error(got, raw).get("param") is None
    assert _done(server) == before  # no model ran
    got, headers, _ = request(server.url, "/")
    assert got == 200 and headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_the_timers_poll_refuses_bad_sessions_and_costs_nothing(server):
    cases = [
        (b'{"session": 7}', "session"),
        (b'{"session": "' + b"a" * 5000 + b'"}', "session"),
        (b"[" * 100_000, None),
    ]
    for data, param in cases:
        got, _, raw = request(server.url, TIMERS, data, JSON, timeout=30)
        assert got == 400 and _error(got, raw).get("param") == param, raw[:200]
    # A conversation nobody started (or another client's) has nothing due, and a poll costs no model time.
    before = _done(server)
    for _ in range(20):
        got, _, raw = request(server.url, TIMERS, POLL, JSON, timeout=30)
        assert got == 200 and json.loads(raw) == {"announcements": []}
    assert _done(server) == before


# ---- 2. stop strings ----


def test_stop_strings_are_capped_and_long_ones_cost_nothing(server):
    got, _, raw = request(server.url, CHAT, _chat("Hi", stop=["x" * 1_500_000] * 4), timeout=60)
    assert got == 400 and _error(got, raw)["param"] == "stop"
    start = time.monotonic()
    got, _, raw = request(
        server.url, CHAT, _chat("Write a story about a dragon.", stop=["x" * 1000] * 4, max_tokens=100)
    )
    assert got == 200 and json.loads(raw)["usage"]["completion_tokens"] > 20
    assert time.monotonic() - start < 30


# ---- 3. connections that never send a byte ----


def test_idle_connections_cannot_lock_anybody_out():
    with ServerProcess(*_bundles(), "--no-speech", "--no-vision", "--no-tts", max_files=1024) as process:
        parts = urlsplit(process.url)
        raise_descriptor_limit(1500)  # this test holds them all
        idle = []
        for _ in range(1100):  # more than the server's descriptors
            s = socket.socket()
            s.settimeout(10)
            s.connect((parts.hostname, parts.port))
            idle.append(s)
        slowest = 0.0
        for _ in range(10):
            start = time.monotonic()
            assert health(process.url)["status"] == "ok"
            slowest = max(slowest, time.monotonic() - start)
        got, _, _ = request(process.url, CHAT, _chat("Hi"), timeout=60)
        assert got == 200 and slowest < 1.0, slowest
        # A client trickling its headers a byte at a time is cut at the header deadline like a silent one.
        trickle = socket.create_connection((parts.hostname, parts.port))
        trickle.settimeout(1)
        deadline, closed = time.monotonic() + HEADER_TIMEOUT_S + 5, False
        while time.monotonic() < deadline and not closed:
            try:
                trickle.send(b"G")
                closed = trickle.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
        assert closed, "a connection sending its headers a byte a second was never closed"
        open_ = 0
        for s in idle:
            s.setblocking(False)
            try:
                open_ += s.recv(1) != b""
            except BlockingIOError:
                open_ += 1
            except OSError:
                pass
            s.close()
        assert open_ == 0, f"{open_} silent connections still open after {HEADER_TIMEOUT_S} s"
        log = process.output()
        assert len(log) < 20_000 and "Traceback" not in log, log[-2000:]


# ---- 5. one client reads another's prompt ----


def _post_on(conn: http.client.HTTPConnection, body: dict) -> dict:
    conn.request("POST", CHAT, json.dumps(body), JSON)
    response = conn.getresponse()
    raw = response.read()
    assert response.status == 200, raw
    return json.loads(raw)


def test_cached_tokens_never_reveal_another_clients_prompt(server):
    parts = urlsplit(server.url)
    victim = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    secret = [{"role": "user", "content": "My bank PIN is 4719. Say OK."}]
    first = _post_on(victim, {"model": "x", "messages": secret, "max_tokens": 4})
    guess = [{"role": "user", "content": "My bank PIN is 4719. Say OK."}]
    for cache_key in (None, "guess"):
        attacker = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        fields = {"prompt_cache_key": cache_key} if cache_key else {}
        probe = _post_on(attacker, {"model": "x", "messages": guess, "max_tokens": 4, **fields})
        assert probe["usage"]["prompt_tokens_details"]["cached_tokens"] == 0, probe["usage"]
        attacker.close()
    # The victim's own conversation still runs in its own cache.
    secret += [{"role": "assistant", "content": first["choices"][0]["message"]["content"]}]
    secret += [{"role": "user", "content": "And again?"}]
    again = _post_on(victim, {"model": "x", "messages": secret, "max_tokens": 4})
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] >= first["usage"]["prompt_tokens"]
    victim.close()


# ---- 6. abandoned work ----


def _long_wav(seconds: int) -> bytes:
    """Real speech repeated to ``seconds``, 8 kHz 16-bit (under the 25 MB upload limit for 20 minutes)."""
    from edgemm.export.evaluation.clips import dev_clips

    clips = dev_clips()
    if not clips:
        pytest.skip("no real clips: install Debian pocketsphinx-testdata (make setup does)")
    import soxr

    samples, rate = sf.read(clips[0].path, dtype="float32")
    samples = soxr.resample(samples, rate, 8000)
    out = io.BytesIO()
    sf.write(out, np.tile(samples, seconds * 8000 // samples.size + 1)[: seconds * 8000], 8000, "PCM_16", format="WAV")
    return out.getvalue()


def _upload_and_leave(url: str, data: bytes, kind: str, after_s: float) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("POST", "/v1/audio/transcriptions", data, {"Content-Type": kind})
    time.sleep(after_s)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()


def test_work_stops_when_its_clients_are_gone(server):
    data, kind = multipart({"model": "whisper-1"}, {"file": ("long.wav", _long_wav(20 * 60))})
    before = _done(server, "speech")
    with ThreadPoolExecutor(4) as pool:  # one runs, three queue; every client leaves after 3 s
        list(pool.map(lambda _: _upload_and_leave(server.url, data, kind, 3.0), range(4)))
    # 4 x 20 minutes of speech would keep the worker busy for many minutes.
    assert _idle(server, "speech", within_s=10) < 10
    assert _done(server, "speech") - before == 4
    assert "Traceback" not in server.output()


def test_a_request_over_its_deadline_frees_the_worker():
    with ServerProcess(*_bundles(), "--no-vision", "--no-tts", "--timeout", "3") as process:
        data, kind = multipart({"model": "whisper-1"}, {"file": ("long.wav", _long_wav(10 * 60))})
        got, _, raw = request(process.url, "/v1/audio/transcriptions", data, {"Content-Type": kind})
        assert got == 504 and _error(got, raw)["code"] == "timeout"
        assert _idle(process, "speech", within_s=5) < 5


# ---- 8 and 9. one line for every error; the event loop stays free ----


def test_odd_requests_get_one_line_and_no_traceback(server):
    cases = [
        (_chat("hi") | {"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
        (b'{"model": "x", "seed": ' + b"9" * 5000 + b', "messages": []}', None),
        (_chat("hi", tools=[{"type": "function", "function": {"name": "f g"}}]), "tools[0].function.name"),
        (_chat("hi", tool_choice={"type": "function", "function": {"name": "f"}}), "tool_choice"),
        (
            _chat("hi", response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": []}}),
            "response_format",
        ),
        (_chat("hi", response_format={"type": "xml"}), "response_format"),
        (_chat("hi", logprobs=True), "logprobs"),
    ]
    for body, param in cases:
        got, _, raw = request(server.url, CHAT, body, JSON, timeout=30)
        assert got == 400 and _error(got, raw)["param"] == param, raw
    # An upload abandoned half-way.
    parts = urlsplit(server.url)
    conn = socket.create_connection((parts.hostname, parts.port))
    conn.sendall(
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n"
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n' + b"\0" * 1000
    )
    time.sleep(0.5)
    conn.close()
    time.sleep(1.0)
    assert health(server.url)["status"] == "ok"
    assert "Traceback" not in server.output(), server.output()[-3000:]


def test_speech_of_nothing_to_say_is_a_400(server):
    got, _, raw = request(server.url, "/v1/audio/speech", {"model": "tts-1", "input": "... -- ?"}, JSON, timeout=60)
    assert got == 400 and _error(got, raw)["param"] == "input"


def test_large_bodies_are_parsed_off_the_event_loop(server):
    text = "word " * (5 << 20)  # a 27 MB request: valid JSON, refused after parsing (over the text limit)
    body = json.dumps(_chat(text)).encode()
    slowest, done = 0.0, threading.Event()

    def poll():
        nonlocal slowest
        while not done.is_set():
            start = time.monotonic()
            health(server.url)
            slowest = max(slowest, time.monotonic() - start)
            time.sleep(0.05)

    watcher = threading.Thread(target=poll)
    watcher.start()
    with ThreadPoolExecutor(4) as pool:
        statuses = [r[0] for r in pool.map(lambda _: request(server.url, CHAT, body, JSON, timeout=60), range(4))]
    done.set()
    watcher.join()
    assert statuses == [400] * 4
    assert slowest < 1.0, f"/health waited {slowest:.2f} s while the bodies were parsed"


def test_a_failed_turn_does_not_log_the_question(server):
    question = "What colour is the secret-banana-7 in front of the camera?"
    data, kind = multipart({"session": "session-log-check", "text": question}, {"image": ("f.png", b"\x89PNG junk")})
    request(server.url, "/v1/assistant", data, {"Content-Type": kind}, timeout=120)
    assert "secret-banana-7" not in server.output()
