"""`edgemm serve` with an API key, a queue of one and a short timeout: who gets in, who is refused and how."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from edgemm.bench.serve import ServerProcess, health, request
from edgemm.runtime.bundle import default_bundle, models_dir

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow

KEY = "sk-test-0123456789"
BEARER = {"Authorization": f"Bearer {KEY}"}
LONG = {"model": "x", "messages": [{"role": "user", "content": "Write a very long story about a dragon."}]}


@pytest.fixture(scope="module")
def server():
    # The smallest LLM (the pi profile's): the 3 s timeout then separates a short answer from a long one on any
    # machine, busy or not.
    llm = models_dir() / "smollm2-135m-instruct-int4"
    if not (llm / "manifest.json").exists():
        pytest.skip(f"{llm} missing: run `make setup`")
    pytest.importorskip("starlette")
    args = ["--api-key", KEY, "--max-queue", "1", "--timeout", "3", "--model", str(llm)]
    args += ["--no-speech", "--no-vision", "--no-tts"]
    with ServerProcess(*args) as process:
        yield process


def test_every_route_needs_the_key(server):
    for path in ("/health", "/v1/models", "/"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            status, got, body = request(server.url, path, headers=headers)
            assert status == 401, (path, headers)
            assert json.loads(body)["error"]["code"] == "invalid_api_key"
            assert "WWW-Authenticate" in got
    status, _, _ = request(server.url, "/v1/chat/completions", {"model": "x", "messages": []})
    assert status == 401  # refused before the body is even looked at
    assert health(server.url, BEARER)["status"] == "ok"
    # The page: a browser asks for the key itself (HTTP Basic, the key as the password).
    basic = "Basic " + base64.b64encode(f"me:{KEY}".encode()).decode()
    status, _, body = request(server.url, "/", headers={"Authorization": basic})
    assert status == 200 and b"edgemm assistant" in body


def test_the_openai_client_with_the_key(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    reply = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24
    )
    assert "Paris" in reply.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_routes_of_models_not_loaded(server):
    status, _, body = request(server.url, "/v1/audio/speech", {"input": "hi"}, BEARER)
    message = json.loads(body)["error"]["message"]
    assert status == 404 and message == "this server has no voice (speech output was turned off by --no-tts)"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    status, _, body = request(
        server.url, "/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": [image]}]}, BEARER
    )
    assert status == 400 and "image" in json.loads(body)["error"]["message"]


def test_a_full_queue_refuses_with_retry_after(server):
    body = {**LONG, "max_tokens": 40}
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: request(server.url, "/v1/chat/completions", body, BEARER), range(6)))
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) >= 2 and statuses.count(429) >= 1 and set(statuses) <= {200, 429}, statuses
    for status, headers, raw in results:
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
            assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    # The last answer is sent as its job marks the end, a moment before the worker thread counts it done.
    _idle_soon(server)


def test_a_request_over_the_timeout_gets_504_and_frees_the_worker(server):
    status, _, raw = request(server.url, "/v1/chat/completions", {**LONG, "max_tokens": 4000}, BEARER)
    assert status == 504 and json.loads(raw)["error"]["code"] == "timeout"
    _idle_soon(server)
    # Streamed: the answer so far, then OpenAI's error object, then the end of the stream.
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    pieces = []
    with pytest.raises(openai.APIError, match="longer than"):
        for chunk in client.chat.completions.create(**LONG, max_tokens=4000, stream=True):
            pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces)  # some of the answer came before the timeout
    _idle_soon(server)


def _idle_soon(server, within_s: float = 2.0) -> None:
    """The llm worker is idle within ``within_s`` (a cancelled answer stops after the token being computed)."""
    deadline = time.monotonic() + within_s
    while health(server.url, BEARER)["workers"]["llm"]["pending"]:
        assert time.monotonic() < deadline, "the worker is still busy"
        time.sleep(0.05)


def test_listening_beyond_this_machine_without_a_key_warns():
    with ServerProcess("--host", "0.0.0.0", "--no-speech", "--no-vision", "--no-tts") as process:
        assert health(process.url)["status"] == "ok"
        assert "without an API key" in process.output()


def test_a_live_transcription_that_stalls_is_closed_and_frees_everything():
    """A client that stops sending mid-word (here for the 2 s of --idle-timeout; 60 s by default) gets an error and
    a clean close; the speech worker is free and the next client is served."""
    import numpy as np
    from websockets.exceptions import ConnectionClosedOK
    from websockets.sync.client import connect

    from edgemm.export.evaluation.clips import dev_clips
    from edgemm.runtime.speech.audio import load_audio

    clips = dev_clips()
    if not clips:
        pytest.skip("no dev clips: install Debian pocketsphinx-testdata (make setup does)")
    pcm = (load_audio(clips[0].path) * 32767).astype("<i2")
    with ServerProcess("--idle-timeout", "2", "--no-vision", "--no-tts") as process:
        url = process.url.replace("http", "ws", 1) + "/v1/audio/live"
        with connect(url, open_timeout=30) as socket:
            socket.send(pcm[: pcm.size // 2].tobytes())  # half the clip, then nothing
            started = time.monotonic()
            replies = []
            while not replies or replies[-1]["type"] != "error":
                replies.append(json.loads(socket.recv(timeout=60)))
            assert replies[-1]["message"] == "no audio for 2 s: the live transcription is closed", replies
            assert time.monotonic() - started < 30
            with pytest.raises(ConnectionClosedOK):  # closed cleanly (1000) by the server
                socket.recv(timeout=30)
        with connect(url, open_timeout=30) as again:
            again.send(np.concatenate([pcm, np.zeros(16000, "<i2")]).tobytes())
            again.send(json.dumps({"type": "end"}))
            while (reply := json.loads(again.recv(timeout=120)))["type"] != "final":
                pass
        assert reply["text"].strip()
        assert health(process.url)["workers"]["speech"]["pending"] == 0
        if (default_bundle("wake") / "manifest.json").exists():  # the wake-word socket: the same idle limit
            with connect(process.url.replace("http", "ws", 1) + "/v1/assistant/wake", open_timeout=30) as wake:
                wake.send(pcm[:16000].tobytes())
                reply = json.loads(wake.recv(timeout=30))
                assert reply["message"] == "no audio for 2 s: the wake-word detection is closed", reply
                with pytest.raises(ConnectionClosedOK):
                    wake.recv(timeout=30)
