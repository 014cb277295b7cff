"""Llama / Qwen2 decoder -> ONNX graphs built directly from the weights, with onnxruntime's fused CPU operators.

Two graphs:

- ``embed.onnx``: ``input_ids`` [B, S] -> ``inputs_embeds`` [B, S, D]. The image path splices vision features into
  ``inputs_embeds`` before the decoder.
- ``decoder.onnx``: ``inputs_embeds``, ``attention_mask`` [B, past + S], ``logits_to_keep`` (scalar; 0 = every
  position, n = the last n) and ``past.{i}.key|value`` [B, kv_heads, past, head_dim] -> ``logits`` and
  ``present.{i}.key|value``. A present buffer may be the same memory as the past one (onnxruntime then appends in
  place); the runtime does that with I/O binding.

Per layer: SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization (norm + residual add in one kernel), one
packed q|k|v projection, GroupQueryAttention (rotary embedding, causal mask, grouped KV heads and the KV-cache append
in one kernel), o_proj, a packed gate|up projection, SiLU, down_proj. Linear layers are MatMul (fp32) or MatMulNBits
(4- or 8-bit blocks, int8 activations inside the kernel: accuracy_level 4; 4-bit ones carry a per-block offset
correction in extra columns, see ``_Graph.linear``). lm_head is untied from the embedding.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgemm.export import nbits

OPSET = 17
MS = "com.microsoft"
BLOCK = 32
# Bits per quantization: (linear layers, embedding and lm_head). None = fp32, or for "gguf" the bits of the source's
# own blocks (the weights arrive packed, see gguf_blocks). "int4-mixed" keeps some linear layers in 8 bits
# (see mixed_precision).
SCHEMES = {"fp32": (None, None), "int8": (8, 8), "int4": (4, 8), "int4-mixed": (4, 8), "gguf": (None, None)}
# Initializers of at least this many bytes go to the side file, as onnx.save_model(save_as_external_data=True) puts
# them (it compares sys.getsizeof of their bytes with 1024): a graph written as it is built is the same file.
EXTERNAL_MIN_BYTES = 1024 - sys.getsizeof(b"")


@dataclass
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_eps: float
    max_positions: int
    attention_bias: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


Weight = np.ndarray | nbits.Packed  # float32 [out, in], or blocks already quantized (a GGUF source's own)


@dataclass
class DecoderWeights:
    """Hugging Face layout (linear weights are [out, in]): float32 numpy arrays, except that the embedding, lm_head
    and linear weights may be packed blocks taken as they are from a quantized source."""

    embed: Weight  # [V, D]
    lm_head: Weight  # [V, D]
    final_norm: np.ndarray
    # keys: input_norm, post_norm, q, k, v, o, gate, up, down, (q_bias, k_bias, v_bias); read once, in order
    layers: Sequence[dict[str, Weight]]
    cos: np.ndarray  # [max_positions, head_dim / 2]
    sin: np.ndarray


def more_bits(layer: int, layers: int) -> bool:
    """The layers whose ``down`` projection keeps 8 bits in int4-mixed: the first and last eighth, and every third
    in between (the layers llama.cpp's Q4_K_M gives 6-bit ffn_down)."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def mixed_precision(w: DecoderWeights) -> DecoderWeights:
    """int4-mixed: ``v`` in every layer and ``down`` in the more_bits layers as 8-bit blocks, every other linear
    weight as clip-searched 4-bit blocks (see nbits). The values projection and the MLP output are where 4-bit
    rounding costs most (Q4_K_M's choice)."""
    n = len(w.layers)
    layers = []
    for i, lw in enumerate(w.layers):
        eight = {"v", *(["down"] if more_bits(i, n) else [])}
        packed = {}
        for k in ("q", "k", "v", "o", "gate", "up", "down"):
            if isinstance(lw[k], np.ndarray):
                packed[k] = (
                    nbits.quantize(lw[k], 8, BLOCK) if k in eight else nbits.quantize(lw[k], 4, BLOCK, clip=True)
                )
        layers.append({**lw, **packed})
    return replace(w, layers=layers)


class ExternalData:
    """The side file ``NAME.onnx.data`` of a graph, written while the graph is built: each large initializer goes to
    disk as it is made and the graph keeps only its offset, so no graph is ever held in memory whole (the fp32
    decoder of a 1.5B model is 7 GB). Tensors follow each other unpadded, in the order they are made."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "wb")  # noqa: SIM115 (closed by close(), or by the with block)
        self.offset = 0

    def write(self, name: str, array: np.ndarray) -> TensorProto:
        """``array`` (C-contiguous) appended to the file; the initializer that points at it."""
        array.tofile(self.file)
        tensor = TensorProto(
            name=name,
            dims=array.shape,
            data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
            data_location=TensorProto.EXTERNAL,
        )
        for key, value in (("location", self.path.name), ("offset", self.offset), ("length", array.nbytes)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        self.offset += array.nbytes
        return tensor

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> ExternalData:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _Graph:
    """A small helper that names nodes and collects initializers: in memory, or (with ``data``) the large ones
    written to the graph's side file as they are made."""

    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    names: set = field(default_factory=set)  # initializer names
    count: int = 0
    data: ExternalData | None = None

    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs) -> list[str]:
        self.count += 1
        name = f"{op}_{self.count}"
        outs = [f"{name}/out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs

    def const(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        if self.data is not None and array.nbytes >= EXTERNAL_MIN_BYTES:
            self.inits.append(self.data.write(name, array))
        else:
            self.inits.append(numpy_helper.from_array(array, name))
        self.names.add(name)
        return name

    def linear(self, x: str, w: Weight, name: str, bits: int | None, bias: np.ndarray | None = None) -> str:
        """y = x @ w.T (+ bias) for w [N, K]: float (quantized here to ``bits``; None keeps fp32) or already packed
        blocks (a GGUF source's own, see gguf_blocks)."""
        if isinstance(w, np.ndarray) and bits is None:
            (y,) = self.node("MatMul", [x, self.const(f"{name}.weight", w.T.astype(np.float32, order="C"))])
        else:
            p = w if isinstance(w, nbits.Packed) else nbits.quantize(w, bits, BLOCK)
            if p.offsets is not None and p.k % BLOCK == 0:
                # Add back each block's mean error (see nbits) inside the same kernel. The input gains the sums of
                # its blocks of 32, the weight gains matching columns holding the offsets:
                # [x, blocksum(x)] @ [W_q, offsets].T = x @ W_q.T + blocksum(x) @ offsets.T
                blocks = p.k // BLOCK
                width = -(-blocks // BLOCK) * BLOCK  # the sums padded to whole blocks
                if f"blocksum.{p.k}" not in self.names:
                    indicator = np.zeros((p.k, width), np.float32)
                    indicator[np.arange(p.k), np.arange(p.k) // BLOCK] = 1.0
                    self.const(f"blocksum.{p.k}", indicator)
                (sums,) = self.node("MatMul", [x, f"blocksum.{p.k}"])
                (x,) = self.node("Concat", [x, sums], axis=-1)
                offsets = np.zeros((p.n, width), np.float32)
                offsets[:, :blocks] = p.offsets
                # min/max, no clip search: nothing corrects the offsets' own mean error, which the search trades away
                p = nbits.join_columns(p, nbits.quantize(offsets, p.bits, p.block, clip=False))
            inputs = [x, self.const(f"{name}.qweight", p.codes), self.const(f"{name}.scales", p.scales)]
            if p.zero_points is not None:
                inputs.append(self.const(f"{name}.zero_points", p.zero_points))
            (y,) = self.node(
                "MatMulNBits", inputs, domain=MS, K=p.k, N=p.n, bits=p.bits, block_size=p.block, accuracy_level=4
            )
        if bias is not None:
            (y,) = self.node("Add", [y, self.const(f"{name}.bias", bias.astype(np.float32))])
        return y

    def stacked_linear(
        self, x: str, parts: list[Weight], name: str, bits: int | None, bias: np.ndarray | None = None
    ) -> str:
        """y = x @ [parts stacked along N].T (+ bias): one node when the parts share a format (all float, or packed
        with the same bits and block size), else one node each, concatenated, so that no part is widened to another's
        format (a K-quant file may store v in Q6_K beside a Q4_K q and k, or keep a small weight unquantized)."""
        formats = {(p.bits, p.block) if isinstance(p, nbits.Packed) else None for p in parts}
        if len(formats) == 1:
            return self.linear(x, _stack(parts), name, bits, bias)
        outs = [self.linear(x, part, f"{name}.{i}", bits) for i, part in enumerate(parts)]
        (y,) = self.node("Concat", outs, axis=-1)
        if bias is not None:
            (y,) = self.node("Add", [y, self.const(f"{name}.bias", bias.astype(np.float32))])
        return y


def _stack(parts: list[Weight]) -> Weight:
    """Weights stacked along N (q|k|v, gate|up) into one."""
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts, axis=0)
    return nbits.join_rows(parts)


def _model(g: _Graph, inputs, outputs, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)])
    model.ir_version = 9
    return model


def build_embed(
    cfg: DecoderConfig, w: DecoderWeights, bits: int | None, data: ExternalData | None = None
) -> onnx.ModelProto:
    """``data``: write the large initializers there as they are made (see ExternalData); else all in memory."""
    g = _Graph(data=data)
    ids = "input_ids"
    if bits is None and isinstance(w.embed, np.ndarray):
        g.node("Gather", [g.const("embed.weight", w.embed.astype(np.float32)), ids])
    else:
        # Gather the rows' codes and block scales, then dequantize only the gathered rows.
        p = w.embed if isinstance(w.embed, nbits.Packed) else nbits.quantize(w.embed, bits, BLOCK)
        codes = nbits.unpack(p.codes, p.bits).reshape(p.n, -1)  # one byte per value
        (codes,) = g.node("Gather", [g.const("embed.codes", codes), ids])
        (scales,) = g.node("Gather", [g.const("embed.scales", p.scales.reshape(p.n, p.blocks, 1)), ids])
        (x,) = g.node("Cast", [codes], to=TensorProto.FLOAT)
        (x,) = g.node("Reshape", [x, g.const("embed.block_shape", np.array([0, 0, p.blocks, p.block], np.int64))])
        if p.zero_points is None and p.offsets is None:
            (x,) = g.node("Sub", [x, g.const("embed.zero", np.array(1 << (p.bits - 1), np.float32))])
            (x,) = g.node("Mul", [x, scales])
        else:
            # value = code * scale - minimum, minimum = zero * scale - offset (per block)
            offsets = np.zeros((p.n, p.blocks), np.float32)
            if p.offsets is not None:
                offsets = np.repeat(p.offsets, nbits.OFFSET_BLOCK // p.block, axis=1)[:, : p.blocks]
            minimums = p.zeros() * p.scales.reshape(p.n, -1) - offsets
            (minimums,) = g.node("Gather", [g.const("embed.minimums", minimums[..., None].astype(np.float32)), ids])
            (x,) = g.node("Mul", [x, scales])
            (x,) = g.node("Sub", [x, minimums])
        g.node("Reshape", [x, g.const("embed.out_shape", np.array([0, 0, -1], np.int64))])
    g.nodes[-1].output[0] = "inputs_embeds"
    inputs = [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", cfg.hidden_size])]
    return _model(g, inputs, outputs, "embed")


def build_decoder(
    cfg: DecoderConfig, w: DecoderWeights, bits: int | None, lm_bits: int | None, data: ExternalData | None = None
) -> onnx.ModelProto:
    """``data`` as for build_embed."""
    g = _Graph(data=data)
    d, hd, kvh = cfg.hidden_size, cfg.head_dim, cfg.num_kv_heads
    eps = float(cfg.rms_eps)

    # seqlens_k = tokens seen - 1 (per batch row), total_sequence_length = attention mask width.
    (mask_sum,) = g.node("ReduceSum", ["attention_mask", g.const("axis1", np.array([1], np.int64))], keepdims=0)
    (last,) = g.node("Sub", [mask_sum, g.const("one64", np.array(1, np.int64))])
    (seqlens_k,) = g.node("Cast", [last], to=TensorProto.INT32)
    (mask_shape,) = g.node("Shape", ["attention_mask"])
    (total,) = g.node("Gather", [mask_shape, g.const("one_idx", np.array(1, np.int64))], axis=0)
    (total,) = g.node("Cast", [total], to=TensorProto.INT32)
    cos = g.const("rotary.cos", w.cos.astype(np.float32))
    sin = g.const("rotary.sin", w.sin.astype(np.float32))

    def norm(x: str, residual: str | None, name: str, weight: np.ndarray) -> tuple[str, str]:
        """RMSNorm of ``x + residual`` in one kernel -> (normed, the new residual). The first has no residual."""
        if residual is None:
            (h,) = g.node("SimplifiedLayerNormalization", [x, g.const(name, weight)], epsilon=eps)
            return h, x
        h, _, _, total = g.node(
            "SkipSimplifiedLayerNormalization", [x, residual, g.const(name, weight)], n_out=4, domain=MS, epsilon=eps
        )
        return h, total

    x, residual = "inputs_embeds", None
    outputs = []
    for i, lw in enumerate(w.layers):
        p = f"layers.{i}"
        h, residual = norm(x, residual, f"{p}.input_norm", lw["input_norm"])
        qkv_b = np.concatenate([lw["q_bias"], lw["k_bias"], lw["v_bias"]]) if cfg.attention_bias else None
        qkv = g.stacked_linear(h, [lw["q"], lw["k"], lw["v"]], f"{p}.qkv_proj", bits, qkv_b)
        attn, present_k, present_v = g.node(
            "GroupQueryAttention",
            [qkv, "", "", f"past.{i}.key", f"past.{i}.value", seqlens_k, total, cos, sin],
            n_out=3,
            domain=MS,
            num_heads=cfg.num_heads,
            kv_num_heads=kvh,
            do_rotary=1,
            rotary_interleaved=0,
            scale=float(hd**-0.5),
        )
        g.nodes[-1].output[1:] = [f"present.{i}.key", f"present.{i}.value"]
        outputs += [f"present.{i}.key", f"present.{i}.value"]
        x = g.linear(attn, lw["o"], f"{p}.o_proj", bits)
        h, residual = norm(x, residual, f"{p}.post_norm", lw["post_norm"])
        gate_up = g.stacked_linear(h, [lw["gate"], lw["up"]], f"{p}.gate_up_proj", bits)
        i_size = cfg.intermediate_size
        gate, up = g.node("Split", [gate_up, g.const(f"{p}.split", np.array([i_size, i_size], np.int64))], 2, axis=-1)
        (sig,) = g.node("Sigmoid", [gate])
        (act,) = g.node("Mul", [gate, sig])
        (act,) = g.node("Mul", [act, up])
        x = g.linear(act, lw["down"], f"{p}.down_proj", bits)

    h, _ = norm(x, residual, "final_norm", w.final_norm)
    # Keep the last `logits_to_keep` positions (0 keeps all): generation needs only the last one.
    (neg,) = g.node("Neg", ["logits_to_keep"])
    (start,) = g.node("Unsqueeze", [neg, g.const("axis0", np.array([0], np.int64))])
    big = g.const("int_max", np.array([np.iinfo(np.int64).max], np.int64))
    (h,) = g.node("Slice", [h, start, big, g.const("axis1_slice", np.array([1], np.int64))])
    g.linear(h, w.lm_head, "lm_head", lm_bits)
    g.nodes[-1].output[0] = "logits"

    t = TensorProto.FLOAT
    kv_shape = ["batch", kvh, "past", hd]
    inputs = [
        helper.make_tensor_value_info("inputs_embeds", t, ["batch", "seq", d]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
        helper.make_tensor_value_info("logits_to_keep", TensorProto.INT64, []),
    ]
    for i in range(cfg.num_layers):
        inputs += [helper.make_tensor_value_info(f"past.{i}.{kv}", t, kv_shape) for kv in ("key", "value")]
    outs = [helper.make_tensor_value_info("logits", t, ["batch", "kept", cfg.vocab_size])]
    outs += [helper.make_tensor_value_info(name, t, ["batch", kvh, "present", hd]) for name in outputs]
    return _model(g, inputs, outs, "decoder")


def write_graph(path: Path, build: Callable[[ExternalData], onnx.ModelProto]) -> None:
    """The graph ``build(data)`` makes, saved as ``path`` with its weights in a side file ``NAME.onnx.data`` written
    while it is built (see ExternalData). onnxruntime maps that file instead of copying the weights out of the
    protobuf (SmolLM2-135M int4: 256 instead of 308 MB resident), and graphs may pass protobuf's 2 GB limit."""
    path = Path(path)
    with ExternalData(path.with_name(f"{path.name}.data")) as data:
        model = build(data)
    onnx.save_model(model, str(path))
