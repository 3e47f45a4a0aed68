"""The jobs service: what the API calls (submit, get, cancel, list, queue stats).

:class:`JobsService` is a :class:`~whisperd.jobs.process.JobsProcess` (the machinery it
runs on, started and stopped by the app's lifespan for ``whisperd serve`` and by
:func:`whisperd.jobs.worker.main.run_worker` for ``whisperd worker``) with the calls the job
routes make. They block on Redis: run them in a worker thread.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from whisperd.errors import (
    ConflictError,
    JobNotFoundError,
    ServiceUnavailableError,
    WorkCancelledError,
)
from whisperd.jobs.owners import Owner
from whisperd.jobs.process import JobsProcess
from whisperd.jobs.records import Job, Source
from whisperd.jobs.states import JobState
from whisperd.jobs.store import error_fields, jobs_unavailable, redis_errors
from whisperd.spec import Spec

__all__ = ["JobsService", "jobs_unavailable"]

logger = logging.getLogger(__name__)


class JobsService(JobsProcess):
    """The jobs of this process's Redis, as the API sees them."""

    def submit(
        self,
        spec: Spec,
        *,
        owner: Owner,
        source: Source,
        url: str | None = None,
        audio: bytes | None = None,
        filename: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Store a new job of ``owner`` and put it on the queue; both are durable when this
        returns. RateLimitError (nothing stored) if it would pass a cap on queued jobs."""
        job_id = str(uuid.uuid4())
        fields: dict[str, str | int | float] = {
            "id": job_id,
            "spec": spec.to_json(),
            "source": source,
            "created_at": time.time(),
            "attempts": 0,
            "url": url or "",
            "filename": filename or "",
            "size": len(audio) if audio is not None else "",
            "callback_url": callback_url or "",
        }
        with redis_errors():
            self.store.create(job_id, fields, audio, owner=owner.fingerprint)
            try:
                self.queue.send_job(job_id)
            except BaseException:
                self.store.delete(job_id)
                raise
            job = self.store.get(job_id)
        assert job is not None
        logger.info("Job %s queued (%s)", job_id, source)
        return job

    def get(self, job_id: str, *, owner: Owner, with_result: bool = True) -> Job:
        """The job, if ``owner`` may see it; another key's job is missing just as an unknown
        one is (the same 404), so ids tell nothing."""
        with redis_errors():
            job = self.store.get(job_id, with_result=with_result)
        if job is None or not owner.sees(job.owner):
            raise JobNotFoundError(
                f"No job {job_id!r}: it never existed, or it ended more than "
                f"{self.settings.job_ttl:g} s ago and was purged (WHISPERD_JOB_TTL)."
            )
        return job

    def cancel(self, job_id: str, *, owner: Owner) -> Job:
        """Cancel: a queued job never runs; a running one stops at its next window. A job
        split into chunks ends at once: its chunks stop at their next window, wherever they
        run, and those not started never do. ConflictError once it has ended (cancelled
        included)."""
        with redis_errors():
            for _ in range(5):
                job = self.get(job_id, owner=owner, with_result=False)
                if job.state.final:
                    raise ConflictError(
                        f"Job {job_id} has already ended ({job.state}); there is nothing to "
                        "cancel.",
                        param="job_id",
                        code="job_finished",
                    )
                if job.state is JobState.QUEUED or job.fanned_out:
                    # nothing runs it as a whole: it ends here (chunks stop at their next window)
                    done = self.store.transition(
                        job_id,
                        job.state,
                        JobState.CANCELLED,
                        error_fields(WorkCancelledError("The job was cancelled.")),
                    )
                    if done is not None:
                        self.callbacks.send_if_due(done)
                        queued = job.state is JobState.QUEUED
                        if not queued and self.runner is not None:
                            self.runner.cancel(job_id)
                        logger.info(
                            "Job %s cancelled %s",
                            job_id,
                            "before it ran" if queued else "while its chunks ran",
                        )
                        return done
                else:
                    flagged = self.store.request_cancel(job_id)
                    if flagged is not None:
                        if self.runner is not None:
                            self.runner.cancel(job_id)
                        logger.info("Job %s: cancel requested while running", job_id)
                        return flagged
        raise ServiceUnavailableError("The job kept changing state; retry the cancel.")

    def list_jobs(
        self, state: JobState | None, *, owner: Owner, limit: int, after: str | None
    ) -> tuple[list[Job], bool]:
        """The jobs ``owner`` sees, newest first; and whether there are more."""
        with redis_errors():
            return self.store.list(state, owner=owner.scope, limit=limit, after=after)

    def queue_stats(self, owner: Owner | None = None) -> dict[str, Any]:
        """Jobs per state (those ``owner`` sees; None: all), and the messages waiting on the
        queue, everyone's (what autoscaling watches)."""
        queue = self.queue
        with redis_errors():
            counts = self.store.counts(None if owner is None else owner.scope)
            return {
                **counts,
                "waiting_messages": queue.queue_length(),
                "delayed_messages": queue.delayed_count(),
            }
