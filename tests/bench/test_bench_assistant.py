"""The assistant bench's clock: where a spoken question truly ends, and each turn's stages from there."""

from __future__ import annotations

import numpy as np
import pytest

from edgemm.bench.assistant import stages, voiced_end

RATE = 16000


def _tone(seconds: float, level: float) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_voiced_end_is_the_last_loud_frame():
    """Speech then a quiet tail (breath, room noise 50 dB down): the end is where the speech stops."""
    rng = np.random.default_rng(0)
    audio = np.concatenate([_tone(0.8, 0.5), 0.5e-3 * rng.standard_normal(RATE // 2).astype(np.float32)])
    assert voiced_end(audio, RATE) == pytest.approx(0.8, abs=0.011)
    assert voiced_end(np.zeros(RATE, np.float32), RATE) == 0.0
    assert voiced_end(np.zeros(0, np.float32), RATE) == 0.0


def test_stages_count_from_the_true_end_of_speech():
    turn = {"heard": [1.0, 3.2], "transcript": 0.4, "first_token": 0.6, "first_speech": 0.9, "first_audio": 1.0}
    got = stages(turn, [0.5, 2.5, 9.0])  # only 2.5 lies within the utterance
    assert got == pytest.approx(
        {
            "endpoint_wait": 0.7,
            "endpoint_silence": 0.7,
            "transcript": 0.4,
            "prefill": 0.2,
            "first_clause": 0.3,
            "synthesis": 0.1,
            "true_first_audio": 1.7,
        }
    )
    # From a real-time microphone: the first audio came 4.3 s into the recording, 1.8 s after the end of speech;
    # the wait is all that the turn's own clock does not cover (the silence, judging it, a backlog).
    live = stages({**turn, "audio_at": 4.3}, [0.5, 2.5, 9.0])
    assert live["true_first_audio"] == pytest.approx(1.8) and live["endpoint_wait"] == pytest.approx(0.8)
    assert live["endpoint_silence"] == pytest.approx(0.7)
    assert "true_first_audio" not in stages(turn, [5.0])  # a cut that holds no question's end is not counted
    assert stages({"transcript": 0.4}, [2.5]) == {"transcript": 0.4}  # a typed turn: no microphone times
