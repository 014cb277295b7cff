"""Multilingual Whisper base (packaged): language detection, forced language, and the translate task."""

import warnings

import pytest

from edgemm.export.evaluation.wer import wer
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


def test_served_translation_and_forced_language(base, clips):
    """The server's /v1/audio/translations on a multilingual bundle (an English-only one answers 400)."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("starlette")
    from edgemm.bench.serve import ServerProcess

    args = ["--speech-model", str(base.bundle.path), "--no-vision", "--no-tts"]
    with ServerProcess(*args) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        with warnings.catch_warnings():  # the client marks its translations call deprecated; the route is served
            warnings.simplefilter("ignore", DeprecationWarning)
            translated = client.audio.translations.create(model="whisper-1", file=clips[-1].path.open("rb"))
        assert wer([clips[-1].text], [translated.text]) <= 0.3
        detected = client.audio.transcriptions.create(
            model="whisper-1", file=clips[0].path.open("rb"), response_format="verbose_json"
        )
        assert detected.language == "en" and wer([clips[0].text], [detected.text]) <= 0.15
        with pytest.raises(openai.BadRequestError, match="unknown language 'xx'"):
            client.audio.transcriptions.create(model="whisper-1", file=clips[0].path.open("rb"), language="xx")
