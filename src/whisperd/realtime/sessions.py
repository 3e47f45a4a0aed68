"""The server's live sessions: how many may run, the drain that ends them, and their metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import anyio
from starlette.websockets import WebSocket

from whisperd.engine import Transcriber
from whisperd.errors import (
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
    WhisperdError,
)
from whisperd.realtime.protocol import GOING_AWAY, POLICY_VIOLATION, TOO_MANY
from whisperd.realtime.session import Budget, LiveSession, refuse
from whisperd.services import Lifecycle
from whisperd.settings import Settings

logger = logging.getLogger(__name__)

DECODES_PER_SESSION = 4
"""Engine decodes one session may wait on at once: a partial, a speculative final and the
committed turns waiting for their transcripts."""
PARTIALS_PER_BATCH = 8
"""Partial decodes in flight, server-wide, are at most an eighth of a batch (one on a CPU):
under load they are what gives way, so that final transcripts and file requests keep their
pace (4 sessions beside a file request, on 2 cores: turns' lag p50 1.08 s at one, 1.40-1.81 s
at two)."""


class LiveSessions:
    """Runs live sessions, at most ``realtime_max_sessions`` at once. Created in the event
    loop. When ``lifecycle`` drains (from any thread, or a signal handler), no new sessions
    start and open ones complete their turn in progress, then close."""

    def __init__(
        self,
        settings: Settings,
        engine: Transcriber,
        observe: Callable[[str, float], None],
        *,
        lifecycle: Lifecycle,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.active = 0
        self._observe = observe
        self._lifecycle = lifecycle
        # What open sessions wait on, set in the loop when the lifecycle drains.
        self._draining = anyio.Event()
        self._loop = asyncio.get_running_loop()
        lifecycle.on_drain(self._wake)
        limit = settings.realtime_max_sessions
        self._threads = anyio.CapacityLimiter(max(1, DECODES_PER_SESSION * limit))
        self._partials = Budget(max(1, engine.plan.batch_size // PARTIALS_PER_BATCH))

    def _wake(self) -> None:
        if not self._loop.is_closed():  # a loop gone with its app's lifespan has no sessions
            self._loop.call_soon_threadsafe(self._draining.set)

    def _refusal(self) -> tuple[WhisperdError, int] | None:
        if self._lifecycle.draining:
            error: WhisperdError = ServiceUnavailableError(
                "The server is shutting down.", code="draining"
            )
            return error, GOING_AWAY
        limit = self.settings.realtime_max_sessions
        if limit == 0:
            off = InvalidRequestError(
                "Live transcription is off on this server (WHISPERD_REALTIME_MAX_SESSIONS=0).",
                code="realtime_disabled",
            )
            return off, POLICY_VIOLATION
        if self.active >= limit:
            full = RateLimitError(
                f"All {limit} live sessions are in use; try again later.",
                retry_after=1,
                code="too_many_sessions",
            )
            return full, TOO_MANY
        return None

    async def serve(self, websocket: WebSocket, *, configured: bool) -> None:
        """Run ``websocket``'s session (accepted already) to its end, or refuse it with an
        ``error`` event and a close frame when the server is full or draining."""
        refusal = self._refusal()
        if refusal is not None:
            await refuse(websocket, *refusal)
            return
        session = LiveSession(
            websocket,
            self.settings,
            self.engine,
            configured=configured,
            draining=self._draining,
            limiter=self._threads,
            partials=self._partials,
            observe=self._observe,
        )
        self.active += 1
        self._observe("session", 1)
        logger.info("Live session %s opened (%d open)", session.id, self.active)
        try:
            with self.engine.live_session():
                await session.run()
        finally:
            self.active -= 1
            logger.info("Live session %s closed (%d open)", session.id, self.active)
