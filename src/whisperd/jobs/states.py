"""Job states and the transitions between them.

::

    queued ──> running ──> succeeded
      │  ^        │  └───> failed
      │  └────────┤        (running -> queued: a retry, a drain, or a dead worker's job)
      └───────────┴──────> cancelled

A job is created ``queued``. A worker takes it (``running``); it ends ``succeeded``,
``failed`` or ``cancelled``, or goes back to ``queued`` to be retried. A queued job can be
cancelled before it ever runs. The three final states have no way out: a transition the
table below does not list raises :class:`~whisperd.errors.InvalidTransitionError`.

A long job is split into chunks (see ``worker.runner``), each with its own state while its
job runs::

    queued ──> running ──> done
       ^          │
       └──────────┘   (a retry, a drain, or a dead worker's chunk)

A chunk has no final state of its own besides ``done``: a chunk that fails for good fails its
job, and a job that ends (whatever the outcome) deletes its chunks.
"""

from __future__ import annotations

from enum import StrEnum

from whisperd.errors import InvalidTransitionError


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """Whether the job has ended (its record now expires after the TTL)."""
        return not TRANSITIONS[self]


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
"""For each state, the states a job may move to from it."""


class ChunkState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


CHUNK_TRANSITIONS: dict[ChunkState, frozenset[ChunkState]] = {
    ChunkState.QUEUED: frozenset({ChunkState.RUNNING}),
    ChunkState.RUNNING: frozenset({ChunkState.DONE, ChunkState.QUEUED}),
    ChunkState.DONE: frozenset(),
}
"""For each chunk state, the states a chunk may move to from it."""


def check_transition(old: JobState, new: JobState) -> None:
    """Raise :class:`InvalidTransitionError` unless ``old -> new`` is in the table."""
    if new not in TRANSITIONS[old]:
        allowed = ", ".join(sorted(TRANSITIONS[old])) or "nothing (it is final)"
        raise InvalidTransitionError(
            f"A job cannot go from {old} to {new}; from {old} it may go to {allowed}."
        )


def check_chunk_transition(old: ChunkState, new: ChunkState) -> None:
    """Raise :class:`InvalidTransitionError` unless ``old -> new`` is in the chunk table."""
    if new not in CHUNK_TRANSITIONS[old]:
        allowed = ", ".join(sorted(CHUNK_TRANSITIONS[old])) or "nothing (it is done)"
        raise InvalidTransitionError(
            f"A chunk cannot go from {old} to {new}; from {old} it may go to {allowed}."
        )
