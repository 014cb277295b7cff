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
