"""One inference thread per model, with a bounded queue in front of it.

A model's jobs run one at a time, in arrival order, on its own thread, so the event loop stays free to answer
``/health`` and to take (or refuse) new requests. When ``max_queue`` jobs already wait, a new one is refused at once
with :class:`Busy` (the server answers 429 with ``Retry-After``) instead of waiting without bound.

Jobs hand their items to the event loop through a :class:`Channel`; a reader that goes away (the client
disconnected, the request timed out) cancels the job: not started yet, it never runs; running, it stops at its next
item or at the library's next cancellation check (edgemm.runtime.cancel).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from edgemm.runtime import cancel
from edgemm.runtime.cancel import Cancelled
from edgemm.runtime.errors import EdgemmError


class Busy(EdgemmError):
    """A model's queue is full."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Closed(EdgemmError):
    """The server is shutting down."""


class Worker:
    def __init__(self, name: str, max_queue: int):
        self.name, self.max_queue = name, max_queue
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"edgemm-{name}")
        self._lock = threading.Lock()
        self.pending = 0  # jobs queued or running
        self.done = 0  # jobs finished (counted for /health)
        self._seconds = 1.0  # moving average of a job's duration, for Retry-After

    def retry_after(self) -> int:
        return max(1, math.ceil(self._seconds * self.pending))

    def submit(self, fn, *args) -> Future:
        """Queue ``fn(*args)``; raises Busy when ``max_queue`` jobs already wait behind the running one."""
        with self._lock:
            if self.pending > self.max_queue:
                raise Busy(
                    f"the {self.name} model is busy ({self.pending} requests ahead of this one): retry later",
                    self.retry_after(),
                )
            self.pending += 1
        try:
            future = self._executor.submit(self._timed, fn, *args)
        except RuntimeError:  # the executor is shut down
            self._finished(None)
            raise Closed("the server is shutting down") from None
        future.add_done_callback(self._finished)
        return future

    def _timed(self, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._seconds = 0.7 * self._seconds + 0.3 * (time.perf_counter() - start)

    def _finished(self, _future) -> None:
        with self._lock:
            self.pending -= 1
            self.done += 1

    def status(self) -> dict:
        return {"pending": self.pending, "max_queue": self.max_queue, "done": self.done}

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


_END = object()


class Channel:
    """Items from a job on a worker thread to a reader on the event loop.

    The job calls :meth:`put` for each item (it raises Cancelled once the reader has gone, so the job stops there);
    the reader iterates :meth:`items` and must call :meth:`cancel` if it stops early. An exception the job raises is
    raised in the reader.
    """

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self._on_cancel = []

    # -- job side (worker thread) --
    def put(self, item) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        self.loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def on_cancel(self, callback) -> None:
        """Call ``callback()`` (from the event loop) when the reader cancels: e.g. Generation.close, which stops a
        generation after the token being computed."""
        self._on_cancel.append(callback)
        if self.cancelled.is_set():
            callback()

    def run(self, job) -> None:
        """Run ``job(channel)`` and mark the end (or pass its error to the reader). A job whose reader left while it
        queued never starts; a running one stops at its next item, or at the next ``cancel.check()`` of the library
        code it runs (between transcription windows, speech chunks, photo models)."""
        if self.cancelled.is_set():
            return
        try:
            with cancel.scope(self.cancelled):
                job(self)
        except Cancelled:
            return
        except BaseException as e:  # noqa: BLE001 -- handed to the reader, which reports it
            self.loop.call_soon_threadsafe(self._queue.put_nowait, _Failure(e))
            return
        self.loop.call_soon_threadsafe(self._queue.put_nowait, _END)

    # -- reader side (event loop) --
    async def next(self, timeout: float | None = None):
        """The next item; StopAsyncIteration at the end; TimeoutError after ``timeout`` seconds without one."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            raise item.error
        return item

    def cancel(self) -> None:
        if not self.cancelled.is_set():
            self.cancelled.set()
            for callback in self._on_cancel:
                callback()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error
