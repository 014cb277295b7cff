"""The runtime never imports torch or transformers."""

import subprocess
import sys


def test_runtime_import_is_torch_free():
    code = (
        "import sys, edgemm.runtime, edgemm.runtime.transcribe, edgemm.runtime.cli, edgemm.runtime.bench,"
        " edgemm.runtime.chat, edgemm.runtime.generate, edgemm.runtime.llm, edgemm.runtime.classify,"
        " edgemm.runtime.describe, edgemm.runtime.vlm, edgemm.runtime.tts;"
        "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
