"""What a caller asks for, in OpenAI's terms: how to decode (the options of
``/v1/audio/transcriptions``) and how to write the transcript.

The API's forms, a stored job, the function routes, the CLI and a live session each build
one :class:`Spec`. :meth:`Spec.check` is the one check of what a format can carry,
:meth:`Spec.options` the one place the server's defaults fill what a caller left unset,
and :meth:`Spec.render` the one way its transcript is written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from whisperd.engine import (
    TaskName,
    TranscribeOptions,
    Transcription,
    clipped,
    temperatures_from,
)
from whisperd.errors import InvalidRequestError
from whisperd.render import SSE_FORMATS, Rendered, render, wants_words
from whisperd.settings import Settings
from whisperd.speakers.options import NO_SPEAKERS, SpeakerOptions
from whisperd.subtitles import DEFAULT_CUES, SubtitleOptions


@dataclass(frozen=True, slots=True)
class Spec:
    """How to transcribe and how to write the result: the options of
    ``/v1/audio/transcriptions``, and whether to translate into English instead
    (``/v1/audio/translations``)."""

    model: str = "whisper-1"
    task: TaskName = "transcribe"
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = 0.0
    timestamp_granularities: tuple[str, ...] = ()
    hotwords: str | None = None
    vad_filter: bool | None = None
    beam_size: int | None = None
    word_timestamps: bool = False
    subtitles: SubtitleOptions = DEFAULT_CUES
    """How SRT/VTT cues are cut (applied when the result is rendered)."""
    multilingual: bool = False
    logprobs: bool = False
    """``include[]=logprobs``: json carries each word's log probability."""
    speakers: SpeakerOptions = NO_SPEAKERS
    """Who said what (told apart once the whole transcript is in)."""

    def __post_init__(self) -> None:
        # kept (in a job's record too) only as far as the model reads them
        object.__setattr__(self, "prompt", clipped(self.prompt, keep="tail"))
        object.__setattr__(self, "hotwords", clipped(self.hotwords, keep="head"))

    def check(self, *, stream: bool = False) -> Spec:
        """Refuse, as OpenAI does, options the response format cannot carry (``stream``:
        sent as server-sent events)."""
        fmt = self.response_format
        self.subtitles.check(fmt)
        if stream and fmt not in SSE_FORMATS:
            raise InvalidRequestError(
                f"stream=true sends server-sent events of text; response_format {fmt} "
                "cannot be streamed (use json or text, or stream=false).",
                param="response_format",
            )
        if self.logprobs and fmt != "json":
            raise InvalidRequestError(
                f"include[]=logprobs needs response_format=json, not {fmt}.", param="include"
            )
        if self.timestamp_granularities and fmt != "verbose_json":
            raise InvalidRequestError(
                f"timestamp_granularities[] needs response_format=verbose_json, not {fmt}.",
                param="timestamp_granularities",
            )
        return self

    def options(self, settings: Settings) -> TranscribeOptions:
        """The engine's options, with the server's defaults where the caller left one unset."""
        voices = self.speakers.by_voice
        words = wants_words(
            self.timestamp_granularities,
            word_timestamps=self.word_timestamps,
            subtitles=self.subtitles,
        )
        return TranscribeOptions(
            language=(self.language or "").strip().lower() or None,
            task=self.task,
            beam_size=self.beam_size or settings.beam_size,
            temperature=temperatures_from(self.temperature),
            initial_prompt=self.prompt or None,
            hotwords=self.hotwords or None,
            word_timestamps=words or voices or self.logprobs,
            vad_filter=settings.vad_filter if self.vad_filter is None else self.vad_filter,
            multilingual=self.multilingual,
            voices=voices,
        )

    def render(
        self,
        transcription: Transcription,
        *,
        timings: dict[str, float] | None = None,
        compact: bool = False,
    ) -> Rendered:
        """The transcript in ``response_format`` (see :func:`whisperd.render.render`)."""
        return render(
            transcription,
            self.response_format,
            self.timestamp_granularities,
            word_timestamps=self.word_timestamps,
            subtitles=self.subtitles,
            logprobs=self.logprobs,
            timings=timings,
            compact=compact,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        """Read a stored spec back; fields this version does not know are ignored (rolling
        upgrades)."""
        data = _known(cls, json.loads(text))
        data["timestamp_granularities"] = tuple(data.get("timestamp_granularities") or ())
        data["subtitles"] = SubtitleOptions(**_known(SubtitleOptions, data.get("subtitles")))
        speakers = _known(SpeakerOptions, data.get("speakers"))
        speakers["names"] = tuple(speakers.get("names") or ())
        speakers["references"] = tuple(tuple(r) for r in speakers.get("references") or ())
        data["speakers"] = SpeakerOptions(**speakers)
        return cls(**data)


def _known(kind: type, stored: dict[str, Any] | None) -> dict[str, Any]:
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in (stored or {}).items() if k in names}
