"""The server's connections, bounded: how long a client may take to send a request and how many may stay open.

uvicorn's HTTP protocol closes a connection only after a response (its keep-alive timeout), so a client that
connects and never sends a byte -- or sends one every few seconds -- holds a file descriptor forever, and about a
thousand of them exhaust the process's descriptors: then nobody gets in and asyncio logs every failed accept().
:class:`BoundedH11Protocol` closes a connection whose request headers are not complete ``HEADER_TIMEOUT_S`` after
it opened (or after its previous response), or whose body stalls for ``IDLE_TIMEOUT_S``; past ``MAX_CONNECTIONS``
a new connection closes the one that has waited longest for a request (one with a request running is never
closed, nor one that opened less than ``GRACE_S`` ago unless half the process's descriptors are in use: a burst of
new connections then closes the oldest of them, and a client that sends its request at once is answered).
"""

from __future__ import annotations

import logging
import resource
import time

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0  # from connecting (or the previous response) to the end of the request's headers
IDLE_TIMEOUT_S = 30.0  # the longest pause while a request body arrives
MAX_CONNECTIONS = 256  # open at once; each is a file descriptor
GRACE_S = 1.0  # a new connection is not closed to make room for another before it had this long to send a request
# Connections asyncio accepts in one go (before any of them can close another): with MAX_CONNECTIONS, it bounds the
# descriptors in use (uvicorn's 2048 exhausts a 1024-descriptor limit at once).
LISTEN_BACKLOG = 128
# Connections the kernel holds until they are accepted: deeper than one batch, so that a burst of connections
# does not overflow it (a dropped connection attempt is retried by its client only after a second).
LISTEN_QUEUE = 1024
ACCEPT_LOG_INTERVAL_S = 60.0  # one log line per interval for the same event-loop error (e.g. out of descriptors)


class _Registry:
    """A server's open connections: how many, and those waiting for a request, oldest first (a dict keeps its
    insertion order), so that choosing one to close costs the same however many there are."""

    def __init__(self):
        self.open = 0
        self.waiting: dict[BoundedH11Protocol, float] = {}  # connection -> since when it waits
        # Past this many, a new connection is closed at once: half the descriptors (the rest: the models' files
        # and the connections asyncio accepts before any of them runs).
        self.hard_limit = max(MAX_CONNECTIONS, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2)

    def victim(self, now: float) -> BoundedH11Protocol | None:
        """The connection to close when one too many is open: the one that has waited longest for a request, if
        that is longer than GRACE_S (it had time to send its request) or ``hard_limit`` connections are open; else
        none (all waiting ones are new: they get their chance to send a request)."""
        oldest = next(iter(self.waiting), None)
        if oldest is not None and (now - self.waiting[oldest] > GRACE_S or self.open > self.hard_limit):
            return oldest
        return None


class BoundedH11Protocol(H11Protocol):
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.registry = getattr(self.server_state, "edgemm_connections", None)
        if self.registry is None:
            self.registry = self.server_state.edgemm_connections = _Registry()
        self.registry.open += 1
        self._counted, self._timer = True, None
        self._wait_for_headers()
        if self.registry.open > MAX_CONNECTIONS:
            victim = self.registry.victim(time.monotonic())
            if victim is not None:
                victim._close()

    def _forget(self) -> None:
        self._disarm()
        self.registry.waiting.pop(self, None)
        if self._counted:
            self._counted = False
            self.registry.open -= 1

    def _close(self) -> None:
        self._forget()
        if not self.transport.is_closing():
            self.transport.close()

    def handle_websocket_upgrade(self, event) -> None:
        """The connection becomes a WebSocket (uvicorn's protocol takes it over): no header deadline, not counted
        here any more (the live route ends idle ones itself)."""
        self._forget()
        super().handle_websocket_upgrade(event)

    def _waiting(self) -> bool:
        """No request of this connection is being answered."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._close)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wait_for_headers(self) -> None:
        self._arm(HEADER_TIMEOUT_S)
        self.registry.waiting[self] = time.monotonic()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing() or self._waiting():
            return  # still reading headers: the header deadline stands, however the bytes trickle in
        self.registry.waiting.pop(self, None)  # a request is in: never closed to make room
        if self.cycle.more_body:
            self._arm(IDLE_TIMEOUT_S)  # the body is arriving: each piece gives the next one this long
        elif self._timer is not None:
            self._disarm()  # the whole request is in: the route's own timeout applies from here

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._waiting():  # (a pipelined request may have started already)
            self._wait_for_headers()

    def connection_lost(self, exc) -> None:
        self._close()
        super().connection_lost(exc)


class BoundedServer(uvicorn.Server):
    """uvicorn's server, its sockets' kernel queues LISTEN_QUEUE deep once serving (asyncio sets them to its accept
    batch, LISTEN_BACKLOG, as it starts)."""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        for sock in sockets or ():
            sock.listen(LISTEN_QUEUE)


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
