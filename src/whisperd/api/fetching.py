"""Audio URLs fetched for API requests: on threads of their own, a bounded number at once.

A slow or stalled URL must not hold the threads that every other request needs, so fetches
run under their own limit (``fetch_concurrency``), and a fetch beyond it is refused with 429
at once rather than queued. Each fetch ends by its request's deadline, and at its next chunk
after the client goes away.
"""

from __future__ import annotations

import functools
import tempfile
import threading

import anyio

from whisperd import fetch
from whisperd.api.pipeline import until_cancelled
from whisperd.errors import RateLimitError
from whisperd.settings import Settings

_RETRY_AFTER_S = 5


class Fetcher:
    """The API's URL fetches, at most ``settings.fetch_concurrency`` at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._threads = anyio.CapacityLimiter(settings.fetch_concurrency)
        self._stops: set[threading.Event] = set()  # one per fetch in progress

    @property
    def active(self) -> int:
        return len(self._stops)

    @property
    def saturated(self) -> bool:
        """Whether every fetch place is taken (a new fetch would get 429)."""
        return self.active >= self.settings.fetch_concurrency

    def stop(self) -> None:
        """Stop every fetch in progress (the server is going away)."""
        for stop in list(self._stops):
            stop.set()

    async def fetch(
        self, url: str, *, deadline: float, cancel: anyio.Event | None = None
    ) -> tempfile.SpooledTemporaryFile[bytes]:
        """The file at url, positioned at 0; the caller closes it. The fetch stops at its next
        chunk once ``cancel`` is set."""
        if self.saturated:
            raise RateLimitError(
                f"The server is already fetching {self.settings.fetch_concurrency} audio URLs "
                f"(WHISPERD_FETCH_CONCURRENCY); retry in {_RETRY_AFTER_S} s, or upload the file.",
                retry_after=_RETRY_AFTER_S,
            )
        stop = threading.Event()
        download = functools.partial(
            fetch.fetch_to_file, url, self.settings, deadline=deadline, stopped=stop.is_set
        )
        self._stops.add(stop)
        try:
            return await until_cancelled(
                cancel, stop.set, lambda: anyio.to_thread.run_sync(download, limiter=self._threads)
            )
        finally:
            self._stops.discard(stop)
