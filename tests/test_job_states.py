"""Every row of the worker's delivery tables (whisperd.jobs.worker.decisions), with no Redis,
no queue and no model: what a worker does with a job's or a chunk's message."""

from __future__ import annotations

from dataclasses import replace

import pytest

from whisperd.jobs.records import ChunkRecord, Job
from whisperd.jobs.states import ChunkState, JobState
from whisperd.jobs.worker.decisions import Action, chunk_action, job_action
from whisperd.spec import Spec

MAX = 3


def job(state: JobState = JobState.QUEUED, **fields: object) -> Job:
    return replace(
        Job(id="j", state=state, spec=Spec(), source="upload", created_at=0.0),
        **fields,  # type: ignore[arg-type]
    )


def chunk(state: ChunkState = ChunkState.QUEUED, attempts: int = 1) -> ChunkRecord:
    return ChunkRecord(
        job_id="j", index=0, state=state, offset=0.0, seconds=30.0, attempts=attempts
    )


SPLIT = {"chunks_stored": 2, "chunks": 2}


def decide(
    j: Job | None, *, lease: bool = False, draining: bool = False, max_attempts: int = MAX
) -> Action:
    return job_action(j, lease_live=lease, draining=draining, max_attempts=max_attempts)


@pytest.mark.parametrize(
    ("record", "facts", "action"),
    [
        (None, {}, Action.GONE),
        (job(JobState.SUCCEEDED), {}, Action.SEND_CALLBACK),
        (job(JobState.FAILED), {"draining": True}, Action.SEND_CALLBACK),
        (job(JobState.CANCELLED), {"lease": True}, Action.SEND_CALLBACK),
        (job(JobState.RUNNING, **SPLIT), {"lease": True}, Action.MERGE),
        (job(JobState.RUNNING, **SPLIT), {"draining": True}, Action.MERGE),
        (job(JobState.RUNNING, attempts=1), {"lease": True}, Action.LOOK_LATER),
        (job(JobState.RUNNING, attempts=1), {"lease": True, "draining": True}, Action.LOOK_LATER),
        (job(JobState.RUNNING, attempts=1), {}, Action.RETRY_LOST),
        (job(JobState.RUNNING, attempts=MAX - 1), {"draining": True}, Action.RETRY_LOST),
        (job(JobState.RUNNING, attempts=MAX), {}, Action.FAIL_LOST),
        (job(JobState.RUNNING, attempts=MAX + 1), {}, Action.FAIL_LOST),
        # a fanned-out job whose split has not ended is recovered like any running job
        (job(JobState.RUNNING, chunks_stored=1, attempts=1), {}, Action.RETRY_LOST),
        (job(), {"draining": True}, Action.HAND_BACK),
        (job(cancel_requested=True), {"draining": True}, Action.HAND_BACK),
        (job(cancel_requested=True), {}, Action.CANCEL),
        (job(), {}, Action.START),
        (job(attempts=MAX), {}, Action.START),  # a retry after a transient failure
        (job(chunks_stored=1), {}, Action.START),  # a split that resumes
    ],
)
def test_job_delivery(record: Job | None, facts: dict[str, bool], action: Action) -> None:
    assert decide(record, **facts) is action


def decide_chunk(
    j: Job | None,
    c: ChunkRecord | None,
    *,
    lease: bool = False,
    draining: bool = False,
) -> Action:
    return chunk_action(j, c, lease_live=lease, draining=draining, max_attempts=MAX)


RUNNING = job(JobState.RUNNING, chunks_stored=2)


@pytest.mark.parametrize(
    ("parent", "record", "facts", "action"),
    [
        (None, chunk(), {}, Action.GONE),
        (job(JobState.SUCCEEDED), chunk(), {}, Action.GONE),
        (job(JobState.CANCELLED), chunk(ChunkState.RUNNING), {"lease": True}, Action.GONE),
        (replace(RUNNING, cancel_requested=True), chunk(), {}, Action.CANCEL),
        (replace(RUNNING, cancel_requested=True), None, {"draining": True}, Action.CANCEL),
        (RUNNING, None, {}, Action.DROP),
        (RUNNING, chunk(ChunkState.DONE), {}, Action.MERGE),
        (RUNNING, chunk(ChunkState.DONE), {"draining": True}, Action.MERGE),
        (RUNNING, chunk(), {"draining": True}, Action.HAND_BACK),
        (job(chunks_stored=1), chunk(), {"draining": True}, Action.HAND_BACK),
        (job(chunks_stored=1), chunk(), {}, Action.LOOK_LATER),  # its split waits to resume
        (job(chunks_stored=1), chunk(ChunkState.RUNNING), {}, Action.LOOK_LATER),
        (RUNNING, chunk(ChunkState.RUNNING), {"lease": True}, Action.LOOK_LATER),
        (RUNNING, chunk(ChunkState.RUNNING, attempts=1), {}, Action.RETRY_LOST),
        (RUNNING, chunk(ChunkState.RUNNING, attempts=MAX), {}, Action.FAIL_LOST),
        (RUNNING, chunk(), {}, Action.START),
        (RUNNING, chunk(attempts=MAX), {}, Action.START),
    ],
)
def test_chunk_delivery(
    parent: Job | None, record: ChunkRecord | None, facts: dict[str, bool], action: Action
) -> None:
    assert decide_chunk(parent, record, **facts) is action


def test_every_action_is_reached() -> None:
    """The tables above cover every action the worker can take."""
    job_rows = test_job_delivery.pytestmark[0].args[1]  # type: ignore[attr-defined]
    chunk_rows = test_chunk_delivery.pytestmark[0].args[1]  # type: ignore[attr-defined]
    covered = {row[-1] for row in job_rows} | {row[-1] for row in chunk_rows}
    assert covered == set(Action)
