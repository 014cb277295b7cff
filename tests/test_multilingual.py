"""Multilingual Whisper base (packaged): language detection, forced language, and the translate task."""

import pytest

from edgemm.bench.wer import wer
from edgemm.runtime.errors import OptionsError
from edgemm.runtime.speech.decoding import DecodingOptions
from edgemm.runtime.speech.transcribe import TranscribeOptions, Transcriber

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    pytest.importorskip("torch")
    from edgemm.export.speech import export_speech

    out = tmp_path_factory.mktemp("base") / "whisper-base-int8"
    export_speech("packaged:whisper-base", "int8", out, measure=False)
    return Transcriber.load(out)


def test_detects_english_and_transcribes(base, clips):
    librivox = clips[:5]
    results = [base.transcribe(c.path) for c in librivox]
    assert {r.language for r in results} == {"en"}
    assert wer([c.text for c in librivox], [r.text for r in results]) <= 0.15


def test_language_probabilities(base, clips):
    from edgemm.runtime.speech.audio import load_audio

    cross = base._encode(load_audio(clips[0].path), 0)
    language, probs = base.decoder.detect_language(cross)
    assert language == "en" and probs["en"] > 0.5 and len(probs) == 99


def test_translate_task_gives_english(base, clips):
    options = TranscribeOptions(DecodingOptions(task="translate", language="en"))
    result = base.transcribe(clips[-1].path, options=options)
    assert result.language == "en" and wer([clips[-1].text], [result.text]) <= 0.3


def test_unknown_language_is_refused(base, clips):
    with pytest.raises(OptionsError, match="unknown language 'xx'"):
        base.transcribe(clips[0].path, options=TranscribeOptions(DecodingOptions(language="xx")))
