"""A server under test or bench in a subprocess: its output in a log file, its resident memory, and a clean stop
(terminate, then kill after 20 s). ``ServerProcess`` (bench/serve.py) and ``WyomingProcess`` (bench/wyoming.py)
start one each."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path


class LoggedProcess:
    """``command`` started with stdout and stderr into a temporary log file; ``pid``, ``output()``, ``rss_mb()``,
    ``stop()`` (also on leaving a ``with`` block)."""

    def __init__(self, command: list[str], prefix: str, env: dict | None = None, **popen):
        self.log = tempfile.NamedTemporaryFile("w+", prefix=prefix, suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env or os.environ.copy(),
            **popen,
        )
        self.pid = self.proc.pid

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
