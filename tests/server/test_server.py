"""`edgemm serve` as a live process, driven with the real `openai` client: chat (streamed and not), an image
question, transcription in every format, speech that transcribes back, bad input -> OpenAI's error JSON, load and
disconnecting clients."""

from __future__ import annotations

import base64
import http.client
import io
import json
import time
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf

from edgemm.bench.serve import MAX_QUEUE, ServerProcess, disconnect, health, load, multipart, request
from edgemm.export.evaluation.wer import wer
from edgemm.runtime.bundle import default_bundle
from edgemm.runtime.server.guard import MEDIA_TYPES
from tests.harness import edgemm

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.slow

MAX_WER = 0.11  # as the speech tests (tests/runtime/test_transcribe_real.py): tiny.en int8 on the 11 real clips


def _require_bundles():
    for kind in ("llm", "speech", "vision"):
        if not (default_bundle(kind) / "manifest.json").exists():
            pytest.skip(f"default {kind} bundle missing: run `make setup`")
    pytest.importorskip("starlette")


@pytest.fixture(scope="module")
def server():
    _require_bundles()
    with ServerProcess("--max-queue", str(MAX_QUEUE)) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=300)


def _jpeg_data_uri(array) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", quality=92)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def test_health_and_models(server, client):
    status = health(server.url)
    assert status["status"] == "ok" and set(status["workers"]) == {"llm", "speech", "voice"}
    ids = {m.id for m in client.models.list()}
    assert default_bundle("llm").name in ids and default_bundle("speech").name in ids


def test_chat_answers_paris(client):
    reply = client.chat.completions.create(
        model="anything", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=32
    )
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 5
    assert reply.model == default_bundle("llm").name


def test_the_server_and_the_cli_share_one_system_prompt(client):
    """One question, greedy: the server without a system message and `edgemm ask` get the same prompt and the same
    answer (the server kept the template's own: "the Yangtze River, the Yangtze River, and the Yangtze River"); a
    client's own system message replaces ours."""
    from edgemm.runtime.llm import Chat, LanguageModel

    question = [{"role": "user", "content": "Name three rivers."}]
    served = client.chat.completions.create(model="x", messages=question, max_tokens=32)
    out = edgemm("ask", "Name three rivers.", "--max-tokens", "32", "--json", timeout=300)
    assert out.returncode == 0, out.stderr
    asked = json.loads(out.stdout)
    assert served.usage.prompt_tokens == asked["prompt_tokens"]
    assert served.choices[0].message.content.strip() == asked["answer"]
    own = [{"role": "system", "content": "Be brief."}, *question]
    theirs = client.chat.completions.create(model="x", messages=own, max_tokens=1)
    chat = Chat(LanguageModel.load(default_bundle("llm"), context=256), system="Be brief.")
    assert theirs.usage.prompt_tokens == len(chat.encode(chat.messages([], "Name three rivers.")))


def test_chat_streams_paris_with_usage(client):
    stream = client.chat.completions.create(
        model="anything",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=32,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2  # really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_chat_limits_and_stops(client):
    reply = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Write a long story about a dog."}], max_tokens=5
    )
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    reply = client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_completion_tokens=32,
        stop=["Paris"],
    )
    assert "Paris" not in reply.choices[0].message.content and reply.choices[0].finish_reason == "stop"
    sampled = client.chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "Name a fruit."}],
        max_tokens=12,
        temperature=1.0,
        top_p=0.9,
        seed=7,
    )
    assert sampled.choices[0].message.content.strip() and sampled.usage.completion_tokens <= 12


def test_second_turn_reuses_the_first_turns_cache(client):
    messages = [{"role": "user", "content": "My name is Ada. What is the capital of France?"}]
    first = client.chat.completions.create(model="x", messages=messages, max_tokens=24)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And of Italy?"},
    ]
    second = client.chat.completions.create(model="x", messages=messages, max_tokens=24)
    cached = second.usage.prompt_tokens_details.cached_tokens
    # Everything the first turn ran (its prompt and most of its answer) is reused; only the new turn is run.
    assert cached >= first.usage.prompt_tokens, (cached, first.usage)
    # The same request again runs in the cache the second answer left: all but one prompt token reused, and the
    # same answer (its start: a prompt run in one batch or token by token rounds differently in int4, so a long
    # greedy answer may drift late, as in any engine that reuses caches).
    again = client.chat.completions.create(model="x", messages=messages, max_tokens=24)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    assert again.choices[0].message.content.split()[:6] == second.choices[0].message.content.split()[:6]


def test_image_question_with_a_data_uri_names_the_cat(client):
    import skimage.data

    reply = client.chat.completions.create(
        model="x",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What animal is in this photo?"},
                    {"type": "image_url", "image_url": {"url": _jpeg_data_uri(skimage.data.chelsea())}},
                ],
            }
        ],
        max_tokens=40,
    )
    assert "cat" in reply.choices[0].message.content.lower()


def test_transcription_of_real_clips(client, clips):
    texts = [client.audio.transcriptions.create(model="whisper-1", file=clip.path.open("rb")).text for clip in clips]
    score = wer([c.text for c in clips], texts)
    print(f"WER through the server: {score:.4f} on {len(clips)} clips")
    assert score <= MAX_WER


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json", "srt", "vtt"])
def test_transcription_formats(client, clips, fmt):
    clip = next(c for c in clips if c.path.name.endswith("0870.wav"))  # 7.1 s, one sentence
    result = client.audio.transcriptions.create(
        model="whisper-1", file=clip.path.open("rb"), response_format=fmt, language="en", temperature=0
    )
    if fmt == "json":
        text = result.text
    elif fmt == "verbose_json":
        text = result.text
        assert result.language == "en" and abs(result.duration - 7.1) < 0.05
        assert result.segments and 0 <= result.segments[0].start < result.segments[-1].end <= 7.1
        assert all(0.5 < s.compression_ratio < 2.4 for s in result.segments), result.segments
    else:
        assert isinstance(result, str)
        if fmt == "text":
            text = result
        else:
            lines = result.strip().splitlines()
            timing = next(line for line in lines if "-->" in line)
            assert (timing[8] == ",") == (fmt == "srt"), timing  # 00:00:00,000 vs 00:00:00.000
            assert lines[0] == ("1" if fmt == "srt" else "WEBVTT")
            text = " ".join(line for line in lines if line and "-->" not in line and line not in ("1", "WEBVTT"))
            text = " ".join(t for t in text.split() if not t.isdigit() or len(t) > 2)
    assert wer([clip.text], [text]) <= 0.1, text


def test_verbose_json_gives_each_segments_own_numbers():
    from edgemm.runtime.server.openai import transcription_body
    from edgemm.runtime.speech.transcribe import Segment, Transcription

    segment = Segment(0.0, 2.0, " Hello.", [50364, 2425, 50464], -0.2, 0.01, compression_ratio=0.83, temperature=0.2)
    body, _ = transcription_body(Transcription("Hello.", [segment], "en", 2.0), "verbose_json", "transcribe")
    expected = {"compression_ratio": 0.83, "temperature": 0.2, "avg_logprob": -0.2, "no_speech_prob": 0.01}
    assert {k: body["segments"][0][k] for k in expected} == expected


def test_transcription_prompt_is_used(client, clips):
    """A prompt in words makes the model write the card's number in words, as Whisper's initial prompt does."""
    clip = next(c for c in clips if c.path.name == "001.wav")  # "ten of clubs"
    plain = client.audio.transcriptions.create(model="whisper-1", file=clip.path.open("rb")).text
    prompted = client.audio.transcriptions.create(
        model="whisper-1", file=clip.path.open("rb"), prompt="ten of clubs, four of hearts, seven of spades"
    ).text
    assert plain.split()[0] == "10" and prompted.lower().split()[0] == "ten", (plain, prompted)


def test_streamed_transcription_sends_deltas_then_the_same_text(client, clips):
    """One clip, then every clip in one file (several 30 s windows): a delta per segment as each window is decoded,
    then the done event with the whole text, the same as without streaming."""
    from edgemm.runtime.speech.audio import load_audio

    gap = np.zeros(8000, np.float32)
    joined = _wav_bytes(np.concatenate([x for c in clips for x in (load_audio(c.path), gap)]))
    for name, data in (("one.wav", clips[0].path.read_bytes()), ("all.wav", joined)):
        plain = client.audio.transcriptions.create(model="whisper-1", file=(name, data)).text
        events = list(client.audio.transcriptions.create(model="whisper-1", file=(name, data), stream=True))
        deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
        assert [e.type for e in events[len(deltas) :]] == ["transcript.text.done"], events
        assert deltas and "".join(deltas).strip() == events[-1].text == plain
    assert len(deltas) >= 3


def _socket(server, path: str, query: str = "", **kwargs):
    from websockets.sync.client import connect

    return connect(server.url.replace("http", "ws", 1) + path + query, open_timeout=30, **kwargs)


def _live(server, query: str = "", **kwargs):
    return _socket(server, "/v1/audio/live", query, **kwargs)


def _refused(socket, message, error: str) -> None:
    """``message`` (if any) sent on ``socket`` gets an error naming ``error``, then the socket closes."""
    from websockets.exceptions import ConnectionClosed

    if message is not None:
        socket.send(message)
    reply = json.loads(socket.recv(timeout=30))
    assert reply["type"] == "error" and error in reply["message"], reply
    with pytest.raises(ConnectionClosed):
        socket.recv(timeout=30)


def test_live_transcription_over_a_websocket(server, clips):
    """48 kHz microphone audio sent as a microphone gives it: partial transcripts, then the final one after the end,
    as good as the batch transcription; a second utterance on the same connection (sent at once) starts afresh."""
    import time

    import soxr

    from edgemm.runtime.speech.audio import load_audio

    clip = next(c for c in clips if c.path.name == "beckett.wav")
    pcm = (soxr.resample(load_audio(clip.path), 16000, 48000) * 32767).astype("<i2")
    with _live(server, "?rate=48000") as socket:
        for live in (True, False):
            start_time = time.monotonic()
            for start in range(0, pcm.size, 4096):
                if live:
                    time.sleep(max(0.0, start_time + start / 48000 - time.monotonic()))
                socket.send(pcm[start : start + 4096].tobytes())
            socket.send(json.dumps({"type": "end"}))
            replies = []
            while not replies or replies[-1]["type"] != "final":
                replies.append(json.loads(socket.recv(timeout=120)))
            partials = [r for r in replies if r["type"] == "partial"]
            assert all(r["text"].startswith(r["stable"]) for r in partials), replies
            assert len(partials) >= (3 if live else 1), replies
            assert wer([clip.text], [replies[-1]["text"]]) <= 0.1, replies[-1]


@pytest.mark.parametrize(
    "query, message, error",
    [
        ("?rate=5", None, "rate must be a sample rate"),
        ("", "hello", "send audio as binary 16-bit PCM"),
        ("", b"\x00\x01\x02", "16-bit samples"),
    ],
)
def test_live_transcription_refuses_what_it_cannot_use(server, query, message, error):
    with _live(server, query) as socket:
        _refused(socket, message, error)
    assert health(server.url)["status"] == "ok"


def test_live_transcription_of_an_utterance_without_end_starts_over(server, clips):
    """Past 30 s without an end (a stuck endpointer, a stream of noise) the utterance is dropped with an error and
    the connection goes on: memory stays bounded however long a client streams."""
    noise = (np.random.default_rng(0).standard_normal(31 * 16000) * 300).astype("<i2")
    with _live(server) as socket:
        for start in range(0, noise.size, 16000):
            socket.send(noise[start : start + 16000].tobytes())
        replies = [json.loads(socket.recv(timeout=60))]
        while replies[-1]["type"] != "error":
            replies.append(json.loads(socket.recv(timeout=60)))
        assert "over 30 s without a pause" in replies[-1]["message"], replies
        socket.send(json.dumps({"type": "end"}))
        while (reply := json.loads(socket.recv(timeout=60)))["type"] != "final":
            pass
        assert reply == {"type": "final", "text": ""}  # nothing after the dropped utterance


def _wake_socket(server, query: str = ""):
    return _socket(server, "/v1/assistant/wake", query)


def test_wake_words_over_a_websocket(server, wake_bundle):
    """GET lists the server's wake words; the socket, fed 44.1 kHz audio as a page sends it, reports "Hey Jarvis"
    where it is said and nothing in the speech around it."""
    import soxr

    from edgemm.runtime import tts

    words = json.loads(request(server.url, "/v1/assistant/wake")[2])["words"]
    assert {"name": "hey_jarvis", "phrase": "hey jarvis"} in words and len(words) == 5
    voice = tts.Synthesizer(varied=False)
    said = [voice.synthesize(t) for t in ("What is two plus two?", "Hey Jarvis.", "What time is it?")]
    audio = [soxr.resample(s.samples, s.sample_rate, 44100) for s in said]
    gap = np.zeros(44100, np.float32)
    pcm = (np.concatenate([gap, audio[0], gap, audio[1], gap, audio[2], gap]) * 32767).astype("<i2")
    phrase_end = (len(gap) * 2 + len(audio[0]) + len(audio[1])) / 44100
    with _wake_socket(server, "?rate=44100&words=hey_jarvis") as socket:
        for start in range(0, pcm.size, 2048):
            socket.send(pcm[start : start + 2048].tobytes())
        reply = json.loads(socket.recv(timeout=30))
        assert reply["type"] == "detection" and reply["name"] == "hey_jarvis", reply
        assert phrase_end - 1.0 < reply["seconds"] < phrase_end + 0.5, (reply, phrase_end)
        with pytest.raises(TimeoutError):  # only one
            socket.recv(timeout=3)


@pytest.mark.parametrize(
    "query, message, error",
    [
        ("?words=hey_computer", None, "no wake word 'hey_computer'"),
        ("?rate=1", None, "rate must be a sample rate"),
        ("", "hello", "send audio as binary 16-bit PCM"),
        ("", b"\x00\x01\x02", "send audio as binary 16-bit PCM"),
        ("", b"\x00" * ((1 << 20) + 2), "of at most 1048576 bytes"),
    ],
)
def test_wake_socket_refuses_what_it_cannot_use(server, wake_bundle, query, message, error):
    with _wake_socket(server, query) as socket:
        _refused(socket, message, error)
    assert health(server.url)["status"] == "ok"


def test_wake_sockets_over_the_cap_are_told_busy(server, wake_bundle):
    """MAX_LISTENERS sockets listen at once; one more gets an error and is closed, and once one leaves (without a
    close frame) a new one is served."""
    import contextlib
    import socket as sockets_module

    from edgemm.runtime.server.wake import MAX_LISTENERS

    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(_wake_socket(server)) for _ in range(MAX_LISTENERS)]
        for socket in sockets:  # each has its detector: audio in, nothing heard
            socket.send(np.zeros(1280, "<i2").tobytes())
        with pytest.raises(TimeoutError):
            sockets[-1].recv(timeout=2)
        with _wake_socket(server) as extra:
            _refused(extra, None, f"on {MAX_LISTENERS} sockets at once")
        sockets[0].socket.shutdown(sockets_module.SHUT_RDWR)  # gone without a close frame: its place is freed too
        time.sleep(0.5)
        with _wake_socket(server) as again:
            again.send(np.zeros(1280, "<i2").tobytes())
            with pytest.raises(TimeoutError):  # served: no error
                again.recv(timeout=2)


def test_live_transcription_client_that_leaves_mid_word(server, clips):
    """A client that drops the connection in the middle of an utterance (no close frame) leaves nothing behind:
    the speech worker is free again and the next client is served."""
    import contextlib
    import socket as sockets

    from websockets.exceptions import ConnectionClosed

    from edgemm.runtime.speech.audio import load_audio

    clip = next(c for c in clips if c.path.name == "beckett.wav")
    pcm = (load_audio(clip.path) * 32767).astype("<i2")
    with contextlib.suppress(ConnectionClosed, OSError), _live(server, close_timeout=1) as socket:
        for start in range(0, pcm.size // 2, 4096):
            socket.send(pcm[start : start + 4096].tobytes())
        socket.socket.shutdown(sockets.SHUT_RDWR)  # gone, mid-word, without a close frame
    with _live(server) as again:
        again.send(pcm.tobytes())
        again.send(json.dumps({"type": "end"}))
        while (reply := json.loads(again.recv(timeout=120)))["type"] != "final":
            pass
    assert wer([clip.text], [reply["text"]]) <= 0.1, reply
    assert health(server.url)["workers"]["speech"]["pending"] == 0


def test_live_transcription_refuses_other_sites_pages(server):
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus, match="403"):
        _live(server, origin="https://evil.example")
    with _live(server, origin=server.url) as socket:  # the page's own origin may
        socket.send(json.dumps({"type": "reset"}))


def test_speech_transcribes_back(client, server):
    sentence = "The quick brown fox jumps over the lazy dog."
    wav = client.audio.speech.create(model="tts-1", voice="alloy", input=sentence, response_format="wav").content
    samples, rate = sf.read(io.BytesIO(wav))
    assert rate == 22050 and 1.5 < len(samples) / rate < 6
    heard = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", wav)).text
    # The server's voice varies its timing and tone at random (as Piper does): now and then tiny.en mishears one
    # word ("quit" for "quick", about 1 in 12 runs), never more.
    assert wer([sentence], [heard]) <= 1 / 9, heard
    pcm = client.audio.speech.create(model="tts-1", voice="alloy", input=sentence, response_format="pcm").content
    # Raw 16-bit at 24 kHz: about the same duration (the voice varies its timing a little from call to call).
    assert abs(len(pcm) / 2 / 24000 - len(samples) / rate) < 0.15 * len(samples) / rate
    faster = client.audio.speech.create(model="tts-1", voice="alloy", input=sentence, speed=2.0).content
    assert len(faster) < 0.7 * len(wav)


def _error(status: int, body: bytes) -> dict:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "\n" not in error["message"] and "Traceback" not in error["message"]
    return error


def _chat(messages, **fields):
    return {"model": "x", "messages": messages, **fields}


USER = [{"role": "user", "content": "Hi"}]
# A PNG signature followed by garbage: valid base64, not a decodable image.
BROKEN_PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()
BAD_JSON = [
    # (name, path, body, status, param, code)
    ("not JSON", "/v1/chat/completions", b"{not json", 400, None, None),
    ("nested JSON", "/v1/chat/completions", b"[" * 100_000 + b"]" * 100_000, 400, None, None),
    ("not UTF-8", "/v1/chat/completions", b'{"messages": "\xff\xfe"}', 400, None, None),
    ("JSON list", "/v1/chat/completions", b"[1, 2]", 400, None, None),
    ("no messages", "/v1/chat/completions", {"model": "x"}, 400, "messages", None),
    ("empty messages", "/v1/chat/completions", _chat([]), 400, "messages", None),
    ("bad role", "/v1/chat/completions", _chat([{"role": "robot", "content": "hi"}]), 400, "messages[0].role", None),
    ("empty text", "/v1/chat/completions", _chat([{"role": "user", "content": " "}]), 400, "messages[0].content", None),
    ("temperature", "/v1/chat/completions", _chat(USER, temperature=5), 400, "temperature", None),
    ("max_tokens 0", "/v1/chat/completions", _chat(USER, max_tokens=0), 400, "max_tokens", None),
    ("max_tokens text", "/v1/chat/completions", _chat(USER, max_tokens="9"), 400, "max_tokens", None),
    ("n=2", "/v1/chat/completions", _chat(USER, n=2), 400, "n", None),
    ("stop list", "/v1/chat/completions", _chat(USER, stop=["a", "b", "c", "d", "e"]), 400, "stop", None),
    ("stream text", "/v1/chat/completions", _chat(USER, stream="yes"), 400, "stream", None),
    (
        "over the context",
        "/v1/chat/completions",
        _chat([{"role": "user", "content": "word " * 5000}]),
        400,
        "messages",
        "context_length_exceeded",
    ),
    (
        "http image",
        "/v1/chat/completions",
        _chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x.org/a.jpg"}}]}]),
        400,
        "messages[0].content[0].image_url",
        "image_url_not_supported",
    ),
    (
        "not base64",
        "/v1/chat/completions",
        _chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]),
        400,
        "messages[0].content[0].image_url",
        None,
    ),
    (
        "corrupt image",
        "/v1/chat/completions",
        _chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": BROKEN_PNG}}]}]),
        400,
        "messages",
        "invalid_image",
    ),
    ("speech no input", "/v1/audio/speech", {"model": "tts-1", "voice": "alloy"}, 400, "input", None),
    ("speech mp3", "/v1/audio/speech", {"input": "hi", "response_format": "mp3"}, 400, "response_format", None),
    ("speech speed", "/v1/audio/speech", {"input": "hi", "speed": 9}, 400, "speed", None),
    ("speech too long", "/v1/audio/speech", {"input": "a" * 5000}, 400, "input", None),
]


@pytest.mark.parametrize("name, path, body, status, param, code", BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_bad_json_requests(server, name, path, body, status, param, code):
    got, _, raw = request(server.url, path, body, {"Content-Type": "application/json"})
    error = _error(got, raw)
    assert got == status, error
    assert error["param"] == param and (code is None or error["code"] == code), error
    assert health(server.url)["status"] == "ok"


def _wav_bytes(samples, rate=16000) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


BAD_UPLOADS = [
    # (name, fields, files, status, param)
    ("no file", {"model": "whisper-1"}, {}, 400, "file"),
    ("empty file", {}, {"file": ("a.wav", b"")}, 400, "file"),
    ("corrupt audio", {}, {"file": ("a.wav", b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 10)}, 400, "file"),
    ("not audio", {}, {"file": ("a.wav", b"hello world, no audio here" * 100)}, 400, "file"),
    ("bad format", {"response_format": "docx"}, {"file": ("a.wav", b"x")}, 400, "response_format"),
    ("bad temperature", {"temperature": "hot"}, {"file": ("a.wav", b"x")}, 400, "temperature"),
    ("other language", {"language": "fr"}, {"file": ("a.wav", _wav_bytes(np.zeros(16000)))}, 400, None),
    ("bad stream flag", {"stream": "maybe"}, {"file": ("a.wav", b"x")}, 400, "stream"),
    ("stream as srt", {"stream": "true", "response_format": "srt"}, {"file": ("a.wav", b"x")}, 400, "stream"),
    ("stream of garbage", {"stream": "true"}, {"file": ("a.wav", b"hello world, no audio here" * 100)}, 400, "file"),
]


@pytest.mark.parametrize("name, fields, files, status, param", BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_uploads(server, name, fields, files, status, param):
    data, kind = multipart(fields, files)
    got, _, raw = request(server.url, "/v1/audio/transcriptions", data, {"Content-Type": kind})
    error = _error(got, raw)
    assert got == status and error["param"] == param, error
    assert health(server.url)["status"] == "ok"


def test_silence_transcribes_to_nothing_and_translation_needs_a_multilingual_model(server):
    data, kind = multipart({}, {"file": ("quiet.wav", _wav_bytes(np.zeros(32000)))})
    got, _, raw = request(server.url, "/v1/audio/transcriptions", data, {"Content-Type": kind})
    assert got == 200 and json.loads(raw) == {"text": ""}
    got, _, raw = request(server.url, "/v1/audio/translations", data, {"Content-Type": kind})
    assert got == 400 and "English-only" in _error(got, raw)["message"]


def _declared(server, path: str, length: int, chunks=()) -> tuple[int, bytes]:
    """Send headers declaring ``length`` bytes (or, with ``chunks``, a chunked body), then read the answer: the
    server must refuse an oversized body without waiting for all of it."""
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", path)
    conn.putheader("Content-Type", MEDIA_TYPES[path] + ("; boundary=x" if "multipart" in MEDIA_TYPES[path] else ""))
    conn.putheader("Transfer-Encoding" if chunks else "Content-Length", "chunked" if chunks else str(length))
    conn.endheaders()
    try:
        for chunk in chunks:
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    except OSError:  # the server answered and closed while we were still sending
        pass
    response = conn.getresponse()
    status, body = response.status, response.read()
    conn.close()
    return status, body


def test_sizes_routes_and_methods(server):
    got, raw = _declared(server, "/v1/audio/transcriptions", 27 << 20)  # over the 26 MB of a transcription
    assert got == 413 and _error(got, raw)["code"] == "request_too_large"
    got, raw = _declared(server, "/v1/audio/speech", 0, chunks=[b" " * 65536] * 20)  # 1.3 MB, no length given
    assert got == 413 and _error(got, raw)["code"] == "request_too_large"
    got, _, raw = request(server.url, "/v1/nothing")
    assert got == 404 and _error(got, raw)["type"] == "not_found_error"
    got, _, raw = request(server.url, "/v1/chat/completions")  # GET
    assert got == 405 and _error(got, raw)
    assert health(server.url)["status"] == "ok"


def test_load_is_answered_or_refused_and_memory_returns(server, clips):
    report = load(server, clips[0].path.read_bytes(), chats=64, transcriptions=16)
    print(json.dumps(report))
    for kind in ("chats", "transcriptions"):
        counts = report[kind]
        assert counts["other"] == [], report  # nothing failed, hung or was refused without Retry-After
        assert counts["answered"] >= 1 and counts["answered"] + counts["refused_429"] + counts["refused_503"] == (
            64 if kind == "chats" else 16
        )
    assert report["health_failures"] == 0 and report["health_max_s"] < 2.0, report
    assert report["rss_after_mb"] <= report["rss_idle_mb"] * 1.05 + 10, report


def test_disconnecting_streams_frees_the_worker(server):
    report = disconnect(server, clients=10, max_tokens=1000)
    print(json.dumps(report))
    assert report["jobs_finished"] == 10
    # Ten 1000-token stories would take minutes; cancelled at their first piece they take seconds.
    assert report["worker_free_after_s"] < 3.0 and report["all_clients_s"] < 60, report


def _events(raw: bytes) -> list[tuple[str, dict]]:
    """Server-sent events of a /v1/assistant answer: (name, data)."""
    out = []
    for block in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "data" in lines:
            out.append((lines.get("event", "message"), json.loads(lines["data"])))
    return out


def _turn(server, fields: dict, files: dict):
    data, kind = multipart({"session": "test-session-0001", **fields}, files)
    return request(server.url, "/v1/assistant", data, {"Content-Type": kind})


def test_web_assistant_turns(server):
    import skimage.data
    from PIL import Image

    from edgemm.runtime import tts

    status, headers, raw = _turn(server, {"text": "What is the capital of France?"}, {})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = _events(raw)
    names = [name for name, _ in events]
    assert "Paris" in "".join(d["text"] for n, d in events if n == "answer")
    assert names[-1] == "done" and "audio" in names and "first_audio" in events[-1][1]["latency"]
    wav = base64.b64decode(next(d["wav"] for n, d in events if n == "audio"))
    assert sf.info(io.BytesIO(wav)).duration > 0.3

    speech = tts.Synthesizer(varied=False).synthesize("What animal is in this picture?")
    photo = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(photo, "JPEG")
    status, _, raw = _turn(
        server,
        {},
        {"audio": ("q.wav", _wav_bytes(speech.samples, speech.sample_rate)), "image": ("f.jpg", photo.getvalue())},
    )
    events = _events(raw)
    assert status == 200 and events[0][0] == "transcript" and "animal" in events[0][1]["text"].lower()
    done = events[-1][1]
    assert events[-1][0] == "done" and done["looked"] and "cat" in done["answer"].lower(), events[-1]
    # Silence: no turn; unreadable audio and missing fields: 400 before any event.
    status, _, raw = _turn(server, {}, {"audio": ("q.wav", _wav_bytes(np.zeros(16000)))})
    assert status == 200 and [n for n, _ in _events(raw)] == ["nothing"]
    status, _, raw = _turn(server, {}, {"audio": ("q.wav", b"RIFF....WAVEjunk" * 50)})
    assert status == 400 and _error(status, raw)["code"] == "invalid_audio"
    status, _, raw = _turn(server, {}, {})
    assert status == 400 and _error(status, raw)["param"] == "text"
    data, kind = multipart({"text": "hi"}, {})
    status, _, raw = request(server.url, "/v1/assistant", data, {"Content-Type": kind})
    assert status == 400 and _error(status, raw)["param"] == "session"
    assert health(server.url)["workers"]["llm"]["pending"] == 0
