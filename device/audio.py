"""Microphones and speakers: real ones through sounddevice (PortAudio), and file-backed ones for tests and demos.

Every microphone yields float32 mono 16 kHz blocks of exactly ``BLOCK`` samples from ``blocks()``; every speaker
takes ``play(samples, sample_rate, more=False)`` and has ``wait()``, ``stop()`` (barge-in), ``busy`` and ``close()``. The
assistant cannot tell a file from a device, so the whole loop runs without hardware.

sounddevice is an optional extra (``pip install 'edgemm[device]'``) and needs the PortAudio library; it is imported
only when a real device is opened. Every failure to find or use a device is a ``DeviceError`` of one line that lists
the devices there are.
"""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from edgemm.runtime.errors import EdgemmError
from edgemm.runtime.speech.audio import load_audio

SAMPLE_RATE = 16000  # what the VAD and Whisper take
BLOCK = 512  # Silero VAD's block at 16 kHz: 32 ms
STALL_SECONDS = 2.0  # a microphone silent (no callback) this long is unplugged or hung
QUEUE_SECONDS = 30  # audio a slow consumer may fall behind before blocks are dropped (and counted)
# Speaker files: suffix -> (soundfile format, subtype); other suffixes get a WAV.
SPEAKER_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}
NO_PORTAUDIO = "PortAudio is not installed (apt install libportaudio2)"
NO_SOUNDDEVICE = "sounddevice is not installed (pip install 'edgemm[device]')"


class DeviceError(EdgemmError):
    """A device is missing or unusable; the message is one line and lists the available devices."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _sounddevice():
    """The sounddevice module, or a DeviceError saying what to install."""
    try:
        import sounddevice
    except ImportError:
        raise DeviceError(f"no audio devices: {NO_SOUNDDEVICE}") from None
    except OSError:  # sounddevice raises it when libportaudio cannot be loaded
        raise DeviceError(f"no audio devices: {NO_PORTAUDIO}") from None
    return sounddevice


def _devices(sd, kind: str) -> list[tuple[int, str]]:
    """(index, name) of every device with channels of ``kind`` ("input" or "output")."""
    try:
        devices = sd.query_devices()
    except Exception as e:  # PortAudio failing to enumerate (no sound server, no /dev/snd)
        raise DeviceError(f"cannot list audio devices: {_one_line(e)}") from None
    return [(i, d["name"]) for i, d in enumerate(devices) if d[f"max_{kind}_channels"] > 0]


def _available(devices: list[tuple[int, str]], kind: str) -> str:
    listed = ", ".join(f"{i} {name!r}" for i, name in devices) or "none"
    return f"available {kind} devices: {listed}"


def _find_device(sd, spec: int | str | None, kind: str) -> int:
    """The index of the device ``spec`` names (None: the default; a number: an index; else a name substring)."""
    what = "microphone" if kind == "input" else "speaker"
    devices = _devices(sd, kind)
    if spec is None:
        default = sd.default.device[0 if kind == "input" else 1]
        if default is None or int(default) < 0:
            if not devices:
                raise DeviceError(f"no {what}: no audio {kind} devices found")
            return devices[0][0]
        return int(default)
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if any(i == index for i, _ in devices):
            return index
    else:
        for i, name in devices:
            if text.lower() in name.lower():
                return i
    raise DeviceError(f"no {what} {text!r}: {_available(devices, kind)}")


def list_audio_devices() -> str:
    """Every audio device, one a line, with its channels and default rate (for ``--list-devices``)."""
    try:
        sd = _sounddevice()
        devices = sd.query_devices()
        default_in, default_out = sd.default.device
    except DeviceError as e:
        return str(e)
    except Exception as e:
        return f"cannot list audio devices: {_one_line(e)}"
    if len(devices) == 0:
        return "no audio devices found"
    lines = []
    for i, d in enumerate(devices):
        mark = " (default input)" if i == default_in else " (default output)" if i == default_out else ""
        lines.append(
            f"{i:3d} {d['name']!r}: {d['max_input_channels']} in, {d['max_output_channels']} out, "
            f"{d['default_samplerate']:.0f} Hz{mark}"
        )
    return "\n".join(lines)


class _Device:
    """Context-manager plumbing shared by every microphone and speaker."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------- microphones


class FileMicrophone(_Device):
    """An audio file as the microphone: the same blocks a real one would give, then ``tail_silence_s`` of zeros.

    The trailing silence lets a VAD see the end of the last utterance, as it would in a live room. With
    ``realtime=True`` each block is released when a real microphone would have finished recording it.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, path: str | Path, realtime: bool = False, tail_silence_s: float = 1.0):
        self.path = Path(path)
        self.realtime = realtime
        self.started_at: float | None = None  # time.monotonic() when the first block was read
        speech = load_audio(self.path)  # AudioError (one line) for a missing or undecodable file
        tail = np.zeros(max(0, round(tail_silence_s * SAMPLE_RATE)), np.float32)
        samples = np.concatenate([speech, tail])
        padded = -(-samples.size // BLOCK) * BLOCK
        self.samples = np.pad(samples, (0, padded - samples.size))
        self._closed = False

    def blocks(self) -> Iterator[np.ndarray]:
        """Every block of the file, from the start."""
        start = self.started_at = time.monotonic()
        for n, offset in enumerate(range(0, self.samples.size, BLOCK), start=1):
            if self._closed:
                return
            if self.realtime:
                delay = start + n * BLOCK / SAMPLE_RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield self.samples[offset : offset + BLOCK].copy()

    def close(self) -> None:
        self._closed = True


class Microphone(_Device):
    """A sound card input through sounddevice, delivered as 16 kHz blocks whatever rate the card runs at.

    The stream opens at 16 kHz mono when the device accepts it, else at its default rate (resampled by a streaming
    soxr resampler) and, if it must, with all its channels (averaged). The PortAudio callback only copies each
    block into a queue (no work on the audio thread); ``blocks()`` resamples and re-blocks. Blocks the consumer
    was too slow for are dropped and counted in ``overflows``, never fatal; a stream that delivers nothing for
    ``stall_s`` seconds raises a DeviceError.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, device: int | str | None = None, stall_s: float = STALL_SECONDS):
        sd = _sounddevice()
        self.index = _find_device(sd, device, "input")
        info = sd.query_devices(self.index)
        self.name = info["name"]
        self.stall_s = stall_s
        self.overflows = 0
        self.device_rate, self.channels = self._negotiate(
            sd, int(info["default_samplerate"]), int(info["max_input_channels"])
        )
        self._resampler = (
            None if self.device_rate == SAMPLE_RATE else soxr.ResampleStream(self.device_rate, SAMPLE_RATE, 1)
        )
        blocksize = round(BLOCK * self.device_rate / SAMPLE_RATE)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, QUEUE_SECONDS * self.device_rate // blocksize))
        self._closed = False
        try:
            self._stream = sd.InputStream(
                device=self.index,
                channels=self.channels,
                samplerate=self.device_rate,
                blocksize=blocksize,
                dtype="float32",
                callback=self._callback,
            )
            self._stream.start()
        except Exception as e:  # sd.PortAudioError, or ValueError for settings the device refuses
            raise DeviceError(f"cannot open microphone {self.index} {self.name!r}: {_one_line(e)}") from None

    def _negotiate(self, sd, default_rate: int, max_channels: int) -> tuple[int, int]:
        """(rate, channels) the device records float32 at: 16 kHz mono if it can, else its default rate and
        then its full channel count (some hardware devices take nothing else)."""
        for rate in dict.fromkeys([SAMPLE_RATE, default_rate]):
            for channels in dict.fromkeys([1, max_channels]):
                try:
                    sd.check_input_settings(device=self.index, channels=channels, dtype="float32", samplerate=rate)
                    return rate, channels
                except Exception:
                    continue
        raise DeviceError(
            f"microphone {self.index} {self.name!r} records float32 neither at {SAMPLE_RATE} Hz"
            f" nor at its default {default_rate} Hz"
        )

    def _callback(self, indata, frames, time_info, status) -> None:
        """PortAudio's thread: copy the block into the queue and return at once."""
        if status.input_overflow:
            self.overflows += 1
        try:
            self._queue.put_nowait(indata.copy())
        except queue.Full:
            self.overflows += 1

    def blocks(self) -> Iterator[np.ndarray]:
        """16 kHz blocks of BLOCK samples until ``close()``."""
        pending = np.zeros(0, np.float32)
        while not self._closed:
            try:
                chunk = self._queue.get(timeout=self.stall_s)
            except queue.Empty:
                if self._closed:
                    return
                raise DeviceError(
                    f"microphone {self.index} {self.name!r} stalled: no audio for {self.stall_s:g} s"
                ) from None
            if chunk is None:  # close() woke us
                return
            chunk = chunk[:, 0] if chunk.shape[1] == 1 else chunk.mean(axis=1)
            if self._resampler is not None:
                chunk = self._resampler.resample_chunk(chunk)
            pending = np.concatenate([pending, chunk])
            while pending.size >= BLOCK:
                yield pending[:BLOCK].copy()
                pending = pending[BLOCK:]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stream.stop()
            self._stream.close()
        finally:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass


# ---------------------------------------------------------------------------------------------------- speakers


def _mono(samples: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Any samples (mono or [frames, channels], float or integer PCM) as float32 mono at ``target_rate``."""
    return load_audio(np.asarray(samples), sample_rate=sample_rate, target_rate=target_rate)


class _Resampler:
    """A speaker's resampling to its own rate. The pieces of one sound played with ``more=True`` (a sentence whose
    audio comes chunk by chunk) are resampled as one signal: resampled alone, each piece's edges would click. Of such
    a piece the resampler's last few milliseconds are held until the next one; a piece without ``more`` (even an
    empty one) ends the sound and gives them out."""

    def __init__(self, target_rate: int | None):
        self.target_rate = target_rate
        self.stream: tuple[int, soxr.ResampleStream] | None = None  # (its input rate, the stream) within a sound

    def __call__(self, samples: np.ndarray, sample_rate: int, more: bool) -> np.ndarray:
        rate = int(sample_rate)
        self.target_rate = self.target_rate or rate
        mono = _mono(samples, rate, rate) if np.asarray(samples).size else np.zeros(0, np.float32)
        if rate == self.target_rate and self.stream is None:
            return mono
        if self.stream is None or self.stream[0] != rate:
            self.stream = (rate, soxr.ResampleStream(rate, self.target_rate, 1, dtype="float32"))
        out = self.stream[1].resample_chunk(mono, last=not more)
        if not more:
            self.stream = None
        return out

    def reset(self) -> None:
        self.stream = None


class WavSpeaker(_Device):
    """A speaker that records everything played, in order, into one audio file (WAV PCM 16 unless the suffix says
    .flac/.ogg/.mp3) at the rate of the first chunk; later chunks at other rates are resampled.

    Playing a file is instant, so ``busy`` is always False and ``wait()`` returns at once; ``stop()`` only marks
    the position (in ``stops``). Chunks are written as they come to a temporary file beside it (the memory stays
    the same however long the run), renamed into place on ``close()``: the file asked for is never half-written.
    ``played`` lists (start_seconds, seconds) per chunk.
    """

    busy = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise DeviceError(f"cannot write {self.path}: the folder {self.path.parent} does not exist")
        self.sample_rate: int | None = None
        self.played: list[tuple[float, float]] = []
        self.stops: list[float] = []
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._file: sf.SoundFile | None = None
        self._frames = 0
        self._closed = False
        self._resample = _Resampler(None)  # to the first chunk's rate

    def play(self, samples: np.ndarray, sample_rate: int, more: bool = False) -> None:
        """``more``: the next play continues this sound (see :class:`_Resampler`)."""
        if self._closed:
            raise DeviceError(f"speaker {self.path} is closed")
        if np.asarray(samples).size == 0 and self._resample.stream is None:
            return
        self.sample_rate = self.sample_rate or int(sample_rate)
        chunk = self._resample(samples, sample_rate, more)
        if not chunk.size:
            return
        self._write(chunk)
        self.played.append((self._frames / self.sample_rate, chunk.size / self.sample_rate))
        self._frames += chunk.size

    def _write(self, chunk: np.ndarray) -> None:
        try:
            if self._file is None:
                fmt, subtype = SPEAKER_FORMATS.get(self.path.suffix.lower(), ("WAV", "PCM_16"))
                self._file = sf.SoundFile(self._tmp, "w", self.sample_rate or SAMPLE_RATE, 1, subtype, format=fmt)
            self._file.write(np.clip(chunk, -1.0, 1.0))
        except (OSError, sf.LibsndfileError, RuntimeError) as e:
            self._abandon()
            raise DeviceError(f"cannot write {self.path}: {_one_line(e)}") from None

    def _abandon(self) -> None:
        """Drop the temporary file (after an error)."""
        if self._file is not None:
            try:
                self._file.close()
            except (OSError, sf.LibsndfileError, RuntimeError):
                pass
            self._file = None
        self._tmp.unlink(missing_ok=True)

    def wait(self) -> None:
        """Nothing to wait for: file playback ends as it starts."""

    def stop(self) -> None:
        """Barge-in: the current chunk is already written whole; note where it happened."""
        self._resample.reset()
        self.stops.append(self._frames / (self.sample_rate or SAMPLE_RATE))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._file is None:  # nothing was played: an empty file
                self._write(np.zeros(0, np.float32))
            self._file.close()
            self._file = None
            os.replace(self._tmp, self.path)
        except (OSError, sf.LibsndfileError, RuntimeError) as e:
            self._abandon()
            raise DeviceError(f"cannot write {self.path}: {_one_line(e)}") from None


class Speaker(_Device):
    """A sound card output through sounddevice: ``play()`` queues the chunk and returns at once.

    One output stream runs at the device's default rate (chunks are resampled to it) and its callback plays the
    queued chunks back to back, silence when there are none. ``stop()`` drops everything queued and aborts the
    stream so the sound ends now, not after the device buffer drains.
    """

    def __init__(self, device: int | str | None = None):
        self._sd = sd = _sounddevice()
        self.index = _find_device(sd, device, "output")
        info = sd.query_devices(self.index)
        self.name = info["name"]
        self.sample_rate = int(info["default_samplerate"])
        self.channels = 1
        try:
            sd.check_output_settings(device=self.index, channels=1, dtype="float32", samplerate=self.sample_rate)
        except Exception:  # some hardware devices only take their own channel count
            self.channels = int(info["max_output_channels"])
        self._lock = threading.Lock()
        self._pending: collections.deque[np.ndarray] = collections.deque()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._resample = _Resampler(self.sample_rate)
        try:
            self._stream = sd.OutputStream(
                device=self.index,
                channels=self.channels,
                samplerate=self.sample_rate,
                dtype="float32",
                callback=self._callback,
            )
            self._stream.start()
        except Exception as e:
            raise DeviceError(f"cannot open speaker {self.index} {self.name!r}: {_one_line(e)}") from None

    def _callback(self, outdata, frames, time_info, status) -> None:
        """PortAudio's thread: copy queued samples out, zeros after them."""
        filled = 0
        with self._lock:
            while filled < frames and self._pending:
                chunk = self._pending[0]
                n = min(frames - filled, chunk.size)
                outdata[filled : filled + n] = chunk[:n, None]
                if n == chunk.size:
                    self._pending.popleft()
                else:
                    self._pending[0] = chunk[n:]
                filled += n
            if not self._pending:
                self._idle.set()
        outdata[filled:] = 0

    def play(self, samples: np.ndarray, sample_rate: int, more: bool = False) -> None:
        """``more``: the next play continues this sound (see :class:`_Resampler`)."""
        if self._closed:
            raise DeviceError(f"speaker {self.index} {self.name!r} is closed")
        if np.asarray(samples).size == 0 and self._resample.stream is None:
            return
        chunk = self._resample(samples, sample_rate, more)
        if not chunk.size:
            return
        with self._lock:
            self._pending.append(chunk)
            self._idle.clear()

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def wait(self) -> None:
        """Until everything queued has left the speaker."""
        self._idle.wait()
        time.sleep(getattr(self._stream, "latency", 0.0) or 0.0)  # the device's own buffer

    def stop(self) -> None:
        self._resample.reset()
        with self._lock:
            was_busy = bool(self._pending)
            self._pending.clear()
            self._idle.set()
        if was_busy and not self._closed:
            try:
                self._stream.abort()  # discards what the device has buffered
                self._stream.start()
            except Exception as e:
                raise DeviceError(f"speaker {self.index} {self.name!r} failed: {_one_line(e)}") from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._pending.clear()
            self._idle.set()
        self._stream.abort()
        self._stream.close()


# ---------------------------------------------------------------------------------------------------- opening


def open_microphone(spec: str | None = None, realtime: bool = False) -> FileMicrophone | Microphone:
    """``spec``: None (the default input), an audio file, a device index or a device name substring."""
    if spec is not None and (Path(spec).is_file() or Path(spec).suffix.lower() in SPEAKER_FORMATS):
        return FileMicrophone(spec, realtime=realtime)  # a missing *.wav gets "audio file not found"
    return Microphone(spec)


def open_speaker(spec: str | None = None) -> WavSpeaker | Speaker:
    """``spec``: None (the default output), an audio file to write (.wav/.flac/.ogg/.mp3, or any existing file),
    a device index or a device name substring."""
    if spec is not None and (Path(spec).suffix.lower() in SPEAKER_FORMATS or Path(spec).is_file()):
        return WavSpeaker(spec)
    return Speaker(spec)
