"""Audio in: decode a file, bytes or a pipe (or take an array), mix to mono, resample to the model's rate.

Files are decoded by libsndfile (``soundfile``): WAV with 8/16/24/32-bit integer or float samples,
FLAC, OGG/Vorbis/Opus and MP3. Resampling uses soxr's band-limited (HQ) filter, never sample dropping.
Both go a block at a time, checking for cancellation (edgemm.runtime.cancel) in between: decoding two hours of Opus
takes tens of seconds.
Limits (edgemm.runtime.limits): MAX_AUDIO_SECONDS per call, SAMPLE_RATES for arrays, MAX_AUDIO_BYTES for bytes
and pipes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from edgemm.runtime import cancel
from edgemm.runtime.errors import AudioError
from edgemm.runtime.limits import (
    MAX_AUDIO_BYTES,
    MAX_AUDIO_SECONDS,
    InputError,
    check_input_file,
    check_sample_rate,
    is_stream,
    read_stream,
)
from edgemm.runtime.speech.quiet import quiet_mpg123

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # Whisper's rate; a bundle's manifest may say otherwise
_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int8): 128.0}
# Float samples live in [-1, 1]. A recording past it (a float WAV written with a x1000 gain) is scaled back to a
# peak of 1: Whisper's log-mel features are absolute, and at such levels it invents text ("And I'm just going to do
# this for you." three times). Integer PCM cannot go past full scale.
FULL_SCALE = 1.0
# Only a peak more than 1 dB over full scale is worth a warning. Lossy decoders (MP3, Opus) and band-limited
# resampling overshoot full-scale material by less than that (inter-sample peaks: the reason EBU R128 keeps true
# peaks 1 dB under full scale); such a peak is scaled back all the same, silently.
LOUD_PEAK = 10 ** (1 / 20)
# Frames decoded at a time: 16 s at 16 kHz, 5 s at 48 kHz, tens of milliseconds of work between cancellation checks.
DECODE_BLOCK = 1 << 18
RESAMPLE_BLOCK = 1 << 20  # input samples resampled at a time (the same output as one call)


def _from_array(samples: np.ndarray) -> np.ndarray:
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


def _decode(source, name: str) -> tuple[np.ndarray, int]:
    """Decode a path or a file-like object with libsndfile, checking the duration before reading the samples."""
    try:
        with sf.SoundFile(source) as f:
            if f.samplerate <= 0:
                raise AudioError(f"{name}: invalid sample rate {f.samplerate}")
            if f.frames / f.samplerate > MAX_AUDIO_SECONDS:
                raise AudioError(
                    f"{name} lasts {f.frames / f.samplerate / 60:.0f} min; the limit is"
                    f" {MAX_AUDIO_SECONDS // 60} min per call (split the file)"
                )
            with quiet_mpg123() if f.format == "MP3" else contextlib.nullcontext():
                return _read_mono(f), f.samplerate
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, EOFError, TypeError) as e:
        detail = str(e).split(":", 1)[-1].strip() or type(e).__name__
        raise AudioError(f"cannot decode {name} as audio ({detail}); supported: WAV, FLAC, OGG, MP3") from None


def _read_mono(f: sf.SoundFile) -> np.ndarray:
    """All of ``f`` as mono float32, a block at a time: only the output and one block are held."""
    out = np.empty(f.frames, np.float32)
    n = 0
    while n < len(out):
        cancel.check()
        block = f.read(min(DECODE_BLOCK, len(out) - n), dtype="float32", always_2d=True)
        if not len(block):
            break
        out[n : n + len(block)] = block.mean(axis=1)
        n += len(block)
    return out[:n]


def _resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    stream = soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ")
    parts = []
    for start in range(0, len(samples), RESAMPLE_BLOCK):
        cancel.check()
        end = start + RESAMPLE_BLOCK
        parts.append(stream.resample_chunk(samples[start:end], last=end >= len(samples)))
    return np.concatenate(parts)


def _read_file(path: Path) -> tuple[np.ndarray, int]:
    try:
        info = check_input_file(path, "audio file")
        if is_stream(info):  # a pipe, FIFO or device: read it into memory, then decode
            return _decode(io.BytesIO(read_stream(path, "audio", MAX_AUDIO_BYTES)), str(path))
    except InputError as e:
        raise AudioError(str(e)) from None
    if info.st_size == 0:
        raise AudioError(f"{path} is empty (0 bytes)")
    return _decode(str(path), str(path))


def _from_bytes(data: bytes) -> tuple[np.ndarray, int]:
    if not data:
        raise AudioError("the audio bytes are empty")
    if len(data) > MAX_AUDIO_BYTES:
        raise AudioError(f"the audio is {len(data) >> 20} MB; the limit is {MAX_AUDIO_BYTES >> 20} MB")
    return _decode(io.BytesIO(data), "the audio bytes")


def load_audio(
    source: str | Path | bytes | np.ndarray, sample_rate: int | None = None, target_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Return mono float32 samples at ``target_rate``.

    ``source`` is a file path (also a pipe or device), the bytes of an encoded file (WAV, FLAC, ...) or an array of
    samples; for an array, ``sample_rate`` is its rate (default: already ``target_rate``).
    """
    if isinstance(source, np.ndarray):
        rate = target_rate if sample_rate is None else check_sample_rate(sample_rate)
        samples = _from_array(source)
        if samples.size / rate > MAX_AUDIO_SECONDS:
            raise AudioError(
                f"the audio lasts {samples.size / rate / 60:.0f} min; the limit is {MAX_AUDIO_SECONDS // 60} min"
                " per call (split it)"
            )
    elif sample_rate is not None:
        raise AudioError("sample_rate is only for an array of samples: a file or bytes carry their own rate")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        samples, rate = _from_bytes(bytes(source))
    elif isinstance(source, (str, Path)):
        samples, rate = _read_file(Path(source))
    else:
        raise AudioError(
            f"audio must be a file path, the bytes of an audio file or a numpy array of samples,"
            f" not {type(source).__name__}"
        )
    if samples.size == 0:
        raise AudioError("the audio has no samples")
    low, high = float(samples.min()), float(samples.max())  # NaN and infinities show in these (no full-size copies)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise AudioError("the audio contains NaN or infinite samples")
    peak = max(-low, high)
    if peak > FULL_SCALE:
        log.log(
            logging.WARNING if peak > LOUD_PEAK else logging.DEBUG,
            "the audio peaks at %.3g times full scale: scaled back to full scale",
            peak,
        )
        samples = samples / peak
    if rate != target_rate:
        log.debug("resampling %d Hz -> %d Hz", rate, target_rate)
        samples = _resample(samples, rate, target_rate)
    return np.ascontiguousarray(samples, dtype=np.float32)
