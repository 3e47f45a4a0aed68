"""The job queue on a real Redis: messages reach their handlers, and a handler that raises
has its message sent again (dramatiq itself retries nothing)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from job_helpers import job_settings
from whisperd.jobs import queue as job_queue
from whisperd.jobs.embedded import EmbeddedRedis
from whisperd.jobs.queue import Handlers, JobQueue


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[JobQueue]:
    settings = job_settings(tmp_path)
    embedded = EmbeddedRedis(settings.data_dir)
    try:
        q = job_queue.connect(settings, embedded.start())
        try:
            yield q
        finally:
            q.stop_consuming(10_000)
            q.close()
    finally:
        embedded.stop()


def wait_for(done: threading.Event, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done.wait(0.05):
        assert time.monotonic() < deadline, "timed out"


def test_a_handler_that_raises_gets_its_message_again(queue: JobQueue) -> None:
    calls: list[tuple[str, int]] = []
    handled = threading.Event()

    def run_chunk(job_id: str, index: int) -> None:
        calls.append((job_id, index))
        if len(calls) == 1:
            raise ConnectionError("Redis went away mid-job")
        handled.set()

    def refuse(job_id: str) -> None:
        raise AssertionError(job_id)

    queue.declare(Handlers(run_job=refuse, run_chunk=run_chunk, deliver_callback=refuse))
    queue.consume(job_threads=1, callback_threads=1)
    queue.send_chunk("j", 3)
    wait_for(handled)
    assert calls == [("j", 3), ("j", 3)]
    assert queue.queue_length() == 0
    assert queue.delayed_count() == 0


def test_a_process_without_consumers_only_sends(queue: JobQueue) -> None:
    queue.declare()
    queue.send_job("a")
    queue.send_job("b", delay_ms=60_000)
    assert queue.queue_length() == 1
    assert queue.delayed_count() == 1
