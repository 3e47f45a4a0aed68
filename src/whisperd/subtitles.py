"""Subtitle cues fit for a screen: segments cut at word boundaries into cues of a few
balanced lines, optionally one cue per word with the spoken word underlined (karaoke).

With no option set, a cue is a segment, as it always was. With any option, the segment's
word timestamps decide where cues start and end (the routes ask the engine for words when
:attr:`SubtitleOptions.active`). A cue never spans two segments, so a stream can write a
segment's cues as soon as it arrives: :class:`Cuer` carries the one thing that must cross
segments, the end of the last cue, so that cues never overlap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from whisperd.engine import Segment, Word
from whisperd.errors import InvalidRequestError

SUBTITLE_FORMATS = ("srt", "vtt")
Lines = tuple[tuple[str, ...], ...]
"""A cue's lines, each a run of Whisper's words (raw text, with their leading spaces)."""
T = TypeVar("T", str, Word)


@dataclass(frozen=True, slots=True)
class SubtitleOptions:
    """How to cut cues; every limit is off (None) unless given."""

    max_line_width: int | None = None
    """Characters per line (a single longer word gets a line of its own)."""
    max_line_count: int | None = None
    """Lines per cue; needs max_line_width or max_words_per_line to make lines."""
    max_words_per_line: int | None = None
    max_cue_seconds: float | None = None
    """Longest cue (a single longer word gets a cue of its own)."""
    highlight_words: bool = False
    """One cue per word, the spoken word underlined (``<u>``), as openai-whisper does."""

    @property
    def active(self) -> bool:
        """Whether cues are cut from word timestamps (else: one cue per segment)."""
        limits = (self.max_line_width, self.max_line_count, self.max_words_per_line)
        return any(v is not None for v in (*limits, self.max_cue_seconds)) or self.highlight_words

    def check(self, response_format: str) -> None:
        """Refuse options that are out of range or that ``response_format`` cannot carry."""
        if not self.active:
            return
        for name in ("max_line_width", "max_line_count", "max_words_per_line"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidRequestError(f"{name} must be 1 or more, not {value}.", param=name)
        seconds = self.max_cue_seconds
        if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
            raise InvalidRequestError(
                f"max_cue_seconds must be a number above 0, not {seconds}.",
                param="max_cue_seconds",
            )
        if response_format not in SUBTITLE_FORMATS:
            raise InvalidRequestError(
                "max_line_width, max_line_count, max_words_per_line, max_cue_seconds and "
                f"highlight_words are only for response_format srt or vtt, not {response_format}.",
                param="response_format",
            )
        if self.max_line_count is not None and self.line_limits_off:
            raise InvalidRequestError(
                "max_line_count needs max_line_width or max_words_per_line (what makes a line).",
                param="max_line_count",
            )

    @property
    def line_limits_off(self) -> bool:
        """Whether nothing limits a line (then a cue is one line)."""
        return self.max_line_width is None and self.max_words_per_line is None


DEFAULT_CUES = SubtitleOptions()
"""No option: one cue per segment."""


@dataclass(frozen=True, slots=True)
class Cue:
    """One cue: its span and its lines (unescaped). ``highlight`` is the index, counted over
    all the cue's words, of the one to underline."""

    start: float
    end: float
    lines: Lines
    highlight: int | None = None


def line_text(words: tuple[str, ...]) -> str:
    """Words as one line: Whisper's words carry their own leading space (none in Chinese or
    Japanese), so they are joined as they are, with runs of whitespace made one space."""
    return " ".join("".join(words).split())


class Cuer:
    """Cuts segments into cues, one segment at a time, in order. ``labelled``: each cue's
    first line will start with its speaker's ``A: `` (SRT), which counts in the line's width."""

    def __init__(self, options: SubtitleOptions, *, labelled: bool = False) -> None:
        self.options = options
        self.labelled = labelled
        self._width = options.max_line_width
        self._last_end = 0.0

    def cues(self, segment: Segment) -> list[Cue]:
        """The segment's cues, none of them starting before the previous one ended."""
        if not self.options.active:
            return [Cue(segment.start, segment.end, ((segment.text,),))]
        self._width = self.options.max_line_width
        if self._width is not None and self.labelled and segment.speaker is not None:
            self._width = max(1, self._width - len(speaker_label(segment.speaker)))
        words = [w for w in segment.words or () if w.word.strip()] or _untimed(segment)
        cues: list[Cue] = []
        for group in self._groups(words):
            lines = self._balanced([w.word for w in group])
            if self.options.highlight_words:
                cues.extend(self._karaoke(group, lines))
            else:
                cues.append(self._placed(group[0].start, group[-1].end, lines))
        return cues

    def _placed(self, start: float, end: float, lines: Lines, highlight: int | None = None) -> Cue:
        """The cue, moved to start no earlier than the last one ended."""
        start = max(start, self._last_end)
        end = max(end, start)
        self._last_end = end
        return Cue(start, end, lines, highlight)

    def _karaoke(self, group: list[Word], lines: Lines) -> list[Cue]:
        """A cue per word with that word underlined, and a plain one over each pause."""
        cues: list[Cue] = []
        for index, word in enumerate(group):
            if index and word.start > self._last_end:
                cues.append(self._placed(self._last_end, word.start, lines))
            if word.end > max(word.start, self._last_end):  # a word of no length is not shown
                cues.append(self._placed(word.start, word.end, lines, index))
        return cues or [self._placed(group[0].start, group[-1].end, lines)]

    # --- cutting --------------------------------------------------------------------------
    def _line_fits(self, texts: list[str]) -> bool:
        """Whether these words make one line (a single word always does)."""
        o = self.options
        if len(texts) == 1:
            return True
        if o.max_words_per_line is not None and len(texts) > o.max_words_per_line:
            return False
        return self._width is None or len(line_text(tuple(texts))) <= self._width

    def _line_count(self, texts: list[str]) -> int:
        """The fewest lines these words fill."""
        return 1 if self.options.line_limits_off else _fewest(len(texts), self._line_fits, texts)

    def _cue_fits(self, words: list[Word]) -> bool:
        """Whether these words make one cue (a single word always does)."""
        o = self.options
        if len(words) == 1:
            return True
        if o.max_cue_seconds is not None and words[-1].end - words[0].start > o.max_cue_seconds:
            return False
        texts = [w.word for w in words]
        return o.max_line_count is None or self._line_count(texts) <= o.max_line_count

    def _groups(self, words: list[Word]) -> list[list[Word]]:
        """The words of each cue: the fewest cues that hold them, as even as can be."""
        count = _fewest(len(words), self._cue_fits, words)
        return [words[j:i] for j, i in _even(words, count, self._cue_fits)]

    def _balanced(self, texts: list[str]) -> Lines:
        """The words in the fewest lines that hold them, as even as can be."""
        count = self._line_count(texts)
        return tuple(tuple(texts[j:i]) for j, i in _even(texts, count, self._line_fits))


def speaker_label(speaker: str) -> str:
    """What starts an SRT cue's first line to say who speaks."""
    return f"{speaker}: "


def _fewest(n: int, fits: Callable[[list[T]], bool], items: list[T]) -> int:
    """How many runs ``items`` fill at the least: filling each run as far as it goes is
    optimal, since a run that fits still fits without its last item."""
    count, start = 1, 0
    for end in range(2, n + 1):
        if not fits(items[start:end]):
            count, start = count + 1, end - 1
    return count


def _size(items: list[T]) -> int:
    return len(line_text(tuple(i if isinstance(i, str) else i.word for i in items)))


def _even(items: list[T], count: int, fits: Callable[[list[T]], bool]) -> list[tuple[int, int]]:
    """``items`` cut into ``count`` runs ``[start, end)`` that each fit, their sizes (in
    characters) as even as can be: the least sum of squared sizes."""
    n = len(items)
    if count == 1:
        return [(0, n)]
    # ends[j]: the runs starting at j that fit end before ends[j] (a run that does not fit
    # does not fit longer either)
    ends = []
    for j in range(n):
        end = j + 1
        while end < n and fits(items[j : end + 1]):
            end += 1
        ends.append(end + 1)
    # best[k][i]: the least cost of the first i items in k runs, and where the k-th starts
    best = [[(math.inf, 0)] * (n + 1) for _ in range(count + 1)]
    best[0][0] = (0.0, 0)
    for k in range(1, count + 1):
        for j in range(k - 1, n):
            before = best[k - 1][j][0]
            if before == math.inf:
                continue
            for i in range(j + 1, ends[j]):
                cost = before + _size(items[j:i]) ** 2
                if cost < best[k][i][0]:
                    best[k][i] = (cost, j)
    runs, end = [], n
    for k in range(count, 0, -1):
        start = best[k][end][1]
        runs.append((start, end))
        end = start
    return runs[::-1]


def _untimed(segment: Segment) -> list[Word]:
    """A segment the engine gave no words for: its words, timed in proportion to their
    place in the text."""
    texts = [" " + t for t in segment.text.split()]
    total = sum(len(t) for t in texts) or 1
    span = segment.end - segment.start
    words, done = [], 0
    for text in texts:
        start = segment.start + span * done / total
        done += len(text)
        words.append(Word(start, segment.start + span * done / total, text, 0.0))
    return words or [Word(segment.start, segment.end, segment.text, 0.0)]
