"""Runs the bad-input corpus (tests/hostile/bad_inputs.py): every case gives exactly its expected outcome -- one error line
and exit status 2, or the correct answer -- within its time limit, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from edgemm.export.evaluation.wer import wer
from edgemm.runtime import errors, limits, tts
from edgemm.runtime.bundle import default_bundle
from edgemm.runtime.speech import audio
from edgemm.runtime.vision import image
from tests.harness import EDGEMM
from tests.hostile.bad_inputs import API_CALLS, CASES, MAX_SPEECH_CHARS, MAX_WER, build_bundles, build_files, make_fifo

skdata = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.slow

EXCEPTIONS = {
    cls.__name__: cls
    for module in (errors, limits, audio, image)
    for cls in vars(module).values()
    if isinstance(cls, type) and issubclass(cls, Exception)
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, clips, tiny_llms):
    for kind in ("speech", "llm", "vision"):
        if not (default_bundle(kind) / "manifest.json").exists():
            pytest.skip(f"default {kind} bundle missing: run `make setup`")
    root = tmp_path_factory.mktemp("corpus")
    clip = clips[0]
    build_files(root / "files", clip.path, skdata.chelsea(), spoken=tts.available())
    build_bundles(tiny_llms["llama"][1]["fp32"], root / "bundles")
    return SimpleNamespace(d=root / "files", llm=root / "bundles", reference=clip.text)


@pytest.fixture(scope="module")
def models():
    from edgemm.runtime.llm import LanguageModel
    from edgemm.runtime.speech import Transcriber
    from edgemm.runtime.vision import ImageQuestion

    return SimpleNamespace(transcriber=Transcriber.load(), lm=LanguageModel.load(), images=ImageQuestion.load())


def _fill(text: str, corpus) -> str:
    return text.format(d=corpus.d, llm=corpus.llm, long_speech="Hi. " * (MAX_SPEECH_CHARS * 9 // 4))


def _skip_unless_possible(case):
    if "tts" in case.needs and not tts.available():
        pytest.skip("needs the tts extra and a Piper voice")
    if "fifo" in case.needs and sys.platform == "win32":
        pytest.skip("no FIFOs here")


def _check_success(case, output: str, corpus, log: str = "") -> None:
    if case.transcript:
        assert wer([corpus.reference], [output.strip()]) <= MAX_WER, output
    for phrase in case.says:
        assert phrase in (output + log).lower(), output + log


def _fifo_writer(path, data: bytes) -> threading.Thread:
    def write():
        with open(path, "wb") as f:
            f.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("case", [c for c in CASES if c.argv], ids=lambda c: c.name)
def test_cli_case(case, corpus):
    _skip_unless_possible(case)
    argv = [_fill(a, corpus) for a in case.argv]
    if "fifo" in case.needs:
        _fifo_writer(make_fifo(corpus.d), (corpus.d / "clip.wav").read_bytes())
    stdin, data = subprocess.DEVNULL, None
    if case.stdin and case.stdin.startswith("/dev/"):
        stdin = open(case.stdin, "rb")  # noqa: SIM115 - closed below
    elif case.stdin:
        stdin, data = None, (corpus.d / case.stdin).read_bytes()
    try:  # a pipe, as a shell pipes into the command (the harness gives files): run here, not by tests.harness
        out = subprocess.run([*EDGEMM, *argv], stdin=stdin, input=data, capture_output=True, timeout=case.timeout)
    finally:
        if hasattr(stdin, "close"):
            stdin.close()
    stdout, stderr = out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")
    assert "Traceback" not in stderr, stderr
    if case.error is not None:  # one error line, the last (after at most a banner such as chat's)
        lines = stderr.strip().splitlines()
        assert out.returncode == 2 and sum(": error: " in line for line in lines) == 1, stderr
        prefix, _, message = lines[-1].partition(": error: ")
        assert re.fullmatch(r"edgemm( \w+)?", prefix), stderr
        message = re.sub(r" \(see edgemm( \w+)? --help\)$", "", message)
        assert message == _fill(case.error, corpus)
    else:
        assert out.returncode == 0, stderr
        _check_success(case, stdout, corpus, log=stderr)


@pytest.mark.parametrize("case", [c for c in CASES if c.call], ids=lambda c: c.name)
def test_api_case(case, corpus, models):
    call = API_CALLS[case.call]
    if case.error is not None:
        with pytest.raises(EXCEPTIONS[case.raises]) as info:
            call(models, corpus.d)
        assert str(info.value) == _fill(case.error, corpus)
    else:
        result = call(models, corpus.d)
        _check_success(case, result if isinstance(result, str) else str(result), corpus)


def test_every_api_case_has_a_call():
    assert {c.call for c in CASES if c.call} == set(API_CALLS)
