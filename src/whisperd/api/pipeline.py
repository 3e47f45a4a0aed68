"""The synchronous request flow shared by every transcription route (and language detection).

input (spooled upload or fetched URL) -> the engine's first step (model, options, declared
length) -> admission (bounded; 429 beyond it) -> the engine's second step (decode the first
section, start) -> the batching engine, which decodes the rest section by section (deadline;
cancelled when the client leaves) -> our dataclasses. Nothing here blocks the event loop, and
no request holds more than a section of decoded audio.

Each method takes a :class:`Call`: the deadline, the timings to record into, and a cancel
signal (an :class:`anyio.Event` the API layer sets when the client goes away); nothing here
sees the request.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeVar

import anyio

from whisperd.engine import (
    DETECT_SECONDS,
    Item,
    LanguageDetection,
    TranscribeOptions,
    Transcriber,
    Transcription,
    TranscriptionInfo,
    collect,
)
from whisperd.scheduler import Admission, Task
from whisperd.settings import Settings
from whisperd.speakers.diarize import attribute, channel_sources, merge_channels
from whisperd.speakers.options import NO_SPEAKERS, SpeakerOptions
from whisperd.timings import Timings

if TYPE_CHECKING:
    from whisperd.api.fetching import Fetcher

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """One caller's work: the monotonic instant it must end by, the timings it records into,
    and the event set when the caller goes away (None: it never does)."""

    deadline: float
    timings: Timings
    cancel: anyio.Event | None = None


class Run:
    """A running transcription: its engine task, seen through the request's timings."""

    def __init__(self, task: Task[Item], timings: Timings) -> None:
        self.task = task
        self.timings = timings
        self.completed = False

    def __iter__(self) -> Iterator[Item]:
        for item in self.task:
            if isinstance(item, TranscriptionInfo):
                self.timings.audio_seconds = item.duration
            yield item
        self.completed = True


class Pipeline:
    """Runs transcriptions for the routes: one per app, holding the engine, admission and the
    URL fetcher."""

    def __init__(
        self, settings: Settings, engine: Transcriber, admission: Admission, fetcher: Fetcher
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.admission = admission
        self.fetcher = fetcher

    @asynccontextmanager
    async def started(
        self,
        source: IO[bytes],
        options: TranscribeOptions,
        *,
        model: str | None,
        call: Call,
    ) -> AsyncIterator[Run]:
        """Admit and begin; yields the running transcription, stopped with the block.

        The model and options are checked, and the declared length against the limit, before
        the request waits or decodes anything.
        """
        async with self._started([source], options, model=model, call=call) as runs:
            yield runs[0]

    @asynccontextmanager
    async def _started(
        self,
        sources: Sequence[IO[bytes]],
        options: TranscribeOptions,
        *,
        model: str | None,
        call: Call,
        channels: Sequence[int | None] = (None,),
    ) -> AsyncIterator[list[Run]]:
        """Admit once, then begin a transcription of each of ``channels`` (None: mixed
        down), each read from its own of ``sources`` (views of one file)."""
        engine, deadline, timings = self.engine, call.deadline, call.timings
        prepared = await anyio.to_thread.run_sync(
            functools.partial(engine.prepare, options, model=model, source=sources[0])
        )
        estimate = None if prepared.estimate is None else prepared.estimate * len(channels)
        async with AsyncExitStack() as stack:
            with timings.measure("queue"):
                await stack.enter_async_context(self.admission.enter(estimate, deadline=deadline))
            runs: list[Run] = []
            with timings.measure("decode"):
                for source, channel in zip(sources, channels, strict=True):
                    task = await anyio.to_thread.run_sync(
                        functools.partial(
                            engine.begin,
                            prepared,
                            engine.sections(source, channel=channel),
                            deadline=deadline,
                        )
                    )
                    stack.callback(task.cancel)
                    runs.append(Run(task, timings))
            started = time.perf_counter()
            try:
                yield runs
            finally:
                timings.add("inference", time.perf_counter() - started)

    async def transcribe(
        self,
        source: IO[bytes],
        options: TranscribeOptions,
        *,
        model: str | None,
        call: Call,
        speakers: SpeakerOptions = NO_SPEAKERS,
    ) -> Transcription:
        """Transcribe completely (each channel on its own, with ``multichannel``), with the
        speakers ``speakers`` asks for, stopping the work once the call is cancelled."""
        sources, channels = await anyio.to_thread.run_sync(
            functools.partial(channel_sources, source, multichannel=speakers.multichannel)
        )
        async with self._started(
            sources, options, model=model, call=call, channels=channels
        ) as runs:

            def stop() -> None:
                for run in runs:
                    run.task.cancel()

            def collected() -> list[Transcription]:
                # one thread waits for every channel while their tasks run in the engine (a
                # thread each would let a few many-channel requests take every worker thread);
                # the first to fail is the answer, and leaving the context stops the others
                return [collect(run) for run in runs]

            results = await until_cancelled(
                call.cancel, stop, lambda: anyio.to_thread.run_sync(collected)
            )
        if speakers.multichannel:
            return merge_channels(results, speakers.names)
        if not speakers.by_voice:
            return results[0]
        with call.timings.measure("speakers"):
            return await anyio.to_thread.run_sync(attribute, results[0], speakers)

    async def detect(
        self,
        source: IO[bytes],
        *,
        model: str | None,
        call: Call,
    ) -> LanguageDetection:
        """Detect the spoken language, admitted as a transcription is (the model is checked
        before the request waits), stopping the work once the call is cancelled."""
        engine, deadline, timings = self.engine, call.deadline, call.timings
        loaded = await anyio.to_thread.run_sync(engine.detector, model)
        async with AsyncExitStack() as stack:
            with timings.measure("queue"):
                await stack.enter_async_context(
                    self.admission.enter(DETECT_SECONDS, deadline=deadline)
                )
            with timings.measure("inference"):
                task = await anyio.to_thread.run_sync(
                    functools.partial(engine.detect, loaded, source, deadline=deadline)
                )
                try:
                    return await until_cancelled(
                        call.cancel, task.cancel, lambda: anyio.to_thread.run_sync(task.result)
                    )
                finally:
                    task.cancel()

    async def stream(
        self,
        opened: AbstractAsyncContextManager[IO[bytes]],
        options: TranscribeOptions,
        *,
        model: str | None,
        call: Call,
    ) -> tuple[AsyncIterator[Item], Callable[[], Awaitable[None]]]:
        """Start a transcription of the source ``opened`` gives; return its items as an async
        iterator, and the cleanup that stops it and closes the source.

        The source stays open while the response streams: later pieces are decoded from it.
        Errors before the first item (admission, decoding the first piece) raise here, so the
        route can still answer with a proper status.
        """
        stack = AsyncExitStack()
        try:
            source = await stack.enter_async_context(opened)
            run = await stack.enter_async_context(
                self.started(source, options, model=model, call=call)
            )
        except BaseException:
            await stack.aclose()
            raise

        async def items() -> AsyncIterator[Item]:
            iterator = iter(run)
            while True:
                item = await anyio.to_thread.run_sync(_next_or_none, iterator)
                if item is None:
                    return
                yield item

        return items(), stack.aclose


def _next_or_none(iterator: Any) -> Item | None:
    item: Item | None = next(iterator, None)
    return item


async def until_cancelled(
    cancel: anyio.Event | None, on_cancel: Callable[[], None], work: Callable[[], Awaitable[T]]
) -> T:
    """Await ``work()``; if ``cancel`` is set meanwhile, call ``on_cancel`` (which should make
    the work end soon)."""
    if cancel is None:
        return await work()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_on_set, cancel, on_cancel)
            try:
                result = await work()
            finally:
                group.cancel_scope.cancel()
    except BaseExceptionGroup as grouped:
        # the watcher never fails, so the group holds the work's one error
        raise grouped.exceptions[0] from None
    return result


async def _on_set(cancel: anyio.Event, on_cancel: Callable[[], None]) -> None:
    await cancel.wait()
    logger.info("Client went away; stopping its work")
    on_cancel()
