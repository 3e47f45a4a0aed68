"""Response bodies as pydantic models, which serialize them and document them in the OpenAPI
schema (the transcripts' are in :mod:`whisperd.formats`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from whisperd.formats import DiarizedSegment, TranscriptTextDelta, TranscriptTextDone
from whisperd.jobs.states import JobState

if TYPE_CHECKING:
    from whisperd.engine import LanguageDetection
    from whisperd.jobs.records import Job


class ErrorDetail(BaseModel):
    message: str = Field(examples=["The file is not audio or video in a format FFmpeg can read."])
    type: str = Field(examples=["invalid_request_error"])
    param: str | None = Field(None, examples=["file"])
    code: str | None = Field(None, examples=["unsupported_audio"])


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given error statuses."""
    descriptions = {
        400: "Bad request: missing or unusable input, or options the model cannot honour.",
        401: "Missing or invalid API key.",
        404: "Unknown or unavailable model.",
        413: "The upload, fetched file or audio duration is over the limit.",
        415: "Not audio or video FFmpeg can read, or no audio stream.",
        422: "A field has an invalid value.",
        429: "At capacity: the active requests and the queue, or the URL fetches, are full; "
        "see Retry-After.",
        502: "The audio URL's server failed (HTTP 5xx, refused, broken TLS).",
        503: "Not ready yet, or shutting down.",
        504: "The request ran past its deadline (setting or X-Timeout), or the audio URL's "
        "server was too slow.",
    }
    return {
        status: {"model": ErrorResponse, "description": descriptions.get(status, "Error")}
        for status in statuses
    }


AUDIO_ERRORS = error_responses(400, 401, 404, 413, 415, 422, 429, 502, 503, 504)
"""The errors a route that takes audio (an upload or a URL) may answer."""


def _inline(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema, written in place; the models inside it are referred to in
    ``#/components/schemas``, so the route must register them (through its other responses)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


def sse_event_schema() -> dict[str, Any]:
    """One event of a transcription stream, as OpenAPI 3.1 tools read an event-stream schema.

    The route must also document ``formats.TranscriptionJson`` (for ``Usage``) and an error
    (for ``ErrorResponse``).
    """
    return {
        "type": "object",
        "description": "One server-sent event. Its `data` is a JSON object: a "
        "`transcript.text.delta` per segment, then one `transcript.text.done`; or an error.",
        "properties": {
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {
                    "anyOf": [
                        _inline(TranscriptTextDelta),
                        _inline(DiarizedSegment),
                        _inline(TranscriptTextDone),
                        {"$ref": "#/components/schemas/ErrorResponse"},
                    ]
                },
            },
        },
        "required": ["data"],
    }


class ModelObject(BaseModel):
    """A model as OpenAI lists it, with whisperd's details."""

    id: str = Field(examples=["tiny.en"])
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "whisperd"
    loaded: bool = False
    available: bool = False
    source: str = Field("hub", examples=["bundled"])
    multilingual: bool | None = Field(
        False, description="Null for a model of the models directory until it is loaded."
    )
    default: bool = False
    openai_name: bool = Field(
        default=False,
        description="One of OpenAI's names (`whisper-1`, `gpt-4o-transcribe`, ...) for "
        "the served default.",
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class TranslateResult(BaseModel):
    """``POST /translate/``: the transcript and the detected language."""

    text: str
    language: str = Field(examples=["en"])


class LanguageProbability(BaseModel):
    language: str = Field(examples=["de"], description="ISO-639-1 code.")
    probability: float = Field(ge=0, le=1, examples=[0.97])


class LanguageDetectionResult(BaseModel):
    """``POST /v1/audio/language``: the language spoken, from the first 30 s of speech."""

    language: str = Field(examples=["de"], description="The most likely language (ISO-639-1).")
    probability: float = Field(ge=0, le=1, examples=[0.97])
    languages: list[LanguageProbability] = Field(
        description="The five most likely languages, the most likely first."
    )
    duration: float = Field(
        ge=0, le=30, examples=[9.5], description="Seconds of speech listened to (at most 30)."
    )

    @classmethod
    def of(cls, found: LanguageDetection) -> LanguageDetectionResult:
        return cls(
            language=found.language,
            probability=round(found.probability, 4),
            languages=[
                LanguageProbability(language=code, probability=round(p, 4))
                for code, p in found.languages
            ],
            duration=round(found.duration, 3),
        )


class GpuCheck(BaseModel):
    cuda: bool
    device: str | None = None
    device_count: int = 0


class FfmpegCheck(BaseModel):
    ffmpeg: dict[str, str]
    pyav: str
    decoded_seconds: float
    ok: bool


class ModelCheck(BaseModel):
    model: str
    source: str
    device: str
    compute_type: str
    load_seconds: float
    multilingual: bool
    loaded_models: list[str]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


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

    @classmethod
    def of(cls, job: Job, *, max_attempts: int) -> JobObject:
        """The job as the API shows it."""
        callback = None
        if job.callback_url:
            callback = JobCallback(
                url=job.callback_url,
                status=str(job.callback_state) or None,  # type: ignore[arg-type]
                attempts=job.callback_attempts,
                last_http_status=job.callback_status,
                last_error=job.callback_error,
            )
        return cls(
            id=job.id,
            status=job.state,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            attempts=job.attempts,
            max_attempts=max_attempts,
            cancel_requested=job.cancel_requested,
            progress=JobProgress(
                seconds=round(job.progress, 3),
                duration=job.duration,
                chunks=job.chunks,
                chunks_done=job.chunks_done,
            ),
            model=job.spec.model,
            task=job.spec.task,
            response_format=job.spec.response_format,
            input=JobInput(type=job.source, url=job.url, filename=job.filename, bytes=job.size),
            worker=job.worker,
            error=None if job.error is None else ErrorDetail.model_validate(job.error),
            callback=callback,
            result=job.result_value(),
        )

    def body(self, *, with_result: bool = True) -> dict[str, Any]:
        """The JSON body: every field (``result`` only ``with_result``)."""
        return self.model_dump(mode="json", exclude=None if with_result else {"result"})


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

    def body(self) -> dict[str, Any]:
        """The JSON body; a listed job has no ``result``."""
        return {
            "object": self.object,
            "data": [job.body(with_result=False) for job in self.data],
            "first_id": self.first_id,
            "last_id": self.last_id,
            "has_more": self.has_more,
            "queue": self.queue.model_dump(mode="json"),
        }
