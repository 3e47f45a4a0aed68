"""Transcript formats: text, json, verbose_json (OpenAI's field names), srt, vtt, tsv.

The pieces each format is made of; :mod:`whisperd.render` puts them together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from whisperd.engine import Segment, Transcription, Word
from whisperd.subtitles import DEFAULT_CUES, Cue, Cuer, SubtitleOptions

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


def usage(transcription: Transcription) -> dict[str, Any]:
    """OpenAI's duration-based usage block (whole seconds, rounded up)."""
    return {"type": "duration", "seconds": math.ceil(transcription.duration)}


def segment_dict(segment: Segment) -> dict[str, Any]:
    """One segment with OpenAI's verbose_json field names (and, in multilingual mode, the
    language it is in, named as the top-level ``language`` is)."""
    body: dict[str, Any] = {
        "id": segment.id,
        "seek": segment.seek,
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }
    if segment.language is not None:
        body["language"] = LANGUAGE_NAMES.get(segment.language, segment.language)
    if segment.speaker is not None:
        body["speaker"] = segment.speaker
    if segment.channel is not None:
        body["channel"] = segment.channel
    return body


def diarized_segment(segment: Segment) -> dict[str, Any]:
    """One segment as OpenAI's ``transcript.text.segment`` (a diarized_json segment, and the
    event streamed for it)."""
    return {
        "type": "transcript.text.segment",
        "id": f"seg_{segment.id}",
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "text": segment.text.strip(),
        "speaker": segment.speaker or "A",
    }


def to_diarized_json(transcription: Transcription) -> dict[str, Any]:
    """OpenAI's diarized_json: the text, and its segments with their speakers."""
    return {
        "task": transcription.task,
        "duration": round(transcription.duration, 3),
        "text": transcription.text,
        "segments": [diarized_segment(s) for s in transcription.segments],
        "usage": usage(transcription),
    }


def word_dicts(words: Iterable[Word]) -> list[dict[str, Any]]:
    """Words with OpenAI's field names."""
    return [
        {"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)} for w in words
    ]


def to_json(transcription: Transcription, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"text": transcription.text, "usage": usage(transcription), **(extra or {})}


def to_verbose_json(
    transcription: Transcription,
    *,
    words: bool | None = None,
    segments: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """OpenAI's verbose_json. ``words`` defaults to "when the engine produced them"."""
    body: dict[str, Any] = {
        "task": transcription.task,
        "language": LANGUAGE_NAMES.get(transcription.language, transcription.language),
        "duration": round(transcription.duration, 3),
        "text": transcription.text,
    }
    if segments:
        body["segments"] = [segment_dict(s) for s in transcription.segments]
    has_words = any(s.words is not None for s in transcription.segments)
    if words or (words is None and has_words):
        body["words"] = [w for s in transcription.segments for w in word_dicts(s.words or ())]
    body["usage"] = usage(transcription)
    body.update(extra or {})
    return body


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
    said = f"{speaker}: " if speaker is not None else ""
    return f"{index}\n{span}\n{said}{_cue_text(cue)}\n\n"


def to_srt(transcription: Transcription, subtitles: SubtitleOptions = DEFAULT_CUES) -> str:
    cuer = Cuer(subtitles)
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
