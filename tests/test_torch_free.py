"""The runtime never imports torch or transformers."""

import subprocess
import sys


def test_runtime_import_is_torch_free():
    code = (
        "import sys, edgemm.runtime, edgemm.runtime.speech.transcribe, edgemm.runtime.cli, edgemm.bench.asr,"
        " edgemm.runtime.llm.chat, edgemm.runtime.llm.generate, edgemm.runtime.llm.model, edgemm.runtime.vision.classify,"
        " edgemm.runtime.vision.describe, edgemm.runtime.vision.vlm, edgemm.runtime.tts;"
        "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
