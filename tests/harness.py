"""The one way tests run the ``edgemm`` command: :func:`edgemm` (or :func:`bounded` for another command), each run to
its end within a time limit, with its output and its own peak resident memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import pytest

EDGEMM = [sys.executable, "-m", "edgemm.runtime.cli"]  # the CLI in this interpreter, as the installed script runs it


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


# Runs the command as its own child and writes that child's peak RSS to the file named first. A process's ru_maxrss
# starts from its parent's peak when it execs (Linux carries the old memory's high-water mark over, and Python may
# vfork), so the command is forked from this small process instead of from pytest, whose peak would count.
_MEASURE = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def bounded(argv: list, timeout: float = 120, input=None, env: dict | None = None, **popen) -> Ran:
    """Run ``argv`` to its end; past ``timeout`` seconds it is killed and the test fails. Its own peak RSS is
        measured (see _MEASURE), so a bound on memory can be asserted too. ``input``: its stdin, bytes, text or an open
    file (else none); ``env``:
        its whole environment (None: this one's); ``popen``: more Popen arguments (``cwd``; ``preexec_fn`` limits apply
        to the command too). Arguments that are bytes are passed as they are (undecodable ones included)."""
    start = time.monotonic()
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.TemporaryFile() as stdin,
        tempfile.NamedTemporaryFile("r") as peak,
    ):
        if hasattr(input, "fileno"):  # an open file (a device such as /dev/zero): read by the command itself
            stdin = input
        elif input is not None:
            stdin.write(input.encode() if isinstance(input, str) else input)
            stdin.seek(0)
        proc = subprocess.Popen(
            [sys.executable, "-c", _MEASURE, peak.name, *(a if isinstance(a, bytes) else str(a) for a in argv)],
            stdin=stdin if input is not None else subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
            **popen,
        )
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            err.seek(0)
            pytest.fail(f"{argv[:5]} ran past {timeout} s: {err.read().decode(errors='replace')[-500:]}")
        out.seek(0)
        err.seek(0)
        return Ran(
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            int(peak.read() or 0) / 1024,
            time.monotonic() - start,
        )


def edgemm(*args, **kwargs) -> Ran:
    """``edgemm ARGS`` (the CLI in this interpreter), bounded as :func:`bounded`."""
    return bounded([*EDGEMM, *args], **kwargs)
