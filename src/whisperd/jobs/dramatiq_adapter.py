"""The one place that reaches into dramatiq's internals (tests/test_dramatiq_adapter.py checks).

dramatiq (2.x) offers no public way to do three things whisperd needs, so this module does
them through names dramatiq does not document:

- run queue maintenance (re-deliver the messages of workers whose heartbeat timed out) on
  demand instead of at random: ``RedisBroker._should_do_maintenance`` and ``do_qsize``;
- cap a worker's prefetch at its thread count, so a process never holds a message it cannot
  start: ``Worker.queue_prefetch``;
- stop a worker's consumer fetching without closing it (``Worker.pause()`` closes and
  restarts its consumers after a fixed 3 s sleep): ``Worker.consumers``, each thread's
  ``prefetch`` and its broker consumer's ``prefetch``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import redis
from dramatiq import Middleware, Worker
from dramatiq.brokers.redis import RedisBroker


class MaintainedBroker(RedisBroker):
    """A RedisBroker whose queue maintenance can also be run on demand."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        heartbeat_timeout_ms: int,
        middleware: list[Middleware],
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            client=client,
            namespace=namespace,
            heartbeat_timeout=heartbeat_timeout_ms,
            middleware=middleware,
        )
        self._forced = threading.local()

    def _should_do_maintenance(self, command: str) -> int:
        if getattr(self._forced, "on", False):
            return 1
        return int(super()._should_do_maintenance(command))

    def maintain(self, queues: Iterable[str]) -> None:
        """Run queue maintenance now on ``queues`` (and their delay queues)."""
        self._forced.on = True
        try:
            for queue in queues:
                for name in (queue, f"{queue}.DQ"):
                    self.do_qsize(name)
        finally:
            self._forced.on = False


def start_worker(broker: RedisBroker, queue: str, *, threads: int, poll_ms: int) -> Worker:
    """A started dramatiq worker on ``queue`` that prefetches no more than it can start."""
    worker = Worker(broker, queues={queue}, worker_threads=threads, worker_timeout=poll_ms)
    # Prefetch counts messages in progress: take no more than can start now.
    worker.queue_prefetch = threads
    worker.start()
    return worker


def stop_fetching(worker: Worker, queue: str) -> None:
    """Stop ``worker`` taking messages from ``queue``; what it runs goes on, and heartbeats go
    on through the delay queue's consumer."""
    consumers: dict[str, Any] = worker.consumers
    for name, thread in consumers.items():
        if name == queue:
            thread.prefetch = 0
            if thread.consumer is not None:  # the broker's _RedisConsumer
                thread.consumer.prefetch = 0
