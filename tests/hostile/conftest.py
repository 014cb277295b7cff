"""The hostile-input suite: each case runs bounded in time (a per-test timeout) and in memory (the peak RSS of the
process it starts, read from the kernel when it exits: tests/harness.py), so a regression fails a test instead of
hanging or swapping."""

from __future__ import annotations

from pathlib import Path

import pytest

CASE_TIMEOUT_S = 180  # any one test, start-up of its subprocesses included


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(CASE_TIMEOUT_S))
