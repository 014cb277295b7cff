"""Log-mel in numpy vs transformers' WhisperFeatureExtractor on real audio."""

import numpy as np
import pytest

from edgemm.runtime.speech.features import N_FRAMES, LogMel, pad_or_trim

TOLERANCE = 1e-4  # absolute, on Whisper-scaled log-mel values (range about [-1, 2])


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_transformers(speech_clip, n_mels):
    transformers = pytest.importorskip("transformers")
    samples, _ = speech_clip
    reference = transformers.WhisperFeatureExtractor(feature_size=n_mels)(
        samples, sampling_rate=16000, return_tensors="np"
    ).input_features[0]
    ours = LogMel(n_mels=n_mels)(pad_or_trim(samples))
    assert ours.shape == reference.shape == (n_mels, N_FRAMES)
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE)


def test_log_mel_of_silence_is_flat():
    mel = LogMel()(np.zeros(16000, np.float32))
    assert np.all(np.isfinite(mel)) and np.ptp(mel) == 0


def test_log_mel_does_not_depend_on_the_fft_block(speech_clip, monkeypatch):
    """The spectrogram is computed a block of frames at a time (memory); the block size changes nothing."""
    from edgemm.runtime.speech import features

    samples = pad_or_trim(speech_clip[0])
    blocked = LogMel()(samples)
    monkeypatch.setattr(features, "FFT_BLOCK_FRAMES", N_FRAMES + 1)  # the whole window in one block
    np.testing.assert_array_equal(LogMel()(samples), blocked)
