"""The dramatiq actors: transcribe a job, transcribe one chunk of a long job, deliver a callback.

They are declared on brokers when a runtime starts, never at import. A message carries
only the job id (and a chunk's index). Each actor hands its work to a handler (the runner,
the callback sender); a process without consumers declares the actors only to send
messages, with no handler. Chunks go on the jobs queue, so any worker takes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq

from whisperd.jobs.broker import CALLBACKS_QUEUE, JOBS_QUEUE, Broker

TRANSCRIBE_ACTOR = "whisperd_transcribe"
CHUNK_ACTOR = "whisperd_transcribe_chunk"
CALLBACK_ACTOR = "whisperd_callback"

Handler = Callable[[str], None]
ChunkHandler = Callable[[str, int], None]


def _no_handler(*args: object) -> None:
    msg = "This process runs no job consumers; it cannot handle messages"
    raise RuntimeError(msg)


@dataclass(frozen=True, slots=True)
class Actors:
    """The declared actors, and how to send to them."""

    transcribe: Any
    chunk: Any
    callback: Any

    def send_job(self, job_id: str, delay_ms: int | None = None) -> None:
        """Put ``job_id`` on the jobs queue (after ``delay_ms``, on the delay queue)."""
        self.transcribe.send_with_options(args=(job_id,), delay=delay_ms)

    def send_chunk(self, job_id: str, index: int, delay_ms: int | None = None) -> None:
        """Put chunk ``index`` of ``job_id`` on the jobs queue (after ``delay_ms``)."""
        self.chunk.send_with_options(args=(job_id, index), delay=delay_ms)

    def send_callback(self, job_id: str, delay_ms: int | None = None) -> None:
        """Put a delivery of ``job_id``'s callback on the callbacks queue."""
        self.callback.send_with_options(args=(job_id,), delay=delay_ms)


def declare(
    job_broker: Broker,
    callback_broker: Broker,
    *,
    run_job: Handler | None,
    run_chunk: ChunkHandler | None,
    deliver_callback: Handler | None,
) -> Actors:
    """Declare the actors: jobs and chunks on the job broker, callbacks on their own (so each
    gets its own consumer pool)."""
    job_handler = run_job or _no_handler
    chunk_handler = run_chunk or _no_handler
    callback_handler = deliver_callback or _no_handler

    def transcribe(job_id: str) -> None:
        job_handler(job_id)

    def transcribe_chunk(job_id: str, index: int) -> None:
        chunk_handler(job_id, index)

    def callback(job_id: str) -> None:
        callback_handler(job_id)

    return Actors(
        transcribe=_actor(transcribe, job_broker, TRANSCRIBE_ACTOR, JOBS_QUEUE),
        chunk=_actor(transcribe_chunk, job_broker, CHUNK_ACTOR, JOBS_QUEUE),
        callback=_actor(callback, callback_broker, CALLBACK_ACTOR, CALLBACKS_QUEUE),
    )


def _actor(fn: Callable[..., None], broker: Broker, name: str, queue: str) -> Any:
    return dramatiq.Actor(
        fn, broker=broker, actor_name=name, queue_name=queue, priority=0, options={}
    )
