"""The job queue: dramatiq on Redis, its actors, and sending their messages, as one object.

Nothing connects at import: :func:`connect` builds a :class:`JobQueue` for a URL when the
jobs service starts. A message carries only the job id (and a chunk's index); the records
in Redis say what to do. Three actors: ``whisperd_transcribe`` (a job) and
``whisperd_transcribe_chunk`` (one chunk of a long job) on the jobs queue, so any worker
takes them, and ``whisperd_callback`` on its own queue and broker, so a failing receiver
never holds up a transcription. A process without consumers declares the actors only to
send messages.

dramatiq keeps its keys under its default namespace, ``dramatiq:``. The list
``dramatiq:transcribe`` holds the ids of jobs' messages waiting for a worker (scale workers
on its length, e.g. with KEDA's Redis list scaler; deploy/k8s does); ``.msgs`` hashes hold
the messages, ``.DQ`` the delayed ones (retries), ``__acks__.<worker>.<queue>`` the
messages a worker has taken and not finished, and ``__heartbeats__`` when each worker last
spoke. A worker silent for longer than the heartbeat timeout is dead: queue maintenance
puts the messages it held back on their queue. dramatiq runs maintenance at random;
:meth:`JobQueue.maintain` runs it on demand, so a dead worker's messages come back within a
poll interval of its heartbeat timing out.

dramatiq never retries here (no ``Retries`` middleware): a retry is always a message we send
again with a delay from :func:`backoff_seconds`. A handler that raises (a Redis outage
mid-job; a bug) has its message sent again the same way, up to ``ESCAPED_RETRIES`` times,
then it is dead-lettered.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import redis
from dramatiq import Worker
from dramatiq.middleware import CurrentMessage

from whisperd.jobs.dramatiq_adapter import MaintainedBroker, start_worker, stop_fetching
from whisperd.settings import Settings

logger = logging.getLogger(__name__)

NAMESPACE = "dramatiq"
JOBS_QUEUE = "transcribe"
CALLBACKS_QUEUE = "callbacks"
QUEUES = (JOBS_QUEUE, CALLBACKS_QUEUE)
TRANSCRIBE_ACTOR = "whisperd_transcribe"
CHUNK_ACTOR = "whisperd_transcribe_chunk"
CALLBACK_ACTOR = "whisperd_callback"
ESCAPED_RETRIES = 20
"""Sends again of a message whose handler raised, before it is dead-lettered."""
_REDELIVERIES = "whisperd_redeliveries"  # the message option that counts them
_ESCAPED_BACKOFF_S = (1.0, 600.0)
_MAX_BACKOFF_S = 3600.0


def backoff_seconds(base: float, attempt: int, cap: float = _MAX_BACKOFF_S) -> float:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)``, up to 1.5x, capped (1 h)."""
    return min(base * 2.0 ** max(0, attempt - 1), cap) * random.uniform(1.0, 1.5)


@dataclass(frozen=True, slots=True)
class Handlers:
    """What this process does with each message (a process without consumers has none)."""

    run_job: Callable[[str], None]
    run_chunk: Callable[[str, int], None]
    deliver_callback: Callable[[str], None]


def _no_handler(*args: object) -> None:
    msg = "This process runs no job consumers; it cannot handle messages"
    raise RuntimeError(msg)


_NO_HANDLERS = Handlers(_no_handler, _no_handler, _no_handler)


def connect(settings: Settings, url: str) -> JobQueue:
    """The queue on the Redis at ``url``; raises redis errors if it cannot be reached."""
    job_broker = _broker(settings, url)
    try:
        callback_broker = _broker(settings, url)
    except redis.RedisError:
        job_broker.client.close()
        raise
    return JobQueue(settings, job_broker, callback_broker)


def _broker(settings: Settings, url: str) -> MaintainedBroker:
    client = redis.Redis.from_url(
        url,
        socket_timeout=max(10.0, settings.job_poll_interval * 5),
        socket_connect_timeout=10.0,
        health_check_interval=30,
    )
    client.ping()
    return MaintainedBroker(
        client,
        namespace=NAMESPACE,
        heartbeat_timeout_ms=int(settings.job_heartbeat_timeout * 1000),
        middleware=[CurrentMessage()],
    )


class JobQueue:
    """The brokers (jobs and chunks on one, callbacks on their own, so each gets its own
    consumer pool), the actors declared on them, and this process's consumers."""

    def __init__(
        self, settings: Settings, job_broker: MaintainedBroker, callback_broker: MaintainedBroker
    ) -> None:
        self.settings = settings
        self.job_broker = job_broker
        self.callback_broker = callback_broker
        self.client: redis.Redis = job_broker.client
        self._actors: dict[str, Any] = {}
        self._workers: list[Worker] = []

    def declare(self, handlers: Handlers | None = None) -> None:
        """Declare the actors, handled by ``handlers`` (None: this process only sends)."""
        h = handlers or _NO_HANDLERS
        for name, fn, broker, queue in (
            (TRANSCRIBE_ACTOR, h.run_job, self.job_broker, JOBS_QUEUE),
            (CHUNK_ACTOR, h.run_chunk, self.job_broker, JOBS_QUEUE),
            (CALLBACK_ACTOR, h.deliver_callback, self.callback_broker, CALLBACKS_QUEUE),
        ):
            self._actors[name] = dramatiq.Actor(
                self._guarded(name, fn),
                broker=broker,
                actor_name=name,
                queue_name=queue,
                priority=0,
                options={},
            )

    def _guarded(self, name: str, handler: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            try:
                handler(*args)
            except Exception:
                message = CurrentMessage.get_current_message()
                tries = 1 + int(message.options.get(_REDELIVERIES, 0)) if message else 1
                if tries > ESCAPED_RETRIES:
                    logger.exception("%s%r failed %d times; dead-lettered", name, args, tries)
                    raise
                delay = backoff_seconds(_ESCAPED_BACKOFF_S[0], tries, _ESCAPED_BACKOFF_S[1])
                logger.exception("%s%r failed; sent again in %.1f s", name, args, delay)
                self._send(name, args, int(delay * 1000), **{_REDELIVERIES: tries})

        run.__name__ = name
        return run

    def _send(
        self, actor: str, args: tuple[Any, ...], delay_ms: int | None, **options: Any
    ) -> None:
        self._actors[actor].send_with_options(args=args, delay=delay_ms, **options)

    # --- sending ----------------------------------------------------------------------
    def send_job(self, job_id: str, delay_ms: int | None = None) -> None:
        """Put ``job_id`` on the jobs queue (after ``delay_ms``, on the delay queue)."""
        self._send(TRANSCRIBE_ACTOR, (job_id,), delay_ms)

    def send_chunk(self, job_id: str, index: int, delay_ms: int | None = None) -> None:
        """Put chunk ``index`` of ``job_id`` on the jobs queue (after ``delay_ms``)."""
        self._send(CHUNK_ACTOR, (job_id, index), delay_ms)

    def send_callback(self, job_id: str, delay_ms: int | None = None) -> None:
        """Put a delivery of ``job_id``'s callback on the callbacks queue."""
        self._send(CALLBACK_ACTOR, (job_id,), delay_ms)

    # --- consuming --------------------------------------------------------------------
    def consume(self, *, job_threads: int, callback_threads: int) -> None:
        """Start this process's consumers: ``job_threads`` for jobs and chunks, and
        ``callback_threads`` for callbacks; each takes no more messages than it can start."""
        poll_ms = max(10, int(self.settings.job_poll_interval * 1000))
        for broker, queue, threads in (
            (self.job_broker, JOBS_QUEUE, job_threads),
            (self.callback_broker, CALLBACKS_QUEUE, callback_threads),
        ):
            self._workers.append(start_worker(broker, queue, threads=threads, poll_ms=poll_ms))

    def pause_jobs(self) -> None:
        """Take no new jobs or chunks; the ones running go on."""
        for worker in self._workers[:1]:
            stop_fetching(worker, JOBS_QUEUE)

    def stop_consuming(self, timeout_ms: int) -> None:
        """Stop the consumers, waiting up to ``timeout_ms`` for what they run."""
        for worker in self._workers:
            worker.stop(timeout=timeout_ms)
        self._workers.clear()

    def close(self) -> None:
        """Disconnect from Redis."""
        self.job_broker.client.close()
        self.callback_broker.client.close()

    # --- the queue's state ------------------------------------------------------------
    def maintain(self) -> None:
        """Run queue maintenance now on every queue: re-deliver the messages of dead workers."""
        self.job_broker.maintain(QUEUES)

    def queue_length(self, queue: str = JOBS_QUEUE) -> int:
        """Messages waiting on ``queue`` (not yet taken by a worker, not delayed)."""
        return int(self.client.llen(f"{NAMESPACE}:{queue}"))

    def delayed_count(self, queue: str = JOBS_QUEUE) -> int:
        """Messages waiting for their retry time on ``queue``."""
        return int(self.client.hlen(f"{NAMESPACE}:{queue}.DQ.msgs"))
