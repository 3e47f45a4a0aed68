"""The options a request sends, read into a :class:`~whisperd.spec.Spec`: as form fields
(the transcription, translation and jobs routes) or as query parameters (the function
routes). Each route takes one dependency; the audio itself is :mod:`whisperd.api.inputs`'s.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, Form, Query, Request
from pydantic import Field
from starlette.datastructures import FormData

from whisperd.api.inputs import Omitted
from whisperd.settings import ResponseFormat
from whisperd.speakers.options import SpeakerFields
from whisperd.spec import Spec
from whisperd.subtitles import SubtitleOptions

ModelField = Annotated[
    str,
    Form(
        description="`whisper-1` (the served default), a catalog name such as `base`, or a "
        "model directory.",
        examples=["whisper-1"],
    ),
]
PromptField = Annotated[
    str | Omitted, Form(description="Text to guide spelling and style (initial prompt).")
]
FormatField = Annotated[ResponseFormat, Form(description="Output format.")]
TemperatureField = Annotated[
    float,
    Form(
        ge=0,
        le=1,
        description="Sampling temperature; 0 falls back to higher temperatures "
        "only when decoding fails.",
    ),
]
GranularitiesField = Annotated[
    list[Literal["word", "segment"]] | Omitted,
    Form(
        alias="timestamp_granularities[]",
        description="`word` and/or `segment` timestamps in verbose_json.",
    ),
]
IncludeField = Annotated[
    list[Literal["logprobs"]] | Omitted,
    Form(
        alias="include[]",
        description="`logprobs`: each word's log probability in json (and stream events).",
    ),
]
HotwordsField = Annotated[
    str | Omitted, Form(description="Extra: words to favour, such as names or jargon.")
]
VadField = Annotated[
    bool | Omitted, Form(description="Extra: skip long silences with a voice activity detector.")
]
BeamField = Annotated[
    Annotated[int, Field(ge=1, le=20)] | Omitted, Form(description="Extra: beam size.")
]
WordsField = Annotated[bool, Form(description="Extra: word timestamps (as granularity word).")]
MultilingualField = Annotated[
    bool,
    Form(
        description="Extra: with no `language`, detect the language of each stretch of speech "
        "and transcribe each in its own; verbose_json segments carry `language`, the top-level "
        "`language` is the one spoken longest (needs a multilingual model)."
    ),
]

LanguageField = Annotated[
    str | Omitted, Form(description="ISO-639-1 code of the spoken language; default: detect.")
]
StreamField = Annotated[
    bool, Form(description="Stream server-sent events as segments are transcribed.")
]
TranslationFormatField = Annotated[
    Literal["json", "text", "srt", "verbose_json", "vtt", "tsv"],
    Form(description="Output format."),
]

_Count = Annotated[int, Field(ge=1)]
_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_CUE_FIELDS: tuple[tuple[str, Any, object, str], ...] = (
    (
        "max_line_width",
        _Count | None,
        None,
        "Extra (srt, vtt): characters per line; cues are cut at word boundaries.",
    ),
    (
        "max_line_count",
        _Count | None,
        None,
        "Extra (srt, vtt): lines per cue (with max_line_width or max_words_per_line).",
    ),
    ("max_words_per_line", _Count | None, None, "Extra (srt, vtt): words per line."),
    ("max_cue_seconds", _Seconds | None, None, "Extra (srt, vtt): longest cue, in seconds."),
    (
        "highlight_words",
        bool,
        False,
        "Extra (srt, vtt): a cue per word, the spoken word underlined (karaoke).",
    ),
)
"""The fields of :class:`SubtitleOptions` a request may send: name, type, default, help."""


def _cue_options(param: Callable[..., Any]) -> Callable[..., SubtitleOptions]:
    """A dependency reading how to cut SRT/VTT cues (see ``whisperd.subtitles``) with
    ``param``: ``Form`` (the form routes) or ``Query`` (the function routes)."""

    def read(**fields: Any) -> SubtitleOptions:
        return SubtitleOptions(**fields)

    keyword = inspect.Parameter.KEYWORD_ONLY
    read.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                name, keyword, default=default, annotation=Annotated[kind, param(description=doc)]
            )
            for name, kind, default, doc in _CUE_FIELDS
        ],
        return_annotation=SubtitleOptions,
    )
    return read


subtitles_form = _cue_options(Form)
subtitles_query = _cue_options(Query)


def _nested(form: FormData, name: str) -> str | None:
    """An object sent as ``name[key]`` fields, the way OpenAI's SDKs send one in a form, as
    JSON (a number where a value reads as one); None if there are none."""
    fields = {
        key[len(name) + 1 : -1]: value
        for key, value in form.multi_items()
        if key.startswith(f"{name}[") and key.endswith("]") and isinstance(value, str)
    }
    if not fields:
        return None
    return json.dumps({key: _scalar(value) for key, value in fields.items()})


def _scalar(text: str) -> object:
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float) and not isinstance(value, bool) else text


async def speakers_form(
    request: Request,
    diarize: Annotated[
        bool,
        Form(
            description="Extra: tell speakers apart by voice, labelled in verbose_json, srt, "
            "vtt and tsv (diarized_json always is)."
        ),
    ] = False,
    multichannel: Annotated[
        bool,
        Form(
            description="Extra: transcribe each channel on its own and merge them by time; "
            "the speaker is the channel (A for channel 0)."
        ),
    ] = False,
    known_speaker_names: Annotated[
        list[str] | None,
        Form(
            alias="known_speaker_names[]",
            description="Names of known speakers, one per reference (with multichannel: "
            "the channels' names, in order).",
        ),
    ] = None,
    known_speaker_references: Annotated[
        list[str] | None,
        Form(
            alias="known_speaker_references[]",
            description="Data URLs of 2-10 s of each known speaker's voice "
            "(data:audio/wav;base64,...).",
        ),
    ] = None,
    min_speakers: Annotated[
        int | None, Form(description="Extra: the fewest speakers to find.")
    ] = None,
    max_speakers: Annotated[
        int | None, Form(description="Extra: the most speakers to find.")
    ] = None,
    chunking_strategy: Annotated[
        str | None,
        Form(
            description="`auto` or a `server_vad` object (as JSON, or as "
            "`chunking_strategy[type]` and the like); long audio is always cut at pauses."
        ),
    ] = None,
) -> SpeakerFields:
    """Who said what, as the form asks (checked by :meth:`SpeakerFields.checked`)."""
    if chunking_strategy is None:
        chunking_strategy = _nested(await request.form(), "chunking_strategy")
    return SpeakerFields(
        diarize,
        multichannel,
        tuple(known_speaker_names or ()),
        tuple(known_speaker_references or ()),
        min_speakers,
        max_speakers,
        chunking_strategy,
    )


def speakers_query(
    diarize: Annotated[bool, Query(description="Tell speakers apart by voice.")] = False,
    multichannel: Annotated[
        bool, Query(description="Transcribe each channel on its own; the speaker is the channel.")
    ] = False,
    min_speakers: Annotated[int | None, Query(description="The fewest speakers to find.")] = None,
    max_speakers: Annotated[int | None, Query(description="The most speakers to find.")] = None,
) -> SpeakerFields:
    """Who said what, from query parameters (the function route's options)."""
    return SpeakerFields(
        diarize, multichannel, min_speakers=min_speakers, max_speakers=max_speakers
    )


SubtitlesFormDep = Annotated[SubtitleOptions, Depends(subtitles_form)]
SubtitlesQueryDep = Annotated[SubtitleOptions, Depends(subtitles_query)]
SpeakersFormDep = Annotated[SpeakerFields, Depends(speakers_form)]
SpeakersQueryDep = Annotated[SpeakerFields, Depends(speakers_query)]


def decoding_form(
    subtitles: SubtitlesFormDep,
    model: ModelField = "whisper-1",
    prompt: PromptField = None,
    temperature: TemperatureField = 0.0,
    vad_filter: VadField = None,
    beam_size: BeamField = None,
) -> Spec:
    """What the transcription and translation forms share."""
    return Spec(
        model=model,
        prompt=prompt,
        temperature=temperature,
        vad_filter=vad_filter,
        beam_size=beam_size,
        subtitles=subtitles,
    )


DecodingFormDep = Annotated[Spec, Depends(decoding_form)]


async def transcription_form(
    decoding: DecodingFormDep,
    speaker_fields: SpeakersFormDep,
    language: LanguageField = None,
    response_format: FormatField = "json",
    timestamp_granularities: GranularitiesField = None,
    include: IncludeField = None,
    hotwords: HotwordsField = None,
    word_timestamps: WordsField = False,
    multilingual: MultilingualField = False,
) -> Spec:
    """The transcription form's options (a job's as well), the speakers checked."""
    speakers = await anyio.to_thread.run_sync(speaker_fields.checked, response_format)
    granularities = tuple(timestamp_granularities or ())
    return replace(
        decoding,
        language=language,
        response_format=response_format,
        timestamp_granularities=granularities,
        hotwords=hotwords,
        word_timestamps=word_timestamps,
        multilingual=multilingual,
        logprobs="logprobs" in (include or ()),
        speakers=speakers,
    )


def translation_form(
    decoding: DecodingFormDep, response_format: TranslationFormatField = "json"
) -> Spec:
    """The translation form's options: into English, from whatever is spoken."""
    return replace(decoding, task="translate", response_format=response_format)


async def function_query(
    subtitles: SubtitlesQueryDep,
    speaker_fields: SpeakersQueryDep,
    format: Annotated[ResponseFormat, Query(description="Output format.")] = "text",
) -> Spec:
    """The function routes' options, from query parameters; the rest are the defaults."""
    speakers = await anyio.to_thread.run_sync(speaker_fields.checked, format)
    return Spec(response_format=format, subtitles=subtitles, speakers=speakers)


TranscriptionFormDep = Annotated[Spec, Depends(transcription_form)]
TranslationFormDep = Annotated[Spec, Depends(translation_form)]
FunctionQueryDep = Annotated[Spec, Depends(function_query)]
