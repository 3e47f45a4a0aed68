"""Voice embeddings over a transcript's speech: what tells its speakers apart.

Each segment's speech (from its first word to its last, less the silence the voice activity
detector finds at either end: Whisper's first word often starts in the pause before it) is cut
into windows of about ``WINDOW_SECONDS``, overlapping, and each window is embedded by the
speaker model. A segment keeps its windows' spans (in the file's time) and embeddings as its
:class:`Voice`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from whisperd.audio import SAMPLE_RATE, Audio

WINDOW_SECONDS = 1.6
"""The speaker model's window (what it was trained on)."""
HOP_SECONDS = 0.8
SHORTEST_SECONDS = 0.5
"""Speech shorter than this is widened to it (within its piece) before it is embedded."""

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Voice:
    """The windows of a segment's speech: their spans, in seconds of the whole file, and
    their embeddings (one L2-normalised row per span)."""

    spans: tuple[tuple[float, float], ...]
    vectors: Vectors


def window_spans(start: float, end: float) -> list[tuple[float, float]]:
    """Windows of ``WINDOW_SECONDS`` over ``start``-``end``, overlapping evenly, the first
    at the start and the last at the end (one window if the stretch is no longer)."""
    length = end - start
    if length <= WINDOW_SECONDS:
        return [(start, end)]
    count = math.ceil((length - WINDOW_SECONDS) / HOP_SECONDS) + 1
    step = (length - WINDOW_SECONDS) / (count - 1)
    return [(start + i * step, start + i * step + WINDOW_SECONDS) for i in range(count)]


def _speech(segment: Any) -> tuple[float, float]:
    """A decoded segment's speech, in seconds of its piece: from its first word to its last."""
    words = segment.words or ()
    if words:
        return float(words[0].start), float(words[-1].end)
    return float(segment.start), float(segment.end)


def _trimmed(
    start: float, end: float, speech: Sequence[tuple[float, float]]
) -> tuple[float, float]:
    """``start``-``end`` without the silence at its ends: from the first run of ``speech`` in
    it to the last (as it is, if none is)."""
    inside = [(a, b) for a, b in speech if a < end and b > start]
    if not inside:
        return start, end
    return max(start, inside[0][0]), min(end, inside[-1][1])


def _widened(start: float, end: float, length: float) -> tuple[float, float]:
    missing = SHORTEST_SECONDS - (end - start)
    if missing <= 0:
        return start, end
    start = max(0.0, start - missing / 2)
    return start, min(length, start + SHORTEST_SECONDS)


def voices(
    segments: Sequence[Any],
    samples: Audio,
    offset: float,
    speech: Sequence[tuple[float, float]],
) -> list[Voice]:
    """The :class:`Voice` of each of a piece's decoded ``segments`` (times in the piece),
    from the piece's ``samples``; ``offset`` is where the piece starts in the file, ``speech``
    the runs of speech the voice activity detector found in it (in seconds of the piece)."""
    from whisperd.speakers.encoder import voice_encoder

    length = samples.shape[0] / SAMPLE_RATE
    spans = [
        window_spans(*_widened(*_trimmed(*_speech(s), speech), length)) if s.end > s.start else []
        for s in segments
    ]
    windows = [
        samples[round(a * SAMPLE_RATE) : round(b * SAMPLE_RATE)] for row in spans for a, b in row
    ]
    vectors = voice_encoder().embed(windows) if windows else np.zeros((0, 0), np.float32)
    found, start = [], 0
    for row in spans:
        shifted = tuple((a + offset, b + offset) for a, b in row)
        found.append(Voice(shifted, vectors[start : start + len(row)]))
        start += len(row)
    return found
