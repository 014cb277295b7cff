"""The server's connections, bounded: how long a client may take to send a request and how many may stay open.

uvicorn's HTTP protocol closes a connection only after a response (its keep-alive timeout), so a client that
connects and never sends a byte -- or sends one every few seconds -- holds a file descriptor forever, and about a
thousand of them exhaust the process's descriptors: then nobody gets in and asyncio logs every failed accept().
:class:`BoundedH11Protocol` closes a connection whose request headers are not complete ``HEADER_TIMEOUT_S`` after
it opened (or after its previous response), or whose body stalls for ``IDLE_TIMEOUT_S``; past ``MAX_CONNECTIONS``
a new connection closes the oldest one that is waiting for a request (one with a request running is never closed).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0  # from connecting (or the previous response) to the end of the request's headers
IDLE_TIMEOUT_S = 30.0  # the longest pause while a request body arrives
MAX_CONNECTIONS = 256  # open at once; each is a file descriptor
# Connections waiting to be accepted, and so accepted in one go by asyncio (before any of them can close another):
# with MAX_CONNECTIONS, it bounds the descriptors in use (uvicorn's 2048 exhausts a 1024-descriptor limit at once).
LISTEN_BACKLOG = 128
ACCEPT_LOG_INTERVAL_S = 60.0  # one log line per interval for the same event-loop error (e.g. out of descriptors)


class BoundedH11Protocol(H11Protocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.opened = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._wait_for_headers()
        open_ = [c for c in self.connections if not c.transport.is_closing()]
        if len(open_) > MAX_CONNECTIONS:
            waiting = [c for c in open_ if isinstance(c, BoundedH11Protocol) and c._waiting()]
            min(waiting, key=lambda c: c.opened, default=self).transport.close()

    def _waiting(self) -> bool:
        """No request of this connection is being answered."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wait_for_headers(self) -> None:
        self._arm(HEADER_TIMEOUT_S)

    def _expire(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing() or self._waiting():
            return  # still reading headers: the header deadline stands, however the bytes trickle in
        if self.cycle.more_body:
            self._arm(IDLE_TIMEOUT_S)  # the body is arriving: each piece gives the next one this long
        elif self._timer is not None:
            self._disarm()  # the whole request is in: the route's own timeout applies from here

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._waiting():  # (a pipelined request may have started already)
            self._wait_for_headers()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


class RateLimitedErrors:
    """An event-loop exception handler that logs each kind of error once per ``interval`` seconds (with how many
    were left out), without a traceback: "socket.accept() out of system resource" repeats every second for as long
    as the process has no free descriptor."""

    def __init__(self, interval: float = ACCEPT_LOG_INTERVAL_S):
        self.interval, self.last, self.skipped = interval, {}, {}

    def __call__(self, loop, context: dict) -> None:
        message = context.get("message", "event loop error")
        error = context.get("exception")
        now = time.monotonic()
        if now - self.last.get(message, -self.interval) < self.interval:
            self.skipped[message] = self.skipped.get(message, 0) + 1
            return
        skipped = self.skipped.pop(message, 0)
        self.last[message] = now
        what = f"{message}: {error}" if error else message
        more = f" ({skipped} more in the last {self.interval:g} s)" if skipped else ""
        log.error("%s%s", what, more)


def raise_descriptor_limit(wanted: int = 4 * MAX_CONNECTIONS) -> None:
    """The soft limit on open files raised towards ``wanted`` (within the hard limit): room for every allowed
    connection besides the models' files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
