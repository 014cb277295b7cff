"""The export driver with small fake steps (no torch): order, one manifest listing every file, nothing half-written
when a step fails, quiet libraries, and one error line at the CLI."""

import hashlib
import json
import logging
import warnings
from pathlib import Path

import pytest

from edgemm.export import driver
from edgemm.export.driver import Component, ExportJob, Step, build
from edgemm.export.errors import ExportError
from edgemm.runtime.errors import EdgemmError


def _describe(job: ExportJob) -> str:
    (job.work / "labels.json").write_text('["cat", "dog"]')
    job.body.update({"model": {"classes": 2}, "graphs": {"classifier": "classifier.onnx"}, "labels": "labels.json"})
    # open_bundle checks these fields
    job.body["preprocessing"] = {"resize_shorter": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.25] * 3}
    return "described"


def _graph(job: ExportJob) -> None:
    (job.fp32 / "classifier.onnx").write_bytes(b"fp32 graph")


def _quantize(job: ExportJob) -> None:
    (job.work / "classifier.onnx").write_bytes(b"int8 graph")
    job.body["quantization"] = {"scheme": job.quant}


def _measure(job: ExportJob) -> str:
    job.fidelity["agreement"] = 1.0
    return "agreement 1.0"


def _component(*extra: Step, ran: list | None = None) -> Component:
    """A vision-like component whose steps append their names to ``ran``."""
    ran = [] if ran is None else ran

    def step(name, run, **when):
        def logged(job):
            ran.append(name)
            return run(job)

        return Step(name, logged, **when)

    steps = (
        step("describe", _describe),
        step("graph", _graph),
        step("quantize", _quantize, quantized_only=True),
        step("measure", _measure, measurement=True),
    )
    return Component(kind="vision", quants=("fp32", "int8"), steps=steps + extra)


def _snapshot(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_steps_run_in_order_and_skip_what_does_not_apply(tmp_path):
    ran = []
    build(_component(ran=ran), "fake:source", "int8", tmp_path / "int8")
    assert ran == ["describe", "graph", "quantize", "measure"]
    ran.clear()
    build(_component(ran=ran), "fake:source", "fp32", tmp_path / "fp32", measure=False)
    assert ran == ["describe", "graph"]


def test_manifest_is_written_once_and_lists_every_file(tmp_path, monkeypatch):
    writes = []
    real_write = driver.write_manifest
    monkeypatch.setattr(driver, "write_manifest", lambda *a: writes.append(a) or real_write(*a))
    out = tmp_path / "bundle"
    manifest = build(_component(), "fake:source", "int8", out)
    assert len(writes) == 1
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert sorted(manifest["files"]) == ["classifier.onnx", "labels.json"]  # the fp32 reference folder is gone
    assert sorted(p.name for p in out.iterdir()) == ["classifier.onnx", "labels.json", "manifest.json"]
    assert (out / "classifier.onnx").read_bytes() == b"int8 graph"
    assert list(manifest)[:4] == ["format", "kind", "name", "source"]
    assert manifest["fidelity"] == {"agreement": 1.0} and manifest["quantization"] == {"scheme": "int8"}


def test_runtime_bundle_of_the_fp32_reference(tmp_path):
    seen = {}

    def look(job):
        seen["int8"], seen["fp32"] = job.bundle(), job.bundle(fp32=True)

    build(_component(Step("look", look)), "fake:source", "int8", tmp_path / "bundle")
    assert seen["int8"].manifest["graphs"] == {"classifier": "classifier.onnx"}
    assert seen["fp32"].manifest["graphs"] == {"classifier": "fp32/classifier.onnx"}
    assert seen["fp32"].kind == "vision" and seen["fp32"].path == seen["int8"].path


def test_failing_step_leaves_no_scratch_and_keeps_the_old_bundle(tmp_path):
    def parity(job):
        raise ExportError("fp32 graph differs from PyTorch")

    failing = _component(Step("parity", parity))
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match="differs"):
        build(failing, "fake:source", "int8", out)
    assert list(tmp_path.iterdir()) == []  # neither a scratch folder nor a half-written bundle

    build(_component(), "fake:source", "int8", out)
    before = _snapshot(out)
    with pytest.raises(ExportError):
        build(failing, "fake:source", "int8", out)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (needs root, as CI has); the test is skipped where mounting is not allowed."""
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_leaves_no_half_written_bundle(small_disk):
    def big_graph(job):  # more than the disk holds
        with open(job.work / "classifier.onnx", "wb") as f:
            for _ in range(8):
                f.write(b"\0" * (1 << 20))

    out = small_disk / "bundle"
    build(_component(), "fake:source", "int8", out)
    before = _snapshot(out)
    with pytest.raises(ExportError, match=r"is full \(\d+ MB free\).*left nothing behind.*bundle is unchanged"):
        build(_component(Step("write", big_graph)), "fake:source", "int8", out)
    assert _snapshot(out) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["bundle"]


def test_unknown_quantization_is_an_export_error(tmp_path):
    with pytest.raises(ExportError, match="fp32 or int8, not 'int4'"):
        build(_component(), "fake:source", "int4", tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_one_line_per_step_and_libraries_quiet(tmp_path, caplog):
    def chatty(job):
        warnings.warn("Converting a tensor to a Python boolean might cause the trace to be incorrect", stacklevel=1)
        logging.getLogger("onnxruntime.quantization").warning("Please consider to run pre-processing")
        logging.warning("root logger chatter")

    caplog.set_level(logging.INFO, logger="edgemm")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build(_component(Step("chatty", chatty)), "fake:source", "int8", tmp_path / "quiet")
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[0] for line in lines] == ["describe", "graph", "quantize", "measure", "chatty"]
    assert lines[0].endswith("s  described") and lines[3].endswith("s  agreement 1.0")
    assert seen == []

    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="edgemm")  # edgemm -v
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build(_component(Step("chatty", chatty)), "fake:source", "int8", tmp_path / "verbose")
    messages = [r.getMessage() for r in caplog.records]
    assert "Please consider to run pre-processing" in messages and "root logger chatter" in messages
    assert len(seen) == 1


def test_export_errors_are_edgemm_errors():
    from edgemm.export.ct2 import CT2FormatError
    from edgemm.export.packaged import SourceError
    from edgemm.export.quantize import QuantizationError

    for error in (SourceError, CT2FormatError, QuantizationError):
        assert issubclass(error, ExportError) and issubclass(error, EdgemmError)


def test_cli_prints_one_error_line(tmp_path, capsys):
    pytest.importorskip("torch")
    from edgemm.runtime.cli import main

    edgemm_log = logging.getLogger("edgemm")
    level = edgemm_log.level
    try:
        code = main(["export", "llm", "--source", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "out")])
    finally:
        edgemm_log.setLevel(level)  # main sets it from -v
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("edgemm: error: ") and "missing.gguf" in err
    assert not (tmp_path / "out").exists()


def _tiny_classifier(path: Path) -> None:
    """A classifier graph shaped as the MobileNet export's (pixel_values -> logits), a few weights only."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.1, (4, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (5, 4)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(5, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["pixel_values", "conv_w"], ["conv"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize("verbose", [False, True])
def test_calibration_prints_nothing_unless_verbose(tmp_path, capfd, caplog, verbose):
    """onnxruntime's calibration prints its progress ("Collecting tensor data and making histogram ..."): not
    among the step lines of an export, only with edgemm -v."""
    pytest.importorskip("torch")
    pytest.importorskip("skimage")
    from edgemm.export import mobilenet

    job = ExportJob("vision", "packaged:mobilenet_v2", "int8", tmp_path / "out", False, tmp_path / "work")
    job.fp32.mkdir(parents=True)
    _tiny_classifier(job.fp32 / "classifier.onnx")
    caplog.set_level(logging.DEBUG if verbose else logging.INFO, logger="edgemm")
    assert mobilenet.quantize(job).startswith("calibrated on")
    assert (job.work / "classifier.onnx").exists()
    printed = capfd.readouterr().out
    assert ("histogram" in printed) == verbose, printed
