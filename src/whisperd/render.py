"""The one renderer: a transcript in any response format, as bytes with their media type.

Every caller renders through here: the API's routes (whole or streamed), a job's result,
the server-sent events of a stream, and the CLI. :func:`render` gives a whole transcript;
:func:`text_stream` gives a text format a segment at a time (adding up to what
:func:`render` gives); :func:`sse_events` and :func:`sse_transcript` give OpenAI's
transcription events. The JSON bodies are built by :mod:`whisperd.formats`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from whisperd import formats
from whisperd.engine import Item, Transcription, TranscriptionInfo
from whisperd.errors import WhisperdError
from whisperd.subtitles import DEFAULT_CUES, Cuer, SubtitleOptions

JSON_FORMATS = ("json", "verbose_json", "diarized_json")
SSE_FORMATS = ("json", "text", "diarized_json")
"""The formats ``stream=true`` sends as server-sent events."""


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered transcript: the bytes and the media type to send them with."""

    body: bytes
    media_type: str

    @property
    def text(self) -> str:
        return self.body.decode()


def wants_words(
    granularities: Sequence[str] = (),
    *,
    word_timestamps: bool = False,
    subtitles: SubtitleOptions = DEFAULT_CUES,
) -> bool:
    """Whether the engine must time words: asked for, by the ``word`` granularity, or to cut
    subtitle cues at words."""
    return word_timestamps or "word" in granularities or subtitles.active


def render(
    transcription: Transcription,
    response_format: str,
    granularities: Sequence[str] = (),
    *,
    word_timestamps: bool = False,
    subtitles: SubtitleOptions = DEFAULT_CUES,
    logprobs: bool = False,
    timings: dict[str, float] | None = None,
    compact: bool = False,
) -> Rendered:
    """The transcript in ``response_format`` (one of :data:`formats.FORMATS`).

    verbose_json carries the segments unless ``granularities`` leaves them out, the words
    when the ``word`` granularity or ``word_timestamps`` asks (else when the engine timed
    them), and ``timings`` (the API's seconds per stage); json the words' log probabilities
    with ``logprobs``. SRT and VTT cues are cut as ``subtitles`` says.
    ``compact`` JSON has no spaces (the API's responses); otherwise it is written as
    ``json.dumps`` does by default (stored job results, the CLI).
    """
    media_type = _media_type(response_format)
    if response_format in JSON_FORMATS:
        model = _json_body(
            transcription, response_format, granularities, word_timestamps, logprobs, timings
        )
        if compact:
            text = model.model_dump_json(exclude_none=True)
        else:
            text = json.dumps(formats.dumped(model), ensure_ascii=False)
    elif response_format == "srt":
        text = formats.to_srt(transcription, subtitles)
    elif response_format == "vtt":
        text = formats.to_vtt(transcription, subtitles)
    elif response_format == "tsv":
        text = formats.to_tsv(transcription)
    else:
        text = formats.to_text(transcription)
    return Rendered(text.encode(), media_type)


def _media_type(response_format: str) -> str:
    try:
        return formats.MEDIA_TYPES[response_format]
    except KeyError:
        known = ", ".join(formats.FORMATS)
        msg = f"Unknown response_format {response_format!r}; use one of {known}"
        raise ValueError(msg) from None


def _json_body(
    transcription: Transcription,
    response_format: str,
    granularities: Sequence[str],
    word_timestamps: bool,
    logprobs: bool,
    timings: dict[str, float] | None,
) -> formats.Body:
    if response_format == "json":
        return formats.to_json(transcription, logprobs=logprobs)
    if response_format == "diarized_json":
        return formats.to_diarized_json(transcription)
    return formats.to_verbose_json(
        transcription,
        words=wants_words(granularities, word_timestamps=word_timestamps) or None,
        segments=not granularities or "segment" in granularities,
        timings=timings,
    )


async def text_stream(
    items: AsyncIterator[Item],
    response_format: str,
    subtitles: SubtitleOptions = DEFAULT_CUES,
) -> AsyncIterator[bytes]:
    """The transcript in a text format (text, srt, vtt, tsv), a segment's line or cues at a
    time, as it comes; the bytes add up to what :func:`render` gives for the whole.

    An error after the first bytes propagates: the connection is cut, so the client sees a
    broken response rather than a transcript silently cut short.
    """
    if response_format == "vtt":
        yield b"WEBVTT\n\n"
    elif response_format == "tsv":
        yield formats.TSV_HEADER.encode()
    number = 0
    cuer = Cuer(subtitles)
    started = False
    held = ""  # whitespace at the end of the text so far: written once more text follows
    async for item in items:
        if isinstance(item, TranscriptionInfo):
            continue
        if response_format == "srt":
            for cue in cuer.cues(item):
                number += 1
                yield formats.srt_block(number, cue).encode()
        elif response_format == "vtt":
            yield "".join(formats.vtt_block(cue) for cue in cuer.cues(item)).encode()
        elif response_format == "tsv":
            yield formats.tsv_row(item).encode()
        else:
            # the whole text is stripped: none of the leading whitespace, nor the trailing
            text = held + item.text if started else item.text.lstrip()
            started = started or bool(text)
            kept = text.rstrip()
            held = text[len(kept) :]
            if kept:
                yield kept.encode()
    if response_format == "text":
        yield b"\n"


def sse(data: BaseModel | dict[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    if isinstance(data, BaseModel):
        data = formats.dumped(data)
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def sse_events(items: AsyncIterator[Item], *, logprobs: bool = False) -> AsyncIterator[bytes]:
    """OpenAI's transcription stream: a delta event per segment (with its words' log
    probabilities, with ``logprobs``), then the done event (or an error event, when the
    transcription fails after the stream began)."""
    info: TranscriptionInfo | None = None
    texts: list[str] = []
    try:
        async for item in items:
            if isinstance(item, TranscriptionInfo):
                info = item
                continue
            texts.append(item.text)
            yield sse(formats.delta_event(item, logprobs=logprobs))
    except WhisperdError as exc:
        yield sse(exc.to_dict())
        return
    yield sse(formats.done_event(texts, info))


async def sse_transcript(
    transcription: Transcription, response_format: str, *, logprobs: bool = False
) -> AsyncIterator[bytes]:
    """The stream of a transcript already complete: a delta event per segment (and, for
    diarized_json, its ``transcript.text.segment`` event with the speaker), then done."""
    for segment in transcription.segments:
        yield sse(formats.delta_event(segment, logprobs=logprobs))
        if response_format == "diarized_json":
            yield sse(formats.diarized_segment(segment))
    yield sse(formats.done_event([s.text for s in transcription.segments], transcription))
