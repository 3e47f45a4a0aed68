"""What one whisperd process runs, typed and passed: its :class:`Services`, and the
:class:`Lifecycle` that says whether it is ready and whether it drains.

The API server builds its services in the app's lifespan; ``whisperd worker`` builds the same
kind of object with no request machinery (no admission, pipeline or live sessions). Routes,
metrics, the server's signal handling and the jobs service read them from here instead of from
attributes looked up by name.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from whisperd.engine import Transcriber
from whisperd.settings import Settings

if TYPE_CHECKING:
    from whisperd.api.pipeline import Pipeline
    from whisperd.jobs.service import JobsService
    from whisperd.metrics import Metrics
    from whisperd.realtime.sessions import LiveSessions
    from whisperd.scheduler import Admission

logger = logging.getLogger(__name__)


class Lifecycle:
    """Readiness and draining, owned in one place.

    ``ready`` is set once the process has started its services and cleared when it stops;
    :meth:`drain` (from a signal handler, or any thread) turns draining on for good and runs
    the callbacks registered with :meth:`on_drain`: each part stops taking new work its own way.
    """

    def __init__(self) -> None:
        # Reentrant: drain() may run in a signal handler while the main thread holds the lock.
        self._lock = threading.RLock()
        self._ready = False
        self._draining = False
        self._on_drain: list[Callable[[], None]] = []

    @property
    def ready(self) -> bool:
        """Whether the services are started (and not yet stopped)."""
        return self._ready

    @property
    def draining(self) -> bool:
        """Whether the process is shutting down: no new work is taken."""
        return self._draining

    @property
    def serving(self) -> bool:
        """Ready and not draining: what ``/readyz`` and ``whisperd_ready`` report."""
        return self._ready and not self._draining

    def started(self) -> None:
        """The services are up."""
        self._ready = True

    def stopped(self) -> None:
        """The services are going away."""
        self._ready = False

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when draining starts (at once, if it has already)."""
        with self._lock:
            if not self._draining:
                self._on_drain.append(callback)
                return
        callback()

    def drain(self) -> bool:
        """Start draining; True for the call that started it, False if it had already."""
        with self._lock:
            if self._draining:
                return False
            self._draining = True
            callbacks = list(self._on_drain)
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one part failing to stop must not keep the others taking work
                logger.exception("Draining %r failed", callback)
        return True


@dataclass(frozen=True, kw_only=True)
class Services:
    """One process's services, built once when it starts.

    ``admission``, ``pipeline`` and ``live`` are the API server's (None in a worker);
    ``jobs`` is None when jobs are off.
    """

    settings: Settings
    lifecycle: Lifecycle
    metrics: Metrics
    engine: Transcriber
    jobs: JobsService | None
    admission: Admission | None = None
    pipeline: Pipeline | None = None
    live: LiveSessions | None = None

    def busy(self) -> int:
        """Work in progress here: requests admitted or waiting, URL fetches, live sessions and
        jobs running (what a drain waits for)."""
        busy = 0
        if self.admission is not None:
            busy += self.admission.active + self.admission.waiting
        if self.pipeline is not None:
            busy += self.pipeline.fetcher.active
        if self.live is not None:
            busy += self.live.active
        if self.jobs is not None:
            busy += self.jobs.running
        return busy
