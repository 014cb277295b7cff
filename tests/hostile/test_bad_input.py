"""Bad audio and damaged bundles: one clear error (never a traceback), or correct output."""

import logging
import shutil

import numpy as np
import pytest
import soundfile as sf

from edgemm.runtime.bundle import open_bundle
from edgemm.runtime.errors import AudioError, BundleError
from edgemm.runtime.speech.audio import load_audio
from tests.conftest import flip_byte
from tests.harness import edgemm


def _cli(*args, timeout=120):
    return edgemm(*args, timeout=timeout)


def _sine(rate, seconds=1.0, freq=440.0):
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_sample_formats(tmp_path, subtype):
    path = tmp_path / "a.wav"
    sf.write(path, _sine(16000), 16000, subtype=subtype)
    samples = load_audio(path)
    np.testing.assert_allclose(samples, _sine(16000), atol=0.01)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_keeps_pitch_and_length(tmp_path, rate):
    stereo = np.stack([_sine(rate, 2.0, 1000.0), _sine(rate, 2.0, 1000.0)], axis=1)
    sf.write(tmp_path / "a.flac", stereo, rate)
    samples = load_audio(tmp_path / "a.flac")
    assert abs(len(samples) - 32000) <= 1
    spectrum = np.abs(np.fft.rfft(samples[4000:-4000]))
    peak_hz = np.argmax(spectrum) * 16000 / len(samples[4000:-4000])
    assert abs(peak_hz - 1000) < 5


def test_array_input_int16():
    samples = load_audio((_sine(16000) * 32767).astype(np.int16))
    np.testing.assert_allclose(samples, _sine(16000), atol=1e-3)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"this is not audio at all" * 100, "cannot decode"),
    ],
)
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=message):
        load_audio(path)


def test_zero_samples(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(tmp_path / "empty.wav")


def test_truncated_wav_reads_what_is_there(tmp_path):
    sf.write(tmp_path / "a.wav", _sine(16000, 2.0), 16000, subtype="PCM_16")
    data = (tmp_path / "a.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    samples = load_audio(tmp_path / "cut.wav")
    assert 15000 < len(samples) <= 16000


@pytest.mark.parametrize("peak, warned", [(1.0004, False), (1.1, False), (1.5, True), (400.0, True)])
def test_only_a_real_overshoot_of_full_scale_is_warned_about(tmp_path, caplog, peak, warned):
    """An MP3's inter-sample peak (1.0004) is scaled back silently; a recording far too loud, with a warning."""
    sf.write(tmp_path / "hot.wav", _sine(16000) * 2 * peak, 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING, logger="edgemm"):
        samples = load_audio(tmp_path / "hot.wav")
    assert abs(np.abs(samples).max() - 1.0) < 1e-6
    assert ("full scale" in caplog.text) == warned, caplog.text


def test_missing_and_nan():
    with pytest.raises(AudioError, match="not found"):
        load_audio("/no/such/file.wav")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(np.array([0.0, np.nan], np.float32))


@pytest.mark.parametrize("content", [b"", b"not audio" * 50, None])
def test_cli_bad_audio_is_one_line(speech_bundle, tmp_path, content):
    path = tmp_path / "x.wav"
    if content is not None:
        path.write_bytes(content)
    out = _cli("transcribe", path)
    assert out.returncode == 2
    assert out.stderr.startswith("edgemm: error:") and out.stderr.count("\n") == 1, out.stderr
    assert "Traceback" not in out.stderr


@pytest.fixture
def bundle_copy(speech_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(speech_bundle, copy)
    return copy


def test_tampered_file_is_refused(bundle_copy, clips):
    flip_byte(bundle_copy / "decoder.onnx")
    with pytest.raises(BundleError, match="sha256"):
        open_bundle(bundle_copy, "speech")
    out = _cli("transcribe", clips[0].path, "--model", bundle_copy)
    assert out.returncode == 2 and "does not match the manifest" in out.stderr and "Traceback" not in out.stderr


def test_truncated_and_missing_files_are_refused(bundle_copy):
    data = (bundle_copy / "encoder.onnx").read_bytes()
    (bundle_copy / "encoder.onnx").write_bytes(data[:1000])
    with pytest.raises(BundleError, match="truncated"):
        open_bundle(bundle_copy, "speech")
    (bundle_copy / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        open_bundle(bundle_copy, "speech")


def test_missing_bundle_names_the_fix(tmp_path):
    sf.write(tmp_path / "x.wav", _sine(16000), 16000)  # readable: the audio is checked before the bundle
    out = _cli("transcribe", tmp_path / "x.wav", "--model", tmp_path / "nothing")
    assert out.returncode == 2 and "manifest.json is missing" in out.stderr


def test_english_only_model_refuses_translate(transcriber):
    from edgemm.runtime.errors import OptionsError
    from edgemm.runtime.speech.decoding import DecodingOptions
    from edgemm.runtime.speech.transcribe import TranscribeOptions

    with pytest.raises(OptionsError, match="English-only"):
        transcriber.transcribe(
            np.zeros(16000, np.float32), options=TranscribeOptions(DecodingOptions(task="translate"))
        )
