"""Transcript formats: text, json, verbose_json, diarized_json (OpenAI's field names), srt,
vtt, tsv, and the streamed events.

The pieces each format is made of; :mod:`whisperd.render` puts them together. The JSON
bodies are pydantic models: the same models serialize the responses and document them in
the OpenAPI schema.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from whisperd.engine import Segment, Transcription, TranscriptionInfo
from whisperd.subtitles import DEFAULT_CUES, Cue, Cuer, SubtitleOptions, speaker_label

FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "tsv", "diarized_json")
MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "diarized_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
}
EXTENSIONS = {
    "json": "json",
    "verbose_json": "json",
    "diarized_json": "json",
    "text": "txt",
    "srt": "srt",
    "vtt": "vtt",
    "tsv": "tsv",
}

LANGUAGE_NAMES = {
    "en": "english",
    "zh": "chinese",
    "de": "german",
    "es": "spanish",
    "ru": "russian",
    "ko": "korean",
    "fr": "french",
    "ja": "japanese",
    "pt": "portuguese",
    "tr": "turkish",
    "pl": "polish",
    "ca": "catalan",
    "nl": "dutch",
    "ar": "arabic",
    "sv": "swedish",
    "it": "italian",
    "id": "indonesian",
    "hi": "hindi",
    "fi": "finnish",
    "vi": "vietnamese",
    "he": "hebrew",
    "uk": "ukrainian",
    "el": "greek",
    "ms": "malay",
    "cs": "czech",
    "ro": "romanian",
    "da": "danish",
    "hu": "hungarian",
    "ta": "tamil",
    "no": "norwegian",
    "th": "thai",
    "ur": "urdu",
    "hr": "croatian",
    "bg": "bulgarian",
    "lt": "lithuanian",
    "la": "latin",
    "mi": "maori",
    "ml": "malayalam",
    "cy": "welsh",
    "sk": "slovak",
    "te": "telugu",
    "fa": "persian",
    "lv": "latvian",
    "bn": "bengali",
    "sr": "serbian",
    "az": "azerbaijani",
    "sl": "slovenian",
    "kn": "kannada",
    "et": "estonian",
    "mk": "macedonian",
    "br": "breton",
    "eu": "basque",
    "is": "icelandic",
    "hy": "armenian",
    "ne": "nepali",
    "mn": "mongolian",
    "bs": "bosnian",
    "kk": "kazakh",
    "sq": "albanian",
    "sw": "swahili",
    "gl": "galician",
    "mr": "marathi",
    "pa": "punjabi",
    "si": "sinhala",
    "km": "khmer",
    "sn": "shona",
    "yo": "yoruba",
    "so": "somali",
    "af": "afrikaans",
    "oc": "occitan",
    "ka": "georgian",
    "be": "belarusian",
    "tg": "tajik",
    "sd": "sindhi",
    "gu": "gujarati",
    "am": "amharic",
    "yi": "yiddish",
    "lo": "lao",
    "uz": "uzbek",
    "fo": "faroese",
    "ht": "haitian creole",
    "ps": "pashto",
    "tk": "turkmen",
    "nn": "nynorsk",
    "mt": "maltese",
    "sa": "sanskrit",
    "lb": "luxembourgish",
    "my": "myanmar",
    "bo": "tibetan",
    "tl": "tagalog",
    "mg": "malagasy",
    "as": "assamese",
    "tt": "tatar",
    "haw": "hawaiian",
    "ln": "lingala",
    "ha": "hausa",
    "ba": "bashkir",
    "jw": "javanese",
    "su": "sundanese",
    "yue": "cantonese",
}


class Usage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: int = Field(examples=[11])


class WordModel(BaseModel):
    word: str
    start: float
    end: float
    speaker: str | SkipJsonSchema[None] = Field(
        default=None, description="Who said it, with `diarize` or `multichannel` (ours)."
    )
    channel: int | SkipJsonSchema[None] = Field(
        default=None, description="The channel it was heard on, with `multichannel` (ours)."
    )


class Logprob(BaseModel):
    """``include[]=logprobs``: a word, the log of its probability, and its UTF-8 bytes."""

    token: str = Field(examples=[" Americans"])
    logprob: float = Field(examples=[-0.02])
    bytes: list[int]


class SegmentModel(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    language: str | SkipJsonSchema[None] = Field(
        default=None,
        examples=["german"],
        description="The language of the segment, with `multilingual=true` (ours).",
    )
    speaker: str | SkipJsonSchema[None] = Field(
        default=None,
        examples=["A"],
        description="Who said it, with `diarize` or `multichannel` (ours).",
    )
    channel: int | SkipJsonSchema[None] = Field(
        default=None,
        examples=[0],
        description="The channel it was heard on, with `multichannel` (ours).",
    )


class TranscriptionJson(BaseModel):
    """``response_format=json``."""

    text: str = Field(
        examples=[
            "And so, my fellow Americans, ask not what your country can do "
            "for you, ask what you can do for your country."
        ]
    )
    usage: Usage
    logprobs: list[Logprob] | SkipJsonSchema[None] = None


class TranscriptionVerbose(BaseModel):
    """``response_format=verbose_json``; ``timings`` is ours (seconds per stage)."""

    task: str = Field(examples=["transcribe"])
    language: str = Field(examples=["english"])
    duration: float = Field(examples=[11.0])
    text: str
    segments: list[SegmentModel] | None = None
    words: list[WordModel] | None = None
    usage: Usage
    timings: dict[str, float] | None = None


class DiarizedSegment(BaseModel):
    """A segment with its speaker (and, streamed, the event sent for it)."""

    type: Literal["transcript.text.segment"]
    id: str = Field(examples=["seg_0"])
    start: float
    end: float
    text: str
    speaker: str = Field(examples=["A"], description="A, B, ... or a known speaker's name.")


class TranscriptionDiarized(BaseModel):
    """``response_format=diarized_json``: the text, and its segments with their speakers."""

    task: str = Field(examples=["transcribe"])
    duration: float = Field(examples=[11.0])
    text: str
    segments: list[DiarizedSegment]
    usage: Usage


class TranscriptTextDelta(BaseModel):
    """A streamed segment (``stream=true``)."""

    type: Literal["transcript.text.delta"]
    delta: str = Field(examples=[" And so, my fellow Americans,"])
    segment_id: str = Field(examples=["seg_0"])
    start: float
    end: float
    words: list[WordModel] | SkipJsonSchema[None] = Field(
        default=None, description="The segment's words, with word timestamps on (ours)."
    )
    logprobs: list[Logprob] | SkipJsonSchema[None] = None


class TranscriptTextDone(BaseModel):
    """The last event of a stream: the whole text."""

    type: Literal["transcript.text.done"]
    text: str
    usage: Usage | SkipJsonSchema[None] = None
    language: str | SkipJsonSchema[None] = Field(default=None, examples=["english"])
    duration: float | SkipJsonSchema[None] = Field(default=None, examples=[11.0])


Body = TranscriptionJson | TranscriptionVerbose | TranscriptionDiarized
"""A transcript in one of the JSON formats."""


def dumped(body: BaseModel) -> dict[str, Any]:
    """``body`` as the JSON object sent: the fields left unset (``None``) are left out."""
    return body.model_dump(exclude_none=True)


def language_name(code: str) -> str:
    """A language as OpenAI names it (``english``), or its code when it has no name."""
    return LANGUAGE_NAMES.get(code, code)


def usage(duration: float) -> Usage:
    """OpenAI's duration-based usage block (whole seconds, rounded up)."""
    return Usage(seconds=math.ceil(duration))


def segment_body(segment: Segment) -> SegmentModel:
    """One segment with OpenAI's verbose_json field names (and, in multilingual mode, the
    language it is in, named as the top-level ``language`` is)."""
    return SegmentModel(
        id=segment.id,
        seek=segment.seek,
        start=round(segment.start, 3),
        end=round(segment.end, 3),
        text=segment.text,
        tokens=list(segment.tokens),
        temperature=segment.temperature,
        avg_logprob=segment.avg_logprob,
        compression_ratio=segment.compression_ratio,
        no_speech_prob=segment.no_speech_prob,
        language=None if segment.language is None else language_name(segment.language),
        speaker=segment.speaker,
        channel=segment.channel,
    )


def _segment_id(segment: Segment) -> str:
    """A segment's id where OpenAI's API has a string (diarized segments, stream deltas)."""
    return f"seg_{segment.id}"


def diarized_segment(segment: Segment) -> DiarizedSegment:
    """One segment as OpenAI's ``transcript.text.segment`` (a diarized_json segment, and the
    event streamed for it)."""
    return DiarizedSegment(
        type="transcript.text.segment",
        id=_segment_id(segment),
        start=round(segment.start, 3),
        end=round(segment.end, 3),
        text=segment.text.strip(),
        speaker=segment.speaker or "A",
    )


def word_bodies(segment: Segment) -> list[WordModel]:
    """A segment's words with OpenAI's field names, and the segment's speaker and channel."""
    return [
        WordModel(
            word=w.word.strip(),
            start=round(w.start, 3),
            end=round(w.end, 3),
            speaker=segment.speaker,
            channel=segment.channel,
        )
        for w in segment.words or ()
    ]


def _all_words(segments: Iterable[Segment]) -> list[WordModel]:
    """Every segment's words, in time order (the channels' segments overlap in time)."""
    words = [w for s in segments for w in word_bodies(s)]
    return sorted(words, key=lambda w: w.start)


def word_logprobs(segments: Iterable[Segment]) -> list[Logprob]:
    """The words of ``segments`` as OpenAI's logprobs list tokens (a word for its tokens)."""
    return [
        Logprob(
            token=w.word, logprob=math.log(max(w.probability, 1e-12)), bytes=list(w.word.encode())
        )
        for s in segments
        for w in s.words or ()
    ]


def to_json(transcription: Transcription, *, logprobs: bool = False) -> TranscriptionJson:
    """``json``: the text (and with ``logprobs``, each word's log probability)."""
    return TranscriptionJson(
        text=transcription.text,
        usage=usage(transcription.duration),
        logprobs=word_logprobs(transcription.segments) if logprobs else None,
    )


def to_diarized_json(transcription: Transcription) -> TranscriptionDiarized:
    """OpenAI's diarized_json: the text, and its segments with their speakers."""
    return TranscriptionDiarized(
        task=transcription.task,
        duration=round(transcription.duration, 3),
        text=transcription.text,
        segments=[diarized_segment(s) for s in transcription.segments],
        usage=usage(transcription.duration),
    )


def to_verbose_json(
    transcription: Transcription,
    *,
    words: bool | None = None,
    segments: bool = True,
    timings: dict[str, float] | None = None,
) -> TranscriptionVerbose:
    """OpenAI's verbose_json. ``words`` defaults to "when the engine produced them"."""
    parts = transcription.segments
    if words is None:
        words = any(s.words is not None for s in parts)
    return TranscriptionVerbose(
        task=transcription.task,
        language=language_name(transcription.language),
        duration=round(transcription.duration, 3),
        text=transcription.text,
        segments=[segment_body(s) for s in parts] if segments else None,
        words=_all_words(parts) if words else None,
        usage=usage(transcription.duration),
        timings=timings,
    )


def delta_event(segment: Segment, *, logprobs: bool = False) -> TranscriptTextDelta:
    """A ``transcript.text.delta`` event: one segment (with its words, when timed, and with
    ``logprobs`` their log probabilities)."""
    return TranscriptTextDelta(
        type="transcript.text.delta",
        delta=segment.text,
        segment_id=_segment_id(segment),
        start=round(segment.start, 3),
        end=round(segment.end, 3),
        words=None if segment.words is None else word_bodies(segment),
        logprobs=word_logprobs([segment]) if logprobs else None,
    )


def done_event(
    texts: Sequence[str], info: TranscriptionInfo | Transcription | None
) -> TranscriptTextDone:
    """The ``transcript.text.done`` event: the whole text (and its length and language)."""
    text = "".join(texts).strip()
    if info is None:
        return TranscriptTextDone(type="transcript.text.done", text=text)
    return TranscriptTextDone(
        type="transcript.text.done",
        text=text,
        usage=usage(info.duration),
        language=language_name(info.language),
        duration=round(info.duration, 3),
    )


def timestamp(seconds: float, separator: str = ",", *, always_hours: bool = True) -> str:
    """``HH:MM:SS,mmm`` (hours grow past 99 for very long audio)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def to_text(transcription: Transcription) -> str:
    return transcription.text + "\n"


def _cue_text(cue: Cue, escape: Callable[[str], str] = str) -> str:
    """The cue's lines, the highlighted word (if any) underlined."""
    lines, index = [], 0
    for line in cue.lines:
        texts = []
        for text in line:
            shown = escape(text)
            if index == cue.highlight:
                shown = f"{shown[: len(shown) - len(shown.lstrip())]}<u>{shown.strip()}</u>"
            texts.append(shown)
            index += 1
        lines.append(_one_line("".join(texts)))
    return "\n".join(lines)


def srt_block(index: int, cue: Cue, speaker: str | None = None) -> str:
    """One SRT cue (1-based ``index``), its text after ``speaker: `` when one is given."""
    span = f"{timestamp(cue.start)} --> {timestamp(cue.end)}"
    said = speaker_label(speaker) if speaker is not None else ""
    return f"{index}\n{span}\n{said}{_cue_text(cue)}\n\n"


def to_srt(transcription: Transcription, subtitles: SubtitleOptions = DEFAULT_CUES) -> str:
    cuer = Cuer(subtitles, labelled=True)
    cues = ((cue, s.speaker) for s in transcription.segments for cue in cuer.cues(s))
    return "".join(srt_block(i, *cue) for i, cue in enumerate(cues, start=1))


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def vtt_block(cue: Cue, speaker: str | None = None) -> str:
    """One VTT cue, in a voice span (``<v A>``) when a ``speaker`` is given."""
    span = f"{timestamp(cue.start, '.')} --> {timestamp(cue.end, '.')}"
    voice = f"<v {_vtt_escape(speaker)}>" if speaker is not None else ""
    return f"{span}\n{voice}{_cue_text(cue, _vtt_escape)}\n\n"


def to_vtt(transcription: Transcription, subtitles: SubtitleOptions = DEFAULT_CUES) -> str:
    cuer = Cuer(subtitles)
    segments = transcription.segments
    cues = "".join(vtt_block(cue, s.speaker) for s in segments for cue in cuer.cues(s))
    return "WEBVTT\n\n" + cues


TSV_HEADER = "start\tend\ttext\n"


def tsv_row(segment: Segment, *, speakers: bool = False) -> str:
    """One segment as a TSV line: start and end in integer milliseconds, the speaker (with
    ``speakers``), the text on one line."""
    said = [segment.speaker or ""] if speakers else []
    start, end = str(round(segment.start * 1000)), str(round(segment.end * 1000))
    return "\t".join([start, end, *said, _one_line(segment.text)]) + "\n"


def to_tsv(transcription: Transcription) -> str:
    """openai-whisper's TSV: start and end in integer milliseconds, then the text (after a
    speaker column, when segments have speakers)."""
    speakers = any(s.speaker is not None for s in transcription.segments)
    header = "start\tend\tspeaker\ttext\n" if speakers else TSV_HEADER
    return header + "".join(tsv_row(s, speakers=speakers) for s in transcription.segments)
