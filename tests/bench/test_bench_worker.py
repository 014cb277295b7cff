"""The benchmarks' worker protocol (edgemm.bench.worker): the job in on stdin, one JSON line out, errors as data.

Each test runs a tiny worker with ``python -c``; no models are needed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import numpy as np
import pytest

from edgemm.bench import llm
from edgemm.bench.worker import run_worker


def worker(body: str) -> list[str]:
    """A worker command whose measurement is ``measure(job)``, defined by ``body``."""
    code = f"import sys, time\nfrom edgemm.bench.worker import serve\n{body}\nsys.exit(serve(measure))\n"
    return [sys.executable, "-c", code]


def test_result_comes_back():
    command = worker("def measure(job):\n    return {'sum': job['a'] + job['b']}")
    assert run_worker(command, {"a": 2, "b": 3}) == {"sum": 5}


def test_result_is_stdout_only_line():
    command = worker("def measure(job):\n    print('noise from a library')\n    return {'ok': True}")
    out = subprocess.run(command, input="{}", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert out.stdout.splitlines() == ['{"ok": true}']
    assert "noise from a library" in out.stderr


def test_exception_becomes_one_error_line():
    command = worker("def measure(job):\n    raise ValueError('bad input\\nsecond line')")
    out = subprocess.run(command, input="{}", capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stdout.splitlines() == ['{"error": "ValueError: bad input"}']
    assert "Traceback" not in out.stderr
    assert run_worker(command, {}) == {"error": "ValueError: bad input"}


def test_edgemm_error_is_its_sentence():
    body = "from edgemm.runtime.errors import EdgemmError\ndef measure(job):\n    raise EdgemmError('no bundle at /x')"
    assert run_worker(worker(body), {}) == {"error": "no bundle at /x"}


def test_a_job_that_is_not_json_is_an_error():
    command = worker("def measure(job):\n    return {}")
    out = subprocess.run(command, input="not json", capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert json.loads(out.stdout)["error"].startswith("JSONDecodeError")


def test_crash_gives_exit_status_and_last_stderr_line():
    command = [sys.executable, "-c", "import os, sys; print('segfault here', file=sys.stderr); os._exit(3)"]
    assert run_worker(command, {}) == {"error": "the worker failed (exit status 3): segfault here"}


def test_garbage_output_is_an_error():
    command = [sys.executable, "-c", "print('{\"half\": '); print('[1, 2]')"]  # last line is JSON but no object
    result = run_worker(command, {})
    assert result == {"error": "the worker failed (exit status 0)"}


def test_timeout_is_an_error():
    command = [sys.executable, "-c", "import sys, time; print('loading', file=sys.stderr, flush=True); time.sleep(60)"]
    assert run_worker(command, {}, timeout=1) == {"error": "the worker timed out after 1 s: loading"}


def test_stderr_lines_go_to_on_line_when_given():
    body = (
        "def measure(job):\n    print('step 1', file=sys.stderr)\n    print('step 2', file=sys.stderr)\n    return {}"
    )
    lines = []
    assert run_worker(worker(body), {}, on_line=lines.append) == {}
    assert lines == ["step 1", "step 2"]


def test_missing_program_is_an_error():
    result = run_worker(["/nonexistent/python"], {})
    assert result["error"].startswith("cannot run /nonexistent/python: ")


def test_peers_worker_imports_no_edgemm():
    tree = ast.parse(llm.PEERS_WORKER.read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [m for m in modules if m.split(".")[0] == "edgemm"]


def test_peers_worker_speaks_the_protocol_in_isolation():
    """Run by path with -I, as with the peers' venv: an unknown engine or a missing peer is one sentence."""
    command = [sys.executable, "-I", str(llm.PEERS_WORKER)]
    assert run_worker(command, {"engine": "nope"}) == {"error": "unknown engine 'nope': one of ogenai, llamacpp"}
    job = {"engine": "ogenai", "model": "/nonexistent", "threads": 1, "runs": 1, "prompt": [1], "forced": [2]}
    assert run_worker(command, job)["error"] in (
        "onnxruntime-genai is not installed in this venv (make bench-peers)",
        "no onnxruntime-genai model at /nonexistent (make bench-peers builds it)",
    )


class _FixedLogits:
    """An engine whose every prediction is the same distribution over a 4-token vocabulary."""

    name = "fixed"

    def __init__(self, model, threads, context):
        self.logits = np.log(np.array([0.5, 0.25, 0.125, 0.125]))

    def reset(self):
        pass

    def prefill(self, ids):
        return self.logits

    def step(self, token):
        return self.logits

    def encode(self, text):
        return []

    def weight_bytes(self):
        return None

    def versions(self):
        return {}


def test_bench_llm_perplexity_scores_each_forced_token():
    from edgemm.bench.peers_worker import measure

    job = {"model": None, "threads": 1, "runs": 1, "prompt": [0], "forced": [0, 1, 2, 3], "probes": []}
    result = measure(job, _FixedLogits)
    # -log p: 1, 2, 3, 3 bits -> perplexity 2 ** (9 / 4)
    assert result["perplexity"] == pytest.approx(2 ** (9 / 4))


@pytest.mark.parametrize(
    "name, label",
    [("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "Q4_K_M"), ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
     ("model-f16.gguf", "F16"), ("weights.gguf", "GGUF")],
)  # fmt: skip
def test_llama_cpp_row_is_named_by_its_gguf(name, label):
    from pathlib import Path

    assert llm.gguf_label(Path(name)) == label


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status is Linux's")
def test_file_backed_pages_are_part_of_rss():
    """A file mapped and read becomes resident file-backed pages: counted in RssFile, within the peak RSS."""
    import mmap
    import tempfile

    from edgemm.bench.worker import file_backed_mb, peak_rss_mb

    with tempfile.TemporaryFile() as f:
        f.write(b"x" * (16 << 20))
        f.flush()
        before = file_backed_mb()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            assert sum(mapped[i] for i in range(0, len(mapped), 4096)) == ord("x") * (16 << 20) // 4096
            during = file_backed_mb()
            assert during - before >= 15  # MB: the 16 MB just read
            assert during <= peak_rss_mb()
