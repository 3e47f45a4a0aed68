"""Two real voices taking turns, with the truth of who speaks when, and how a diarization
of it scores (see bench/speakers.py, which measures whisperd on it)."""

from __future__ import annotations

import base64
import difflib
import io
import itertools
import wave
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

import whisperd_bench as b
from whisperd import audio, chunking

RATE = audio.SAMPLE_RATE
JFK_PHRASES = (
    "And so my fellow Americans,",
    "ask not",
    "what your country can do for you,",
    "ask what you can do for your country.",
)
"""jfk.flac's phrases, as the VAD cuts it (four runs of speech)."""
ALLISON, JFK = "Allison", "JFK"
SPEECH_DBFS = -23.0
"""Every clip's RMS over its speech, so that neither voice dominates."""
TURN_SECONDS = (2.0, 12.0)
GAP_SECONDS = (0.2, 0.8)
BACK_TO_BACK = 0.25
"""The share of turns that follow the previous one with no gap at all."""
REFERENCE_SECONDS = (3.0, 8.0)
COLLAR_SECONDS = 0.25


# --- the conversation ---------------------------------------------------------------------


Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Said:
    """One voice's clip: its samples from its first speech to its last, scaled to
    SPEECH_DBFS, its speech spans (samples in the clip) and its text."""

    speaker: str
    samples: audio.Audio = field(repr=False)
    speech: tuple[Span, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of the conversation, in samples from its start."""

    speaker: str
    start: int
    end: int
    speech: tuple[Span, ...]
    text: str


@dataclass(frozen=True, slots=True)
class Conversation:
    samples: audio.Audio = field(repr=False)
    turns: tuple[Turn, ...]

    @property
    def seconds(self) -> float:
        return audio.duration(self.samples)

    def truth(self, repeats: int = 1) -> list[tuple[float, float, str]]:
        """The speech of every turn, in seconds, with its speaker (``repeats`` times over,
        for the conversation looped)."""
        length = self.samples.shape[0]
        return [
            ((a + k * length) / RATE, (z + k * length) / RATE, turn.speaker)
            for k in range(repeats)
            for turn in self.turns
            for a, z in turn.speech
        ]

    def channel(self, speaker: str) -> audio.Audio:
        """The conversation with only ``speaker``'s turns heard (silence in the others)."""
        alone = np.zeros_like(self.samples)
        for turn in self.turns:
            if turn.speaker == speaker:
                alone[turn.start : turn.end] = self.samples[turn.start : turn.end]
        return alone

    def text(self) -> str:
        return " ".join(turn.text for turn in self.turns)


def scaled(samples: audio.Audio, speech: Sequence[Span]) -> audio.Audio:
    """``samples`` scaled so that their RMS over ``speech`` is SPEECH_DBFS."""
    heard = np.concatenate([samples[a:z] for a, z in speech])
    rms = float(np.sqrt(np.mean(heard.astype(np.float64) ** 2)))
    gain = 10 ** (SPEECH_DBFS / 20) / max(rms, 1e-6)
    louder: audio.Audio = np.clip(samples * gain, -1.0, 1.0).astype(np.float32)
    return louder


def said(speaker: str, samples: audio.Audio, text: str) -> Said | None:
    """A clip trimmed to its speech (first to last VAD span), scaled; None if silent."""
    spans = chunking.speech_spans(samples)
    if not spans:
        return None
    first, last = spans[0][0], spans[-1][1]
    speech = tuple((a - first, z - first) for a, z in spans)
    clip = samples[first:last]
    return Said(speaker, scaled(clip, speech), speech, text)


def jfk_turns(path: Path) -> list[Said]:
    """Every run of one to four consecutive JFK phrases that lasts TURN_SECONDS."""
    samples = audio.decode(path)
    spans = chunking.speech_spans(samples)
    if len(spans) != len(JFK_PHRASES):
        raise b.BenchError(f"{path}: the VAD found {len(spans)} phrases, not {len(JFK_PHRASES)}")
    samples = scaled(samples, spans)
    runs = []
    for i in range(len(spans)):
        for j in range(i, len(spans)):
            first, last = spans[i][0], spans[j][1]
            if TURN_SECONDS[0] <= (last - first) / RATE <= TURN_SECONDS[1]:
                speech = tuple((a - first, z - first) for a, z in spans[i : j + 1])
                text = " ".join(JFK_PHRASES[i : j + 1])
                runs.append(Said(JFK, samples[first:last], speech, text))
    return runs


def jfk_reference(path: Path) -> Said:
    """JFK's reference: his longest phrase (it is also in the conversation)."""
    phrases = [s for s in jfk_turns(path) if len(s.speech) == 1]
    return max(phrases, key=lambda s: s.samples.shape[0])


def allison_prompts(seed: int) -> Iterator[Said]:
    """Allison's prompts, trimmed and scaled, in an order of their own (``seed``)."""
    for samples, text in b.prompt_utterances(seed=seed):
        if (clip := said(ALLISON, samples, text)) is not None:
            yield clip


def conversation(seconds: float, *, seed: int, jfk: Path) -> tuple[Conversation, Said]:
    """About ``seconds`` of alternate turns, Allison first, and a reference of Allison's
    (REFERENCE_SECONDS) that is not in it."""
    rng = np.random.default_rng(seed)
    his = jfk_turns(jfk)
    hers = allison_prompts(seed)
    reference = next(s for s in hers if in_range(s, REFERENCE_SECONDS))
    lead = np.zeros(RATE // 2, np.float32)
    parts, position = [lead], lead.size
    turns: list[Turn] = []
    while position < seconds * RATE:
        if len(turns) % 2 == 0:
            clip = next(s for s in hers if in_range(s, TURN_SECONDS))
        else:
            clip = his[int(rng.integers(len(his)))]
        turns.append(
            Turn(
                clip.speaker,
                position,
                position + clip.samples.size,
                tuple((a + position, z + position) for a, z in clip.speech),
                clip.text,
            )
        )
        gap = 0.0 if rng.random() < BACK_TO_BACK else rng.uniform(*GAP_SECONDS)
        silence = np.zeros(int(gap * RATE), np.float32)
        parts += [clip.samples, silence]
        position += clip.samples.size + silence.size
    parts.append(lead)
    return Conversation(np.concatenate(parts), tuple(turns)), reference


def in_range(clip: Said, bounds: tuple[float, float]) -> bool:
    return bool(bounds[0] <= clip.samples.shape[0] / RATE <= bounds[1])


def wav(channels: Sequence[audio.Audio]) -> bytes:
    """16 kHz 16-bit WAV of one or more channels of equal length."""
    pcm = np.stack([np.clip(c, -1.0, 1.0) for c in channels], axis=1)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(len(channels))
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((pcm * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def data_url(samples: audio.Audio) -> str:
    return "data:audio/wav;base64," + base64.b64encode(wav([samples])).decode()


# --- scoring ------------------------------------------------------------------------------


Labelled = tuple[float, float, str]


def segments_of(result: Any) -> list[Labelled]:
    """(start, end, speaker) of each segment of a parsed answer (speaker "?" when none)."""
    return [
        (float(s.start), float(s.end), str(getattr(s, "speaker", None) or "?"))
        for s in result.segments or ()
    ]


def confusion(truth: Sequence[Labelled], hypothesis: Sequence[Labelled]) -> dict[str, Any]:
    """Seconds of each true speaker's speech under each hypothesis label: ``""`` where no
    segment covers it; time under k overlapping segments counts 1/k for each."""
    ordered = sorted(hypothesis)
    starts = [s for s, _, _ in ordered]
    longest = max((e - s for s, e, _ in ordered), default=0.0)
    table: dict[str, dict[str, float]] = {}
    for start, end, who in truth:
        row = table.setdefault(who, {})
        low = bisect_left(starts, start - longest)
        over = [
            (max(start, s), min(end, e), label)
            for s, e, label in ordered[low : bisect_left(starts, end)]
            if e > start and s < end
        ]
        cuts = sorted({start, end, *(a for a, _, _ in over), *(z for _, z, _ in over)})
        for a, z in pairwise(cuts):
            under = [label for x, y, label in over if x <= a and y >= z]
            for label in under or [""]:
                row[label] = row.get(label, 0.0) + (z - a) / max(1, len(under))
    return table


@dataclass(frozen=True, slots=True)
class Score:
    accuracy: float
    """The share of truth speech time whose hypothesis speaker, mapped, is right."""
    covered: float
    """The share of truth speech time under some hypothesis segment."""
    accuracy_covered: float
    """The accuracy within covered time alone."""
    accuracy_collar: float
    """The accuracy with COLLAR_SECONDS at either end of each truth speech span left out
    (as NIST's diarization error rate is usually scored)."""
    speakers: int
    """Distinct hypothesis labels."""
    mapping: dict[str, str]
    """Hypothesis label -> true speaker, the best one-to-one assignment."""
    confusion: dict[str, dict[str, float]]
    turns_right: float
    """The share of turns whose segments all carry the turn's speaker (mapped)."""


def score(
    conversation: Conversation,
    hypothesis: Sequence[Labelled],
    *,
    mapping: dict[str, str] | None = None,
    repeats: int = 1,
) -> Score:
    """Speaker accuracy under the best mapping (or under ``mapping``, e.g. names as given)."""
    truth = conversation.truth(repeats)
    table = confusion(truth, hypothesis)
    labels = sorted({label for _, _, label in hypothesis})
    if mapping is None:
        mapping = best_mapping(table, labels)
    total = sum(sum(row.values()) for row in table.values())
    right = sum(s for t, row in table.items() for h, s in row.items() if mapping.get(h) == t)
    missed = sum(row.get("", 0.0) for row in table.values())
    covered = total - missed
    inner = confusion(
        [
            (a + COLLAR_SECONDS, z - COLLAR_SECONDS, who)
            for a, z, who in truth
            if z - a > 2 * COLLAR_SECONDS
        ],
        hypothesis,
    )
    inner_total = sum(sum(row.values()) for row in inner.values())
    inner_right = sum(s for t, row in inner.items() for h, s in row.items() if mapping.get(h) == t)
    return Score(
        accuracy=right / total if total else 0.0,
        covered=covered / total if total else 0.0,
        accuracy_covered=right / covered if covered else 0.0,
        accuracy_collar=inner_right / inner_total if inner_total else 0.0,
        speakers=len(labels),
        mapping=mapping,
        confusion=table,
        turns_right=turns_right(conversation, hypothesis, mapping, repeats),
    )


def best_mapping(table: dict[str, dict[str, float]], labels: Sequence[str]) -> dict[str, str]:
    """The one-to-one mapping of hypothesis labels to true speakers that puts the most truth
    seconds on the right speaker (the assignment problem, solved exhaustively: there are
    two true speakers)."""
    speakers = sorted(table)
    padded = [*labels, *([None] * len(speakers))]  # a speaker may get no label
    best: tuple[float, dict[str, str]] = (-1.0, {})
    for chosen in itertools.permutations(padded, len(speakers)):
        right = sum(table[t].get(h, 0.0) for t, h in zip(speakers, chosen, strict=True) if h)
        if right > best[0]:
            best = (right, {h: t for t, h in zip(speakers, chosen, strict=True) if h is not None})
    return best[1]


def turns_right(
    conversation: Conversation,
    hypothesis: Sequence[Labelled],
    mapping: dict[str, str],
    repeats: int = 1,
) -> float:
    """The share of turns whose segments (those whose middle lies in the turn), at least one,
    all carry the turn's speaker once mapped."""
    middles = sorted(((s + e) / 2, mapping.get(label, "?")) for s, e, label in hypothesis)
    keys = [m for m, _ in middles]
    length = conversation.samples.shape[0]
    right = count = 0
    for k in range(repeats):
        for turn in conversation.turns:
            start, end = (turn.start + k * length) / RATE, (turn.end + k * length) / RATE
            mine = middles[bisect_left(keys, start) : bisect_left(keys, end)]
            right += bool(mine) and all(who == turn.speaker for _, who in mine)
            count += 1
    return right / max(1, count)


def word_differences(hypothesis: str, reference: str, most: int = 8) -> list[str]:
    """Where two texts' words differ, as ``-removed +added`` (at most ``most``)."""
    hyp, ref = b.words(hypothesis), b.words(reference)
    found = []
    for kind, a, z, x, y in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
        if kind != "equal":
            found.append(f"-{' '.join(ref[a:z])!r} +{' '.join(hyp[x:y])!r}")
    return found[:most]
