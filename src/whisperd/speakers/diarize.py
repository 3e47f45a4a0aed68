"""Who said what: speakers told apart by their voices, or by the channel they were heard on.

By voice, once a transcription is complete (a whole file, or all of a job's chunks): every
window of every segment's speech is clustered, so a label means the same voice throughout;
clusters that match a known speaker's reference get that name, the others letters (``A``,
``B``, ...) in order of first appearance. Each word takes the label of the window nearest to
it, and a segment is split where the speaker changes.
"""

from __future__ import annotations

import dataclasses
import itertools
import string
from collections.abc import Iterator, Sequence
from typing import IO

import numpy as np

from whisperd import audio
from whisperd.engine import Segment, Transcription, Word
from whisperd.errors import InvalidRequestError
from whisperd.speakers.clustering import centroids, cluster, name_speakers
from whisperd.speakers.options import SpeakerOptions
from whisperd.speakers.voices import Vectors, Voice


def letters() -> Iterator[str]:
    """``A`` ... ``Z``, then ``AA``, ``AB`` ..."""
    for size in itertools.count(1):
        for letters in itertools.product(string.ascii_uppercase, repeat=size):
            yield "".join(letters)


def attribute(transcription: Transcription, options: SpeakerOptions) -> Transcription:
    """The transcription with its speakers, when ``options`` asks to tell them apart by voice
    (by channel, they are known when the channels are merged: :func:`merge_channels`)."""
    if not options.diarize or options.multichannel:
        return transcription
    return diarize(transcription, options)


def diarize(transcription: Transcription, options: SpeakerOptions) -> Transcription:
    """Label every segment with its speaker, splitting those where the speaker changes."""
    voices = [s.voice for s in transcription.segments]
    spans = [span for v in voices if v is not None for span in v.spans]
    if not spans:
        segments = [dataclasses.replace(s, speaker="A") for s in transcription.segments]
        return dataclasses.replace(transcription, segments=tuple(segments))
    vectors = np.concatenate([v.vectors for v in voices if v is not None and len(v.spans)])
    labels = _cluster(vectors, options)
    names = _names(labels, vectors, options)
    split: list[Segment] = []
    start = 0
    for segment in transcription.segments:
        count = 0 if segment.voice is None else len(segment.voice.spans)
        mine = [names[label] for label in labels[start : start + count]]
        start += count
        split.extend(_split(segment, mine))
    numbered = [dataclasses.replace(s, id=i) for i, s in enumerate(split)]
    return dataclasses.replace(transcription, segments=tuple(numbered))


def _cluster(vectors: Vectors, options: SpeakerOptions) -> list[int]:
    found = cluster(vectors, min_speakers=options.min_speakers, max_speakers=options.max_speakers)
    return [int(label) for label in found]


def _names(labels: Sequence[int], vectors: Vectors, options: SpeakerOptions) -> dict[int, str]:
    """Each cluster's name: a known speaker's whose reference it matches, else the next
    letter not taken, in order of first appearance."""
    named: dict[int, str] = {}
    if options.references:
        references = {
            name: np.asarray(ref, dtype=np.float32)
            for name, ref in zip(options.names, options.references, strict=True)
        }
        named = name_speakers(centroids(vectors, np.asarray(labels)), references)
    taken = set(options.names)
    free = (label for label in letters() if label not in taken)
    for label in labels:
        if label not in named:
            named[label] = next(free)
    return named


def _split(segment: Segment, speakers: list[str]) -> list[Segment]:
    """``segment`` labelled by its windows' ``speakers``: whole, or cut where a run of its
    words changes speaker."""
    voice = segment.voice
    if not speakers or voice is None:
        return [dataclasses.replace(segment, speaker=None)]
    if not segment.words:
        return [dataclasses.replace(segment, speaker=_most(speakers))]
    said = _smoothed([_nearest(voice, speakers, w) for w in segment.words])
    pairs = zip(segment.words, said, strict=True)
    runs = [
        (speaker, tuple(w for w, _ in group))
        for speaker, group in itertools.groupby(pairs, key=lambda p: p[1])
    ]
    if len(runs) == 1:
        return [dataclasses.replace(segment, speaker=runs[0][0])]
    # the pieces cover the segment: each change falls halfway between two words
    cuts = [(a[-1].end + b[0].start) / 2 for (_, a), (_, b) in itertools.pairwise(runs)]
    starts, ends = [segment.start, *cuts], [*cuts, segment.end]
    return [
        dataclasses.replace(
            segment,
            start=start,
            end=end,
            text="".join(w.word for w in words),
            tokens=(),
            words=words,
            speaker=speaker,
        )
        for (speaker, words), start, end in zip(runs, starts, ends, strict=True)
    ]


def _nearest(voice: Voice, speakers: list[str], word: Word) -> str:
    """The speaker of the window whose middle is nearest the middle of ``word``."""
    middle = (word.start + word.end) / 2
    distances = [abs((a + b) / 2 - middle) for a, b in voice.spans]
    return speakers[distances.index(min(distances))]


def _smoothed(said: list[str]) -> list[str]:
    """A lone word between two of another speaker's is theirs: one word is too short to
    tell a voice by."""
    kept = list(said)
    for i in range(1, len(said) - 1):
        if said[i - 1] == said[i + 1] != said[i]:
            kept[i] = said[i - 1]
    return kept


def _most(speakers: list[str]) -> str:
    return max(set(speakers), key=lambda s: (speakers.count(s), -speakers.index(s)))


MAX_CHANNELS = 8


def channels_of(source: IO[bytes]) -> list[int | None]:
    """The channels of ``source`` to transcribe each on its own: two or more."""
    count = audio.channel_count(source)
    if count < 2:
        raise InvalidRequestError(
            "multichannel=true transcribes each channel on its own; this audio has one "
            "channel (send a stereo or multi-channel recording, or leave multichannel off).",
            param="multichannel",
        )
    if count > MAX_CHANNELS:
        raise InvalidRequestError(
            f"multichannel=true takes up to {MAX_CHANNELS} channels; this audio has {count}.",
            param="multichannel",
        )
    if audio.channels_alike(source):
        raise InvalidRequestError(
            f"multichannel=true transcribes each channel on its own; this audio's {count} "
            "channels carry the same sound (a mono recording): tell its speakers apart by "
            "voice with diarize=true instead.",
            param="multichannel",
        )
    return list(range(count))


def channel_sources(
    source: IO[bytes], *, multichannel: bool
) -> tuple[list[IO[bytes]], list[int | None]]:
    """What to transcribe, each on its own: ``source`` mixed down (channel None), or, with
    ``multichannel``, each of its channels read through a view of its own."""
    if not multichannel:
        return [source], [None]
    channels = channels_of(source)
    return audio.views(source, len(channels)), channels


def merge_channels(
    transcriptions: Sequence[Transcription], names: Sequence[str] = ()
) -> Transcription:
    """Each channel's transcription (channel 0 first) merged by time, each segment's speaker
    the channel's: a known speaker's name, in channel order, else a letter (``A`` for 0)."""
    labels = list(itertools.islice(letters(), len(transcriptions)))
    labels[: len(names)] = names[: len(labels)]
    segments = [
        dataclasses.replace(s, channel=channel, speaker=labels[channel])
        for channel, t in enumerate(transcriptions)
        for s in t.segments
    ]
    segments.sort(key=lambda s: (s.start, s.channel))
    numbered = tuple(dataclasses.replace(s, id=i) for i, s in enumerate(segments))
    first = transcriptions[0]
    return Transcription(
        text="".join(s.text for s in numbered).strip(),
        language=first.language,
        language_probability=first.language_probability,
        duration=max(t.duration for t in transcriptions),
        task=first.task,
        segments=numbered,
    )
