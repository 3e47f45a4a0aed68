"""Language detection: ``/v1/audio/language`` (ours; OpenAI has no such route)."""

from __future__ import annotations

from fastapi import APIRouter

from whisperd.api.deps import SyncDep
from whisperd.api.forms import ModelField
from whisperd.api.inputs import AudioFormDep
from whisperd.api.schemas import AUDIO_ERRORS, LanguageDetectionResult

router = APIRouter(prefix="/v1", tags=["Language detection"])


@router.post(
    "/audio/language",
    summary="Detect the spoken language",
    response_model=LanguageDetectionResult,
    responses=AUDIO_ERRORS,
)
async def detect_language(
    sync: SyncDep,
    audio: AudioFormDep,
    model: ModelField = "whisper-1",
) -> LanguageDetectionResult:
    """The language spoken, with its probability, and the five most likely, from the first
    30 s of speech (leading silence or music is skipped). Needs a multilingual model such as
    `base` (an English-only one is a 400, `unsupported_task`); audio without speech is a 400,
    `no_speech`."""
    async with sync.call() as call, audio.opened(sync.pipeline.fetcher, call) as source:
        found = await sync.pipeline.detect(source, model=model, call=call)
    return LanguageDetectionResult.of(found)
