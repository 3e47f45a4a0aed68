"""Long audio cut at pauses: decode it as a stream of frames and cut it at silences into
sections of about a target length, so memory is bounded by a section, never by the file (a
long job's sections are its chunks, which any worker can run); and each section into the
short pieces (streams) the engine decodes side by side.

A section's cut is placed in the middle of the longest pause the voice activity detector finds
near the target length; where it finds none (continuous speech), at the quietest 100 ms there.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from whisperd.audio import SAMPLE_RATE, Audio, AudioSource, iter_frames

# How far either side of the target length a cut may move to find a pause.
SEARCH_SECONDS = 30.0
_FRAME = SAMPLE_RATE // 10  # 100 ms, for the quietest-point fallback
# Streams are cut to fit one 30 s window, so that each is mostly a single window.
PIECE_SECONDS = 28.0
# With silence dropped: pauses this long are left out (Whisper invents text in them), and this
# much of a pause stays at either side of the speech around it.
SILENCE_SECONDS = 2.0
SPEECH_PAD_SECONDS = 0.4
# Audio searched for speech at a time when only the first of it is wanted (language detection).
SCAN_SECONDS = 30.0
# In multilingual mode speech is cut into stretches at pauses this long, and each stretch's
# language detected: a speaker who switches language mostly pauses first.
STRETCH_PAUSE_SECONDS = 0.5
# The detector runs two calls at a time. A call holds about 0.4 MB per second of its audio
# (all of it goes through the model at once) and takes about 1.5 ms per second on 2 cores:
# 16 threads detecting speech in 11 s clips peaked 140 MiB over their start side by side,
# 57 MiB two at a time, 30-40 MiB one at a time. The second call keeps a short clip (or a
# live turn) from waiting behind a long section's detection (half a second for 300 s).
_DETECTING = threading.BoundedSemaphore(2)


@dataclass(frozen=True, slots=True)
class Section:
    """A stretch of the audio and where it starts in the whole file: a section of a long
    request, a piece the engine decodes as one stream, or a job's chunk."""

    index: int
    offset: float
    samples: Audio

    @property
    def duration(self) -> float:
        return float(self.samples.shape[0]) / SAMPLE_RATE


def speech_spans(samples: Audio) -> list[tuple[int, int]]:
    """The runs of speech the voice activity detector finds (start and end sample)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    # a lower threshold than the library's 0.5 keeps quiet speech
    options = VadOptions(threshold=0.35, min_silence_duration_ms=300, speech_pad_ms=100)
    with _DETECTING:
        found = get_speech_timestamps(samples, options)
    return [(s["start"], s["end"]) for s in found]


def stretches(spans: Sequence[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """``spans`` in groups that no pause of ``STRETCH_PAUSE_SECONDS`` or more divides: the
    stretches of speech whose language is detected in multilingual mode."""
    pause = int(STRETCH_PAUSE_SECONDS * SAMPLE_RATE)
    groups: list[list[tuple[int, int]]] = []
    for span in spans:
        if groups and span[0] - groups[-1][-1][1] < pause:
            groups[-1].append(span)
        else:
            groups.append([span])
    return groups


def plan_pieces(
    samples: Audio,
    spans: Sequence[tuple[int, int]],
    labels: Sequence[str | None] | None = None,
    *,
    drop_silence: bool,
    max_seconds: float = PIECE_SECONDS,
) -> list[tuple[int, int, str | None]]:
    """The pieces (start and end sample, and label) to decode as separate streams, given the
    samples' :func:`speech_spans`: runs of speech of up to ``max_seconds`` (a longer run
    without a pause is one piece), cut at pauses. With ``labels`` (one per span, such as its
    language) a piece also ends where the label changes, and comes with the label of its
    spans; without them, and for the one piece of audio without speech, the label is None.

    With ``drop_silence``, audio without speech is left out: leading and trailing silence, and
    pauses of ``SILENCE_SECONDS`` or more, but for ``SPEECH_PAD_SECONDS`` around the speech;
    audio with no speech at all gives no piece. Without it the pieces cover all the audio.
    """
    if labels is None:
        labels = [None] * len(spans)
    total = samples.shape[0]
    if not spans:
        return [] if drop_silence or total == 0 else [(0, total, None)]
    longest = int(max_seconds * SAMPLE_RATE)
    silence = int(SILENCE_SECONDS * SAMPLE_RATE)
    pad = int(SPEECH_PAD_SECONDS * SAMPLE_RATE)
    # group the spans into pieces: a long pause always ends one, and so do the length limit
    # and a change of label
    groups: list[list[tuple[int, int]]] = [[spans[0]]]
    group_labels = [labels[0]]
    for span, label in zip(spans[1:], labels[1:], strict=True):
        group = groups[-1]
        if (
            span[0] - group[-1][1] >= silence
            or span[1] - group[0][0] > longest
            or label != group_labels[-1]
        ):
            groups.append([span])
            group_labels.append(label)
        else:
            group.append(span)
    # where each piece starts and ends: a short pause is shared at its middle; a long one is
    # left out with silence dropped, else it goes to the piece before it (Whisper places its
    # times better after leading speech than after leading silence)
    starts = [0 if not drop_silence or spans[0][0] < silence else spans[0][0] - pad]
    ends: list[int] = []
    for before, after in itertools.pairwise(groups):
        end, start = before[-1][1], after[0][0]
        if start - end < silence:
            ends.append((end + start) // 2)
            starts.append(ends[-1])
        elif drop_silence:
            ends.append(end + pad)
            starts.append(start - pad)
        else:
            ends.append(start - pad)
            starts.append(start - pad)
    last = groups[-1][-1][1]
    ends.append(last + pad if drop_silence and total - last >= silence else total)
    return list(zip(starts, ends, group_labels, strict=True))


def leading_speech(
    frames: Iterable[Audio], seconds: float, *, max_seconds: float | None = None
) -> Audio:
    """The first ``seconds`` of speech in ``frames`` (consecutive runs of samples), joined: the
    silence, music and noise around it left out by the voice activity detector. The frames are
    read only as far as needed, in blocks of about ``SCAN_SECONDS``, and no further than
    ``max_seconds`` of audio; no speech at all gives an empty array.
    """
    wanted = int(seconds * SAMPLE_RATE)
    limit = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
    speech: list[Audio] = []
    found = read = 0
    for block in _blocks(frames, int(SCAN_SECONDS * SAMPLE_RATE)):
        if limit is not None:
            block = block[: limit - read]
        read += block.shape[0]
        for start, end in speech_spans(block):
            speech.append(block[start:end])
            found += end - start
        if found >= wanted or read == limit:
            break
    if not speech:
        return np.empty(0, dtype=np.float32)
    return np.concatenate(speech)[:wanted]


def _blocks(frames: Iterable[Audio], size: int) -> Iterator[Audio]:
    """The samples of ``frames`` in runs of at least ``size`` (the last one may be shorter)."""
    held: list[Audio] = []
    count = 0
    for frame in frames:
        held.append(frame)
        count += frame.shape[0]
        if count >= size:
            yield np.concatenate(held)
            held, count = [], 0
    if held:
        yield np.concatenate(held)


def find_cut(samples: Audio, low: int, high: int) -> int:
    """A sample index in [low, high) to cut at: the middle of a pause, near the middle of the
    range (a pause at least half as long as the longest there, the closest such to the centre).
    """
    region = samples[low:high]
    spans = speech_spans(region)
    gaps: list[tuple[int, int]] = []
    previous_end = 0
    for start, end in spans:
        if start > previous_end:
            gaps.append((previous_end, start))
        previous_end = max(previous_end, end)
    if previous_end < region.shape[0]:
        gaps.append((previous_end, region.shape[0]))
    if gaps:
        longest = max(end - start for start, end in gaps)
        centre = region.shape[0] // 2
        start, end = min(
            (gap for gap in gaps if gap[1] - gap[0] >= longest / 2),
            key=lambda gap: abs((gap[0] + gap[1]) // 2 - centre),
        )
        return low + (start + end) // 2
    frames = region[: region.shape[0] // _FRAME * _FRAME].reshape(-1, _FRAME)
    quietest = int(np.argmin(np.sqrt(np.mean(frames**2, axis=1))))
    return low + quietest * _FRAME + _FRAME // 2


def search_window(target_seconds: float, search_seconds: float = SEARCH_SECONDS) -> float:
    """How far from the target a cut may move: audio shorter than ``target_seconds`` plus
    this is never cut."""
    return min(search_seconds, target_seconds / 2)


def split(
    source: AudioSource,
    *,
    target_seconds: float,
    max_seconds: float | None = None,
    search_seconds: float = SEARCH_SECONDS,
    channel: int | None = None,
) -> Iterator[Section]:
    """Decode ``source`` (mixed down, or only ``channel``) and yield sections of about
    ``target_seconds``, cut at pauses.

    About ``2 x target_seconds + search_seconds`` of audio is held at most (the buffer and
    the section just yielded).
    """
    return split_frames(
        iter_frames(source, max_seconds=max_seconds, channel=channel),
        target_seconds=target_seconds,
        search_seconds=search_seconds,
    )


def split_frames(
    frames: Iterable[Audio],
    *,
    target_seconds: float,
    search_seconds: float = SEARCH_SECONDS,
    copy: bool = True,
) -> Iterator[Section]:
    """Like :func:`split`, for audio that is already being decoded: ``frames`` are consecutive
    runs of samples (any sizes); section offsets count from the first of them.

    With ``copy=False`` a section's samples are a view into the split's buffer, valid only
    until the next section is asked for: for a caller that encodes or stores each section at
    once, and so holds one section's worth of audio less.
    """
    search = search_window(target_seconds, search_seconds)
    target = int(target_seconds * SAMPLE_RATE)
    window = int(search * SAMPLE_RATE)
    # One buffer, filled in place: concatenating a list of frames would hold the audio twice.
    buffer = np.empty(target + window + SAMPLE_RATE, dtype=np.float32)
    held = 0
    index = 0
    offset = 0
    for frame in frames:
        if held + frame.shape[0] > buffer.shape[0]:
            grown = np.empty(max(2 * buffer.shape[0], held + frame.shape[0]), dtype=np.float32)
            grown[:held] = buffer[:held]
            buffer = grown
        buffer[held : held + frame.shape[0]] = frame
        held += frame.shape[0]
        if held < target + window:
            continue
        cut = find_cut(buffer[:held], target - window, target + window)
        yield Section(index, offset / SAMPLE_RATE, buffer[:cut].copy() if copy else buffer[:cut])
        buffer[: held - cut] = buffer[cut:held]  # numpy copies overlapping ranges correctly
        held -= cut
        index += 1
        offset += cut
    if held:
        yield Section(index, offset / SAMPLE_RATE, buffer[:held].copy() if copy else buffer[:held])
