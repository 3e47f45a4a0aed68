"""The exception tree. Each class knows its HTTP status and its OpenAI error ``type``.

::

    WhisperdError                     500 server_error
    ├── InvalidRequestError           400 invalid_request_error
    │   ├── AudioError                400   (the input is not usable audio)
    │   │   ├── EmptyAudioError       400
    │   │   ├── NoAudioStreamError    415
    │   │   ├── UndecodableAudioError 415
    │   │   │   └── TruncatedAudioError 400  (decodes, then breaks off)
    │   │   └── AudioTooLongError     413
    │   ├── UnsupportedTaskError      400   (translate / a language on an English-only model)
    │   ├── SpeakerModelMissingError  400   (speakers asked for; the extra is not installed)
    │   ├── PayloadTooLargeError      413
    │   ├── HeadersTooLargeError      431   (request line and headers over the limit)
    │   ├── ClientTooSlowError        408   (request head or body sent too slowly)
    │   ├── UnsupportedMediaTypeError 415
    │   ├── FetchError                400   (the URL is wrong: no such host, HTTP 4xx)
    │   │   ├── ForbiddenURLError     400   (scheme, private address, redirect to one)
    │   │   ├── UpstreamError         502 server_error  (HTTP 5xx, refused, TLS, broken)
    │   │   └── UpstreamTimeoutError  504 timeout_error (the URL's server too slow)
    │   ├── InvalidValueError         422
    │   └── ConflictError             409   (e.g. cancelling a job that has finished)
    ├── AuthenticationError           401 authentication_error
    ├── NotFoundError                 404 not_found_error
    │   ├── ModelNotFoundError        404
    │   └── JobNotFoundError          404   (unknown, or expired after its TTL)
    ├── RateLimitError                429 rate_limit_error  (carries retry_after seconds)
    ├── ServiceUnavailableError       503 service_unavailable (draining, not ready)
    ├── DeadlineExceededError         504 timeout_error
    ├── WorkCancelledError            499 cancelled         (the client went away)
    ├── ModelLoadError                500 server_error      (a bundled model is corrupt)
    ├── WorkerLostError               500 server_error      (a job's worker died; retried)
    └── InvalidTransitionError        500 server_error      (a job state change the table forbids)

Library errors (PyAV, CTranslate2, httpx, redis) are translated at the boundary with
``raise X(...) from exc``.
"""

from __future__ import annotations

from typing import Any, ClassVar

MAX_MESSAGE = 1000
"""Longest error message; a longer one (quoting some input at length) is cut."""
_SHOWN = 40


def shown(value: str) -> str:
    """A client's value as an error message quotes it: repr'd, and cut to a short prefix."""
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}... ({len(value)} characters)"


class WhisperdError(Exception):
    """Base of every error whisperd raises on purpose."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + "..."
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def to_dict(self) -> dict[str, Any]:
        """The error as OpenAI's JSON body."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    @property
    def transient(self) -> bool:
        """Whether retrying the same work later may succeed."""
        return self.status_code >= 500 or self.status_code == 429


class InvalidRequestError(WhisperdError):
    status_code = 400
    error_type = "invalid_request_error"


class AudioError(InvalidRequestError):
    default_code = "invalid_audio"


class EmptyAudioError(AudioError):
    default_code = "empty_audio"


class NoAudioStreamError(AudioError):
    status_code = 415
    default_code = "no_audio_stream"


class UndecodableAudioError(AudioError):
    status_code = 415
    default_code = "unsupported_audio"


class TruncatedAudioError(UndecodableAudioError):
    status_code = 400
    default_code = "truncated_audio"


class AudioTooLongError(AudioError):
    status_code = 413
    default_code = "audio_too_long"


class UnsupportedTaskError(InvalidRequestError):
    default_code = "unsupported_task"


class SpeakerModelMissingError(InvalidRequestError):
    """Speakers were asked for, but the speaker model (the ``speakers`` extra) is not installed."""

    default_code = "speaker_model_missing"

    def __init__(
        self, message: str, *, param: str | None = "response_format", code: str | None = None
    ):
        super().__init__(message, param=param, code=code)


class PayloadTooLargeError(InvalidRequestError):
    status_code = 413
    default_code = "payload_too_large"


class HeadersTooLargeError(InvalidRequestError):
    status_code = 431
    default_code = "headers_too_large"


class ClientTooSlowError(InvalidRequestError):
    status_code = 408
    default_code = "request_timeout"


class UnsupportedMediaTypeError(InvalidRequestError):
    status_code = 415
    default_code = "unsupported_media_type"


class FetchError(InvalidRequestError):
    """The audio URL could not be fetched; ``upstream_status`` is the remote status if any."""

    default_code = "fetch_failed"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = "url",
        code: str | None = None,
        upstream_status: int | None = None,
        retryable: bool = False,
    ):
        super().__init__(message, param=param, code=code)
        self.upstream_status = upstream_status
        self.retryable = retryable

    @property
    def transient(self) -> bool:
        return self.retryable


class ForbiddenURLError(FetchError):
    default_code = "forbidden_url"


class UpstreamError(FetchError):
    """The URL's server failed: an HTTP 5xx, a refused connection, a broken TLS or HTTP."""

    status_code = 502
    error_type = "server_error"
    default_code = "upstream_error"


class UpstreamTimeoutError(FetchError):
    """The URL's server did not send the file in time."""

    status_code = 504
    error_type = "timeout_error"
    default_code = "upstream_timeout"


class InvalidValueError(InvalidRequestError):
    status_code = 422
    default_code = "invalid_value"


class ConflictError(InvalidRequestError):
    status_code = 409
    default_code = "conflict"


class AuthenticationError(WhisperdError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class NotFoundError(WhisperdError):
    status_code = 404
    error_type = "not_found_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"

    def __init__(self, message: str, *, param: str | None = "model", code: str | None = None):
        super().__init__(message, param=param, code=code)


class JobNotFoundError(NotFoundError):
    default_code = "job_not_found"

    def __init__(self, message: str, *, param: str | None = "job_id", code: str | None = None):
        super().__init__(message, param=param, code=code)


class RateLimitError(WhisperdError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ServiceUnavailableError(WhisperdError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "unavailable"


class DeadlineExceededError(WhisperdError):
    status_code = 504
    error_type = "timeout_error"
    default_code = "deadline_exceeded"


class WorkCancelledError(WhisperdError):
    status_code = 499
    error_type = "cancelled"
    default_code = "cancelled"

    @property
    def transient(self) -> bool:
        return False


class ModelLoadError(WhisperdError):
    default_code = "model_load_failed"

    @property
    def transient(self) -> bool:
        return False


class WorkerLostError(WhisperdError):
    """The process running a job stopped (killed, crashed, out of memory) before it finished."""

    default_code = "worker_lost"


class InvalidTransitionError(WhisperdError):
    """A job state change that the transition table does not allow: a bug, never a client error."""

    default_code = "invalid_transition"

    @property
    def transient(self) -> bool:
        return False
