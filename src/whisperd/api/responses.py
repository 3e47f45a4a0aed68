"""Responses shared by the routes: a rendered transcript, and a stream that cleans up."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from whisperd.engine import Transcription
from whisperd.spec import Spec
from whisperd.timings import Timings

EVENT_STREAM_HEADERS = {"Cache-Control": "no-cache"}


def transcript_response(transcription: Transcription, spec: Spec, timings: Timings) -> Response:
    """The transcript as the request's ``spec`` asks for (verbose_json with the request's
    timings), rendered in the "format" stage."""
    with timings.measure("format"):
        verbose = spec.response_format == "verbose_json"
        rounded = timings.rounded() if verbose else None
        rendered = spec.render(transcription, timings=rounded, compact=True)
    return Response(rendered.body, media_type=rendered.media_type)


def event_stream(
    content: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[Any]] | None = None
) -> StreamingResponse:
    """A ``text/event-stream`` response of server-sent events (that runs ``cleanup``, if
    given, however it ends)."""
    headers = dict(EVENT_STREAM_HEADERS)
    if cleanup is None:
        return StreamingResponse(content, media_type="text/event-stream", headers=headers)
    return CleanupStreamingResponse(
        content, cleanup, media_type="text/event-stream", headers=headers
    )


class CleanupStreamingResponse(StreamingResponse):
    """A streaming response that runs ``cleanup`` however it ends (done, error, disconnect)."""

    def __init__(
        self, content: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[Any]], **kw: Any
    ) -> None:
        super().__init__(content, **kw)
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup()
