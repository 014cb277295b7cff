"""Cooperative cancellation: long jobs stop at their next window, chunk or stage once whoever asked has gone.

The server runs each job inside ``scope(event)``; the library's loops call ``check()`` between bounded steps (a
Whisper window, a synthesized chunk, a photo model), which raises :class:`Cancelled` once ``event`` is set. Outside a
scope ``check()`` does nothing, so the CLI and the Python API pay nothing for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading

_current: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("edgemm_cancel", default=None)


class Cancelled(BaseException):  # noqa: N818 -- like KeyboardInterrupt: not caught by "except Exception" handlers
    """The job was cancelled (its client left or its time ran out). A BaseException, so that code which turns a
    failing component into a one-turn error does not swallow it."""


@contextlib.contextmanager
def scope(event: threading.Event):
    """Run the block cancellable by ``event`` (on this thread)."""
    token = _current.set(event)
    try:
        yield
    finally:
        _current.reset(token)


def check() -> None:
    """Raise Cancelled if the current job was cancelled; nothing outside a scope."""
    event = _current.get()
    if event is not None and event.is_set():
        raise Cancelled()
