"""OpenAI's audio API: ``/v1/audio/transcriptions``, ``/v1/audio/translations``, ``/v1/models``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from whisperd import models
from whisperd.api.deps import (
    DeadlineDep,
    EngineDep,
    PipelineDep,
    SpeakersFormDep,
    SubtitlesFormDep,
    TimingsDep,
)
from whisperd.api.inputs import (
    AudioFormDep,
    AudioInput,
    BeamField,
    FormatField,
    GranularitiesField,
    HotwordsField,
    ModelField,
    MultilingualField,
    Omitted,
    PromptField,
    TemperatureField,
    VadField,
    WordsField,
    check_format,
    request_call,
)
from whisperd.api.responses import (
    event_stream,
    transcript_response,
)
from whisperd.api.schemas import (
    AUDIO_ERRORS,
    ModelList,
    ModelObject,
    TranscriptionDiarized,
    TranscriptionJson,
    TranscriptionVerbose,
    error_responses,
    sse_event_schema,
)
from whisperd.engine import TranscribeOptions, Transcriber
from whisperd.errors import ModelNotFoundError, shown
from whisperd.render import sse_events, sse_transcript, wants_words
from whisperd.speakers.options import NO_SPEAKERS, SpeakerOptions
from whisperd.subtitles import SubtitleOptions

router = APIRouter(prefix="/v1", tags=["OpenAI audio API"])

TEXT_TYPES = ("text/plain", "application/x-subrip", "text/vtt", "text/tab-separated-values")
SUCCESS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The transcript in `response_format` (JSON, text, SRT, VTT, TSV), or a "
        "`text/event-stream` of `transcript.text.delta` / `transcript.text.done` events "
        "when `stream=true` (with `transcript.text.segment` events for diarized_json).",
        # `model` registers both bodies in the components (a bare $ref would dangle)
        "model": TranscriptionJson | TranscriptionVerbose | TranscriptionDiarized,
        "content": {
            **{t: {"schema": {"type": "string"}} for t in TEXT_TYPES},
            "text/event-stream": {"schema": sse_event_schema()},
        },
    }
}

TranslationFormatField = Annotated[
    Literal["json", "text", "srt", "verbose_json", "vtt", "tsv"],
    Form(description="Output format."),
]
StreamField = Annotated[
    bool, Form(description="Stream server-sent events as segments are transcribed.")
]


async def _respond(
    request: Request,
    pipeline: PipelineDep,
    timings: TimingsDep,
    deadline: float,
    *,
    audio: AudioInput,
    model: str,
    options: TranscribeOptions,
    response_format: str,
    stream: bool,
    granularities: Sequence[str],
    subtitles: SubtitleOptions,
    speakers: SpeakerOptions = NO_SPEAKERS,
) -> Response:
    check_format(response_format, stream=stream, granularities=granularities, subtitles=subtitles)
    async with request_call(request, deadline, timings) as call:
        opened = audio.opened(pipeline.fetcher, call)
        if stream and not speakers.active:
            items, cleanup = await pipeline.stream(opened, options, model=model, call=call)
            return event_stream(sse_events(items), cleanup)
        async with opened as source:
            result = await pipeline.transcribe(
                source, options, model=model, call=call, speakers=speakers
            )
    if stream:  # speakers are known once the whole file is heard: the events come then
        return event_stream(sse_transcript(result, response_format))
    return transcript_response(
        result,
        response_format,
        timings,
        granularities,
        word_timestamps=options.word_timestamps,
        subtitles=subtitles,
    )


@router.post(
    "/audio/transcriptions",
    summary="Transcribe audio",
    responses={**SUCCESS, **AUDIO_ERRORS},
    response_model=None,
)
async def create_transcription(
    request: Request,
    pipeline: PipelineDep,
    timings: TimingsDep,
    deadline: DeadlineDep,
    audio: AudioFormDep,
    subtitles: SubtitlesFormDep,
    speaker_fields: SpeakersFormDep,
    model: ModelField = "whisper-1",
    language: Annotated[
        str | Omitted, Form(description="ISO-639-1 code of the spoken language; default: detect.")
    ] = None,
    prompt: PromptField = None,
    response_format: FormatField = "json",
    temperature: TemperatureField = 0.0,
    timestamp_granularities: GranularitiesField = None,
    stream: StreamField = False,
    hotwords: HotwordsField = None,
    vad_filter: VadField = None,
    beam_size: BeamField = None,
    word_timestamps: WordsField = False,
    multilingual: MultilingualField = False,
) -> Response:
    """Transcribe the audio in its own language (OpenAI-compatible)."""
    granularities = list(timestamp_granularities or [])
    speakers = await anyio.to_thread.run_sync(speaker_fields.checked, response_format)
    options = TranscribeOptions.asked(
        pipeline.settings,
        language=language,
        task="transcribe",
        prompt=prompt,
        temperature=temperature,
        hotwords=hotwords,
        vad_filter=vad_filter,
        beam_size=beam_size,
        word_timestamps=wants_words(
            granularities, word_timestamps=word_timestamps, subtitles=subtitles
        ),
        multilingual=multilingual,
        voices=speakers.by_voice,
    )
    return await _respond(
        request,
        pipeline,
        timings,
        deadline,
        audio=audio,
        model=model,
        options=options,
        response_format=response_format,
        stream=stream,
        granularities=granularities,
        subtitles=subtitles,
        speakers=speakers,
    )


@router.post(
    "/audio/translations",
    summary="Translate audio into English",
    responses={**SUCCESS, **AUDIO_ERRORS},
    response_model=None,
)
async def create_translation(
    request: Request,
    pipeline: PipelineDep,
    timings: TimingsDep,
    deadline: DeadlineDep,
    audio: AudioFormDep,
    subtitles: SubtitlesFormDep,
    model: ModelField = "whisper-1",
    prompt: PromptField = None,
    response_format: TranslationFormatField = "json",
    temperature: TemperatureField = 0.0,
    stream: StreamField = False,
    vad_filter: VadField = None,
    beam_size: BeamField = None,
) -> Response:
    """Translate speech in any language into English text; needs a multilingual model."""
    options = TranscribeOptions.asked(
        pipeline.settings,
        language=None,
        task="translate",
        prompt=prompt,
        temperature=temperature,
        hotwords=None,
        vad_filter=vad_filter,
        beam_size=beam_size,
        word_timestamps=wants_words(subtitles=subtitles),
    )
    return await _respond(
        request,
        pipeline,
        timings,
        deadline,
        audio=audio,
        model=model,
        options=options,
        response_format=response_format,
        stream=stream,
        granularities=[],
        subtitles=subtitles,
    )


def _model_objects(engine: Transcriber) -> list[ModelObject]:
    loaded = engine.loaded
    default = engine.default_model
    objects = [
        ModelObject(
            id="whisper-1",
            loaded=True,
            available=True,
            source=default.source,
            multilingual=default.multilingual,
            default=True,
        )
    ]
    for row in engine.catalog():
        model = loaded.pop(row.name, None)
        objects.append(
            ModelObject(
                id=row.name,
                loaded=model is not None,
                available=row.available or model is not None,
                source=row.source if model is None else model.source,
                multilingual=row.multilingual if model is None else model.multilingual,
                default=model is default,
            )
        )
    for model in loaded.values():  # the operator's directories named in a setting
        objects.append(
            ModelObject(
                id=model.name,
                loaded=True,
                available=True,
                source=model.source,
                multilingual=model.multilingual,
                default=model is default,
            )
        )
    return objects


@router.get(
    "/models", summary="List models", response_model=ModelList, responses=error_responses(401)
)
async def list_models(engine: EngineDep) -> ModelList:
    """The served default (`whisper-1`), the loaded models and the catalog with availability."""
    return ModelList(data=await anyio.to_thread.run_sync(_model_objects, engine))


@router.get(
    "/models/{model_id:path}",
    summary="Describe a model",
    response_model=ModelObject,
    responses=error_responses(401, 404, 422),
)
async def get_model(model_id: str, engine: EngineDep) -> ModelObject:
    """One model; 404 if it is unknown or not available on this server."""
    for entry in await anyio.to_thread.run_sync(_model_objects, engine):
        if entry.id == models.canonical_name(model_id) and (entry.available or entry.loaded):
            return entry
    raise ModelNotFoundError(f"Model {shown(model_id)} is unknown or not available on this server.")
