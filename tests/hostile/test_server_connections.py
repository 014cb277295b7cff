"""The event loop's own errors (a full descriptor table makes every accept() fail) are logged once per interval."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("uvicorn")
from edgemm.runtime.server.connections import RateLimitedErrors


def test_a_repeating_loop_error_is_logged_once_per_interval(caplog):
    handler = RateLimitedErrors(interval=3600)
    error = OSError(24, "Too many open files")
    with caplog.at_level(logging.ERROR, logger="edgemm.runtime.server.connections"):
        for _ in range(5000):
            handler(None, {"message": "socket.accept() out of system resource", "exception": error})
        handler(None, {"message": "another error"})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["socket.accept() out of system resource: [Errno 24] Too many open files", "another error"]
    assert all(r.exc_info is None for r in caplog.records)  # no traceback per failure


def test_after_the_interval_it_says_how_many_were_left_out(caplog, monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 100.0])
    monkeypatch.setattr("edgemm.runtime.server.connections.time.monotonic", lambda: next(clock))
    handler = RateLimitedErrors(interval=60)
    with caplog.at_level(logging.ERROR, logger="edgemm.runtime.server.connections"):
        for _ in range(4):
            handler(None, {"message": "accept failed"})
    assert [r.getMessage() for r in caplog.records] == ["accept failed", "accept failed (2 more in the last 60 s)"]


def test_which_connection_makes_room():
    from edgemm.runtime.server.connections import GRACE_S, _Registry

    registry = _Registry()
    registry.hard_limit = 10
    old, new = object(), object()
    registry.waiting = {old: 0.0, new: 5.0}
    registry.open = 5
    assert registry.victim(now=5.0 + GRACE_S / 2) is old  # waited past the grace: closed first
    registry.waiting = {new: 5.0}
    assert registry.victim(now=5.0 + GRACE_S / 2) is None  # only new ones: they get their chance
    registry.open = 11
    assert registry.victim(now=5.0 + GRACE_S / 2) is new  # unless half the descriptors are in use
    registry.waiting = {}
    assert registry.victim(now=100.0) is None  # every connection is being answered: none is closed
