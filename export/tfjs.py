"""TF.js graph models (``model.json`` + weight shards) -> ONNX, for the op set of the detectors we ship.

A TF.js graph model is a TensorFlow GraphDef written as JSON, its constants stored in ``.bin`` shards described by a
weights manifest (float32, possibly stored as float16 or as 8/16-bit affine codes). The tf2onnx route needs all of
TensorFlow; these graphs use about fifteen plain ops, so they are mapped one by one here:

- tensors keep TensorFlow's layout (NHWC); ``Conv2D``, ``MaxPool`` and ``ResizeBilinear`` transpose to NCHW around
  the ONNX op and back, and onnxruntime's optimizer removes the transposes that cancel;
- a node whose inputs are all constants is computed here with numpy (shape arithmetic, ``SparseToDense`` of a
  constant, casts), so the ONNX graph holds only the network itself.

Any other op stops the conversion with its name. The converted graph is checked against TF.js itself by the export
(:mod:`edgemm.export.detector`), so a wrong mapping cannot go unnoticed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgemm.export.errors import ExportError

OPSET = 17
NUMPY_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
STORED_DTYPES = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}
TF_DTYPES = {"DT_FLOAT": np.float32, "DT_INT32": np.int32, "DT_INT64": np.int64, "DT_BOOL": np.bool_}
NHWC_TO_NCHW, NCHW_TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


@dataclass
class TfjsGraph:
    nodes: list[dict]  # the GraphDef's nodes, in file order
    weights: dict[str, np.ndarray]  # constant name -> value
    inputs: dict[str, list[int]]  # placeholder name -> shape
    outputs: list[str]  # signature outputs, e.g. "Identity_2:0"
    output_shapes: dict[str, list[int]]  # their shapes, as the signature gives them


def read_graph(model_json: Path) -> TfjsGraph:
    """The graph and its constants, decoded from the weight shards next to ``model_json``."""
    model_json = Path(model_json)
    try:
        model = json.loads(model_json.read_text())
        nodes = model["modelTopology"]["node"]
        groups = model["weightsManifest"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{model_json} is not a TF.js graph model ({e})") from None
    weights = {}
    for group in groups:
        data = b"".join((model_json.parent / name).read_bytes() for name in group["paths"])
        offset = 0
        for spec in group["weights"]:
            value, offset = _decode_weight(spec, data, offset)
            weights[spec["name"]] = value
        if offset != len(data):
            raise ExportError(f"{model_json}: the weight shards hold {len(data)} bytes, the manifest {offset}")
    inputs = {}
    for node in nodes:
        if node["op"] == "Placeholder":
            dims = node["attr"]["shape"]["shape"]["dim"]
            inputs[node["name"]] = [int(d["size"]) for d in dims]
    signature = model.get("signature", {}).get("outputs", {})
    if not signature:
        raise ExportError(f"{model_json}: no outputs in its signature")
    shapes = {name: [int(d["size"]) for d in out["tensorShape"]["dim"]] for name, out in signature.items()}
    return TfjsGraph(nodes, weights, inputs, list(signature), shapes)


def _decode_weight(spec: dict, data: bytes, offset: int) -> tuple[np.ndarray, int]:
    shape, dtype = spec["shape"], spec["dtype"]
    if dtype not in NUMPY_DTYPES:
        raise ExportError(f"weight {spec['name']}: unsupported dtype {dtype}")
    quant = spec.get("quantization")
    stored = STORED_DTYPES[quant["dtype"]] if quant else NUMPY_DTYPES[dtype]
    count = int(np.prod(shape))
    size = count * np.dtype(stored).itemsize
    raw = np.frombuffer(data, stored, count, offset)
    if quant and quant["dtype"] in ("uint8", "uint16"):
        raw = raw * np.float32(quant["scale"]) + np.float32(quant["min"])
    return raw.astype(NUMPY_DTYPES[dtype]).reshape(shape), offset + size


def _tensor_name(ref: str) -> str:
    """A node input ("conv", "split:1") as the output it names ("conv:0", "split:1")."""
    return ref if ":" in ref else f"{ref}:0"


def _attr(node: dict, key: str, default=None):
    value = node.get("attr", {}).get(key)
    if value is None:
        return default
    if "list" in value:
        return [int(i) for i in value["list"].get("i", [])]
    if "s" in value:
        return base64.b64decode(value["s"]).decode()
    if "b" in value:
        return bool(value["b"])
    if "f" in value:
        return float(value["f"])
    if "i" in value:
        return int(value["i"])
    if "type" in value:
        return TF_DTYPES.get(value["type"])
    return default


class _Converter:
    def __init__(self, graph: TfjsGraph):
        self.graph = graph
        self.constants: dict[str, np.ndarray] = {}  # tensor name -> value, for folding
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}

    def const(self, name: str) -> np.ndarray:
        if name not in self.constants:
            raise ExportError(f"{name} must be a constant for this converter")
        return self.constants[name]

    def value(self, name: str) -> str:
        """An ONNX tensor name for ``name``, adding an initializer when it is a constant."""
        if name in self.constants and name not in self.initializers:
            self.initializers[name] = self.constants[name]
        return name

    def emit(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0], **attrs))

    def transposed(self, name: str, perm: list[int]) -> str:
        out = f"{name}/{''.join(map(str, perm))}"
        self.emit("Transpose", [self.value(name)], [out], perm=perm)
        return out

    def add_initializer(self, name: str, value: np.ndarray) -> str:
        self.initializers[name] = value
        return name

    def convert(self, names: dict[str, str]) -> onnx.ModelProto:
        for node in self.graph.nodes:
            self.node(node)
        inputs = [
            helper.make_tensor_value_info(f"{name}:0", TensorProto.FLOAT, shape)
            for name, shape in self.graph.inputs.items()
        ]
        outputs = []
        for name in self.graph.outputs:
            self.emit("Identity", [self.value(name)], [names[name]])
            outputs.append(helper.make_tensor_value_info(names[name], TensorProto.FLOAT, None))
        graph = helper.make_graph(
            self.nodes,
            "tfjs",
            inputs,
            outputs,
            [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in self.initializers.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        return model

    def node(self, node: dict) -> None:
        op, name = node["op"], node["name"]
        ins = [_tensor_name(i) for i in node.get("input", []) if not i.startswith("^")]
        out = f"{name}:0"
        if op == "Const":
            if name not in self.graph.weights:
                raise ExportError(f"constant {name} has no value in the weight shards")
            self.constants[out] = self.graph.weights[name]
            return
        if op == "Placeholder":
            return
        if ins and all(i in self.constants for i in ins) and op in FOLD:
            self.constants[out] = np.asarray(FOLD[op](node, *[self.constants[i] for i in ins]))
            return
        handler = OPS.get(op)
        if handler is None:
            raise ExportError(f"TF.js op {op} (node {name}) is not supported by this converter")
        handler(self, node, ins, out)


# ---- constant folding (numpy) ----


def _sparse_to_dense(node, indices, shape, values, default):
    dense = np.full(shape, default, dtype=np.asarray(values).dtype)
    indices = np.asarray(indices).reshape(-1, max(1, dense.ndim))
    if indices.size:
        dense[tuple(indices.T)] = values
    return dense


FOLD = {
    "Identity": lambda node, x: x,
    "Cast": lambda node, x: x.astype(_attr(node, "DstT", np.float32)),
    "Add": lambda node, a, b: a + b,
    "AddV2": lambda node, a, b: a + b,
    "Sub": lambda node, a, b: a - b,
    "Mul": lambda node, a, b: a * b,
    "SparseToDense": _sparse_to_dense,
    "Reshape": lambda node, x, shape: x.reshape(shape),
    "ConcatV2": lambda node, *xs: np.concatenate(xs[:-1], axis=int(xs[-1])),
}


# ---- ops (TensorFlow semantics, NHWC) ----


def _binary(onnx_op):
    def handler(c: _Converter, node, ins, out):
        c.emit(onnx_op, [c.value(i) for i in ins], [out])

    return handler


def _unary(onnx_op, **attrs):
    def handler(c: _Converter, node, ins, out):
        c.emit(onnx_op, [c.value(ins[0])], [out], **attrs)

    return handler


def _leaky_relu(c, node, ins, out):
    c.emit("LeakyRelu", [c.value(ins[0])], [out], alpha=_attr(node, "alpha", 0.2))


def _transpose(c, node, ins, out):
    c.emit("Transpose", [c.value(ins[0])], [out], perm=[int(p) for p in c.const(ins[1])])


def _pad(c, node, ins, out):
    pads = c.const(ins[1]).astype(np.int64)  # [rank, 2]: (before, after) per axis
    inputs = [c.value(ins[0]), c.add_initializer(f"{out}/pads", np.concatenate([pads[:, 0], pads[:, 1]]))]
    if node["op"] == "PadV2":
        inputs.append(c.add_initializer(f"{out}/value", c.const(ins[2]).astype(np.float32).reshape(())))
    c.emit("Pad", inputs, [out], mode="constant")


def _check_nhwc(node):
    if _attr(node, "data_format", "NHWC") != "NHWC":
        raise ExportError(f"{node['name']}: only NHWC {node['op']} is supported")
    if _attr(node, "padding") == "EXPLICIT":
        raise ExportError(f"{node['name']}: explicit padding is not supported")


def _spatial(values: list[int]) -> list[int]:
    return list(values[1:3])  # NHWC attribute lists: [1, h, w, 1]


def _conv2d(c, node, ins, out):
    _check_nhwc(node)
    kernel = c.const(ins[1])  # [h, w, in, out]
    weight = c.add_initializer(f"{out}/weight", np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    attrs = {"strides": _spatial(_attr(node, "strides")), "dilations": _spatial(_attr(node, "dilations", [1, 1, 1, 1]))}
    attrs["auto_pad"] = "SAME_UPPER" if _attr(node, "padding") == "SAME" else "VALID"
    nchw = f"{out}/nchw"
    c.emit("Conv", [c.transposed(ins[0], NHWC_TO_NCHW), weight], [nchw], **attrs)
    c.emit("Transpose", [nchw], [out], perm=NCHW_TO_NHWC)


def _max_pool(c, node, ins, out):
    _check_nhwc(node)
    attrs = {"kernel_shape": _spatial(_attr(node, "ksize")), "strides": _spatial(_attr(node, "strides"))}
    attrs["auto_pad"] = "SAME_UPPER" if _attr(node, "padding") == "SAME" else "VALID"
    nchw = f"{out}/nchw"
    c.emit("MaxPool", [c.transposed(ins[0], NHWC_TO_NCHW)], [nchw], **attrs)
    c.emit("Transpose", [nchw], [out], perm=NCHW_TO_NHWC)


def _resize_bilinear(c, node, ins, out):
    size = c.const(ins[1]).astype(np.int64)
    if _attr(node, "align_corners", False):
        mode = "align_corners"
    elif _attr(node, "half_pixel_centers", False):
        mode = "half_pixel"
    else:
        mode = "asymmetric"
    x = c.transposed(ins[0], NHWC_TO_NCHW)
    shape = f"{out}/shape"
    c.emit("Shape", [x], [shape], start=0, end=2)
    sizes = f"{out}/sizes"
    c.emit("Concat", [shape, c.add_initializer(f"{out}/hw", size)], [sizes], axis=0)
    nchw = f"{out}/nchw"
    c.emit("Resize", [x, "", "", sizes], [nchw], mode="linear", coordinate_transformation_mode=mode)
    c.emit("Transpose", [nchw], [out], perm=NCHW_TO_NHWC)


def _concat(c, node, ins, out):
    axis = int(c.const(ins[-1]))
    c.emit("Concat", [c.value(i) for i in ins[:-1]], [out], axis=axis)


def _reshape(c, node, ins, out):
    shape = c.add_initializer(f"{out}/shape", c.const(ins[1]).astype(np.int64))
    c.emit("Reshape", [c.value(ins[0]), shape], [out])


def _split_v(c, node, ins, out):
    sizes, axis = c.const(ins[1]).astype(np.int64), int(c.const(ins[2]))
    if (sizes < 0).any():
        raise ExportError(f"{node['name']}: SplitV with an inferred size is not supported")
    outs = [f"{node['name']}:{i}" for i in range(len(sizes))]
    c.emit("Split", [c.value(ins[0]), c.add_initializer(f"{out}/sizes", sizes)], outs, axis=axis)


OPS = {
    "Identity": _unary("Identity"),
    "Sigmoid": _unary("Sigmoid"),
    "Relu": _unary("Relu"),
    "Add": _binary("Add"),
    "AddV2": _binary("Add"),
    "Sub": _binary("Sub"),
    "Mul": _binary("Mul"),
    "LeakyRelu": _leaky_relu,
    "Transpose": _transpose,
    "Pad": _pad,
    "PadV2": _pad,
    "Conv2D": _conv2d,
    "MaxPool": _max_pool,
    "ResizeBilinear": _resize_bilinear,
    "ConcatV2": _concat,
    "Reshape": _reshape,
    "SplitV": _split_v,
}


def convert(graph: TfjsGraph, names: dict[str, str] | None = None) -> onnx.ModelProto:
    """The ONNX model of a TF.js graph: inputs named as its placeholders (``input_1:0``), outputs as ``names`` maps
    the signature's (default: ``output_0..n`` in the signature's order)."""
    names = names or {name: f"output_{i}" for i, name in enumerate(graph.outputs)}
    if sorted(names) != sorted(graph.outputs):
        raise ExportError(f"output names {sorted(names)} do not match the graph's outputs {sorted(graph.outputs)}")
    return _Converter(graph).convert(names)
