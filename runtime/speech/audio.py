"""Audio in: decode a file (or take an array), mix to mono, resample to the model's rate.

Files are decoded by libsndfile (``soundfile``): WAV with 8/16/24/32-bit integer or float samples,
FLAC, OGG/Vorbis/Opus and MP3. Resampling uses soxr's band-limited (HQ) filter, never sample dropping.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from edgemm.runtime.errors import AudioError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Whisper's rate; a bundle's manifest may say otherwise
# Longest input accepted in one call: 2 hours is ~460 MB of float32 samples at 16 kHz.
MAX_SECONDS = 2 * 3600
_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int8): 128.0}


def _from_array(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.dtype == np.uint8:  # 8-bit PCM is unsigned, centred on 128
        samples = (samples.astype(np.float32) - 128.0) / 128.0
    elif samples.dtype in _INT_SCALE:
        samples = samples.astype(np.float32) / _INT_SCALE[samples.dtype]
    elif not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(f"audio array has dtype {samples.dtype}; expected float or integer PCM samples")
    samples = samples.astype(np.float32, copy=False)
    if samples.ndim == 2:  # (frames, channels): average the channels
        samples = samples.mean(axis=1) if samples.shape[1] <= 16 else samples.mean(axis=0)
    elif samples.ndim != 1:
        raise AudioError(f"audio array has shape {samples.shape}; expected (samples,) or (samples, channels)")
    return samples


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    if not path.exists():
        raise AudioError(f"audio file not found: {path}")
    if path.is_dir():
        raise AudioError(f"{path} is a folder, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes)")
    try:
        info = sf.info(str(path))
        if info.samplerate <= 0:
            raise AudioError(f"{path}: invalid sample rate {info.samplerate}")
        if info.frames / info.samplerate > MAX_SECONDS:
            raise AudioError(
                f"{path} lasts {info.frames / info.samplerate / 60:.0f} min; the limit is {MAX_SECONDS // 60} min"
                " per call (split the file)"
            )
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, EOFError) as e:
        detail = str(e).split(":", 1)[-1].strip() or type(e).__name__
        raise AudioError(f"cannot decode {path} as audio ({detail}); supported: WAV, FLAC, OGG, MP3") from None
    return samples.mean(axis=1), rate


def load_audio(source: str | Path | np.ndarray, sample_rate: int | None = None, target_rate: int = SAMPLE_RATE):
    """Return mono float32 samples at ``target_rate``.

    ``source`` is a file path or an array of samples; for an array, ``sample_rate`` is its rate
    (default: already ``target_rate``).
    """
    if isinstance(source, np.ndarray):
        samples, rate = _from_array(source), sample_rate or target_rate
        if rate <= 0:
            raise AudioError(f"invalid sample rate {rate}")
    else:
        samples, rate = _read_file(Path(source))
    if samples.size == 0:
        raise AudioError("the audio has no samples")
    if not np.all(np.isfinite(samples)):
        raise AudioError("the audio contains NaN or infinite samples")
    if rate != target_rate:
        log.debug("resampling %d Hz -> %d Hz", rate, target_rate)
        samples = soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(samples, dtype=np.float32)
