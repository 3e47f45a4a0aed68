"""The jobs service: what the API calls (submit, get, cancel, list, queue stats), and the
jobs machinery of one process from start to stop.

:class:`JobsService` connects to Redis (starting the embedded one when no
``WHISPERD_REDIS_URL`` is set), declares the actors on the :class:`~whisperd.jobs.queue.JobQueue`,
and, when the process runs consumers, builds the :class:`~whisperd.jobs.worker.runner.JobRunner`
and starts the queue's consumers: ``job_workers`` threads for jobs (two by default: one job's
windows fill a batch, and a second overlaps its fetch, decode and split), taking no more
messages than they can start, and ``callback_workers`` for callbacks. A janitor thread, every
``job_poll_interval``: re-delivers dead workers' messages (queue maintenance), renews the
leases of the jobs running here, stops those whose cancel was requested, and purges expired
jobs.

Used by the app's lifespan (``whisperd serve``: consumers share the engine's batches
with synchronous requests) and by :func:`whisperd.jobs.worker.main.run_worker`
(``whisperd worker``: consumers only).

A Redis that cannot be reached at start does not stop the process: the janitor tries again
every poll interval, and once connected declares the actors and starts the consumers. Until
then the job routes answer 503 ``jobs_unavailable`` (see :func:`jobs_unavailable`).

Stopping: when the process's :class:`~whisperd.services.Lifecycle` drains, no new jobs are
taken (running ones go on); :meth:`JobsService.stop` then stops the running ones at their next
window and puts them back on the queue, so a drain that times out loses nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import redis

from whisperd.engine import Transcriber
from whisperd.errors import (
    ConflictError,
    JobNotFoundError,
    ServiceUnavailableError,
    WorkCancelledError,
)
from whisperd.jobs import queue as job_queue
from whisperd.jobs.callbacks import CallbackSender
from whisperd.jobs.embedded import EmbeddedRedis
from whisperd.jobs.owners import Owner
from whisperd.jobs.queue import Handlers, JobQueue
from whisperd.jobs.records import Job, JobSpec, Source
from whisperd.jobs.states import JobState
from whisperd.jobs.store import JobStore, error_fields, redis_errors
from whisperd.jobs.worker.runner import JobRunner
from whisperd.services import Lifecycle
from whisperd.settings import Settings

logger = logging.getLogger(__name__)

_STOP_JOIN_MS = 30_000
# Jobs one process runs at once unless WHISPERD_JOB_WORKERS says otherwise.
JOB_THREADS = 2


def _worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def jobs_unavailable() -> ServiceUnavailableError:
    """The 503 of a job route while the job queue's Redis has not been reached."""
    return ServiceUnavailableError(
        "The job queue (Redis) cannot be reached yet; retry shortly. Synchronous "
        "transcription works meanwhile.",
        code="jobs_unavailable",
    )


class JobsService:
    """Redis, brokers, actors, and (with ``consumers``) the workers running jobs on ``engine``;
    they stop taking jobs when ``lifecycle`` drains."""

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Transcriber | None = None,
        consumers: bool = True,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        if consumers and engine is None:
            msg = "Job consumers need an engine"
            raise ValueError(msg)
        self.settings = settings
        self.engine = engine
        self.consumers = consumers
        self.lifecycle = lifecycle or Lifecycle()
        self.worker_id = _worker_id()
        self.max_attempts = settings.job_max_retries + 1
        self.embedded: EmbeddedRedis | None = None
        self._queue: JobQueue | None = None
        self._store: JobStore | None = None
        self._callbacks: CallbackSender | None = None
        self.runner: JobRunner | None = None
        self._janitor: threading.Thread | None = None
        self._stop = threading.Event()
        # Held while the connection is wired up, so that stop() never races a late connect.
        self._lock = threading.Lock()
        self._closed = False
        self._url = ""
        self._redis_ok = True

    # --- lifetime ---------------------------------------------------------------------
    def start(self) -> JobsService:
        """Start the embedded Redis (when no ``redis_url`` is set) and connect: declare the
        actors, start the consumers. A Redis not reachable yet is retried in the background."""
        url = self.settings.redis_url
        if url is None:
            self.embedded = EmbeddedRedis(self.settings.data_dir)
            url = self.embedded.start()
            if not self.consumers:
                logger.warning(
                    "Embedded Redis with no queue consumers: jobs wait until a worker connects "
                    "to %s (set WHISPERD_REDIS_URL to share a Redis)",
                    url,
                )
        self._url = url
        self.lifecycle.on_drain(self._on_drain)
        error = self._connect()
        if error is not None:
            logger.warning(
                "Cannot reach the job queue's Redis (%s; check WHISPERD_REDIS_URL): job routes "
                "answer 503 until it is back, tried again every %g s",
                error,
                self.settings.job_poll_interval,
            )
        self._janitor = threading.Thread(
            target=self._janitor_loop, name="whisperd-jobs-janitor", daemon=True
        )
        self._janitor.start()
        return self

    @property
    def connected(self) -> bool:
        """Whether the job queue's Redis has been reached (the job routes work)."""
        return self._callbacks is not None

    def _connect(self) -> redis.RedisError | None:
        """Connect and wire up the actors and consumers; the error if Redis cannot be reached."""
        try:
            queue = job_queue.connect(self.settings, self._url)
        except redis.RedisError as exc:
            return exc
        with self._lock:
            if self._closed:
                queue.close()
                return None
            self._wire(queue)
        return None

    def _wire(self, queue: JobQueue) -> None:
        self._queue = queue
        store = self._store = JobStore(queue.client, self.settings)
        callbacks = CallbackSender(self.settings, store, queue)
        handlers: Handlers | None = None
        if self.consumers:
            assert self.engine is not None
            runner = self.runner = JobRunner(
                self.settings,
                store,
                self.engine,
                self.worker_id,
                lifecycle=self.lifecycle,
                queue=queue,
                callbacks=callbacks,
            )
            handlers = Handlers(runner.run, runner.run_chunk, callbacks.deliver)
        queue.declare(handlers)
        # set last: it says the routes may use the queue (see ``connected``)
        self._callbacks = callbacks
        if self.consumers:
            queue.consume(
                job_threads=self.job_threads, callback_threads=self.settings.callback_workers
            )
            if self.lifecycle.draining:  # the drain came while the consumers started
                queue.pause_jobs()
        self._housekeep()
        logger.info(
            "Jobs ready (%s Redis, %s)",
            "external" if self.embedded is None else "embedded",
            f"{self.job_threads} job consumer(s)" if self.consumers else "no consumers",
        )

    @property
    def job_threads(self) -> int:
        """Jobs this process runs at once."""
        if not self.consumers or self.engine is None:
            return 0
        return self.settings.job_workers or JOB_THREADS

    def _on_drain(self) -> None:
        """Take no new jobs; running ones go on (called when the lifecycle drains, possibly
        from a signal handler)."""
        self._pause_jobs()
        logger.info("Jobs draining: no new jobs taken; %d running", self.running)

    def _pause_jobs(self) -> None:
        if self._queue is not None:
            self._queue.pause_jobs()

    def stop(self) -> None:
        """Put running jobs back on the queue, stop the consumers, disconnect, stop Redis."""
        with self._lock:
            self._closed = True
        self._pause_jobs()
        if self.runner is not None:
            self.runner.stop_all()
        if self._queue is not None:
            self._queue.stop_consuming(_STOP_JOIN_MS)
        self._stop.set()
        if self._janitor is not None:
            self._janitor.join(timeout=10)
            self._janitor = None
        if self._queue is not None:
            self._queue.close()
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None

    @property
    def running(self) -> int:
        """Jobs running in this process (the server's drain waits for them)."""
        return 0 if self.runner is None else self.runner.running

    # --- the janitor ------------------------------------------------------------------
    def _janitor_loop(self) -> None:
        while not self._stop.wait(self.settings.job_poll_interval):
            if not self.connected:
                error = self._connect()
                if error is not None:
                    logger.debug("The job queue's Redis is still unreachable: %s", error)
            else:
                self._housekeep()

    def _housekeep(self) -> None:
        try:
            assert self._queue is not None and self._store is not None
            self._queue.maintain()
            if self.runner is not None:
                self.runner.tick()
            self._store.purge_expired()
        except redis.RedisError as exc:
            if self._redis_ok:
                logger.warning("Job queue housekeeping failed (Redis: %s); will retry", exc)
            self._redis_ok = False
            return
        except Exception:
            logger.exception("Job queue housekeeping failed")
            return
        if not self._redis_ok:
            logger.info("Job queue housekeeping works again")
        self._redis_ok = True

    # --- the parts, once connected ---------------------------------------------------
    @property
    def store(self) -> JobStore:
        """The job records (503 ``jobs_unavailable`` until Redis is reached)."""
        if self._store is None or self._callbacks is None:
            raise jobs_unavailable()
        return self._store

    @property
    def queue(self) -> JobQueue:
        """The job queue (503 ``jobs_unavailable`` until Redis is reached)."""
        if self._queue is None or self._callbacks is None:
            raise jobs_unavailable()
        return self._queue

    @property
    def callbacks(self) -> CallbackSender:
        """Callback delivery (503 ``jobs_unavailable`` until Redis is reached)."""
        if self._callbacks is None:
            raise jobs_unavailable()
        return self._callbacks

    # --- what the API calls (blocking: run these in a worker thread) ------------------
    def submit(
        self,
        spec: JobSpec,
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
