"""The jobs machinery of one process, from start to stop.

:class:`JobsRuntime` connects to Redis (starting the embedded one when no
``WHISPERD_REDIS_URL`` is set), declares the actors, and, when the process runs consumers,
starts two dramatiq workers: one for jobs, with ``job_workers`` threads (two by default: one job's
windows fill a batch, and a second overlaps its fetch, decode and split) and a prefetch of
that same number, so a process never holds a job it cannot start; and one for callbacks. A
janitor thread, every ``job_poll_interval``:
re-delivers dead workers' messages (queue maintenance), renews the leases of the jobs
running here, stops those whose cancel was requested, and purges expired jobs.

Used by the app's lifespan (``whisperd serve``: consumers share the engine's batches
with synchronous requests) and by :func:`run_worker` (``whisperd worker``: consumers only).

A Redis that cannot be reached at start does not stop the process: the janitor tries again
every poll interval, and once connected declares the actors and starts the consumers. Until
then the job routes answer 503 ``jobs_unavailable`` (see :func:`jobs_unavailable`).

Stopping: when the process's :class:`~whisperd.services.Lifecycle` drains, no new jobs are
taken (running ones go on); :meth:`JobsRuntime.stop` then stops the running ones at their next
window and puts them back on the queue, so a drain that times out loses nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIServer

import redis
from dramatiq import Worker
from prometheus_client import start_http_server

from whisperd.engine import Transcriber
from whisperd.errors import (
    ConflictError,
    JobNotFoundError,
    ServiceUnavailableError,
    WorkCancelledError,
)
from whisperd.jobs import actors as actors_module
from whisperd.jobs.broker import CALLBACKS_QUEUE, JOBS_QUEUE, Broker, connect
from whisperd.jobs.callbacks import CallbackSender
from whisperd.jobs.embedded import EmbeddedRedis
from whisperd.jobs.owners import Owner
from whisperd.jobs.records import CallbackState, Job, JobSpec, Source
from whisperd.jobs.runner import JobRunner
from whisperd.jobs.states import JobState
from whisperd.jobs.store import JobStore, error_fields, redis_errors
from whisperd.metrics import Metrics
from whisperd.services import Lifecycle, Services
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


class JobsRuntime:
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
        self._brokers: tuple[Broker, Broker] | None = None
        self._store: JobStore | None = None
        self._actors: actors_module.Actors | None = None
        self.runner: JobRunner | None = None
        self._workers: list[Worker] = []
        self._janitor: threading.Thread | None = None
        self._stop = threading.Event()
        # Held while the connection is wired up, so that stop() never races a late connect.
        self._lock = threading.Lock()
        self._closed = False
        self._url = ""
        self._redis_ok = True

    # --- lifetime ---------------------------------------------------------------------
    def start(self) -> JobsRuntime:
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
        return self._actors is not None

    def _connect(self) -> redis.RedisError | None:
        """Connect and wire up the actors and consumers; the error if Redis cannot be reached."""
        try:
            job_broker = connect(self.settings, self._url)
        except redis.RedisError as exc:
            return exc
        try:
            callback_broker = connect(self.settings, self._url)
        except redis.RedisError as exc:
            job_broker.client.close()
            return exc
        with self._lock:
            if self._closed:
                job_broker.client.close()
                callback_broker.client.close()
                return None
            self._wire(job_broker, callback_broker)
        return None

    def _wire(self, job_broker: Broker, callback_broker: Broker) -> None:
        self._brokers = (job_broker, callback_broker)
        store = self._store = JobStore(job_broker.client, self.settings)
        sender: CallbackSender | None = None
        if self.consumers:
            assert self.engine is not None
            self.runner = JobRunner(
                self.settings,
                store,
                self.engine,
                self.worker_id,
                lifecycle=self.lifecycle,
                send_job=self._send_job,
                send_chunk=self._send_chunk,
                send_callback=self._send_callback,
            )
            sender = CallbackSender(self.settings, store, self._send_callback_later)
        self._actors = actors_module.declare(
            job_broker,
            callback_broker,
            run_job=self.runner.run if self.runner else None,
            run_chunk=self.runner.run_chunk if self.runner else None,
            deliver_callback=sender.deliver if sender else None,
        )
        if self.consumers:
            self._start_workers()
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

    def _start_workers(self) -> None:
        assert self._brokers is not None
        poll_ms = max(10, int(self.settings.job_poll_interval * 1000))
        job_broker, callback_broker = self._brokers
        for broker, queue, threads in (
            (job_broker, JOBS_QUEUE, self.job_threads),
            (callback_broker, CALLBACKS_QUEUE, self.settings.callback_workers),
        ):
            worker = Worker(broker, queues={queue}, worker_threads=threads, worker_timeout=poll_ms)
            # Prefetch counts messages in progress: take no more than can start now.
            worker.queue_prefetch = threads
            worker.start()
            self._workers.append(worker)
        if self.lifecycle.draining:  # the drain came while the consumers started
            self._pause_jobs()

    def _on_drain(self) -> None:
        """Take no new jobs; running ones go on (called when the lifecycle drains, possibly
        from a signal handler)."""
        self._pause_jobs()
        logger.info("Jobs draining: no new jobs taken; %d running", self.running)

    def _pause_jobs(self) -> None:
        for worker in self._workers[:1]:
            # Worker.pause() would close and restart the consumer after a fixed 3 s sleep;
            # a prefetch of 0 just stops it fetching (heartbeats go on through the delay
            # queue's consumer and the janitor).
            for name, thread in worker.consumers.items():
                if name == JOBS_QUEUE:
                    thread.prefetch = 0
                    if thread.consumer is not None:  # the broker's _RedisConsumer
                        thread.consumer.prefetch = 0  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Put running jobs back on the queue, stop the consumers, disconnect, stop Redis."""
        with self._lock:
            self._closed = True
        self._pause_jobs()
        if self.runner is not None:
            self.runner.stop_all()
        for worker in self._workers:
            worker.stop(timeout=_STOP_JOIN_MS)
        self._workers.clear()
        self._stop.set()
        if self._janitor is not None:
            self._janitor.join(timeout=10)
            self._janitor = None
        if self._brokers is not None:
            for broker in self._brokers:
                broker.client.close()
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
            assert self._brokers is not None and self._store is not None
            self._brokers[0].maintain()
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

    # --- sending ----------------------------------------------------------------------
    @property
    def store(self) -> JobStore:
        if self._store is None:
            raise jobs_unavailable()
        return self._store

    @property
    def actors(self) -> actors_module.Actors:
        if self._actors is None:
            raise jobs_unavailable()
        return self._actors

    def _send_job(self, job_id: str, delay_ms: int | None) -> None:
        self.actors.send_job(job_id, delay_ms)

    def _send_chunk(self, job_id: str, index: int, delay_ms: int | None) -> None:
        self.actors.send_chunk(job_id, index, delay_ms)

    def _send_callback(self, job: Job) -> None:
        self.actors.send_callback(job.id)
        self.store.update(job.id, {"callback_state": str(CallbackState.QUEUED)})

    def _send_callback_later(self, job_id: str, delay_ms: int) -> None:
        self.actors.send_callback(job_id, delay_ms)

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
                self.actors.send_job(job_id)
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
                        if done.callback_state is CallbackState.PENDING:
                            self._send_callback(done)
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
        if self._brokers is None:
            raise jobs_unavailable()
        broker = self._brokers[0]
        with redis_errors():
            counts = self.store.counts(None if owner is None else owner.scope)
            return {
                **counts,
                "waiting_messages": broker.queue_length(),
                "delayed_messages": broker.delayed_count(),
            }


def run_worker(settings: Settings) -> int:
    """``whisperd worker``: load the model, run job consumers until SIGTERM/SIGINT; exit status.

    The first signal drains (no new jobs; running ones get ``drain_timeout`` seconds to
    finish, then go back to the queue); a second one stops at once.
    """
    if settings.redis_url is None:
        logger.error(
            "whisperd worker needs WHISPERD_REDIS_URL: the Redis the API servers use "
            "(a redis:// URL, or unix:///path/to/redis.sock for a local embedded one)."
        )
        return 2
    signals = (signal.SIGTERM, signal.SIGINT)
    received: list[float] = []
    wake = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(time.monotonic())
        wake.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        with Transcriber(settings) as engine:
            lifecycle = Lifecycle()
            runtime = JobsRuntime(
                settings, engine=engine, consumers=True, lifecycle=lifecycle
            ).start()
            services = Services(
                settings=settings,
                lifecycle=lifecycle,
                metrics=Metrics(),
                engine=engine,
                jobs=runtime,
            )
            lifecycle.started()
            exporter = _serve_metrics(services) if settings.metrics_port else None
            try:
                logger.info("Worker %s taking jobs", runtime.worker_id)
                while not received:
                    wake.wait(1.0)
                logger.info("Signal received: draining (up to %.0f s)", settings.drain_timeout)
                lifecycle.drain()
                deadline = received[0] + settings.drain_timeout
                while runtime.running and len(received) < 2 and time.monotonic() < deadline:
                    wake.clear()
                    wake.wait(0.1)
                if runtime.running:
                    logger.warning(
                        "Stopping with %d job(s) running: back to the queue", runtime.running
                    )
            finally:
                lifecycle.stopped()
                if exporter is not None:
                    exporter.shutdown()
                runtime.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    logger.info("Worker stopped")
    return 0


def _serve_metrics(services: Services) -> WSGIServer:
    """The worker's metrics (engine, jobs, process) on ``metrics_port``, from a thread."""
    settings = services.settings
    services.metrics.watch(services)
    server, _ = start_http_server(
        settings.metrics_port, addr=settings.host, registry=services.metrics.registry
    )
    logger.info("Metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    return server
