"""Engine tasks, and admission control in front of the engine.

A :class:`Task` is one transcription as its consumer sees it: the engine's threads put its
items in as they are decoded, and the consumer iterates them. Cancellation and deadlines are
seen by the engine at its next window (:meth:`Task.stopped`), so a stopped task leaves its batch
there.

:class:`Admission` bounds how many requests are active (decoded, in the engine) and how many
wait, undecoded, behind them; beyond both a request is refused with 429 and a Retry-After
estimated from the backlog of audio and the measured speed.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio

from whisperd.errors import (
    DeadlineExceededError,
    RateLimitError,
    ServiceUnavailableError,
    WhisperdError,
    WorkCancelledError,
)

if TYPE_CHECKING:
    from whisperd.services import Lifecycle

logger = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()


class Task(Generic[T]):
    """The items of one piece of work; iterate it (from any one thread) to get them."""

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline
        self._out: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stop: WhisperdError | None = None
        self._lock = threading.Lock()
        self.finished = False
        self.busy_seconds = 0.0

    def cancel(self, reason: WhisperdError | None = None) -> None:
        """Stop at the next window; the consumer sees ``reason`` (default: cancelled)."""
        with self._lock:
            if self._stop is None:
                self._stop = reason or WorkCancelledError("The request was cancelled.")

    def stopped(self) -> WhisperdError | None:
        """Why the work should stop now (cancelled, or past its deadline), or None."""
        if self._stop is None and self._deadline is not None and time.monotonic() > self._deadline:
            self.cancel(
                DeadlineExceededError(
                    "The request ran past its deadline; send shorter audio or a larger X-Timeout."
                )
            )
        return self._stop

    def put(self, item: T) -> None:
        """Hand the consumer one item (called by the engine)."""
        self._out.put(item)

    def finish(self, outcome: BaseException | None = None) -> None:
        """End the items: normally, or with ``outcome`` raised to the consumer (called once)."""
        self.finished = True
        self._out.put(_END if outcome is None else outcome)

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

    def result(self) -> T:
        """The one item of a task that yields one (waiting for it), or its error."""
        (item,) = self
        return item


class Speedometer:
    """Measured engine speed: audio seconds per busy engine-second (an exponential average; a
    transcription's busy time is its share of the batches it was in), and the totals since start
    of finished transcriptions, their audio and their busy time."""

    def __init__(self, initial: float = 10.0) -> None:
        self._speed = initial
        self._lock = threading.Lock()
        self.transcriptions = 0
        self.audio_seconds = 0.0
        self.busy_seconds = 0.0

    def record(self, audio_seconds: float, busy_seconds: float) -> None:
        with self._lock:
            self.transcriptions += 1
            self.audio_seconds += max(audio_seconds, 0.0)
            self.busy_seconds += max(busy_seconds, 0.0)
            if audio_seconds > 0 and busy_seconds > 0:
                self._speed = 0.8 * self._speed + 0.2 * (audio_seconds / busy_seconds)

    @property
    def speed(self) -> float:
        return self._speed


class Admission:
    """At most ``max_active`` requests active and ``max_queue`` waiting; the rest get 429.
    While ``lifecycle`` drains, new requests get 503 (those admitted already go on).

    Used from the event loop. Waiters are served first come, first served.
    """

    def __init__(
        self, max_active: int, max_queue: int, speed: Speedometer, *, lifecycle: Lifecycle
    ) -> None:
        self.max_active = max_active
        self.max_queue = max_queue
        self._speed = speed
        self._lifecycle = lifecycle
        self._active: dict[int, float] = {}
        self._waiting: deque[tuple[int, float, anyio.Event]] = deque()
        self._next_id = 0

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def saturated(self) -> bool:
        """Whether a new request would get 429: every active and queue place is taken."""
        return len(self._active) >= self.max_active and len(self._waiting) >= self.max_queue

    def retry_after(self) -> int:
        """Seconds until a queue place is likely free: the queued audio over the measured speed.

        The shortest active request finishing also frees a place, so that bounds it too.
        """
        queued = sum(seconds for _, seconds, _ in self._waiting)
        shortest = min(self._active.values(), default=0.0)
        throughput = max(self._speed.speed, 1e-3)
        return max(1, math.ceil((queued + shortest) / throughput))

    @asynccontextmanager
    async def enter(
        self, audio_seconds: float | None, *, deadline: float | None = None
    ) -> AsyncIterator[None]:
        """Hold an active place for the body; wait for one in the queue, or raise 429/503.

        A wait that outlasts ``deadline`` (a monotonic instant) raises 504.
        """
        if self._lifecycle.draining:
            raise ServiceUnavailableError("The server is shutting down; retry on another replica.")
        estimate = audio_seconds if audio_seconds is not None else 30.0
        ticket = self._next_id
        self._next_id += 1
        if len(self._active) < self.max_active and not self._waiting:
            self._active[ticket] = estimate
        elif len(self._waiting) < self.max_queue:
            event = anyio.Event()
            entry = (ticket, estimate, event)
            self._waiting.append(entry)
            try:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                with anyio.fail_after(timeout):
                    await event.wait()
            except TimeoutError:
                self._withdraw(entry)
                raise DeadlineExceededError(
                    "The request waited in the queue past its deadline; retry later."
                ) from None
            except BaseException:
                self._withdraw(entry)
                raise
        else:
            retry = self.retry_after()
            raise RateLimitError(
                f"The server is at capacity ({self.max_active} active, {self.max_queue} queued); "
                f"retry in {retry} s.",
                retry_after=retry,
            )
        try:
            yield
        finally:
            self._release(ticket)

    def _withdraw(self, entry: tuple[int, float, anyio.Event]) -> None:
        if entry in self._waiting:
            self._waiting.remove(entry)
        else:  # promoted just as the wait ended: hand the place on
            self._release(entry[0])

    def _release(self, ticket: int) -> None:
        self._active.pop(ticket, None)
        while self._waiting and len(self._active) < self.max_active:
            waiter_ticket, estimate, event = self._waiting.popleft()
            self._active[waiter_ticket] = estimate
            event.set()
