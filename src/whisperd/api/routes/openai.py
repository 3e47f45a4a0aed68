"""OpenAI's audio API: ``/v1/audio/transcriptions``, ``/v1/audio/translations``, ``/v1/models``."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import Response

from whisperd import models
from whisperd.api.deps import EngineDep, SyncDep, SyncRequest
from whisperd.api.forms import StreamField, TranscriptionFormDep, TranslationFormDep
from whisperd.api.inputs import AudioFormDep, AudioInput
from whisperd.api.responses import (
    event_stream,
    transcript_response,
)
from whisperd.api.schemas import (
    AUDIO_ERRORS,
    ModelList,
    ModelObject,
    error_responses,
    sse_event_schema,
)
from whisperd.engine import Transcriber
from whisperd.errors import ModelNotFoundError, shown
from whisperd.formats import Body
from whisperd.render import sse_events, sse_transcript
from whisperd.spec import Spec

router = APIRouter(prefix="/v1", tags=["OpenAI audio API"])

TEXT_TYPES = ("text/plain", "application/x-subrip", "text/vtt", "text/tab-separated-values")
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The transcript in `response_format` (JSON, text, SRT, VTT, TSV), or a "
        "`text/event-stream` of `transcript.text.delta` / `transcript.text.done` events "
        "when `stream=true` (with `transcript.text.segment` events for diarized_json).",
        # `model` registers both bodies in the components (a bare $ref would dangle)
        "model": Body,
        "content": {
            **{t: {"schema": {"type": "string"}} for t in TEXT_TYPES},
            "text/event-stream": {"schema": sse_event_schema()},
        },
    },
    **AUDIO_ERRORS,
}


async def _respond(sync: SyncRequest, audio: AudioInput, spec: Spec, stream: bool) -> Response:
    spec.check(stream=stream)
    pipeline = sync.pipeline
    options = spec.options(pipeline.settings)
    speakers = spec.speakers
    async with sync.call() as call:
        opened = audio.opened(pipeline.fetcher, call)
        if stream and not speakers.active:
            items, cleanup = await pipeline.stream(opened, options, model=spec.model, call=call)
            return event_stream(sse_events(items, logprobs=spec.logprobs), cleanup)
        async with opened as source:
            result = await pipeline.transcribe(
                source, options, model=spec.model, call=call, speakers=speakers
            )
    if stream:  # speakers are known once the whole file is heard: the events come then
        return event_stream(sse_transcript(result, spec.response_format, logprobs=spec.logprobs))
    return transcript_response(result, spec, sync.timings)


@router.post("/audio/transcriptions", summary="Transcribe audio", responses=RESPONSES)
async def create_transcription(
    sync: SyncDep, audio: AudioFormDep, spec: TranscriptionFormDep, stream: StreamField = False
) -> Response:
    """Transcribe the audio in its own language (OpenAI-compatible)."""
    return await _respond(sync, audio, spec, stream)


@router.post("/audio/translations", summary="Translate audio into English", responses=RESPONSES)
async def create_translation(
    sync: SyncDep, audio: AudioFormDep, spec: TranslationFormDep, stream: StreamField = False
) -> Response:
    """Translate speech in any language into English text; needs a multilingual model."""
    return await _respond(sync, audio, spec, stream)


def _model_objects(engine: Transcriber) -> list[ModelObject]:
    loaded = engine.loaded
    default = engine.default_model
    objects = [  # OpenAI's names, each the served default
        ModelObject(
            id=name,
            loaded=True,
            available=True,
            source=default.source,
            multilingual=default.multilingual,
            default=True,
            openai_name=True,
        )
        for name in sorted(models.OPENAI_NAMES, key=lambda name: (name != "whisper-1", name))
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
    """The served default (`whisper-1`, and OpenAI's other transcription names), the loaded
    models and the catalog with availability."""
    return ModelList(data=await anyio.to_thread.run_sync(_model_objects, engine))


@router.get(
    "/models/{model_id:path}",
    summary="Describe a model",
    response_model=ModelObject,
    responses=error_responses(401, 404, 422),
)
async def get_model(model_id: str, engine: EngineDep) -> ModelObject:
    """One model; 404 if it is unknown or not available on this server (OpenAI's names are
    the served default, `whisper-1`)."""
    wanted = "whisper-1" if models.is_default(model_id) else models.canonical_name(model_id)
    for entry in await anyio.to_thread.run_sync(_model_objects, engine):
        if entry.id == wanted and (entry.available or entry.loaded):
            return entry.model_copy(update={"id": model_id})  # as asked, an alias too
    raise ModelNotFoundError(f"Model {shown(model_id)} is unknown or not available on this server.")
