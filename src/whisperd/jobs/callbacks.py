"""Callback delivery: POST a finished job to its callback URL, as OpenFaaS does.

The body is the result in the job's format (or, when the job failed or was cancelled, the
OpenAI error object). The headers are OpenFaaS's — ``X-Call-Id``, ``X-Function-Status``
(200, or the error's HTTP status), ``X-Duration-Seconds``, ``X-Function-Name`` — plus
``X-Whisperd-Job-Status`` and, when ``callback_secret`` is set,
``X-Whisperd-Signature: sha256=<hex>``: HMAC-SHA256 of the raw body with the secret.

A delivery runs on its own queue, so a failing receiver never re-runs a transcription.
Connection errors, timeouts, 5xx and 429 are retried with exponential backoff up to
``callback_max_retries`` (each retry a delayed message on that queue); any other answer
(3xx, 4xx) or a forbidden address ends it.
Every connection goes through the same SSRF guard as fetching audio.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import httpx

from whisperd import fetch
from whisperd.errors import FetchError, ForbiddenURLError
from whisperd.jobs.queue import JobQueue, backoff_seconds
from whisperd.jobs.records import CallbackState, Job
from whisperd.jobs.states import JobState
from whisperd.jobs.store import JobStore
from whisperd.settings import Settings

logger = logging.getLogger(__name__)

FUNCTION_NAME = "whisper"
SIGNATURE_HEADER = "X-Whisperd-Signature"
_MAX_BACKOFF_S = 3600.0


def signature(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def request_for(job: Job, settings: Settings) -> tuple[bytes, dict[str, str]]:
    """The callback's body and headers for a finished job."""
    if job.state is JobState.SUCCEEDED and job.result is not None:
        body = job.result.encode()
        content_type = job.media_type or "application/octet-stream"
        status = 200
    else:
        body = json.dumps({"error": job.error}).encode()
        content_type = "application/json"
        status = job.error_status or 500
    headers = {
        "Content-Type": content_type,
        "X-Call-Id": job.id,
        "X-Function-Status": str(status),
        "X-Duration-Seconds": f"{job.run_seconds:.3f}",
        "X-Function-Name": FUNCTION_NAME,
        "X-Whisperd-Job-Status": str(job.state),
    }
    if settings.callback_secret:
        headers[SIGNATURE_HEADER] = signature(settings.callback_secret, body)
    return body, headers


class CallbackSender:
    """Queues the callbacks of ended jobs, and delivers one attempt per message; re-sends
    itself (delayed) to retry."""

    def __init__(self, settings: Settings, store: JobStore, queue: JobQueue) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue

    def send_if_due(self, job: Job) -> None:
        """Queue the callback of an ended job, if it has one not sent yet."""
        if job.callback_state is CallbackState.PENDING:
            self.queue.send_callback(job.id)
            self.store.update(job.id, {"callback_state": str(CallbackState.QUEUED)})

    def deliver(self, job_id: str) -> None:
        """One delivery attempt for ``job_id``'s callback (the callbacks actor calls this)."""
        job = self.store.get(job_id, with_result=True)
        if job is None or not job.callback_url:
            logger.warning("Callback for job %s dropped: the job is gone", job_id)
            return
        if job.callback_state in (CallbackState.DELIVERED, CallbackState.FAILED):
            return  # a duplicate message: this one was settled already
        attempt = self.store.count_callback_attempt(job_id)
        body, headers = request_for(job, self.settings)
        status: int | None = None
        retry_after: float | None = None
        try:
            response = fetch.post(
                job.callback_url,
                self.settings,
                content=body,
                headers=headers,
                timeout=self.settings.callback_timeout,
            )
            status = response.status_code
            retry_after = _retry_after(response)
        except ForbiddenURLError as exc:
            self._give_up(job_id, attempt, None, exc.message)
            return
        except FetchError as exc:  # the host did not resolve, or did not answer in time
            self._failed_attempt(job_id, attempt, None, exc.message, retryable=exc.retryable)
            return
        except httpx.HTTPError as exc:
            self._failed_attempt(job_id, attempt, None, f"{type(exc).__name__}: {exc}", True)
            return
        if 200 <= status < 300:
            self.store.update(
                job_id,
                {
                    "callback_state": str(CallbackState.DELIVERED),
                    "callback_status": status,
                    "callback_error": "",
                },
            )
            logger.info("Callback for job %s delivered (HTTP %d, try %d)", job_id, status, attempt)
            return
        retryable = status >= 500 or status == 429
        self._failed_attempt(
            job_id, attempt, status, f"HTTP {status}", retryable, retry_after=retry_after
        )

    def _failed_attempt(
        self,
        job_id: str,
        attempt: int,
        status: int | None,
        error: str,
        retryable: bool,
        *,
        retry_after: float | None = None,
    ) -> None:
        if not retryable or attempt > self.settings.callback_max_retries:
            self._give_up(job_id, attempt, status, error)
            return
        delay = backoff_seconds(self.settings.callback_retry_backoff, attempt)
        if retry_after is not None:
            delay = max(delay, min(retry_after, _MAX_BACKOFF_S))
        logger.info(
            "Callback for job %s failed (%s, try %d); retrying in %.1f s",
            job_id,
            error,
            attempt,
            delay,
        )
        self.store.update(
            job_id,
            {
                "callback_state": str(CallbackState.QUEUED),
                "callback_status": status or "",
                "callback_error": error,
            },
        )
        self.queue.send_callback(job_id, int(delay * 1000))

    def _give_up(self, job_id: str, attempt: int, status: int | None, error: str) -> None:
        logger.warning(
            "Callback for job %s failed for good after %d try(s): %s", job_id, attempt, error
        )
        self.store.update(
            job_id,
            {
                "callback_state": str(CallbackState.FAILED),
                "callback_status": status or "",
                "callback_error": error,
            },
        )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
