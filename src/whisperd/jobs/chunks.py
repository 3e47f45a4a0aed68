"""Long jobs in chunks: the audio a chunk keeps in Redis, and the merge of the chunks' results.

A chunk's audio is stored as FLAC (16 kHz mono, 16-bit): lossless for what Whisper hears,
half of 16-bit PCM for speech and next to nothing for silence, and decoded back by the same
PyAV path as any upload. A worker transcribes it in sections of ``section_seconds`` (as
the synchronous path does), so its memory is bounded by a section, not by the chunk.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence

from whisperd import chunking
from whisperd.audio import Audio
from whisperd.chunking import Section
from whisperd.engine import Segment, TaskName, Transcription, TranscriptionInfo, spoken_longest
from whisperd.jobs.records import ChunkRecord, segments_from_json


def skip_samples(frames: Iterable[Audio], count: int) -> Iterator[Audio]:
    """``frames`` without their first ``count`` samples (a split that resumes)."""
    for frame in frames:
        if count >= frame.shape[0]:
            count -= frame.shape[0]
            continue
        yield frame[count:] if count else frame
        count = 0


def sections_of(record: ChunkRecord, data: bytes, *, section_seconds: float) -> Iterator[Section]:
    """A stored chunk's audio, decoded section by section (cut at pauses), at their offsets
    in the whole file, so the engine's times come out absolute."""
    for section in chunking.split(io.BytesIO(data), target_seconds=section_seconds):
        yield Section(section.index, record.offset + section.offset, section.samples)


def merge(records: Sequence[ChunkRecord], *, duration: float, task: TaskName) -> Transcription:
    """The whole transcript from the chunks' segments, in order, with ids that run on."""
    segments: list[Segment] = []
    for record in records:
        if record.segments is None:
            msg = f"Chunk {record.index} of job {record.job_id} has no result to merge"
            raise ValueError(msg)
        segments += segments_from_json(record.segments, first_id=len(segments))
    first = records[0]
    language, probability = first.language or "en", first.language_probability
    longest = spoken_longest(segments)
    if longest is not None:  # multilingual: the language spoken longest in all the chunks
        found = [r.language_probability for r in records if r.language == longest]
        language, probability = longest, max(found, default=probability)
    info = TranscriptionInfo(language, probability, duration, task)
    return Transcription.from_parts(info, tuple(segments))
