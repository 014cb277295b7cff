"""Length-adaptive speech bundles (``model.encoder_lengths``): the dynamic-frames encoder matches PyTorch, the
transcriber pads each window only to the smallest length that holds it, and plain bundles keep 30 s windows."""

import json
import shutil

import numpy as np
import pytest

from edgemm.runtime.bundle import MANIFEST, open_bundle
from edgemm.runtime.errors import BundleError
from edgemm.runtime.speech.decoding import DecodingOptions, LogitFilters
from edgemm.runtime.speech.features import LogMel, pad_or_trim
from edgemm.runtime.speech.transcribe import TranscribeOptions, Transcriber

torch = pytest.importorskip("torch")
LENGTHS = [500, 1000, 1500, 2000, 3000]
N_TOKENS = 24
# One decode at temperature 0, no VAD, no no-speech drop: what the random model says is what comes back.
GREEDY = TranscribeOptions(
    decoding=DecodingOptions(timestamps=False, max_new_tokens=N_TOKENS),
    vad=False,
    temperatures=(0.0,),
    compression_ratio_threshold=1e9,
    logprob_threshold=-1e9,
    no_speech_threshold=1.0,
)


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory):
    """(transformers folder, fp32 bundle with encoder_lengths) of the tiny random Whisper."""
    from edgemm.export.speech import export_speech
    from tests.conftest import tiny_whisper_folder

    root = tmp_path_factory.mktemp("adaptive")
    folder = tiny_whisper_folder(root)
    manifest = export_speech(str(folder), "fp32", root / "bundle", measure=False, encoder_lengths=LENGTHS)
    assert manifest["model"]["encoder_lengths"] == LENGTHS
    assert manifest["fidelity"]["parity_short_fp32_vs_pytorch"]["frames"] == LENGTHS[0]
    return folder, root / "bundle"


def _clip(seconds: float) -> np.ndarray:
    """A deterministic tone plus noise, loud enough not to count as silence."""
    t = np.arange(int(seconds * 16000)) / 16000
    noise = np.random.default_rng(0).normal(0, 0.05, len(t))
    return (0.3 * np.sin(2 * np.pi * 220 * t) + noise).astype(np.float32)


def _spy_encoder(transcriber) -> list[tuple]:
    """Record the input_features shape of every encoder run."""
    shapes, session = [], transcriber.model.encoder

    class Spy:
        def run(self, names, feeds):
            shapes.append(feeds["input_features"].shape)
            return session.run(names, feeds)

    transcriber.model.encoder = Spy()
    return shapes


def test_onnx_encoder_at_1000_frames_matches_pytorch(adaptive):
    from transformers import WhisperForConditionalGeneration

    from edgemm.export.whisper_onnx import EncoderWithCrossKV

    folder, bundle = adaptive
    mel = LogMel()(_clip(10.0))[None]
    assert mel.shape == (1, 80, 1000)
    t = Transcriber.load(bundle)
    cross_k, cross_v = t.model.encode(mel[0])
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        ref_k, ref_v = EncoderWithCrossKV(model)(torch.from_numpy(mel))  # encode_frames + cross projections
    assert cross_k.shape[3] == 500
    np.testing.assert_allclose(cross_k, ref_k.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(cross_v, ref_v.numpy(), atol=1e-4, rtol=1e-4)


def test_short_clip_uses_the_smallest_length_and_matches_pytorch_greedy(adaptive):
    from transformers import WhisperForConditionalGeneration

    from edgemm.export.whisper_onnx import encode_frames

    folder, bundle = adaptive
    samples = _clip(4.0)  # 400 frames + margin -> the 500-frame length
    t = Transcriber.load(bundle)
    shapes = _spy_encoder(t)
    result = t.transcribe(samples, 16000, GREEDY)
    assert shapes == [(1, 80, 500)]
    ours = [tok for s in result.segments for tok in s.tokens]
    assert t.transcribe(samples, 16000, GREEDY).segments == result.segments  # deterministic

    # transformers' decoder, greedy on encode_frames of the same 500 frames, with the runtime's suppressions.
    s = t.tokenizer.special
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    mel = torch.from_numpy(LogMel()(pad_or_trim(samples, 500 * 160))[None])
    ids = t.tokenizer.sot_sequence(None, "transcribe", False)
    start, reference = len(ids), []
    with torch.no_grad():
        hidden = encode_frames(model.model.encoder, mel)
        for _ in range(N_TOKENS):
            logits = model(encoder_outputs=(hidden,), decoder_input_ids=torch.tensor([ids])).logits[0, -1]
            logits[t.decoder.suppress] = -np.inf
            logits[s.no_timestamps :] = -np.inf
            if len(ids) == start:
                logits[t.decoder.suppress_begin] = -np.inf
            token = int(logits.argmax())
            if token == s.eot:
                break
            reference.append(token)
            ids.append(token)
    assert len(ours) >= 8, "random model ended too early for a meaningful comparison"
    assert ours == reference


def test_long_audio_keeps_30_s_windows_and_shortens_the_last(adaptive):
    t = Transcriber.load(adaptive[1])
    shapes = _spy_encoder(t)
    t.transcribe(_clip(34.0), 16000, GREEDY)  # 30 s, then 4 s (400 frames + margin -> 500)
    assert shapes == [(1, 80, 3000), (1, 80, 500)]


def test_plain_bundle_still_pads_to_30_s(tiny_random):
    import onnx

    _, fp32, _ = tiny_random
    t = Transcriber.load(fp32)
    assert t.encoder_lengths == [3000]
    shapes = _spy_encoder(t)
    t.transcribe(_clip(4.0), 16000, GREEDY)
    assert shapes == [(1, 80, 3000)]
    frames = onnx.load(str(fp32 / "encoder.onnx")).graph.input[0].type.tensor_type.shape.dim[2]
    assert frames.dim_value == 3000  # the default export keeps a fixed 30 s window


def test_timestamps_stop_at_the_window_end(adaptive):
    t = Transcriber.load(adaptive[1])
    ts = t.tokenizer.special.timestamp_begin
    initial = t.tokenizer.sot_sequence(None, "transcribe", True)
    filters = LogitFilters(t.decoder.suppress, t.decoder.suppress_begin, t.tokenizer, True, len(initial), 50, 250)
    logits = np.zeros((1, t.bundle.manifest["model"]["vocab_size"]), np.float32)
    filters.apply(logits, [[*initial, ts, 400]])  # after an opening timestamp and a text token
    assert np.isfinite(logits[0, ts + 1 : ts + 251]).all()  # after the opening one, up to 250 positions = 5 s
    assert np.isneginf(logits[0, ts + 251 :]).all()


def _with_lengths(bundle, tmp_path, value):
    folder = tmp_path / "bundle"
    shutil.copytree(bundle, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["model"]["encoder_lengths"] = value
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    "value",
    [[501, 3000], [1000, 500, 3000], [500, 500, 3000], [500, 2000], [0, 3000], [500, 4000], [], "500", [True, 3000]],
)
def test_bad_encoder_lengths_are_refused(adaptive, tmp_path, value):
    with pytest.raises(BundleError, match="encoder_lengths") as info:
        open_bundle(_with_lengths(adaptive[1], tmp_path, value), "speech")
    assert "\n" not in str(info.value)


def test_good_encoder_lengths_are_accepted(adaptive, tmp_path):
    assert open_bundle(_with_lengths(adaptive[1], tmp_path, [3000]), "speech").manifest["model"]["encoder_lengths"]


def test_export_refuses_bad_lengths(adaptive, tmp_path):
    from edgemm.export.errors import ExportError
    from edgemm.export.speech import export_speech

    with pytest.raises(ExportError, match="encoder lengths"):
        export_speech(str(adaptive[0]), "fp32", tmp_path / "bad", measure=False, encoder_lengths=[500, 1000])
