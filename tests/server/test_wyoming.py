"""`edgemm wyoming` as a live process, driven with the `wyoming` package's own client sending what Home Assistant
sends: describe, real clips transcribed in every PCM format, streamed transcripts, speech that transcribes back,
the assistant's answer, and bad input (error events or clean closes, the server serving on)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from edgemm.bench.wyoming import (
    WyomingProcess,
    audio_events,
    exchange,
    handle,
    pcm,
    speech_of,
    synthesize,
    transcribe,
)
from edgemm.export.evaluation.wer import normalize, wer
from edgemm.runtime.bundle import default_bundle
from edgemm.runtime.speech.audio import load_audio

wyoming = pytest.importorskip("wyoming")
pytestmark = pytest.mark.slow

from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.info import Describe  # noqa: E402
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop  # noqa: E402
from wyoming.wake import Detect  # noqa: E402

MAX_WER = 0.11  # as the speech tests (tests/runtime/test_transcribe_real.py): tiny.en int8 on the 11 real clips
SPOKEN_WER = 0.2  # a synthesized sentence heard back
# (rate, width, channels) the clips are sent in, in turn: every width, rates up and down, stereo and more.
FORMATS = [(16000, 2, 1), (44100, 4, 2), (8000, 2, 1), (48000, 2, 6), (22050, 1, 1), (96000, 4, 1)]


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture(scope="module")
def server():
    for kind in ("llm", "speech", "voice", "wake"):
        if not (default_bundle(kind) / "manifest.json").exists():
            pytest.skip(f"default {kind} bundle missing: run `make setup`")
    with WyomingProcess() as process:
        yield process


def _resampled(samples: np.ndarray, rate: int) -> np.ndarray:
    import soxr

    return samples if rate == 16000 else soxr.resample(samples, 16000, rate)


def _serving(server) -> None:
    reply = run(exchange(server.port, [Describe().event()], ("info",)))
    assert reply.types == ["info"], reply.types


def test_describe_lists_what_is_loaded(server):
    from edgemm.models import presets

    info = run(exchange(server.port, [Describe().event()], ("info",))).events[0].data
    assert info["asr"][0]["models"][0]["name"] == presets()["speech"]["default"] == "whisper-tiny.en-student-int8"
    assert info["asr"][0]["models"][0]["languages"] == ["en"]
    assert info["asr"][0]["supports_transcript_streaming"] is True
    assert info["tts"][0]["voices"][0]["name"] == "piper-joe-int8"
    assert info["tts"][0]["supports_synthesize_streaming"] is True
    assert info["handle"][0]["models"][0]["languages"] == ["en"]
    assert [m["name"] for m in info["wake"][0]["models"]] == [
        "ok_nabu",
        "hey_jarvis",
        "alexa",
        "hey_mycroft",
        "hey_rhasspy",
    ]


def test_real_clips_transcribed_in_every_format(server, clips):
    hyps = []
    for i, clip in enumerate(clips):
        rate, width, channels = FORMATS[i % len(FORMATS)]
        samples = _resampled(load_audio(clip.path), rate)
        text, reply = run(transcribe(server.port, samples, rate, width=width, channels=channels))
        assert reply.types[-2:] == ["transcript", "transcript-stop"], reply.types
        hyps.append(text)
    score = wer([c.text for c in clips], hyps)
    print(f"WER {score:.4f} on {len(clips)} clips over Wyoming")
    assert score <= MAX_WER


def test_transcript_streamed_while_spoken(server, clips):
    """Audio at the pace it is spoken: transcript-chunks while it arrives, which add up to the transcript."""
    clip = max(clips, key=lambda c: len(c.text))
    events = audio_events(load_audio(clip.path))
    reply = run(exchange(server.port, events, ("transcript-stop",), pace_s=1024 / 16000))
    kinds = reply.types
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"], kinds
    chunks = [e.data["text"] for e in reply.of("transcript-chunk")]
    transcript = reply.of("transcript")[0].data["text"]
    assert len(chunks) >= 2, kinds  # words before the audio ended, then the rest
    assert normalize("".join(chunks)) == normalize(transcript)  # the same words (a partial may differ in case)
    assert wer([clip.text], [transcript]) <= 0.3


def test_no_streaming_sends_the_transcript_alone(server, clips):
    with WyomingProcess("--no-streaming", "--no-tts") as plain:
        text, reply = run(transcribe(plain.port, load_audio(clips[1].path)))
        info = run(exchange(plain.port, [Describe().event()], ("info",))).events[0].data
    assert reply.types == ["transcript"] and text
    assert info["asr"][0]["supports_transcript_streaming"] is False and not info["tts"]


def test_sentence_synthesized_transcribes_back(server):
    sentence = "The weather will be sunny tomorrow, with a light breeze from the west."
    samples, rate, reply = run(synthesize(server.port, sentence))
    assert reply.types[0] == "audio-start" and reply.types[-1] == "audio-stop", reply.types
    assert 2.0 < len(samples) / rate < 10.0
    text, _ = run(transcribe(server.port, load_audio(samples, rate)))
    assert wer([sentence], [text]) <= SPOKEN_WER, text


def test_streamed_synthesis_speaks_each_sentence(server, teacher_transcriber):
    pieces = ["Good morning. It is", " seven o'clock.", " Time to get up!"]
    events = [SynthesizeStart().event(), *[SynthesizeChunk(text=p).event() for p in pieces]]
    events += [Synthesize(text="".join(pieces)).event(), SynthesizeStop().event()]  # the compatibility synthesize
    reply = run(exchange(server.port, events, ("synthesize-stopped",)))
    assert reply.types.count("audio-start") == 3 and reply.types.count("audio-stop") == 3, reply.types
    assert reply.types[-1] == "synthesize-stopped"
    samples, rate = speech_of(reply)
    text = teacher_transcriber.transcribe(samples, rate).text  # the listener of the voice tests (tests/conftest.py)
    assert wer(["Good morning. It is seven o'clock. Time to get up!"], [text]) <= SPOKEN_WER, text


def test_handle_answers_with_the_assistant(server):
    answer, _ = run(handle(server.port, "What is the capital of France?"))
    assert "Paris" in answer
    answer, _ = run(handle(server.port, "What is 12 times 12?"))
    assert "144" in answer


def _error(reply) -> dict:
    errors = reply.of("error")
    assert errors, f"no error event: {reply.types}"
    assert len(errors[0].data["text"].splitlines()) == 1
    return errors[0].data


@pytest.mark.parametrize(
    "fmt, words",
    [
        (dict(rate=1, width=2, channels=1), "rate must be a sample rate"),
        (dict(rate=16000, width=3, channels=1), "width must be 1, 2 or 4"),
        (dict(rate=16000, width=2, channels=0), "channel count"),
        (dict(rate="fast", width=2, channels=1), "rate must be"),
    ],
)
def test_bad_format_is_an_error_event(server, fmt, words):
    chunk = AudioChunk(audio=b"\0" * 1200, **fmt).event()
    reply = run(exchange(server.port, [AudioStart(**fmt).event(), chunk, AudioStop().event()], ()))
    error = _error(reply)
    assert words in error["text"] and error["code"] == "bad_audio", error
    assert reply.types == ["error"]  # then a clean close, nothing else
    _serving(server)


def test_chunk_of_partial_frames_is_an_error_event(server):
    fmt = dict(rate=16000, width=2, channels=2)
    events = [AudioStart(**fmt).event(), AudioChunk(audio=b"\0" * 1001, **fmt).event(), AudioStop().event()]
    assert "not whole frames" in _error(run(exchange(server.port, events, ())))["text"]
    _serving(server)


async def _raw(port: int, data: bytes, read: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if not read:
        writer.close()
        return b""
    out = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    return out


def _header(kind: str, data: dict | None = None, payload_length: int | None = None) -> bytes:
    header = {"type": kind, "data": data or {}}
    if payload_length is not None:
        header["payload_length"] = payload_length
    return json.dumps(header).encode() + b"\n"


def test_payload_shorter_than_announced(server):
    """A chunk announcing 2048 bytes that sends 100 and leaves: a clean close; one that announces 64 MB: refused
    before it is read."""
    fmt = {"rate": 16000, "width": 2, "channels": 1}
    run(_raw(server.port, _header("audio-start", fmt) + _header("audio-chunk", fmt, 2048) + b"\0" * 100, read=False))
    out = run(_raw(server.port, _header("audio-chunk", fmt, 64 << 20) + b"\0" * 100))
    assert b'"type": "error"' in out and b"payload_length" in out, out[:300]
    out = run(_raw(server.port, b"not json\n"))
    assert b'"type": "error"' in out and b"not JSON" in out, out[:300]
    _serving(server)


def test_100_mb_of_audio_is_refused_with_bounded_memory(server):
    """100 MB of audio in one utterance (52 minutes): an error once it passes 30 s, the rest read and dropped."""
    before = server.rss_mb()
    fmt = dict(rate=16000, width=2, channels=1)
    chunk = AudioChunk(audio=pcm(np.full(1 << 19, 0.1, np.float32)), **fmt).event()  # 1 MB
    reply = run(exchange(server.port, [AudioStart(**fmt).event(), *[chunk] * 100, AudioStop().event()], ()))
    error = _error(reply)
    assert "over 30 s" in error["text"] and error["code"] == "bad_audio", error
    assert server.rss_mb() - before < 150
    _serving(server)


def test_client_leaving_mid_stream(server, clips):
    """A client that sends half an utterance and leaves, one that leaves while its audio is transcribed, and one
    that leaves while the assistant answers it."""
    from wyoming.asr import Transcript

    events = audio_events(load_audio(clips[0].path))
    run(exchange_and_leave(server.port, events[: len(events) // 2]))
    run(exchange_and_leave(server.port, events))
    run(exchange_and_leave(server.port, [Transcript(text="Tell me a long story about the sea.").event()]))
    text, _ = run(transcribe(server.port, load_audio(clips[1].path)))
    assert text
    answer, _ = run(handle(server.port, "What is the capital of France?"))
    assert "Paris" in answer


async def exchange_and_leave(port: int, events: list) -> None:
    from wyoming.client import AsyncTcpClient

    async with AsyncTcpClient("127.0.0.1", port) as client:
        for event in events:
            await client.write_event(event)


def test_32_clients_at_once(server, clips):
    samples = [load_audio(clips[i % len(clips)].path) for i in range(32)]

    async def all_at_once():
        return await asyncio.gather(*(transcribe(server.port, s) for s in samples))

    replies = run(all_at_once())
    assert all(reply.types[-2:] == ["transcript", "transcript-stop"] for _, reply in replies)  # none waits over 32
    refs = [clips[i % len(clips)].text for i in range(32)]
    assert wer(refs, [text for text, _ in replies]) <= MAX_WER
    _serving(server)


def test_connections_over_the_cap_are_told_busy(clips):
    """With --max-clients 2, a third connection gets a busy error event and is closed; the two keep working, and
    once one leaves a new one is served."""
    from wyoming.client import AsyncTcpClient

    async def scenario(port):
        async with AsyncTcpClient("127.0.0.1", port) as one, AsyncTcpClient("127.0.0.1", port) as two:
            for client in (one, two):
                await client.write_event(Describe().event())
                assert (await asyncio.wait_for(client.read_event(), 30)).type == "info"
            third = await exchange(port, [Describe().event()], ("info",))
            assert third.types == ["error"] and third.events[0].data["code"] == "busy", third.types
            assert "2 connections at once" in third.events[0].data["text"]
            await two.write_event(Describe().event())
            assert (await asyncio.wait_for(two.read_event(), 30)).type == "info"
        await asyncio.sleep(0.5)  # both closed
        return await exchange(port, [Describe().event()], ("info",))

    with WyomingProcess("--max-clients", "2", "--no-tts", "--no-wake") as capped:
        assert run(scenario(capped.port)).types == ["info"]


def test_unknown_language_is_refused(server, clips):
    events = audio_events(load_audio(clips[1].path), language="fr")
    reply = run(exchange(server.port, events, ()))
    assert "knows en, not 'fr'" in _error(reply)["text"] and reply.types == ["error"]
    text, _ = run(transcribe(server.port, load_audio(clips[1].path), language="en-US"))
    assert text


def test_unknown_voice_and_empty_text(server):
    from wyoming.tts import SynthesizeVoice

    reply = run(exchange(server.port, [Synthesize(text="Hi.", voice=SynthesizeVoice(name="nope")).event()], ()))
    assert "one voice" in _error(reply)["text"]
    reply = run(exchange(server.port, [Synthesize(text="...").event()], ()))
    assert "nothing to say" in _error(reply)["text"]
    _serving(server)


def _wake_events(samples: np.ndarray, names=None) -> list:
    """What a satellite sends to have ``samples`` (16 kHz) listened to: ``detect``, then the audio."""
    return [Detect(names=names).event(), *audio_events(samples)[1:]]


def test_wake_word_detected_in_speech_that_holds_it_and_not_in_speech_without(server, clips):
    """``detect`` then audio: "Hey Jarvis, what time is it?" gives one ``detection`` of hey_jarvis at the phrase;
    a real recording without a wake word gives ``not-detected``; a word the server does not have is an error."""
    from edgemm.runtime.tts import Synthesizer

    speech = Synthesizer(varied=False).synthesize("Hey Jarvis. What time is it?")
    said = np.concatenate([np.zeros(16000, np.float32), load_audio(speech.samples, speech.sample_rate)])
    reply = run(exchange(server.port, _wake_events(said, ["hey_jarvis"]), ("detection", "not-detected")))
    assert reply.types[-1] == "detection" and reply.events[-1].data["name"] == "hey_jarvis", reply.types
    assert 1000 <= reply.events[-1].data["timestamp"] <= 1000 + 1000 * speech.seconds
    plain = load_audio(clips[0].path)
    reply = run(exchange(server.port, _wake_events(plain), ("detection", "not-detected")))
    assert reply.types == ["not-detected"], reply.types
    reply = run(exchange(server.port, _wake_events(plain, ["hey_siri"]), ("detection", "not-detected")))
    assert reply.types == ["error"] and "no wake word 'hey_siri'" in reply.events[0].data["text"], reply.events
    _serving(server)
