"""The jobs machinery of one process, from start to stop.

:class:`JobsProcess` connects to Redis (starting the embedded one when no
``WHISPERD_REDIS_URL`` is set), declares the actors on the :class:`~whisperd.jobs.queue.JobQueue`,
and, when the process runs consumers, builds the :class:`~whisperd.jobs.worker.runner.JobRunner`
and starts the queue's consumers: ``job_workers`` threads for jobs (two by default: one job's
windows fill a batch, and a second overlaps its fetch, decode and split), taking no more
messages than they can start, and ``callback_workers`` for callbacks. A janitor thread, every
``job_poll_interval``: re-delivers dead workers' messages (queue maintenance), renews the
leases of the jobs running here, stops those whose cancel was requested, and purges expired
jobs.

A Redis that cannot be reached at start does not stop the process: the janitor tries again
every poll interval, and once connected declares the actors and starts the consumers. Until
then the parts raise 503 ``jobs_unavailable`` (see :func:`jobs_unavailable`).

Stopping: when the process's :class:`~whisperd.services.Lifecycle` drains, no new jobs are
taken (running ones go on); :meth:`JobsProcess.stop` then stops the running ones at their next
window and puts them back on the queue, so a drain that times out loses nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from typing import Self

import redis

from whisperd.engine import Transcriber
from whisperd.jobs import queue as job_queue
from whisperd.jobs.callbacks import CallbackSender
from whisperd.jobs.embedded import EmbeddedRedis
from whisperd.jobs.queue import Handlers, JobQueue
from whisperd.jobs.store import JobStore, jobs_unavailable
from whisperd.jobs.worker.runner import JobRunner
from whisperd.jobs.worker.work import Work
from whisperd.services import Lifecycle
from whisperd.settings import Settings

logger = logging.getLogger(__name__)

_STOP_JOIN_MS = 30_000
# Jobs one process runs at once unless WHISPERD_JOB_WORKERS says otherwise.
JOB_THREADS = 2


def _worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class JobsProcess:
    """Redis, the queue and its actors, and (with ``consumers``) the runner and the queue's
    consumers running jobs on ``engine``; they stop taking jobs when ``lifecycle`` drains."""

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
    def start(self) -> Self:
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
            work = Work(self.settings, store, self.engine, self.worker_id, queue=queue)
            runner = self.runner = JobRunner(work, lifecycle=self.lifecycle, callbacks=callbacks)
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
