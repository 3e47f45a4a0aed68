"""Running jobs: the bodies of the transcription actors (a job's, and a chunk's).

A message carries only the job id (a chunk's, the id and its index); the records in Redis
say what to do, which makes a message safe to deliver twice. What a delivery means is
decided by :mod:`whisperd.jobs.worker.decisions` (both tables in full, tested row by row);
the runner reads the records and does it. On each delivery of a job:

- no record (expired), or a final state: nothing to do (a callback still pending is sent);
- ``running`` with a live lease held by another worker: someone is on it; look again later;
- ``running`` with every chunk stored: its chunks finish it (merge, if they all are done);
- ``running`` with no live lease: the worker that had it died; that was an attempt, and the
  job goes back to ``queued`` (or fails, once the attempts are spent);
- ``queued``: cancelled if asked to, else ``running``: fetch or load the audio, then

  - audio that declares itself no longer than ``job_chunk_seconds`` (give or take the
    search for a pause) is transcribed here in one go, decoded piece by piece through the
    engine's fair scheduler, and the result stored;
  - longer audio (or audio of unknown length) fans out: this worker streams it through
    :func:`whisperd.chunking.split_pieces`, cut at pauses into chunks of about
    ``job_chunk_seconds``, and stores each chunk's audio (FLAC) with a chunk record and
    sends a chunk message as it goes, so its memory holds a chunk, never the file. A split
    cut short (the worker died or stopped) resumes where the last stored chunk ends.

On each delivery of a chunk: nothing if the job ended or the chunk is done (and the merge if
every chunk is done but the job is not: its merger died); back later if another worker's
lease on it is live or the job is waiting to resume its split; a dead worker's chunk is an
attempt and goes back to ``queued``; a queued chunk runs: transcribed with its offset (times
come out absolute), prompted with nothing from the chunk before (chunks run in parallel).
Finishing a chunk counts it (and its seconds) in the job's progress; the one worker that
finishes the last chunk, or ends the split after all chunks finished, merges them in order
with segment ids that run on, renders the job's format and ends the job.

Failures: a transient one (fetch 5xx or timeout, out of memory, engine unavailable, an
unexpected error) is retried with exponential backoff, up to ``job_max_retries`` retries: the
job (its split) or the chunk alone, sent again as a delayed message; a permanent one
(undecodable audio, a 4xx on fetch, a bad option, the time limit) fails the job at once with
its error. A cancel stops the split and every chunk at its next window; the job's end
deletes what is left of its chunks.
"""

from __future__ import annotations

import logging
import threading
import time

from whisperd.errors import (
    DeadlineExceededError,
    WhisperdError,
    WorkCancelledError,
    WorkerLostError,
)
from whisperd.jobs import chunks as chunk_audio
from whisperd.jobs.callbacks import CallbackSender
from whisperd.jobs.queue import backoff_seconds
from whisperd.jobs.records import ChunkRecord, Job, segments_to_json
from whisperd.jobs.states import ChunkState, JobState
from whisperd.jobs.store import error_fields
from whisperd.jobs.worker.decisions import Action, chunk_action, job_action
from whisperd.jobs.worker.work import ActiveJob, Superseded, Work, WorkerStopping, job_result
from whisperd.services import Lifecycle

logger = logging.getLogger(__name__)

Key = tuple[str, int | None]
"""What runs: a job (its one-go transcription or its split), or one of its chunks."""


def is_transient(exc: BaseException) -> bool:
    """Whether a failed attempt is worth retrying."""
    if isinstance(exc, DeadlineExceededError):
        return False  # the job's time limit: another try would take as long
    if isinstance(exc, WhisperdError):
        return exc.transient
    return True  # out of memory, CUDA errors, bugs: retry a bounded number of times


def _cancelled() -> WorkCancelledError:
    return WorkCancelledError("The job was cancelled.")


def _worker_lost(job: Job) -> WorkerLostError:
    return WorkerLostError(
        f"The worker running the job ({job.worker}) stopped before it finished "
        "(killed, crashed or out of memory)."
    )


def _chunk_worker_lost(record: ChunkRecord) -> WorkerLostError:
    return WorkerLostError(
        f"The worker transcribing chunk {record.index} of the job ({record.worker}) stopped "
        "before it finished (killed, crashed or out of memory)."
    )


def _as_error(exc: Exception, what: str) -> WhisperdError:
    if isinstance(exc, WhisperdError):
        return exc
    logger.exception("%s failed unexpectedly", what)
    kind = "out of memory" if isinstance(exc, MemoryError) else type(exc).__name__
    return WhisperdError(f"The transcription failed on the worker ({kind}); see its log.")


class JobRunner:
    """Runs the jobs and chunks this process takes, and tracks them for cancels, leases and
    drains."""

    def __init__(self, work: Work, *, lifecycle: Lifecycle, callbacks: CallbackSender) -> None:
        settings = self.settings = work.settings
        self.store = work.store
        self.worker_id = work.worker_id
        self.queue = work.queue
        self.work = work
        self.max_attempts = settings.job_max_retries + 1
        # The lease lapses a little before dramatiq's heartbeat timeout, so the job's owner
        # is known to be gone when its message comes back.
        self.lease_ms = max(1, int(settings.job_heartbeat_timeout * 1000 * 2 / 3))
        self.callbacks = callbacks
        self._active: dict[Key, ActiveJob] = {}
        self._lock = threading.Lock()
        self._lifecycle = lifecycle
        self._stopping = False

    @property
    def draining(self) -> bool:
        """Whether this process takes no more jobs (it drains, or stops): a message that
        arrives anyway goes back."""
        return self._stopping or self._lifecycle.draining

    @property
    def running(self) -> int:
        """Jobs and chunks running here."""
        return len(self._active)

    # --- called by the service --------------------------------------------------------
    def tick(self) -> None:
        """Renew this worker's leases and stop the work of jobs cancelled or ended."""
        with self._lock:
            active = dict(self._active)
        if not active:
            return
        for job_id, chunk in active:
            if not self.store.renew_lease(job_id, self.worker_id, self.lease_ms, chunk):
                what = "it" if chunk is None else f"chunk {chunk}"
                logger.warning("Job %s: %s ended, or another worker runs it now", job_id, what)
        stopped = self.store.cancel_requested(sorted({job_id for job_id, _ in active}))
        for (job_id, _), work in active.items():
            if job_id in stopped:
                work.stop(_cancelled())

    def cancel(self, job_id: str) -> None:
        """Stop ``job_id``'s work here now (the janitor would within a poll interval)."""
        with self._lock:
            active = [work for (owner, _), work in self._active.items() if owner == job_id]
        for work in active:
            work.stop(_cancelled())

    def stop_all(self) -> None:
        """Shutting down: all work stops at its next window and goes back to the queue."""
        self._stopping = True
        with self._lock:
            active = list(self._active.values())
        for work in active:
            work.stop(
                WorkerStopping("The worker is shutting down; the job goes back to the queue.")
            )

    def _track(self, key: Key) -> ActiveJob:
        work = ActiveJob()
        with self._lock:
            self._active[key] = work
        if self.draining:
            work.stop(WorkerStopping("The worker is shutting down."))
        return work

    def _untrack(self, key: Key) -> None:
        with self._lock:
            self._active.pop(key, None)
        self.store.release_lease(key[0], self.worker_id, key[1])

    # --- a job's message --------------------------------------------------------------
    def run(self, job_id: str) -> None:
        """Handle one delivery of ``job_id``'s message (idempotent)."""
        for _ in range(3):  # a lost race re-reads the record
            job = self.store.get(job_id)
            live = job is not None and job.state is JobState.RUNNING and not job.split_done
            action = job_action(
                job,
                lease_live=live and self.store.lease_owner(job_id) is not None,
                draining=self.draining,
                max_attempts=self.max_attempts,
            )
            if action is Action.GONE:
                logger.info("Job %s is gone (expired or deleted); nothing to do", job_id)
                return
            assert job is not None
            if action is Action.SEND_CALLBACK:
                self.callbacks.send_if_due(job)  # one the previous delivery did not send yet
                return
            if action is Action.MERGE:
                # Its chunks finish it; a merger that died left it running with all of them done.
                self._merge_if_done(job)
                return
            if action is Action.LOOK_LATER:
                # Its worker is alive (or this process already runs it): look again later.
                self.queue.send_job(job_id, self.lease_ms)
                return
            if action is Action.FAIL_LOST:
                logger.warning("Job %s: its worker died in all %d attempts", job_id, job.attempts)
                self._end_job(job_id, JobState.FAILED, _worker_lost(job))
                return
            if action is Action.RETRY_LOST:
                logger.warning("Job %s: its worker %s died; running it again", job_id, job.worker)
                self.store.transition(
                    job_id, JobState.RUNNING, JobState.QUEUED, error_fields(_worker_lost(job))
                )
                continue
            if action is Action.HAND_BACK:
                self.queue.send_job(job_id)  # for another worker
                return
            if action is Action.CANCEL:
                if self._end_job(job_id, JobState.CANCELLED, _cancelled()):
                    return
                continue
            started = self.store.transition(
                job_id,
                JobState.QUEUED,
                JobState.RUNNING,
                {"started_at": time.time(), "finished_at": "", "worker": self.worker_id},
                attempts_delta=1,
                lease=(self.worker_id, self.lease_ms),
            )
            if started is not None:
                self._run_attempt(started)
                return
        logger.warning("Job %s changed state under us repeatedly; leaving it", job_id)

    def _run_attempt(self, job: Job) -> None:
        key: Key = (job.id, None)
        active = self._track(key)
        logger.info("Job %s: attempt %d of %d", job.id, job.attempts, self.max_attempts)
        merge = False
        try:
            rendered, merge = self._attempt(job, active)
        except WorkerStopping:
            # Not the job's fault: this try does not count.
            self.store.transition(job.id, JobState.RUNNING, JobState.QUEUED, attempts_delta=-1)
            self.queue.send_job(job.id, None)
            logger.info("Job %s: back on the queue (worker stopping)", job.id)
        except Superseded as exc:
            logger.info("Job %s: stopped: %s", job.id, exc.message)
        except WorkCancelledError as exc:
            self._end_job(job.id, JobState.CANCELLED, exc)
        except Exception as exc:
            self._failed(job, exc)
        else:
            if rendered is not None:
                body, media_type = rendered
                fields = {"error": "", "error_status": "", "media_type": media_type}
                done = self.store.transition(
                    job.id,
                    JobState.RUNNING,
                    JobState.SUCCEEDED,
                    {**fields, "chunks_done": 1},
                    result=body,
                )
                if done is not None:
                    self.callbacks.send_if_due(done)
                    logger.info("Job %s succeeded in %.2f s", job.id, done.run_seconds)
        finally:
            self._untrack(key)
        if merge:
            self._merge(job.id)

    def _attempt(self, job: Job, active: ActiveJob) -> tuple[tuple[str, str] | None, bool]:
        """One try: (the rendered result, False) done in one go, or (None, whether to merge
        now) once the job fanned out into chunks."""
        if job.split_done:
            return None, self._all_done(job)
        active.check()
        source = self.work.open_audio(job, active)
        try:
            active.check()
            estimate = None if job.fanned_out else self.work.probe(source)
            if estimate is not None and self.work.fits_in_one_go(job, estimate):
                return self.work.transcribe(job, active, source, estimate), False
            return None, self.work.split(job, active, source, estimate)
        finally:
            source.close()

    def _failed(self, job: Job, exc: Exception) -> None:
        error = _as_error(exc, f"Job {job.id}: attempt {job.attempts}")
        logger.info("Job %s: attempt %d failed: %s", job.id, job.attempts, error.message)
        if is_transient(exc) and job.attempts < self.max_attempts:
            delay = backoff_seconds(self.settings.job_retry_backoff, job.attempts)
            back = self.store.transition(
                job.id, JobState.RUNNING, JobState.QUEUED, error_fields(error)
            )
            if back is not None:
                self.queue.send_job(job.id, int(delay * 1000))
                logger.info("Job %s: retrying in %.1f s", job.id, delay)
            return
        self._end_job(job.id, JobState.FAILED, error)

    def _end_job(self, job_id: str, state: JobState, error: WhisperdError) -> bool:
        """End a job that is not over yet with ``error``; whether it has ended (by us or not).

        A job waiting to resume its split (``queued``) can be cancelled but not failed: a chunk
        that fails for good then waits for the job to run again.
        """
        fields = error_fields(error)
        done = self.store.transition(job_id, JobState.RUNNING, state, fields)
        if done is None and state is JobState.CANCELLED:
            done = self.store.transition(job_id, JobState.QUEUED, state, fields)
        if done is not None:
            self.callbacks.send_if_due(done)
            logger.info("Job %s %s: %s", job_id, state, error.message)
            return True
        job = self.store.get(job_id)
        return job is None or job.state.final

    # --- a chunk's message ------------------------------------------------------------
    def run_chunk(self, job_id: str, index: int) -> None:
        """Handle one delivery of chunk ``index`` of ``job_id`` (idempotent)."""
        for _ in range(3):  # a lost race re-reads the records
            job = self.store.get(job_id)
            record = None
            if job is not None and not job.state.final and not job.cancel_requested:
                record = self.store.get_chunk(job_id, index)
            action = chunk_action(
                job,
                record,
                lease_live=self._chunk_lease_live(job, record),
                draining=self.draining,
                max_attempts=self.max_attempts,
            )
            if action is Action.GONE:
                return  # the job ended: its chunks are gone, or going
            assert job is not None
            if action is Action.CANCEL:
                if self._end_job(job_id, JobState.CANCELLED, _cancelled()):
                    return
                continue
            if action is Action.DROP:
                logger.warning(
                    "Job %s: chunk %d is not stored; dropping its message", job_id, index
                )
                return
            assert record is not None
            if action is Action.MERGE:
                self._merge_if_done(job)  # a duplicate; or the last one's merger died
                return
            if action is Action.HAND_BACK:
                self.queue.send_chunk(job_id, index)  # this worker is stopping
                return
            if action is Action.LOOK_LATER:
                # its split is waiting to resume, or its worker is alive
                self.queue.send_chunk(job_id, index, self.lease_ms)
                return
            if action is Action.FAIL_LOST:
                logger.warning(
                    "Job %s: chunk %d lost its worker in all %d attempts",
                    job_id,
                    index,
                    record.attempts,
                )
                if not self._end_job(job_id, JobState.FAILED, _chunk_worker_lost(record)):
                    self.queue.send_chunk(job_id, index, self.lease_ms)  # fail it once it runs
                return
            if action is Action.RETRY_LOST:
                logger.warning(
                    "Job %s: the worker of chunk %d (%s) died; running it again",
                    job_id,
                    index,
                    record.worker,
                )
                self.store.requeue_chunk(
                    job_id, index, worker=None, error=_chunk_worker_lost(record)
                )
                continue
            if self.store.start_chunk(job_id, index, self.worker_id, self.lease_ms):
                self._run_chunk_attempt(job, index)
                return
        logger.warning("Job %s: chunk %d changed state under us repeatedly", job_id, index)

    def _chunk_lease_live(self, job: Job | None, record: ChunkRecord | None) -> bool:
        """Whether another worker's lease on a running chunk is live (read only when the
        answer matters)."""
        if job is None or record is None or record.state is not ChunkState.RUNNING:
            return False
        if job.state is JobState.QUEUED or self.draining:
            return False
        return self.store.lease_owner(job.id, record.index) is not None

    def _run_chunk_attempt(self, job: Job, index: int) -> None:
        key: Key = (job.id, index)
        active = self._track(key)
        record = self.store.get_chunk(job.id, index)
        last: bool | None = False
        try:
            if record is None:
                raise Superseded("the job ended")
            logger.info(
                "Job %s: chunk %d (%.1f s at %.1f s), attempt %d of %d",
                job.id,
                index,
                record.seconds,
                record.offset,
                record.attempts,
                self.max_attempts,
            )
            info, segments = self.work.transcribe_chunk(job, record, active)
        except WorkerStopping:
            self.store.requeue_chunk(job.id, index, worker=self.worker_id, attempts_delta=-1)
            self.queue.send_chunk(job.id, index, None)
            logger.info("Job %s: chunk %d back on the queue (worker stopping)", job.id, index)
        except Superseded as exc:
            logger.info("Job %s: chunk %d stopped: %s", job.id, index, exc.message)
        except WorkCancelledError as exc:
            self._end_job(job.id, JobState.CANCELLED, exc)
        except Exception as exc:
            assert record is not None
            self._chunk_failed(job, record, exc)
        else:
            assert record is not None
            last = self.store.finish_chunk(
                job.id,
                index,
                worker=self.worker_id,
                segments=segments_to_json(segments),
                seconds=record.seconds,
                language=info.language,
                language_probability=info.language_probability,
            )
            if last is None:
                logger.info(
                    "Job %s: chunk %d done, but its result is no longer wanted", job.id, index
                )
        finally:
            self._untrack(key)
        if last:
            self._merge(job.id)

    def _chunk_failed(self, job: Job, record: ChunkRecord, exc: Exception) -> None:
        error = _as_error(exc, f"Job {job.id}: chunk {record.index}")
        logger.info(
            "Job %s: chunk %d, attempt %d failed: %s",
            job.id,
            record.index,
            record.attempts,
            error.message,
        )
        if not (is_transient(exc) and record.attempts < self.max_attempts):
            if self._end_job(job.id, JobState.FAILED, error):
                return
            delay = self.lease_ms  # the job waits to resume its split; fail it once it runs
        else:
            delay = int(backoff_seconds(self.settings.job_retry_backoff, record.attempts) * 1000)
        if self.store.requeue_chunk(job.id, record.index, worker=self.worker_id, error=error):
            self.queue.send_chunk(job.id, record.index, delay)
            logger.info("Job %s: chunk %d retrying in %.1f s", job.id, record.index, delay / 1000)

    # --- the merge --------------------------------------------------------------------
    def _all_done(self, job: Job) -> bool:
        return job.split_done and job.chunks_done >= (job.chunks or 0)

    def _merge_if_done(self, job: Job) -> None:
        if job.state is JobState.RUNNING and self._all_done(job):
            self._merge(job.id)

    def _merge(self, job_id: str) -> None:
        """Every chunk is done: the whole transcript, in the job's format, ends the job.

        Normally one worker gets here for a job (the store's counter says who); a message
        redelivered after that worker died may bring a second, and the job's state change
        lets only one of them end it.
        """
        job = self.store.get(job_id)
        if job is None or job.state is not JobState.RUNNING or not self._all_done(job):
            return
        assert job.chunks is not None
        records = self.store.chunks(job_id, job.chunks)
        done = [r for r in records if r is not None and r.state is ChunkState.DONE]
        if len(done) < job.chunks:
            logger.warning("Job %s: %d of %d chunks to merge", job_id, len(done), job.chunks)
            return
        duration = job.duration or sum(r.seconds for r in done)
        merged = chunk_audio.merge(done, duration=duration, task=job.spec.task)
        body, media_type = job_result(job.spec, merged)
        fields = {"error": "", "error_status": "", "media_type": media_type, "progress": duration}
        ended = self.store.transition(
            job_id, JobState.RUNNING, JobState.SUCCEEDED, fields, result=body
        )
        if ended is not None:
            self.callbacks.send_if_due(ended)
            logger.info(
                "Job %s succeeded in %.2f s (%d chunks merged)",
                job_id,
                ended.run_seconds,
                job.chunks,
            )
