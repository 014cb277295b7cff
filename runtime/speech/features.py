"""Whisper's log-mel spectrogram in numpy (no torch), matching transformers' WhisperFeatureExtractor.

Defaults are Whisper's; a bundle's manifest (``features``) overrides them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms window
HOP_LENGTH = 160  # 10 ms hop -> 100 frames per second
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in one model window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in one window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100
FFT_BLOCK_FRAMES = 256  # frames transformed at once (memory, not speed: the result does not depend on it)


def _hz_to_mel(f):
    """Slaney mel scale: linear below 1 kHz, logarithmic above (librosa's default)."""
    f = np.asarray(f, dtype=np.float64)
    mel = 3.0 * f / 200.0
    log_region = f >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), mel)


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    hz = 200.0 * m / 3.0
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), hz)


def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters, Slaney-normalized (constant energy per band)."""
    fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2)
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    slopes = hz_points[:, None] - fft_freqs[None, :]
    lower = -slopes[:-2] / widths[:-1, None]
    upper = slopes[2:] / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(lower, upper))
    filters *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    return filters.astype(np.float32)


@dataclass(frozen=True)
class LogMel:
    """Callable: float32 samples at ``sample_rate`` -> log-mel [n_mels, frames] scaled as Whisper expects."""

    n_mels: int = 80
    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH

    def __post_init__(self):
        object.__setattr__(self, "_filters", mel_filters(self.sample_rate, self.n_fft, self.n_mels))
        # Periodic Hann window, as torch.hann_window(n_fft).
        object.__setattr__(self, "_window", np.hanning(self.n_fft + 1)[:-1].astype(np.float32))

    def power_spectrogram(self, samples: np.ndarray) -> np.ndarray:
        """|STFT|^2 with centred, reflect-padded frames: [n_fft // 2 + 1, frames]."""
        pad = self.n_fft // 2
        padded = np.pad(samples.astype(np.float32, copy=False), (pad, pad), mode="reflect")
        n_frames = 1 + (len(padded) - self.n_fft) // self.hop_length
        frames = np.lib.stride_tricks.as_strided(
            padded,
            shape=(n_frames, self.n_fft),
            strides=(padded.strides[0] * self.hop_length, padded.strides[0]),
            writeable=False,
        )
        # A few hundred frames at a time: the FFT works in float64, and a whole 30 s window at once held ~35 MB of
        # temporaries for a 2.4 MB result. Each frame's transform is independent, so the result is the same.
        power = np.empty((self.n_fft // 2 + 1, n_frames), np.float32)
        for start in range(0, n_frames, FFT_BLOCK_FRAMES):
            spectrum = np.fft.rfft(frames[start : start + FFT_BLOCK_FRAMES] * self._window, axis=1)
            power[:, start : start + FFT_BLOCK_FRAMES] = (spectrum.real**2 + spectrum.imag**2).T
        return power

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        power = self.power_spectrogram(samples)[:, :-1]  # Whisper drops the last frame
        log_spec = np.log10(np.maximum(self._filters @ power, 1e-10))
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)  # 80 dB dynamic range
        return ((log_spec + 4.0) / 4.0).astype(np.float32)


def pad_or_trim(samples: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
    if len(samples) >= length:
        return samples[:length]
    return np.pad(samples, (0, length - len(samples)))
