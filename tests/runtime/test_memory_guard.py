"""A model that does not fit in the memory available is refused before loading, with both figures."""

import subprocess
import sys

import pytest

from edgemm.runtime import limits
from edgemm.runtime.bundle import default_bundle
from edgemm.runtime.errors import MemoryLimitError


@pytest.fixture
def llm():
    path = default_bundle("llm")
    if not (path / "manifest.json").exists():
        pytest.skip(f"default llm bundle missing at {path}: run `make setup`")
    return path


def test_a_bundle_larger_than_free_memory_is_refused(llm, monkeypatch):
    from edgemm.runtime.llm import LanguageModel

    monkeypatch.setattr(limits, "available_memory", lambda: 64 << 20)
    with pytest.raises(MemoryLimitError) as refused:
        LanguageModel.load(llm)
    message = str(refused.value)
    # every graph with its external data, plus what onnxruntime prepacks; refused before the first one is loaded
    data = sum(f.stat().st_size for f in llm.glob("*.onnx*"))
    assert message.startswith(f"not enough memory for {llm.name}: ")
    assert f"needs about {int(data * limits.LOAD_FACTOR + limits.LOAD_OVERHEAD) >> 20} MB" in message
    assert "64 MB are available" in message and "\n" not in message


def test_it_loads_when_memory_suffices_or_the_check_is_skipped(llm, monkeypatch):
    from edgemm.runtime.llm import LanguageModel

    monkeypatch.setattr(limits, "available_memory", lambda: 64 << 30)
    LanguageModel.load(llm)
    monkeypatch.setattr(limits, "available_memory", lambda: 64 << 20)
    monkeypatch.setenv(limits.SKIP_MEMORY_CHECK, "1")
    LanguageModel.load(llm)


def test_the_cli_says_it_in_one_line(llm):
    script = (
        "import sys; from edgemm.runtime import limits; limits.available_memory = lambda: 64 << 20; "
        "from edgemm.runtime.cli import main; sys.exit(main(['ask', 'What is the capital of France?']))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.startswith("edgemm: error: not enough memory for ") and out.stderr.count("\n") == 1, out.stderr


def test_freed_large_buffers_go_back_to_the_system():
    """After map_large_allocations, a large buffer freed leaves the process's resident memory at once, even after
    earlier ones (glibc would otherwise raise its mapping threshold and keep later ones in the heap)."""
    script = """
import numpy as np
from edgemm.runtime.limits import map_large_allocations
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
if {mapped}: map_large_allocations()
first = np.ones(3 << 20); del first  # 24 MB, freed
before = rss(); second = np.ones(2 << 20); del second  # 16 MB, freed
print(rss() - before)
"""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    grown = {}
    for mapped in (True, False):
        out = subprocess.run([sys.executable, "-c", script.format(mapped=mapped)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        grown[mapped] = int(out.stdout)
    assert grown[True] <= 2, grown  # 16 MB freed: returned
    assert grown[False] >= 12, grown  # what it prevents: the 16 MB stay resident
