"""Language detection: ``/v1/audio/language`` (ours; OpenAI has no such route)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from whisperd.api.deps import DeadlineDep, PipelineDep, TimingsDep
from whisperd.api.forms import ModelField
from whisperd.api.inputs import AudioFormDep, request_call
from whisperd.api.schemas import AUDIO_ERRORS, LanguageDetectionResult

router = APIRouter(prefix="/v1", tags=["Language detection"])


@router.post(
    "/audio/language",
    summary="Detect the spoken language",
    response_model=LanguageDetectionResult,
    responses=AUDIO_ERRORS,
)
async def detect_language(
    request: Request,
    pipeline: PipelineDep,
    timings: TimingsDep,
    deadline: DeadlineDep,
    audio: AudioFormDep,
    model: ModelField = "whisper-1",
) -> LanguageDetectionResult:
    """The language spoken, with its probability, and the five most likely, from the first
    30 s of speech (leading silence or music is skipped). Needs a multilingual model such as
    `base` (an English-only one is a 400, `unsupported_task`); audio without speech is a 400,
    `no_speech`."""
    async with (
        request_call(request, deadline, timings) as call,
        audio.opened(pipeline.fetcher, call) as source,
    ):
        found = await pipeline.detect(source, model=model, call=call)
    return LanguageDetectionResult.of(found)
