"""Hostile speech input: abandoned transcriptions of long audio, prompts that spell control tokens, and a damaged MP3
whose decoder complains about every frame. Real clips and the default speech bundle (tests/conftest.py)."""

from __future__ import annotations

import difflib
import io
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from edgemm.runtime import cancel
from edgemm.runtime.speech.audio import load_audio
from edgemm.runtime.speech.transcribe import TranscribeOptions
from tests.harness import bounded, edgemm

CANCEL_BOUND_S = 2.0  # a cancelled transcription of long audio stops within this
LONG_AUDIO_S = 30 * 60
MAX_STDERR_LINES = 20
# MPEG-2 Layer III (what libsndfile writes at 16 kHz): bitrates in kbit/s by header index; a frame is
# 72 * bitrate / sample rate bytes, plus one when padded.
MPEG2_KBPS = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)


@pytest.fixture(scope="module")
def speech(clips) -> np.ndarray:
    """All the real clips, 16 kHz, one after the other (about 50 s)."""
    return np.concatenate([load_audio(c.path) for c in clips])


@pytest.fixture(scope="module")
def long_speech(speech) -> np.ndarray:
    """Half an hour of real speech: the clips over and over."""
    return np.resize(speech, LONG_AUDIO_S * 16000)


def _cancel_after(delay: float, job) -> float:
    """Run ``job()`` in a thread inside a cancel scope, cancel it after ``delay`` seconds, and return how long it
    took to stop; fail unless it stopped with Cancelled within CANCEL_BOUND_S."""
    event, outcome = threading.Event(), {}

    def run():
        with cancel.scope(event):
            try:
                job()
                outcome["ended"] = "finished"
            except cancel.Cancelled:
                outcome["ended"] = "cancelled"
            except BaseException as e:  # noqa: BLE001 -- reported by the test
                outcome["ended"] = repr(e)
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(delay)
    assert thread.is_alive(), f"the job ended before it was cancelled ({outcome}): give it longer audio"
    event.set()
    cancelled_at = time.monotonic()
    thread.join(CANCEL_BOUND_S)
    assert not thread.is_alive(), f"still transcribing {CANCEL_BOUND_S} s after the job was cancelled"
    assert outcome["ended"] == "cancelled", outcome
    return outcome["at"] - cancelled_at


@pytest.mark.parametrize("vad", [True, False], ids=["in-vad", "in-windows"])
def test_cancelled_transcription_of_long_audio_stops(transcriber, long_speech, vad):
    """Cancelled a second in (in the VAD pass over half an hour, or in its first windows without VAD), the
    transcription raises Cancelled within the bound instead of running for minutes."""
    options = TranscribeOptions(vad=vad)
    latency = _cancel_after(1.0, lambda: transcriber.transcribe(long_speech, options=options))
    print(f"stopped {latency:.3f} s after cancel")


def test_cancelled_decode_of_long_file_stops(transcriber, speech, tmp_path):
    """Cancelled while a long 48 kHz stereo file decodes: decoding (and resampling) stop between blocks."""
    path = tmp_path / "long.flac"
    left = np.resize(speech, 10 * 60 * 48000)
    sf.write(path, np.stack([left, left[::-1]], axis=1), 48000, subtype="PCM_16")
    latency = _cancel_after(0.5, lambda: transcriber.transcribe(path))
    print(f"stopped {latency:.3f} s after cancel")


def _words(text: str) -> list[str]:
    return "".join(c for c in text.lower() if c.isalnum() or c.isspace()).split()


@pytest.mark.parametrize("prompt", ["<|endoftext|>", "<|startoftranscript|><|notimestamps|>", "<|nocaptions|>"])
def test_prompt_spelling_control_tokens_is_plain_text(transcriber, clips, prompt):
    """A prompt that spells Whisper's control tokens is tokenized as text: none of its ids is a control token, the
    ordinary text before it keeps its ids, and the transcript stays the one without a prompt."""
    tokenizer, text = transcriber.tokenizer, " Mr. Dashwood, 1811."
    ids = tokenizer.encode(text + " " + prompt)
    assert max(ids) < tokenizer.special.eot, ids
    assert tokenizer.decode(ids) == text + " " + prompt
    ordinary = tokenizer._tok.encode(text, add_special_tokens=False).ids  # the bundle's tokenizer, unchanged
    assert ids[: len(ordinary)] == ordinary
    clip = clips[0].path
    plain = transcriber.transcribe(clip).text
    prompted = transcriber.transcribe(clip, options=TranscribeOptions(initial_prompt=prompt)).text
    assert difflib.SequenceMatcher(None, _words(plain), _words(prompted)).ratio() > 0.8, (plain, prompted)


def _damaged_mp3(samples: np.ndarray) -> bytes:
    """An MP3 of ``samples`` with one byte of every frame's side information changed (its headers intact, so the
    decoder resyncs and complains about each frame)."""
    buf = io.BytesIO()
    sf.write(buf, samples, 16000, format="MP3")
    data = np.frombuffer(buf.getvalue(), np.uint8).copy()
    starts, i = [], 0
    while i + 4 <= len(data) and data[i] == 0xFF and data[i + 1] >> 5 == 0b111:
        starts.append(i)
        i += 72 * MPEG2_KBPS[int(data[i + 2]) >> 4] * 1000 // 16000 + (int(data[i + 2]) >> 1 & 1)
    assert i == len(data) and len(starts) > 100, "libsndfile's MP3 is not the MPEG-2 frames this test expects"
    frames = np.array(starts[5:-5])
    data[frames + 6] ^= np.random.default_rng(0).integers(1, 256, len(frames), dtype=np.uint8)
    return data.tobytes()


@pytest.fixture(scope="module")
def bad_mp3(speech, tmp_path_factory):
    path = tmp_path_factory.mktemp("mp3") / "bad.mp3"
    path.write_bytes(_damaged_mp3(speech[: 15 * 16000]))
    return path


def test_damaged_mp3_does_not_flood_stderr(bad_mp3):
    """``edgemm transcribe bad.mp3`` transcribes what decodes, with a few of libmpg123's lines (it writes hundreds)."""
    ran = edgemm("transcribe", bad_mp3, timeout=150)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.strip()
    lines = ran.stderr.splitlines()
    assert len(lines) < MAX_STDERR_LINES, f"{len(lines)} lines on stderr: {lines[:10]}"
    assert any("more lines like these" in line for line in lines), lines


def test_other_stderr_output_gets_through_while_mp3_decodes(bad_mp3):
    """Two MP3 decodes at once while another thread writes to stderr (directly and by logging): every line of that
    thread comes out, the decoder's are cut short, and stderr works as before afterwards."""
    code = f"""
        import logging, os, sys, threading, time
        from edgemm.runtime.speech.audio import load_audio
        logging.basicConfig(format="%(message)s")
        stop = threading.Event()

        def chatter():
            i = 0
            while not stop.is_set() or i < 50:
                os.write(2, f"raw line {{i}}\\n".encode())
                logging.getLogger("x").warning("logged line %d", i)
                i += 1
                time.sleep(0.001)
            print(i, flush=True)

        talker = threading.Thread(target=chatter)
        talker.start()
        decoders = [threading.Thread(target=load_audio, args=({str(bad_mp3)!r},)) for _ in range(2)]
        for t in decoders:
            t.start()
        for t in decoders:
            t.join()
        stop.set()
        talker.join()
        print("after", file=sys.stderr)
    """
    ran = bounded([sys.executable, "-c", textwrap.dedent(code)], timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    written = int(ran.stdout.split()[0])
    lines = ran.stderr.splitlines()
    for kind in ("raw", "logged"):
        assert {f"{kind} line {i}" for i in range(written)} <= set(lines), f"{kind} lines lost"
    decoder = [line for line in lines if "mpg123" in line]
    assert len(decoder) < MAX_STDERR_LINES, f"{len(decoder)} decoder lines: {decoder[:10]}"
    assert lines[-1] == "after"
