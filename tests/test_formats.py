"""Every transcript format, on hand-built transcriptions (no model)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from typing import Any

import pytest
from pydantic import BaseModel

from whisperd import formats
from whisperd.engine import Segment, Transcription, Word
from whisperd.formats import dumped
from whisperd.render import render, wants_words
from whisperd.subtitles import SubtitleOptions

TRICKY = "a < b && c > d --> e\nsecond\tline «ünïcødé» 日本語 🎙"
TRICKY_ONE_LINE = "a < b && c > d --> e second line «ünïcødé» 日本語 🎙"


def segment(
    index: int, start: float, end: float, text: str, words: tuple[Word, ...] | None = None
) -> Segment:
    return Segment(
        id=index,
        seek=int(start * 100),
        start=start,
        end=end,
        text=text,
        tokens=(50363, 843 + index, 50763),
        temperature=0.2,
        avg_logprob=-0.25,
        compression_ratio=1.3,
        no_speech_prob=0.01,
        words=words,
    )


def transcription(
    *segments: Segment, language: str = "en", duration: float = 11.0
) -> Transcription:
    return Transcription(
        text="".join(s.text for s in segments).strip(),
        language=language,
        language_probability=0.97,
        duration=duration,
        task="transcribe",
        segments=segments,
    )


@pytest.fixture
def jfk() -> Transcription:
    words = (
        Word(0.0, 0.76, " And", 0.66),
        Word(0.76, 1.06, " so,", 0.97),
        Word(1.38, 1.44, " my", 0.97),
    )
    return transcription(
        segment(0, 0.0, 8.06, " And so, my fellow Americans ask not", words),
        segment(1, 8.06, 10.9996, " ask what you can do for your country.", ()),
        duration=11.0,
    )


@pytest.fixture
def long_and_tricky() -> Transcription:
    return transcription(
        segment(0, 3725.5, 3730.25, f" {TRICKY}"),
        segment(1, 360_000.0 + 3725.5, 360_000.0 + 3727.0, " the end"),
        duration=363_730.2,
    )


SRT_TIME = r"(\d{2,}):(\d{2}):(\d{2}),(\d{3})"
SRT_SPAN = re.compile(rf"^{SRT_TIME} --> {SRT_TIME}$")
VTT_SPAN = re.compile(r"^(\d{2,}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2,}):(\d{2}):(\d{2})\.(\d{3})$")


def seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_srt(text: str) -> list[tuple[int, float, float, str]]:
    """A strict SRT reader: number, span, one or more text lines, a blank line."""
    assert text.endswith("\n\n")
    cues = []
    for block in text[:-2].split("\n\n"):
        number, span, *lines = block.split("\n")
        match = SRT_SPAN.match(span)
        assert match, f"bad SRT timing line {span!r}"
        assert lines and all(lines), f"cue {number} has no text"
        groups = match.groups()
        cues.append((int(number), seconds(*groups[:4]), seconds(*groups[4:]), "\n".join(lines)))
    return cues


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, "00:00:00,000"),
        (1.5, "00:00:01,500"),
        (59.9996, "00:01:00,000"),
        (3725.5, "01:02:05,500"),
        (86_399.999, "23:59:59,999"),
        (360_000.0 + 3725.25, "101:02:05,250"),
        (-0.2, "00:00:00,000"),
    ],
)
def test_timestamp(value: float, expected: str) -> None:
    assert formats.timestamp(value) == expected
    assert formats.timestamp(value, ".") == expected.replace(",", ".")


def test_timestamp_without_hours_for_short_times() -> None:
    assert formats.timestamp(65.25, ".", always_hours=False) == "01:05.250"
    assert formats.timestamp(3725.5, ".", always_hours=False) == "01:02:05.500"


def test_text(jfk: Transcription) -> None:
    assert render(jfk, "text").text == (
        "And so, my fellow Americans ask not ask what you can do for your country.\n"
    )


def test_json_is_text_and_duration_usage(jfk: Transcription) -> None:
    body = json.loads(render(jfk, "json").text)
    assert body == {
        "text": "And so, my fellow Americans ask not ask what you can do for your country.",
        "usage": {"type": "duration", "seconds": 11},
    }


def test_usage_rounds_seconds_up() -> None:
    assert dumped(formats.usage(4.01)) == {"type": "duration", "seconds": 5}
    assert dumped(formats.usage(0.2)) == {"type": "duration", "seconds": 1}


def test_srt(jfk: Transcription) -> None:
    assert parse_srt(render(jfk, "srt").text) == [
        (1, 0.0, 8.06, "And so, my fellow Americans ask not"),
        (2, 8.06, 11.0, "ask what you can do for your country."),
    ]


def test_srt_hours_long_and_special_characters(long_and_tricky: Transcription) -> None:
    srt = render(long_and_tricky, "srt").text
    cues = parse_srt(srt)
    assert cues == [
        (1, 3725.5, 3730.25, TRICKY_ONE_LINE),
        (2, 363_725.5, 363_727.0, "the end"),
    ]
    assert "01:02:05,500 --> 01:02:10,250" in srt
    assert "101:02:05,500 --> 101:02:07,000" in srt


def test_vtt(jfk: Transcription) -> None:
    vtt = render(jfk, "vtt").text
    assert vtt.startswith("WEBVTT\n\n")
    blocks = vtt[len("WEBVTT\n\n") :].rstrip("\n").split("\n\n")
    assert blocks == [
        "00:00:00.000 --> 00:00:08.060\nAnd so, my fellow Americans ask not",
        "00:00:08.060 --> 00:00:11.000\nask what you can do for your country.",
    ]


def test_vtt_hours_long_and_escapes(long_and_tricky: Transcription) -> None:
    vtt = render(long_and_tricky, "vtt").text
    blocks = vtt[len("WEBVTT\n\n") :].rstrip("\n").split("\n\n")
    assert len(blocks) == 2
    for block in blocks:
        span, *lines = block.split("\n")
        assert VTT_SPAN.match(span), span
        assert len(lines) == 1
        # WebVTT cue text may not hold "-->", and "<" / "&" start tags and entities
        assert "-->" not in lines[0]
        assert "<" not in lines[0]
        assert re.sub(r"&(amp|lt|gt);", "", lines[0]).count("&") == 0
    assert blocks[0].split("\n")[1] == (
        "a &lt; b &amp;&amp; c &gt; d --&gt; e second line «ünïcødé» 日本語 🎙"
    )
    assert blocks[1].startswith("101:02:05.500 --> 101:02:07.000\n")


def test_tsv(jfk: Transcription, long_and_tricky: Transcription) -> None:
    assert render(jfk, "tsv").text == (
        "start\tend\ttext\n"
        "0\t8060\tAnd so, my fellow Americans ask not\n"
        "8060\t11000\task what you can do for your country.\n"
    )
    rows = [line.split("\t") for line in render(long_and_tricky, "tsv").text.splitlines()]
    assert rows == [
        ["start", "end", "text"],
        ["3725500", "3730250", TRICKY_ONE_LINE],
        ["363725500", "363727000", "the end"],
    ]


def test_verbose_json_has_openai_field_names(jfk: Transcription) -> None:
    body = json.loads(render(jfk, "verbose_json").text)
    assert list(body) == ["task", "language", "duration", "text", "segments", "words", "usage"]
    assert body["task"] == "transcribe"
    assert body["language"] == "english"  # OpenAI gives the full name, not the code
    assert body["duration"] == 11.0
    assert body["text"] == jfk.text
    assert body["usage"] == {"type": "duration", "seconds": 11}
    first = body["segments"][0]
    assert set(first) == {
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
    }
    assert first["id"] == 0 and body["segments"][1]["id"] == 1
    assert first["tokens"] == [50363, 843, 50763]
    assert first["text"] == " And so, my fellow Americans ask not"
    assert body["segments"][1]["end"] == 11.0  # rounded to milliseconds
    assert isinstance(first["seek"], int) and isinstance(first["temperature"], float)
    assert body["words"] == [
        {"word": "And", "start": 0.0, "end": 0.76},
        {"word": "so,", "start": 0.76, "end": 1.06},
        {"word": "my", "start": 1.38, "end": 1.44},
    ]


def test_verbose_json_words_only_when_timed_or_asked() -> None:
    plain = transcription(segment(0, 0.0, 1.0, " hi"))
    assert "words" not in dumped(formats.to_verbose_json(plain))
    assert dumped(formats.to_verbose_json(plain, words=True))["words"] == []
    body = dumped(formats.to_verbose_json(plain, segments=False, timings={"format": 0.1}))
    assert "segments" not in body
    assert body["timings"] == {"format": 0.1}


def test_render_leaves_out_what_the_granularities_leave_out(jfk: Transcription) -> None:
    words_only = json.loads(render(jfk, "verbose_json", ["word"]).text)
    assert "segments" not in words_only and len(words_only["words"]) == 3
    untimed = transcription(segment(0, 0.0, 1.0, " hi"), segment(1, 1.0, 2.0, " there"))
    segments_only = json.loads(render(untimed, "verbose_json", ["segment"]).text)
    assert "words" not in segments_only and len(segments_only["segments"]) == 2
    asked = json.loads(render(untimed, "verbose_json", word_timestamps=True).text)
    assert asked["words"] == []


def test_wants_words_for_the_word_granularity_word_timestamps_or_cut_cues() -> None:
    assert not wants_words()
    assert not wants_words(["segment"])
    assert wants_words(["segment", "word"])
    assert wants_words(word_timestamps=True)
    assert wants_words(subtitles=SubtitleOptions(max_line_width=20))


def test_compact_json_is_the_same_json_without_spaces(long_and_tricky: Transcription) -> None:
    for fmt in ("json", "verbose_json", "diarized_json"):
        spaced, compact = render(long_and_tricky, fmt), render(long_and_tricky, fmt, compact=True)
        assert json.loads(compact.body) == json.loads(spaced.body)
        assert compact.media_type == spaced.media_type == "application/json"
        assert b'": ' in spaced.body and b'": ' not in compact.body


def test_render_adds_timings_to_verbose_json_only(jfk: Transcription) -> None:
    timings = {"inference": 1.0}
    assert json.loads(render(jfk, "verbose_json", timings=timings).text)["timings"] == {
        "inference": 1.0
    }
    assert "timings" not in json.loads(render(jfk, "json", timings=timings).text)


@pytest.mark.parametrize(
    ("code", "name"), [("en", "english"), ("de", "german"), ("yue", "cantonese"), ("xx", "xx")]
)
def test_verbose_json_language_name(code: str, name: str) -> None:
    body = dumped(formats.to_verbose_json(transcription(language=code)))
    assert body["language"] == name


def test_json_formats_keep_unicode_readable(long_and_tricky: Transcription) -> None:
    for fmt in ("json", "verbose_json"):
        rendered = render(long_and_tricky, fmt).text
        assert "日本語 🎙" in rendered
        assert json.loads(rendered)["text"] == long_and_tricky.text


def test_every_format_renders_an_empty_transcription() -> None:
    empty = transcription(duration=60.0)
    assert render(empty, "text").text == "\n"
    assert render(empty, "srt").text == ""
    assert render(empty, "vtt").text == "WEBVTT\n\n"
    assert render(empty, "tsv").text == "start\tend\ttext\n"
    assert json.loads(render(empty, "json").text)["text"] == ""
    verbose = json.loads(render(empty, "verbose_json").text)
    assert verbose["segments"] == [] and verbose["usage"]["seconds"] == 60


def test_every_format_has_a_media_type_and_extension(jfk: Transcription) -> None:
    for fmt in formats.FORMATS:
        rendered = render(jfk, fmt)
        assert isinstance(rendered.body, bytes) and rendered.media_type == formats.MEDIA_TYPES[fmt]
        assert "charset=utf-8" in formats.MEDIA_TYPES[fmt] or "json" in formats.MEDIA_TYPES[fmt]
        assert formats.EXTENSIONS[fmt].isalpha()


def test_unknown_format_names_the_choices(jfk: Transcription) -> None:
    with pytest.raises(ValueError, match="srt"):
        render(jfk, "docx")


def test_segment_body_rounds_times() -> None:
    body = dumped(formats.segment_body(segment(3, 1.23456, 2.98765, " x")))
    assert (body["start"], body["end"]) == (1.235, 2.988)
    assert math.isclose(body["avg_logprob"], -0.25)


def _documented(model: type[BaseModel], body: dict[str, Any]) -> None:
    """``body`` is what ``model`` documents: it validates, with no key the model lacks, and
    the model writes it back the same."""
    model.model_validate(body)
    assert set(body) <= set(model.model_fields), set(body) - set(model.model_fields)
    assert dumped(model.model_validate(body)) == body


def test_the_bodies_are_what_the_api_documents(jfk: Transcription) -> None:
    speaker = transcription(*(replace(s, speaker="A") for s in jfk.segments))
    _documented(formats.TranscriptionJson, json.loads(render(jfk, "json").body))
    verbose = json.loads(render(jfk, "verbose_json", timings={"format": 0.1}).body)
    _documented(formats.TranscriptionVerbose, verbose)
    for segment_body in verbose["segments"]:
        _documented(formats.SegmentModel, segment_body)
    diarized = json.loads(render(speaker, "diarized_json").body)
    _documented(formats.TranscriptionDiarized, diarized)
    for event in diarized["segments"]:
        _documented(formats.DiarizedSegment, event)
    for segment_ in jfk.segments:
        _documented(formats.TranscriptTextDelta, dumped(formats.delta_event(segment_)))
    done = formats.done_event([s.text for s in jfk.segments], jfk)
    _documented(formats.TranscriptTextDone, dumped(done))
