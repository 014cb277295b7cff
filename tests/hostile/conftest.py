"""The hostile-input suite: each case runs bounded in time (a per-test timeout) and in memory (the peak RSS of the
process it starts, read from the kernel when it exits), so a regression fails a test instead of hanging or swapping."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

CASE_TIMEOUT_S = 180  # any one test, start-up of its subprocesses included


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(CASE_TIMEOUT_S))


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str
    peak_mb: float  # the process's peak resident memory (ru_maxrss)
    seconds: float

    def one_line_error(self) -> str:
        """The error line of a command that failed cleanly: exit 2, no traceback, ``edgemm: error: ...`` last."""
        lines = self.stderr.strip().splitlines()
        assert self.returncode == 2, (self.returncode, self.stderr[-2000:])
        assert "Traceback" not in self.stderr, self.stderr[-2000:]
        assert lines and lines[-1].startswith("edgemm: error:"), self.stderr[-2000:]
        return lines[-1]


def bounded(argv: list, timeout: float = 120, input: bytes | None = None, env: dict | None = None, **popen) -> Ran:
    """Run ``argv`` to its end; past ``timeout`` seconds it is killed and the test fails. Its peak RSS comes from
    wait4, so a bound on memory can be asserted too."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as stdin:
        if input is not None:
            stdin.write(input)
            stdin.seek(0)
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=stdin if input is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            **popen,
        )
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - start > timeout:
                proc.kill()
                proc.wait()
                err.seek(0)
                pytest.fail(f"{argv[:5]} ran past {timeout} s: {err.read().decode(errors='replace')[-500:]}")
            time.sleep(0.02)
        out.seek(0)
        err.seek(0)
        return Ran(
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            usage.ru_maxrss / 1024,
            time.monotonic() - start,
        )


def edgemm(*args, **kwargs) -> Ran:
    """``edgemm ARGS`` (the CLI in this interpreter), bounded as :func:`bounded`."""
    return bounded([sys.executable, "-m", "edgemm.runtime.cli", *args], **kwargs)
