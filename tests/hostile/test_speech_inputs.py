"""Hostile text to speak: long text without punctuation (one giant sentence for Piper, whose time and memory grew
faster than its length), text with nothing to say, and the assistant's own streamed answers. The long cases run in a
process of their own, bounded in time and peak memory."""

from __future__ import annotations

import random
import sys
import textwrap
import threading

import numpy as np
import pytest

from edgemm.runtime import cancel, tts
from edgemm.runtime.limits import MAX_SPEECH_CHARS, InputError
from tests.harness import bounded, edgemm

SPEECH_ROUTE_CHARS = 4096  # the longest input /v1/audio/speech takes


def _words(chars: int, seed: int = 0) -> str:
    """``chars`` characters of random lowercase words, no punctuation."""
    rng = random.Random(seed)
    text = ""
    while len(text) < chars:
        text += "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) + " "
    return text[:chars].strip()


@pytest.fixture(scope="module")
def voice():
    if not tts.available():
        pytest.skip("no voice: the tts extra (piper-tts) and the piper-joe-int8 bundle are needed: run `make setup`")
    return tts.Synthesizer(varied=False)


@pytest.mark.parametrize("chars", [SPEECH_ROUTE_CHARS, MAX_SPEECH_CHARS])
def test_unpunctuated_speech_is_bounded(voice, chars):
    """At git HEAD on 2 cores: 4,096 characters took 258 s and 12.4 GB, 5,000 took 340 s and 18.3 GB. In pieces
    of MAX_PIECE_CHARS: about 50 s and 330 MB, growing with the length only."""
    code = f"""
        from edgemm.runtime import tts
        speech = tts.Synthesizer(varied=False).synthesize({_words(chars)!r})
        print(round(speech.seconds))
    """
    ran = bounded([sys.executable, "-c", textwrap.dedent(code)], timeout=170)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert int(ran.stdout) > chars / 20, ran.stdout  # all of it spoken: about 9 characters a second
    assert ran.peak_mb < 700, ran.peak_mb
    assert ran.seconds < 150, ran.seconds


def test_pieces_cut_at_sentence_ends_then_commas_then_spaces():
    assert tts.pieces("One two. Three four five six seven", 20) == ["One two.", "Three four five six", "seven"]
    assert tts.pieces("alpha beta, gamma delta epsilon", 20) == ["alpha beta,", "gamma delta epsilon"]
    assert [len(p) for p in tts.pieces("x" * 45, 20)] == [20, 20, 5]
    assert tts.pieces("  Short enough.  ", 20) == ["Short enough."]
    text = _words(MAX_SPEECH_CHARS)
    pieces = tts.pieces(text)
    assert max(map(len, pieces)) <= tts.MAX_PIECE_CHARS and " ".join(pieces) == text


def test_sentence_splitter_emits_bounded_pieces():
    """A streamed answer without a sentence end is given to the voice in pieces as it comes, not as one sentence at
    the end; so is a sentence longer than the limit."""
    text = _words(MAX_SPEECH_CHARS)
    splitter, out = tts.SentenceSplitter(), []
    for start in range(0, len(text), 3):  # a few characters a token
        out += splitter.push(text[start : start + 3])
        if start == 3 * tts.MAX_PIECE_CHARS:
            assert out, "nothing emitted after three pieces' worth of text"
    out += splitter.flush()
    assert max(map(len, out)) <= tts.MAX_PIECE_CHARS and " ".join(out) == text
    long_sentence = _words(3 * tts.MAX_PIECE_CHARS) + "."
    pieces = tts.SentenceSplitter().push(long_sentence + " Next")
    assert max(map(len, pieces)) <= tts.MAX_PIECE_CHARS and " ".join(pieces) == long_sentence


@pytest.mark.parametrize("text", ["...", "\u2014", "?", "   ", ""])
def test_nothing_to_say_is_an_input_error(voice, text):
    """Text the voice has no sound for gave an empty (and, as FLAC, invalid) recording; streamed, as whole."""
    for say in (voice.synthesize, lambda text: list(voice.stream(text))):
        with pytest.raises(tts.NothingToSay, match="nothing to say") as error:
            say(text)
        assert isinstance(error.value, InputError)


def test_say_with_nothing_to_say_is_one_sentence(voice, tmp_path):
    ran = edgemm("say", "...", "--out", tmp_path / "out.wav", timeout=60)
    assert "there is nothing to say in the text" in ran.one_line_error()
    assert not (tmp_path / "out.wav").exists()


def test_server_answers_400_for_nothing_to_say():
    pytest.importorskip("starlette")
    from edgemm.runtime.server.http import api_error

    error = api_error(tts.NothingToSay("there is nothing to say in the text"))
    assert (error.status, error.param, error.code) == (400, "input", "nothing_to_say")


def test_synthesis_stops_between_pieces_once_cancelled(voice, monkeypatch):
    """The job's event is set while the first piece is spoken: no other piece is."""
    event, spoken = threading.Event(), []
    synthesize = voice.voice.synthesize

    def first_then_cancel(text, config):
        spoken.append(text)
        event.set()
        return synthesize(text, config)

    monkeypatch.setattr(voice.voice, "synthesize", first_then_cancel)
    with cancel.scope(event), pytest.raises(cancel.Cancelled):
        voice.synthesize(_words(4 * tts.MAX_PIECE_CHARS))
    assert len(spoken) == 1


def test_assistant_speaks_its_answers_in_bounded_pieces(voice):
    """A piece of the answer with nothing to say is skipped (the rest is still spoken), and a long unpunctuated
    answer reaches the voice in pieces as it streams."""
    from edgemm.runtime.assistant import AnswerAudio, Assistant, TurnEnd
    from edgemm.runtime.bundle import default_bundle

    for kind in ("speech", "llm"):
        if not (default_bundle(kind) / "manifest.json").exists():
            pytest.skip(f"the default {kind} bundle is missing at {default_bundle(kind)}: run `make setup`")
    assistant = Assistant.load(vision=False, speak=False)
    assistant.synthesizer = voice
    assistant._start = lambda turn, camera, seen=None: "... The cat is on the mat."
    events = list(assistant.respond("Where is the cat?"))
    audio = [e.speech for e in events if isinstance(e, AnswerAudio)]
    assert len(audio) == 1 and audio[0].seconds > 0.5
    assert isinstance(events[-1], TurnEnd) and not events[-1].turn.mute

    class Recorder:
        sample_rate = voice.sample_rate

        def __init__(self):
            self.texts = []

        def stream(self, text):
            self.texts.append(text)
            yield tts.Speech(np.zeros(100, np.float32), voice.sample_rate)

    answer = _words(5 * tts.MAX_PIECE_CHARS)
    assistant.synthesizer = recorder = Recorder()
    assistant._start = lambda turn, camera, seen=None: iter(answer[i : i + 4] for i in range(0, len(answer), 4))
    list(assistant.respond("Say something long."))
    assert len(recorder.texts) >= 5 and max(map(len, recorder.texts)) <= tts.MAX_PIECE_CHARS
    assert " ".join(recorder.texts) == answer


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("Yes, there is a cat in front of you.", "Yes,"),
        ("The animal in this photo is a tiger cat sleeping.", "The animal in this photo is"),
        ("It costs 1,234 dollars, which is a lot.", "It costs 1,234 dollars,"),
        ("Hi. How are you today, my good friend?", "Hi."),
        ("Paris", "Paris"),
    ],
)
def test_the_first_clause_is_given_out_early(text, first):
    """With ``first_words``, the first piece ends at the first comma or after that many words, unless a sentence
    ends sooner; a comma inside a number is no clause; the pieces still join to the whole text."""
    splitter, out, at = tts.SentenceSplitter(first_words=6), [], None
    for start in range(0, len(text), 3):
        out += splitter.push(text[start : start + 3])
        if out and at is None:
            at = start + 3
    out += splitter.flush()
    assert out[0] == first and " ".join(out) == text
    if first != text:
        assert at < len(text), "the first piece came only with the end of the text"
