"""The runtime never imports torch or transformers: every module of edgemm.runtime (found by walking the package,
not from a list) and of edgemm.device imports without them."""

import subprocess
import sys

CODE = """
import importlib, pkgutil, sys
import edgemm.device, edgemm.runtime
names = []
for package in (edgemm.runtime, edgemm.device):
    names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
bad = [m for m in ("torch", "transformers", "optimum") if m in sys.modules]
print(len(names), bad)
sys.exit(1 if bad else 0)
"""


def test_runtime_packages_are_torch_free():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    count = int(out.stdout.split()[0])
    assert count >= 25, out.stdout  # the walk found the sub-packages' modules
