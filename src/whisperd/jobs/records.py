"""What a job is: its record (:class:`Job`, with its options as a
:class:`~whisperd.spec.Spec`) and, for a long job, its chunks' records (:class:`ChunkRecord`).

A record lives in Redis as a hash of strings; :meth:`Job.from_hash` reads one back and
:meth:`Job.public` is the JSON the API shows. A finished chunk keeps its segments as JSON
(:func:`segments_to_json`), with times already counted from the start of the whole file.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from whisperd.engine import Segment, Word
from whisperd.jobs.states import ChunkState, JobState
from whisperd.render import JSON_FORMATS
from whisperd.speakers.voices import Voice
from whisperd.spec import Spec

Source = Literal["url", "upload"]


class CallbackState(StrEnum):
    """Where a job's callback is: none asked for, or pending -> queued -> delivered | failed."""

    NONE = ""
    PENDING = "pending"
    """The job ended; the delivery is not on the queue yet."""
    QUEUED = "queued"
    """A delivery (or a retry of one) is on the callbacks queue."""
    DELIVERED = "delivered"
    FAILED = "failed"


def _float(value: str) -> float | None:
    return float(value) if value else None


@dataclass(frozen=True, slots=True)
class Job:
    """One job's record, as read from Redis."""

    id: str
    state: JobState
    spec: Spec
    source: Source
    created_at: float
    owner: str = ""
    """The fingerprint of the API key that submitted it ("" on a server with no keys)."""
    url: str | None = None
    filename: str | None = None
    size: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float | None = None
    attempts: int = 0
    worker: str | None = None
    cancel_requested: bool = False
    duration: float | None = None
    progress: float = 0.0
    error: dict[str, Any] | None = None
    error_status: int | None = None
    result: str | None = None
    media_type: str | None = None
    callback_url: str | None = None
    callback_state: CallbackState = CallbackState.NONE
    callback_attempts: int = 0
    callback_status: int | None = None
    callback_error: str | None = None
    chunks: int | None = None
    """Pieces the job runs in: 1 in one go; a long job's count once its audio is split."""
    chunks_stored: int = 0
    """A long job's chunks stored (and sent) so far by the split."""
    chunks_done: int = 0
    split_at: int = 0
    """The sample where the split goes on (the end of the last chunk stored)."""
    chunk_target: float | None = None
    """The chunk length the split uses (fixed at its first try)."""

    @property
    def fanned_out(self) -> bool:
        """Whether the job was split into chunks that run as messages of their own."""
        return self.chunks_stored > 0

    @property
    def split_done(self) -> bool:
        """Whether all of a long job's chunks are stored: the chunks finish it, not its message."""
        return self.fanned_out and self.chunks is not None

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> Job:
        """Read a record from the strings Redis holds."""
        h = {k.decode(): v.decode() for k, v in raw.items()}
        error = h.get("error")
        return cls(
            id=h["id"],
            state=JobState(h["state"]),
            spec=Spec.from_json(h["spec"]),
            source="upload" if h.get("source") == "upload" else "url",
            created_at=float(h["created_at"]),
            owner=h.get("owner", ""),
            url=h.get("url") or None,
            filename=h.get("filename") or None,
            size=int(h["size"]) if h.get("size") else None,
            started_at=_float(h.get("started_at", "")),
            finished_at=_float(h.get("finished_at", "")),
            updated_at=_float(h.get("updated_at", "")),
            attempts=int(h.get("attempts") or 0),
            worker=h.get("worker") or None,
            cancel_requested=h.get("cancel_requested") == "1",
            duration=_float(h.get("duration", "")),
            progress=float(h.get("progress") or 0.0),
            error=json.loads(error) if error else None,
            error_status=int(h["error_status"]) if h.get("error_status") else None,
            result=h.get("result"),
            media_type=h.get("media_type") or None,
            callback_url=h.get("callback_url") or None,
            callback_state=CallbackState(h.get("callback_state", "")),
            callback_attempts=int(h.get("callback_attempts") or 0),
            callback_status=int(h["callback_status"]) if h.get("callback_status") else None,
            callback_error=h.get("callback_error") or None,
            chunks=int(h["chunks"]) if h.get("chunks") else None,
            chunks_stored=int(h.get("chunks_stored") or 0),
            chunks_done=int(h.get("chunks_done") or 0),
            split_at=int(h.get("split_at") or 0),
            chunk_target=_float(h.get("chunk_target", "")),
        )

    @property
    def run_seconds(self) -> float:
        """How long the last attempt ran (0 if it never started)."""
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return max(0.0, self.finished_at - self.started_at)

    def public(self, *, max_attempts: int, with_result: bool = True) -> dict[str, Any]:
        """The job as the API shows it."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "job",
            "status": str(self.state),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "max_attempts": max_attempts,
            "cancel_requested": self.cancel_requested,
            "progress": {
                "seconds": round(self.progress, 3),
                "duration": self.duration,
                "chunks": self.chunks,
                "chunks_done": self.chunks_done,
            },
            "model": self.spec.model,
            "task": self.spec.task,
            "response_format": self.spec.response_format,
            "input": {
                "type": self.source,
                "url": self.url,
                "filename": self.filename,
                "bytes": self.size,
            },
            "worker": self.worker,
            "error": self.error,
            "callback": None,
        }
        if self.callback_url:
            body["callback"] = {
                "url": self.callback_url,
                "status": str(self.callback_state) or None,
                "attempts": self.callback_attempts,
                "last_http_status": self.callback_status,
                "last_error": self.callback_error,
            }
        if with_result:
            body["result"] = self.result_value()
        return body

    def result_value(self) -> Any:
        """The result as JSON for the json formats, else the text; None until it succeeds."""
        if self.result is None:
            return None
        if self.spec.response_format in JSON_FORMATS:
            return json.loads(self.result)
        return self.result


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One chunk of a long job, as read from Redis."""

    job_id: str
    index: int
    state: ChunkState
    offset: float
    seconds: float
    attempts: int = 0
    worker: str | None = None
    error: dict[str, Any] | None = None
    segments: str | None = None
    """The transcript's segments as JSON, once done (:func:`segments_from_json`)."""
    language: str | None = None
    language_probability: float = 0.0

    @classmethod
    def from_hash(cls, job_id: str, index: int, raw: dict[bytes, bytes]) -> ChunkRecord:
        h = {k.decode(): v.decode() for k, v in raw.items()}
        error = h.get("error")
        return cls(
            job_id=job_id,
            index=index,
            state=ChunkState(h["state"]),
            offset=float(h.get("offset") or 0.0),
            seconds=float(h.get("seconds") or 0.0),
            attempts=int(h.get("attempts") or 0),
            worker=h.get("worker") or None,
            error=json.loads(error) if error else None,
            segments=h.get("segments"),
            language=h.get("language") or None,
            language_probability=float(h.get("language_probability") or 0.0),
        )


def segments_to_json(segments: list[Segment] | tuple[Segment, ...]) -> str:
    """Segments as compact JSON (times and words included) to keep until the merge."""
    rows = []
    for s in segments:
        row = {f.name: getattr(s, f.name) for f in fields(s)}
        for name in ("language", "speaker", "channel", "voice"):
            if row[name] is None:
                del row[name]  # as stored before segments had them
        row["tokens"] = list(s.tokens)
        if s.words is not None:
            row["words"] = [[w.start, w.end, w.word, w.probability] for w in s.words]
        if s.voice is not None:
            row["voice"] = _voice_to_json(s.voice)
        rows.append(row)
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


def segments_from_json(text: str, *, first_id: int = 0) -> list[Segment]:
    """Segments back from :func:`segments_to_json`, numbered from ``first_id``."""
    segments = []
    for number, row in enumerate(json.loads(text), start=first_id):
        words = row.pop("words", None)
        row["id"] = number
        row["tokens"] = tuple(row["tokens"])
        row["words"] = None if words is None else tuple(Word(*w) for w in words)
        if "voice" in row:
            row["voice"] = _voice_from_json(row["voice"])
        segments.append(Segment(**row))
    return segments


def _voice_to_json(voice: Voice) -> dict[str, Any]:
    """A voice's spans, and its embeddings as base64 of float16 (enough to cluster by)."""
    vectors = np.asarray(voice.vectors, dtype="<f2")
    return {
        "spans": [list(span) for span in voice.spans],
        "shape": list(vectors.shape),
        "vectors": base64.b64encode(vectors.tobytes()).decode("ascii"),
    }


def _voice_from_json(stored: dict[str, Any]) -> Voice:
    data = base64.b64decode(stored["vectors"])
    vectors = np.frombuffer(data, dtype="<f2").reshape(stored["shape"]).astype(np.float32)
    return Voice(tuple((float(a), float(b)) for a, b in stored["spans"]), vectors)
