"""Job records in Redis.

Keys (all under ``whisperd:``)::

    job:{id}           hash    the record (see records.Job); expires job_ttl after the end
    job:{id}:audio     string  an uploaded file; deleted when the job ends
    job:{id}:result    string  the transcript in the job's format; expires with the record
    job:{id}:lease     string  the id of the worker running it; a short TTL its owner renews
    job:{id}:chunk:{n} hash    chunk n of a long job (see records.ChunkRecord): its state,
                               offset and length, attempts, worker, and segments once done
    job:{id}:chunk:{n}:audio   string  the chunk's audio as FLAC; deleted once transcribed
    job:{id}:chunk:{n}:lease   string  the worker transcribing the chunk; a short TTL
    index:all          zset    every job, scored by creation time (ms), for listing
    index:{state}      zset    the jobs in one state, same scores
    index:expiry       zset    ended jobs, scored by when they expire; the janitor purges them
    queued_bytes       string  the upload bytes held by jobs not yet ended
    owners             hash    job id -> its owner's key fingerprint (see owners.py), for
                               the purge to find its owner's indexes once the record expired
    owner:{fp}:index:all, owner:{fp}:index:{state}, owner:{fp}:queued_bytes
                               the same, for the jobs of one API key (by its fingerprint)

A new job is created by a Lua script that first checks the caps (jobs queued or running,
upload bytes held, in total and for its key) and writes nothing past one, so concurrent
submissions from any number of processes never go over. A job's upload counts in
``queued_bytes`` (its record's ``queued_bytes`` field says how much) until the job ends.

A state change is one optimistic transaction (WATCH the record, check the table in
states.py, then MULTI: the fields, the indexes and, for a final state, the TTLs, the
deletion of its audio and chunks and the release of its bytes), so two processes racing for
one job cannot both win.

A chunk's changes are Lua scripts (``lua/*.lua``) that check the job's state in the same
step: a chunk is stored only while its job runs and by the worker splitting it, and never
re-created once the job has ended and its chunks were deleted. Finishing a chunk counts it in
the job's ``chunks_done``; the one step that finds every chunk done (the last chunk's, or the
end of the split when the chunks were quicker) answers "merge", so exactly one worker merges.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from importlib import resources
from typing import Any

import redis

from whisperd.errors import (
    InvalidValueError,
    RateLimitError,
    ServiceUnavailableError,
    WhisperdError,
    shown,
)
from whisperd.jobs.records import CallbackState, ChunkRecord, Job
from whisperd.jobs.states import ChunkState, JobState, check_chunk_transition, check_transition
from whisperd.settings import Settings

logger = logging.getLogger(__name__)

PREFIX = "whisperd"
Fields = Mapping[str, str | int | float]
# Retry-After of a submission past a cap: jobs end at no knowable time; a short while.
QUEUE_FULL_RETRY_AFTER = 30


def _script(name: str) -> str:
    """The Lua script ``lua/{name}.lua``: one atomic step on a job's keys (see the file)."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def audio_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:audio"


def result_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:result"


def lease_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:lease"


def chunk_key(job_id: str, index: int) -> str:
    return f"{PREFIX}:job:{job_id}:chunk:{index}"


def chunk_audio_key(job_id: str, index: int) -> str:
    return f"{PREFIX}:job:{job_id}:chunk:{index}:audio"


def chunk_lease_key(job_id: str, index: int) -> str:
    return f"{PREFIX}:job:{job_id}:chunk:{index}:lease"


def chunk_keys(job_id: str, count: int) -> list[str]:
    """Every key of a job's first ``count`` chunks."""
    return [
        key
        for index in range(count)
        for key in (
            chunk_key(job_id, index),
            chunk_audio_key(job_id, index),
            chunk_lease_key(job_id, index),
        )
    ]


def _scope(owner: str | None) -> str:
    return f"{PREFIX}:owner:{owner}" if owner else PREFIX


def _scopes(owner: str) -> tuple[str | None, ...]:
    """Whose indexes and counts a job of ``owner`` is in: everyone's, and its owner's."""
    return (None, owner) if owner else (None,)


def index_key(state: JobState | None, owner: str | None = None) -> str:
    """The index of the jobs in ``state`` (None: all), of one owner's or (None) everyone's."""
    return f"{_scope(owner)}:index:{state or 'all'}"


def queued_bytes_key(owner: str | None = None) -> str:
    """The upload bytes held by one owner's (or everyone's) jobs not yet ended."""
    return f"{_scope(owner)}:queued_bytes"


EXPIRY_KEY = f"{PREFIX}:index:expiry"
OWNERS_KEY = f"{PREFIX}:owners"


def _text(value: object) -> str | None:
    """A Redis reply (bytes, as this client does not decode) as text."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode()
    return str(value)


def _mapping(fields: Fields) -> dict[Any, Any]:
    return dict(fields)


def jobs_unavailable() -> ServiceUnavailableError:
    """The 503 of a job route while the job queue's Redis cannot be reached (not yet, or not
    any more)."""
    return ServiceUnavailableError(
        "The job queue (Redis) cannot be reached; retry shortly. Synchronous transcription "
        "works meanwhile.",
        code="jobs_unavailable",
    )


@contextlib.contextmanager
def redis_errors() -> Iterator[None]:
    """Turn a Redis outage into the API's 503 ``jobs_unavailable``."""
    try:
        yield
    except redis.RedisError as exc:
        logger.warning("Job store unavailable: %s", exc)
        raise jobs_unavailable() from exc


def _release(pipe: Any, job_id: str, owner: str, held: int) -> None:
    """In a transaction: give back the upload bytes a job held (it ended, or is deleted)."""
    pipe.decrby(queued_bytes_key(), held)
    if owner:
        pipe.decrby(queued_bytes_key(owner), held)
    pipe.hdel(job_key(job_id), "queued_bytes")


def error_fields(error: WhisperdError) -> dict[str, str | int]:
    """A record's ``error`` (OpenAI's error object) and ``error_status`` fields."""
    return {"error": json.dumps(error.to_dict()["error"]), "error_status": error.status_code}


class JobStore:
    """Reads and changes job records; every method is one or a few Redis round trips."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.ttl_ms = max(1, int(settings.job_ttl * 1000))
        self.caps = (
            settings.job_max_queued,
            settings.job_queued_bytes_limit,
            settings.job_max_queued_per_key,
            settings.job_queued_bytes_per_key_limit,
        )
        self._create = client.register_script(_script("create"))
        self._hset_if_exists = client.register_script(_script("hset_if_exists"))
        self._hincrby_if_exists = client.register_script(_script("hincrby_if_exists"))
        self._renew_lease = client.register_script(_script("renew_lease"))
        self._release_lease = client.register_script(_script("release_lease"))
        self._add_chunk = client.register_script(_script("add_chunk"))
        self._split_done = client.register_script(_script("split_done"))
        self._start_chunk = client.register_script(_script("start_chunk"))
        self._requeue_chunk = client.register_script(_script("requeue_chunk"))
        self._finish_chunk = client.register_script(_script("finish_chunk"))

    # --- create and read --------------------------------------------------------------
    def create(self, job_id: str, fields: Fields, audio: bytes | None, *, owner: str) -> None:
        """Write a new queued record of ``owner`` (a key's fingerprint, or "") and its audio in
        one step; raises RateLimitError, writing nothing, if that would pass a cap (the
        per-key caps only with an owner)."""
        size = len(audio) if audio is not None else 0
        values: dict[str, str | int | float] = {**fields, "state": str(JobState.QUEUED)}
        values["owner"] = owner
        if size:
            values["queued_bytes"] = size
        keys = [job_key(job_id), audio_key(job_id), OWNERS_KEY]
        for scope in _scopes(owner):
            keys += [index_key(None, scope), index_key(JobState.QUEUED, scope)]
            keys += [index_key(JobState.RUNNING, scope), queued_bytes_key(scope)]
        score = int(float(fields["created_at"]) * 1000)
        args: list[str | int | float | bytes] = [job_id, score, size, *self.caps]
        args += ["1" if audio is not None else "0", audio or b"", owner]
        for name, value in values.items():
            args += [name, value]
        full = _text(self._create(keys=keys, args=args))
        if full != "ok":
            raise self._full(full or "", size)

    def _full(self, cap: str, size: int) -> RateLimitError:
        """The 429 for a submission past ``cap`` (the name the create script answers)."""
        max_jobs, max_bytes, max_key_jobs, max_key_bytes = self.caps
        retry = QUEUE_FULL_RETRY_AFTER
        later = f"retry in {retry} s, once some have ended"
        messages = {
            "jobs": f"The queue holds {max_jobs} jobs not yet ended, its limit "
            f"(WHISPERD_JOB_MAX_QUEUED); {later}.",
            "key_jobs": f"This API key has {max_key_jobs} jobs queued or running, its limit "
            f"(WHISPERD_JOB_MAX_QUEUED_PER_KEY); {later}, or cancel some.",
            "bytes": f"The uploads of the jobs not yet ended leave no room for {size} more "
            f"bytes under the limit of {max_bytes} (WHISPERD_JOB_MAX_QUEUED_BYTES); {later}, "
            "or send a URL instead.",
            "key_bytes": f"This API key's uploads in jobs not yet ended leave no room for {size} "
            f"more bytes under its limit of {max_key_bytes} "
            f"(WHISPERD_JOB_MAX_QUEUED_BYTES_PER_KEY); {later}, or send a URL instead.",
        }
        return RateLimitError(messages[cap], retry_after=retry)

    def delete(self, job_id: str) -> None:
        """Remove a job and everything it holds (when it expired, or its message was not sent)."""
        key = job_key(job_id)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    stored, held = pipe.hmget(key, "chunks_stored", "queued_bytes")
                    # from the owners hash (a job's owner never changes), not the record: the
                    # record of an ended job may have expired already
                    owner = _text(pipe.hget(OWNERS_KEY, job_id)) or ""
                    pipe.multi()
                    pipe.delete(key, audio_key(job_id), result_key(job_id), lease_key(job_id))
                    if stored:
                        pipe.delete(*chunk_keys(job_id, int(stored)))
                    for state in (None, *JobState):
                        for scope in _scopes(owner):
                            pipe.zrem(index_key(state, scope), job_id)
                    if held:
                        _release(pipe, job_id, owner, int(held))
                    pipe.zrem(EXPIRY_KEY, job_id)
                    pipe.hdel(OWNERS_KEY, job_id)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def get(self, job_id: str, *, with_result: bool = False) -> Job | None:
        """The record, or None if there is none (never created, or expired)."""
        raw: dict[bytes, bytes] = self.client.hgetall(job_key(job_id))  # type: ignore[assignment]
        if not raw or b"state" not in raw:
            return None
        job = Job.from_hash(raw)
        if with_result and job.state is JobState.SUCCEEDED:
            result = _text(self.client.get(result_key(job_id)))
            if result is not None:
                job = replace(job, result=result)
        return job

    def audio(self, job_id: str) -> bytes | None:
        value: bytes | None = self.client.get(audio_key(job_id))  # type: ignore[assignment]
        return value

    # --- change -----------------------------------------------------------------------
    def transition(
        self,
        job_id: str,
        old: JobState,
        new: JobState,
        fields: Fields | None = None,
        *,
        attempts_delta: int = 0,
        lease: tuple[str, int] | None = None,
        result: str | None = None,
    ) -> Job | None:
        """Move a job from ``old`` to ``new`` and set ``fields``; None if it is not in ``old``.

        Raises InvalidTransitionError if the table does not allow ``old -> new``. A final
        state starts the TTL, deletes the audio and the lease, and marks a callback pending.
        ``lease`` is (worker id, ms) to take the job's lease in the same transaction.
        """
        check_transition(old, new)
        key = job_key(job_id)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    state, created, callback, stored, owner, held = pipe.hmget(
                        key,
                        "state",
                        "created_at",
                        "callback_url",
                        "chunks_stored",
                        "owner",
                        "queued_bytes",
                    )
                    if _text(state) != old:
                        pipe.unwatch()
                        return None
                    now = time.time()
                    values: dict[str, str | int | float] = {
                        **(fields or {}),
                        "state": str(new),
                        "updated_at": now,
                    }
                    if new.final:
                        values.setdefault("finished_at", now)
                        if callback:
                            values["callback_state"] = str(CallbackState.PENDING)
                    score = int(float(_text(created) or now) * 1000)
                    pipe.multi()
                    pipe.hset(key, mapping=_mapping(values))
                    if attempts_delta:
                        pipe.hincrby(key, "attempts", attempts_delta)
                    for scope in _scopes(_text(owner) or ""):
                        pipe.zrem(index_key(old, scope), job_id)
                        pipe.zadd(index_key(new, scope), {job_id: score})
                    if lease is not None:
                        pipe.set(lease_key(job_id), lease[0], px=lease[1])
                    if result is not None:
                        pipe.set(result_key(job_id), result, px=self.ttl_ms)
                    if new.final:
                        pipe.pexpire(key, self.ttl_ms)
                        pipe.delete(audio_key(job_id), lease_key(job_id))
                        if stored:
                            pipe.delete(*chunk_keys(job_id, int(stored)))
                        if held:
                            _release(pipe, job_id, _text(owner) or "", int(held))
                        pipe.zadd(EXPIRY_KEY, {job_id: int(now * 1000) + self.ttl_ms})
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        return self.get(job_id)

    def update(self, job_id: str, fields: Fields) -> bool:
        """Set fields of an existing record; False if it is gone."""
        args: list[str | int | float] = []
        for name, value in fields.items():
            args += [name, value]
        return bool(self._hset_if_exists(keys=[job_key(job_id)], args=args))

    def count_callback_attempt(self, job_id: str) -> int:
        """Add one to the callback's attempts; the new count (-1 if the record is gone)."""
        return int(self._hincrby_if_exists(keys=[job_key(job_id)], args=["callback_attempts", 1]))

    def request_cancel(self, job_id: str) -> Job | None:
        """Flag a running job for cancellation; None unless it is running."""
        key = job_key(job_id)
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    if _text(pipe.hget(key, "state")) != JobState.RUNNING:
                        pipe.unwatch()
                        return None
                    pipe.multi()
                    pipe.hset(key, mapping={"cancel_requested": "1", "updated_at": time.time()})
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        return self.get(job_id)

    def cancel_requested(self, job_ids: list[str]) -> set[str]:
        """Which of these jobs are flagged for cancellation, or have ended, or are gone."""
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(job_key(job_id), "state", "cancel_requested")
            rows = pipe.execute()
        return {
            job_id
            for job_id, (state, flag) in zip(job_ids, rows, strict=True)
            if state is None or flag == b"1" or JobState(bytes(state).decode()).final
        }

    # --- leases (a job's, or with ``chunk``, one of its chunks') ------------------------
    @staticmethod
    def _lease(job_id: str, chunk: int | None) -> str:
        return lease_key(job_id) if chunk is None else chunk_lease_key(job_id, chunk)

    def lease_owner(self, job_id: str, chunk: int | None = None) -> str | None:
        return _text(self.client.get(self._lease(job_id, chunk)))

    def renew_lease(self, job_id: str, worker: str, ttl_ms: int, chunk: int | None = None) -> bool:
        """Renew ``worker``'s lease; False if the job (or chunk) no longer runs there."""
        record = job_key(job_id) if chunk is None else chunk_key(job_id, chunk)
        keys = [record, self._lease(job_id, chunk)]
        return bool(self._renew_lease(keys=keys, args=[worker, ttl_ms]))

    def release_lease(self, job_id: str, worker: str, chunk: int | None = None) -> None:
        self._release_lease(keys=[self._lease(job_id, chunk)], args=[worker])

    # --- chunks of a long job ---------------------------------------------------------
    def add_chunk(
        self,
        job_id: str,
        index: int,
        *,
        worker: str,
        offset: float,
        seconds: float,
        split_at: int,
        audio: bytes,
    ) -> bool:
        """Store chunk ``index`` (queued) and its audio; False unless the job runs, split by
        ``worker``, and ``index`` is the next chunk (the job ended, or another worker splits it).
        """
        keys = [job_key(job_id), lease_key(job_id)]
        keys += [chunk_key(job_id, index), chunk_audio_key(job_id, index)]
        args: list[str | int | float | bytes] = [worker, index, repr(offset), repr(seconds)]
        args += [split_at, time.time(), audio]
        return bool(self._add_chunk(keys=keys, args=args))

    def split_done(self, job_id: str, *, worker: str, chunks: int, duration: float) -> bool | None:
        """Record the split's end and delete the source audio; True if every chunk is done
        already (the caller merges), None if the job no longer runs split by ``worker``."""
        keys = [job_key(job_id), lease_key(job_id), audio_key(job_id)]
        done = int(self._split_done(keys=keys, args=[worker, chunks, duration, time.time()]))
        return None if done < 0 else done == 1

    def get_chunk(self, job_id: str, index: int) -> ChunkRecord | None:
        raw: dict[bytes, bytes] = self.client.hgetall(chunk_key(job_id, index))  # type: ignore[assignment]
        if not raw or b"state" not in raw:
            return None
        return ChunkRecord.from_hash(job_id, index, raw)

    def chunks(self, job_id: str, count: int) -> list[ChunkRecord | None]:
        """The records of chunks 0 to ``count - 1`` (None for one that is not there)."""
        with self.client.pipeline(transaction=False) as pipe:
            for index in range(count):
                pipe.hgetall(chunk_key(job_id, index))
            raws: list[dict[bytes, bytes]] = pipe.execute()
        return [
            ChunkRecord.from_hash(job_id, index, raw) if raw and b"state" in raw else None
            for index, raw in enumerate(raws)
        ]

    def chunk_audio(self, job_id: str, index: int) -> bytes | None:
        value: bytes | None = self.client.get(chunk_audio_key(job_id, index))  # type: ignore[assignment]
        return value

    def start_chunk(self, job_id: str, index: int, worker: str, lease_ms: int) -> bool:
        """Queued -> running, with its lease and one more attempt; False if the job does not
        run or the chunk is not queued."""
        check_chunk_transition(ChunkState.QUEUED, ChunkState.RUNNING)
        keys = [job_key(job_id), chunk_key(job_id, index), chunk_lease_key(job_id, index)]
        return bool(self._start_chunk(keys=keys, args=[worker, lease_ms, time.time()]))

    def requeue_chunk(
        self,
        job_id: str,
        index: int,
        *,
        worker: str | None,
        error: WhisperdError | None = None,
        attempts_delta: int = 0,
    ) -> bool:
        """Running -> queued: by its ``worker``, or (None) a dead worker's, once its lease
        lapsed; False if the chunk is not in that state (or its worker is alive)."""
        check_chunk_transition(ChunkState.RUNNING, ChunkState.QUEUED)
        keys = [job_key(job_id), chunk_key(job_id, index), chunk_lease_key(job_id, index)]
        fields: dict[str, str | int] = {"error": "", "error_status": ""}
        if error is not None:
            fields = error_fields(error)
        args: list[str | int] = [
            worker or "",
            attempts_delta,
            fields["error"],
            fields["error_status"],
        ]
        return bool(self._requeue_chunk(keys=keys, args=args))

    def finish_chunk(
        self,
        job_id: str,
        index: int,
        *,
        worker: str,
        segments: str,
        seconds: float,
        language: str,
        language_probability: float,
    ) -> bool | None:
        """Running -> done with its segments (JSON), counted in the job's progress; True if it
        was the last chunk (the caller merges), None if the result was not wanted (the job
        ended, or the chunk is another worker's now)."""
        check_chunk_transition(ChunkState.RUNNING, ChunkState.DONE)
        keys = [job_key(job_id), chunk_key(job_id, index)]
        keys += [chunk_audio_key(job_id, index), chunk_lease_key(job_id, index)]
        args: list[str | float] = [worker, segments, repr(seconds), language]
        args += [repr(language_probability), time.time()]
        done = int(self._finish_chunk(keys=keys, args=args))
        return None if done < 0 else done == 1

    # --- listing and housekeeping -----------------------------------------------------
    def list(
        self, state: JobState | None, *, owner: str | None, limit: int, after: str | None
    ) -> tuple[list[Job], bool]:
        """Jobs newest first (``state`` only, if given; ``owner``'s only, unless None) after
        the job ``after``; and has_more."""
        key = index_key(state, owner)
        rows: list[tuple[bytes, float]]
        if after is None:
            rows = self.client.zrevrange(key, 0, limit, withscores=True)  # type: ignore[assignment]
        else:
            found = self.client.zscore(index_key(None, owner), after)
            if found is None:
                raise InvalidValueError(
                    f"Unknown cursor after={shown(after)}: that job does not exist (or expired); "
                    "list again from the start.",
                    param="after",
                )
            score = float(found)
            ties = int(self.client.zcount(key, score, score))
            fetched: list[tuple[bytes, float]] = self.client.zrevrangebyscore(  # type: ignore[assignment]
                key, score, "-inf", start=0, num=limit + 1 + ties, withscores=True
            )
            # Equal scores come in reverse byte order, so the ones after the cursor sort below it.
            rows = [(m, s) for m, s in fetched if s < score or m.decode() < after]
        ids = [member.decode() for member, _ in rows]
        has_more = len(ids) > limit
        ids = ids[:limit]
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(job_key(job_id))
            raws: list[dict[bytes, bytes]] = pipe.execute()
        jobs = [Job.from_hash(raw) for raw in raws if raw and b"state" in raw]
        return jobs, has_more

    def counts(self, owner: str | None = None) -> dict[str, int]:
        """How many jobs are in each state (``owner``'s only, unless None)."""
        with self.client.pipeline(transaction=False) as pipe:
            for state in JobState:
                pipe.zcard(index_key(state, owner))
            values = pipe.execute()
        return {str(state): int(n) for state, n in zip(JobState, values, strict=True)}

    def purge_expired(self, now: float | None = None, batch: int = 500) -> int:
        """Delete ended jobs past their TTL (keys and index entries); how many were purged."""
        now_ms = int((time.time() if now is None else now) * 1000)
        members: list[bytes] = self.client.zrangebyscore(  # type: ignore[assignment]
            EXPIRY_KEY, "-inf", now_ms, start=0, num=batch
        )
        ids = [m.decode() for m in members]
        for job_id in ids:
            self.delete(job_id)
        if ids:
            logger.info("Purged %d expired job(s)", len(ids))
        return len(ids)
