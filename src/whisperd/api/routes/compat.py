"""The endpoints people deploy today: the OpenFaaS function and the FastAPI upload contract."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import IO, Annotated, Any, Literal, TypeVar

import anyio
from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from whisperd import audio, formats
from whisperd.api.deps import (
    DeadlineDep,
    EngineDep,
    PipelineDep,
    SpeakersQueryDep,
    SubtitlesQueryDep,
    TimingsDep,
)
from whisperd.api.fetching import Fetcher
from whisperd.api.middleware import upload_too_large
from whisperd.api.pipeline import Item
from whisperd.api.responses import CleanupStreamingResponse, audio_input, check_format, render
from whisperd.api.schemas import FfmpegCheck, GpuCheck, ModelCheck, TranslateResult, error_responses
from whisperd.engine import TranscribeOptions, TranscriptionInfo, cuda_device_count
from whisperd.errors import InvalidRequestError
from whisperd.subtitles import Cuer, SubtitleOptions
from whisperd.timings import Timings

router = APIRouter()
F = TypeVar("F", bound=Callable[..., Any])

FUNCTION_FORMATS = Literal["text", "json", "verbose_json", "srt", "vtt", "tsv", "diarized_json"]
STREAMED_FORMATS = ("text", "srt", "vtt", "tsv")
"""The function streams these as segments are transcribed; JSON comes whole, at the end."""
_MAX_URL_BYTES = 8192
_AUDIO_TYPES = ("audio/", "video/", "application/octet-stream", "application/ogg")

FUNCTION_BODY = {
    "required": True,
    "content": {
        "text/plain": {"schema": {"type": "string", "example": "https://example.com/call.mp3"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def _get_and_post(path: str, **kwargs: Any) -> Callable[[F], F]:
    """Register a check under POST and GET, each its own operation."""

    def register(func: F) -> F:
        router.post(path, operation_id=func.__name__, **kwargs)(func)
        router.get(path, operation_id=f"{func.__name__}_get", **kwargs)(func)
        return func

    return register


async def _read_function_body(request: Request, limit: int) -> tuple[str | None, bytes | None]:
    """The body as (url, None) when it is a URL, or (None, audio bytes) when it is raw audio."""
    content_type = request.headers.get("content-type", "").lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise upload_too_large(limit, param="body")
    if content_type.startswith(_AUDIO_TYPES):
        return None, bytes(body)
    if len(body) <= _MAX_URL_BYTES:
        try:
            text = body.decode("utf-8").strip()
        except UnicodeDecodeError:
            text = ""
        if text.lower().startswith(("http://", "https://")) and not any(c.isspace() for c in text):
            return text, None
    raise InvalidRequestError(
        "The body must be an http(s) URL of the audio as plain text, or the audio itself "
        "with an audio/* or application/octet-stream Content-Type.",
        param="body",
    )


@asynccontextmanager
async def _function_source(
    url: str | None,
    raw: bytes | None,
    fetcher: Fetcher,
    *,
    request: Request,
    deadline: float,
    timings: Timings,
) -> AsyncIterator[IO[bytes]]:
    """The function's audio as a file: the raw body spooled (to disk past 1 MiB), or the URL
    fetched safely; closed when the block ends (for a stream: when the response ends)."""
    if raw is None:
        async with audio_input(
            None, url, fetcher, request=request, deadline=deadline, timings=timings
        ) as fetched:
            yield fetched
        return
    with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spooled:
        spooled.write(raw)
        spooled.seek(0)
        del raw
        yield spooled


async def _text_stream(
    items: AsyncIterator[Item], fmt: str, subtitles: SubtitleOptions
) -> AsyncIterator[bytes]:
    """The transcript in a text format, a segment's line or cues at a time, as it comes; the
    bytes add up to what :func:`whisperd.formats.render` gives for the whole transcript.

    An error after the first bytes propagates: the connection is cut, so the client sees a
    broken response rather than a transcript silently cut short.
    """
    if fmt == "vtt":
        yield b"WEBVTT\n\n"
    elif fmt == "tsv":
        yield b"start\tend\ttext\n"
    number = 0
    cuer = Cuer(subtitles)
    started = False
    held = ""  # whitespace at the end of the text so far: written once more text follows
    async for item in items:
        if isinstance(item, TranscriptionInfo):
            continue
        if fmt == "srt":
            for cue in cuer.cues(item):
                number += 1
                yield formats.srt_block(number, cue).encode()
        elif fmt == "vtt":
            yield "".join(formats.vtt_block(cue) for cue in cuer.cues(item)).encode()
        elif fmt == "tsv":
            line = " ".join(item.text.split())
            yield f"{round(item.start * 1000)}\t{round(item.end * 1000)}\t{line}\n".encode()
        else:
            # the whole text is stripped: none of the leading whitespace, nor the trailing
            text = held + item.text if started else item.text.lstrip()
            started = started or bool(text)
            kept = text.rstrip()
            held = text[len(kept) :]
            if kept:
                yield kept.encode()
    if fmt == "text":
        yield b"\n"


@router.post(
    "/function/whisper",
    tags=["OpenFaaS function"],
    summary="Transcribe an audio URL (OpenFaaS function)",
    openapi_extra={"requestBody": FUNCTION_BODY},
    responses={
        200: {
            "description": "The transcript (text/plain by default). The text formats (text, "
            "srt, vtt, tsv) stream a segment at a time as they are transcribed (chunked); "
            "json and verbose_json come whole at the end.",
            "content": {
                **{
                    formats.MEDIA_TYPES[fmt].split(";")[0]: {"schema": {"type": "string"}}
                    for fmt in STREAMED_FORMATS
                },
                "application/json": {"schema": {"type": "object"}},
            },
        },
        **error_responses(400, 401, 413, 415, 422, 429, 502, 503, 504),
    },
    response_model=None,
)
@router.post("/", include_in_schema=False, response_model=None)
async def function_whisper(
    request: Request,
    pipeline: PipelineDep,
    timings: TimingsDep,
    deadline: DeadlineDep,
    subtitles: SubtitlesQueryDep,
    speaker_fields: SpeakersQueryDep,
    format: Annotated[FUNCTION_FORMATS, Query(description="Output format.")] = "text",
) -> Response:
    """The body is an audio URL (or raw audio); the answer is the transcript as text,
    streamed as it is transcribed (whole, once speakers are told apart)."""
    check_format(format, subtitles=subtitles)
    speakers = await anyio.to_thread.run_sync(speaker_fields.checked, format)
    with timings.measure("receive"):  # the body is read here, after the dependencies
        url, raw = await _read_function_body(request, pipeline.settings.max_upload_bytes)
    options = TranscribeOptions.asked(
        pipeline.settings, word_timestamps=subtitles.active, voices=speakers.by_voice
    )
    opened = _function_source(
        url, raw, pipeline.fetcher, request=request, deadline=deadline, timings=timings
    )
    del raw  # the source owns it now (and spools it)
    if format in STREAMED_FORMATS and not speakers.active:
        # Bad input (decoding the first piece, admission) raises here: still a proper 4xx.
        items, cleanup = await pipeline.stream(
            request, opened, options, model=None, deadline=deadline, timings=timings
        )
        return CleanupStreamingResponse(
            _text_stream(items, format, subtitles), cleanup, media_type=formats.MEDIA_TYPES[format]
        )
    async with opened as source:
        result = await pipeline.transcribe(
            request,
            source,
            options,
            model=None,
            deadline=deadline,
            timings=timings,
            speakers=speakers,
        )
    return render(result, format, timings, subtitles=subtitles)


@router.post(
    "/translate/",
    tags=["Upload endpoints"],
    summary="Transcribe an uploaded file",
    response_model=TranslateResult,
    responses=error_responses(400, 401, 413, 415, 422, 429, 503, 504),
)
async def translate_upload(
    request: Request,
    pipeline: PipelineDep,
    timings: TimingsDep,
    deadline: DeadlineDep,
    file: Annotated[UploadFile, File(description="The audio or video file.")],
) -> TranslateResult:
    """Transcribes the file in its own language (despite the route's name)."""
    fetcher = pipeline.fetcher
    async with audio_input(
        file, None, fetcher, request=request, deadline=deadline, timings=timings
    ) as source:
        result = await pipeline.transcribe(
            request,
            source,
            TranscribeOptions.asked(pipeline.settings),
            model=None,
            deadline=deadline,
            timings=timings,
        )
    return TranslateResult(text=result.text, language=result.language)


@_get_and_post(
    "/check-gpu/",
    tags=["Upload endpoints"],
    summary="Is CUDA available?",
    response_model=GpuCheck,
    responses=error_responses(400, 401),
)
async def check_gpu(engine: EngineDep) -> Response:
    """200 with the device when CUDA is usable by CTranslate2, else 400."""
    count = await anyio.to_thread.run_sync(cuda_device_count)
    if count == 0:
        error = InvalidRequestError("CUDA is not available", code="cuda_unavailable")
        return JSONResponse({**error.to_dict(), "cuda": False}, status_code=400)
    body = GpuCheck(
        cuda=True, device=f"cuda:0 (engine on {engine.plan.device})", device_count=count
    )
    return JSONResponse(body.model_dump())


def _decode_tone() -> float:
    return audio.duration(audio.decode(audio.test_tone(1.0)))


@_get_and_post(
    "/check-ffmpeg/",
    tags=["Upload endpoints"],
    summary="Can the decoder read audio?",
    response_model=FfmpegCheck,
    responses=error_responses(401, 415),
)
async def check_ffmpeg() -> FfmpegCheck:
    """The FFmpeg libraries inside PyAV, and a generated one-second tone decoded through them."""
    import av

    seconds = await anyio.to_thread.run_sync(_decode_tone)
    return FfmpegCheck(
        ffmpeg=audio.ffmpeg_versions(),
        pyav=av.__version__,
        decoded_seconds=round(seconds, 3),
        ok=abs(seconds - 1.0) < 0.05,
    )


@_get_and_post(
    "/check-model-in-memory/",
    tags=["Upload endpoints"],
    summary="Which model is loaded?",
    response_model=ModelCheck,
    responses=error_responses(401),
)
async def check_model(engine: EngineDep) -> ModelCheck:
    """The default model: name, source, device, compute type and load time."""
    model = engine.default_model
    return ModelCheck(
        model=model.name,
        source=model.source,
        device=model.device,
        compute_type=model.compute_type,
        load_seconds=round(model.load_seconds, 3),
        multilingual=model.multilingual,
        loaded_models=list(engine.loaded),
    )
