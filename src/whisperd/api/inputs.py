"""The request's audio, read one way for every route: a multipart upload, a URL, or the
function's body (raw audio, or a URL as plain text), each held to its limits.

:func:`audio_form` is the form dependency of the transcription, translation, language and
jobs routes; :func:`read_function_body` reads the body of the two function routes. Both give
an :class:`AudioInput`, which opens as a file for a synchronous request
(:meth:`AudioInput.opened`) or is read into bytes to store with a job
(:meth:`AudioInput.for_job`). :func:`request_call` is what the pipeline takes instead of
the request: its deadline, its timings, and an event set once the client goes away.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import IO, Annotated

import anyio
from fastapi import Depends, File, Form, Request, UploadFile
from pydantic.json_schema import SkipJsonSchema

from whisperd.api.fetching import Fetcher
from whisperd.api.middleware import upload_too_large
from whisperd.api.pipeline import Call
from whisperd.errors import EmptyAudioError, InvalidRequestError, PayloadTooLargeError
from whisperd.timings import Timings

MAX_URL_BYTES = 8192
"""The longest body the function routes read as a URL."""
AUDIO_TYPES = ("audio/", "video/", "application/octet-stream", "application/ogg")
"""Content-Types of a function body that is the audio itself."""
_DISCONNECT_POLL_S = 0.25
_SPOOL_BYTES = 1 << 20

FUNCTION_BODY = {
    "required": True,
    "content": {
        "text/plain": {"schema": {"type": "string", "example": "https://example.com/call.mp3"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
"""The function routes' request body, for the OpenAPI document."""

# A form field is sent or left out, never null: ``Omitted`` keeps the None that stands for
# "left out" out of the schema, so the docs (and clients generated from them) offer no null
# and a file stays plainly binary.
Omitted = SkipJsonSchema[None]

FileField = Annotated[
    UploadFile | Omitted,
    File(description="The audio or video file (any format FFmpeg reads)."),
]
UrlField = Annotated[
    str | Omitted,
    Form(description="Instead of `file`: an http(s) URL of the audio, fetched by the server."),
]
TooLarge = Callable[[int, str], PayloadTooLargeError]
"""The error for input over ``limit`` bytes in the field ``param``."""


@dataclass(frozen=True, slots=True)
class JobAudio:
    """A job's input: the audio's bytes (an upload) or its URL."""

    url: str | None = None
    data: bytes | None = None
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class AudioInput:
    """The audio a request sent: a multipart ``file``, a ``url``, or a function's ``body``
    (the raw audio, spooled). ``param`` names the field the URL or the body came in."""

    file: UploadFile | None = None
    url: str | None = None
    body: IO[bytes] | None = None
    param: str = "url"

    def checked(self) -> AudioInput:
        """Refuse a form with both a file and a URL, or with neither; or a function's body
        that is neither audio nor a URL."""
        if self.body is not None:
            return self
        if self.param == "body" and not self.url:
            raise InvalidRequestError(
                "The body must be an http(s) URL of the audio as plain text, or the audio "
                "itself with an audio/* or application/octet-stream Content-Type.",
                param="body",
            )
        if self.file is not None and self.url:
            raise InvalidRequestError("Send either 'file' or 'url', not both.", param="url")
        if self.file is None and not self.url:
            raise InvalidRequestError(
                "Missing audio: send a 'file' (multipart upload) or a 'url'.",
                param="file",
                code="missing_field",
            )
        return self

    @asynccontextmanager
    async def opened(self, fetcher: Fetcher, call: Call) -> AsyncIterator[IO[bytes]]:
        """The audio as a file: the spooled upload or body, or the URL fetched safely; a body
        or a fetched file is closed when the block ends (for a stream: when the response
        ends). A fetch ends by the call's deadline, or once it is cancelled."""
        self.checked()
        if self.body is not None:
            with self.body:
                yield self.body
            return
        if self.file is not None:
            if self.file.size == 0:
                raise _empty_upload()
            limit = fetcher.settings.max_upload_bytes
            if self.file.size is not None and self.file.size > limit:
                raise upload_too_large(limit)
            yield self.file.file
            return
        assert self.url is not None
        with call.timings.measure("fetch"):
            url = self.url.strip()
            fetched = await fetcher.fetch(url, deadline=call.deadline, cancel=call.cancel)
        try:
            yield fetched
        finally:
            fetched.close()

    async def for_job(self, limit: int) -> JobAudio:
        """The input as a job stores it: the upload's bytes (at most ``limit``), or the URL."""
        self.checked()
        if self.body is not None:
            with self.body:
                data = self.body.read()
            if not data:
                raise EmptyAudioError("The body is empty: send the audio or its URL.", param="body")
            return JobAudio(data=data)
        if self.file is None:
            return JobAudio(url=self.url)
        if self.file.size is not None and self.file.size > limit:
            raise job_too_large(limit, "file")
        data = await self.file.read(limit + 1)
        if len(data) > limit:
            raise job_too_large(limit, "file")
        if not data:
            raise _empty_upload()
        return JobAudio(data=data, filename=self.file.filename)


def _empty_upload() -> EmptyAudioError:
    return EmptyAudioError("The uploaded file is empty (0 bytes).", param="file")


def job_too_large(limit: int, param: str) -> PayloadTooLargeError:
    """The error for a job's audio over ``job_max_upload_bytes``."""
    return PayloadTooLargeError(
        f"The audio of a job is stored in the queue until it runs, and may be at most {limit} "
        "bytes (WHISPERD_JOB_MAX_UPLOAD_BYTES); send a URL instead, or a smaller file.",
        param=param,
    )


async def audio_form(request: Request, file: FileField = None, url: UrlField = None) -> AudioInput:
    """The form's audio: a ``file`` or a ``url`` (checked when it is opened or stored), sent
    once: a second would be left out unheard."""
    form = await request.form()
    for name in ("file", "url"):
        if len(form.getlist(name)) > 1:
            raise InvalidRequestError(
                f"The form has more than one {name!r}; send one recording per request.",
                param=name,
            )
    return AudioInput(file=file, url=url)


AudioFormDep = Annotated[AudioInput, Depends(audio_form)]


async def read_function_body(request: Request, limit: int, too_large: TooLarge) -> AudioInput:
    """A function's body: the audio itself (an audio/* or application/octet-stream
    Content-Type; at most ``limit`` bytes, else ``too_large``), spooled (to disk past 1 MiB),
    or an http(s) URL as plain text. A body that is neither is refused when the input is
    :meth:`~AudioInput.checked`."""
    if request.headers.get("content-type", "").lower().startswith(AUDIO_TYPES):
        return AudioInput(body=await _spooled_body(request, limit, too_large), param="body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_URL_BYTES:
            break  # too long for a URL: no need to read the rest
    if len(body) <= MAX_URL_BYTES:
        try:
            text = body.decode("utf-8").strip()
        except UnicodeDecodeError:
            text = ""
        if text.lower().startswith(("http://", "https://")) and not any(c.isspace() for c in text):
            return AudioInput(url=text, param="body")
    return AudioInput(param="body")


async def _spooled_body(request: Request, limit: int, too_large: TooLarge) -> IO[bytes]:
    # returned open: the input closes it when it is opened or stored
    spooled = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
    try:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit, "body")
            spooled.write(chunk)
        spooled.seek(0)
    except BaseException:
        spooled.close()
        raise
    return spooled


@asynccontextmanager
async def request_call(request: Request, deadline: float, timings: Timings) -> AsyncIterator[Call]:
    """The request as the pipeline sees it: its deadline and timings, and an event set once
    the client goes away (the connection is watched while the block runs)."""
    gone = anyio.Event()
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(_watch, request, gone)
            try:
                yield Call(deadline, timings, gone)
            finally:
                group.cancel_scope.cancel()
    except BaseExceptionGroup as grouped:
        # the watcher never fails, so the group holds the block's one error
        raise grouped.exceptions[0] from None


async def _watch(request: Request, gone: anyio.Event) -> None:
    # Starlette offers no disconnect event once the body is read: poll for it.
    while not await request.is_disconnected():  # noqa: ASYNC110
        await anyio.sleep(_DISCONNECT_POLL_S)
    gone.set()
