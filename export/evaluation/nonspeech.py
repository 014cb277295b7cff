"""Non-speech sounds (silence, coloured noise, mains hum) that a speech model must transcribe to nothing.

Numpy only: the distillation corpus (``edgemm.export.distill.data``) trains on them and ``edgemm bench asr`` checks
each engine on clips of seeds the corpus never uses (:func:`bench_clips`).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0


def coloured_noise(rng: np.random.Generator, frames: int, colour: str) -> np.ndarray:
    """White, pink (1/f) or brown (1/f²) noise of unit RMS, shaped in the frequency domain."""
    white = rng.standard_normal(frames)
    if colour != "white":
        spectrum = np.fft.rfft(white)
        f = np.fft.rfftfreq(frames, 1 / SAMPLE_RATE)
        f[0] = f[1] if frames > 1 else 1.0
        spectrum /= f ** (0.5 if colour == "pink" else 1.0)
        white = np.fft.irfft(spectrum, frames)
    return (white / max(rms(white), 1e-12)).astype(np.float32)


def nonspeech(rng: np.random.Generator) -> tuple[np.ndarray, str, list[str]]:
    """(audio, kind, parameters): silence, noise or hum of 0.5 to 10 s, at -70 to -20 dBFS."""
    seconds = round(float(rng.uniform(0.5, 10.0)), 2)
    frames = int(seconds * SAMPLE_RATE)
    kind = str(rng.choice(["silence", "white", "pink", "brown", "hum"]))
    level = round(float(rng.uniform(-70.0, -60.0) if kind == "silence" else rng.uniform(-45.0, -20.0)), 1)
    if kind == "hum":
        mains = int(rng.choice([50, 60]))
        t = np.arange(frames) / SAMPLE_RATE
        audio = sum(np.sin(2 * np.pi * mains * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3, 5))
        audio = audio + 0.05 * coloured_noise(rng, frames, "pink")
        kind = f"hum{mains}"
    else:
        audio = coloured_noise(rng, frames, "white" if kind == "silence" else kind)
    audio = audio / max(rms(audio), 1e-12) * 10 ** (level / 20)
    return audio.astype(np.float32), kind, [f"level={level}dBFS", f"seconds={seconds}"]


def bench_clips(count: int = 20) -> list[np.ndarray]:
    """``count`` non-speech clips from seeds ``[0, 0, i]``: the corpus seeds its examples with ``[seed, index]``, so
    these are never training examples."""
    return [nonspeech(np.random.default_rng(np.random.SeedSequence([0, 0, i])))[0] for i in range(count)]
