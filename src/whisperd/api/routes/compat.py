"""The endpoints people deploy today: the OpenFaaS function and the FastAPI upload contract."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import anyio
from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from whisperd import audio
from whisperd.api.deps import EngineDep, PipelineDep, TimingsDep
from whisperd.api.responses import audio_input, render
from whisperd.api.schemas import FfmpegCheck, GpuCheck, ModelCheck, TranslateResult, error_responses
from whisperd.engine import TranscribeOptions, cuda_device_count
from whisperd.errors import InvalidRequestError, PayloadTooLargeError

router = APIRouter()
F = TypeVar("F", bound=Callable[..., Any])

FUNCTION_FORMATS = Literal["text", "json", "verbose_json", "srt", "vtt", "tsv"]
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
    """Register a check under POST (the original contract) and GET, each its own operation."""

    def register(func: F) -> F:
        router.post(path, operation_id=func.__name__, **kwargs)(func)
        router.get(path, operation_id=f"{func.__name__}_get", **kwargs)(func)
        return func

    return register


def _options(pipeline: PipelineDep) -> TranscribeOptions:
    settings = pipeline.settings
    return TranscribeOptions(beam_size=settings.beam_size, vad_filter=settings.vad_filter)


async def _read_function_body(request: Request, limit: int) -> tuple[str | None, bytes | None]:
    """The body as (url, None) when it is a URL, or (None, audio bytes) when it is raw audio."""
    content_type = request.headers.get("content-type", "").lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"The body is larger than {limit} bytes.", param="body")
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


@router.post(
    "/function/whisper",
    tags=["OpenFaaS function"],
    summary="Transcribe an audio URL (OpenFaaS function)",
    openapi_extra={"requestBody": FUNCTION_BODY},
    responses={
        200: {
            "description": "The transcript (text/plain by default).",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **error_responses(400, 401, 413, 415, 429, 503, 504),
    },
    response_model=None,
)
@router.post("/", include_in_schema=False, response_model=None)
async def function_whisper(
    request: Request,
    pipeline: PipelineDep,
    timings: TimingsDep,
    format: Annotated[FUNCTION_FORMATS, Query(description="Output format.")] = "text",
) -> Response:
    """The body is an audio URL (or raw audio); the answer is the transcript as text."""
    url, raw = await _read_function_body(request, pipeline.settings.max_upload_bytes)
    options = _options(pipeline)
    if raw is not None:
        with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spooled:
            spooled.write(raw)
            spooled.seek(0)
            del raw
            result = await pipeline.transcribe(
                request, spooled, options, model=None, timings=timings
            )
    else:
        async with audio_input(None, url, pipeline.settings, timings) as source:
            result = await pipeline.transcribe(
                request, source, options, model=None, timings=timings
            )
    return render(result, format, timings)


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
    file: Annotated[UploadFile, File(description="The audio or video file.")],
) -> TranslateResult:
    """Transcribes the file in its own language (the name is the original service's)."""
    async with audio_input(file, None, pipeline.settings, timings) as source:
        result = await pipeline.transcribe(
            request, source, _options(pipeline), model=None, timings=timings
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
    """The default model: name, path, device, compute type and load time."""
    model = engine.default_model
    return ModelCheck(
        model=model.name,
        path=str(model.path),
        source=model.source,
        device=model.device,
        compute_type=model.compute_type,
        load_seconds=round(model.load_seconds, 3),
        multilingual=model.multilingual,
        loaded_models=list(engine.loaded),
    )
