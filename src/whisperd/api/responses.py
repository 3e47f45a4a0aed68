"""Inputs and outputs shared by the routes: opening the audio, rendering the transcript, SSE."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import IO, Any

import anyio
from fastapi import UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from whisperd import formats
from whisperd.api.fetching import Fetcher
from whisperd.api.middleware import upload_too_large
from whisperd.engine import Segment, Transcription, TranscriptionInfo
from whisperd.errors import EmptyAudioError, InvalidRequestError, WhisperdError
from whisperd.subtitles import DEFAULT_CUES, SubtitleOptions
from whisperd.timings import Timings

_STREAMED_FORMATS = ("json", "text", "diarized_json")


@asynccontextmanager
async def audio_input(
    file: UploadFile | None,
    url: str | None,
    fetcher: Fetcher,
    *,
    request: Request,
    deadline: float,
    timings: Timings,
) -> AsyncIterator[IO[bytes]]:
    """The request's audio as a file object: the spooled upload, or the URL fetched safely."""
    if file is not None and url:
        raise InvalidRequestError("Send either 'file' or 'url', not both.", param="url")
    if file is not None:
        if file.size == 0:
            raise EmptyAudioError("The uploaded file is empty (0 bytes).", param="file")
        limit = fetcher.settings.max_upload_bytes
        if file.size is not None and file.size > limit:
            raise upload_too_large(limit)
        yield file.file
        return
    if not url:
        raise InvalidRequestError(
            "Missing audio: send a 'file' (multipart upload) or a 'url'.",
            param="file",
            code="missing_field",
        )
    with timings.measure("fetch"):
        fetched = await fetcher.fetch(url.strip(), request=request, deadline=deadline)
    try:
        yield fetched
    finally:
        fetched.close()


def check_format(
    response_format: str,
    *,
    stream: bool = False,
    granularities: Sequence[str] = (),
    subtitles: SubtitleOptions = DEFAULT_CUES,
) -> None:
    """Refuse, as OpenAI does, options the response format cannot carry."""
    subtitles.check(response_format)
    if stream and response_format not in _STREAMED_FORMATS:
        raise InvalidRequestError(
            f"stream=true sends server-sent events of text; response_format {response_format} "
            "cannot be streamed (use json or text, or stream=false).",
            param="response_format",
        )
    if granularities and response_format != "verbose_json":
        raise InvalidRequestError(
            f"timestamp_granularities[] needs response_format=verbose_json, not {response_format}.",
            param="timestamp_granularities",
        )


def render(
    transcription: Transcription,
    response_format: str,
    timings: Timings,
    *,
    words: bool | None = None,
    segments: bool = True,
    subtitles: SubtitleOptions = DEFAULT_CUES,
) -> Response:
    """The transcript as the response ``response_format`` asks for."""
    with timings.measure("format"):
        if response_format == "verbose_json":
            body = formats.to_verbose_json(
                transcription,
                words=words,
                segments=segments,
                extra={"timings": timings.rounded()},
            )
            return JSONResponse(body)
        if response_format == "json":
            return JSONResponse(formats.to_json(transcription))
        if response_format == "diarized_json":
            return JSONResponse(formats.to_diarized_json(transcription))
        text = formats.render(transcription, response_format, subtitles)
        return PlainTextResponse(text, media_type=formats.MEDIA_TYPES[response_format])


def sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _delta(segment: Segment) -> dict[str, Any]:
    delta: dict[str, Any] = {
        "type": "transcript.text.delta",
        "delta": segment.text,
        "segment_id": segment.id,
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
    }
    if segment.words is not None:
        delta["words"] = formats.word_dicts(segment.words)
    return delta


def _done(texts: list[str], info: TranscriptionInfo | Transcription | None) -> dict[str, Any]:
    done: dict[str, Any] = {"type": "transcript.text.done", "text": "".join(texts).strip()}
    if info is not None:
        done["usage"] = {"type": "duration", "seconds": math.ceil(info.duration)}
        done["language"] = formats.LANGUAGE_NAMES.get(info.language, info.language)
        done["duration"] = round(info.duration, 3)
    return done


async def sse_events(items: AsyncIterator[TranscriptionInfo | Segment]) -> AsyncIterator[bytes]:
    """OpenAI's transcription stream: a delta event per segment, then the done event."""
    info: TranscriptionInfo | None = None
    texts: list[str] = []
    try:
        async for item in items:
            if isinstance(item, TranscriptionInfo):
                info = item
                continue
            texts.append(item.text)
            yield sse(_delta(item))
    except WhisperdError as exc:
        yield sse(exc.to_dict())
        return
    yield sse(_done(texts, info))


async def sse_transcript(
    transcription: Transcription, response_format: str
) -> AsyncIterator[bytes]:
    """The stream of a transcript already complete: a delta event per segment (and, for
    diarized_json, its ``transcript.text.segment`` event with the speaker), then done."""
    for segment in transcription.segments:
        yield sse(_delta(segment))
        if response_format == "diarized_json":
            yield sse(formats.diarized_segment(segment))
    yield sse(_done([s.text for s in transcription.segments], transcription))


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
