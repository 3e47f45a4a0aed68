"""Async jobs: ``/v1/jobs`` and OpenFaaS's ``/async-function/whisper``.

A job is durable in Redis (record and queue message) before the 202 is sent. It runs on a
queue consumer (this server's own, or a ``whisperd worker``), its result is kept for
``job_ttl`` seconds, and its callback URL, if any, gets the result POSTed to it. A job is
its API key's: another key gets the 404 of a job that does not exist (see ``jobs.owners``).
"""

from __future__ import annotations

import functools
import uuid
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from whisperd import fetch
from whisperd.api.deps import (
    EngineDep,
    JobsDep,
    OwnerDep,
    SettingsDep,
    SpeakersFormDep,
    SpeakersQueryDep,
    SubtitlesFormDep,
    SubtitlesQueryDep,
)
from whisperd.api.responses import check_format
from whisperd.api.routes.openai import (
    BeamField,
    FileField,
    FormatField,
    GranularitiesField,
    HotwordsField,
    ModelField,
    MultilingualField,
    PromptField,
    TemperatureField,
    UrlField,
    VadField,
    WordsField,
)
from whisperd.api.schemas import ErrorDetail, error_responses
from whisperd.engine import Transcriber
from whisperd.errors import (
    ConflictError,
    EmptyAudioError,
    FetchError,
    InvalidRequestError,
    JobNotFoundError,
    PayloadTooLargeError,
    shown,
)
from whisperd.jobs.records import Job, JobSpec
from whisperd.jobs.service import JobsService as JobsRuntime
from whisperd.jobs.states import JobState
from whisperd.settings import ResponseFormat, Settings
from whisperd.speakers.options import SpeakerFields, SpeakerOptions

router = APIRouter(tags=["Async jobs"])

_MAX_URL_BYTES = 8192
_AUDIO_TYPES = ("audio/", "video/", "application/octet-stream", "application/ogg")
_CHUNK = 1 << 20

FUNCTION_BODY = {
    "required": True,
    "content": {
        "text/plain": {"schema": {"type": "string", "example": "https://example.com/call.mp3"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}

LanguageField = Annotated[
    str | None, Form(description="ISO-639-1 code of the spoken language; default: detect.")
]
TaskField = Annotated[
    Literal["transcribe", "translate"],
    Form(
        description="Extra: `translate` turns speech in any language into English text, as "
        "`/v1/audio/translations` does (needs a multilingual model)."
    ),
]
CallbackField = Annotated[
    str | None,
    Form(description="An http(s) URL to POST the result to when the job ends (see the docs)."),
]


# --- documentation models -----------------------------------------------------------------
class JobProgress(BaseModel):
    seconds: float = Field(
        description="Audio seconds transcribed so far (for a long job: the finished chunks')."
    )
    duration: float | None = Field(None, description="The audio's length, once known.")
    chunks: int | None = Field(
        None,
        description="Pieces the job runs in: 1 in one go; a long job's chunks, once its audio "
        "is split (null until then).",
    )
    chunks_done: int = Field(0, description="Pieces finished.")


class JobInput(BaseModel):
    type: Literal["url", "upload"]
    url: str | None = None
    filename: str | None = None
    bytes: int | None = None


class JobCallback(BaseModel):
    url: str
    status: Literal["pending", "queued", "delivered", "failed"] | None = None
    attempts: int = 0
    last_http_status: int | None = None
    last_error: str | None = None


class JobObject(BaseModel):
    """A job. ``result`` is the transcript in ``response_format`` once it succeeded."""

    id: str = Field(examples=["1b4e28ba-2fa1-11d2-883f-0016d3cca427"])
    object: Literal["job"] = "job"
    status: JobState
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = Field(description="Attempts started so far (retries included).")
    max_attempts: int
    cancel_requested: bool = False
    progress: JobProgress
    model: str
    task: Literal["transcribe", "translate"] = "transcribe"
    response_format: str
    input: JobInput
    worker: str | None = None
    error: ErrorDetail | None = Field(None, description="Why it failed (or the last try did).")
    callback: JobCallback | None = None
    result: Any = None


class QueueStats(BaseModel):
    """The key's jobs per state (an admin key's: everyone's), and the queue's messages."""

    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    waiting_messages: int = Field(
        description="Messages on the queue, not yet taken (every key's: how busy it is)."
    )
    delayed_messages: int = Field(description="Retries waiting for their time (every key's).")


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool
    queue: QueueStats


# --- helpers ------------------------------------------------------------------------------
def _public(job: Job, jobs: JobsRuntime, *, with_result: bool = True) -> dict[str, Any]:
    return job.public(max_attempts=jobs.max_attempts, with_result=with_result)


def _accepted(job: Job, jobs: JobsRuntime) -> JSONResponse:
    return JSONResponse(
        _public(job, jobs, with_result=False),
        status_code=202,
        headers={"X-Call-Id": job.id, "Location": f"/v1/jobs/{job.id}"},
    )


def _check_job_id(job_id: str) -> str:
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise JobNotFoundError(f"No job {shown(job_id)}: job ids are UUIDs.") from None


async def _check_url(url: str, settings: Settings, param: str) -> str:
    """Refuse a URL the server may not reach, now rather than when the job runs."""
    url = url.strip()
    try:
        await anyio.to_thread.run_sync(fetch.check_url, url, settings)
    except FetchError as exc:  # forbidden, or the host does not resolve
        exc.param = param
        raise
    return url


async def _check_options(engine: Transcriber, spec: JobSpec, settings: Settings) -> None:
    """Refuse a model or options the engine cannot honour before the job is queued (without
    loading a model: the job may run on another machine)."""
    await anyio.to_thread.run_sync(
        functools.partial(engine.validate, spec.options(settings), model=spec.model)
    )


def _too_large(limit: int, param: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The audio of a job is stored in the queue until it runs, and may be at most {limit} "
        "bytes (WHISPERD_JOB_MAX_UPLOAD_BYTES); send a URL instead, or a smaller file.",
        param=param,
    )


async def _read_upload(file: UploadFile, limit: int) -> bytes:
    if file.size is not None and file.size > limit:
        raise _too_large(limit, "file")
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise _too_large(limit, "file")
    if not data:
        raise EmptyAudioError("The uploaded file is empty (0 bytes).", param="file")
    return data


# --- routes -------------------------------------------------------------------------------
async def _job_speakers(fields: SpeakerFields, response_format: str) -> SpeakerOptions:
    """The job's speaker options; a job transcribes the channels mixed down."""
    if fields.multichannel:
        raise InvalidRequestError(
            "multichannel=true is for /v1/audio/transcriptions and /function/whisper; a job "
            "transcribes the channels mixed down (diarize=true tells its speakers apart).",
            param="multichannel",
        )
    return await anyio.to_thread.run_sync(fields.checked, response_format)


@router.post(
    "/v1/jobs",
    summary="Submit a transcription job",
    status_code=202,
    response_model=None,
    responses={
        202: {"model": JobObject, "description": "Queued; poll `GET /v1/jobs/{id}`."},
        **error_responses(400, 401, 404, 413, 422, 429, 503),
    },
)
async def create_job(
    jobs: JobsDep,
    owner: OwnerDep,
    engine: EngineDep,
    settings: SettingsDep,
    subtitles: SubtitlesFormDep,
    speaker_fields: SpeakersFormDep,
    file: FileField = None,
    url: UrlField = None,
    model: ModelField = "whisper-1",
    task: TaskField = "transcribe",
    language: LanguageField = None,
    prompt: PromptField = None,
    response_format: FormatField = "json",
    temperature: TemperatureField = 0.0,
    timestamp_granularities: GranularitiesField = None,
    hotwords: HotwordsField = None,
    vad_filter: VadField = None,
    beam_size: BeamField = None,
    word_timestamps: WordsField = False,
    multilingual: MultilingualField = False,
    callback_url: CallbackField = None,
) -> Response:
    """Queue a transcription: a multipart `file` (at most `WHISPERD_JOB_MAX_UPLOAD_BYTES`,
    stored in Redis until the job ends) or a `url` (fetched by the worker), with the options
    of `/v1/audio/transcriptions` (and `task=translate` for English text, as
    `/v1/audio/translations` gives). Answers 202 with the job; `callback_url`, if given, gets
    the result POSTed when the job ends. 429 with Retry-After past the caps on jobs not yet
    ended (`WHISPERD_JOB_MAX_QUEUED*`)."""
    speakers = await _job_speakers(speaker_fields, response_format)
    spec = JobSpec(
        model=model,
        task=task,
        language=language,
        prompt=prompt,
        response_format=response_format,
        temperature=temperature,
        timestamp_granularities=tuple(timestamp_granularities or ()),
        hotwords=hotwords,
        vad_filter=vad_filter,
        beam_size=beam_size,
        word_timestamps=word_timestamps,
        subtitles=subtitles,
        multilingual=multilingual,
        speakers=speakers,
    )
    check_format(response_format, granularities=spec.timestamp_granularities, subtitles=subtitles)
    if file is not None and url:
        raise InvalidRequestError("Send either 'file' or 'url', not both.", param="url")
    if file is None and not url:
        raise InvalidRequestError(
            "Missing audio: send a 'file' (multipart upload) or a 'url'.",
            param="file",
            code="missing_field",
        )
    await _check_options(engine, spec, settings)
    callback = await _check_url(callback_url, settings, "callback_url") if callback_url else None
    if file is not None:
        data = await _read_upload(file, settings.job_max_upload_bytes)
        job = await anyio.to_thread.run_sync(
            lambda: jobs.submit(
                spec,
                owner=owner,
                source="upload",
                audio=data,
                filename=file.filename,
                callback_url=callback,
            )
        )
    else:
        assert url is not None
        checked = await _check_url(url, settings, "url")
        job = await anyio.to_thread.run_sync(
            lambda: jobs.submit(spec, owner=owner, source="url", url=checked, callback_url=callback)
        )
    return _accepted(job, jobs)


@router.post(
    "/async-function/whisper",
    tags=["OpenFaaS function"],
    summary="Transcribe an audio URL asynchronously (OpenFaaS)",
    status_code=202,
    openapi_extra={"requestBody": FUNCTION_BODY},
    response_model=None,
    response_class=Response,  # an empty body, as OpenFaaS answers
    responses={
        202: {
            "description": "Queued. `X-Call-Id` is the job id: `GET /v1/jobs/{X-Call-Id}`; "
            "the `X-Callback-Url` gets the transcript POSTed when it ends.",
            "headers": {"X-Call-Id": {"schema": {"type": "string"}}},
        },
        **error_responses(400, 401, 413, 429, 503),
    },
)
async def async_function(
    request: Request,
    jobs: JobsDep,
    owner: OwnerDep,
    settings: SettingsDep,
    subtitles: SubtitlesQueryDep,
    speaker_fields: SpeakersQueryDep,
    format: Annotated[ResponseFormat, Query(description="Output format.")] = "text",
    x_callback_url: Annotated[
        str | None, Header(description="Where to POST the result when the job ends.")
    ] = None,
) -> Response:
    """The body is an audio URL (or the audio itself with an audio/* Content-Type), as for
    `/function/whisper`; the answer is 202 with `X-Call-Id` at once."""
    check_format(format, subtitles=subtitles)
    limit = settings.job_max_upload_bytes
    content_type = request.headers.get("content-type", "").lower()
    is_audio = content_type.startswith(_AUDIO_TYPES)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > (limit if is_audio else _MAX_URL_BYTES):
            if is_audio:
                raise _too_large(limit, "body")
            break
    callback = (
        await _check_url(x_callback_url, settings, "X-Callback-Url") if x_callback_url else None
    )
    speakers = await _job_speakers(speaker_fields, format)
    spec = JobSpec(response_format=format, subtitles=subtitles, speakers=speakers)
    if is_audio:
        if not body:
            raise EmptyAudioError("The body is empty: send the audio or its URL.", param="body")
        data = bytes(body)
        job = await anyio.to_thread.run_sync(
            lambda: jobs.submit(
                spec, owner=owner, source="upload", audio=data, callback_url=callback
            )
        )
        return Response(status_code=202, headers={"X-Call-Id": job.id})
    text = body.decode("utf-8", errors="replace").strip() if len(body) <= _MAX_URL_BYTES else ""
    if not text.lower().startswith(("http://", "https://")) or any(c.isspace() for c in text):
        raise InvalidRequestError(
            "The body must be an http(s) URL of the audio as plain text, or the audio itself "
            "with an audio/* or application/octet-stream Content-Type.",
            param="body",
        )
    url = await _check_url(text, settings, "body")
    job = await anyio.to_thread.run_sync(
        lambda: jobs.submit(spec, owner=owner, source="url", url=url, callback_url=callback)
    )
    return Response(status_code=202, headers={"X-Call-Id": job.id})


@router.get(
    "/v1/jobs",
    summary="List jobs",
    response_model=JobList,
    responses=error_responses(400, 401, 422, 503),
)
async def list_jobs(
    jobs: JobsDep,
    owner: OwnerDep,
    status: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    after: Annotated[
        str | None, Query(description="Cursor: the `last_id` of the previous page.")
    ] = None,
) -> JSONResponse:
    """The key's jobs (an admin key: everyone's) newest first, a page at a time, with their
    count per state and the queue's depth."""
    found, has_more = await anyio.to_thread.run_sync(
        lambda: jobs.list_jobs(status, owner=owner, limit=limit, after=after)
    )
    stats = await anyio.to_thread.run_sync(jobs.queue_stats, owner)
    data = [_public(job, jobs, with_result=False) for job in found]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
            "queue": stats,
        }
    )


@router.get(
    "/v1/jobs/{job_id}",
    summary="Get a job",
    response_model=JobObject,
    responses=error_responses(401, 404, 503),
)
async def get_job(job_id: str, jobs: JobsDep, owner: OwnerDep) -> JSONResponse:
    """State, timestamps, attempts, progress, error, callback, and the result once done."""
    job_id = _check_job_id(job_id)
    job = await anyio.to_thread.run_sync(lambda: jobs.get(job_id, owner=owner))
    return JSONResponse(_public(job, jobs))


@router.get(
    "/v1/jobs/{job_id}/result",
    summary="Get a job's transcript",
    response_model=None,
    responses={
        200: {"description": "The transcript, with its format's media type."},
        **error_responses(401, 404, 409, 503),
    },
)
async def get_job_result(job_id: str, jobs: JobsDep, owner: OwnerDep) -> Response:
    """The transcript alone, as `/v1/audio/transcriptions` would have answered; 409 until done."""
    job_id = _check_job_id(job_id)
    job = await anyio.to_thread.run_sync(lambda: jobs.get(job_id, owner=owner))
    if job.state is not JobState.SUCCEEDED or job.result is None:
        raise ConflictError(
            f"Job {job_id} is {job.state}; its result exists once it has succeeded.",
            param="job_id",
            code=f"job_{job.state}",
        )
    return Response(job.result, media_type=job.media_type)


@router.delete(
    "/v1/jobs/{job_id}",
    summary="Cancel a job",
    response_model=JobObject,
    responses=error_responses(401, 404, 409, 503),
)
async def cancel_job(job_id: str, jobs: JobsDep, owner: OwnerDep) -> JSONResponse:
    """A queued job is cancelled at once and never runs; a running one stops at its next
    30-second window (`cancel_requested` is true until then); a long job split into chunks
    is cancelled at once, and its chunks stop at their next window. 409 if it has already
    ended (succeeded, failed or cancelled)."""
    job_id = _check_job_id(job_id)
    job = await anyio.to_thread.run_sync(lambda: jobs.cancel(job_id, owner=owner))
    return JSONResponse(_public(job, jobs, with_result=False))
