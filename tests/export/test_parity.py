"""Tiny random Whisper: the torch-free runtime reproduces transformers' greedy generation token for token."""

from itertools import islice

import pytest

from edgemm.runtime.speech.decoding import DecodingOptions
from edgemm.runtime.speech.features import LogMel, pad_or_trim
from edgemm.runtime.speech.transcribe import Transcriber
from tests.conftest import teacher_forced_logits

pytest.importorskip("torch")
N_TOKENS = 32
INT8_MIN_AGREEMENT = 0.9  # teacher-forced greedy agreement of int8 vs fp32 on the random model


def _runtime_greedy(bundle, mel):
    t = Transcriber.load(bundle)
    cross = t.model.encode(mel)
    options = DecodingOptions(timestamps=False, max_new_tokens=N_TOKENS)
    return t, t.decoder.decode(cross, [], options).tokens


def _mel(speech_clip):
    return LogMel()(pad_or_trim(speech_clip[0]))


def test_greedy_tokens_identical_to_transformers(tiny_random, speech_clip):
    from transformers import WhisperForConditionalGeneration

    from edgemm.export.speech import reference_greedy

    folder, fp32, _ = tiny_random
    mel = _mel(speech_clip)
    t, ours = _runtime_greedy(fp32, mel)
    s = t.tokenizer.special
    suppress = sorted(
        set(t.decoder.suppress.tolist()) | set(range(s.no_timestamps, t.bundle.manifest["model"]["vocab_size"]))
    )
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    model.generation_config.begin_suppress_tokens = t.decoder.suppress_begin.tolist()
    reference = reference_greedy(
        model, mel[None], t.tokenizer.sot_sequence(None, "transcribe", False), s.eot, N_TOKENS, suppress
    )
    reference = [tok for tok in reference if tok != s.eot]
    assert len(ours) >= 8, "random model ended too early for a meaningful comparison"
    assert ours == reference


def test_int8_agrees_with_fp32(tiny_random, speech_clip):
    _, fp32, int8 = tiny_random
    mel = _mel(speech_clip)
    t32, tokens = _runtime_greedy(fp32, mel)
    t8 = Transcriber.load(int8)
    prompt = t32.tokenizer.sot_sequence(None, "transcribe", False)
    models = [t.model for t in (t32, t8)]
    steps = teacher_forced_logits(models, [m.encode(mel) for m in models], prompt, tokens)
    # fp32's tokens fed to both: compare the choice of each of them
    agree = sum(int(reference.argmax() == quantized.argmax()) for reference, quantized in islice(steps, len(tokens)))
    assert agree / len(tokens) >= INT8_MIN_AGREEMENT, f"int8 agreed on {agree}/{len(tokens)} steps"


def test_int8_bundle_is_quantized(tiny_random):
    import onnx

    from edgemm.export.quantize import _float_matmul_weights

    _, fp32, int8 = tiny_random
    for graph in ("encoder.onnx", "decoder.onnx"):
        model = onnx.load(str(int8 / graph))
        ops = {n.op_type for n in model.graph.node}
        assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
        assert _float_matmul_weights(model) == {}, "every MatMul weight must be int8"
    # the decoder is dominated by the tied embedding, which must be int8 too
    assert (int8 / "decoder.onnx").stat().st_size < 0.4 * (fp32 / "decoder.onnx").stat().st_size


def test_decoder_stores_tied_embedding_once(tiny_random):
    import onnx

    _, fp32, _ = tiny_random
    model = onnx.load(str(fp32 / "decoder.onnx"))
    vocab_sized = [i.name for i in model.graph.initializer if 51864 in i.dims]
    assert len(vocab_sized) == 1, vocab_sized


def test_encoder_attention_is_fused(tiny_random):
    """The encoder's self-attention is onnxruntime's MultiHeadAttention (flash attention on CPU: no [H, T, T]
    scores); the greedy-token tests above hold on that graph."""
    import onnx

    _, fp32, int8 = tiny_random
    for bundle in (fp32, int8):
        ops = [n.op_type for n in onnx.load(str(bundle / "encoder.onnx")).graph.node]
        assert ops.count("MultiHeadAttention") == 2 and "Softmax" not in ops  # the tiny model has 2 encoder layers


def test_int8_decoder_gathers_its_own_rows(tiny_random):
    """The int8 decoder's token lookup reads a row-major copy in external data (memory-mapped: only the rows of
    the tokens seen become resident), not the matrix the output projection prepacks."""
    import onnx

    _, _, int8 = tiny_random
    model = onnx.load(str(int8 / "decoder.onnx"), load_external_data=False)
    external = {i.name: i for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL}
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in external]
    assert len(gathers) == 1
    rows = external[gathers[0].input[0]]
    assert rows.data_type == onnx.TensorProto.UINT8 and list(rows.dims) == [51864, 64]  # [vocab, d_model]
    projection = [n for n in model.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")][-1]
    assert projection.input[1] not in external
