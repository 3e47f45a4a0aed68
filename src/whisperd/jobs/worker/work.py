"""What one try does: open a job's audio, transcribe it in one go, split it into stored
chunks, or transcribe one chunk. The runner decides when, and records what came of it.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from whisperd import audio, chunking, fetch
from whisperd.engine import Item, Segment, Transcriber, Transcription, TranscriptionInfo, items
from whisperd.errors import (
    DeadlineExceededError,
    EmptyAudioError,
    ServiceUnavailableError,
    WhisperdError,
    WorkCancelledError,
)
from whisperd.jobs import chunks as chunk_audio
from whisperd.jobs.queue import JobQueue
from whisperd.jobs.records import ChunkRecord, Job
from whisperd.jobs.states import ChunkState
from whisperd.jobs.store import JobStore
from whisperd.scheduler import Task
from whisperd.settings import Settings
from whisperd.speakers.diarize import attribute
from whisperd.spec import Spec

logger = logging.getLogger(__name__)

_PROGRESS_EVERY_S = 0.5


def job_result(spec: Spec, transcription: Transcription) -> tuple[str, str]:
    """A job's result: its transcript, its speakers told apart, in its format (body, media
    type)."""
    rendered = spec.render(attribute(transcription, spec.speakers))
    return rendered.text, rendered.media_type


class WorkerStopping(ServiceUnavailableError):
    """This worker is shutting down; the job goes back to the queue for another one."""


class Superseded(WhisperdError):
    """The job ended, or another worker has taken this work over: stop without a trace."""


class ActiveJob:
    """Work running in this process: its engine task, once there is one, and a stop reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._task: Task[Item] | None = None
        self.reason: WhisperdError | None = None

    def attach(self, task: Task[Item]) -> None:
        with self._lock:
            self._task = task
            if self.reason is not None:
                task.cancel(self.reason)

    def stop(self, reason: WhisperdError) -> None:
        """Stop the work at its next window (or before inference starts) with ``reason``."""
        with self._lock:
            if self.reason is None or isinstance(reason, WorkerStopping):
                self.reason = reason
            if self._task is not None:
                self._task.cancel(reason)

    def stopped(self) -> bool:
        return self.reason is not None

    def check(self) -> None:
        if self.reason is not None:
            raise self.reason


@dataclass
class Work:
    """The work of jobs and chunks on this process's engine, with their records in ``store``."""

    settings: Settings
    store: JobStore
    engine: Transcriber
    worker_id: str
    queue: JobQueue = field(kw_only=True)

    def open_audio(self, job: Job, active: ActiveJob) -> IO[bytes]:
        if job.source == "upload":
            data = self.store.audio(job.id)
            if data is None:
                raise EmptyAudioError(
                    "The uploaded audio of this job is no longer stored; submit it again.",
                    param="file",
                )
            return io.BytesIO(data)
        assert job.url is not None
        try:
            return fetch.fetch_to_file(job.url, self.settings, stopped=active.stopped)
        except WorkCancelledError:
            active.check()  # why it stopped: a cancel, or this worker stopping
            raise

    def probe(self, source: IO[bytes]) -> float | None:
        """The duration the audio declares, if it does; audio declaring more than the limit
        fails here, before it is split or decoded."""
        return audio.declared_seconds(source, self.settings.max_audio_seconds)

    def fits_in_one_go(self, job: Job, estimate: float) -> bool:
        """Whether audio of this length runs in one go: a split would give a single chunk."""
        target = job.chunk_target or self.settings.job_chunk_seconds
        return estimate < target + chunking.search_window(target)

    def transcribe(
        self, job: Job, active: ActiveJob, source: IO[bytes], estimate: float
    ) -> tuple[str, str]:
        """The job in one go: decoded piece by piece as the engine gets to it (bounded memory)."""
        self.store.update(
            job.id,
            {"duration": round(estimate, 3), "progress": 0, "chunks": 1, "chunks_done": 0},
        )
        prepared = self.engine.prepare(job.spec.options(self.settings), model=job.spec.model)
        active.check()
        task = self.engine.begin(
            prepared,
            self.engine.sections(source),
            deadline=time.monotonic() + self.settings.job_time_limit,
        )
        active.attach(task)
        info: TranscriptionInfo | None = None
        segments: list[Segment] = []
        reported = time.monotonic()
        for item in items(task):
            if isinstance(item, TranscriptionInfo):
                info = item
                continue
            segments.append(item)
            if time.monotonic() - reported >= _PROGRESS_EVERY_S:
                reported = time.monotonic()
                self.store.update(job.id, {"progress": round(item.end, 3)})
        if info is None:  # pragma: no cover - the engine's first step always yields it
            raise ServiceUnavailableError("The engine stopped before transcribing.")
        transcription = Transcription.from_parts(info, tuple(segments))
        self.store.update(
            job.id, {"duration": round(info.duration, 3), "progress": round(info.duration, 3)}
        )
        return job_result(job.spec, transcription)

    def split(self, job: Job, active: ActiveJob, source: IO[bytes], estimate: float | None) -> bool:
        """Fan out: store the audio's chunks and send their messages as they are cut; whether
        every chunk is done already when the split ends (then the caller merges)."""
        target = job.chunk_target or self.settings.job_chunk_seconds
        if not job.fanned_out:
            # the declared duration, if any, until the split knows the real one
            duration = "" if estimate is None else round(estimate, 3)
            self.store.update(
                job.id,
                {"chunk_target": target, "chunks": "", "progress": 0, "duration": duration},
            )
        else:
            # An earlier try stored these; their messages may not all have been sent.
            for record in self.store.chunks(job.id, job.chunks_stored):
                if record is not None and record.state is ChunkState.QUEUED:
                    self.queue.send_chunk(job.id, record.index)
        frames = audio.iter_frames(source, max_seconds=self.settings.max_audio_seconds)
        index, position = job.chunks_stored, job.split_at
        # each chunk is encoded before the next is cut: views, not copies, of the split's buffer
        for chunk in chunking.split_frames(
            chunk_audio.skip_samples(frames, position), target_seconds=target, copy=False
        ):
            active.check()
            data = audio.encode_flac(chunk.samples)
            start, position = position, position + chunk.samples.shape[0]
            del chunk  # only the FLAC is kept
            stored = self.store.add_chunk(
                job.id,
                index,
                worker=self.worker_id,
                offset=start / audio.SAMPLE_RATE,
                seconds=(position - start) / audio.SAMPLE_RATE,
                split_at=position,
                audio=data,
            )
            if not stored:
                raise Superseded("the job ended, or another worker splits it now")
            self.queue.send_chunk(job.id, index)
            logger.info(
                "Job %s: chunk %d stored (%.1f-%.1f s, %d bytes)",
                job.id,
                index,
                start / audio.SAMPLE_RATE,
                position / audio.SAMPLE_RATE,
                len(data),
            )
            index += 1
        merge = self.store.split_done(
            job.id,
            worker=self.worker_id,
            chunks=index,
            duration=round(position / audio.SAMPLE_RATE, 3),
        )
        if merge is None:
            raise Superseded("the job ended, or another worker splits it now")
        logger.info("Job %s: split into %d chunk(s)", job.id, index)
        return merge

    def transcribe_chunk(
        self, job: Job, record: ChunkRecord, active: ActiveJob
    ) -> tuple[TranscriptionInfo, list[Segment]]:
        data = self.store.chunk_audio(job.id, record.index)
        if data is None:
            raise Superseded("its audio is gone: the job ended")
        # the job's time limit counts from when it started, across all its chunks
        left = (job.started_at or time.time()) + self.settings.job_time_limit - time.time()
        if left <= 0:
            raise DeadlineExceededError(
                f"The job ran past its time limit of {self.settings.job_time_limit:g} s "
                "(WHISPERD_JOB_TIME_LIMIT)."
            )
        prepared = self.engine.prepare(job.spec.options(self.settings), model=job.spec.model)
        sections = chunk_audio.sections_of(
            record, data, section_seconds=self.settings.section_seconds
        )
        del data
        active.check()
        task = self.engine.begin(prepared, sections, deadline=time.monotonic() + left)
        active.attach(task)
        info: TranscriptionInfo | None = None
        segments: list[Segment] = []
        for item in items(task):
            if isinstance(item, TranscriptionInfo):
                info = info or item
            else:
                segments.append(item)
        if info is None:  # pragma: no cover - the engine's first step always yields it
            raise ServiceUnavailableError("The engine stopped before transcribing.")
        return info, segments
