"""Live transcription (Transcriber.stream): partials, stable words by local agreement, the final transcript."""

from __future__ import annotations

import numpy as np
import pytest

from edgemm.export.evaluation.wer import wer
from edgemm.runtime.errors import AudioError, OptionsError
from edgemm.runtime.speech import TranscriptionStream
from edgemm.runtime.speech.transcribe import Transcription

RATE = 16000


class Scripted:
    """A transcriber that hears the given hypotheses, one per decode, and counts its decodes."""

    sample_rate = RATE

    def __init__(self, *texts: str):
        self.texts, self.calls = list(texts), []

    def transcribe(self, samples, sample_rate, options=None):
        self.calls.append(len(samples))
        return Transcription(self.texts[len(self.calls) - 1], [], "en", len(samples) / RATE)


def feed_seconds(stream, seconds: float, block: int = 512):
    partials = []
    for _ in range(round(seconds * RATE / block)):
        partial = stream.feed(np.full(block, 0.01, np.float32))
        if partial is not None:
            partials.append(partial)
    return partials


def test_words_become_stable_when_two_hypotheses_agree():
    texts = ["What", "What is the", "What is a capital", "what is the capital of", "What is the capital of France?"]
    stream = TranscriptionStream(Scripted(*texts), every_s=0.5)
    partials = feed_seconds(stream, 2.6)
    assert [p.text for p in partials] == [
        "What",
        "What is the",
        "What is a capital",  # "the" -> "a": no agreement past "What is"
        "What is the capital of",
        "What is the capital of France?",
    ]
    assert [p.stable for p in partials] == ["", "What", "What is", "What is", "What is the capital of"]
    assert [p.seconds for p in partials] == pytest.approx([0.512, 1.024, 1.536, 2.048, 2.56], abs=0.02)


def test_stable_words_are_kept_when_a_later_hypothesis_drops_them():
    stream = TranscriptionStream(Scripted("Turn on", "Turn on the", "Turn the lights"), every_s=0.5)
    partials = feed_seconds(stream, 1.5)
    assert partials[-1].stable == "Turn on"
    assert partials[-1].text.startswith("Turn on ")


def test_the_last_partial_is_final_only_when_silence_followed_it():
    transcriber = Scripted("Hello", "Hello there.", "Hello there, you.")
    stream = TranscriptionStream(transcriber, every_s=0.5)
    feed_seconds(stream, 1.0)
    stream.feed(np.zeros(4000, np.float32))  # 0.25 s known to be silence
    assert stream.finish(silent_tail=4000).text == "Hello there."
    assert len(transcriber.calls) == 2
    stream.feed(np.zeros(4000, np.float32))
    assert stream.finish(silent_tail=3999).text == "Hello there, you."  # speech may hide in what was not silent
    assert transcriber.calls[-1] == stream.size


def test_a_stream_cut_back_decodes_only_what_it_keeps():
    """An endpointer that cuts a long utterance in an earlier pause: the final hears only the audio up to the cut."""
    transcriber = Scripted("One two", "One two three", "One two")
    stream = TranscriptionStream(transcriber, every_s=0.5)
    assert len(feed_seconds(stream, 1.1)) == 2
    stream.keep(12000)  # the last partial heard 16384 samples: decoded again
    assert stream.size == 12000 and stream.finish().text == "One two" and transcriber.calls[-1] == 12000
    stream.keep(16000)  # keeping more than it has changes nothing
    assert stream.size == 12000 and stream.finish().text == "One two" and len(transcriber.calls) == 3


def test_bad_streams_get_one_line_errors():
    stream = TranscriptionStream(Scripted(), max_s=1.0)
    assert stream.finish().text == ""  # nothing fed: nothing heard, no decode
    with pytest.raises(AudioError, match="over 1 s without a pause"):
        stream.feed(np.zeros(RATE + 1, np.float32))
    with pytest.raises(OptionsError, match="every_s"):
        TranscriptionStream(Scripted(), every_s=0)
    with pytest.raises(AudioError):
        stream.feed(np.array(["not", "audio"]))
    with pytest.raises(OptionsError, match="silent_tail"):
        stream.finish(silent_tail=-1)


def test_streaming_a_real_clip_ends_with_the_batch_transcript(transcriber, speech_clip):
    samples, reference = speech_clip
    stream = transcriber.stream()
    partials = [p for i in range(0, samples.size, 1600) if (p := stream.feed(samples[i : i + 1600])) is not None]
    final = stream.finish()
    assert len(partials) >= samples.size / RATE / 0.4 - 1
    stables = [p.stable.split() for p in partials]
    for earlier, later in zip(stables, stables[1:], strict=False):
        assert later[: len(earlier)] == earlier  # stable words never change
    assert final.text == transcriber.transcribe(samples, RATE).text
    assert wer([reference], [final.text]) < 0.5  # the batch transcript itself misses a word here
    assert len(stables[-1]) >= len(final.text.split()) // 2  # most words were stable before the end


def test_a_final_that_rewrites_shown_words_continues_them():
    """What a client showing the stable words shows at the end: the final's remaining words after them, whatever
    their case or punctuation; nothing new when the final replaced a shown word."""
    from edgemm.runtime.speech.stream import continued

    assert continued("and Mr. John", "And Mr. John Dashwood had") == "and Mr. John Dashwood had"
    assert continued("He was not.", "He was not an old man.") == "He was not. an old man."
    assert continued("What is", "What is the capital?") == "What is the capital?"
    assert continued("What is the", "What was the capital?") == "What is the"
    assert continued("", "Hello.") == "Hello."
    assert continued("Hello", "Hello") == "Hello"
