"""The VAD hysteresis shared by the transcriber (whole recordings) and the assistant's endpointer (live blocks),
driven by speech probabilities alone: no model."""

import numpy as np
import pytest

from edgemm.runtime.speech.endpoint import Endpointer, EndpointOptions
from edgemm.runtime.speech.vad import BLOCK_MS, CHUNK, Hysteresis, VADOptions, blocks_for, speech_spans


def _changes(state, probs):
    return [(i, change, state.start, state.end) for i, p in enumerate(probs) if (change := state.update(p))]


def test_two_thresholds_and_durations():
    state = Hysteresis(0.5, 0.35, start_blocks=2, end_blocks=3)
    probs = [0.9, 0.1, 0.6, 0.7, 0.4, 0.2, 0.1, 0.4, 0.1, 0.1, 0.1]
    # one speech block is not enough; two in a row start at the first of them; 0.4 is neither speech nor silence
    # (keeps speaking and breaks a run of silence); three silent blocks in a row end it at the first silent one
    assert _changes(state, probs) == [(3, "start", 2, 0), (10, "end", 2, 8)]
    assert not state.speaking and state.silent == 3


def test_reset_goes_back_to_silence():
    state = Hysteresis(0.5, 0.35, start_blocks=1, end_blocks=5)
    assert state.update(0.9) == "start"
    state.reset()
    assert not state.speaking and state.update(0.1) is None and state.update(0.8) == "start" and state.start == 2


def test_blocks_for():
    assert BLOCK_MS == 32 and blocks_for(96) == 3 and blocks_for(100) == 4 and blocks_for(0) == 1


def test_speech_spans_drop_short_pad_and_merge():
    probs = np.array([0.0] * 10 + [0.9] * 10 + [0.0] * 3 + [0.9] * 10 + [0.0] * 20 + [0.9] * 2 + [0.0] * 10)
    n = len(probs) * CHUNK
    options = VADOptions(min_speech_ms=250, min_silence_ms=100, pad_ms=0)
    # 3 silent blocks (96 ms) do not close a region: 10..33 is one; the 2-block blip (64 ms) is dropped
    assert speech_spans(probs, n, options) == [(10 * CHUNK, 33 * CHUNK)]
    padded = speech_spans(probs, n, VADOptions(min_speech_ms=250, min_silence_ms=100, pad_ms=200))
    assert padded == [(10 * CHUNK - 3200, 33 * CHUNK + 3200)]
    # speech to the very end is a region too, clipped to the samples
    assert speech_spans(np.array([0.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]), 10 * CHUNK - 7, options) == [
        (CHUNK, 10 * CHUNK - 7)
    ]


def _endpoint(probs, **options):
    """Feed blocks whose value is their speech probability; the utterances (start, end, first block's value)."""
    endpointer = Endpointer(lambda block: float(block[0]), EndpointOptions(**options))
    out, onsets = [], []
    for i, p in enumerate(probs):
        utterance = endpointer.feed(np.full(CHUNK, p, np.float32))
        if endpointer.started:
            onsets.append(i)
        if utterance is not None:
            out.append((round(utterance.start, 3), round(utterance.end, 3), len(utterance.samples) // CHUNK))
    return out, onsets


def test_endpointer_cuts_an_utterance_with_pre_roll():
    probs = [0.0] * 20 + [0.9] * 30 + [0.0] * 25
    utterances, onsets = _endpoint(probs)
    assert onsets == [22]  # the third speech block in a row
    # 8 blocks of pre-roll (256 ms) up to the onset block, then until 20 silent blocks (640 ms) have passed
    ((start, end, blocks),) = utterances
    assert blocks == 8 + 27 + 20 and start == pytest.approx(15 * 0.032) and end == pytest.approx(70 * 0.032)


def test_endpointer_drops_blips_and_cuts_long_speech():
    assert _endpoint([0.0] * 5 + [0.9] * 4 + [0.0] * 30)[0] == []  # 128 ms of speech < 300 ms
    utterances, _ = _endpoint([0.9] * 200, max_utterance_s=2.0)
    assert [blocks for _, _, blocks in utterances] == [63, 63, 63]  # 2 s cuts; speech goes on and starts again


def test_endpointer_cuts_long_speech_in_a_pause():
    """Speech past max_utterance_s is cut in the middle of its longest pause of the last cut_search_s (between
    words, not mid-word), and the audio after the cut opens the next utterance: nothing is lost or heard twice."""
    probs = [0.0] * 10 + [0.9] * 300 + [0.0] * 30
    probs[120:126] = [0.1] * 6  # a long pause 2.2 s before the 6 s limit: outside the search
    probs[150:153] = [0.1] * 3  # inside it: the cut
    probs[180] = 0.1  # a shorter one
    probs[186] = 0.4  # quiet, not a pause
    options = EndpointOptions(max_utterance_s=6.0, cut_search_s=2.0)
    endpointer = Endpointer(lambda block: probs[int(block[0])], options)  # each block's samples are its index
    utterances, onsets = [], []
    for i in range(len(probs)):
        utterance = endpointer.feed(np.full(CHUNK, i, np.float32))
        if endpointer.started:
            onsets.append(i)
        if utterance is not None:
            utterances.append((i, utterance))
    (at, first), (_, second) = utterances
    assert onsets == [12, 193] and at == 192  # 188 blocks (6 s) from the pre-roll's first, block 5
    assert list(first.samples[::CHUNK]) == list(range(5, 152))  # cut in the pause, not at block 192
    assert first.end == pytest.approx(152 * 0.032) and second.start == pytest.approx(152 * 0.032)
    assert first.silent_tail == 2 * CHUNK
    assert list(second.samples[::CHUNK]) == list(range(152, 330))  # then on to 20 silent blocks

    # No pause in the search: after its quietest block (the latest of equals).
    probs = [0.0] * 10 + [0.9] * 300 + [0.0] * 30
    probs[150] = probs[160] = 0.4
    endpointer = Endpointer(lambda block: probs[int(block[0])], options)
    cuts = [u for i in range(len(probs)) if (u := endpointer.feed(np.full(CHUNK, i, np.float32))) is not None]
    assert [int(u.samples[-1]) for u in cuts] == [160, 329] and cuts[0].silent_tail == 0


def test_endpointer_cut_and_hold_at_a_pause():
    """A caller can end an utterance at a short pause (cut) or make the endpointer wait through a longer one (hold);
    either way the next utterance starts from the usual settings."""
    endpointer = Endpointer(lambda block: float(block[0]), EndpointOptions())
    feed = [0.9] * 30 + [0.0] * 5
    assert [endpointer.feed(np.full(CHUNK, p, np.float32)) for p in feed] == [None] * len(feed)
    assert endpointer.recording and endpointer.silent_ms == pytest.approx(5 * 32)
    cut = endpointer.cut()
    assert cut.silent_tail == 5 * CHUNK and len(cut.samples) == (30 + 5) * CHUNK  # speech from the first block
    assert not endpointer.recording and endpointer.silent_ms == 0 and endpointer.cut() is None

    # Held for 960 ms: a pause of 640-960 ms goes on, and speech after it belongs to the same utterance.
    probs = [0.9] * 30 + [0.0] * 25 + [0.9] * 10 + [0.0] * 40
    utterances, ends = [], []
    for i, p in enumerate(probs):
        utterance = endpointer.feed(np.full(CHUNK, p, np.float32))
        if endpointer.recording and endpointer.silent_ms >= 160:
            endpointer.hold(960)
        if utterance is not None:
            utterances.append(utterance)
            ends.append(i)
    assert len(utterances) == 1 and ends == [30 + 25 + 10 + 30 - 1]
    # The hold does not outlive its utterance: the next ends after the usual 640 ms.
    assert _endpoint([0.0] * 5 + [0.9] * 30 + [0.0] * 25)[0][0][2] == 8 + 27 + 20
