"""TFLite flatbuffers -> ONNX, for the op set of openWakeWord's models (melspectrogram, embedding, classifiers).

The three kinds of graph use about twenty plain float32 ops, so they are mapped one by one from the flatbuffer (read
with the ``tflite`` package) instead of going through TensorFlow:

- tensors keep TFLite's layout (NHWC); ``CONV_2D`` and ``MAX_POOL_2D`` transpose to NCHW around the ONNX op and
  back, and onnxruntime's optimizer removes the transposes that cancel;
- the one ``IF`` (hey_jarvis's second-stage classifier, run when the first says >= 0.5) becomes both branches and a
  ``Where`` on the condition: the same numbers, a few more multiply-adds;
- input sizes that TFLite leaves dynamic (the melspectrogram's sample count) stay dynamic.

Any other op, or a quantized tensor, stops the conversion with its name; the export then checks every converted
graph against LiteRT on real audio (:mod:`edgemm.export.wake`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgemm.export.errors import ExportError

OPSET = 17
NHWC_TO_NCHW, NCHW_TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
# TFLite TensorType -> numpy
DTYPES = {0: np.float32, 2: np.int32, 4: np.int64, 6: np.bool_}
ONNX_TYPES = {np.float32: TensorProto.FLOAT, np.int32: TensorProto.INT32, np.bool_: TensorProto.BOOL}
ELEMENTWISE = {
    "ADD": "Add",
    "SUB": "Sub",
    "MUL": "Mul",
    "MAXIMUM": "Max",
    "MINIMUM": "Min",
    "LOG": "Log",
    "LOGISTIC": "Sigmoid",
    "GREATER_EQUAL": "GreaterOrEqual",
}
ACTIVATIONS = {0: None, 1: "Relu"}  # TFLite ActivationFunctionType: NONE, RELU (no other appears in these models)


def _op_names() -> dict[int, str]:
    from tflite.BuiltinOperator import BuiltinOperator

    return {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}


class _Converter:
    """One TFLite model's subgraphs written as ONNX nodes into one graph."""

    def __init__(self, model):
        self.model, self.names = model, _op_names()
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.count = 0

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.inits[name] = np.asarray(value)
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attrs) -> str:
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def subgraph(self, index: int, inputs: list[str]) -> list[str]:
        """Write subgraph ``index`` with its inputs bound to the tensor names ``inputs``; return its output names."""
        graph = self.model.Subgraphs(index)
        env = dict(zip((int(t) for t in graph.InputsAsNumpy()), inputs, strict=True))
        for i in range(graph.OperatorsLength()):
            self.operator(graph, graph.Operators(i), env)
        return [env[int(t)] for t in graph.OutputsAsNumpy()]

    def tensor(self, graph, index: int, env: dict) -> str:
        if index in env:
            return env[index]
        value = self.constant(graph, index)
        if value is None:
            raise ExportError(f"tensor {graph.Tensors(index).Name().decode()} is read before it is written")
        env[index] = self.const(value, "w")
        return env[index]

    def constant(self, graph, index: int) -> np.ndarray | None:
        tensor = graph.Tensors(index)
        buffer = self.model.Buffers(tensor.Buffer())
        shape = tensor.ShapeAsNumpy() if tensor.ShapeLength() else []
        if tensor.ShapeLength() and 0 in shape and tensor.Type() in DTYPES:  # an empty constant has no data
            return np.zeros(shape, DTYPES[tensor.Type()])
        if buffer is None or buffer.DataLength() == 0:
            return None
        if tensor.Type() not in DTYPES or (tensor.Quantization() and tensor.Quantization().ScaleLength()):
            raise ExportError(f"tensor {tensor.Name().decode()}: quantized or of type {tensor.Type()}, not supported")
        return np.frombuffer(buffer.DataAsNumpy().tobytes(), DTYPES[tensor.Type()]).reshape(shape)

    def operator(self, graph, op, env: dict) -> None:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        name = self.names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        ins = [int(t) for t in op.InputsAsNumpy()]
        outs = [int(t) for t in op.OutputsAsNumpy()]
        handler = getattr(self, f"op_{name.lower()}", None)
        if name in ELEMENTWISE:
            result = self.node(ELEMENTWISE[name], [self.tensor(graph, t, env) for t in ins], name.lower())
            result = self.activation(result, op, name)
        elif handler is None:
            raise ExportError(f"TFLite op {name} is not supported by the converter")
        else:
            result = handler(graph, op, ins, env)
        for index, value in zip(outs, result if isinstance(result, list) else [result], strict=True):
            env[index] = value

    def options(self, op, cls):
        table = op.BuiltinOptions()
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def activation(self, value: str, op, name: str) -> str:
        """The activation fused into an ADD, SUB or MUL, applied."""
        import tflite

        kind = {"ADD": tflite.AddOptions, "SUB": tflite.SubOptions, "MUL": tflite.MulOptions}.get(name)
        if kind is None or op.BuiltinOptions() is None:
            return value
        return self.fused(value, self.options(op, kind).FusedActivationFunction())

    def fused(self, value: str, function: int) -> str:
        if function not in ACTIVATIONS:
            raise ExportError(f"fused activation {function} is not supported by the converter")
        return self.node(ACTIVATIONS[function], [value], "act") if ACTIVATIONS[function] else value

    def const_input(self, graph, index: int, what: str) -> np.ndarray:
        value = self.constant(graph, index)
        if value is None:
            raise ExportError(f"{what} must be a constant in the TFLite graph")
        return value

    # ---- ops, one method each: (graph, op, input tensor indices, env) -> output name(s)
    def op_reshape(self, graph, op, ins, env):
        shape = self.const_input(graph, ins[1], "RESHAPE's shape").astype(np.int64)
        return self.node("Reshape", [self.tensor(graph, ins[0], env), self.const(shape)], "reshape")

    def op_expand_dims(self, graph, op, ins, env):
        axis = self.const_input(graph, ins[1], "EXPAND_DIMS's axis").astype(np.int64).reshape(1)
        return self.node("Unsqueeze", [self.tensor(graph, ins[0], env), self.const(axis)], "unsqueeze")

    def op_squeeze(self, graph, op, ins, env):
        import tflite

        dims = self.options(op, tflite.SqueezeOptions).SqueezeDimsAsNumpy()
        if isinstance(dims, int) or len(dims) == 0:
            raise ExportError("SQUEEZE without explicit dimensions is not supported")
        axes = self.const(np.asarray(dims, np.int64))
        return self.node("Squeeze", [self.tensor(graph, ins[0], env), axes], "squeeze")

    def op_transpose(self, graph, op, ins, env):
        perm = self.const_input(graph, ins[1], "TRANSPOSE's permutation").tolist()
        return self.node("Transpose", [self.tensor(graph, ins[0], env)], "transpose", perm=perm)

    def op_pad(self, graph, op, ins, env):
        pads = self.const_input(graph, ins[1], "PAD's paddings").astype(np.int64)
        flat = self.const(np.concatenate([pads[:, 0], pads[:, 1]]))
        return self.node("Pad", [self.tensor(graph, ins[0], env), flat], "pad", mode="constant")

    def op_mean(self, graph, op, ins, env):
        return self._reduce(graph, op, ins, env, "ReduceMean")

    def op_reduce_max(self, graph, op, ins, env):
        return self._reduce(graph, op, ins, env, "ReduceMax")

    def _reduce(self, graph, op, ins, env, onnx_op: str):
        import tflite

        axes = self.const_input(graph, ins[1], "a reduction's axes").astype(np.int64).reshape(-1).tolist()
        keep = int(self.options(op, tflite.ReducerOptions).KeepDims())
        # opset 17: ReduceMean and ReduceMax take their axes as an attribute
        return self.node(onnx_op, [self.tensor(graph, ins[0], env)], "reduce", axes=axes, keepdims=keep)

    def op_rsqrt(self, graph, op, ins, env):
        root = self.node("Sqrt", [self.tensor(graph, ins[0], env)], "sqrt")
        return self.node("Reciprocal", [root], "rsqrt")

    def op_leaky_relu(self, graph, op, ins, env):
        import tflite

        alpha = float(self.options(op, tflite.LeakyReluOptions).Alpha())
        return self.node("LeakyRelu", [self.tensor(graph, ins[0], env)], "leaky_relu", alpha=alpha)

    def op_fully_connected(self, graph, op, ins, env):
        import tflite

        opts = self.options(op, tflite.FullyConnectedOptions)
        if opts.KeepNumDims():
            raise ExportError("FULLY_CONNECTED with keep_num_dims is not supported")
        in_features = int(graph.Tensors(ins[1]).ShapeAsNumpy()[1])  # weight [out, in]; a branch gets it as an input
        flat = self.const(np.asarray([-1, in_features], np.int64))
        inputs = [
            self.node("Reshape", [self.tensor(graph, ins[0], env), flat], "fc_in"),
            self.tensor(graph, ins[1], env),
        ]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.tensor(graph, ins[2], env))
        out = self.node("Gemm", inputs, "fc", transB=1)
        return self.fused(out, opts.FusedActivationFunction())

    def op_batch_matmul(self, graph, op, ins, env):
        import tflite

        opts = self.options(op, tflite.BatchMatMulOptions)
        if opts.AdjX() or opts.AdjY():
            raise ExportError("BATCH_MATMUL with adjoint inputs is not supported")
        a, b = (self.tensor(graph, t, env) for t in ins[:2])
        return self.node("MatMul", [a, b], "matmul")

    def op_conv_2d(self, graph, op, ins, env):
        import tflite

        opts = self.options(op, tflite.Conv2DOptions)
        weight = self.const_input(graph, ins[1], "CONV_2D's filter")  # [out, kh, kw, in]
        attrs = {
            "strides": [opts.StrideH(), opts.StrideW()],
            "dilations": [opts.DilationHFactor(), opts.DilationWFactor()],
            "auto_pad": self._padding(opts.Padding()),
            "kernel_shape": list(weight.shape[1:3]),
        }
        x = self.node("Transpose", [self.tensor(graph, ins[0], env)], "nchw", perm=NHWC_TO_NCHW)
        inputs = [x, self.const(weight.transpose(0, 3, 1, 2).copy(), "conv_w")]
        if len(ins) > 2 and ins[2] >= 0:
            inputs.append(self.tensor(graph, ins[2], env))
        y = self.node("Conv", inputs, "conv", **attrs)
        y = self.fused(y, opts.FusedActivationFunction())
        return self.node("Transpose", [y], "nhwc", perm=NCHW_TO_NHWC)

    def op_max_pool_2d(self, graph, op, ins, env):
        import tflite

        opts = self.options(op, tflite.Pool2DOptions)
        attrs = {
            "strides": [opts.StrideH(), opts.StrideW()],
            "kernel_shape": [opts.FilterHeight(), opts.FilterWidth()],
            "auto_pad": self._padding(opts.Padding()),
        }
        x = self.node("Transpose", [self.tensor(graph, ins[0], env)], "nchw", perm=NHWC_TO_NCHW)
        y = self.fused(self.node("MaxPool", [x], "maxpool", **attrs), opts.FusedActivationFunction())
        return self.node("Transpose", [y], "nhwc", perm=NCHW_TO_NHWC)

    @staticmethod
    def _padding(padding: int) -> str:
        return {0: "SAME_UPPER", 1: "VALID"}[padding]  # TFLite Padding: SAME (extra at the end), VALID

    def op_if(self, graph, op, ins, env):
        import tflite

        opts = self.options(op, tflite.IfOptions)
        cond = self.tensor(graph, ins[0], env)
        args = [self.tensor(graph, t, env) for t in ins[1:]]
        then = self.subgraph(opts.ThenSubgraphIndex(), args)
        other = self.subgraph(opts.ElseSubgraphIndex(), args)
        return [self.node("Where", [cond, a, b], "if") for a, b in zip(then, other, strict=True)]


def convert(path: Path, input_name: str, output_name: str, dynamic: dict[int, str] | None = None) -> onnx.ModelProto:
    """``path`` (a .tflite file) as an ONNX model with one input and one output of the given names.

    ``dynamic``: axes of the input left symbolic (axis -> name); the others keep the TFLite shape.
    """
    import tflite

    try:
        model = tflite.Model.GetRootAsModel(Path(path).read_bytes(), 0)
        main = model.Subgraphs(0)
        (input_index,) = (int(t) for t in main.InputsAsNumpy())
        (output_index,) = (int(t) for t in main.OutputsAsNumpy())
    except (OSError, ValueError, IndexError) as e:
        raise ExportError(f"{path}: not a one-input, one-output TFLite model ({e})") from None
    converter = _Converter(model)
    (result,) = converter.subgraph(0, [input_name])
    converter.nodes.append(helper.make_node("Identity", [result], [output_name], name="output"))
    tensor = main.Tensors(input_index)
    signature = tensor.ShapeSignatureAsNumpy() if tensor.ShapeSignatureLength() else tensor.ShapeAsNumpy()
    shape: list = [int(d) for d in signature]
    for axis, label in (dynamic or {}).items():
        shape[axis] = label
    shape = [d if isinstance(d, str) or d >= 0 else f"in{i}" for i, d in enumerate(shape)]
    rank = main.Tensors(output_index).ShapeLength()
    graph = helper.make_graph(
        converter.nodes,
        Path(path).stem,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [f"out{i}" for i in range(rank)])],
        [numpy_helper.from_array(np.ascontiguousarray(v), k) for k, v in converter.inits.items()],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    return onnx_model
