"""What a worker does with one delivery of a job's or a chunk's message, as pure functions.

The runner reads the records (and, for running work, whether its lease is live) and asks
here what to do; it then does it. Nothing here touches Redis, the queue or the engine, so
every row of the two tables is tested without them (tests/test_job_states.py).

A job's message (:func:`job_action`), first matching row wins:

========================================  ==============================================
the job                                   action
========================================  ==============================================
no record (expired or deleted)            ``GONE``: nothing to do
final                                     ``SEND_CALLBACK``: its callback, if still due
running, every chunk stored               ``MERGE``: its chunks finish it (merge if done)
running, live lease                       ``LOOK_LATER``: its worker is on it
running, no lease, attempts left          ``RETRY_LOST``: back to queued, run it again
running, no lease, attempts spent         ``FAIL_LOST``: fails (its worker died each time)
queued, this worker draining              ``HAND_BACK``: back on the queue for another
queued, cancel requested                  ``CANCEL``
queued                                    ``START``
========================================  ==============================================

A chunk's message (:func:`chunk_action`):

========================================  ==============================================
the job and the chunk                     action
========================================  ==============================================
no job record, or the job is final        ``GONE``
cancel requested on the job               ``CANCEL`` (the job)
no chunk record                           ``DROP``: nothing stored to run
chunk done                                ``MERGE``: a duplicate, or the merger died
this worker draining                      ``HAND_BACK``
job queued (its split waits to resume)    ``LOOK_LATER``
chunk running, live lease                 ``LOOK_LATER``
chunk running, no lease, attempts left    ``RETRY_LOST``
chunk running, no lease, attempts spent   ``FAIL_LOST``: fails the job
chunk queued                              ``START``
========================================  ==============================================
"""

from __future__ import annotations

from enum import StrEnum

from whisperd.jobs.records import ChunkRecord, Job
from whisperd.jobs.states import ChunkState, JobState


class Action(StrEnum):
    GONE = "gone"
    SEND_CALLBACK = "send_callback"
    MERGE = "merge"
    LOOK_LATER = "look_later"
    RETRY_LOST = "retry_lost"
    FAIL_LOST = "fail_lost"
    HAND_BACK = "hand_back"
    CANCEL = "cancel"
    DROP = "drop"
    START = "start"


def _lost(attempts: int, max_attempts: int) -> Action:
    return Action.FAIL_LOST if attempts >= max_attempts else Action.RETRY_LOST


def job_action(job: Job | None, *, lease_live: bool, draining: bool, max_attempts: int) -> Action:
    """What to do with a delivery of a job's message (``lease_live``: whether a worker's
    lease on the job is live; read only for a running job)."""
    if job is None:
        return Action.GONE
    if job.state.final:
        return Action.SEND_CALLBACK
    if job.state is JobState.RUNNING:
        if job.split_done:
            return Action.MERGE
        if lease_live:
            return Action.LOOK_LATER
        return _lost(job.attempts, max_attempts)
    if draining:
        return Action.HAND_BACK
    if job.cancel_requested:
        return Action.CANCEL
    return Action.START


def chunk_action(
    job: Job | None,
    record: ChunkRecord | None,
    *,
    lease_live: bool,
    draining: bool,
    max_attempts: int,
) -> Action:
    """What to do with a delivery of a chunk's message (``lease_live``: whether a worker's
    lease on the chunk is live; read only for a running chunk)."""
    if job is None or job.state.final:
        return Action.GONE
    if job.cancel_requested:
        return Action.CANCEL
    if record is None:
        return Action.DROP
    if record.state is ChunkState.DONE:
        return Action.MERGE
    if draining:
        return Action.HAND_BACK
    if job.state is JobState.QUEUED:
        return Action.LOOK_LATER
    if record.state is ChunkState.RUNNING:
        return Action.LOOK_LATER if lease_live else _lost(record.attempts, max_attempts)
    return Action.START
