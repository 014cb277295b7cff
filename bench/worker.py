"""The benchmarks' worker protocol: each engine is measured in a subprocess of its own (memory never mixes).

The parent starts the worker with the job, one JSON object, on its stdin. The worker logs to stderr and prints
exactly one JSON line on stdout, as its last line: its result, or ``{"error": "one line"}`` when it failed (an
exception becomes that line, never a traceback). A worker that crashes, times out or ends without a JSON object
reaches the parent as ``{"error": ...}`` as well, with the last line of its stderr. So a failed engine is data:
a line of the report, not an exception in the parent.

    parent:  result = run_worker([sys.executable, "-m", "edgemm.bench.asr"], {"engine": ..., "runs": 5})
    worker:  if __name__ == "__main__":
                 sys.exit(serve(measure))  # measure(job: dict) -> dict

``bench/peers_worker.py`` carries its own copy of the worker's side (``serve``, ``error_line``, ``peak_rss_mb``,
``package_versions``): it runs in the peers' venv, where edgemm is not installed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# ---- worker side ----------------------------------------------------------------------------------------------


def serve(measure: Callable[[dict], dict]) -> int:
    """Read the job from stdin, run ``measure(job)`` and print its result (or the error) as one JSON line.

    Returns the exit status: 0, or 2 when the job failed. Anything the measurement prints goes to stderr, so the
    result is stdout's only line."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("edgemm").setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = measure(json.load(sys.stdin))
    except Exception as e:  # an engine's own failure: one line for the report
        result = {"error": error_line(e)}
    print(json.dumps(result), flush=True)
    return 2 if "error" in result else 0


def error_line(e: Exception) -> str:
    """An engine's failure as one line (an EdgemmError is already one clear sentence)."""
    first = (str(e).splitlines() or [""])[0]
    return first if type(e).__module__.startswith("edgemm.") else f"{type(e).__name__}: {first}"


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (``VmHWM``, ``RssFile``...) in MB; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # KiB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux keeps ``ru_maxrss`` across fork+exec (a big parent would show through),
    so read the address space's own high-water mark ``VmHWM`` where there is one."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)


def file_backed_mb() -> float | None:
    """This process's resident pages mapped from files (libraries, memory-mapped bundles), part of its RSS. They are
    shared with the page cache and reclaimable, and how many are mapped follows what the page cache holds: the
    same install read 88 or 123 MB of them (docs/BENCHMARKS.md). None off Linux."""
    return _status_mb("RssFile")


def package_versions(*names: str) -> dict:
    """Installed versions of ``names`` (None for a missing one), for the benchmark reports."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ---- parent side ----------------------------------------------------------------------------------------------


def run_worker(
    command: list[str], job: dict, timeout: float | None = None, on_line: Callable[[str], None] | None = None
) -> dict:
    """Run ``command`` with ``job`` on its stdin; its result, or ``{"error": "one line"}``, never an exception.

    The worker's stderr (its progress log) is passed on to ours as it comes, or line by line to ``on_line`` when
    given (e.g. to drive a progress bar); its last line explains a crash."""
    try:
        pipe = subprocess.PIPE
        proc = subprocess.Popen(command, stdin=pipe, stdout=pipe, stderr=pipe, encoding="utf-8", errors="replace")
    except OSError as e:
        return {"error": f"cannot run {command[0]}: {e.strerror}"}
    stdout, last_log = [], [""]
    threads = [
        threading.Thread(target=_feed, args=(proc.stdin, json.dumps(job))),
        threading.Thread(target=lambda: stdout.append(proc.stdout.read())),
        threading.Thread(target=_relay, args=(proc.stderr, last_log, on_line)),
    ]
    for thread in threads:
        thread.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    for thread in threads:
        thread.join()
    why = f": {last_log[0]}" if last_log[0] else ""
    if timed_out:
        return {"error": f"the worker timed out after {timeout:g} s{why}"}
    lines = stdout[0].strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        result = None
    if not isinstance(result, dict):
        return {"error": f"the worker failed (exit status {proc.returncode}){why}"}
    return result


def _feed(stdin, text: str) -> None:
    try:
        with stdin:
            stdin.write(text)
    except BrokenPipeError:
        pass  # the worker ended before reading its job: its exit status and stderr say why


def _relay(stderr, last_line: list[str], on_line: Callable[[str], None] | None = None) -> None:
    """Copy the worker's stderr to ours (or to ``on_line``) line by line, keeping its last non-empty line in
    ``last_line[0]``."""
    for line in stderr:
        if on_line is not None:
            on_line(line.rstrip("\n"))
        else:
            sys.stderr.write(line)
            sys.stderr.flush()
        if line.strip():
            last_line[0] = line.strip()
