"""`edgemm doctor`: the report a user sends, without any device, with bundles missing and with one tampered."""

import json
import os
import shutil

import pytest

from edgemm.models import presets
from edgemm.runtime.bundle import default_bundle
from tests.harness import edgemm


def _doctor(models, *args):
    env = {**os.environ, "EDGEMM_MODELS": str(models)}
    return edgemm("doctor", *args, env=env)


def test_reports_the_machine_without_any_device(tmp_path):
    out = _doctor(tmp_path, "--json")
    assert "Traceback" not in out.stderr
    findings = {(f["section"], f["name"]): f for f in json.loads(out.stdout)["findings"]}
    assert findings["system", "cpu"]["value"].endswith("logical cores")
    assert "CPUExecutionProvider" in findings["onnxruntime", "providers"]["value"]
    assert {name for section, name in findings if section == "extras"} >= {"device", "ocr", "tts"}
    assert ("devices", "cameras") in findings  # listed (or "none found"), never an error


def test_missing_bundles_are_named_with_the_command_that_builds_them(tmp_path):
    out = _doctor(tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    for kind in ("speech", "llm", "vision"):
        name = default_bundle(kind).name
        build = presets()[kind]["presets"][name].get("build") or f"edgemm export {kind} --preset {name}"
        assert f"! {name}: missing (the default {kind} bundle)" in out.stdout
        assert f"{name}: {build}" in out.stdout


def test_a_tampered_bundle_is_found(tmp_path):
    source = default_bundle("vision")
    if not (source / "manifest.json").exists():
        pytest.skip(f"default vision bundle missing at {source}: run `make setup`")
    copy = tmp_path / source.name
    shutil.copytree(source, copy)
    labels = copy / "labels.json"
    labels.write_text(labels.read_text().replace("tabby", "tubby"))
    out = _doctor(tmp_path)
    assert out.returncode == 1
    line = next(line for line in out.stdout.splitlines() if f"! {source.name}:" in line)
    assert "damaged" in line and "labels.json" in line
    assert f"edgemm export vision --preset {source.name}  (rebuilds it)" in out.stdout
