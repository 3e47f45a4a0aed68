"""Async jobs: ``/v1/jobs`` and OpenFaaS's ``/async-function/whisper``.

A job is durable in Redis (record and queue message) before the 202 is sent. It runs on a
queue consumer (this server's own, or a ``whisperd worker``), its result is kept for
``job_ttl`` seconds, and its callback URL, if any, gets the result POSTed to it. A job is
its API key's: another key gets the 404 of a job that does not exist (see ``jobs.owners``).
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import replace
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Form, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from whisperd import fetch
from whisperd.api.deps import EngineDep, JobsDep, OwnerDep, SettingsDep
from whisperd.api.forms import FunctionQueryDep, TranscriptionFormDep
from whisperd.api.inputs import (
    FUNCTION_BODY,
    AudioFormDep,
    AudioInput,
    job_too_large,
    read_function_body,
)
from whisperd.api.schemas import JobList, JobObject, QueueStats, error_responses
from whisperd.engine import Transcriber
from whisperd.errors import (
    ConflictError,
    FetchError,
    InvalidRequestError,
    JobNotFoundError,
    shown,
)
from whisperd.jobs.owners import Owner
from whisperd.jobs.records import Job
from whisperd.jobs.service import JobsService
from whisperd.jobs.states import JobState
from whisperd.settings import Settings
from whisperd.spec import Spec

router = APIRouter(tags=["Async jobs"])

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


# --- helpers ------------------------------------------------------------------------------
def _public(job: Job, jobs: JobsService) -> JobObject:
    return JobObject.of(job, max_attempts=jobs.max_attempts)


def _accepted(job: Job, jobs: JobsService) -> JSONResponse:
    return JSONResponse(
        _public(job, jobs).body(with_result=False),
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


async def _check_options(engine: Transcriber, spec: Spec, settings: Settings) -> None:
    """Refuse a model or options the engine cannot honour before the job is queued (without
    loading a model: the job may run on another machine)."""
    await anyio.to_thread.run_sync(
        functools.partial(engine.validate, spec.options(settings), model=spec.model)
    )


async def _submit(
    jobs: JobsService,
    spec: Spec,
    sent: AudioInput,
    settings: Settings,
    *,
    owner: Owner,
    callback_url: str | None,
) -> Job:
    """Store the job's input (the audio, or its URL once it is known to be reachable) and
    queue it."""
    audio = await sent.for_job(settings.job_max_upload_bytes)
    if audio.data is not None:
        data = audio.data
        return await anyio.to_thread.run_sync(
            lambda: jobs.submit(
                spec,
                owner=owner,
                source="upload",
                audio=data,
                filename=audio.filename,
                callback_url=callback_url,
            )
        )
    assert audio.url is not None
    url = await _check_url(audio.url, settings, sent.param)
    return await anyio.to_thread.run_sync(
        lambda: jobs.submit(spec, owner=owner, source="url", url=url, callback_url=callback_url)
    )


# --- routes -------------------------------------------------------------------------------
def _job_spec(spec: Spec) -> Spec:
    """The spec checked for a job, which transcribes the channels mixed down."""
    if spec.speakers.multichannel:
        raise InvalidRequestError(
            "multichannel=true is for /v1/audio/transcriptions and /function/whisper; a job "
            "transcribes the channels mixed down (diarize=true tells its speakers apart).",
            param="multichannel",
        )
    return spec.check()


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
    audio: AudioFormDep,
    spec: TranscriptionFormDep,
    task: TaskField = "transcribe",
    callback_url: CallbackField = None,
) -> Response:
    """Queue a transcription: a multipart `file` (at most `WHISPERD_JOB_MAX_UPLOAD_BYTES`,
    stored in Redis until the job ends) or a `url` (fetched by the worker), with the options
    of `/v1/audio/transcriptions` (and `task=translate` for English text, as
    `/v1/audio/translations` gives). Answers 202 with the job; `callback_url`, if given, gets
    the result POSTed when the job ends. 429 with Retry-After past the caps on jobs not yet
    ended (`WHISPERD_JOB_MAX_QUEUED*`)."""
    spec = _job_spec(replace(spec, task=task))
    audio.checked()
    await _check_options(engine, spec, settings)
    callback = await _check_url(callback_url, settings, "callback_url") if callback_url else None
    job = await _submit(jobs, spec, audio, settings, owner=owner, callback_url=callback)
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
    spec: FunctionQueryDep,
    x_callback_url: Annotated[
        str | None, Header(description="Where to POST the result when the job ends.")
    ] = None,
) -> Response:
    """The body is an audio URL (or the audio itself with an audio/* Content-Type), as for
    `/function/whisper`; the answer is 202 with `X-Call-Id` at once."""
    spec = _job_spec(spec)
    sent = await read_function_body(request, settings.job_max_upload_bytes, job_too_large)
    callback = (
        await _check_url(x_callback_url, settings, "X-Callback-Url") if x_callback_url else None
    )
    job = await _submit(jobs, spec, sent, settings, owner=owner, callback_url=callback)
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
    listed = JobList(
        data=[_public(job, jobs) for job in found],
        first_id=found[0].id if found else None,
        last_id=found[-1].id if found else None,
        has_more=has_more,
        queue=QueueStats.model_validate(stats),
    )
    return JSONResponse(listed.body())


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
    return JSONResponse(_public(job, jobs).body())


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
    return JSONResponse(_public(job, jobs).body(with_result=False))
