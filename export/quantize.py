"""8-bit weight quantization of exported graphs, verified by structure and size.

Recipe: onnxruntime dynamic quantization of every MatMul whose weight is an initializer (8-bit weights with
one scale and zero point per output channel; activations quantized to uint8 at run time). Convolutions stay fp32.
A weight that is shared with a Gather (the tied embedding of the Whisper decoder) keeps no fp32 copy: the Gather reads
an 8-bit copy of its own, one row per index, from a memory-mapped external data file, then a DequantizeLinear.

Weights are unsigned (uint8 x uint8 products). With signed weights, onnxruntime's x86 kernels on CPUs without VNNI
(AVX2 only) add pairs of uint8 x int8 products in 16 bits, which saturates: Whisper tiny.en's dev-clip WER was
0.136 there against 0.097 on an AVX-512 VNNI CPU (fp32 0.078). Unsigned weights do not saturate on either: 0.078
on the AVX2 CPU, as fast. Per-channel scales measured better than per-tensor (0.097 vs 0.107 with signed weights).
The same bundle reads 0.107 on an AMD Zen 4 CPU (AVX-512 VNNI too): 103 words hold near ties that flip between
kernels ("cold-hearted" / "coldhearted"). Teacher-forced along fp32's tokens, int8 picks fp32's next token 142 times in
144 (mean KL 0.0023). MatMulNBits with 8-bit blocks of 32 for every MatMul (activations quantized per block too) got
144 of 144 (KL 0.0006) but transcribed ~15% slower on that CPU; not adopted.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from edgemm.export.errors import ExportError

log = logging.getLogger(__name__)

RECIPE = {
    "method": "onnxruntime.quantization.quantize_dynamic",
    "op_types": ["MatMul"],
    "weight_type": "uint8 (no 16-bit saturation on CPUs without VNNI)",
    "activations": "uint8, dynamic per tensor",
    "per_channel": True,
    "tied_embedding": "Gather on its own row-major int8 copy (external data, memory-mapped) + DequantizeLinear",
}


class QuantizationError(ExportError):
    """The quantized graph is not what the recipe promises."""


def _float_matmul_weights(model: onnx.ModelProto) -> dict[str, int]:
    """MatMul weights still stored as float initializers: name -> bytes."""
    inits = {i.name: i for i in model.graph.initializer}
    weights = {}
    for node in model.graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if init is not None and init.data_type == onnx.TensorProto.FLOAT and len(init.dims) == 2:
            weights[init.name] = 4 * init.dims[0] * init.dims[1]
    return weights


def _gather_own_rows(model: onnx.ModelProto, dst: Path) -> int:
    """Point Gathers of a float matrix at an 8-bit copy of it, row per gathered index, in external data beside
    ``dst``, followed by a DequantizeLinear; drop the float matrix. Returns the bytes written beside ``dst``.

    The MatMul that shares the matrix (the Whisper decoder's tied embedding and output projection) keeps its own 8-bit
    copy, ``<name>_quantized``, which onnxruntime prepacks and then frees. The Gather's copy is a memory-mapped file
    of which only the rows of the tokens seen become resident: Whisper tiny's decoder holds 42 instead of 61 MB, for
    20 MB more on disk. (Gathering from the MatMul's copy kept both in memory, and in its [D, V] layout one token
    touches a page of every one of its D rows.)"""
    inits = {i.name: i for i in model.graph.initializer}
    location = f"{dst.name}.data"
    (dst.parent / location).unlink(missing_ok=True)
    offset = 0
    for node in list(model.graph.node):
        if node.op_type != "Gather" or f"{node.input[0]}_quantized" not in inits:
            continue
        name, axis = node.input[0], next((a.i for a in node.attribute if a.name == "axis"), 0)
        if axis not in (0, 1) or len(inits[name].dims) != 2:
            raise QuantizationError(
                f"{dst.name}: Gather {node.name} on a {len(inits[name].dims)}-D matrix, axis {axis}"
            )
        quantized = numpy_helper.to_array(inits[f"{name}_quantized"])
        rows = numpy_helper.from_array(np.ascontiguousarray(quantized if axis == 0 else quantized.T), f"{name}_rows")
        with open(dst.parent / location, "ab") as f:
            f.write(rows.raw_data)
        external_data_helper.set_external_data(rows, location, offset=offset, length=len(rows.raw_data))
        offset += len(rows.raw_data)
        rows.ClearField("raw_data")
        rows.data_location = onnx.TensorProto.EXTERNAL
        model.graph.initializer.append(rows)

        gathered = f"{node.output[0]}_int8"
        scale, zero_point = f"{name}_scale", f"{name}_zero_point"
        new_nodes = []
        per_row = len(inits[scale].dims) == 1 and inits[scale].dims[0] > 1
        if per_row:  # one scale per gathered index: gather the scales too
            for q in (scale, zero_point):
                new_nodes.append(helper.make_node("Gather", [q, node.input[1]], [f"{q}_{node.name}"], axis=0))
            scale, zero_point = f"{scale}_{node.name}", f"{zero_point}_{node.name}"
        dequantized = node.output[0] if axis == 0 else f"{node.output[0]}_rows"
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [gathered, scale, zero_point],
                [dequantized],
                name=f"{node.name}_dequantize",
                **({"axis": 0} if per_row else {}),
            )
        )
        if axis == 1:  # [N, D] rows back to the [D, N] columns the graph gathered (1-D indices)
            new_nodes.append(helper.make_node("Transpose", [dequantized], [node.output[0]], perm=[1, 0]))
        node.input[0], node.output[0] = rows.name, gathered
        del node.attribute[:]  # axis 0, the default
        position = list(model.graph.node).index(node)
        for step, extra in enumerate(new_nodes, start=1):
            model.graph.node.insert(position + step, extra)
        log.debug("%s: Gather %s now reads %s rows from %s", dst.name, node.name, rows.name, location)
    still_used = {i for n in model.graph.node for i in n.input}
    for init in list(model.graph.initializer):
        if init.name not in still_used:
            model.graph.initializer.remove(init)
    return offset


def _float_bytes(graph: onnx.GraphProto) -> int:
    """Bytes of float initializers in ``graph`` and every subgraph (If / Loop bodies)."""
    total = sum(4 * math.prod(i.dims) for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    for node in graph.node:
        for attribute in node.attribute:
            total += sum(_float_bytes(g) for g in [attribute.g] if attribute.HasField("g"))
            total += sum(_float_bytes(g) for g in attribute.graphs)
    return total


def quantize_int8(src: Path, dst: Path) -> dict:
    """Quantize ``src`` into ``dst``; return a report (sizes, ratio). Raises if any MatMul stayed float."""
    source = onnx.load(str(src))
    matmul_bytes, float_before = sum(_float_matmul_weights(source).values()), _float_bytes(source.graph)
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=["MatMul"],
        weight_type=QuantType.QUInt8,
        per_channel=True,
    )
    model = onnx.load(str(dst))
    external_bytes = _gather_own_rows(model, dst)
    onnx.save(model, str(dst))
    left = _float_matmul_weights(model)
    if left:
        raise QuantizationError(f"{dst.name}: {len(left)} MatMul weights stayed float: {list(left)[:5]}")
    quantized = sum(1 for n in model.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul"))
    # The MatMul weights left float32 for 8 bits (plus a float scale per output channel): the float bytes of the
    # whole graph, subgraphs included (where quantize_dynamic can silently do nothing), must drop by at least
    # half of them.
    float_after = _float_bytes(model.graph)
    if quantized == 0 or float_before - float_after < 0.5 * matmul_bytes:
        raise QuantizationError(
            f"{dst.name}: {quantized} quantized MatMuls, float weights {float_before} -> {float_after} bytes "
            f"({matmul_bytes} bytes of MatMul weights)"
        )
    size = os.path.getsize(dst) + external_bytes
    return {"bytes_fp32": os.path.getsize(src), "bytes_int8": size, "quantized_matmuls": quantized}
