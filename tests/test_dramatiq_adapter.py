"""dramatiq's internals that whisperd.jobs.dramatiq_adapter relies on are still there.

These fail loudly when a dramatiq upgrade renames or reshapes them, instead of queue
maintenance, prefetch caps or drains silently ceasing to work.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer


def _params(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_redis_broker_maintenance_hooks() -> None:
    # Broker.maintain forces maintenance by overriding this and calling do_qsize.
    assert _params(RedisBroker._should_do_maintenance) == ["self", "command"]
    # every do_<command> call asks it whether to run maintenance, and qsize is a command
    assert "self._should_do_maintenance(command)" in inspect.getsource(RedisBroker._dispatch)
    assert 'name.startswith("do_")' in inspect.getsource(RedisBroker.__getattr__)
    dispatch = Path(inspect.getfile(RedisBroker)).parent / "redis" / "dispatch.lua"
    lua = dispatch.read_text()
    assert 'command == "qsize"' in lua
    assert 'if do_maintenance == "1" then' in lua


def test_worker_prefetch_and_consumers() -> None:
    init = inspect.getsource(Worker.__init__)
    assert "self.queue_prefetch" in init
    assert "self.consumers" in init
    assert "prefetch=self.delay_prefetch if delay else self.queue_prefetch" in inspect.getsource(
        Worker
    )


def test_consumer_prefetch_attributes() -> None:
    from dramatiq.worker import _ConsumerThread

    assert "self.prefetch = prefetch" in inspect.getsource(_ConsumerThread.__init__)
    assert "self.consumer" in inspect.getsource(_ConsumerThread)
    assert "self.prefetch = prefetch" in inspect.getsource(_RedisConsumer.__init__)
    # _RedisConsumer reads self.prefetch each time it fetches, so a 0 stops it fetching
    assert "self.prefetch" in inspect.getsource(_RedisConsumer.__next__)
