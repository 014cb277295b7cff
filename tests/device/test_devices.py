"""The device layer without hardware: file-backed devices, a fake sounddevice for the real classes' logic, and the
errors a real device request gives in a machine without one."""

from __future__ import annotations

import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from edgemm.device import DeviceError, list_audio_devices, open_camera, open_microphone, open_speaker
from edgemm.device.audio import BLOCK, SAMPLE_RATE, FileMicrophone, Microphone, Speaker, WavSpeaker
from edgemm.device.camera import FileCamera


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate / samples.size)


def assert_one_line(error: DeviceError, *words: str) -> None:
    message = str(error)
    assert message and "\n" not in message
    assert any(word in message for word in words), message


# ---------------------------------------------------------------------------------------------------- microphones


def test_file_microphone_blocks_from_44k_stereo(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, tone(0.3, 44100, channels=2), 44100)
    with FileMicrophone(path) as mic:
        blocks = list(mic.blocks())
    speech = round(0.3 * SAMPLE_RATE)  # 4800 samples, then 1 s of silence, padded to whole blocks
    assert len(blocks) == -(-(speech + SAMPLE_RATE) // BLOCK) == 41
    assert all(b.shape == (BLOCK,) and b.dtype == np.float32 for b in blocks)
    audio = np.concatenate(blocks)
    assert abs(peak_hz(audio[:speech], SAMPLE_RATE) - 440) < 10  # resampled to 16 kHz, not sped up
    assert np.all(audio[speech:] == 0) and np.abs(audio[: speech - 100]).max() > 0.4


def test_file_microphone_no_tail_and_restart(tmp_path):
    path = tmp_path / "a.flac"
    sf.write(path, tone(0.1, 16000), 16000)
    mic = open_microphone(str(path))
    assert isinstance(mic, FileMicrophone)
    assert len(list(mic.blocks())) == -(-(1600 + 16000) // BLOCK)
    short = FileMicrophone(path, tail_silence_s=0)
    assert len(list(short.blocks())) == len(list(short.blocks())) == 4  # 1600 samples, last block padded


def test_file_microphone_realtime_pacing(tmp_path):
    path = tmp_path / "half.wav"
    sf.write(path, tone(0.5, 16000), 16000)
    fast = time.monotonic()
    assert len(list(FileMicrophone(path, tail_silence_s=0).blocks())) == 16
    assert time.monotonic() - fast < 0.2
    start = time.monotonic()
    count = sum(1 for _ in FileMicrophone(path, realtime=True, tail_silence_s=0).blocks())
    elapsed = time.monotonic() - start
    assert count == 16 and 0.45 < elapsed < 0.9, elapsed  # 16 blocks = 0.512 s


def test_file_microphone_missing_file_is_one_line(tmp_path):
    with pytest.raises(Exception) as info:
        open_microphone(str(tmp_path / "nothing.wav"))
    assert "not found" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------- speakers


def test_wav_speaker_appends_resampled_chunks_atomically(tmp_path):
    path = tmp_path / "out.wav"
    with open_speaker(str(path)) as speaker:
        assert isinstance(speaker, WavSpeaker) and not speaker.busy
        speaker.play(tone(0.5, 22050), 22050)
        speaker.play(tone(0.25, 16000, freq=1000), 16000)  # another rate: resampled to 22050
        speaker.stop()
        speaker.play((tone(0.1, 22050, channels=2) * 32767).astype(np.int16), 22050)  # stereo int16
        speaker.wait()
        assert not path.exists()  # nothing on disk before close
    info = sf.info(path)
    assert info.samplerate == 22050 and info.subtype == "PCM_16" and info.channels == 1
    assert abs(info.frames - (11025 + 5512 + 2205)) <= 2
    assert [(round(a, 3), round(b, 3)) for a, b in speaker.played] == [(0.0, 0.5), (0.5, 0.25), (0.75, 0.1)]
    assert speaker.stops == [pytest.approx(0.75, abs=1e-3)]
    audio, rate = sf.read(path, dtype="float32")
    assert abs(peak_hz(audio[11025:16537], rate) - 1000) < 10
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temporary file left


def test_wav_speaker_writes_as_it_plays_not_into_memory(tmp_path):
    """An hour of answers must not be an hour of audio in memory: each chunk goes to the temporary file at once."""
    path = tmp_path / "out.wav"
    with WavSpeaker(path) as speaker:
        sizes = []
        for _ in range(3):
            speaker.play(tone(2.0, 22050), 22050)
            (tmp,) = tmp_path.iterdir()
            sizes.append(tmp.stat().st_size)
        assert tmp.name.startswith(".out.wav.") and not path.exists()
        assert sizes[1] - sizes[0] == sizes[2] - sizes[1] == 2 * 44100  # 2 s of 16-bit samples each
    assert sf.info(path).frames == 3 * 44100 and [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_wav_speaker_empty_and_other_formats(tmp_path):
    WavSpeaker(tmp_path / "silent.wav").close()
    assert sf.info(tmp_path / "silent.wav").frames == 0
    with open_speaker(str(tmp_path / "out.flac")) as speaker:
        speaker.play(tone(0.2, 24000), 24000)
    assert sf.info(tmp_path / "out.flac").format == "FLAC"
    with pytest.raises(DeviceError, match="does not exist"):
        WavSpeaker(tmp_path / "missing" / "out.wav")


# ---------------------------------------------------------------------------------------------------- fake sounddevice


class FakeStream:
    """Runs the callback on its own thread, as PortAudio does, far faster than real time."""

    def __init__(self, sd, kind, device, channels, samplerate, dtype, callback, blocksize=0):
        self.sd, self.kind, self.channels, self.samplerate = sd, kind, channels, samplerate
        self.blocksize = blocksize or 480
        self.callback = callback
        self.latency = 0.0
        self.aborts = 0
        self._run = threading.Event()
        self._closed = False
        self._thread = None
        sd.streams.append(self)

    def start(self):
        self._run.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()

    def _loop(self):
        fed = 0
        while not self._closed:
            if not self._run.is_set():
                time.sleep(0.001)
                continue
            if self.kind == "input":
                signal = self.sd.signal
                if fed >= signal.size:  # the device went quiet: the stream stalls
                    return
                block = signal[fed : fed + self.blocksize]
                block = np.repeat(np.pad(block, (0, self.blocksize - block.size))[:, None], self.channels, axis=1)
                status = types.SimpleNamespace(input_overflow=fed == 0)
                self.callback(block, self.blocksize, None, status)
                fed += self.blocksize
            else:
                out = np.full((self.blocksize, self.channels), np.nan, np.float32)
                self.callback(out, self.blocksize, None, None)
                self.sd.played.append(out.copy())
            time.sleep(0.0005)

    def stop(self):
        self._run.clear()

    def abort(self):
        self.aborts += 1
        self._run.clear()

    def close(self):
        self._closed = True
        self._run.clear()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()


@pytest.fixture
def fake_sd(monkeypatch):
    sd = types.ModuleType("sounddevice")
    sd.devices = [
        {"name": "HDA Intel", "max_input_channels": 2, "max_output_channels": 2, "default_samplerate": 48000.0},
        {"name": "USB mic", "max_input_channels": 1, "max_output_channels": 0, "default_samplerate": 44100.0},
    ]
    sd.default = types.SimpleNamespace(device=[1, 0])
    sd.signal = tone(1.0, 44100)
    sd.streams, sd.played = [], []

    def query_devices(index=None):
        return sd.devices if index is None else sd.devices[index]

    def check_settings(device, channels, dtype, samplerate):
        if samplerate != sd.devices[device]["default_samplerate"] or channels not in (2, 1 if device == 1 else 2):
            raise ValueError("Invalid sample rate")

    sd.query_devices = query_devices
    sd.check_input_settings = sd.check_output_settings = check_settings
    sd.InputStream = lambda **kw: FakeStream(sd, "input", **kw)
    sd.OutputStream = lambda **kw: FakeStream(sd, "output", **kw)
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    return sd


def test_microphone_resamples_and_reblocks_then_reports_a_stall(fake_sd):
    mic = Microphone(None, stall_s=0.3)
    assert mic.name == "USB mic" and mic.device_rate == 44100  # 16 kHz refused: the default rate, resampled
    blocks = []
    with pytest.raises(DeviceError) as info:
        for block in mic.blocks():
            blocks.append(block)
    assert_one_line(info.value, "stalled")
    assert all(b.shape == (BLOCK,) and b.dtype == np.float32 for b in blocks)
    assert 28 <= len(blocks) <= 31  # 1 s at 16 kHz is 31.25 blocks, less the resampler's delay
    assert abs(peak_hz(np.concatenate(blocks), SAMPLE_RATE) - 440) < 10
    assert mic.overflows == 1  # counted, not fatal
    mic.close()


def test_microphone_by_name_and_index(fake_sd):
    with Microphone("usb") as usb, Microphone("0") as card:
        assert usb.index == 1 and usb.channels == 1
        assert card.index == 0 and (card.device_rate, card.channels) == (48000, 2)  # stereo only: averaged
    with pytest.raises(DeviceError) as info:
        Microphone("webcam")
    assert str(info.value) == "no microphone 'webcam': available input devices: 0 'HDA Intel', 1 'USB mic'"
    with pytest.raises(DeviceError, match="available output devices: 0 'HDA Intel'"):
        Speaker("1")
    assert "USB mic" in list_audio_devices() and "(default input)" in list_audio_devices()


def test_speaker_plays_in_order_and_stops(fake_sd):
    speaker = open_speaker(None)
    assert isinstance(speaker, Speaker) and speaker.sample_rate == 48000 and speaker.channels == 2
    speaker.play(tone(0.2, 16000), 16000)
    speaker.play(tone(0.1, 24000, freq=1000), 24000)
    assert speaker.busy
    speaker.wait()
    assert not speaker.busy
    out = np.concatenate(fake_sd.played)
    assert not np.isnan(out).any()  # every frame the callback was handed was filled
    sound = np.flatnonzero(np.abs(out[:, 0]) > 0.01)
    assert abs((sound[-1] - sound[0]) - 0.3 * 48000) < 200 and np.array_equal(out[:, 0], out[:, 1])
    speaker.play(tone(30.0, 16000), 16000)  # barge-in: 30 s cut at once
    speaker.stop()
    assert not speaker.busy and fake_sd.streams[-1].aborts == 1
    speaker.wait()
    speaker.close()


def test_a_sound_played_in_pieces_is_resampled_as_one(fake_sd, tmp_path):
    """A sentence's chunks played with more=True come out as the whole sentence resampled at once would, without
    the clicks of pieces resampled alone; the piece without more (here empty) gives out the held-back tail."""
    import soxr

    sound = tone(0.9, 22050, freq=440)
    whole = soxr.resample(sound, 22050, 48000)
    pieces = np.split(sound, [5000, 12000])
    for speaker in (open_speaker(None), WavSpeaker(tmp_path / "out.wav")):
        if isinstance(speaker, WavSpeaker):
            speaker.play(np.zeros(480, np.float32), 48000)  # the file's rate: 48 kHz
        for piece in pieces:
            speaker.play(piece, 22050, more=True)
        speaker.play(np.zeros(0, np.float32), 22050)
        speaker.wait()
        speaker.close()
        if isinstance(speaker, WavSpeaker):
            out = sf.read(tmp_path / "out.wav", dtype="float32")[0][480:]
        else:
            out = np.concatenate(fake_sd.played)[:, 0]
            out = out[np.flatnonzero(np.abs(out) > 1e-3)[0] :][: whole.size]
        assert abs(out.size - whole.size) <= 2
        n = min(out.size, whole.size)
        assert np.abs(out[:n] - whole[:n]).max() < 2e-3  # 16-bit files round to 3e-5
        alone = np.concatenate([soxr.resample(piece, 22050, 48000) for piece in pieces])
        assert np.abs(alone[: whole.size] - whole[: alone.size]).max() > 10 * np.abs(out[:n] - whole[:n]).max()


# ---------------------------------------------------------------------------------------------------- cameras


def solid(color, size=(40, 20)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_file_camera_image_applies_exif(tmp_path):
    path = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    solid((200, 30, 30)).save(path, exif=exif)
    with open_camera(str(path)) as camera:
        assert isinstance(camera, FileCamera)
        frame = camera.grab()
        assert frame.dtype == np.uint8 and frame.shape == (40, 20, 3)  # upright: 20 wide, 40 high
        assert frame[..., 0].mean() > 150 > frame[..., 2].mean()  # RGB, not BGR
        assert np.array_equal(camera.grab(), frame)


def test_file_camera_folder_cycles_in_name_order(tmp_path):
    for name, color in [("b.png", (0, 255, 0)), ("a.png", (255, 0, 0)), ("c.jpg", (0, 0, 255))]:
        solid(color).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    camera = open_camera(str(tmp_path))
    channels = [int(np.argmax(camera.grab().mean(axis=(0, 1)))) for _ in range(5)]
    assert channels == [0, 1, 2, 0, 1]
    peeked = [int(np.argmax(camera.peek().mean(axis=(0, 1)))) for _ in range(3)]  # the next frame, not taken
    assert peeked == [2, 2, 2] and int(np.argmax(camera.grab().mean(axis=(0, 1)))) == 2


def test_file_camera_video_rewinds(tmp_path):
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    colors_bgr = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]  # red, green, blue as OpenCV writes them
    for color in colors_bgr:
        writer.write(np.full((24, 32, 3), color, np.uint8))
    writer.release()
    camera = FileCamera(path)
    frames = [camera.grab() for _ in range(7)]
    assert all(f.shape == (24, 32, 3) and f.dtype == np.uint8 for f in frames)
    assert [int(np.argmax(f.mean(axis=(0, 1)))) for f in frames] == [0, 1, 2, 0, 1, 2, 0]
    assert int(np.argmax(camera.peek().mean(axis=(0, 1)))) == 1  # the next frame, still the next one after
    assert int(np.argmax(camera.grab().mean(axis=(0, 1)))) == 1
    camera.close()


def test_file_camera_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DeviceError, match="no images"):
        FileCamera(empty)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    with pytest.raises(DeviceError, match="cannot read"):
        FileCamera(broken)
    with pytest.raises(DeviceError) as info:
        open_camera(str(tmp_path / "missing.png"))
    assert_one_line(info.value, "none", "/dev/video")


# ---------------------------------------------------------------------------------------------------- real devices


@pytest.mark.parametrize("opener", [open_microphone, open_speaker])
def test_real_audio_request_is_a_one_line_device_error(opener):
    with pytest.raises(DeviceError) as info:
        opener("no-such-device-xyz")
    assert_one_line(info.value, "available", "PortAudio", "sounddevice")
    try:  # the default device exists on some machines; where it does not, the same one-line error
        opener(None).close()
    except DeviceError as e:
        assert_one_line(e, "available", "PortAudio", "sounddevice", "no audio")


def test_list_audio_devices_never_raises():
    text = list_audio_devices()
    assert isinstance(text, str) and text


@pytest.mark.parametrize("spec", ["99", "/dev/video99"])
def test_real_camera_request_is_a_one_line_device_error(spec):
    with pytest.raises(DeviceError) as info:
        open_camera(spec)
    assert_one_line(info.value, "none", "/dev/video")


def test_default_camera_opens_or_is_a_one_line_device_error():
    if not Path("/dev/video0").exists():
        with pytest.raises(DeviceError) as info:
            open_camera(None)
        assert_one_line(info.value, "none")
