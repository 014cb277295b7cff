"""`edgemm models`: every preset, with the size and measured quality of the bundles that are built."""

import json

from edgemm.models import catalogue, presets
from tests.harness import edgemm


def _run(*args, env_models):
    env = {"EDGEMM_MODELS": str(env_models), "PATH": "/usr/bin:/bin"}
    return edgemm("models", *args, env=env, timeout=60)


def test_lists_every_preset_and_reads_built_manifests(tmp_path):
    bundle = tmp_path / "qwen2.5-coder-0.5b-instruct-gguf"
    bundle.mkdir()
    manifest = {
        "files": {"decoder.onnx.data": {"bytes": 600_000_000}, "tokenizer.json": {"bytes": 7_000_000}},
        "fidelity": {
            "perplexity_fp32": 10.0,
            "perplexity_gguf": 10.05,
            "gguf_perplexity_increase": 0.005,
            "gguf_vs_fp32": {"token_agreement": 0.98},
        },
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "whisper-tiny.en-int8").mkdir()
    (tmp_path / "whisper-tiny.en-int8" / "manifest.json").write_text("{ damaged")

    rows = {row["name"]: row for row in catalogue(tmp_path)}
    assert set(rows) == {name for table in presets().values() for name in table["presets"]}
    qwen = rows["qwen2.5-coder-0.5b-instruct-gguf"]
    assert qwen["built"] and qwen["megabytes"] == 607.0
    assert qwen["quality"] == "perplexity 10.05 (+0.5% vs fp32, token agreement 98.0%)"
    assert not rows["whisper-tiny.en-int8"]["built"]  # unreadable manifest: listed as not built, no traceback

    out = _run(env_models=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "qwen2.5-coder-0.5b-instruct-gguf" in out.stdout and "607 MB" in out.stdout
    listed = json.loads(_run("--json", env_models=tmp_path).stdout)
    assert [r["name"] for r in listed if r["default"]] == [t["default"] for t in presets().values()]


def test_speed_comes_from_the_bundles_last_eval(tmp_path):
    from edgemm.models import record_eval

    bundle = tmp_path / "smollm2-135m-instruct-int4"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"files": {"decoder.onnx": {"bytes": 1_000_000}}}))
    summary = {"overall": [14, 32], "ttft_ms": 262.4, "decode_tok_s": 19.73, "peak_rss_llm_mb": 267.2}
    record_eval(tmp_path, bundle, summary)
    rows = {row["name"]: row for row in catalogue(tmp_path)}
    assert rows["smollm2-135m-instruct-int4"]["speed"] == "TTFT 262 ms, 19.7 tok/s, 267 MB RSS, eval 14/32"
    assert "TTFT 262 ms" in _run(env_models=tmp_path).stdout

    (bundle / "manifest.json").write_text(json.dumps({"files": {}}))  # rebuilt: the old result no longer applies
    assert all(not row.get("speed") for row in catalogue(tmp_path))
    # The speed column is still there, saying how to fill it.
    assert "speed not measured: edgemm eval --model smollm2-135m-instruct-int4" in _run(env_models=tmp_path).stdout


def test_what_a_preset_says_of_being_the_default_is_true():
    """An `about` that calls its preset the default names the profiles that choose it, unless all of them do."""
    from edgemm.runtime.profiles import PROFILES

    for kind, table in presets().items():
        for name, preset in table["presets"].items():
            if "default" not in preset["about"]:
                continue
            choosing = {p for p, profile in PROFILES.items() if profile.presets.get(kind, table["default"]) == name}
            named = {p for p in PROFILES if f"{p} profile" in preset["about"]}
            assert named <= choosing and (named or choosing == set(PROFILES)), (name, preset["about"], choosing)
