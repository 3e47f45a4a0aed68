"""Running the app under uvicorn with a graceful drain on SIGTERM, and exit status 0.

On the first SIGTERM/SIGINT: ``/readyz`` turns 503 and new transcriptions get 503 (so a load
balancer takes the replica out), requests already admitted run to completion for up to
``drain_timeout`` seconds, then uvicorn closes the listener and the process exits 0. A second
signal stops at once. uvicorn itself would re-raise the signal after its shutdown (exit 143),
so the server here captures signals its own way.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Generator
from contextlib import contextmanager
from types import FrameType

import uvicorn
from fastapi import FastAPI

from whisperd.settings import Settings

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Once the drain is over, time left for responses already being written.
_FINAL_GRACE_S = 2.0


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains the app before it stops accepting connections."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout: float) -> None:
        super().__init__(config)
        self._app = app
        self._drain_timeout = drain_timeout
        self._drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started is None and not self.should_exit:
            logger.info("Signal %d: draining (up to %.0f s)", sig, self._drain_timeout)
            self._drain_started = time.monotonic()
            self._app.state.draining = True
            admission = getattr(self._app.state, "admission", None)
            if admission is not None:
                admission.draining = True
            jobs = getattr(self._app.state, "jobs", None)
            if jobs is not None:
                jobs.drain()  # no new jobs; those still running at the end go back to the queue
            return
        logger.info("Second signal: stopping now")
        self.should_exit = True
        self.force_exit = True

    def _busy(self) -> int:
        admission = getattr(self._app.state, "admission", None)
        busy = 0 if admission is None else admission.active + admission.waiting
        jobs = getattr(self._app.state, "jobs", None)
        return busy + (0 if jobs is None else int(jobs.running))

    async def on_tick(self, counter: int) -> bool:
        if self._drain_started is not None and not self.should_exit:
            elapsed = time.monotonic() - self._drain_started
            busy = self._busy()
            if busy == 0 or elapsed >= self._drain_timeout:
                if busy:
                    logger.warning("Drain timeout: stopping with %d request(s) in flight", busy)
                self.should_exit = True
        return await super().on_tick(counter)

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(settings: Settings) -> int:
    """Run the server until it is stopped; returns the process exit status."""
    from whisperd.api import create_app

    if not settings.is_loopback_host() and not settings.all_api_keys():
        logger.warning(
            "Listening on %s with NO API KEY: anyone who can reach this port can use the "
            "server. Set WHISPERD_API_KEYS or WHISPERD_API_KEYS_FILE.",
            settings.host,
        )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(_FINAL_GRACE_S),
        proxy_headers=True,
    )
    server = DrainingServer(config, app, settings.drain_timeout)
    server.run()
    if not server.started:
        logger.error("The server did not start; see the errors above.")
        return 1
    return 0
