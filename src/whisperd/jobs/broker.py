"""dramatiq's RedisBroker, set up for whisperd, and the queue names.

Nothing connects at import: :func:`connect` builds a broker for a URL when a runtime starts.

dramatiq keeps its keys under its default namespace, ``dramatiq:``. The list
``dramatiq:transcribe`` holds the ids of jobs' messages waiting for a worker (scale workers
on its length, e.g. with KEDA's Redis list scaler; deploy/k8s does); ``.msgs`` hashes hold
the messages, ``.DQ`` the delayed ones (retries), ``__acks__.<worker>.<queue>`` the
messages a worker has taken and not finished, and ``__heartbeats__`` when each worker last
spoke. Callbacks have their own queue, ``dramatiq:callbacks``. A worker silent for longer than the
heartbeat timeout is dead: queue maintenance puts the messages it held back on their
queue. dramatiq runs maintenance at random; :meth:`Broker.maintain` runs it on demand, so
a dead worker's jobs come back within a poll interval of its heartbeat timing out.
"""

from __future__ import annotations

import logging
import threading

import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, Retries

from whisperd.settings import Settings

logger = logging.getLogger(__name__)

NAMESPACE = "dramatiq"
JOBS_QUEUE = "transcribe"
CALLBACKS_QUEUE = "callbacks"
QUEUES = (JOBS_QUEUE, CALLBACKS_QUEUE)
# Exceptions that escape an actor (a Redis outage mid-job; a bug) are retried this many
# times by dramatiq before the message is dead-lettered. Job failures themselves never
# escape: the actors handle them and re-send with their own backoff.
_ESCAPED_RETRIES = 20


def _retry_escaped(retries: int, exception: BaseException) -> bool:
    return retries < _ESCAPED_RETRIES


class Broker(RedisBroker):
    """A RedisBroker whose queue maintenance can also be run on demand."""

    def __init__(self, client: redis.Redis, *, heartbeat_timeout_ms: int) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            client=client,
            namespace=NAMESPACE,
            heartbeat_timeout=heartbeat_timeout_ms,
            middleware=[
                CurrentMessage(),
                Retries(retry_when=_retry_escaped, min_backoff=1000, max_backoff=600_000),
            ],
        )
        self._forced = threading.local()

    def _should_do_maintenance(self, command: str) -> int:
        if getattr(self._forced, "on", False):
            return 1
        return int(super()._should_do_maintenance(command))

    def maintain(self) -> None:
        """Run queue maintenance now on every queue: re-deliver the messages of dead workers."""
        self._forced.on = True
        try:
            for queue in QUEUES:
                for name in (queue, f"{queue}.DQ"):
                    self.do_qsize(name)
        finally:
            self._forced.on = False

    def queue_length(self, queue: str = JOBS_QUEUE) -> int:
        """Messages waiting on ``queue`` (not yet taken by a worker, not delayed)."""
        return int(self.client.llen(f"{NAMESPACE}:{queue}"))

    def delayed_count(self, queue: str = JOBS_QUEUE) -> int:
        """Messages waiting for their retry time on ``queue``."""
        return int(self.client.hlen(f"{NAMESPACE}:{queue}.DQ.msgs"))


def connect(settings: Settings, url: str) -> Broker:
    """A broker on the Redis at ``url``; raises redis errors if it cannot be reached."""
    client = redis.Redis.from_url(
        url,
        socket_timeout=max(10.0, settings.job_poll_interval * 5),
        socket_connect_timeout=10.0,
        health_check_interval=30,
    )
    client.ping()
    return Broker(client, heartbeat_timeout_ms=int(settings.job_heartbeat_timeout * 1000))
