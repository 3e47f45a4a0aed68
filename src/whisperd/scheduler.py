"""Fair scheduling of engine work, and admission control in front of it.

A transcription is a generator whose every ``next()`` is one step: one 30-second window
of Whisper decoding (or a segment already decoded). :class:`Stepper` runs the steps of all
active tasks round-robin on a fixed number of slot threads, so a short clip submitted
while a long file runs gets its turn after at most one window of each task ahead of it.
Cancellation and deadlines are checked between steps, so a stopped task frees its slot at
the next window.

:class:`Admission` bounds how many requests are active (decoded, in the round-robin) and
how many wait, undecoded, behind them; beyond both a request is refused with 429 and a
Retry-After estimated from the backlog of audio and the measured speed.
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
from typing import Generic, TypeVar

import anyio

from whisperd.errors import (
    CancelledError,
    DeadlineExceededError,
    RateLimitError,
    ServiceUnavailableError,
    WhisperdError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()


class Task(Generic[T]):
    """The steps of one piece of work; iterate it (from any one thread) to get its items."""

    def __init__(self, steps: Iterator[T], deadline: float | None) -> None:
        self._steps = steps
        self._deadline = deadline
        self._out: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._stop: WhisperdError | None = None
        self.finished = False
        self.busy_seconds = 0.0

    def cancel(self, reason: WhisperdError | None = None) -> None:
        """Stop at the next step; the consumer sees ``reason`` (default: cancelled)."""
        if self._stop is None:
            self._stop = reason or CancelledError("The request was cancelled.")

    def _step(self) -> None:
        """Run one step; called by a slot thread, never by two at once."""
        if self._stop is None and self._deadline is not None and time.monotonic() > self._deadline:
            self._stop = DeadlineExceededError(
                "The request ran past its deadline; send shorter audio or a larger X-Timeout."
            )
        if self._stop is not None:
            self._finish(self._stop)
            return
        started = time.monotonic()
        try:
            item = next(self._steps)
        except StopIteration:
            self._finish(_END)
        except WhisperdError as exc:
            self._finish(exc)
        except Exception as exc:
            logger.exception("Engine step failed")
            self._finish(exc)
        else:
            self._out.put(item)
        finally:
            self.busy_seconds += time.monotonic() - started

    def _finish(self, outcome: object) -> None:
        self.finished = True
        close = getattr(self._steps, "close", None)
        if close is not None:
            close()
        self._out.put(outcome)

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._out.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]


class Stepper:
    """Runs tasks' steps round-robin on ``slots`` threads."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._ready: deque[Task[object]] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"whisperd-slot-{i}", daemon=True)
            for i in range(slots)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, steps: Iterator[T], *, deadline: float | None = None) -> Task[T]:
        """Queue ``steps`` behind the active tasks; returns the task to iterate."""
        task: Task[T] = Task(steps, deadline)
        with self._cv:
            if self._closed:
                raise ServiceUnavailableError("The engine is shutting down.")
            self._ready.append(task)  # type: ignore[arg-type]
            self._cv.notify()
        return task

    @property
    def pending(self) -> int:
        """Tasks waiting for their next step."""
        return len(self._ready)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._ready and not self._closed:
                    self._cv.wait()
                if not self._ready:
                    return
                task = self._ready.popleft()
            task._step()
            if not task.finished:
                with self._cv:
                    if self._closed:
                        task.cancel(ServiceUnavailableError("The engine is shutting down."))
                    self._ready.append(task)
                    self._cv.notify()

    def close(self) -> None:
        """Cancel what is queued and stop the slot threads after their current step."""
        with self._cv:
            self._closed = True
            for task in self._ready:
                task.cancel(ServiceUnavailableError("The engine is shutting down."))
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)


class Speedometer:
    """Measured engine speed: audio seconds per busy slot-second (an exponential average), and
    the totals since start of finished transcriptions, their audio and their busy time."""

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

    Used from the event loop. Waiters are served first come, first served.
    """

    def __init__(self, max_active: int, max_queue: int, slots: int, speed: Speedometer) -> None:
        self.max_active = max_active
        self.max_queue = max_queue
        self._slots = slots
        self._speed = speed
        self._active: dict[int, float] = {}
        self._waiting: deque[tuple[int, float, anyio.Event]] = deque()
        self._next_id = 0
        self.draining = False

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def retry_after(self) -> int:
        """Seconds until a queue place is likely free: the queued audio over the measured speed.

        The shortest active request finishing also frees a place, so that bounds it too.
        """
        queued = sum(seconds for _, seconds, _ in self._waiting)
        shortest = min(self._active.values(), default=0.0)
        throughput = max(self._speed.speed * self._slots, 1e-3)
        return max(1, math.ceil((queued + shortest) / throughput))

    @asynccontextmanager
    async def enter(
        self, audio_seconds: float | None, *, deadline: float | None = None
    ) -> AsyncIterator[None]:
        """Hold an active place for the body; wait for one in the queue, or raise 429/503.

        A wait that outlasts ``deadline`` (a monotonic instant) raises 504.
        """
        if self.draining:
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
