"""The synchronous request flow shared by every transcription route.

input (spooled upload or fetched URL) -> admission (bounded; 429 beyond it) -> decode in a
thread -> the engine's fair scheduler (deadline; cancelled when the client leaves) -> our
dataclasses. Nothing here blocks the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import IO, Any

import anyio
from starlette.requests import Request

from whisperd import audio
from whisperd.engine import (
    Segment,
    TranscribeOptions,
    Transcriber,
    Transcription,
    TranscriptionInfo,
)
from whisperd.errors import AudioTooLongError, DeadlineExceededError, ValidationError
from whisperd.scheduler import Admission, Task
from whisperd.settings import Settings
from whisperd.timings import Timings

logger = logging.getLogger(__name__)

Item = TranscriptionInfo | Segment
_DISCONNECT_POLL_S = 0.25


def deadline_for(request: Request, settings: Settings) -> float:
    """The monotonic instant a request must finish by: the setting, shortened by X-Timeout."""
    timeout = settings.request_timeout
    header = request.headers.get("x-timeout")
    if header:
        try:
            asked = float(header.removesuffix("s"))
        except ValueError:
            raise ValidationError(
                f"X-Timeout must be a number of seconds, not {header!r}.", param="X-Timeout"
            ) from None
        if not 0 < asked < float("inf"):
            raise ValidationError(
                "X-Timeout must be a positive number of seconds.", param="X-Timeout"
            )
        timeout = min(timeout, asked)
    return time.monotonic() + timeout


class Pipeline:
    """Runs transcriptions for the routes: one per app, holding the engine and admission."""

    def __init__(self, settings: Settings, engine: Transcriber, admission: Admission) -> None:
        self.settings = settings
        self.engine = engine
        self.admission = admission

    @asynccontextmanager
    async def started(
        self,
        source: IO[bytes],
        options: TranscribeOptions,
        *,
        model: str | None,
        deadline: float,
        timings: Timings,
    ) -> AsyncIterator[Task[Item]]:
        """Admit, decode and submit; yields the running engine task, which ends with the block.

        Options are checked against the model before the request waits or decodes anything.
        """
        loaded = await anyio.to_thread.run_sync(self.engine.model_for, model)
        self.engine.check(loaded, options)
        estimate = await anyio.to_thread.run_sync(audio.probe_duration, source)
        source.seek(0)
        limit = self.settings.max_audio_seconds
        if estimate is not None and estimate > limit:
            # refused on the container's word, before anything is decoded; a header that
            # understates the length is caught by the decoder's own limit
            raise AudioTooLongError(
                f"The audio lasts {estimate:.0f} s, over the limit of {limit:.0f} s; split it "
                "or raise WHISPERD_MAX_AUDIO_SECONDS.",
                param="file",
            )
        async with AsyncExitStack() as stack:
            with timings.measure("queue"):
                await stack.enter_async_context(self.admission.enter(estimate, deadline=deadline))
            with timings.measure("decode"):
                samples = await anyio.to_thread.run_sync(
                    lambda: audio.decode(source, max_seconds=self.settings.max_audio_seconds)
                )
            timings.audio_seconds = audio.duration(samples)
            task = self.engine.submit(samples, options, model=loaded.name, deadline=deadline)
            del samples  # the task holds the only reference now
            started = time.perf_counter()
            try:
                yield task
            finally:
                task.cancel()
                timings.add("inference", time.perf_counter() - started)
                self.engine.speed.record(timings.audio_seconds, task.busy_seconds)

    async def transcribe(
        self,
        request: Request,
        source: IO[bytes],
        options: TranscribeOptions,
        *,
        model: str | None,
        timings: Timings,
    ) -> Transcription:
        """Transcribe completely, stopping the work if the client disconnects."""
        deadline = deadline_for(request, self.settings)
        async with self.started(
            source, options, model=model, deadline=deadline, timings=timings
        ) as task:
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(_cancel_on_disconnect, request, task)
                    try:
                        return await anyio.to_thread.run_sync(_collect, task)
                    finally:
                        group.cancel_scope.cancel()
            except BaseExceptionGroup as grouped:
                # the watcher never fails, so the group holds the transcription's one error
                raise grouped.exceptions[0] from None

    async def stream(
        self,
        request: Request,
        source: IO[bytes],
        options: TranscribeOptions,
        *,
        model: str | None,
        timings: Timings,
    ) -> tuple[AsyncIterator[Item], Callable[[], Any]]:
        """Start a transcription and return its items as an async iterator, plus a cleanup.

        Errors before the first item (admission, decoding) raise here, so the route can
        still answer with a proper status; the cleanup must run when the response ends.
        """
        deadline = deadline_for(request, self.settings)
        stack = AsyncExitStack()
        try:
            task = await stack.enter_async_context(
                self.started(source, options, model=model, deadline=deadline, timings=timings)
            )
        except BaseException:
            await stack.aclose()
            raise

        async def items() -> AsyncIterator[Item]:
            iterator = iter(task)
            while True:
                item = await anyio.to_thread.run_sync(_next_or_none, iterator)
                if item is None:
                    return
                yield item

        return items(), stack.aclose


def _next_or_none(iterator: Any) -> Item | None:
    item: Item | None = next(iterator, None)
    return item


def _collect(task: Task[Item]) -> Transcription:
    info: TranscriptionInfo | None = None
    segments: list[Segment] = []
    for item in task:
        if isinstance(item, TranscriptionInfo):
            info = item
        else:
            segments.append(item)
    if info is None:  # pragma: no cover - the engine's first step always yields it
        raise DeadlineExceededError("The request ended before transcription started.")
    return Transcription.from_parts(info, tuple(segments))


async def _cancel_on_disconnect(request: Request, task: Task[Item]) -> None:
    # Starlette offers no disconnect event once the body is read: poll for it.
    while not await request.is_disconnected():  # noqa: ASYNC110
        await anyio.sleep(_DISCONNECT_POLL_S)
    logger.info("Client went away; stopping its transcription")
    task.cancel()
