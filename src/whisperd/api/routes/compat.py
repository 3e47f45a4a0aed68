"""The endpoints people deploy today: the OpenFaaS function and the FastAPI upload contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, File, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from whisperd import audio, formats
from whisperd.api.deps import EngineDep, SyncDep
from whisperd.api.forms import FunctionQueryDep
from whisperd.api.inputs import FUNCTION_BODY, AudioInput, read_function_body
from whisperd.api.middleware import upload_too_large
from whisperd.api.responses import CleanupStreamingResponse, transcript_response
from whisperd.api.schemas import FfmpegCheck, GpuCheck, ModelCheck, TranslateResult, error_responses
from whisperd.engine import cuda_device_count
from whisperd.errors import InvalidRequestError
from whisperd.render import text_stream
from whisperd.spec import Spec

router = APIRouter()
F = TypeVar("F", bound=Callable[..., Any])

STREAMED_FORMATS = ("text", "srt", "vtt", "tsv")
"""The function streams these as segments are transcribed; JSON comes whole, at the end."""


def _get_and_post(path: str, summary: str, model: type, *errors: int) -> Callable[[F], F]:
    """Register a check of the upload endpoints under POST and GET, each its own operation."""
    kwargs: dict[str, Any] = {
        "tags": ["Upload endpoints"],
        "summary": summary,
        "response_model": model,
        "responses": error_responses(*errors),
    }

    def register(func: F) -> F:
        router.post(path, operation_id=func.__name__, **kwargs)(func)
        router.get(path, operation_id=f"{func.__name__}_get", **kwargs)(func)
        return func

    return register


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
    sync: SyncDep,
    spec: FunctionQueryDep,
) -> Response:
    """The body is an audio URL (or raw audio); the answer is the transcript as text,
    streamed as it is transcribed (whole, once speakers are told apart)."""
    spec.check()
    pipeline = sync.pipeline
    limit = pipeline.settings.max_upload_bytes
    with sync.timings.measure("receive"):  # the body is read here, after the dependencies
        sent = (await read_function_body(request, limit, upload_too_large)).checked()
    options = spec.options(pipeline.settings)
    async with sync.call() as call:
        opened = sent.opened(pipeline.fetcher, call)
        if spec.response_format in STREAMED_FORMATS and not spec.speakers.active:
            # Bad input (decoding the first piece, admission) raises here: still a proper 4xx.
            items, cleanup = await pipeline.stream(opened, options, model=None, call=call)
            return CleanupStreamingResponse(
                text_stream(items, spec.response_format, spec.subtitles),
                cleanup,
                media_type=formats.MEDIA_TYPES[spec.response_format],
            )
        async with opened as source:
            result = await pipeline.transcribe(
                source, options, model=None, call=call, speakers=spec.speakers
            )
    return transcript_response(result, spec, sync.timings)


@router.post(
    "/translate/",
    tags=["Upload endpoints"],
    summary="Transcribe an uploaded file",
    response_model=TranslateResult,
    responses=error_responses(400, 401, 413, 415, 422, 429, 503, 504),
)
async def translate_upload(
    sync: SyncDep,
    file: Annotated[UploadFile, File(description="The audio or video file.")],
) -> TranslateResult:
    """Transcribes the file in its own language (despite the route's name)."""
    options = Spec().options(sync.pipeline.settings)
    async with (
        sync.call() as call,
        AudioInput(file=file).opened(sync.pipeline.fetcher, call) as source,
    ):
        result = await sync.pipeline.transcribe(source, options, model=None, call=call)
    return TranslateResult(text=result.text, language=result.language)


@_get_and_post("/check-gpu/", "Is CUDA available?", GpuCheck, 400, 401)
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


@_get_and_post("/check-ffmpeg/", "Can the decoder read audio?", FfmpegCheck, 401, 415)
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


@_get_and_post("/check-model-in-memory/", "Which model is loaded?", ModelCheck, 401)
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
