"""Keep libmpg123's per-frame complaints about a damaged MP3 from flooding stderr.

libsndfile decodes MP3 with libmpg123, which prints a line to file descriptor 2 (from C) for every bad frame, and
libsndfile turns none of that off nor lets a caller do so: one damaged file writes thousands of lines. While an MP3
decodes, :func:`quiet_mpg123` points fd 2 at a pipe drained by a thread that passes every other line on to the real
stderr (other threads may be logging) and keeps only the first few decoder lines, then a count of the rest.
fd 2 belongs to the whole process, so overlapping decodes share one redirection: the first in sets it up, the last
out puts stderr back.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

KEPT_LINES = 5  # decoder lines shown as they come; the rest are counted
# libmpg123's messages: "[src/libmpg123/layer3.c:...] error: ...", "Note: Trying to resync...", "Warning: ..."
DECODER_LINE = re.compile(rb"^(\[[^\]\n]*mpg123[^\]\n]*\]|Note: |Warning: )")
DRAIN_WAIT_S = 1.0  # at most this long to forward what is left in the pipe once stderr is back


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    with contextlib.suppress(OSError):  # stderr gone: keep draining the pipe all the same
        while view:
            view = view[os.write(fd, view) :]


def _forward(pipe: int, out: int) -> None:
    """Copy the pipe's lines to ``out`` until the pipe closes, bounding the decoder's; then close ``out``."""
    decoder_lines = 0
    try:
        with open(pipe, "rb") as lines:
            for line in lines:
                if DECODER_LINE.match(line):
                    decoder_lines += 1
                    if decoder_lines > KEPT_LINES:
                        continue
                _write_all(out, line)
        if decoder_lines > KEPT_LINES:
            _write_all(out, f"(libmpg123: {decoder_lines - KEPT_LINES} more lines like these)\n".encode())
    finally:
        os.close(out)


class _Redirect:
    def __init__(self):
        self.lock = threading.Lock()
        self.users = 0
        self.saved = -1  # a copy of the real fd 2 while redirected
        self.thread: threading.Thread | None = None

    def enter(self) -> None:
        with self.lock:
            if self.users == 0:
                self._start()
            self.users += 1

    def exit(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                self._stop()

    def _start(self) -> None:
        _flush_python_stderr()
        read_end, write_end = os.pipe()
        try:  # the thread drains the pipe before fd 2 points at it: a failed start never leaves writers blocked
            self.thread = threading.Thread(target=_forward, args=(read_end, os.dup(2)), daemon=True)
            self.thread.start()
            self.saved = os.dup(2)
            os.dup2(write_end, 2)
        finally:
            os.close(write_end)  # fd 2 holds the write end now (or nobody does, and the thread ends)

    def _stop(self) -> None:
        _flush_python_stderr()
        os.dup2(self.saved, 2)  # the pipe's last writer goes: the thread forwards the rest and ends
        os.close(self.saved)
        self.thread.join(DRAIN_WAIT_S)  # a child started meanwhile may still hold the pipe: the thread outlives us


def _flush_python_stderr() -> None:
    with contextlib.suppress(Exception):
        sys.stderr.flush()


_redirect = _Redirect()


@contextlib.contextmanager
def quiet_mpg123():
    """Within the block, libmpg123's lines on fd 2 are cut to the first few; everything else still gets through."""
    _redirect.enter()
    try:
        yield
    finally:
        _redirect.exit()
